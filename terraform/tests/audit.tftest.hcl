# The S3 audit archive: the instance role writes new objects only (If-None-Match),
# and the bucket the module creates (create_audit_bucket) keeps them.

mock_provider "aws" {
  source = "./tests/aws"
}

variables {
  vpc_id                       = "vpc-0123456789abcdef0"
  subnet_ids                   = ["subnet-0a", "subnet-0b"]
  lb_subnet_ids                = ["subnet-0c", "subnet-0d"]
  allowed_cidr_blocks          = ["203.0.113.0/24"]
  iam_groups                   = ["bastion-users"]
  bastion_binary_url           = "https://releases.example.com/bastion/v1.0.0/bastion-x86_64"
  bastion_binary_sha256        = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
  bastion_worker_binary_sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
}

run "an_existing_bucket_gets_only_conditional_puts" {
  command = plan

  variables {
    audit_s3_bucket      = "example-audit"
    audit_s3_prefix      = "trails/"
    audit_s3_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement :
      s.sid == "ArchiveTheAuditTrailInS3" && s.actions == toset(["s3:PutObject"]) &&
      s.resources == toset(["arn:aws:s3:::example-audit/trails/*"]) &&
      length(s.condition) == 1 && anytrue([for c in s.condition : c.test == "Null" && c.variable == "s3:if-none-match" && join(",", c.values) == "false"])
    ])
    error_message = "s3:PutObject must be allowed under the prefix only with If-None-Match present (Null s3:if-none-match = false)"
  }

  # Reading a chunk back (after a crash, S3 refused to replace it) under the prefix only.
  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement :
      s.sid == "ReadBackAChunkAlreadyThere" && s.actions == toset(["s3:GetObject"]) &&
      s.resources == toset(["arn:aws:s3:::example-audit/trails/*"]) && length(s.condition) == 0
    ])
    error_message = "s3:GetObject under the prefix, to read back a chunk already there"
  }

  # No other S3 permission, and never a delete.
  assert {
    condition = alltrue([for s in data.aws_iam_policy_document.this.statement : alltrue([
      for a in s.actions : !startswith(a, "s3:") || s.sid == "ArchiveTheAuditTrailInS3" || (s.sid == "ReadBackAChunkAlreadyThere" && a == "s3:GetObject")
    ])])
    error_message = "an S3 permission besides the conditional PutObject and the read-back"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement :
      s.sid == "EncryptTheAuditArchive" && s.actions == toset(["kms:GenerateDataKey", "kms:Decrypt"]) &&
      s.resources == toset(["arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"]) &&
      anytrue([for c in s.condition : c.variable == "kms:EncryptionContext:aws:s3:arn" && toset(c.values) == toset(["arn:aws:s3:::example-audit", "arn:aws:s3:::example-audit/trails/*"])])
    ])
    error_message = "kms:GenerateDataKey and kms:Decrypt (read-back) must be bound to the archive's objects"
  }

  assert {
    condition     = length(aws_s3_bucket.audit) == 0 && output.audit_s3_bucket_name == "example-audit" && output.audit_s3_bucket_arn == "arn:aws:s3:::example-audit"
    error_message = "an existing bucket: nothing created, outputs name it"
  }
}

