# The module planned with its defaults, against a mocked AWS provider
# (tests/aws): what is created, the health checks, the drain's timings, the
# security groups and the instance role's policy.

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

run "defaults" {
  command = plan

  # One of each, and no host key resource: the first instance generates it.
  assert {
    condition = alltrue([for n in [
      length(aws_lb.this), length(aws_lb_target_group.this), length(aws_lb_listener.ssh),
      length(aws_autoscaling_group.this), length(aws_launch_template.this), length(aws_autoscaling_lifecycle_hook.drain),
      length(aws_iam_role.this), length(aws_iam_instance_profile.this), length(aws_iam_role_policy.this),
      length(aws_security_group.this), length(aws_security_group.lb), length(aws_kms_key.this),
      length(aws_cloudwatch_log_group.this),
    ] : n == 1])
    error_message = "the default plan does not create one of each main resource"
  }

  assert {
    condition     = length(aws_s3_bucket.audit) == 0 && length(aws_cloudwatch_metric_alarm.unhealthy_targets) == 0 && length(aws_route53_record.this) == 0
    error_message = "the default plan creates an audit bucket, alarms or a DNS record"
  }

  # Readiness for the NLB, EC2 status for the group (it must not replace busy instances).
  assert {
    condition     = aws_lb_target_group.this[0].health_check[0].path == "/readyz" && aws_lb_target_group.this[0].health_check[0].port == "8080"
    error_message = "target group health check: ${aws_lb_target_group.this[0].health_check[0].path} on ${aws_lb_target_group.this[0].health_check[0].port}"
  }

  assert {
    condition     = aws_autoscaling_group.this[0].health_check_type == "EC2"
    error_message = "ASG health check type: ${aws_autoscaling_group.this[0].health_check_type}"
  }

  # The drain: shutdown grace 300 s, audit ship grace 60 s.
  assert {
    condition     = local.stop_timeout_seconds == 390 && aws_autoscaling_lifecycle_hook.drain[0].heartbeat_timeout == 480
    error_message = "stop timeout ${local.stop_timeout_seconds}, heartbeat ${aws_autoscaling_lifecycle_hook.drain[0].heartbeat_timeout}"
  }

  assert {
    condition     = aws_lb_target_group.this[0].target_health_state[0].unhealthy_draining_interval == 390
    error_message = "unhealthy draining interval: ${aws_lb_target_group.this[0].target_health_state[0].unhealthy_draining_interval}"
  }

  # The NLB has its own security group and admits the clients; the instances admit it.
  assert {
    condition     = length(aws_lb.this[0].security_groups) == 1 && aws_lb.this[0].ip_address_type == "ipv4"
    error_message = "the NLB has no security group of its own, or is not IPv4-only"
  }

  assert {
    condition     = keys(aws_vpc_security_group_ingress_rule.lb_clients) == ["203.0.113.0/24"] && aws_vpc_security_group_ingress_rule.lb_clients["203.0.113.0/24"].from_port == 22
    error_message = "the NLB's group does not admit exactly the allowed clients on 22"
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.ssh_from_lb) == 1 && length(aws_vpc_security_group_ingress_rule.health_from_lb) == 1 && length(aws_vpc_security_group_ingress_rule.ssh) == 0 && length(aws_vpc_security_group_ingress_rule.health) == 0
    error_message = "the instances must admit the NLB's group (and not the clients' ranges) on the SSH and health ports"
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.health_from_lb[0].from_port == 8080 && join(",", sort(keys(aws_vpc_security_group_egress_rule.lb_to_instances))) == "health,ssh"
    error_message = "health checks: the NLB's group must reach the instances on 22 and 8080"
  }

  # host_sshd defaults to disabled: no rule for it.
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.host_sshd) == 0
    error_message = "host_sshd = disabled must not open a port"
  }

  # The role: health and drain on this group only; the host key created on first boot.
  assert {
    condition = alltrue([for sid in ["CompleteTheDrainLifecycleHook", "ReportLivenessFailures"] : anytrue([
      for s in data.aws_iam_policy_document.this.statement : s.sid == sid && length(s.resources) == 1 &&
      contains(s.resources, "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:autoScalingGroupName/bastion")
    ])])
    error_message = "CompleteLifecycleAction and SetInstanceHealth must be granted on this group only"
  }

  assert {
    condition     = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "ReportLivenessFailures" && s.actions == toset(["autoscaling:SetInstanceHealth"])])
    error_message = "the role may not set its instances' health"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "CreateTheHostKeyOnFirstBoot" &&
    s.actions == toset(["ssm:PutParameter"]) && s.resources == toset(["arn:aws:ssm:eu-west-1:123456789012:parameter/bastion/host_ed25519_key"])])
    error_message = "the role may not create the host key parameter (and only it)"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "NeverReplaceTheHostKey" && s.effect == "Deny" &&
      s.actions == toset(["ssm:PutParameter"]) && anytrue([for c in s.condition : c.variable == "ssm:Overwrite" && join(",", c.values) == "true"])
    ])
    error_message = "the role must not be able to overwrite the host key"
  }

  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.this.statement : s.sid == "EncryptTheHostKeyThroughSsm" &&
      s.actions == toset(["kms:Encrypt", "kms:GenerateDataKey"]) && anytrue([for c in s.condition :
        c.variable == "kms:EncryptionContext:PARAMETER_ARN" && join(",", c.values) == "arn:aws:ssm:eu-west-1:123456789012:parameter/bastion/host_ed25519_key"
    ])])
    error_message = "the KMS encrypt grant is not bound to the host key parameter's encryption context"
  }

  assert {
    condition     = local.generate_host_key && local.host_key_parameter_name == "/bastion/host_ed25519_key" && output.host_key_parameter_name == "/bastion/host_ed25519_key"
    error_message = "host key parameter: ${local.host_key_parameter_name}"
  }

  # The worker's URL: the bastion's with its last path segment replaced.
  assert {
    condition     = local.worker_binary_url == "https://releases.example.com/bastion/v1.0.0/bastion-worker"
    error_message = "worker URL: ${local.worker_binary_url}"
  }

  # No S3 archive: no S3 permission at all.
  assert {
    condition     = !anytrue([for s in data.aws_iam_policy_document.this.statement : anytrue([for a in s.actions : startswith(a, "s3:")])])
    error_message = "S3 permissions without an S3 archive or an s3:// binary"
  }
}

