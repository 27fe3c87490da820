################################################################################
# General
################################################################################

variable "create" {
  description = "Create the module's resources. False: nothing is created, and nothing looked up but the partition, region and account (the terraform-aws-modules `create` toggle)."
  type        = bool
  default     = true
}

variable "name" {
  description = "Name of every resource the module creates (load balancer, target group, Auto Scaling group, IAM role, security group, SSM parameter path, log group). Letters, digits and hyphens, starting with a letter, at most 28 characters (target group names are limited to 32)."
  type        = string
  default     = "bastion"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9-]{0,27}$", var.name))
    error_message = "name must start with a letter and contain only letters, digits and hyphens, at most 28 characters."
  }
}

variable "tags" {
  description = "Tags added to every resource the module creates (and propagated to the instances and their volumes)."
  type        = map(string)
  default     = {}
}

################################################################################
# Network
################################################################################

variable "vpc_id" {
  description = "The VPC the bastion runs in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-…)."
  }
}

variable "subnet_ids" {
  description = "Subnets of the bastion instances (private subnets, one per Availability Zone: use at least two for a multi-AZ group)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least one subnet id (subnet-…)."
  }
}

variable "lb_subnet_ids" {
  description = "Subnets of the Network Load Balancer (public subnets for an internet-facing one, private ones when `internal = true`), one per Availability Zone the instances run in."
  type        = list(string)

  validation {
    condition     = length(var.lb_subnet_ids) > 0 && alltrue([for s in var.lb_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "lb_subnet_ids must list at least one subnet id (subnet-…)."
  }
}

variable "internal" {
  description = "Whether the Network Load Balancer is internal (reachable only inside the VPC and what is routed to it) instead of internet-facing."
  type        = bool
  default     = false
}

variable "allowed_cidr_blocks" {
  description = "Client address ranges (IPv4 or IPv6 CIDRs) allowed to connect to the SSH port. The NLB preserves client addresses for instance targets, so these ranges are what the instances' security group admits. `0.0.0.0/0` and `::/0` are refused unless `allow_internet_ingress = true`."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidr_blocks) > 0 && alltrue([for c in var.allowed_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "allowed_cidr_blocks must list at least one valid CIDR block (e.g. 203.0.113.0/24)."
  }

  validation {
    condition     = var.allow_internet_ingress || alltrue([for c in var.allowed_cidr_blocks : !can(cidrhost(c, 0)) || cidrsubnet(c, 0, 0) != "0.0.0.0/0" && cidrsubnet(c, 0, 0) != "::/0"])
    error_message = "allowed_cidr_blocks opens the SSH port to the whole internet (0.0.0.0/0 or ::/0); list your clients' ranges, or set allow_internet_ingress = true to mean it."
  }
}

variable "allow_internet_ingress" {
  description = "Allow `allowed_cidr_blocks` to contain `0.0.0.0/0` or `::/0` (the SSH port open to the whole internet). Keys are still required, but scanners will knock."
  type        = bool
  default     = false
}

variable "health_check_cidr_blocks" {
  description = "With `create_lb_security_group = false`: address ranges the load balancer's health checks come from, admitted on `health_port`. Default: the CIDR blocks of `lb_subnet_ids` (the NLB's nodes live there). With the NLB's own security group (the default) the instances admit that group instead and this is not used."
  type        = list(string)
  default     = null

  validation {
    condition     = var.health_check_cidr_blocks == null || alltrue([for c in coalesce(var.health_check_cidr_blocks, []) : can(cidrhost(c, 0)) && cidrsubnet(c, 0, 0) != "0.0.0.0/0" && cidrsubnet(c, 0, 0) != "::/0"])
    error_message = "health_check_cidr_blocks must be valid CIDR blocks, and not the whole internet."
  }
}

variable "egress_cidr_blocks" {
  description = "Where the bastion may open onward connections (on `onward_ports`). Default: the VPC's CIDR block."
  type        = list(string)
  default     = null

  validation {
    condition     = var.egress_cidr_blocks == null || alltrue([for c in coalesce(var.egress_cidr_blocks, []) : can(cidrhost(c, 0))])
    error_message = "egress_cidr_blocks must be valid CIDR blocks."
  }
}

variable "onward_ports" {
  description = "TCP ports the bastion may connect onward to in `egress_cidr_blocks` (the security group's part of the forwarding policy; `allow_rules` decides per user)."
  type        = list(number)
  default     = [22]

  validation {
    condition     = length(var.onward_ports) > 0 && alltrue([for p in var.onward_ports : p == floor(p) && p >= 1 && p <= 65535])
    error_message = "onward_ports must list TCP ports between 1 and 65535."
  }
}

variable "https_egress_cidr_blocks" {
  description = "Where the instances may reach HTTPS (443): the AWS APIs (IAM, STS, SSM, KMS, Auto Scaling, CloudWatch Logs, and EC2 and EC2 Instance Connect with `eic_push`; through a NAT gateway or VPC endpoints) and the artifact (`bastion_binary_url` or `docker_image`). Narrow it to the VPC's CIDR when every API is reached through VPC endpoints."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.https_egress_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "https_egress_cidr_blocks must be valid CIDR blocks."
  }
}

variable "additional_security_group_ids" {
  description = "Further security groups attached to the instances."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.additional_security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "additional_security_group_ids must be security group ids (sg-…)."
  }
}

