output "endpoint" {
  description = "The name users connect to."
  value       = module.bastion.endpoint
}

output "key_reader_role_arn" {
  description = "The role the bastion assumes in the identity account."
  value       = aws_iam_role.key_reader.arn
}

output "known_hosts_command" {
  description = "Prints the known_hosts line of the bastion's host key (read from SSM once an instance has booted)."
  value       = module.bastion.known_hosts_command
}

output "ssh_config" {
  description = "ssh_config snippet for users."
  value       = module.bastion.ssh_config
}
