data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

# count, not for_each: the subnets may be created in the same apply.
data "aws_subnet" "lb" {
  count = var.health_check_cidr_blocks == null ? length(var.lb_subnet_ids) : 0
  id    = var.lb_subnet_ids[count.index]
}

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  tags = merge({ "bastion:module" = var.name }, var.tags)

  # Named up front (not taken from the resources) so the user data and the
  # IAM policy can name the group without a dependency cycle.
  asg_name            = var.name
  asg_arn             = "arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.asg_name}"
  lifecycle_hook_name = "${var.name}-drain"
  # The hook outlasts the bastion's drain: systemd's stop timeout, the AWS CLI call, a margin.
  stop_timeout_seconds        = var.shutdown_grace_seconds + 30
  lifecycle_heartbeat_timeout = var.shutdown_grace_seconds + 120

  egress_cidr_blocks       = var.egress_cidr_blocks != null ? var.egress_cidr_blocks : [data.aws_vpc.this.cidr_block]
  health_check_cidr_blocks = var.health_check_cidr_blocks != null ? var.health_check_cidr_blocks : data.aws_subnet.lb[*].cidr_block

  # Default policy: anyone authenticated may reach what the security group lets out.
  allow_rules = var.allow_rules != null ? var.allow_rules : [{
    principals = ["*"]
    to         = flatten([for c in local.egress_cidr_blocks : [for p in var.onward_ports : strcontains(c, ":") ? "[${c}]:${p}" : "${c}:${p}"]])
    os_users   = null
  }]

  ami_id = var.ami_id != null ? var.ami_id : data.aws_ssm_parameter.ami[0].insecure_value

  # Artifact: an s3:// binary and an ECR image need read permissions.
  binary_s3 = var.bastion_binary_url == null ? null : try(regex("^s3://([^/]+)/(.+)$", var.bastion_binary_url), null)
  ecr       = var.docker_image == null ? null : try(regex("^(([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com(\\.cn)?)/([^:@]+)", var.docker_image), null)

  # Host key: generated (and kept in SSM, encrypted with the module's KMS key) or supplied.
  create_host_key         = var.host_key_parameter_name == null
  host_key_parameter_name = local.create_host_key ? "/${var.name}/host_ed25519_key" : var.host_key_parameter_name
  host_key_parameter_arn  = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/${trimprefix(local.host_key_parameter_name, "/")}"

  create_kms_key = var.kms_key_arn == null && (local.create_host_key || var.create_log_group)
  kms_key_arn    = var.kms_key_arn != null ? var.kms_key_arn : try(aws_kms_key.this[0].arn, null)
  # The key the host key parameter's SecureString is encrypted with (null: aws/ssm, no IAM grant needed).
  host_key_kms_key_arn = local.create_host_key ? local.kms_key_arn : var.host_key_kms_key_arn

  log_group_name = "/${var.name}/audit"

  bastion_config = templatefile("${path.module}/templates/bastion.toml.tftpl", {
    service_port           = var.service_port
    health_port            = var.health_port
    proxy_protocol         = var.proxy_protocol_v2
    host_key_ref           = "ssm:${local.host_key_parameter_name}"
    iam_groups             = var.iam_groups
    assume_role_arn        = var.assume_role_arn == null ? "" : var.assume_role_arn
    allow_rules            = local.allow_rules
    eic_auth               = var.eic_auth
    eic_push               = var.eic_push
    eic_os_users           = var.eic_os_users
    audit_dir              = var.audit_dir
    cloudwatch_log_group   = var.create_log_group ? local.log_group_name : ""
    s3_bucket              = var.audit_s3_bucket == null ? "" : var.audit_s3_bucket
    s3_prefix              = var.audit_s3_prefix
    s3_kms_key_id          = var.audit_s3_kms_key_arn == null ? "" : var.audit_s3_kms_key_arn
    shutdown_grace_seconds = var.shutdown_grace_seconds
  })

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", {
    bastion_config         = local.bastion_config
    binary_url             = var.bastion_binary_url == null ? "" : var.bastion_binary_url
    binary_sha256          = var.bastion_binary_sha256 == null ? "" : var.bastion_binary_sha256
    docker_image           = var.docker_image == null ? "" : var.docker_image
    ecr_registry           = local.ecr == null ? "" : local.ecr[0]
    ecr_region             = local.ecr == null ? "" : local.ecr[2]
    service_port           = var.service_port
    health_port            = var.health_port
    audit_dir              = var.audit_dir
    log_level              = var.log_level
    asg_name               = local.asg_name
    lifecycle_hook_name    = local.lifecycle_hook_name
    shutdown_grace_seconds = var.shutdown_grace_seconds
    stop_timeout_seconds   = local.stop_timeout_seconds
    extra_user_data        = var.extra_user_data
  })
}