variable "admin_cidr_blocks" {
  description = "With `host_sshd = \"port\"`: the address ranges (IPv4 or IPv6 CIDRs) admitted to the instances' own sshd on `host_sshd_port`, directly (not through the NLB): your administrators' VPN, or the subnet of an EC2 Instance Connect Endpoint. `0.0.0.0/0` and `::/0` are refused unless `allow_internet_ingress = true`."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.admin_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "admin_cidr_blocks must be valid CIDR blocks (e.g. 10.0.0.0/16)."
  }

  validation {
    condition     = var.allow_internet_ingress || alltrue([for c in var.admin_cidr_blocks : !can(cidrhost(c, 0)) || cidrsubnet(c, 0, 0) != "0.0.0.0/0" && cidrsubnet(c, 0, 0) != "::/0"])
    error_message = "admin_cidr_blocks opens the host's sshd to the whole internet (0.0.0.0/0 or ::/0); list your administrators' ranges, or set allow_internet_ingress = true to mean it."
  }

  validation {
    condition     = var.host_sshd != "port" || length(var.admin_cidr_blocks) > 0
    error_message = "host_sshd = \"port\" needs at least one admin_cidr_blocks entry (who may reach the host's sshd)."
  }

  validation {
    condition     = var.host_sshd == "port" || length(var.admin_cidr_blocks) == 0
    error_message = "admin_cidr_blocks only applies with host_sshd = \"port\"."
  }
}

variable "create_security_group" {
  description = "Create the instances' security group (and its rules). False: attach `security_group_id` instead, which you manage: it must admit `service_port` and `health_port` from the NLB's security group (output `lb_security_group_id`; or from the clients and the NLB's subnets with `create_lb_security_group = false`), and let out `onward_ports` and HTTPS."
  type        = bool
  default     = true
}

variable "security_group_id" {
  description = "With `create_security_group = false`: the security group of the instances (sg-…)."
  type        = string
  default     = null

  validation {
    condition     = var.security_group_id == null || can(regex("^sg-[0-9a-f]+$", coalesce(var.security_group_id, "-")))
    error_message = "security_group_id must be a security group id (sg-…)."
  }

  validation {
    condition     = var.create_security_group == (var.security_group_id == null)
    error_message = "Set security_group_id exactly when create_security_group = false."
  }
}

variable "create_lb_security_group" {
  description = "Give the NLB a security group of its own (`service_port` from `allowed_cidr_blocks`; out to the instances on `service_port` and `health_port`), and let the instances admit only that group on both ports. An NLB gets security groups only when it is created: false keeps an NLB created without one (by an earlier version of this module) and filters clients on the instances' group instead; IPv6 clients then cannot be admitted (no `dualstack`)."
  type        = bool
  default     = true
}

variable "associate_public_ip_address" {
  description = "Give the instances public IP addresses. Not needed behind the NLB (they only need a route to the AWS APIs); leave it off."
  type        = bool
  default     = false
}

################################################################################
# Load balancer and DNS
################################################################################

variable "service_port" {
  description = "The SSH port: the NLB listener's and the bastion's."
  type        = number
  default     = 22

  validation {
    condition     = var.service_port == floor(var.service_port) && var.service_port >= 1 && var.service_port <= 65535
    error_message = "service_port must be a TCP port between 1 and 65535."
  }
}

variable "health_port" {
  description = "The port of the bastion's HTTP health endpoints (`health_listen`): the NLB checks `GET /readyz` (takes new connections), the instance itself watches `GET /livez` (the process is up and able to serve). Reachable only from the NLB (its security group, or `health_check_cidr_blocks` without one)."
  type        = number
  default     = 8080

  validation {
    condition     = var.health_port == floor(var.health_port) && var.health_port >= 1 && var.health_port <= 65535 && var.health_port != var.service_port
    error_message = "health_port must be a TCP port between 1 and 65535, other than service_port."
  }
}

variable "proxy_protocol_v2" {
  description = "Have the NLB send PROXY protocol v2 headers and the bastion require them (`proxy_protocol = true`). Client addresses are preserved for instance targets anyway; enable it only if something else (e.g. a NAT) would hide them."
  type        = bool
  default     = false
}

variable "deregistration_delay" {
  description = "Seconds the NLB keeps a deregistering instance in the draining state before it completes the deregistration. Live connections are not cut at the end (`connection_termination = false`): they stay until the bastion's own drain (`shutdown_grace`) ends them."
  type        = number
  default     = 30

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600
    error_message = "deregistration_delay must be between 0 and 3600 seconds."
  }
}

variable "enable_deletion_protection" {
  description = "Protect the NLB from deletion (turn it off, apply, then `terraform destroy`)."
  type        = bool
  default     = true
}

variable "route53_zone_id" {
  description = "Route53 hosted zone for an alias record to the NLB (with `route53_record_name`). Null: no record."
  type        = string
  default     = null

  validation {
    condition     = (var.route53_zone_id == null) == (var.route53_record_name == null)
    error_message = "Set both route53_zone_id and route53_record_name, or neither."
  }
}

variable "route53_record_name" {
  description = "Name of the alias record in `route53_zone_id` (e.g. `bastion` or `bastion.example.com`)."
  type        = string
  default     = null
}

