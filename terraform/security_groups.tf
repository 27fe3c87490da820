################################################################################
# The instances' security group
#
# The NLB keeps client addresses for instance targets, so the SSH port admits
# the clients' ranges (allowed_cidr_blocks) directly; the health port admits the
# NLB's nodes (its subnets). Out: onward ports to the VPC, HTTPS to AWS APIs.
################################################################################

locals {
  # Keyed by CIDR where the CIDRs are the caller's (known at plan); counted where
  # they may come from resources created in the same apply (the VPC, the subnets).
  ssh_ingress   = { for c in var.allowed_cidr_blocks : c => c }
  https_egress  = { for c in var.https_egress_cidr_blocks : c => c }
  onward_egress = setproduct(local.egress_cidr_blocks, var.onward_ports)
}

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "${var.name}: bastion instances (SSH from allowed clients, health checks from the NLB)"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = local.ssh_ingress

  security_group_id = aws_security_group.this.id
  description       = "SSH from allowed clients (through the NLB, client address preserved)"
  ip_protocol       = "tcp"
  from_port         = var.service_port
  to_port           = var.service_port
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "health" {
  count = length(local.health_check_cidr_blocks)

  security_group_id = aws_security_group.this.id
  description       = "Health checks (GET /healthz) from the NLB's subnets"
  ip_protocol       = "tcp"
  from_port         = var.health_port
  to_port           = var.health_port
  cidr_ipv4         = strcontains(local.health_check_cidr_blocks[count.index], ":") ? null : local.health_check_cidr_blocks[count.index]
  cidr_ipv6         = strcontains(local.health_check_cidr_blocks[count.index], ":") ? local.health_check_cidr_blocks[count.index] : null

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "onward" {
  count = length(local.egress_cidr_blocks) * length(var.onward_ports)

  security_group_id = aws_security_group.this.id
  description       = "Onward connections the forwarding policy may allow"
  ip_protocol       = "tcp"
  from_port         = local.onward_egress[count.index][1]
  to_port           = local.onward_egress[count.index][1]
  cidr_ipv4         = strcontains(local.onward_egress[count.index][0], ":") ? null : local.onward_egress[count.index][0]
  cidr_ipv6         = strcontains(local.onward_egress[count.index][0], ":") ? local.onward_egress[count.index][0] : null

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = local.https_egress

  security_group_id = aws_security_group.this.id
  description       = "HTTPS to AWS APIs (IAM, STS, SSM, KMS, Auto Scaling, Logs) and the bastion artifact"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}
