locals {
  # The VPC's (IPv4) onward ranges as ssh_config patterns, widened to whole octets: 10.0.0.0/16 -> 10.0.*
  ssh_config_patterns = [
    for c in local.egress_cidr_blocks : "${join(".", slice(split(".", cidrhost(c, 0)), 0, floor(tonumber(split("/", c)[1]) / 8)))}.*"
    if !strcontains(c, ":") && tonumber(split("/", c)[1]) >= 8
  ]
  endpoint = local.create ? (var.route53_zone_id != null ? aws_route53_record.this[0].fqdn : aws_lb.this[0].dns_name) : null
  # What users put in known_hosts: the name, and the port unless it is 22.
  known_hosts_name = local.create ? (var.service_port == 22 ? local.endpoint : "[${local.endpoint}]:${var.service_port}") : null
}

################################################################################
# Load balancer and DNS
################################################################################

output "lb_dns_name" {
  description = "DNS name of the Network Load Balancer."
  value       = one(aws_lb.this[*].dns_name)
}

output "lb_zone_id" {
  description = "Route53 zone id of the Network Load Balancer (for alias records of your own)."
  value       = one(aws_lb.this[*].zone_id)
}

output "lb_arn" {
  description = "ARN of the Network Load Balancer."
  value       = one(aws_lb.this[*].arn)
}

output "lb_arn_suffix" {
  description = "ARN suffix of the Network Load Balancer (`net/<name>/<id>`), the `LoadBalancer` dimension of its CloudWatch metrics."
  value       = one(aws_lb.this[*].arn_suffix)
}

output "lb_security_group_id" {
  description = "ID of the NLB's security group (admit it on `service_port` and `health_port` in a security group of your own, with `create_security_group = false`), or null with `create_lb_security_group = false`."
  value       = local.lb_security_group_id
}

output "target_group_arn" {
  description = "ARN of the target group."
  value       = one(aws_lb_target_group.this[*].arn)
}

output "target_group_arn_suffix" {
  description = "ARN suffix of the target group (`targetgroup/<name>/<id>`), the `TargetGroup` dimension of the NLB's CloudWatch metrics."
  value       = one(aws_lb_target_group.this[*].arn_suffix)
}

output "route53_fqdn" {
  description = "FQDN of the Route53 alias record, or null without one."
  value       = one(aws_route53_record.this[*].fqdn)
}

output "endpoint" {
  description = "The name users connect to: the Route53 record if there is one, the NLB's DNS name otherwise."
  value       = local.endpoint
}

################################################################################
# Instances
################################################################################

output "autoscaling_group_name" {
  description = "Name of the Auto Scaling group."
  value       = one(aws_autoscaling_group.this[*].name)
}

output "autoscaling_group_arn" {
  description = "ARN of the Auto Scaling group."
  value       = one(aws_autoscaling_group.this[*].arn)
}

output "launch_template_id" {
  description = "ID of the launch template."
  value       = one(aws_launch_template.this[*].id)
}

output "launch_template_arn" {
  description = "ARN of the launch template."
  value       = one(aws_launch_template.this[*].arn)
}

output "security_group_id" {
  description = "ID of the instances' security group, created or brought along (allow it in your targets' security groups, on the ports users forward to)."
  value       = local.create ? local.security_group_id : null
}

output "iam_role_arn" {
  description = "ARN of the instance role (the module's, or the role of `iam_instance_profile_arn`)."
  value       = local.create ? local.iam_role_arn : null
}

output "iam_role_name" {
  description = "Name of the instance role (the module's, or the role of `iam_instance_profile_arn`)."
  value       = local.create ? local.iam_role_name_in_use : null
}

output "iam_instance_profile_arn" {
  description = "ARN of the instance profile the instances use (the module's, or `iam_instance_profile_arn`)."
  value       = local.create ? local.iam_instance_profile_arn : null
}