################################################################################
# Instances and Auto Scaling group
################################################################################

variable "instance_types" {
  description = "Instance types the Auto Scaling group may launch, in order of preference (a mixed instances policy). Same architecture as `architecture`."
  type        = list(string)
  default     = ["t3.small", "t3a.small"]

  validation {
    condition     = length(var.instance_types) > 0 && length(var.instance_types) <= 20
    error_message = "instance_types must list between 1 and 20 instance types."
  }
}

variable "architecture" {
  description = "CPU architecture of the default AMI (Amazon Linux 2023) and of the bastion artifact: `x86_64` or `arm64`."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "ami_id" {
  description = "AMI of the instances. Default: the latest Amazon Linux 2023 (from the public SSM parameter). With `docker_image` it must be an AMI with Docker installed (e.g. the ECS-optimized Amazon Linux 2023 AMI). The user data needs bash, curl, systemd and the AWS CLI."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "ami_id must be an AMI id (ami-…)."
  }
}

variable "key_name" {
  description = "EC2 key pair for the instances. Default none: break glass with SSM Session Manager (`attach_ssm_policy`) or with EC2 Instance Connect to the host's own sshd (`host_sshd`)."
  type        = string
  default     = null
}

variable "create_iam_instance_profile" {
  description = "Create the instance role (with the bastion's inline policy) and its instance profile. False: the instances use `iam_instance_profile_arn`, whose role you manage: give it the `iam_role_policy` output."
  type        = bool
  default     = true
}

variable "iam_instance_profile_arn" {
  description = "With `create_iam_instance_profile = false`: the ARN of the instance profile the instances use (arn:PARTITION:iam::ACCOUNT:instance-profile/NAME). Its role must have the permissions of the `iam_role_policy` output."
  type        = string
  default     = null

  validation {
    condition     = var.iam_instance_profile_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/[A-Za-z0-9+=,.@_/-]{1,512}$", coalesce(var.iam_instance_profile_arn, "-")))
    error_message = "iam_instance_profile_arn must be an instance profile ARN (arn:PARTITION:iam::ACCOUNT:instance-profile/NAME)."
  }

  validation {
    condition     = var.create_iam_instance_profile == (var.iam_instance_profile_arn == null)
    error_message = "Set iam_instance_profile_arn exactly when create_iam_instance_profile = false."
  }
}

variable "iam_role_name" {
  description = "Name of the instance role and its instance profile (or their name prefix, with `iam_role_use_name_prefix`). Null: `name`."
  type        = string
  default     = null

  validation {
    condition     = var.iam_role_name == null || can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", coalesce(var.iam_role_name, "-")))
    error_message = "iam_role_name must be an IAM role name (letters, digits and +=,.@_-, at most 64 characters)."
  }
}

variable "iam_role_use_name_prefix" {
  description = "Use `iam_role_name` (or `name`) as a name prefix of the role and the instance profile (`<name>-` and a unique suffix) rather than as their exact name. Changing it replaces both."
  type        = bool
  default     = false

  validation {
    condition     = !var.iam_role_use_name_prefix || length(coalesce(var.iam_role_name, var.name)) <= 37
    error_message = "With iam_role_use_name_prefix, iam_role_name (or name) must be at most 37 characters (IAM name prefixes are at most 38, with the hyphen)."
  }
}

variable "iam_role_path" {
  description = "IAM path of the instance role and its instance profile."
  type        = string
  default     = "/"

  validation {
    condition     = length(var.iam_role_path) <= 512 && can(regex("^/([A-Za-z0-9+=,.@_-]+/)*$", var.iam_role_path))
    error_message = "iam_role_path must be an IAM path: / or /segment/…/ (letters, digits and +=,.@_-)."
  }
}

variable "iam_role_permissions_boundary" {
  description = "ARN of the managed policy to set as the instance role's permissions boundary. Null: none."
  type        = string
  default     = null

  validation {
    condition     = var.iam_role_permissions_boundary == null || can(regex("^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/[A-Za-z0-9+=,.@_/-]{1,512}$", coalesce(var.iam_role_permissions_boundary, "-")))
    error_message = "iam_role_permissions_boundary must be an IAM policy ARN (arn:PARTITION:iam::ACCOUNT:policy/NAME)."
  }
}

variable "attach_ssm_policy" {
  description = "Attach AmazonSSMManagedInstanceCore to the instance role, for break-glass access with SSM Session Manager."
  type        = bool
  default     = true
}

variable "root_volume_size" {
  description = "Size of the (encrypted) root volume in GiB. Null: the AMI's size."
  type        = number
  default     = null

  validation {
    condition     = var.root_volume_size == null || try(var.root_volume_size >= 4 && var.root_volume_size <= 1024, false)
    error_message = "root_volume_size must be between 4 and 1024 GiB."
  }
}

variable "root_device_name" {
  description = "Device name of the AMI's root volume (`/dev/xvda` for Amazon Linux)."
  type        = string
  default     = "/dev/xvda"
}

