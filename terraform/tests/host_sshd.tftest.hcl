# host_sshd: the AMI's own sshd on a port of its own, for administrators only.

mock_provider "aws" {
  source = "./tests/aws"
}

variables {
  vpc_id                       = "vpc-0123456789abcdef0"
  subnet_ids                   = ["subnet-0a", "subnet-0b"]
  lb_subnet_ids                = ["subnet-0c", "subnet-0d"]
  allowed_cidr_blocks          = ["203.0.113.0/24"]
  iam_groups                   = ["bastion-users"]
  bastion_binary_url           = "https://releases.example.com/bastion/v1.0.0/bastion-x86_64"
  bastion_binary_sha256        = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
  bastion_worker_binary_sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
}

run "disabled_opens_nothing" {
  command = plan

  variables {
    host_sshd = "disabled"
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.host_sshd) == 0
    error_message = "host_sshd = disabled opened a port"
  }
}

run "port_adds_one_rule_from_the_admins" {
  command = plan

  variables {
    host_sshd         = "port"
    admin_cidr_blocks = ["10.20.0.0/16"]
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.host_sshd) == 1
    error_message = "host_sshd = port: ${length(aws_vpc_security_group_ingress_rule.host_sshd)} rules, not 1"
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.host_sshd["10.20.0.0/16"].cidr_ipv4 == "10.20.0.0/16" &&
      aws_vpc_security_group_ingress_rule.host_sshd["10.20.0.0/16"].from_port == 2222 &&
      aws_vpc_security_group_ingress_rule.host_sshd["10.20.0.0/16"].to_port == 2222 &&
      aws_vpc_security_group_ingress_rule.host_sshd["10.20.0.0/16"].ip_protocol == "tcp"
    )
    error_message = "the host sshd rule is not tcp/2222 from the admin range"
  }

  # Nothing else changes: the NLB still admits only the clients.
  assert {
    condition     = keys(aws_vpc_security_group_ingress_rule.lb_clients) == ["203.0.113.0/24"]
    error_message = "host_sshd changed the NLB's rules"
  }
}

run "port_elsewhere_and_ipv6_admins" {
  command = plan

  variables {
    host_sshd         = "port"
    host_sshd_port    = 2022
    admin_cidr_blocks = ["10.20.0.0/16", "2001:db8:1::/48"]
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.host_sshd) == 2 && aws_vpc_security_group_ingress_rule.host_sshd["2001:db8:1::/48"].cidr_ipv6 == "2001:db8:1::/48" && aws_vpc_security_group_ingress_rule.host_sshd["2001:db8:1::/48"].from_port == 2022
    error_message = "one rule per admin range, on host_sshd_port"
  }
}

run "port_without_admins_is_refused" {
  command = plan

  variables {
    host_sshd = "port"
  }

  expect_failures = [var.admin_cidr_blocks]
}

run "port_on_the_service_port_is_refused" {
  command = plan

  variables {
    host_sshd         = "port"
    host_sshd_port    = 22
    admin_cidr_blocks = ["10.20.0.0/16"]
  }

  expect_failures = [var.host_sshd_port]
}

run "unknown_mode_is_refused" {
  command = plan

  variables {
    host_sshd = "enabled"
  }

  expect_failures = [var.host_sshd]
}
