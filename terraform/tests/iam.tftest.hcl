# The instance role: terraform-aws-modules naming, a role and security group
# brought along, and ARNs in another partition.

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

run "role_naming_path_and_boundary" {
  command = plan

  variables {
    iam_role_name                 = "jump-host"
    iam_role_use_name_prefix      = true
    iam_role_path                 = "/platform/bastion/"
    iam_role_permissions_boundary = "arn:aws:iam::123456789012:policy/boundaries/workload"
  }

  assert {
    condition     = aws_iam_role.this[0].name_prefix == "jump-host-" && aws_iam_role.this[0].path == "/platform/bastion/" && aws_iam_role.this[0].permissions_boundary == "arn:aws:iam::123456789012:policy/boundaries/workload"
    error_message = "role name prefix, path and permissions boundary"
  }

  assert {
    condition     = aws_iam_instance_profile.this[0].name_prefix == "jump-host-" && aws_iam_instance_profile.this[0].path == "/platform/bastion/"
    error_message = "instance profile name prefix and path"
  }
}

run "bring_your_own_profile_and_security_group" {
  command = plan

  variables {
    create_iam_instance_profile = false
    iam_instance_profile_arn    = "arn:aws:iam::123456789012:instance-profile/platform/bastion-own"
    create_security_group       = false
    security_group_id           = "sg-0123456789abcdef0"
    create_audit_bucket         = true
  }

  assert {
    condition = alltrue([for n in [
      length(aws_iam_role.this), length(aws_iam_instance_profile.this), length(aws_iam_role_policy.this),
      length(aws_iam_role_policy_attachment.ssm), length(aws_security_group.this),
      length(aws_vpc_security_group_ingress_rule.ssh_from_lb), length(aws_vpc_security_group_ingress_rule.health_from_lb),
      length(aws_vpc_security_group_egress_rule.onward), length(aws_vpc_security_group_egress_rule.https),
    ] : n == 0])
    error_message = "a role or security group brought along: the module creates neither, nor their rules"
  }

  assert {
    condition     = aws_launch_template.this[0].iam_instance_profile[0].arn == "arn:aws:iam::123456789012:instance-profile/platform/bastion-own"
    error_message = "the launch template must use the profile brought along"
  }

  assert {
    condition     = aws_launch_template.this[0].network_interfaces[0].security_groups == toset(["sg-0123456789abcdef0"])
    error_message = "the launch template must use the security group brought along"
  }

  # The NLB's own group still reaches the instances, in the group brought along.
  assert {
    condition     = aws_vpc_security_group_egress_rule.lb_to_instances["ssh"].referenced_security_group_id == "sg-0123456789abcdef0"
    error_message = "the NLB's group must reach the security group brought along"
  }

  # The profile's role (looked up) is the one the outputs, the bucket policy and the trust policy name.
  assert {
    condition     = output.iam_role_arn == "arn:aws:iam::123456789012:role/platform/bastion-own" && output.iam_role_name == "bastion-own" && output.iam_instance_profile_arn == "arn:aws:iam::123456789012:instance-profile/platform/bastion-own"
    error_message = "outputs: ${output.iam_role_arn}, ${output.iam_role_name}"
  }

  assert {
    condition     = data.aws_iam_instance_profile.this[0].name == "bastion-own"
    error_message = "the profile's name from its ARN: ${data.aws_iam_instance_profile.this[0].name}"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.audit_bucket[0].statement : anytrue([
      for c in s.condition : c.variable == "aws:PrincipalArn" && join(",", c.values) == "arn:aws:iam::123456789012:role/platform/bastion-own"
    ])])
    error_message = "the audit bucket's policy must name the role brought along"
  }

  assert {
    condition     = jsondecode(output.identity_account_policies.trust_policy).Statement[0].Principal.AWS == "arn:aws:iam::123456789012:role/platform/bastion-own"
    error_message = "the identity account's trust policy must name the role brought along"
  }
}

run "profile_without_its_arn_is_refused" {
  command = plan

  variables {
    create_iam_instance_profile = false
  }

  expect_failures = [var.iam_instance_profile_arn]
}

run "security_group_without_its_id_is_refused" {
  command = plan

  variables {
    create_security_group = false
  }

  expect_failures = [var.security_group_id]
}

run "another_partition" {
  command = plan

  variables {
    bastion_binary_url   = "s3://artifacts-cn/bastion/bastion-x86_64"
    create_audit_bucket  = true
    eic_push             = true
    assume_role_arn      = null
    create_alarms        = true
    host_key_kms_key_arn = null
  }

  override_data {
    target = data.aws_partition.current
    values = {
      partition  = "aws-cn"
      dns_suffix = "amazonaws.com.cn"
    }
  }

  override_data {
    target = data.aws_region.current
    values = {
      name = "cn-north-1"
    }
  }

  override_resource {
    target          = aws_kms_key.this
    override_during = plan
    values = {
      arn = "arn:aws-cn:kms:cn-north-1:123456789012:key/0000aaaa-1111-bbbb-2222-cccc3333dddd"
    }
  }

  override_resource {
    target          = aws_iam_role.this
    override_during = plan
    values = {
      arn = "arn:aws-cn:iam::123456789012:role/bastion"
    }
  }

  override_resource {
    target          = aws_s3_bucket.audit
    override_during = plan
    values = {
      arn    = "arn:aws-cn:s3:::bastion-audit-1"
      bucket = "bastion-audit-1"
      id     = "bastion-audit-1"
    }
  }

  # Every ARN the module builds names the partition it runs in.
  assert {
    condition     = !strcontains(jsonencode(data.aws_iam_policy_document.this.statement), "arn:aws:")
    error_message = "the role's policy names partition aws: ${jsonencode(data.aws_iam_policy_document.this.statement)}"
  }

  assert {
    condition     = strcontains(jsonencode(data.aws_iam_policy_document.this.statement), "arn:aws-cn:autoscaling:cn-north-1:123456789012:autoScalingGroup:")
    error_message = "the role's policy does not name the aws-cn partition"
  }

  assert {
    condition = !strcontains(jsonencode([
      data.aws_iam_policy_document.audit_bucket[0].statement, data.aws_iam_policy_document.kms[0].statement,
      local.eic_push_policy, local.eic_user_policy, aws_iam_role_policy_attachment.ssm[0].policy_arn,
    ]), "arn:aws:")
    error_message = "a policy names partition aws"
  }

  # Service names carry the partition's DNS suffix.
  assert {
    condition     = one(one(data.aws_iam_policy_document.assume_ec2[0].statement).principals).identifiers == toset(["ec2.amazonaws.com.cn"])
    error_message = "the EC2 service principal in aws-cn"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "DecryptTheHostKeyThroughSsm" && anytrue([
      for c in s.condition : c.variable == "kms:ViaService" && join(",", c.values) == "ssm.cn-north-1.amazonaws.com.cn"
    ])])
    error_message = "kms:ViaService in aws-cn"
  }
}