variable "ebs_kms_key_arn" {
  description = "KMS key encrypting the root volume. Null: the account's default EBS key."
  type        = string
  default     = null

  validation {
    condition     = var.ebs_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/(mrk-)?[0-9a-f-]+$", coalesce(var.ebs_kms_key_arn, "-")))
    error_message = "ebs_kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "enable_monitoring" {
  description = "Detailed (1-minute) CloudWatch monitoring of the instances."
  type        = bool
  default     = true
}

variable "min_size" {
  description = "Minimum number of instances."
  type        = number
  default     = 2

  validation {
    condition     = var.min_size >= 0 && var.min_size <= var.max_size
    error_message = "min_size must be between 0 and max_size."
  }
}

variable "max_size" {
  description = "Maximum number of instances."
  type        = number
  default     = 4

  validation {
    condition     = var.max_size >= 1 && var.max_size <= 100
    error_message = "max_size must be between 1 and 100."
  }
}

variable "desired_capacity" {
  description = "Number of instances to run (between `min_size` and `max_size`)."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_capacity >= var.min_size && var.desired_capacity <= var.max_size
    error_message = "desired_capacity must be between min_size and max_size."
  }
}

variable "on_demand_base_capacity" {
  description = "Instances that are always On-Demand, before `on_demand_percentage_above_base_capacity` applies."
  type        = number
  default     = 0

  validation {
    condition     = var.on_demand_base_capacity >= 0
    error_message = "on_demand_base_capacity must not be negative."
  }
}

variable "on_demand_percentage_above_base_capacity" {
  description = "Percentage of instances above the base that are On-Demand; the rest are Spot. 100 (the default): no Spot. Spot interruptions cut live sessions after a two-minute warning."
  type        = number
  default     = 100

  validation {
    condition     = var.on_demand_percentage_above_base_capacity >= 0 && var.on_demand_percentage_above_base_capacity <= 100
    error_message = "on_demand_percentage_above_base_capacity must be between 0 and 100."
  }
}

variable "spot_allocation_strategy" {
  description = "How Spot instances are chosen among `instance_types`."
  type        = string
  default     = "price-capacity-optimized"

  validation {
    condition     = contains(["price-capacity-optimized", "capacity-optimized", "capacity-optimized-prioritized", "lowest-price"], var.spot_allocation_strategy)
    error_message = "spot_allocation_strategy must be price-capacity-optimized, capacity-optimized, capacity-optimized-prioritized or lowest-price."
  }
}

variable "health_check_grace_period" {
  description = "Seconds after an instance starts before the Auto Scaling group acts on its EC2 status checks (boot, artifact download), and the instance warm-up. The group checks EC2 status only; a bastion that stays dead is reported Unhealthy by the instance itself (`/livez`; see the README, Health)."
  type        = number
  default     = 180

  validation {
    condition     = var.health_check_grace_period >= 0 && var.health_check_grace_period <= 7200
    error_message = "health_check_grace_period must be between 0 and 7200 seconds."
  }
}

variable "instance_refresh" {
  description = "Rolling instance refresh when the launch template changes: the share of the group kept healthy (`min_healthy_percentage`) and the most it may grow to (`max_healthy_percentage`; above 100 new instances are launched before old ones drain)."
  type = object({
    min_healthy_percentage = optional(number, 100)
    max_healthy_percentage = optional(number, 200)
  })
  default = {}

  validation {
    condition = (
      var.instance_refresh.min_healthy_percentage >= 0 && var.instance_refresh.min_healthy_percentage <= 100 &&
      var.instance_refresh.max_healthy_percentage >= 100 && var.instance_refresh.max_healthy_percentage <= 200 &&
      var.instance_refresh.max_healthy_percentage - var.instance_refresh.min_healthy_percentage <= 100
    )
    error_message = "instance_refresh: min_healthy_percentage 0-100, max_healthy_percentage 100-200, at most 100 apart."
  }
}

################################################################################
# The bastion: artifact
################################################################################

variable "bastion_binary_url" {
  description = "Where instances fetch the `bastion` binary at boot: `https://…` or `s3://bucket/key` (the instance role gets `s3:GetObject` on it). Verified against `bastion_binary_sha256` before it is installed. Exactly one of this and `docker_image`."
  type        = string
  default     = null

  validation {
    condition     = var.bastion_binary_url == null || can(regex("^(https://[A-Za-z0-9.-]+(:[0-9]+)?/|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/)[A-Za-z0-9._~/%+=@-]+$", var.bastion_binary_url))
    error_message = "bastion_binary_url must be an https:// or s3://bucket/key URL (letters, digits and ._~/%+=@- in the path; no query string)."
  }

  validation {
    condition     = (var.bastion_binary_url == null) != (var.docker_image == null)
    error_message = "Set exactly one of bastion_binary_url (with bastion_binary_sha256) and docker_image."
  }
}

variable "bastion_binary_sha256" {
  description = "SHA-256 of the binary at `bastion_binary_url` (64 hex digits, `sha256sum` output). A mismatch aborts the boot."
  type        = string
  default     = null

  validation {
    condition     = var.bastion_binary_sha256 == null || can(regex("^[0-9a-f]{64}$", var.bastion_binary_sha256))
    error_message = "bastion_binary_sha256 must be 64 lowercase hex digits."
  }

  validation {
    condition     = (var.bastion_binary_url == null) == (var.bastion_binary_sha256 == null)
    error_message = "bastion_binary_sha256 is required with bastion_binary_url (and only with it)."
  }
}

