# create = false, the alarms, and the outputs.

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

run "create_false_creates_nothing" {
  command = plan

  variables {
    create                     = false
    create_audit_bucket        = true
    create_alarms              = true
    host_sshd                  = "port"
    admin_cidr_blocks          = ["10.20.0.0/16"]
    route53_zone_id            = "Z0123456789ABCDEFGHIJ"
    route53_record_name        = "bastion.example.com"
    audit_s3_access_log_bucket = "example-logs"
  }

  assert {
    condition = alltrue([for n in [
      length(aws_lb.this), length(aws_lb_target_group.this), length(aws_lb_listener.ssh), length(aws_route53_record.this), length(aws_route53_record.ipv6),
      length(aws_launch_template.this), length(aws_autoscaling_group.this), length(aws_autoscaling_lifecycle_hook.drain),
      length(aws_iam_role.this), length(aws_iam_instance_profile.this), length(aws_iam_role_policy.this), length(aws_iam_role_policy_attachment.ssm),
      length(aws_security_group.this), length(aws_security_group.lb), length(aws_vpc_security_group_ingress_rule.ssh_from_lb),
      length(aws_vpc_security_group_ingress_rule.health_from_lb), length(aws_vpc_security_group_ingress_rule.ssh), length(aws_vpc_security_group_ingress_rule.health),
      length(aws_vpc_security_group_ingress_rule.host_sshd), length(aws_vpc_security_group_ingress_rule.lb_clients),
      length(aws_vpc_security_group_egress_rule.onward), length(aws_vpc_security_group_egress_rule.https), length(aws_vpc_security_group_egress_rule.lb_to_instances),
      length(aws_kms_key.this), length(aws_kms_alias.this), length(aws_cloudwatch_log_group.this),
      length(aws_s3_bucket.audit), length(aws_s3_bucket_versioning.audit), length(aws_s3_bucket_object_lock_configuration.audit),
      length(aws_s3_bucket_public_access_block.audit), length(aws_s3_bucket_ownership_controls.audit),
      length(aws_s3_bucket_server_side_encryption_configuration.audit), length(aws_s3_bucket_lifecycle_configuration.audit), length(aws_s3_bucket_policy.audit), length(aws_s3_bucket_logging.audit),
      length(aws_cloudwatch_metric_alarm.unhealthy_targets), length(aws_cloudwatch_metric_alarm.in_service),
      length(aws_cloudwatch_metric_alarm.refused_logins), length(aws_cloudwatch_metric_alarm.refused_forwards),
      length(aws_cloudwatch_log_metric_filter.refused_logins), length(aws_cloudwatch_log_metric_filter.refused_forwards),
      length(data.aws_vpc.this), length(data.aws_subnet.lb), length(data.aws_ssm_parameter.ami), length(data.aws_iam_instance_profile.this),
    ] : n == 0])
    error_message = "create = false still creates (or reads) something"
  }

  assert {
    condition     = output.lb_arn == null && output.autoscaling_group_arn == null && output.iam_role_arn == null && output.ssh_config == null && output.known_hosts_command == null && output.security_group_id == null
    error_message = "create = false: the outputs must be null"
  }
}

