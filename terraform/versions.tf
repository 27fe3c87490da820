terraform {
  # 1.9: variable validations may refer to other variables (and 1.7: removed blocks).
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80"
    }
  }
}