variable "docker_image" {
  description = "Container image of the bastion (e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com/bastion@sha256:…`; pin a digest). Needs an AMI with Docker (`ami_id`). An ECR image is pulled with the instance role (read access to that repository is granted). Exactly one of this and `bastion_binary_url`."
  type        = string
  default     = null

  validation {
    condition     = var.docker_image == null || can(regex("^[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9._-]+)*(:[A-Za-z0-9._-]{1,128})?(@sha256:[0-9a-f]{64})?$", var.docker_image))
    error_message = "docker_image must be an image reference (registry/repository:tag or @sha256:digest)."
  }
}

variable "bastion_worker_binary_url" {
  description = "Where instances fetch the `bastion-worker` binary (the per-connection sandboxed worker) at boot: `https://…` or `s3://bucket/key` (the instance role gets `s3:GetObject` on it). Null: `bastion_binary_url` with its last path segment replaced by `bastion-worker` (…/v1.0.0/bastion-x86_64 -> …/v1.0.0/bastion-worker). Only with `bastion_binary_url`; the container image carries its own."
  type        = string
  default     = null

  validation {
    condition     = var.bastion_worker_binary_url == null || can(regex("^(https://[A-Za-z0-9.-]+(:[0-9]+)?/|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/)[A-Za-z0-9._~/%+=@-]+$", coalesce(var.bastion_worker_binary_url, "-")))
    error_message = "bastion_worker_binary_url must be an https:// or s3://bucket/key URL (letters, digits and ._~/%+=@- in the path; no query string)."
  }

  validation {
    condition     = var.bastion_worker_binary_url == null || var.bastion_binary_url != null
    error_message = "bastion_worker_binary_url only applies with bastion_binary_url (the container image carries its own worker)."
  }
}

variable "bastion_worker_binary_sha256" {
  description = "SHA-256 of the `bastion-worker` binary (64 lowercase hex digits, `sha256sum` output). Required with `bastion_binary_url`; a mismatch aborts the boot."
  type        = string
  default     = null

  validation {
    condition     = var.bastion_worker_binary_sha256 == null || can(regex("^[0-9a-f]{64}$", coalesce(var.bastion_worker_binary_sha256, "-")))
    error_message = "bastion_worker_binary_sha256 must be 64 lowercase hex digits."
  }

  validation {
    condition     = (var.bastion_binary_url == null) == (var.bastion_worker_binary_sha256 == null)
    error_message = "bastion_worker_binary_sha256 is required with bastion_binary_url (and only with it)."
  }
}

################################################################################
# Host sshd (break-glass)
################################################################################

variable "host_sshd" {
  description = "The AMI's own sshd: `disabled` (the default: stopped and disabled, nothing but the bastion listens for SSH) or `port` (moved to `host_sshd_port`, admitted from `admin_cidr_blocks` only; log in with EC2 Instance Connect, e.g. `aws ec2-instance-connect ssh --instance-id i-… --ssh-port 2222`, for break-glass access next to SSM Session Manager)."
  type        = string
  default     = "disabled"

  validation {
    condition     = contains(["disabled", "port"], var.host_sshd)
    error_message = "host_sshd must be \"disabled\" or \"port\"."
  }
}

variable "host_sshd_port" {
  description = "With `host_sshd = \"port\"`: the TCP port of the instances' own sshd (not `service_port` nor `health_port`)."
  type        = number
  default     = 2222

  validation {
    condition     = var.host_sshd_port == floor(var.host_sshd_port) && var.host_sshd_port >= 1 && var.host_sshd_port <= 65535
    error_message = "host_sshd_port must be a TCP port between 1 and 65535."
  }

  validation {
    condition     = var.host_sshd != "port" || var.host_sshd_port != var.service_port && var.host_sshd_port != var.health_port
    error_message = "host_sshd_port must differ from service_port and health_port."
  }
}

################################################################################
# The bastion: configuration (rendered into /etc/bastion/bastion.toml)
################################################################################

variable "iam_groups" {
  description = "IAM groups whose users may log in (with the SSH keys they uploaded to IAM). An empty list means every IAM user of the account (or of the identity account, with `assume_role_arn`) who has an SSH key; say so explicitly."
  type        = list(string)

  validation {
    condition     = alltrue([for g in var.iam_groups : can(regex("^[A-Za-z0-9+=,.@_-]{1,128}$", g))])
    error_message = "iam_groups must be IAM group names (letters, digits and +=,.@_-, at most 128 characters)."
  }
}

variable "assume_role_arn" {
  description = "Cross-account IAM: the role in the identity account the bastion assumes to read IAM users, keys and groups (e.g. `arn:aws:iam::111111111111:role/bastion-key-reader`). The instance role then gets only `sts:AssumeRole` on it; create the role with the `identity_account_policies` output."
  type        = string
  default     = null

  validation {
    condition     = var.assume_role_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$", var.assume_role_arn))
    error_message = "assume_role_arn must be an IAM role ARN (arn:aws:iam::123456789012:role/NAME)."
  }
}

