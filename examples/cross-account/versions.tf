terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80"
    }
  }
}

# The account the bastion runs in.
provider "aws" {
  region = var.region
}

# The identity account, where the IAM users, their SSH keys and groups live.
provider "aws" {
  alias  = "identity"
  region = var.region

  assume_role {
    role_arn = var.identity_account_admin_role_arn
  }
}
