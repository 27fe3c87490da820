# The bastion-worker binary: its URL (derived or given), its checksum, and the
# S3 permissions for both binaries.

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

run "worker_next_to_the_bastion_in_s3" {
  command = plan

  variables {
    bastion_binary_url = "s3://my-artifacts/bastion/v1/bastion-x86_64"
  }

  assert {
    condition     = local.worker_binary_url == "s3://my-artifacts/bastion/v1/bastion-worker"
    error_message = "worker URL: ${local.worker_binary_url}"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "FetchTheBastionBinaries" && s.actions == toset(["s3:GetObject"]) && s.resources == toset([
      "arn:aws:s3:::my-artifacts/bastion/v1/bastion-x86_64",
      "arn:aws:s3:::my-artifacts/bastion/v1/bastion-worker",
    ])])
    error_message = "s3:GetObject must cover the bastion and the worker objects, and only them"
  }
}

run "worker_elsewhere" {
  command = plan

  variables {
    bastion_binary_url        = "https://releases.example.com/bastion/v1.0.0/bastion-x86_64"
    bastion_worker_binary_url = "s3://other-artifacts/worker/bastion-worker-x86_64"
  }

  assert {
    condition     = local.worker_binary_url == "s3://other-artifacts/worker/bastion-worker-x86_64"
    error_message = "worker URL: ${local.worker_binary_url}"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "FetchTheBastionBinaries" && s.resources == toset([
      "arn:aws:s3:::other-artifacts/worker/bastion-worker-x86_64",
    ])])
    error_message = "s3:GetObject must cover the worker object (the bastion comes over https)"
  }
}

run "worker_checksum_is_required_with_a_binary" {
  command = plan

  variables {
    bastion_worker_binary_sha256 = null
  }

  expect_failures = [var.bastion_worker_binary_sha256]
}

run "worker_checksum_must_be_lowercase_hex" {
  command = plan

  variables {
    bastion_worker_binary_sha256 = "5891B5B522D5DF086D0FF0B110FBD9D21BB4FC7163AF34D08286A2E846F6BE03"
  }

  expect_failures = [var.bastion_worker_binary_sha256]
}

run "container_mode_takes_no_worker" {
  command = plan

  variables {
    bastion_binary_url           = null
    bastion_binary_sha256        = null
    bastion_worker_binary_sha256 = null
    docker_image                 = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/bastion@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    ami_id                       = "ami-0123456789abcdef0"
  }

  assert {
    condition     = local.worker_binary_url == null && length(local.binary_s3) == 0
    error_message = "container mode derived a worker URL"
  }

  assert {
    condition     = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "PullTheBastionImage" && s.resources == toset(["arn:aws:ecr:eu-west-1:123456789012:repository/bastion"])])
    error_message = "ECR pull permission"
  }
}

run "worker_checksum_only_with_a_binary" {
  command = plan

  variables {
    bastion_binary_url    = null
    bastion_binary_sha256 = null
    docker_image          = "registry.example.com/bastion:1.2.3"
  }

  expect_failures = [var.bastion_worker_binary_sha256]
}