variable "allow_rules" {
  description = "The forwarding policy (`[[allow]]` rules): who (`principals`: IAM user names, `group:NAME`, or `*` for anyone authenticated) may reach what (`to`: `host:port`, `CIDR:port`, `*.domain:port`, port ranges `a-b`; EC2 instances asked for by id with `i-<glob>:port` or `tag:KEY=VALUE:port`, VALUE may use `*`). `os_users` (optional): the OS users `eic_push` pushes the user's key for when this rule allows a forward to an instance, instead of `eic_os_users`. Null: anyone authenticated may reach `egress_cidr_blocks` on `onward_ports`. An empty list allows no forwarding at all."
  type = list(object({
    principals = list(string)
    to         = list(string)
    os_users   = optional(list(string))
  }))
  default = null

  validation {
    condition = var.allow_rules == null || alltrue([
      for r in coalesce(var.allow_rules, []) : length(r.principals) > 0 && length(r.to) > 0 && alltrue([
        for s in concat(r.principals, r.to) : can(regex("^[A-Za-z0-9*+=,.@_:/\\[\\]-]{1,256}$", s))
      ])
    ])
    error_message = "Every allow rule needs at least one principal and one target, each without spaces, quotes or control characters."
  }

  validation {
    condition = var.allow_rules == null || alltrue([
      for r in coalesce(var.allow_rules, []) : r.os_users == null || try(length(r.os_users) > 0 && alltrue([
        for u in r.os_users : can(regex("^[A-Za-z_][A-Za-z0-9@._-]{0,30}[A-Za-z0-9$_-]?$", u))
      ]), false)
    ])
    error_message = "An allow rule's os_users must be null or list OS user names EC2 Instance Connect accepts (1 to 32 characters: a letter or _ first, then letters, digits and @._-, optionally ending in $)."
  }
}

variable "shutdown_grace_seconds" {
  description = "How long a draining bastion lets live sessions run (`limits.shutdown_grace`) when its instance is scaled in or replaced. The termination lifecycle hook waits this long plus a margin."
  type        = number
  default     = 300

  validation {
    condition     = var.shutdown_grace_seconds == floor(var.shutdown_grace_seconds) && var.shutdown_grace_seconds >= 0 && var.shutdown_grace_seconds <= 6900
    error_message = "shutdown_grace_seconds must be a whole number of seconds between 0 and 6900 (the lifecycle hook's heartbeat is at most 7200 s)."
  }
}

variable "audit_ship_grace_seconds" {
  description = "After the drain (`shutdown_grace_seconds`), how long a stopping bastion keeps shipping its audit backlog to CloudWatch Logs and S3 before it exits (`audit.ship_grace`). systemd's stop timeout is `shutdown_grace_seconds + audit_ship_grace_seconds + 30`, the termination lifecycle hook's heartbeat `shutdown_grace_seconds + audit_ship_grace_seconds + 120`."
  type        = number
  default     = 60

  validation {
    condition     = var.audit_ship_grace_seconds == floor(var.audit_ship_grace_seconds) && var.audit_ship_grace_seconds >= 0 && var.audit_ship_grace_seconds <= 3600
    error_message = "audit_ship_grace_seconds must be a whole number of seconds between 0 and 3600."
  }

  validation {
    condition     = var.shutdown_grace_seconds + var.audit_ship_grace_seconds + 120 <= 7200
    error_message = "shutdown_grace_seconds + audit_ship_grace_seconds must be at most 7080 (the lifecycle hook's heartbeat, their sum plus 120 s, is at most 7200 s)."
  }
}

variable "audit_dir" {
  description = "Directory of the bastion's per-user audit trail on the instance (`audit.dir`)."
  type        = string
  default     = "/var/log/bastion"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]+$", var.audit_dir)) && !strcontains(var.audit_dir, "..")
    error_message = "audit_dir must be an absolute path (letters, digits and ._/-)."
  }
}

variable "log_level" {
  description = "The bastion's log filter (`BASTION_LOG`), e.g. `info` or `bastion=debug,russh=warn`."
  type        = string
  default     = "info"

  validation {
    condition     = can(regex("^[A-Za-z0-9_=,:.-]+$", var.log_level))
    error_message = "log_level must be a tracing filter such as info or bastion=debug,russh=warn."
  }
}

variable "extra_user_data" {
  description = "Shell commands appended to the instance's user data (bash, run as root after the bastion has been started)."
  type        = string
  default     = ""
}

################################################################################
# The bastion: EC2 Instance Connect
################################################################################

variable "eic_auth" {
  description = "Also let users log in to the bastion with a key they push to one of its instances with EC2 Instance Connect (`aws ec2-instance-connect send-ssh-public-key --instance-id <bastion instance> --instance-os-user <login> …`, valid 60 s): an `[[auth]] type = \"eic\"` source after the IAM one. The bastion reads the pushed keys from the instance metadata service itself; its role needs nothing more. Users need `ec2-instance-connect:SendSSHPublicKey` on the bastion instances: see the `eic_user_policy` output."
  type        = bool
  default     = false
}

variable "eic_user_policy_os_user" {
  description = "With `eic_auth`: the `ec2:osuser` condition of the `eic_user_policy` output, i.e. the login a user may push a key for. The default, the policy variable `$${aws:username}`, lets each IAM user log in only under their own user name (it does not exist for roles: use e.g. `$${aws:PrincipalTag/login}` with federated users). Null: no condition, anyone with the policy may push a key for, and log in as, any login."
  type        = string
  default     = "$${aws:username}"

  validation {
    condition     = var.eic_user_policy_os_user == null || can(regex("^(\\$\\{[A-Za-z0-9:/_.-]+\\}|[A-Za-z_][A-Za-z0-9@._-]{0,30}[A-Za-z0-9$_-]?)$", coalesce(var.eic_user_policy_os_user, "-")))
    error_message = "eic_user_policy_os_user must be an IAM policy variable such as $${aws:username}, an OS user name EC2 Instance Connect accepts, or null."
  }
}

