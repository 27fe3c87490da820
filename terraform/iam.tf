################################################################################
# Instance role: only what the bastion does
################################################################################

locals {
  # docs/iam/key-reader-policy.json, kept in this module (tests compare the two),
  # in the partition the module runs in (the identity account's is the same).
  key_reader_policy = jsondecode(replace(file("${path.module}/policies/key-reader-policy.json"), "\"arn:aws:", "\"arn:${local.partition}:"))

  create_iam_role = local.create && var.create_iam_instance_profile
  iam_role_name   = coalesce(var.iam_role_name, var.name)

  # The module's role and profile, or the ones brought along (create_iam_instance_profile = false).
  iam_instance_profile_arn = var.create_iam_instance_profile ? one(aws_iam_instance_profile.this[*].arn) : var.iam_instance_profile_arn
  iam_role_arn             = var.create_iam_instance_profile ? one(aws_iam_role.this[*].arn) : one(data.aws_iam_instance_profile.this[*].role_arn)
  iam_role_name_in_use     = var.create_iam_instance_profile ? one(aws_iam_role.this[*].name) : one(data.aws_iam_instance_profile.this[*].role_name)
}

data "aws_iam_policy_document" "assume_ec2" {
  count = local.create_iam_role ? 1 : 0

  statement {
    sid     = "Ec2InstancesAssumeThisRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role" "this" {
  count = local.create_iam_role ? 1 : 0

  name                 = var.iam_role_use_name_prefix ? null : local.iam_role_name
  name_prefix          = var.iam_role_use_name_prefix ? "${local.iam_role_name}-" : null
  path                 = var.iam_role_path
  permissions_boundary = var.iam_role_permissions_boundary
  description          = "${var.name}: the bastion instances (IAM key lookup, host key, health, drain, audit shipping)"
  assume_role_policy   = data.aws_iam_policy_document.assume_ec2[0].json
  max_session_duration = 3600

  tags = local.tags
}

resource "aws_iam_instance_profile" "this" {
  count = local.create_iam_role ? 1 : 0

  name        = var.iam_role_use_name_prefix ? null : local.iam_role_name
  name_prefix = var.iam_role_use_name_prefix ? "${local.iam_role_name}-" : null
  path        = var.iam_role_path
  role        = aws_iam_role.this[0].name

  tags = local.tags
}

# A profile brought along: its role, for the outputs, the audit bucket's
# policy and the identity account's trust policy.
data "aws_iam_instance_profile" "this" {
  count = local.create && !var.create_iam_instance_profile ? 1 : 0

  name = element(split("/", var.iam_instance_profile_arn), length(split("/", var.iam_instance_profile_arn)) - 1)
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count = local.create_iam_role && var.attach_ssm_policy ? 1 : 0

  role       = aws_iam_role.this[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# What the instances do. Read without create_iam_instance_profile too: the
# iam_role_policy output is what a role brought along needs.
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

  # The generated host key: the first instance to boot creates the parameter
  # (put-parameter without --overwrite, so no instance can replace a key that
  # exists), encrypted with the module's key through SSM, for this parameter only.
  dynamic "statement" {
    for_each = local.generate_host_key ? [1] : []
    content {
      sid       = "CreateTheHostKeyOnFirstBoot"
      actions   = ["ssm:PutParameter"]
      resources = [local.host_key_parameter_arn]
    }
  }

  # ... and never replace it (put-parameter --overwrite), whatever else the role is given.
  dynamic "statement" {
    for_each = local.generate_host_key ? [1] : []
    content {
      sid       = "NeverReplaceTheHostKey"
      effect    = "Deny"
      actions   = ["ssm:PutParameter"]
      resources = [local.host_key_parameter_arn]

      condition {
        test     = "StringEquals"
        variable = "ssm:Overwrite"
        values   = ["true"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.generate_host_key && local.host_key_kms_key_arn != null ? [1] : []
    content {
      sid       = "EncryptTheHostKeyThroughSsm"
      actions   = ["kms:Encrypt", "kms:GenerateDataKey"]
      resources = [local.host_key_kms_key_arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.${local.dns_suffix}"]
      }

      condition {
        test     = "StringEquals"
        variable = "kms:EncryptionContext:PARAMETER_ARN"
        values   = [local.host_key_parameter_arn]
      }
    }
  }

  dynamic "statement" {
    for_each = local.host_key_kms_key_arn == null ? [] : [1]
    content {
      sid       = "DecryptTheHostKeyThroughSsm"
      actions   = ["kms:Decrypt"]
      resources = [local.host_key_kms_key_arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.${local.dns_suffix}"]
      }
    }
  }

  statement {
    sid       = "CompleteTheDrainLifecycleHook"
    actions   = ["autoscaling:CompleteLifecycleAction"]
    resources = [local.asg_arn]
  }

  # Liveness: an instance whose /livez fails reports itself Unhealthy (the
  # group checks EC2 status only), and the group replaces it through the drain.
  statement {
    sid       = "ReportLivenessFailures"
    actions   = ["autoscaling:SetInstanceHealth"]
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
      resources = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}:*"]
    }
  }

  # The audit archive: new objects only. The bastion sends If-None-Match: * on
  # every PutObject, so S3 refuses to replace an existing key; a request
  # without the header (an overwrite, a multipart upload, a copy) is not allowed.
  dynamic "statement" {
    for_each = local.audit_s3_enabled ? [1] : []
    content {
      sid       = "ArchiveTheAuditTrailInS3"
      actions   = ["s3:PutObject"]
      resources = ["${local.audit_s3_bucket_arn}/${var.audit_s3_prefix}*"]

      condition {
        test     = "Null"
        variable = "s3:if-none-match"
        values   = ["false"]
      }
    }
  }

  # A chunk S3 refused to replace (the bastion wrote it just before a crash, and
  # did not live to record it) is read back, so its events are not sent again.
  dynamic "statement" {
    for_each = local.audit_s3_enabled ? [1] : []
    content {
      sid       = "ReadBackAChunkAlreadyThere"
      actions   = ["s3:GetObject"]
      resources = ["${local.audit_s3_bucket_arn}/${var.audit_s3_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = local.audit_s3_enabled && local.audit_s3_kms_key_arn != null ? [1] : []
    content {
      sid       = "EncryptTheAuditArchive"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [local.audit_s3_kms_key_arn]

      # For the archive's objects only (the bucket's own ARN with an S3 Bucket Key).
      condition {
        test     = "StringLike"
        variable = "kms:EncryptionContext:aws:s3:arn"
        values   = [local.audit_s3_bucket_arn, "${local.audit_s3_bucket_arn}/${var.audit_s3_prefix}*"]
      }
    }
  }

  # The bastion and its worker, when they come from S3.
  dynamic "statement" {
    for_each = length(local.binary_s3) > 0 ? [1] : []
    content {
      sid       = "FetchTheBastionBinaries"
      actions   = ["s3:GetObject"]
      resources = distinct([for b in local.binary_s3 : "arn:${local.partition}:s3:::${b[0]}/${b[1]}"])
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
  count = local.create_iam_role ? 1 : 0

  name   = var.name
  role   = aws_iam_role.this[0].id
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
      Principal = { AWS = local.iam_role_arn }
      Action    = "sts:AssumeRole"
    }]
  }
}