output "iam_role_policy" {
  description = "The instance role's permissions as a policy document (JSON): the module's inline policy, and what a role brought along (`create_iam_instance_profile = false`) must allow."
  value       = local.create ? data.aws_iam_policy_document.this.json : null
}

################################################################################
# Host key
################################################################################

output "host_key_parameter_name" {
  description = "The SSM parameter holding the host key (`host_keys = [\"ssm:<name>\"]`)."
  value       = local.host_key_parameter_name
}

output "known_hosts_command" {
  description = "A shell command printing the known_hosts line of the bastion's host key, read from its SSM parameter (with your credentials: `ssm:GetParameter` and `kms:Decrypt`) once an instance has booted: `eval \"$(terraform output -raw known_hosts_command)\" >> ~/.ssh/known_hosts`. The key never enters the Terraform state, so the module cannot output it."
  value       = local.create ? "printf '%s %s\\n' '${local.known_hosts_name}' \"$(aws ssm get-parameter --region ${local.region} --name '${local.host_key_parameter_name}' --with-decryption --query Parameter.Value --output text | ssh-keygen -y -f /dev/stdin | cut -d' ' -f1,2)\"" : null
}

output "kms_key_arn" {
  description = "The KMS key encrypting the generated host key, the log group and the created audit bucket (the module's own, or kms_key_arn), or null."
  value       = local.create ? local.kms_key_arn : null
}

################################################################################
# Audit trail
################################################################################

output "log_group_name" {
  description = "The CloudWatch Logs group for the audit trail, or null."
  value       = one(aws_cloudwatch_log_group.this[*].name)
}

output "audit_s3_bucket_name" {
  description = "The S3 bucket the audit trail is archived in (created with `create_audit_bucket`, or `audit_s3_bucket`), or null."
  value       = local.create && local.audit_s3_enabled ? local.audit_s3_bucket : null
}

output "audit_s3_bucket_arn" {
  description = "ARN of the audit archive bucket, or null."
  value       = local.create ? local.audit_s3_bucket_arn : null
}

################################################################################
# Configuration and policies for others
################################################################################

output "bastion_config" {
  description = "The bastion configuration the instances run (/etc/bastion/bastion.toml)."
  value       = local.bastion_config
}

output "identity_account_policies" {
  description = "Cross-account IAM: the role to create in the identity account (`role_name`, from assume_role_arn), its trust policy (`trust_policy`, naming this module's instance role) and its permission policy (`permission_policy`, docs/iam/key-reader-policy.json), as JSON."
  value = {
    role_name         = local.key_reader_role_name
    trust_policy      = jsonencode(local.key_reader_trust_policy)
    permission_policy = jsonencode(local.key_reader_policy)
  }
}

output "eic_user_policy" {
  description = "With `eic_auth`: the IAM policy (JSON) users need to log in with EC2 Instance Connect (docs/iam/eic-user-policy.json, filled in): `ec2-instance-connect:SendSSHPublicKey` on the instances of this Auto Scaling group only (its `aws:autoscaling:groupName` tag), for the login `eic_user_policy_os_user`, and `ec2:DescribeInstances` to find them. Null without `eic_auth`."
  value       = var.eic_auth ? jsonencode(local.eic_user_policy) : null
}

output "eic_push_os_users" {
  description = "With `eic_push`: the OS users the instance role may push keys for (its `ec2:osuser` condition: `eic_os_users` and every rule's `os_users`), or null."
  value       = var.eic_push ? local.eic_push_os_users : null
}

output "ssh_config" {
  description = "An ssh_config snippet for users: the bastion as ProxyJump for the VPC's private hosts (append it to ~/.ssh/config and set User)."
  value       = local.ssh_config
}

locals {
  ssh_config = !local.create ? null : <<-EOT
    Host ${var.name}
      HostName ${local.endpoint}
      Port ${var.service_port}
      # User your-iam-user-name

    Host *.internal ${join(" ", local.ssh_config_patterns)}
      ProxyJump ${var.name}
  EOT
}