run "ship_grace_reaches_the_stop_timeout_and_the_heartbeat" {
  command = plan

  variables {
    shutdown_grace_seconds   = 600
    audit_ship_grace_seconds = 240
  }

  assert {
    condition     = local.stop_timeout_seconds == 870 && aws_autoscaling_lifecycle_hook.drain[0].heartbeat_timeout == 960
    error_message = "stop timeout ${local.stop_timeout_seconds} (600 + 240 + 30), heartbeat ${aws_autoscaling_lifecycle_hook.drain[0].heartbeat_timeout} (600 + 240 + 120)"
  }

  assert {
    condition     = aws_lb_target_group.this[0].target_health_state[0].unhealthy_draining_interval == 870
    error_message = "unhealthy draining interval: ${aws_lb_target_group.this[0].target_health_state[0].unhealthy_draining_interval}"
  }
}

run "ship_grace_beyond_the_hook_is_refused" {
  command = plan

  variables {
    shutdown_grace_seconds   = 6900
    audit_ship_grace_seconds = 200
  }

  expect_failures = [var.audit_ship_grace_seconds]
}

run "ipv6_clients_make_the_nlb_dualstack" {
  command = plan

  variables {
    allowed_cidr_blocks = ["203.0.113.0/24", "2001:db8::/32"]
    route53_zone_id     = "Z0123456789ABCDEFGHIJ"
    route53_record_name = "bastion.example.com"
  }

  assert {
    condition     = aws_route53_record.this[0].type == "A" && aws_route53_record.ipv6[0].type == "AAAA" && aws_route53_record.ipv6[0].name == "bastion.example.com"
    error_message = "a dualstack NLB gets an AAAA alias next to the A one"
  }

  assert {
    condition     = aws_lb.this[0].ip_address_type == "dualstack"
    error_message = "IPv6 clients need a dualstack NLB"
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.lb_clients["2001:db8::/32"].cidr_ipv6 == "2001:db8::/32" && aws_vpc_security_group_ingress_rule.lb_clients["2001:db8::/32"].cidr_ipv4 == null
    error_message = "the IPv6 clients' rule"
  }
}

run "without_the_nlb_security_group" {
  command = plan

  variables {
    create_lb_security_group = false
    allowed_cidr_blocks      = ["203.0.113.0/24", "2001:db8::/32"]
  }

  assert {
    condition     = length(aws_security_group.lb) == 0 && aws_lb.this[0].ip_address_type == "ipv4" && length(aws_lb.this[0].security_groups) == 0
    error_message = "create_lb_security_group = false: no NLB group, and no dualstack (nothing would filter IPv6 clients)"
  }

  assert {
    condition     = join(",", sort(keys(aws_vpc_security_group_ingress_rule.ssh))) == "2001:db8::/32,203.0.113.0/24" && length(aws_vpc_security_group_ingress_rule.ssh_from_lb) == 0
    error_message = "without the NLB's group the instances admit the clients' ranges"
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.health) == 2 && aws_vpc_security_group_ingress_rule.health[0].cidr_ipv4 == "10.0.200.0/24"
    error_message = "without the NLB's group the instances admit health checks from the NLB's subnets"
  }
}
