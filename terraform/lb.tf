################################################################################
# Network Load Balancer
################################################################################

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:NLB access logs cover TLS listeners only; this one forwards TCP (SSH), and the bastion writes its own per-user audit trail.
  name               = var.name
  load_balancer_type = "network"
  internal           = var.internal
  subnets            = var.lb_subnet_ids

  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.enable_deletion_protection

  tags = local.tags
}

resource "aws_lb_target_group" "this" {
  name        = var.name
  port        = var.service_port
  protocol    = "TCP"
  target_type = "instance"
  vpc_id      = var.vpc_id

  # Scale-in: new connections stop at once, live sessions are not cut when the
  # delay ends; the bastion's own drain (shutdown_grace) ends them.
  deregistration_delay   = var.deregistration_delay
  connection_termination = false
  preserve_client_ip     = true
  proxy_protocol_v2      = var.proxy_protocol_v2

  # A draining bastion answers 503 on /healthz: keep its live sessions rather
  # than cutting them when it turns unhealthy.
  target_health_state {
    enable_unhealthy_connection_termination = false
    unhealthy_draining_interval             = local.stop_timeout_seconds
  }

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = tostring(var.health_port)
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = local.tags
}

resource "aws_lb_listener" "ssh" {
  load_balancer_arn = aws_lb.this.arn
  port              = var.service_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = local.tags
}

resource "aws_route53_record" "this" {
  count = var.route53_zone_id != null ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.route53_record_name
  type    = "A"

  alias {
    name                   = aws_lb.this.dns_name
    zone_id                = aws_lb.this.zone_id
    evaluate_target_health = true
  }
}
