# A VPC with public subnets (the NLB, a NAT gateway) and private subnets (the
# bastion instances and what they reach), in two Availability Zones, and the
# bastion in front of it.

data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, 2)
  tags = {
    Example = var.name
  }
}

################################################################################
# VPC
################################################################################

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = var.name })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(local.tags, { Name = var.name })
}

resource "aws_subnet" "public" {
  count = length(local.azs)

  vpc_id            = aws_vpc.this.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, count.index)

  tags = merge(local.tags, { Name = "${var.name}-public-${local.azs[count.index]}" })
}

resource "aws_subnet" "private" {
  count = length(local.azs)

  vpc_id            = aws_vpc.this.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, 100 + count.index)

  tags = merge(local.tags, { Name = "${var.name}-private-${local.azs[count.index]}" })
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route_table_association" "public" {
  count = length(local.azs)

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# One NAT gateway (for the AWS APIs and the binary download); use one per AZ,
# or VPC endpoints, in production.
resource "aws_eip" "nat" {
  domain = "vpc"

  tags = merge(local.tags, { Name = "${var.name}-nat" })
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public[0].id

  tags = merge(local.tags, { Name = var.name })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this.id
  }

  tags = merge(local.tags, { Name = "${var.name}-private" })
}

resource "aws_route_table_association" "private" {
  count = length(local.azs)

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

################################################################################
# The bastion
################################################################################

module "bastion" {
  source = "../../terraform"

  name          = var.name
  vpc_id        = aws_vpc.this.id
  subnet_ids    = aws_subnet.private[*].id
  lb_subnet_ids = aws_subnet.public[*].id

  allowed_cidr_blocks = var.allowed_cidr_blocks
  iam_groups          = var.iam_groups

  bastion_binary_url           = var.bastion_binary_url
  bastion_binary_sha256        = var.bastion_binary_sha256
  bastion_worker_binary_sha256 = var.bastion_worker_binary_sha256

  # Who may reach what: ops anywhere in the VPC on SSH, everyone else only the
  # app subnets' SSH and the database port.
  allow_rules = [
    {
      principals = ["group:ops"]
      to         = ["${var.vpc_cidr}:22"]
    },
    {
      principals = ["*"]
      to         = [for s in aws_subnet.private : "${s.cidr_block}:22"]
    },
    {
      principals = ["group:dba"]
      to         = ["*.internal:5432"]
    },
    # Instances tagged env=dev, asked for by id (ssh -J alice@bastion
    # ec2-user@i-0123…), for the dev group: the bastion pushes the user's key
    # to them with EC2 Instance Connect, so they need no keys of their own.
    {
      principals = ["group:dev"]
      to         = ["tag:env=dev:22"]
      os_users   = ["ec2-user"]
    },
  ]
  onward_ports = [22, 5432]

  # The instance role may push keys only to instances tagged env=dev, as ec2-user.
  eic_push               = true
  eic_os_users           = ["ec2-user"]
  eic_push_instance_tags = { env = "dev" }

  min_size         = 2
  max_size         = 4
  desired_capacity = 2

  # Half Spot above one On-Demand instance.
  instance_types                           = ["t3.small", "t3a.small", "t2.small"]
  on_demand_base_capacity                  = 1
  on_demand_percentage_above_base_capacity = 50

  # A stopping instance lets sessions run 10 minutes, then ships its audit backlog for up to 2.
  shutdown_grace_seconds   = 600
  audit_ship_grace_seconds = 120

  # Break glass: the AMI's own sshd on 2222, reachable only through the EC2
  # Instance Connect Endpoint below (its subnet), with keys pushed by EC2
  # Instance Connect: aws ec2-instance-connect ssh --instance-id i-… --ssh-port 2222 --connection-type eice
  host_sshd         = "port"
  host_sshd_port    = 2222
  admin_cidr_blocks = [aws_subnet.private[0].cidr_block]

  # The audit trail also in an S3 bucket nobody can rewrite (Object Lock), and alarms.
  create_audit_bucket       = true
  audit_s3_object_lock_mode = "GOVERNANCE"
  audit_s3_object_lock_days = 365
  create_alarms             = true
  alarm_actions             = var.alarm_actions

  route53_zone_id     = var.route53_zone_id
  route53_record_name = var.route53_record_name

  # An example: let `terraform destroy` remove the NLB.
  enable_deletion_protection = false

  tags = local.tags

  depends_on = [aws_route_table_association.private, aws_nat_gateway.this]
}

################################################################################
# Break-glass path: an EC2 Instance Connect Endpoint to the instances' own sshd
################################################################################

resource "aws_security_group" "eice" {
  name_prefix = "${var.name}-eice-"
  description = "${var.name}: EC2 Instance Connect Endpoint to the bastion instances' own sshd"
  vpc_id      = aws_vpc.this.id

  tags = merge(local.tags, { Name = "${var.name}-eice" })
}

resource "aws_vpc_security_group_egress_rule" "eice_to_host_sshd" {
  security_group_id            = aws_security_group.eice.id
  description                  = "The bastion instances' own sshd"
  ip_protocol                  = "tcp"
  from_port                    = 2222
  to_port                      = 2222
  referenced_security_group_id = module.bastion.security_group_id
}

resource "aws_ec2_instance_connect_endpoint" "this" {
  subnet_id          = aws_subnet.private[0].id
  security_group_ids = [aws_security_group.eice.id]

  tags = merge(local.tags, { Name = var.name })
}
