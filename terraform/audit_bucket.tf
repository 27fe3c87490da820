################################################################################
# S3 audit archive
#
# The bastion writes every chunk of the audit trail as a new object and sends
# If-None-Match: * on every PutObject; the instance role may only make such
# requests (iam.tf), so it can add objects but never replace one. The bucket
# the module creates (create_audit_bucket) adds versioning, Object Lock with a
# default retention (nobody deletes an object version early: in COMPLIANCE
# mode not even the account root), and a bucket policy that denies the
# instance role any write without If-None-Match and any delete, whatever IAM
# policies the role may be given later.
################################################################################

locals {
  create_audit_bucket = local.create && var.create_audit_bucket

  # Known at plan time (the created bucket's name may not be).
  audit_s3_enabled     = var.create_audit_bucket ? local.create : var.audit_s3_bucket != null
  audit_s3_bucket      = var.create_audit_bucket ? one(aws_s3_bucket.audit[*].bucket) : var.audit_s3_bucket
  audit_s3_bucket_arn  = local.audit_s3_enabled ? "arn:${local.partition}:s3:::${local.audit_s3_bucket}" : null
  audit_s3_kms_key_arn = var.audit_s3_kms_key_arn != null ? var.audit_s3_kms_key_arn : var.create_audit_bucket ? local.kms_key_arn : null
}

resource "aws_s3_bucket" "audit" {
  #checkov:skip=CKV_AWS_144:Cross-region replication needs a bucket in another region and a replication role, outside this module; Object Lock already keeps every version here.
  #checkov:skip=CKV2_AWS_62:Event notifications have no consumer: nothing reacts to new audit objects, which are read with `bastion audit show --source s3`.
  count = local.create_audit_bucket ? 1 : 0

  bucket        = var.audit_s3_bucket
  bucket_prefix = var.audit_s3_bucket == null ? "${lower(var.name)}-audit-" : null

  # Object Lock can only be turned on when the bucket is created (it enables versioning).
  object_lock_enabled = true
  force_destroy       = false

  tags = local.tags
}

resource "aws_s3_bucket_versioning" "audit" {
  count = local.create_audit_bucket ? 1 : 0

  bucket = aws_s3_bucket.audit[0].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "audit" {
  count = local.create_audit_bucket ? 1 : 0

  bucket = aws_s3_bucket.audit[0].id

  rule {
    default_retention {
      mode = var.audit_s3_object_lock_mode
      days = var.audit_s3_object_lock_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.audit]
}

resource "aws_s3_bucket_public_access_block" "audit" {
  count = local.create_audit_bucket ? 1 : 0

  bucket                  = aws_s3_bucket.audit[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "audit" {
  count = local.create_audit_bucket ? 1 : 0

  bucket = aws_s3_bucket.audit[0].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "audit" {
  count = local.create_audit_bucket ? 1 : 0

  bucket = aws_s3_bucket.audit[0].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.audit_s3_kms_key_arn
    }
    bucket_key_enabled = true
  }
}

# Object Lock keeps every version for the retention; nothing expires here (add
# your own expiry after the retention if you want one). Multipart uploads are
# never started by the bastion: clean up any that are.
resource "aws_s3_bucket_lifecycle_configuration" "audit" {
  count = local.create_audit_bucket ? 1 : 0

  bucket = aws_s3_bucket.audit[0].id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.audit]
}

# Who read or wrote the archive: server access logs to a bucket of yours.
resource "aws_s3_bucket_logging" "audit" {
  count = local.create_audit_bucket && var.audit_s3_access_log_bucket != null ? 1 : 0

  bucket        = aws_s3_bucket.audit[0].id
  target_bucket = var.audit_s3_access_log_bucket
  target_prefix = "${aws_s3_bucket.audit[0].id}/"
}

data "aws_iam_policy_document" "audit_bucket" {
  count = local.create_audit_bucket ? 1 : 0

  statement {
    sid       = "DenyRequestsWithoutTls"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.audit[0].arn, "${aws_s3_bucket.audit[0].arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # The instance role adds objects; it never replaces one (If-None-Match: *).
  statement {
    sid       = "DenyTheBastionWritesWithoutIfNoneMatch"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.audit[0].arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:PrincipalArn"
      values   = [local.iam_role_arn]
    }

    condition {
      test     = "Null"
      variable = "s3:if-none-match"
      values   = ["true"]
    }
  }

  # ... and never deletes one, nor loosens its retention.
  statement {
    sid    = "DenyTheBastionDeletes"
    effect = "Deny"
    actions = [
      "s3:DeleteObject*",
      "s3:BypassGovernanceRetention",
      "s3:PutObjectRetention",
      "s3:PutObjectLegalHold",
    ]
    resources = ["${aws_s3_bucket.audit[0].arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:PrincipalArn"
      values   = [local.iam_role_arn]
    }
  }
}

resource "aws_s3_bucket_policy" "audit" {
  count = local.create_audit_bucket ? 1 : 0

  bucket = aws_s3_bucket.audit[0].id
  policy = data.aws_iam_policy_document.audit_bucket[0].json

  depends_on = [aws_s3_bucket_public_access_block.audit]
}
