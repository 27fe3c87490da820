################################################################################
# Launch template
################################################################################

resource "aws_launch_template" "this" {
  count = local.create ? 1 : 0

  name_prefix = "${var.name}-"
  description = "${var.name}: bastion instances"
  image_id    = local.ami_id
  key_name    = var.key_name
  # gzip: EC2 takes at most 16 KiB of user data; cloud-init unpacks it.
  user_data              = base64gzip(local.user_data)
  update_default_version = true

  iam_instance_profile {
    arn = local.iam_instance_profile_arn
  }

  network_interfaces {
    associate_public_ip_address = var.associate_public_ip_address
    delete_on_termination       = true
    security_groups             = concat([local.security_group_id], var.additional_security_group_ids)
  }

  # IMDSv2 only, one hop: tokens are required and cannot leave the instance.
  # One hop is enough for the container too (docker_image), eic_auth or not:
  # it runs with --network host (templates/user-data.sh.tftpl), so its IMDS
  # requests (the instance role's credentials, the keys pushed with EC2
  # Instance Connect) leave from the instance's own network stack, not through
  # a bridge that would cost a hop. Raising the limit would only let tokens
  # reach containers on bridge networks, which the bastion does not use.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = var.root_device_name

    ebs {
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      volume_size           = var.root_volume_size
      volume_type           = "gp3"
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = var.enable_monitoring
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = var.name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = var.name })
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

################################################################################
# Auto Scaling group: multi-AZ, behind the NLB, drained on scale-in
################################################################################

resource "aws_autoscaling_group" "this" {
  count = local.create ? 1 : 0

  name                = local.asg_name
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity

  # EC2, not ELB: the NLB's check is readiness (/readyz), which a full or
  # draining instance, or one still shipping its audit backlog, fails on
  # purpose; replacing it would cut live sessions and lose the backlog. The
  # instance reports itself Unhealthy (autoscaling:SetInstanceHealth) when its
  # liveness check (/livez) fails, and the group then replaces it (through the drain).
  target_group_arns         = [aws_lb_target_group.this[0].arn]
  health_check_type         = "EC2"
  health_check_grace_period = var.health_check_grace_period
  default_instance_warmup   = var.health_check_grace_period
  capacity_rebalance        = var.on_demand_percentage_above_base_capacity < 100

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = var.on_demand_base_capacity
      on_demand_percentage_above_base_capacity = var.on_demand_percentage_above_base_capacity
      spot_allocation_strategy                 = var.spot_allocation_strategy
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.this[0].id
        version            = aws_launch_template.this[0].latest_version
      }

      dynamic "override" {
        for_each = var.instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }

  # A new launch template version (AMI, configuration, artifact) rolls through
  # the group; each old instance drains through the lifecycle hook.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = var.instance_refresh.min_healthy_percentage
      max_healthy_percentage = var.instance_refresh.max_healthy_percentage
    }
  }

  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
  ]

  dynamic "tag" {
    for_each = merge(local.tags, { Name = var.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  # Deleting the group waits for its instances to terminate.
  timeouts {
    delete = "${ceil(local.lifecycle_heartbeat_timeout / 60) + 15}m"
  }

  # Instances read (or create) the host key, report their health and complete
  # the lifecycle hook from their first boot.
  depends_on = [aws_iam_role_policy.this, aws_iam_role_policy_attachment.ssm]
}

# Scale-in and replacement wait for the drain: the instance's drain watcher
# stops the bastion (live sessions run up to shutdown_grace, the audit backlog
# ships for up to ship_grace) and then completes this hook; should it never do
# so, the heartbeat timeout (longer than both) lets the termination continue.
resource "aws_autoscaling_lifecycle_hook" "drain" {
  count = local.create ? 1 : 0

  name                   = local.lifecycle_hook_name
  autoscaling_group_name = aws_autoscaling_group.this[0].name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  heartbeat_timeout      = local.lifecycle_heartbeat_timeout
  default_result         = "CONTINUE"
}
