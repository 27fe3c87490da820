variable "region" {
  description = "AWS region to deploy the example into."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name of the bastion and the example's VPC."
  type        = string
  default     = "bastion-example"
}

variable "vpc_cidr" {
  description = "CIDR block of the example VPC."
  type        = string
  default     = "10.42.0.0/16"
}

variable "allowed_cidr_blocks" {
  description = "Client ranges allowed to reach the bastion (your office or VPN egress)."
  type        = list(string)
}

variable "bastion_binary_url" {
  description = "https:// or s3:// URL of a `bastion` release binary (built for x86_64 Linux, glibc 2.34 or older, e.g. `cargo build --release` on Debian 12)."
  type        = string
}

variable "bastion_binary_sha256" {
  description = "SHA-256 of that binary (`sha256sum target/release/bastion`)."
  type        = string
}

variable "bastion_worker_binary_sha256" {
  description = "SHA-256 of the `bastion-worker` binary published next to it (same directory, file name `bastion-worker`; `sha256sum target/release/bastion-worker`)."
  type        = string
}

variable "alarm_actions" {
  description = "Where the module's CloudWatch alarms notify (e.g. an SNS topic ARN)."
  type        = list(string)
  default     = []
}

variable "iam_groups" {
  description = "IAM groups whose users may log in."
  type        = list(string)
  default     = ["bastion-users"]
}

variable "route53_zone_id" {
  description = "Optional Route53 zone for bastion.<zone>."
  type        = string
  default     = null
}

variable "route53_record_name" {
  description = "Record name in route53_zone_id (e.g. bastion.example.com)."
  type        = string
  default     = null
}
