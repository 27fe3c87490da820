################################################################################
# KMS key (host key parameter, log group)
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
        identifiers = ["logs.${local.region}.amazonaws.com"]
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

  description             = "${var.name}: SSH host key parameter and audit log group"
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
################################################################################

# Generated once. The private key is in the Terraform state (keep the state
# encrypted and access-controlled), or supply host_key_parameter_name instead.
resource "tls_private_key" "host" {
  count = local.create_host_key ? 1 : 0

  algorithm = "ED25519"
}

resource "aws_ssm_parameter" "host_key" {
  count = local.create_host_key ? 1 : 0

  name        = local.host_key_parameter_name
  description = "${var.name}: the SSH host key every bastion instance presents (OpenSSH private key)"
  type        = "SecureString"
  key_id      = local.kms_key_arn
  value       = tls_private_key.host[0].private_key_openssh

  tags = local.tags
}

################################################################################
# Log group (for shipping the audit trail off the instances)
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  count = var.create_log_group ? 1 : 0

  name              = local.log_group_name
  retention_in_days = var.log_retention_in_days
  kms_key_id        = local.kms_key_arn

  tags = local.tags

  depends_on = [aws_kms_key.this]
}
