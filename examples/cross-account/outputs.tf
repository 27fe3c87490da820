output "endpoint" {
  description = "The name users connect to."
  value       = module.bastion.endpoint
}

output "key_reader_role_arn" {
  description = "The role the bastion assumes in the identity account."
  value       = aws_iam_role.key_reader.arn
}

output "ssh_config" {
  description = "ssh_config snippet for users."
  value       = module.bastion.ssh_config
}
