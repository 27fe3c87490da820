################################################################################
# Security groups
#
# The NLB has a group of its own (create_lb_security_group): the clients'
# ranges (allowed_cidr_blocks) are admitted there, on service_port, and the
# instances admit the NLB's group on service_port and health_port. This holds
# with client IP preservation (the NLB keeps client addresses for instance
# targets) and for IPv6 clients of a dualstack NLB, whose connections reach the
# IPv4 instances translated. Without it (an NLB created without a group keeps
# none), the instances admit the clients' ranges themselves and the health
# checks from the NLB's subnets.
#
# Out of the instances: onward ports to the VPC, HTTPS to the AWS APIs.
# The host's own sshd (host_sshd = "port"): from admin_cidr_blocks only.
################################################################################

locals {
  create_security_group    = local.create && var.create_security_group
  create_lb_security_group = local.create && var.create_lb_security_group

  security_group_id    = var.create_security_group ? one(aws_security_group.this[*].id) : var.security_group_id
  lb_security_group_id = one(aws_security_group.lb[*].id)

  # IPv6 clients need a dualstack NLB, which needs the NLB's security group to filter them.
  ipv6_clients = anytrue([for c in var.allowed_cidr_blocks : strcontains(c, ":")])
  dualstack    = var.create_lb_security_group && local.ipv6_clients

  # Keyed by CIDR where the CIDRs are the caller's (known at plan); counted where
  # they may come from resources created in the same apply (the VPC, the subnets).
  client_ingress = { for c in var.allowed_cidr_blocks : c => c }
  admin_ingress  = var.host_sshd == "port" ? { for c in var.admin_cidr_blocks : c => c } : {}
  https_egress   = { for c in var.https_egress_cidr_blocks : c => c }
  onward_egress  = setproduct(local.egress_cidr_blocks, var.onward_ports)
}

################################################################################
# The instances' group
################################################################################

resource "aws_security_group" "this" {
  count = local.create_security_group ? 1 : 0

  name_prefix = "${var.name}-"
  description = "${var.name}: bastion instances (SSH and health checks from the NLB)"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

# With the NLB's group: SSH and health checks from it.
resource "aws_vpc_security_group_ingress_rule" "ssh_from_lb" {
  #checkov:skip=CKV_AWS_24:The source is the NLB's security group (referenced_security_group_id), not 0.0.0.0/0; the check reads only cidr_ipv4/cidr_ipv6 of this resource type and takes their absence for "anywhere".
  count = local.create_security_group && local.create_lb_security_group ? 1 : 0

  security_group_id            = aws_security_group.this[0].id
  description                  = "SSH through the NLB (its security group admits the allowed clients)"
  ip_protocol                  = "tcp"
  from_port                    = var.service_port
  to_port                      = var.service_port
  referenced_security_group_id = aws_security_group.lb[0].id

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "health_from_lb" {
  count = local.create_security_group && local.create_lb_security_group ? 1 : 0

  security_group_id            = aws_security_group.this[0].id
  description                  = "Health checks (GET /readyz) from the NLB"
  ip_protocol                  = "tcp"
  from_port                    = var.health_port
  to_port                      = var.health_port
  referenced_security_group_id = aws_security_group.lb[0].id

  tags = local.tags
}

# Without the NLB's group: the clients' ranges and the NLB's subnets directly.
resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = local.create_security_group && !var.create_lb_security_group ? local.client_ingress : {}

  security_group_id = aws_security_group.this[0].id
  description       = "SSH from allowed clients (through the NLB, client address preserved)"
  ip_protocol       = "tcp"
  from_port         = var.service_port
  to_port           = var.service_port
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "health" {
  count = local.create_security_group && !var.create_lb_security_group ? length(local.health_check_cidr_blocks) : 0

  security_group_id = aws_security_group.this[0].id
  description       = "Health checks (GET /readyz) from the NLB's subnets"
  ip_protocol       = "tcp"
  from_port         = var.health_port
  to_port           = var.health_port
  cidr_ipv4         = strcontains(local.health_check_cidr_blocks[count.index], ":") ? null : local.health_check_cidr_blocks[count.index]
  cidr_ipv6         = strcontains(local.health_check_cidr_blocks[count.index], ":") ? local.health_check_cidr_blocks[count.index] : null

  tags = local.tags
}

# Break-glass: the host's own sshd, moved to host_sshd_port (EC2 Instance Connect).
resource "aws_vpc_security_group_ingress_rule" "host_sshd" {
  for_each = local.create_security_group ? local.admin_ingress : {}

  security_group_id = aws_security_group.this[0].id
  description       = "The host's own sshd (break-glass, EC2 Instance Connect) from administrators"
  ip_protocol       = "tcp"
  from_port         = var.host_sshd_port
  to_port           = var.host_sshd_port
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "onward" {
  count = local.create_security_group ? length(local.egress_cidr_blocks) * length(var.onward_ports) : 0

  security_group_id = aws_security_group.this[0].id
  description       = "Onward connections the forwarding policy may allow"
  ip_protocol       = "tcp"
  from_port         = local.onward_egress[count.index][1]
  to_port           = local.onward_egress[count.index][1]
  cidr_ipv4         = strcontains(local.onward_egress[count.index][0], ":") ? null : local.onward_egress[count.index][0]
  cidr_ipv6         = strcontains(local.onward_egress[count.index][0], ":") ? local.onward_egress[count.index][0] : null

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = local.create_security_group ? local.https_egress : {}

  security_group_id = aws_security_group.this[0].id
  description       = "HTTPS to AWS APIs (IAM, STS, SSM, KMS, Auto Scaling, Logs, S3) and the bastion artifact"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}

################################################################################
# The NLB's group
################################################################################

resource "aws_security_group" "lb" {
  count = local.create_lb_security_group ? 1 : 0

  name_prefix = "${var.name}-lb-"
  description = "${var.name}: the bastion's NLB (SSH from allowed clients, to the instances)"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-lb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "lb_clients" {
  for_each = local.create_lb_security_group ? local.client_ingress : {}

  security_group_id = aws_security_group.lb[0].id
  description       = "SSH from allowed clients"
  ip_protocol       = "tcp"
  from_port         = var.service_port
  to_port           = var.service_port
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}

# Health checks are subject to the NLB group's outbound rules (not its inbound ones).
resource "aws_vpc_security_group_egress_rule" "lb_to_instances" {
  for_each = local.create_lb_security_group ? { ssh = var.service_port, health = var.health_port } : {}

  security_group_id            = aws_security_group.lb[0].id
  description                  = each.key == "ssh" ? "SSH to the bastion instances" : "Health checks (GET /readyz) of the bastion instances"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = local.security_group_id

  tags = local.tags
}
