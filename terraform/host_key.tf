################################################################################
# KMS key (host key parameter, log group, audit bucket)
################################################################################

# A key policy: its "Resource": "*" means this key and nothing else.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:Key policy: Resource "*" is this key only; the root statement is AWS's default, which leaves access to the account's IAM policies.
  #checkov:skip=CKV_AWS_111:Key policy: Resource "*" is this key only; the logs statement is bound to the audit log group by its encryption context.
  #checkov:skip=CKV_AWS_356:Key policy: Resource "*" is the only form a key policy takes and means this key.
  count = local.create_kms_key ? 1 : 0

  # The AWS default: the account's IAM policies decide who may use the key.
  statement {
    sid       = "AccountIamPoliciesGovernTheKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  dynamic "statement" {
    for_each = var.create_log_group ? [1] : []
    content {
      sid = "CloudWatchLogsEncryptsTheAuditLogGroup"
      actions = [
        "kms:Encrypt*",
        "kms:Decrypt*",
        "kms:ReEncrypt*",
        "kms:GenerateDataKey*",
        "kms:Describe*",
      ]
      resources = ["*"]

      principals {
        type        = "Service"
        identifiers = ["logs.${local.region}.${local.dns_suffix}"]
      }

      condition {
        test     = "ArnEquals"
        variable = "kms:EncryptionContext:aws:logs:arn"
        values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}"]
      }
    }
  }
}

resource "aws_kms_key" "this" {
  count = local.create_kms_key ? 1 : 0

  description             = "${var.name}: SSH host key parameter, audit log group and audit bucket"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_key_deletion_window_in_days
  policy                  = data.aws_iam_policy_document.kms[0].json

  tags = local.tags
}

resource "aws_kms_alias" "this" {
  count = local.create_kms_key ? 1 : 0

  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this[0].key_id
}

################################################################################
# Host key: one for every instance behind the load balancer
#
# Not a resource: the first instance that boots generates the key (ssh-keygen)
# and stores it with `aws ssm put-parameter --type SecureString` (no
# --overwrite: the first writer wins, every other instance reads the winner's
# key), so the private key never enters the Terraform state. `terraform
# destroy` leaves the parameter (see the README).
################################################################################

# Earlier versions generated the key in Terraform (tls_private_key) and stored
# it here (aws_ssm_parameter). Upgrading forgets both instead of destroying
# them: the parameter, and so the key users know, stays as it is, and the
# instances read it (their put-parameter finds it exists).
removed {
  from = aws_ssm_parameter.host_key

  lifecycle {
    destroy = false
  }
}

removed {
  from = tls_private_key.host

  lifecycle {
    destroy = false
  }
}

################################################################################
# Log group (for shipping the audit trail off the instances)
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  count = local.create && var.create_log_group ? 1 : 0

  name              = local.log_group_name
  retention_in_days = var.log_retention_in_days
  kms_key_id        = local.kms_key_arn

  tags = local.tags

  depends_on = [aws_kms_key.this]
}
