################################################################################
# EC2 Instance Connect: the instance role's push permissions (eic_push) and the
# policy users need to push a key to the bastion itself (eic_auth)
#
# Locals only, built from the variables and main.tf's partition, region,
# account_id and asg_name: iam.tf puts eic_push_policy's statements into the
# instance role's policy, outputs.tf shows eic_user_policy. The tests evaluate
# this file with variables.tf alone (terraform console, no provider) and compare
# it with docs/iam/eic-push-policy.json and docs/iam/eic-user-policy.json.
################################################################################

locals {
  # Every OS user the bastion may push a key for: [eic] os_users and the rules' own.
  eic_push_os_users = sort(distinct(concat(var.eic_os_users, flatten([
    for r in coalesce(var.allow_rules, []) : r.os_users == null ? [] : r.os_users
  ]))))

  # docs/iam/eic-push-policy.json, filled in: DescribeInstances has no
  # resource-level permissions (Resource "*"); the push is limited to instances
  # of this account and region, to those OS users, and to eic_push_instance_tags
  # (none: any instance; see that variable).
  eic_push_policy = {
    Version = "2012-10-17"
    Statement = [for s in [
      {
        Sid      = "FindTheInstanceAskedFor"
        Effect   = "Allow"
        Action   = ["ec2:DescribeInstances"]
        Resource = ["*"]
      },
      {
        Sid      = "PushTheUsersKeyToIt"
        Effect   = "Allow"
        Action   = ["ec2-instance-connect:SendSSHPublicKey"]
        Resource = ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"]
        Condition = {
          StringEquals = merge(
            { "ec2:osuser" = local.eic_push_os_users },
            { for k, v in var.eic_push_instance_tags : "aws:ResourceTag/${k}" => [v] },
          )
        }
      },
    ] : s if var.eic_push]
  }

  # docs/iam/eic-user-policy.json, filled in: what a user needs to log in with
  # eic_auth. The instances are recognised by the tag EC2 Auto Scaling puts on
  # every instance it launches: an aws: tag, which nobody can add to another
  # instance (unlike Name or the module's own tags). The osuser condition ties
  # the login to the caller (eic_user_policy_os_user).
  eic_user_policy = {
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "PushAKeyToTheBastionInstances"
        Effect   = "Allow"
        Action   = "ec2-instance-connect:SendSSHPublicKey"
        Resource = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
        Condition = {
          StringEquals = merge(
            { "aws:ResourceTag/aws:autoscaling:groupName" = local.asg_name },
            { for k, v in { "ec2:osuser" = var.eic_user_policy_os_user } : k => v if v != null },
          )
        }
      },
      {
        # To find the group's instances: each one reads only the keys pushed to it.
        Sid      = "FindTheBastionInstances"
        Effect   = "Allow"
        Action   = "ec2:DescribeInstances"
        Resource = "*"
      },
    ]
  }
}
