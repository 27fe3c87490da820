################################################################################
# Instance role: only what the bastion does
################################################################################

locals {
  # docs/iam/key-reader-policy.json, kept in this module (tests compare the two).
  key_reader_policy = jsondecode(file("${path.module}/policies/key-reader-policy.json"))
}

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    sid     = "Ec2InstancesAssumeThisRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name                 = var.name
  description          = "${var.name}: the bastion instances (IAM key lookup, host key, drain)"
  assume_role_policy   = data.aws_iam_policy_document.assume_ec2.json
  max_session_duration = 3600

  tags = local.tags
}

resource "aws_iam_instance_profile" "this" {
  name = var.name
  role = aws_iam_role.this.name

  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count = var.attach_ssm_policy ? 1 : 0

  role       = aws_iam_role.this.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "this" {
  # IAM users' SSH keys and groups: read here (docs/iam/key-reader-policy.json) ...
  dynamic "statement" {
    for_each = var.assume_role_arn == null ? local.key_reader_policy.Statement : []
    content {
      sid       = statement.value.Sid
      actions   = statement.value.Action
      resources = [statement.value.Resource]
    }
  }

  # ... or through the identity account's role (docs/iam/assume-key-reader-policy.json).
  dynamic "statement" {
    for_each = var.assume_role_arn == null ? [] : [var.assume_role_arn]
    content {
      sid       = "AssumeTheKeyReaderRoleInTheIdentityAccount"
      actions   = ["sts:AssumeRole"]
      resources = [statement.value]
    }
  }

  statement {
    sid       = "ReadTheHostKey"
    actions   = ["ssm:GetParameter"]
    resources = [local.host_key_parameter_arn]
  }

  dynamic "statement" {
    for_each = local.host_key_kms_key_arn == null ? [] : [local.host_key_kms_key_arn]
    content {
      sid       = "DecryptTheHostKeyThroughSsm"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.amazonaws.com"]
      }
    }
  }

  statement {
    sid       = "CompleteTheDrainLifecycleHook"
    actions   = ["autoscaling:CompleteLifecycleAction"]
    resources = [local.asg_arn]
  }

  dynamic "statement" {
    for_each = var.create_log_group ? [1] : []
    content {
      sid = "WriteTheAuditLogGroup"
      # GetLogEvents: after a restart the shipper compares a stream's tail, so
      # nothing is delivered twice.
      actions = [
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:GetLogEvents",
      ]
      resources = ["${aws_cloudwatch_log_group.this[0].arn}:*"]
    }
  }

  dynamic "statement" {
    for_each = var.audit_s3_bucket == null ? [] : [var.audit_s3_bucket]
    content {
      sid       = "ArchiveTheAuditTrailInS3"
      actions   = ["s3:PutObject"]
      resources = ["arn:${local.partition}:s3:::${statement.value}/${var.audit_s3_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = var.audit_s3_bucket == null || var.audit_s3_kms_key_arn == null ? [] : [var.audit_s3_kms_key_arn]
    content {
      sid       = "EncryptTheAuditArchive"
      actions   = ["kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = local.binary_s3 == null ? [] : [local.binary_s3]
    content {
      sid       = "FetchTheBastionBinary"
      actions   = ["s3:GetObject"]
      resources = ["arn:${local.partition}:s3:::${statement.value[0]}/${statement.value[1]}"]
    }
  }

  dynamic "statement" {
    for_each = local.ecr == null ? [] : [local.ecr]
    content {
      sid       = "PullTheBastionImage"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
      resources = ["arn:${local.partition}:ecr:${statement.value[2]}:${statement.value[1]}:repository/${statement.value[4]}"]
    }
  }

  dynamic "statement" {
    for_each = local.ecr == null ? [] : [local.ecr]
    content {
      # GetAuthorizationToken has no resource-level permissions.
      sid       = "LogInToEcr"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }

  # Onward EC2 Instance Connect (eic_push): DescribeInstances (Resource "*", it
  # has no resource-level permissions) and SendSSHPublicKey limited by ec2:osuser
  # and eic_push_instance_tags; built in eic.tf (docs/iam/eic-push-policy.json).
  # None without eic_push. The eic key source (eic_auth) needs nothing here.
  dynamic "statement" {
    for_each = local.eic_push_policy.Statement
    content {
      sid       = statement.value.Sid
      actions   = statement.value.Action
      resources = statement.value.Resource

      dynamic "condition" {
        for_each = flatten([
          for test, keys in try(statement.value.Condition, {}) : [
            for variable, values in keys : { test = test, variable = variable, values = values }
          ]
        ])
        content {
          test     = condition.value.test
          variable = condition.value.variable
          values   = condition.value.values
        }
      }
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = var.name
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.this.json
}

################################################################################
# Cross-account: what to create in the identity account (see the output)
################################################################################

locals {
  key_reader_role_name = var.assume_role_arn == null ? "bastion-key-reader" : element(split("/", var.assume_role_arn), length(split("/", var.assume_role_arn)) - 1)

  # docs/iam/key-reader-trust-policy.json with this module's role filled in.
  key_reader_trust_policy = {
    Version = "2012-10-17"
    Statement = [{
      Sid       = "TheBastionsInstanceRoleMayAssumeThis"
      Effect    = "Allow"
      Principal = { AWS = aws_iam_role.this.arn }
      Action    = "sts:AssumeRole"
    }]
  }
}
