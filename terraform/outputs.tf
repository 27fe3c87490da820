locals {
  # The VPC's (IPv4) onward ranges as ssh_config patterns, widened to whole octets: 10.0.0.0/16 -> 10.0.*
  ssh_config_patterns = [
    for c in local.egress_cidr_blocks : "${join(".", slice(split(".", cidrhost(c, 0)), 0, floor(tonumber(split("/", c)[1]) / 8)))}.*"
    if !strcontains(c, ":") && tonumber(split("/", c)[1]) >= 8
  ]
  endpoint = var.route53_zone_id != null ? aws_route53_record.this[0].fqdn : aws_lb.this.dns_name
}

output "lb_dns_name" {
  description = "DNS name of the Network Load Balancer."
  value       = aws_lb.this.dns_name
}

output "lb_zone_id" {
  description = "Route53 zone id of the Network Load Balancer (for alias records of your own)."
  value       = aws_lb.this.zone_id
}

output "lb_arn" {
  description = "ARN of the Network Load Balancer."
  value       = aws_lb.this.arn
}

output "target_group_arn" {
  description = "ARN of the target group."
  value       = aws_lb_target_group.this.arn
}

output "route53_fqdn" {
  description = "FQDN of the Route53 alias record, or null without one."
  value       = var.route53_zone_id != null ? aws_route53_record.this[0].fqdn : null
}

output "endpoint" {
  description = "The name users connect to: the Route53 record if there is one, the NLB's DNS name otherwise."
  value       = local.endpoint
}

output "autoscaling_group_name" {
  description = "Name of the Auto Scaling group."
  value       = aws_autoscaling_group.this.name
}

output "launch_template_id" {
  description = "ID of the launch template."
  value       = aws_launch_template.this.id
}

output "security_group_id" {
  description = "ID of the instances' security group (allow it in your targets' security groups, on the ports users forward to)."
  value       = aws_security_group.this.id
}

output "iam_role_arn" {
  description = "ARN of the instance role."
  value       = aws_iam_role.this.arn
}

output "iam_role_name" {
  description = "Name of the instance role."
  value       = aws_iam_role.this.name
}

output "host_key_parameter_name" {
  description = "The SSM parameter holding the host key (`host_keys = [\"ssm:<name>\"]`)."
  value       = local.host_key_parameter_name
}

output "host_public_key" {
  description = "The generated host key's public half (OpenSSH format), or null when the key was supplied."
  value       = local.create_host_key ? trimspace(tls_private_key.host[0].public_key_openssh) : null
}

output "known_hosts" {
  description = "A known_hosts line for the generated host key (pin it to skip trust-on-first-use), or null when the key was supplied."
  value       = local.create_host_key ? "${var.service_port == 22 ? local.endpoint : "[${local.endpoint}]:${var.service_port}"} ${trimspace(tls_private_key.host[0].public_key_openssh)}" : null
}

output "kms_key_arn" {
  description = "The KMS key encrypting the generated host key and the log group (the module's own, or kms_key_arn), or null."
  value       = local.kms_key_arn
}

output "log_group_name" {
  description = "The CloudWatch Logs group for the audit trail, or null."
  value       = var.create_log_group ? aws_cloudwatch_log_group.this[0].name : null
}

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
  value       = <<-EOT
    Host ${var.name}
      HostName ${local.endpoint}
      Port ${var.service_port}
      # User your-iam-user-name

    Host *.internal ${join(" ", local.ssh_config_patterns)}
      ProxyJump ${var.name}
  EOT
}
