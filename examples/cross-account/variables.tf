variable "region" {
  description = "AWS region of the bastion."
  type        = string
  default     = "eu-west-1"
}

variable "identity_account_admin_role_arn" {
  description = "A role in the identity account that Terraform may assume to create the key reader role there."
  type        = string
}

variable "vpc_id" {
  description = "The VPC the bastion runs in (in the bastion account)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the bastion instances."
  type        = list(string)
}

variable "lb_subnet_ids" {
  description = "Subnets of the NLB."
  type        = list(string)
}

variable "allowed_cidr_blocks" {
  description = "Client ranges allowed to reach the bastion."
  type        = list(string)
}

variable "docker_image" {
  description = "The bastion's container image (pin a digest). The instances need an AMI with Docker: `ami_id`."
  type        = string
}

variable "ami_id" {
  description = "An AMI with Docker, the AWS CLI and systemd (e.g. the ECS-optimized Amazon Linux 2023 AMI)."
  type        = string
}

variable "iam_groups" {
  description = "Groups of the identity account whose users may log in."
  type        = list(string)
  default     = ["bastion-users"]
}
