# The bastion in one account reads IAM users, keys and groups of another (the
# identity account) through a role there. The module's instance role may only
# assume that role; the role itself is created here with the second provider,
# from the module's identity_account_policies output.

data "aws_caller_identity" "identity" {
  provider = aws.identity
}

data "aws_partition" "identity" {
  provider = aws.identity
}

locals {
  key_reader_role_name = "bastion-key-reader"
  # Known before either role exists, so neither side waits for the other's ARN.
  key_reader_role_arn = "arn:${data.aws_partition.identity.partition}:iam::${data.aws_caller_identity.identity.account_id}:role/${local.key_reader_role_name}"
}

module "bastion" {
  source = "../../terraform"

  name          = "bastion"
  vpc_id        = var.vpc_id
  subnet_ids    = var.subnet_ids
  lb_subnet_ids = var.lb_subnet_ids

  allowed_cidr_blocks = var.allowed_cidr_blocks
  iam_groups          = var.iam_groups
  assume_role_arn     = local.key_reader_role_arn

  docker_image = var.docker_image
  ami_id       = var.ami_id

  internal                   = true
  enable_deletion_protection = false
}

################################################################################
# In the identity account
################################################################################

resource "aws_iam_role" "key_reader" {
  provider = aws.identity

  name                 = module.bastion.identity_account_policies.role_name
  description          = "Lets the bastion's instance role read IAM users' SSH keys and groups"
  assume_role_policy   = module.bastion.identity_account_policies.trust_policy
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "key_reader" {
  provider = aws.identity

  name   = "bastion-key-reader"
  role   = aws_iam_role.key_reader.id
  policy = module.bastion.identity_account_policies.permission_policy
}