variable "eic_push" {
  description = "Onward EC2 Instance Connect (`[eic] push = true`): for a forward to an instance asked for by id (`ssh -J alice@bastion ec2-user@i-0123…`, allowed by an `i-<glob>:port` or `tag:KEY=VALUE:port` rule) the bastion looks the instance up (`ec2:DescribeInstances`) and pushes the user's key to it for each OS user (`ec2-instance-connect:SendSSHPublicKey`), so targets need no key of the user's. The instance role gets these two permissions (docs/iam/eic-push-policy.json), the push limited to `eic_os_users` and the rules' `os_users`, and to `eic_push_instance_tags`."
  type        = bool
  default     = false
}

variable "eic_os_users" {
  description = "With `eic_push`: the OS users the key is pushed for (`[eic] os_users`) unless the allowing rule has its own `os_users`. Together with those, also the `ec2:osuser` values the instance role may push for."
  type        = list(string)
  default     = ["ec2-user"]

  validation {
    condition     = length(var.eic_os_users) > 0 && alltrue([for u in var.eic_os_users : can(regex("^[A-Za-z_][A-Za-z0-9@._-]{0,30}[A-Za-z0-9$_-]?$", u))])
    error_message = "eic_os_users must list at least one OS user name EC2 Instance Connect accepts (1 to 32 characters: a letter or _ first, then letters, digits and @._-, optionally ending in $)."
  }
}

variable "eic_push_instance_tags" {
  description = "With `eic_push`: tags an instance must carry (all of them, exact values) for the instance role to push keys to it (`aws:ResourceTag/KEY` conditions on `SendSSHPublicKey`). Empty (the default): any instance of the account in this region, for the OS users above; the `[[allow]]` rules alone then decide, and a compromised bastion could push its own key to any instance. With tags, a rule allowing an instance without them fails at the push (`AuthException`); and whoever may tag instances (`ec2:CreateTags`) can widen the set."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.eic_push_instance_tags : can(regex("^[\\p{L}\\p{Z}\\p{N}_.:/=+@-]{1,128}$", k)) && can(regex("^[\\p{L}\\p{Z}\\p{N}_.:/=+@-]{0,256}$", v))])
    error_message = "eic_push_instance_tags must map tag keys (1 to 128 characters) to values (at most 256), in the characters EC2 tags allow (letters, digits, spaces and _.:/=+@-)."
  }

  validation {
    condition     = var.eic_push || length(var.eic_push_instance_tags) == 0
    error_message = "eic_push_instance_tags only applies with eic_push = true."
  }
}

################################################################################
# Host key
################################################################################

variable "host_key_parameter_name" {
  description = "An existing SSM SecureString parameter holding the OpenSSH private host key every instance presents. Null (the default): `/<name>/host_ed25519_key`, generated by the first instance that boots (`ssh-keygen`, then `aws ssm put-parameter` without `--overwrite`: the first writer wins and every instance reads the winner's key), encrypted with the module's KMS key. The key never enters the Terraform state, and `terraform destroy` leaves the parameter."
  type        = string
  default     = null

  validation {
    condition     = var.host_key_parameter_name == null || length(coalesce(var.host_key_parameter_name, "-")) <= 2048 && can(regex("^[A-Za-z0-9_./-]+$", coalesce(var.host_key_parameter_name, "-")))
    error_message = "host_key_parameter_name must be an SSM parameter name (letters, digits and _.-/)."
  }
}

variable "host_key_kms_key_arn" {
  description = "With `host_key_parameter_name`: the customer managed KMS key its SecureString is encrypted with (the instance role gets `kms:Decrypt` on it through SSM). Null: the AWS managed key `aws/ssm`."
  type        = string
  default     = null

  validation {
    condition     = var.host_key_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/(mrk-)?[0-9a-f-]+$", coalesce(var.host_key_kms_key_arn, "-")))
    error_message = "host_key_kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "kms_key_arn" {
  description = "KMS key ARN for what the module encrypts (the generated host key parameter, the log group, and the audit bucket it creates unless `audit_s3_kms_key_arn`; its key policy must let CloudWatch Logs use it for the log group). Null: the module creates one, with rotation, when it needs one."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/(mrk-)?[0-9a-f-]+$", coalesce(var.kms_key_arn, "-")))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "kms_key_deletion_window_in_days" {
  description = "Waiting period before the module's KMS key is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_in_days >= 7 && var.kms_key_deletion_window_in_days <= 30
    error_message = "kms_key_deletion_window_in_days must be between 7 and 30."
  }
}

################################################################################
# Logs
################################################################################

variable "create_log_group" {
  description = "Create a KMS-encrypted CloudWatch Logs group `/<name>/audit` and ship the audit trail to it (one stream per user, from the bastion's local spool; see Audit trail in the bastion README)."
  type        = bool
  default     = true
}

