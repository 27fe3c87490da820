################################################################################
# CloudWatch alarms (create_alarms)
#
# - targets failing the NLB's readiness check (/readyz) for longer than a
#   drain and its audit shipping take (a drain alone is expected: the instance
#   stops taking connections on purpose), or full (max_sessions in use);
# - fewer instances in service than min_size for 10 minutes;
# - spikes of refused logins and refused forwards, counted from the audit
#   trail the instances ship to the log group (audit events `auth` with
#   `success` false, `port` with `allowed` false).
################################################################################

locals {
  create_alarms         = local.create && var.create_alarms
  create_audit_alarms   = local.create_alarms && var.create_log_group
  alarm_namespace       = "Bastion/${var.name}"
  unhealthy_alarm_count = ceil((var.shutdown_grace_seconds + var.audit_ship_grace_seconds) / 60) + 5
}

resource "aws_cloudwatch_metric_alarm" "unhealthy_targets" {
  count = local.create_alarms ? 1 : 0

  alarm_name        = "${var.name}-unhealthy-targets"
  alarm_description = "${var.name}: an instance has failed the NLB's readiness check (GET /readyz) for ${local.unhealthy_alarm_count} minutes, longer than a drain takes: it is full (max_sessions), cannot ship its audit trail, or is broken."
  namespace         = "AWS/NetworkELB"
  metric_name       = "UnHealthyHostCount"
  dimensions = {
    TargetGroup  = aws_lb_target_group.this[0].arn_suffix
    LoadBalancer = aws_lb.this[0].arn_suffix
  }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = local.unhealthy_alarm_count
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "in_service" {
  count = local.create_alarms && var.min_size > 0 ? 1 : 0

  alarm_name          = "${var.name}-in-service-below-min"
  alarm_description   = "${var.name}: fewer than ${var.min_size} (min_size) instances in service for 10 minutes."
  namespace           = "AWS/AutoScaling"
  metric_name         = "GroupInServiceInstances"
  dimensions          = { AutoScalingGroupName = aws_autoscaling_group.this[0].name }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 10
  comparison_operator = "LessThanThreshold"
  threshold           = var.min_size
  treat_missing_data  = "missing"
  alarm_actions       = var.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_log_metric_filter" "refused_logins" {
  count = local.create_audit_alarms ? 1 : 0

  name           = "${var.name}-refused-logins"
  log_group_name = aws_cloudwatch_log_group.this[0].name
  pattern        = "{ ($.event = \"auth\") && ($.success IS FALSE) }"

  metric_transformation {
    name          = "RefusedLogins"
    namespace     = local.alarm_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_log_metric_filter" "refused_forwards" {
  count = local.create_audit_alarms ? 1 : 0

  name           = "${var.name}-refused-forwards"
  log_group_name = aws_cloudwatch_log_group.this[0].name
  pattern        = "{ ($.event = \"port\") && ($.allowed IS FALSE) }"

  metric_transformation {
    name          = "RefusedForwards"
    namespace     = local.alarm_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "refused_logins" {
  count = local.create_audit_alarms ? 1 : 0

  alarm_name          = "${var.name}-refused-logins"
  alarm_description   = "${var.name}: more than ${var.alarm_refused_logins_threshold} refused logins in 5 minutes (audit events auth with success false, in ${local.log_group_name})."
  namespace           = local.alarm_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.refused_logins[0].metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_refused_logins_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "refused_forwards" {
  count = local.create_audit_alarms ? 1 : 0

  alarm_name          = "${var.name}-refused-forwards"
  alarm_description   = "${var.name}: more than ${var.alarm_refused_forwards_threshold} refused forwards in 5 minutes (audit events port with allowed false, in ${local.log_group_name})."
  namespace           = local.alarm_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.refused_forwards[0].metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_refused_forwards_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions

  tags = local.tags
}
