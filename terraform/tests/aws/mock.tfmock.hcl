# Shared stand-ins for the AWS provider in the plan tests (mock_provider "aws"
# { source = "./tests/aws" }). The provider's schema is real (terraform init
# installs it); no call reaches AWS. Data sources are read at plan time, so each
# gets values the module can use (the account, region, VPC, AMI). The IAM policy
# documents get a valid (empty) JSON object, since the provider validates the
# policies that take them: the tests look at their statements, which keep the
# configuration. Resources' computed attributes stay unknown in a plan, except
# those below.

mock_data "aws_partition" {
  defaults = {
    partition  = "aws"
    dns_suffix = "amazonaws.com"
  }
}

mock_data "aws_region" {
  defaults = {
    name = "eu-west-1"
  }
}

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
  }
}

mock_data "aws_vpc" {
  defaults = {
    cidr_block = "10.0.0.0/16"
  }
}

mock_data "aws_subnet" {
  defaults = {
    cidr_block = "10.0.200.0/24"
  }
}

mock_data "aws_ssm_parameter" {
  defaults = {
    insecure_value = "ami-0123456789abcdef0"
  }
}

mock_data "aws_iam_policy_document" {
  defaults = {
    json          = "{}"
    minified_json = "{}"
  }
}

mock_data "aws_iam_instance_profile" {
  defaults = {
    role_arn  = "arn:aws:iam::123456789012:role/platform/bastion-own"
    role_name = "bastion-own"
  }
}

# Resources whose attributes feed the policy documents (and the outputs the
# tests read) get theirs during the plan already.

mock_resource "aws_kms_key" {
  override_during = plan
  defaults = {
    arn    = "arn:aws:kms:eu-west-1:123456789012:key/0000aaaa-1111-bbbb-2222-cccc3333dddd"
    key_id = "0000aaaa-1111-bbbb-2222-cccc3333dddd"
  }
}

mock_resource "aws_iam_role" {
  override_during = plan
  defaults = {
    arn = "arn:aws:iam::123456789012:role/bastion"
  }
}

mock_resource "aws_s3_bucket" {
  override_during = plan
  defaults = {
    arn    = "arn:aws:s3:::bastion-audit-20250101000000000000000001"
    bucket = "bastion-audit-20250101000000000000000001"
    id     = "bastion-audit-20250101000000000000000001"
  }
}

mock_resource "aws_lb" {
  override_during = plan
  defaults = {
    arn        = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/bastion/0123456789abcdef"
    arn_suffix = "net/bastion/0123456789abcdef"
    dns_name   = "bastion-0123456789abcdef.elb.eu-west-1.amazonaws.com"
    zone_id    = "Z2IFOLAFXWLO4F"
  }
}