variable "audit_s3_bucket" {
  description = "Also archive the audit trail in this S3 bucket, under `audit_s3_prefix`: every chunk of a session's events as a new object, never rewritten (each PutObject carries `If-None-Match: *`, and the instance role may write only such requests), SSE-KMS with `audit_s3_kms_key_arn` or SSE-S3. An existing bucket (turn on versioning and Object Lock: see the README), or, with `create_audit_bucket`, the name of the bucket to create (null there: a `<name>-audit-` prefix). Null without `create_audit_bucket`: no S3 archive."
  type        = string
  default     = null

  validation {
    condition     = var.audit_s3_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.audit_s3_bucket))
    error_message = "audit_s3_bucket must be an S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens."
  }
}

variable "create_audit_bucket" {
  description = "Create the audit archive bucket (named `audit_s3_bucket`, or with the prefix `<name>-audit-`): versioning, Object Lock with a default retention (`audit_s3_object_lock_mode`, `audit_s3_object_lock_days`), all public access blocked, bucket-owner-enforced ownership, SSE-KMS (`audit_s3_kms_key_arn`, or the module's key), and a bucket policy denying requests without TLS and denying the instance role any PutObject without `If-None-Match` and any delete. Outputs `audit_s3_bucket_name` and `audit_s3_bucket_arn`."
  type        = bool
  default     = false
}

variable "audit_s3_object_lock_mode" {
  description = "With `create_audit_bucket`: the default Object Lock retention mode. `GOVERNANCE`: only principals with `s3:BypassGovernanceRetention` can delete or shorten a retention early; `COMPLIANCE`: nobody can, not even the account root, until the retention ends."
  type        = string
  default     = "GOVERNANCE"

  validation {
    condition     = contains(["GOVERNANCE", "COMPLIANCE"], var.audit_s3_object_lock_mode)
    error_message = "audit_s3_object_lock_mode must be GOVERNANCE or COMPLIANCE."
  }
}

variable "audit_s3_object_lock_days" {
  description = "With `create_audit_bucket`: the default Object Lock retention of every audit object, in days."
  type        = number
  default     = 365

  validation {
    condition     = var.audit_s3_object_lock_days == floor(var.audit_s3_object_lock_days) && var.audit_s3_object_lock_days >= 1 && var.audit_s3_object_lock_days <= 36500
    error_message = "audit_s3_object_lock_days must be a whole number of days between 1 and 36500."
  }
}

variable "audit_s3_access_log_bucket" {
  description = "With `create_audit_bucket`: an existing bucket that receives the archive's S3 server access logs (under `<archive bucket>/`), i.e. who read or wrote it. Null: none (CloudTrail data events are the other way to see reads)."
  type        = string
  default     = null

  validation {
    condition     = var.audit_s3_access_log_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", coalesce(var.audit_s3_access_log_bucket, "-")))
    error_message = "audit_s3_access_log_bucket must be an S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens."
  }
}

variable "audit_s3_prefix" {
  description = "Key prefix of the audit objects in `audit_s3_bucket` (no leading slash)."
  type        = string
  default     = "bastion/"

  validation {
    condition     = !startswith(var.audit_s3_prefix, "/") && length(var.audit_s3_prefix) > 0 && length(var.audit_s3_prefix) <= 512
    error_message = "audit_s3_prefix must be 1 to 512 characters without a leading slash."
  }
}

variable "audit_s3_kms_key_arn" {
  description = "KMS key for SSE-KMS on the audit objects (the instances get kms:GenerateDataKey on it, for this bucket's objects only). Null: SSE-S3 (AES256), or the module's key with `create_audit_bucket`."
  type        = string
  default     = null

  validation {
    condition     = var.audit_s3_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.audit_s3_kms_key_arn))
    error_message = "audit_s3_kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "log_retention_in_days" {
  description = "Retention of the log group."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653, 0], var.log_retention_in_days)
    error_message = "log_retention_in_days must be a value CloudWatch Logs accepts (e.g. 30, 90, 365, 731; 0 = never expire)."
  }
}

################################################################################
# Alarms
################################################################################

variable "create_alarms" {
  description = "Create CloudWatch alarms: targets failing the NLB's readiness check longer than a drain takes, fewer instances in service than `min_size`, and (with `create_log_group`) spikes of refused logins and refused forwards, counted from the audit log group by metric filters."
  type        = bool
  default     = false
}

variable "alarm_actions" {
  description = "ARNs to notify when an alarm fires (e.g. SNS topics)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.alarm_actions : can(regex("^arn:aws[a-z-]*:[a-z0-9-]+:", a))])
    error_message = "alarm_actions must be ARNs (e.g. of SNS topics)."
  }
}

variable "alarm_refused_logins_threshold" {
  description = "With `create_alarms`: refused logins (audit events `auth` with `success` false) within 5 minutes, across all instances, above which the alarm fires."
  type        = number
  default     = 20

  validation {
    condition     = var.alarm_refused_logins_threshold >= 0
    error_message = "alarm_refused_logins_threshold must not be negative."
  }
}

variable "alarm_refused_forwards_threshold" {
  description = "With `create_alarms`: refused forwards (audit events `port` with `allowed` false) within 5 minutes, across all instances, above which the alarm fires."
  type        = number
  default     = 20

  validation {
    condition     = var.alarm_refused_forwards_threshold >= 0
    error_message = "alarm_refused_forwards_threshold must not be negative."
  }
}
