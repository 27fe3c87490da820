output "endpoint" {
  description = "The name users connect to."
  value       = module.bastion.endpoint
}

output "ssh_config" {
  description = "ssh_config snippet for users."
  value       = module.bastion.ssh_config
}

output "known_hosts" {
  description = "known_hosts line for the bastion's host key."
  value       = module.bastion.known_hosts
}

output "security_group_id" {
  description = "Allow this security group on your targets' SSH (and other forwarded) ports."
  value       = module.bastion.security_group_id
}

output "autoscaling_group_name" {
  description = "The bastion's Auto Scaling group."
  value       = module.bastion.autoscaling_group_name
}