run "alarms" {
  command = plan

  variables {
    create_alarms                    = true
    alarm_actions                    = ["arn:aws:sns:eu-west-1:123456789012:oncall"]
    alarm_refused_logins_threshold   = 50
    alarm_refused_forwards_threshold = 10
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.unhealthy_targets[0].namespace == "AWS/NetworkELB" &&
      aws_cloudwatch_metric_alarm.unhealthy_targets[0].metric_name == "UnHealthyHostCount" &&
      aws_cloudwatch_metric_alarm.unhealthy_targets[0].dimensions["LoadBalancer"] == "net/bastion/0123456789abcdef" &&
      aws_cloudwatch_metric_alarm.unhealthy_targets[0].threshold == 0 &&
      aws_cloudwatch_metric_alarm.unhealthy_targets[0].evaluation_periods == 11
    )
    error_message = "the unhealthy targets alarm (longer than a drain: ceil((300 + 60) / 60) + 5 minutes)"
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.in_service[0].metric_name == "GroupInServiceInstances" &&
      aws_cloudwatch_metric_alarm.in_service[0].dimensions["AutoScalingGroupName"] == "bastion" &&
      aws_cloudwatch_metric_alarm.in_service[0].comparison_operator == "LessThanThreshold" &&
      aws_cloudwatch_metric_alarm.in_service[0].threshold == 2
    )
    error_message = "the in-service alarm must fire below min_size"
  }

  # The audit events' own fields (bastion/src/monitor.rs): auth.success, port.allowed.
  assert {
    condition     = aws_cloudwatch_log_metric_filter.refused_logins[0].pattern == "{ ($.event = \"auth\") && ($.success IS FALSE) }" && aws_cloudwatch_log_metric_filter.refused_logins[0].log_group_name == "/bastion/audit"
    error_message = "refused logins filter: ${aws_cloudwatch_log_metric_filter.refused_logins[0].pattern}"
  }

  assert {
    condition     = aws_cloudwatch_log_metric_filter.refused_forwards[0].pattern == "{ ($.event = \"port\") && ($.allowed IS FALSE) }"
    error_message = "refused forwards filter: ${aws_cloudwatch_log_metric_filter.refused_forwards[0].pattern}"
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.refused_logins[0].threshold == 50 && aws_cloudwatch_metric_alarm.refused_forwards[0].threshold == 10 && aws_cloudwatch_metric_alarm.refused_logins[0].metric_name == "RefusedLogins" && aws_cloudwatch_metric_alarm.refused_logins[0].namespace == "Bastion/bastion"
    error_message = "refusal alarms"
  }

  assert {
    condition     = alltrue([for a in [aws_cloudwatch_metric_alarm.unhealthy_targets[0], aws_cloudwatch_metric_alarm.in_service[0], aws_cloudwatch_metric_alarm.refused_logins[0], aws_cloudwatch_metric_alarm.refused_forwards[0]] : a.alarm_actions == toset(["arn:aws:sns:eu-west-1:123456789012:oncall"])])
    error_message = "every alarm notifies alarm_actions"
  }
}

run "no_log_group_no_refusal_alarms" {
  command = plan

  variables {
    create_alarms    = true
    create_log_group = false
    min_size         = 0
    desired_capacity = 0
  }

  assert {
    condition     = length(aws_cloudwatch_metric_alarm.unhealthy_targets) == 1 && length(aws_cloudwatch_metric_alarm.in_service) == 0 && length(aws_cloudwatch_log_metric_filter.refused_logins) == 0 && length(aws_cloudwatch_metric_alarm.refused_forwards) == 0
    error_message = "without a log group: no metric filters; with min_size 0: no in-service alarm"
  }
}

run "outputs" {
  command = plan

  variables {
    service_port = 2022
    health_port  = 8081
  }

  assert {
    condition     = output.lb_arn_suffix == "net/bastion/0123456789abcdef" && output.endpoint == "bastion-0123456789abcdef.elb.eu-west-1.amazonaws.com"
    error_message = "lb outputs"
  }

  assert {
    condition     = strcontains(output.known_hosts_command, "'[bastion-0123456789abcdef.elb.eu-west-1.amazonaws.com]:2022'") && strcontains(output.known_hosts_command, "aws ssm get-parameter --region eu-west-1 --name '/bastion/host_ed25519_key' --with-decryption")
    error_message = "known_hosts_command: ${output.known_hosts_command}"
  }

  assert {
    condition     = strcontains(output.ssh_config, "HostName bastion-0123456789abcdef.elb.eu-west-1.amazonaws.com") && strcontains(output.ssh_config, "Port 2022") && strcontains(output.ssh_config, "Host *.internal 10.0.*")
    error_message = "ssh_config: ${output.ssh_config}"
  }
}
