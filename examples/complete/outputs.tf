output "endpoint" {
  description = "The name users connect to."
  value       = module.bastion.endpoint
}

output "ssh_config" {
  description = "ssh_config snippet for users."
  value       = module.bastion.ssh_config
}

output "known_hosts_command" {
  description = "Prints the known_hosts line of the bastion's host key (read from SSM once an instance has booted)."
  value       = module.bastion.known_hosts_command
}

output "audit_s3_bucket_name" {
  description = "The Object-Locked bucket archiving the audit trail."
  value       = module.bastion.audit_s3_bucket_name
}

output "security_group_id" {
  description = "Allow this security group on your targets' SSH (and other forwarded) ports."
  value       = module.bastion.security_group_id
}

output "autoscaling_group_name" {
  description = "The bastion's Auto Scaling group."
  value       = module.bastion.autoscaling_group_name
}