run "the_module_creates_a_locked_bucket" {
  command = plan

  variables {
    create_audit_bucket = true
  }

  assert {
    condition     = length(aws_s3_bucket.audit) == 1 && aws_s3_bucket.audit[0].object_lock_enabled == true && aws_s3_bucket.audit[0].bucket_prefix == "bastion-audit-" && aws_s3_bucket.audit[0].force_destroy == false
    error_message = "the audit bucket must be created with Object Lock (and not force-destroyed)"
  }

  assert {
    condition     = aws_s3_bucket_versioning.audit[0].versioning_configuration[0].status == "Enabled"
    error_message = "the audit bucket must be versioned"
  }

  assert {
    condition     = aws_s3_bucket_object_lock_configuration.audit[0].rule[0].default_retention[0].mode == "GOVERNANCE" && aws_s3_bucket_object_lock_configuration.audit[0].rule[0].default_retention[0].days == 365
    error_message = "default retention: GOVERNANCE for 365 days"
  }

  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.audit[0].block_public_acls, aws_s3_bucket_public_access_block.audit[0].block_public_policy,
      aws_s3_bucket_public_access_block.audit[0].ignore_public_acls, aws_s3_bucket_public_access_block.audit[0].restrict_public_buckets,
    ])
    error_message = "public access must be blocked"
  }

  # SSE-KMS with the module's key (no audit_s3_kms_key_arn), which the bastion names too.
  assert {
    condition = one([for r in aws_s3_bucket_server_side_encryption_configuration.audit[0].rule : one(r.apply_server_side_encryption_by_default).sse_algorithm]) == "aws:kms" && one([
      for r in aws_s3_bucket_server_side_encryption_configuration.audit[0].rule : one(r.apply_server_side_encryption_by_default).kms_master_key_id
    ]) == aws_kms_key.this[0].arn
    error_message = "the bucket must default to SSE-KMS with the module's key"
  }

  assert {
    condition     = local.audit_s3_kms_key_arn == aws_kms_key.this[0].arn && local.audit_s3_bucket == "bastion-audit-20250101000000000000000001"
    error_message = "the bastion must archive to the created bucket with the module's key"
  }

  # The bucket policy: TLS only; the instance role writes only with If-None-Match and never deletes.
  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.audit_bucket[0].statement :
      s.effect == "Deny" && s.actions == toset(["s3:*"]) && anytrue([for c in s.condition : c.variable == "aws:SecureTransport" && join(",", c.values) == "false"])
    ])
    error_message = "the bucket policy must deny requests without TLS"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.audit_bucket[0].statement :
      s.effect == "Deny" && s.actions == toset(["s3:PutObject"]) &&
      anytrue([for c in s.condition : c.test == "Null" && c.variable == "s3:if-none-match" && join(",", c.values) == "true"]) &&
      anytrue([for c in s.condition : c.test == "ArnEquals" && c.variable == "aws:PrincipalArn" && join(",", c.values) == "arn:aws:iam::123456789012:role/bastion"])
    ])
    error_message = "the bucket policy must deny the instance role PutObject without If-None-Match"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.audit_bucket[0].statement :
      s.effect == "Deny" && contains(s.actions, "s3:DeleteObject*") && contains(s.actions, "s3:BypassGovernanceRetention") &&
      anytrue([for c in s.condition : c.variable == "aws:PrincipalArn" && join(",", c.values) == "arn:aws:iam::123456789012:role/bastion"])
    ])
    error_message = "the bucket policy must deny the instance role deletes"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement :
      s.sid == "ArchiveTheAuditTrailInS3" && s.resources == toset(["arn:aws:s3:::bastion-audit-20250101000000000000000001/bastion/*"]) &&
      anytrue([for c in s.condition : c.test == "Null" && c.variable == "s3:if-none-match" && join(",", c.values) == "false"])
    ])
    error_message = "the role's PutObject on the created bucket must carry the If-None-Match condition"
  }

  assert {
    condition     = output.audit_s3_bucket_name == "bastion-audit-20250101000000000000000001" && output.audit_s3_bucket_arn == "arn:aws:s3:::bastion-audit-20250101000000000000000001"
    error_message = "outputs: ${output.audit_s3_bucket_name}, ${output.audit_s3_bucket_arn}"
  }
}

run "compliance_mode_named_bucket_own_key" {
  command = plan

  variables {
    create_audit_bucket       = true
    audit_s3_bucket           = "example-audit"
    audit_s3_object_lock_mode = "COMPLIANCE"
    audit_s3_object_lock_days = 2557
    audit_s3_kms_key_arn      = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
  }

  assert {
    condition     = aws_s3_bucket.audit[0].bucket == "example-audit"
    error_message = "the named bucket"
  }

  assert {
    condition     = length(aws_s3_bucket_logging.audit) == 0
    error_message = "no access logs unless asked for"
  }

  assert {
    condition     = aws_s3_bucket_object_lock_configuration.audit[0].rule[0].default_retention[0].mode == "COMPLIANCE" && aws_s3_bucket_object_lock_configuration.audit[0].rule[0].default_retention[0].days == 2557
    error_message = "default retention: COMPLIANCE for 2557 days"
  }

  assert {
    condition     = local.audit_s3_kms_key_arn == "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    error_message = "the bucket's key: ${local.audit_s3_kms_key_arn}"
  }
}

run "access_logs" {
  command = plan

  variables {
    create_audit_bucket        = true
    audit_s3_access_log_bucket = "example-logs"
  }

  assert {
    condition     = aws_s3_bucket_logging.audit[0].target_bucket == "example-logs" && aws_s3_bucket_logging.audit[0].target_prefix == "bastion-audit-20250101000000000000000001/"
    error_message = "access logs to the log bucket, under the archive's name"
  }
}

run "unknown_lock_mode_is_refused" {
  command = plan

  variables {
    create_audit_bucket       = true
    audit_s3_object_lock_mode = "LEGAL_HOLD"
  }

  expect_failures = [var.audit_s3_object_lock_mode]
}
