################################################################################
# Network Load Balancer
################################################################################

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:NLB access logs cover TLS listeners only; this one forwards TCP (SSH), and the bastion writes its own per-user audit trail.
  count = local.create ? 1 : 0

  name               = var.name
  load_balancer_type = "network"
  internal           = var.internal
  subnets            = var.lb_subnet_ids
  # An NLB gets security groups only when it is created (see security_groups.tf).
  security_groups = local.create_lb_security_group ? [aws_security_group.lb[0].id] : null
  # IPv6 clients: the subnets need IPv6 CIDR blocks too.
  ip_address_type = local.dualstack ? "dualstack" : "ipv4"

  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.enable_deletion_protection

  tags = local.tags
}

resource "aws_lb_target_group" "this" {
  count = local.create ? 1 : 0

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

  # A draining or full bastion answers 503 on /readyz: it takes no new
  # connections, but its live sessions stay rather than being cut.
  target_health_state {
    enable_unhealthy_connection_termination = false
    unhealthy_draining_interval             = local.stop_timeout_seconds
  }

  # Readiness: whether the instance takes new connections. The Auto Scaling
  # group does not act on it (health_check_type = "EC2"): the instance reports
  # liveness failures (/livez) itself.
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = tostring(var.health_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = local.tags
}

resource "aws_lb_listener" "ssh" {
  count = local.create ? 1 : 0

  load_balancer_arn = aws_lb.this[0].arn
  port              = var.service_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[0].arn
  }

  tags = local.tags
}

resource "aws_route53_record" "this" {
  count = local.create && var.route53_zone_id != null ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.route53_record_name
  type    = "A"

  alias {
    name                   = aws_lb.this[0].dns_name
    zone_id                = aws_lb.this[0].zone_id
    evaluate_target_health = true
  }
}

# A dualstack NLB (IPv6 clients) answers AAAA too.
resource "aws_route53_record" "ipv6" {
  count = local.create && var.route53_zone_id != null && local.dualstack ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.route53_record_name
  type    = "AAAA"

  alias {
    name                   = aws_lb.this[0].dns_name
    zone_id                = aws_lb.this[0].zone_id
    evaluate_target_health = true
  }
}
