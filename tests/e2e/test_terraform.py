"""The Terraform module (terraform/) and its examples.

Here, without providers:

- `terraform fmt` over the module and the examples;
- checkov over the module (every skip justified in place);
- the generated reference in terraform/README.md (terraform/docs.py) is current,
  and documents every input and output; no ARN names partition `aws` literally,
  and no provider but hashicorp/aws is required;
- the module's own variable validations (terraform/variables.tf, copied alone
  into a temporary root module and planned with good and bad inputs);
- the user data (templates/user-data.sh.tftpl) and the bastion configuration
  it writes (templates/bastion.toml.tftpl), rendered by `terraform console`
  for several input sets: shellcheck on the script and on the drain watcher
  it installs, `bastion check-config` on the configuration, then the script
  itself run as root in a private mount namespace (overlays on /etc,
  /usr/local and /var/log) with curl, aws, docker, systemctl and logger
  replaced by recording stand-ins, and the drain watcher run the same way;
- the IAM policy the module mirrors from docs/iam/, and examples/ssh_config.

The module itself is planned by `terraform test` against a mocked AWS provider
in test_terraform_plan.py.

A missing tool (terraform, shellcheck, checkov, unshare) fails the test.
"""

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness import BASTION

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "terraform"
TEMPLATES = MODULE / "templates"
USER_DATA = TEMPLATES / "user-data.sh.tftpl"
CONFIG_TEMPLATE = TEMPLATES / "bastion.toml.tftpl"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

SHA_OF_NOTHING = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is not on PATH (tests/run installs or checks it)"
    return path


def tf_env(tmp_path):
    cli = tmp_path / "terraformrc"
    cli.write_text("")
    return {**os.environ, "TF_CLI_CONFIG_FILE": str(cli), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run(cmd, **kw)


def words(text):
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# Static checks


def test_terraform_fmt(tmp_path):
    r = run([tool("terraform"), "fmt", "-check", "-recursive", "-diff", "terraform", "examples"],
            cwd=ROOT, env=tf_env(tmp_path))
    assert r.returncode == 0, f"terraform fmt wants changes:\n{r.stdout}{r.stderr}"


def test_checkov_passes_and_every_skip_is_justified_in_place():
    assert CHECKOV.exists(), f"{CHECKOV} is missing (tests/run creates .venv-checkov)"
    # --skip-download: no call to Prisma Cloud (there is no network here, nor a need for it).
    r = run([str(CHECKOV), "-d", "terraform", "--framework", "terraform", "--quiet", "--compact",
             "--skip-download"], cwd=ROOT)
    assert r.returncode == 0, f"checkov failed:\n{r.stdout}\n{r.stderr[-3000:]}"
    assert re.search(r"Failed checks: 0\b", r.stdout), r.stdout
    # No global suppression: no config file, every skip on its resource with a reason.
    assert not list(MODULE.rglob(".checkov.y*ml"))
    for tf in MODULE.rglob("*.tf"):
        for line in tf.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.fullmatch(r"\s*#checkov:skip=CKV2?_AWS_\d+:.{20,}", line), \
                    f"{tf.name}: a skip without a check id and a reason: {line.strip()}"


def test_key_reader_policy_is_the_documented_one():
    assert (MODULE / "policies/key-reader-policy.json").read_bytes() == \
        (ROOT / "docs/iam/key-reader-policy.json").read_bytes()
    iam = (MODULE / "iam.tf").read_text()
    for doc in ("assume-key-reader-policy.json", "key-reader-trust-policy.json"):
        policy = json.loads((ROOT / "docs/iam" / doc).read_text())
        for statement in policy["Statement"]:
            assert f'"{statement["Sid"]}"' in iam, f"iam.tf does not mirror {doc} ({statement['Sid']})"


def test_readme_documents_every_input_and_output():
    readme = (MODULE / "README.md").read_text()
    for path, kind in (("variables.tf", "variable"), ("outputs.tf", "output")):
        text = (MODULE / path).read_text()
        names = re.findall(rf'^{kind} "(\w+)"', text, re.M)
        assert names
        for name in names:
            assert f"| `{name}` |" in readme, f"terraform/README.md does not document the {kind} {name}"
        # ... and every one is typed (variables) and described.
        for block in re.findall(rf'^{kind} "\w+" \{{\n(.*?)^\}}', text, re.S | re.M):
            assert re.search(r"^  description\s*=", block, re.M), block[:200]
            if kind == "variable":
                assert re.search(r"^  type\s*=", block, re.M), block[:200]


def test_readme_reference_is_generated_and_current():
    """terraform/docs.py regenerates the tables between the terraform-docs markers;
    --check fails when the README differs from what it would write."""
    readme = (MODULE / "README.md").read_text()
    assert readme.count("<!-- BEGIN_TF_DOCS -->") == 1 and readme.count("<!-- END_TF_DOCS -->") == 1
    r = run([sys.executable, str(MODULE / "docs.py"), "--check"], cwd=ROOT)
    assert r.returncode == 0, f"terraform/README.md is stale: run terraform/docs.py\n{r.stdout}{r.stderr}"
    # The generator sees every block: each resource and data source of the module is in the table.
    tf = "\n".join(p.read_text() for p in sorted(MODULE.glob("*.tf")))
    reference = readme.split("<!-- BEGIN_TF_DOCS -->")[1]
    for kind, rtype, name in re.findall(r'^(resource|data) "(\w+)" "(\w+)"', tf, re.M):
        prefix = "data." if kind == "data" else ""
        assert f"`{prefix}{rtype}.{name}`" in reference, f"{prefix}{rtype}.{name} is not in the reference"


def test_every_arn_names_the_partition():
    """ARNs are built with data.aws_partition (arn:${local.partition}:…); a literal
    arn:aws: appears only in descriptions and error messages (as an example)."""
    # The policy kept from docs/iam/ names partition aws; iam.tf reads it through this.
    rewrite = ('jsondecode(replace(file("${path.module}/policies/key-reader-policy.json"), '
               '"\\"arn:aws:", "\\"arn:${local.partition}:"))')
    assert rewrite in (MODULE / "iam.tf").read_text()
    for tf in sorted(MODULE.glob("*.tf")):
        for n, line in enumerate(tf.read_text().splitlines(), 1):
            if "arn:aws:" in line and rewrite not in line:
                assert re.match(r"\s*(description|error_message)\s*=", line), f"{tf.name}:{n}: {line.strip()}"


def test_only_the_aws_provider_is_required():
    """The host key is generated on the instances (never in the state): no tls provider,
    in the module or the examples."""
    for versions in [MODULE / "versions.tf", *sorted((ROOT / "examples").glob("*/versions.tf"))]:
        text = versions.read_text()
        assert re.findall(r'source\s*=\s*"([^"]+)"', text) == ["hashicorp/aws"], f"{versions}: {text}"
    for tf in MODULE.glob("*.tf"):
        assert not re.search(r'^(resource|data) "tls_', tf.read_text(), re.M), tf.name


def test_example_ssh_config_jumps_through_the_bastion():
    ssh = tool("ssh")
    for host in ("10.0.3.17", "db1.internal"):
        r = run([ssh, "-G", "-F", str(ROOT / "examples/ssh_config"), host])
        assert r.returncode == 0, r.stderr
        assert "proxyjump bastion" in r.stdout.splitlines(), r.stdout
    r = run([ssh, "-G", "-F", str(ROOT / "examples/ssh_config"), "bastion"])
    assert "hostname bastion.example.com" in r.stdout.splitlines()
    assert not any(ln.startswith("proxyjump") for ln in r.stdout.splitlines())


# --------------------------------------------------------------------------------------------
# Variable validations: the module's variables.tf alone, planned (no provider is needed).

GOOD = {
    "vpc_id": "vpc-0123456789abcdef0",
    "subnet_ids": ["subnet-0a", "subnet-0b"],
    "lb_subnet_ids": ["subnet-0c", "subnet-0d"],
    "allowed_cidr_blocks": ["203.0.113.0/24", "2001:db8::/32"],
    "iam_groups": ["bastion-users"],
    "bastion_binary_url": "https://releases.example.com/bastion/v1/bastion-x86_64",
    "bastion_binary_sha256": SHA_OF_NOTHING,
    "bastion_worker_binary_sha256": SHA_OF_NOTHING,
}

NO_BINARY = {"bastion_binary_url": None, "bastion_binary_sha256": None, "bastion_worker_binary_sha256": None}

VALIDATION_CASES = [
    # (name, changes to GOOD (None removes), error fragment or None when valid)
    ("good", {}, None),
    ("s3 binary", {"bastion_binary_url": "s3://my-artifacts/bastion/bastion-x86_64"}, None),
    ("docker instead of binary", {**NO_BINARY,
                                  "docker_image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/bastion@sha256:" + "a" * 64},
     None),
    ("internet on purpose", {"allowed_cidr_blocks": ["0.0.0.0/0", "::/0"], "allow_internet_ingress": True}, None),
    ("whole IPv4 internet", {"allowed_cidr_blocks": ["10.0.0.0/8", "0.0.0.0/0"]}, "opens the SSH port to the whole internet"),
    ("whole IPv6 internet", {"allowed_cidr_blocks": ["::/0"]}, "opens the SSH port to the whole internet"),
    ("internet, spelled oddly", {"allowed_cidr_blocks": ["1.2.3.4/0"]}, "opens the SSH port to the whole internet"),
    ("not a CIDR", {"allowed_cidr_blocks": ["10.0.0.0/33"]}, "valid CIDR block"),
    ("no clients", {"allowed_cidr_blocks": []}, "at least one valid CIDR block"),
    ("binary and image", {"docker_image": "bastion:1"}, "exactly one of bastion_binary_url"),
    ("neither binary nor image", NO_BINARY, "exactly one of bastion_binary_url"),
    ("binary without checksum", {"bastion_binary_sha256": None}, "bastion_binary_sha256 is required"),
    ("bad checksum", {"bastion_binary_sha256": SHA_OF_NOTHING.upper()}, "64 lowercase hex digits"),
    ("plain http", {"bastion_binary_url": "http://example.com/bastion"}, "https:// or s3://"),
    ("url with a quote", {"bastion_binary_url": "https://example.com/b'$(reboot)"}, "https:// or s3://"),
    ("bad role ARN", {"assume_role_arn": "arn:aws:iam::1:role/x"}, "must be an IAM role ARN"),
    ("zone without a name", {"route53_zone_id": "Z123"}, "Set both route53_zone_id and route53_record_name"),
    ("health port on the SSH port", {"health_port": 22}, "other than service_port"),
    ("desired above max", {"desired_capacity": 5, "max_size": 4}, "desired_capacity must be between"),
    ("allow rule with a quote", {"allow_rules": [{"principals": ["*"], "to": ['10.0.0.0/8:22"']}]}, "Every allow rule"),
    ("allow rule without targets", {"allow_rules": [{"principals": ["*"], "to": []}]}, "Every allow rule"),
    ("bad group name", {"iam_groups": ["ops team"]}, "must be IAM group names"),
    ("grace beyond the hook", {"shutdown_grace_seconds": 7000}, "between 0 and 6900"),
    ("refresh range too wide", {"instance_refresh": {"min_healthy_percentage": 50, "max_healthy_percentage": 200}},
     "at most 100 apart"),
    ("health checks from anywhere", {"health_check_cidr_blocks": ["0.0.0.0/0"]}, "not the whole internet"),
    ("bad egress CIDR", {"egress_cidr_blocks": ["10.0.0.0/40"]}, "egress_cidr_blocks must be valid"),
    ("bad onward port", {"onward_ports": [22, 70000]}, "between 1 and 65535"),
    ("audit archive", {"audit_s3_bucket": "example-audit", "audit_s3_prefix": "trails/",
                       "audit_s3_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd"}, None),
    ("bad audit bucket", {"audit_s3_bucket": "Example_Audit"}, "audit_s3_bucket must be an S3 bucket name"),
    ("audit prefix with a leading slash", {"audit_s3_prefix": "/trails/"}, "without a leading slash"),
    ("audit key not an ARN", {"audit_s3_kms_key_arn": "alias/audit"}, "must be a KMS key ARN"),
    ("own KMS key", {"kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"}, None),
    ("KMS alias for a key", {"kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:alias/bastion"}, "must be a KMS key ARN"),
    ("supplied host key", {"host_key_parameter_name": "/shared/bastion/host_ed25519_key"}, None),
    ("host key name with a space", {"host_key_parameter_name": "/shared/host key"}, "must be an SSM parameter name"),
    # EC2 Instance Connect
    ("EIC login and push", {"eic_auth": True, "eic_push": True, "eic_os_users": ["ec2-user", "ubuntu", "_svc$", "a"],
                            "eic_push_instance_tags": {"env": "dev", "aws:cloudformation:stack-name": "web tier"},
                            "allow_rules": [{"principals": ["group:dev"], "to": ["tag:env=dev:22", "i-0abc*:22"],
                                             "os_users": ["ubuntu", "admin.ops"]},
                                            {"principals": ["*"], "to": ["10.0.0.0/8:22"], "os_users": None}]}, None),
    ("instance targets", {"allow_rules": [{"principals": ["*"], "to": [
        "tag:env=dev:22", "tag:aws:cloudformation:stack-name=web-*:22", "tag:team=a:8000-8100", "i-0abc*:22", "i-*:22"]}]},
     None),
    ("user policy for federated logins", {"eic_auth": True, "eic_user_policy_os_user": "${aws:PrincipalTag/login}"}, None),
    ("user policy for one login", {"eic_auth": True, "eic_user_policy_os_user": "ec2-user"}, None),
    ("user policy login with a space", {"eic_user_policy_os_user": "alice bob"}, "eic_user_policy_os_user must be"),
    ("no EIC OS users", {"eic_os_users": []}, "eic_os_users must list at least one OS user name"),
    ("EIC OS user with a space", {"eic_os_users": ["ec2 user"]}, "eic_os_users must list at least one OS user name"),
    ("EIC OS user starting with a hyphen", {"eic_os_users": ["-oProxyCommand"]}, "eic_os_users must list"),
    ("EIC OS user too long", {"eic_os_users": ["a" * 33]}, "eic_os_users must list"),
    ("EIC OS user with a dollar inside", {"eic_os_users": ["a$b"]}, "eic_os_users must list"),
    ("rule OS user not EIC's", {"allow_rules": [{"principals": ["*"], "to": ["i-*:22"], "os_users": ["root;id"]}]},
     "An allow rule's os_users must be null or list OS user names"),
    ("rule with no OS users", {"allow_rules": [{"principals": ["*"], "to": ["i-*:22"], "os_users": []}]},
     "An allow rule's os_users must be null or list OS user names"),
    ("instance tags without the push", {"eic_push_instance_tags": {"env": "dev"}}, "only applies with eic_push = true"),
    ("instance tag key with a quote", {"eic_push": True, "eic_push_instance_tags": {'env"': "dev"}},
     "eic_push_instance_tags must map tag keys"),
    ("instance tag key empty", {"eic_push": True, "eic_push_instance_tags": {"": "dev"}},
     "eic_push_instance_tags must map tag keys"),
    # The worker binary
    ("worker from elsewhere", {"bastion_worker_binary_url": "s3://my-artifacts/bastion/bastion-worker-x86_64"}, None),
    ("worker without checksum", {"bastion_worker_binary_sha256": None}, "bastion_worker_binary_sha256 is required"),
    ("worker checksum in capitals", {"bastion_worker_binary_sha256": SHA_OF_NOTHING.upper()},
     "bastion_worker_binary_sha256 must be 64 lowercase hex digits"),
    ("worker checksum with an image", {**NO_BINARY, "docker_image": "bastion:1", "bastion_worker_binary_sha256": SHA_OF_NOTHING},
     "bastion_worker_binary_sha256 is required with bastion_binary_url (and only with it)"),
    ("worker URL with an image", {**NO_BINARY, "docker_image": "bastion:1", "bastion_worker_binary_url": "https://example.com/w"},
     "bastion_worker_binary_url only applies with bastion_binary_url"),
    ("worker over plain http", {"bastion_worker_binary_url": "http://example.com/bastion-worker"}, "https:// or s3://"),
    # The host's own sshd
    ("host sshd on a port", {"host_sshd": "port", "admin_cidr_blocks": ["10.20.0.0/16", "2001:db8:1::/48"]}, None),
    ("host sshd on 2022", {"host_sshd": "port", "host_sshd_port": 2022, "admin_cidr_blocks": ["10.20.0.0/16"]}, None),
    ("service port 2222, host sshd off", {"service_port": 2222}, None),
    ("host sshd mode unknown", {"host_sshd": "enabled"}, 'host_sshd must be "disabled" or "port"'),
    ("host sshd without admins", {"host_sshd": "port"}, "needs at least one admin_cidr_blocks entry"),
    ("admins without host sshd", {"admin_cidr_blocks": ["10.20.0.0/16"]}, 'admin_cidr_blocks only applies with host_sshd = "port"'),
    ("admin range not a CIDR", {"host_sshd": "port", "admin_cidr_blocks": ["10.20.0.0/33"]}, "admin_cidr_blocks must be valid CIDR blocks"),
    ("admins from the internet", {"host_sshd": "port", "admin_cidr_blocks": ["0.0.0.0/0"]},
     "admin_cidr_blocks opens the host's sshd to the whole internet"),
    ("host sshd on the SSH port", {"host_sshd": "port", "host_sshd_port": 22, "admin_cidr_blocks": ["10.20.0.0/16"]},
     "host_sshd_port must differ from service_port and health_port"),
    ("host sshd on the health port", {"host_sshd": "port", "host_sshd_port": 8080, "admin_cidr_blocks": ["10.20.0.0/16"]},
     "host_sshd_port must differ from service_port and health_port"),
    ("host sshd port out of range", {"host_sshd": "port", "host_sshd_port": 70000, "admin_cidr_blocks": ["10.20.0.0/16"]},
     "host_sshd_port must be a TCP port between 1 and 65535"),
    # Audit shipping on shutdown, and the archive
    ("ship grace", {"audit_ship_grace_seconds": 600, "shutdown_grace_seconds": 600}, None),
    ("ship grace negative", {"audit_ship_grace_seconds": -1}, "between 0 and 3600"),
    ("ship grace fractional", {"audit_ship_grace_seconds": 1.5}, "between 0 and 3600"),
    ("ship grace beyond the hook", {"audit_ship_grace_seconds": 3600, "shutdown_grace_seconds": 3600},
     "the lifecycle hook's heartbeat, their sum plus 120 s, is at most 7200 s"),
    ("audit bucket created", {"create_audit_bucket": True, "audit_s3_object_lock_mode": "COMPLIANCE",
                              "audit_s3_object_lock_days": 2557, "audit_s3_access_log_bucket": "example-logs"}, None),
    ("audit lock mode unknown", {"create_audit_bucket": True, "audit_s3_object_lock_mode": "governance"},
     "audit_s3_object_lock_mode must be GOVERNANCE or COMPLIANCE"),
    ("audit lock days zero", {"create_audit_bucket": True, "audit_s3_object_lock_days": 0}, "between 1 and 36500"),
    ("audit log bucket not a name", {"audit_s3_access_log_bucket": "Logs_Bucket"}, "audit_s3_access_log_bucket must be an S3 bucket name"),
    # terraform-aws-modules conventions
    ("nothing created", {"create": False}, None),
    ("role named, prefixed, pathed, bounded", {"iam_role_name": "jump-host", "iam_role_use_name_prefix": True,
                                               "iam_role_path": "/platform/bastion/",
                                               "iam_role_permissions_boundary": "arn:aws-us-gov:iam::123456789012:policy/boundary"}, None),
    ("role prefix too long", {"iam_role_name": "a" * 38, "iam_role_use_name_prefix": True}, "at most 37 characters"),
    ("role name with a space", {"iam_role_name": "jump host"}, "iam_role_name must be an IAM role name"),
    ("role path without slashes", {"iam_role_path": "platform"}, "iam_role_path must be an IAM path"),
    ("boundary not a policy", {"iam_role_permissions_boundary": "arn:aws:iam::123456789012:role/x"},
     "iam_role_permissions_boundary must be an IAM policy ARN"),
    ("own instance profile", {"create_iam_instance_profile": False,
                              "iam_instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/platform/bastion"}, None),
    ("own profile without its ARN", {"create_iam_instance_profile": False}, "Set iam_instance_profile_arn exactly when"),
    ("profile ARN with the module's profile", {"iam_instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/b"},
     "Set iam_instance_profile_arn exactly when"),
    ("profile ARN of a role", {"create_iam_instance_profile": False, "iam_instance_profile_arn": "arn:aws:iam::123456789012:role/b"},
     "iam_instance_profile_arn must be an instance profile ARN"),
    ("own security group", {"create_security_group": False, "security_group_id": "sg-0123456789abcdef0"}, None),
    ("own security group without its id", {"create_security_group": False}, "Set security_group_id exactly when"),
    ("security group id with the module's group", {"security_group_id": "sg-0123456789abcdef0"}, "Set security_group_id exactly when"),
    ("security group id malformed", {"create_security_group": False, "security_group_id": "default"},
     "security_group_id must be a security group id"),
    ("NLB without a security group", {"create_lb_security_group": False}, None),
    # Alarms
    ("alarms", {"create_alarms": True, "alarm_actions": ["arn:aws:sns:eu-west-1:123456789012:oncall"],
                "alarm_refused_logins_threshold": 5, "alarm_refused_forwards_threshold": 0}, None),
    ("alarm action not an ARN", {"create_alarms": True, "alarm_actions": ["oncall"]}, "alarm_actions must be ARNs"),
    ("alarm threshold negative", {"alarm_refused_logins_threshold": -1}, "must not be negative"),
]


@pytest.mark.parametrize("name,changes,error", VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_variable_validation(tmp_path, name, changes, error):
    work = tmp_path / "root"
    work.mkdir()
    shutil.copy(MODULE / "variables.tf", work / "variables.tf")
    values = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    (work / "case.tfvars.json").write_text(json.dumps(values))
    r = run([tool("terraform"), "plan", "-input=false", "-no-color", "-lock=false", "-var-file=case.tfvars.json"],
            cwd=work, env=tf_env(tmp_path))
    if error is None:
        assert r.returncode == 0, f"{name}: rejected:\n{r.stdout}{r.stderr}"
    else:
        assert r.returncode != 0, f"{name}: accepted:\n{r.stdout}"
        assert error in words(r.stderr), f"{name}: {error!r} not in:\n{r.stderr}"


# --------------------------------------------------------------------------------------------
# Rendering the user data and the configuration


def render(tmp_path, config_vars, user_data_vars):
    """templatefile() the two templates as the module does (the configuration is
    rendered first and handed to the user data), with `terraform console` in an
    empty directory. The variables travel as base64 JSON, the result as base64."""
    def b64(o):
        return base64.b64encode(json.dumps(o).encode()).decode()

    expr = (f'base64encode(templatefile("{USER_DATA}", merge(jsondecode(base64decode("{b64(user_data_vars)}")), '
            f'{{ bastion_config = templatefile("{CONFIG_TEMPLATE}", jsondecode(base64decode("{b64(config_vars)}"))) }})))')
    work = tmp_path / "console"
    work.mkdir(exist_ok=True)
    r = run([tool("terraform"), "console"], input=expr + "\n", cwd=work, env=tf_env(tmp_path))
    assert r.returncode == 0, f"terraform console failed:\n{r.stderr}"
    out = r.stdout.strip()
    assert out.startswith('"') and out.endswith('"'), out[:300]
    script = base64.b64decode(out[1:-1]).decode()
    config = heredoc(script, "BASTION_TOML_END")
    return script, config


def heredoc(script, marker):
    m = re.search(rf"<<'{marker}'\n(.*?\n){marker}\n", script, re.S)
    assert m, f"no <<'{marker}' heredoc in the user data"
    return m.group(1)


def config_vars(**over):
    v = {
        "service_port": 22,
        "health_port": 8080,
        "proxy_protocol": False,
        "host_key_ref": "ssm:/bastion/host_ed25519_key",
        "iam_groups": ["bastion-users"],
        "assume_role_arn": "",
        "allow_rules": [{"principals": ["*"], "to": ["10.42.0.0/16:22"]}],
        "eic_auth": False,
        "eic_push": False,
        "eic_os_users": ["ec2-user"],
        "audit_dir": "/var/log/bastion",
        "cloudwatch_log_group": "/bastion/audit",
        "s3_bucket": "",
        "s3_prefix": "bastion/",
        "s3_kms_key_id": "",
        "shutdown_grace_seconds": 300,
        "ship_grace_seconds": 60,
    }
    v.update(over)
    return v


def user_data_vars(**over):
    v = {
        "binary_url": "",
        "binary_sha256": "",
        "worker_binary_url": "",
        "worker_binary_sha256": "",
        "docker_image": "",
        "ecr_registry": "",
        "ecr_region": "",
        "service_port": 22,
        "health_port": 8080,
        "audit_dir": "/var/log/bastion",
        "log_level": "info",
        "asg_name": "bastion",
        "lifecycle_hook_name": "bastion-drain",
        "shutdown_grace_seconds": 300,
        "ship_grace_seconds": 60,
        "stop_timeout_seconds": 390,
        "extra_user_data": "",
        "host_sshd": "disabled",
        "host_sshd_port": 2222,
        "host_key_parameter_name": "/bastion/host_ed25519_key",
        "host_key_generate": True,
        "host_key_kms_key_arn": "",
    }
    v.update(over)
    return v


def test_the_module_passes_what_the_templates_use():
    """The test renders the templates with the same variables main.tf hands them."""
    main = (MODULE / "main.tf").read_text()
    for template, names in (("bastion.toml.tftpl", config_vars()), ("user-data.sh.tftpl", user_data_vars())):
        call = re.search(rf'templatefile\("\$\{{path.module\}}/templates/{re.escape(template)}", \{{(.*?)\n  \}}\)', main, re.S)
        assert call, f"main.tf does not render {template}"
        passed = set(re.findall(r"^\s*(\w+)\s*=", call.group(1), re.M))
        expected = set(names) | ({"bastion_config"} if template.startswith("user-data") else set())
        assert passed == expected, f"{template}: main.tf passes {sorted(passed)}, the test {sorted(expected)}"


EXTRA = """\
# Site hardening, appended by extra_user_data.
echo "extra user data ran" >/etc/bastion/extra-ran
"""

RENDER_CASES = {
    "binary over https": (
        config_vars(),
        user_data_vars(binary_url="https://releases.example.com/bastion/v1/bastion-x86_64", binary_sha256=SHA_OF_NOTHING,
                       worker_binary_url="https://releases.example.com/bastion/v1/bastion-worker-x86_64",
                       worker_binary_sha256=SHA_OF_NOTHING),
    ),
    "binary from s3, proxy protocol, cross-account": (
        config_vars(proxy_protocol=True, assume_role_arn="arn:aws:iam::111111111111:role/bastion-key-reader",
                    service_port=2222, health_port=9090, shutdown_grace_seconds=600, s3_bucket="example-audit",
                    allow_rules=[{"principals": ["group:ops"], "to": ["10.0.0.0/8:22", "*.internal:22"]},
                                 {"principals": ["alice", "first.last.at.example.com"], "to": ["db.internal:5432", "10.1.2.3:8000-8100"]}]),
        user_data_vars(binary_url="s3://my-artifacts/bastion/bastion-x86_64", binary_sha256=SHA_OF_NOTHING,
                       worker_binary_url="s3://my-artifacts/bastion/bastion-worker", worker_binary_sha256=SHA_OF_NOTHING,
                       service_port=2222, health_port=9090, shutdown_grace_seconds=600, stop_timeout_seconds=690,
                       host_sshd="port", host_sshd_port=22, host_key_generate=False,
                       host_key_kms_key_arn="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
    ),
    "docker from ECR, any IAM user, extra user data": (
        config_vars(iam_groups=[], cloudwatch_log_group="", s3_bucket="example-audit", s3_prefix="trails/",
                    s3_kms_key_id="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
        user_data_vars(docker_image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/bastion@sha256:" + "a" * 64,
                       ecr_registry="123456789012.dkr.ecr.eu-west-1.amazonaws.com", ecr_region="eu-west-1",
                       extra_user_data=EXTRA, log_level="bastion=debug,russh=warn"),
    ),
    "docker from a registry, proxy protocol, no forwarding": (
        config_vars(proxy_protocol=True, allow_rules=[], assume_role_arn="arn:aws:iam::111111111111:role/x"),
        user_data_vars(docker_image="registry.example.com:5000/ops/bastion:1.2.3", extra_user_data=EXTRA),
    ),
    "binary, EC2 Instance Connect login and push": (
        config_vars(eic_auth=True, eic_push=True, eic_os_users=["ec2-user", "admin"],
                    allow_rules=[{"principals": ["group:dev"], "to": ["tag:env=dev:22", "i-0abc*:22"], "os_users": ["ubuntu"]},
                                 {"principals": ["group:ops"], "to": ["tag:aws:cloudformation:stack-name=web-*:22"]},
                                 {"principals": ["*"], "to": ["10.42.0.0/16:22"]}]),
        user_data_vars(binary_url="https://releases.example.com/bastion/v1/bastion-x86_64", binary_sha256=SHA_OF_NOTHING,
                       worker_binary_url="https://releases.example.com/bastion/v1/bastion-worker-x86_64",
                       worker_binary_sha256=SHA_OF_NOTHING),
    ),
}


@pytest.fixture(params=list(RENDER_CASES), ids=list(RENDER_CASES))
def rendered(request, tmp_path):
    cfg, ud = RENDER_CASES[request.param]
    script, config = render(tmp_path, cfg, ud)
    return cfg, ud, script, config


def shellcheck(path):
    return run([tool("shellcheck"), "--shell=bash", "--severity=style", str(path)])


def test_user_data_passes_shellcheck(rendered, tmp_path):
    cfg, ud, script, _ = rendered
    f = tmp_path / "user-data.sh"
    f.write_text(script)
    r = shellcheck(f)
    assert r.returncode == 0, f"shellcheck on the user data:\n{r.stdout}"
    # The drain watcher is written through a quoted heredoc, so check it on its own.
    w = tmp_path / "bastion-drain-watcher"
    w.write_text(heredoc(script, "DRAIN_WATCHER_END"))
    r = shellcheck(w)
    assert r.returncode == 0, f"shellcheck on the drain watcher:\n{r.stdout}"
    assert script.startswith("#!/bin/bash\n") and "\nset -euo pipefail\n" in script
    # EC2 takes at most 16 KiB of user data (before base64): the module gzips it (cloud-init
    # unpacks gzip), with room to spare for extra_user_data.
    assert len(gzip.compress(script.encode())) < 12288, len(gzip.compress(script.encode()))
    assert re.search(r"^\s*user_data\s*=\s*base64gzip\(local\.user_data\)$", (MODULE / "asg.tf").read_text(), re.M)
    if ud["extra_user_data"]:
        assert script.rstrip().endswith(ud["extra_user_data"].rstrip()), script[-400:]
    else:
        assert "extra_user_data" not in script


def test_rendered_config_passes_check_config(rendered, tmp_path):
    cfg, _, _, config = rendered
    f = tmp_path / "bastion.toml"
    f.write_text(config)
    assert BASTION.exists(), f"{BASTION} is missing (cargo build --release)"
    r = run([str(BASTION), "check-config", "--config", str(f)])
    assert r.returncode == 0, f"check-config exit {r.returncode}:\n{r.stderr}\n--- config ---\n{config}"
    assert "configuration is valid" in r.stdout
    # What the module's inputs mean is what the file says.
    t = tomllib.loads(config)
    assert t["listen"] == [f"0.0.0.0:{cfg['service_port']}"]
    assert t["health_listen"] == f"0.0.0.0:{cfg['health_port']}"
    assert t["proxy_protocol"] is cfg["proxy_protocol"]
    assert t["host_keys"] == [cfg["host_key_ref"]]
    auth, *more = t["auth"]
    assert auth["type"] == "iam" and auth["groups"] == cfg["iam_groups"]
    assert auth.get("assume_role_arn", "") == cfg["assume_role_arn"]
    # EC2 Instance Connect: a second key source (the defaults), and the onward push.
    assert more == ([{"type": "eic"}] if cfg["eic_auth"] else [])
    assert t.get("allow", []) == cfg["allow_rules"]
    assert t.get("eic") == ({"push": True, "os_users": cfg["eic_os_users"]} if cfg["eic_push"] else None)
    assert t["audit"]["dir"] == cfg["audit_dir"]
    assert t["audit"].get("cloudwatch_log_group", "") == cfg["cloudwatch_log_group"]
    assert t["audit"].get("s3_bucket", "") == cfg["s3_bucket"]
    if cfg["s3_bucket"]:
        assert t["audit"]["s3_prefix"] == cfg["s3_prefix"]
        assert t["audit"].get("s3_kms_key_id", "") == cfg["s3_kms_key_id"]
        assert t["audit"].get("s3_sse") == ("aws:kms" if cfg["s3_kms_key_id"] else None)
    assert t["limits"]["shutdown_grace"] == f"{cfg['shutdown_grace_seconds']}s"
    assert t["audit"]["ship_grace"] == f"{cfg['ship_grace_seconds']}s"


def test_a_bad_allow_rule_fails_check_config(tmp_path):
    """The check above can fail: an impossible target makes check-config exit 64."""
    _, config = render(tmp_path, config_vars(allow_rules=[{"principals": ["*"], "to": ["10.0.0.0/33:22"]}]),
                       user_data_vars(binary_url="https://example.com/bastion", binary_sha256=SHA_OF_NOTHING,
                                      worker_binary_url="https://example.com/bastion-worker",
                                      worker_binary_sha256=SHA_OF_NOTHING))
    f = tmp_path / "bastion.toml"
    f.write_text(config)
    r = run([str(BASTION), "check-config", "--config", str(f)])
    assert r.returncode == 64, f"exit {r.returncode}:\n{r.stderr}"
    assert "allow[0].to[0]" in r.stderr and "10.0.0.0/33" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# Running the user data: as root, in a private mount namespace whose /etc, /usr/local and
# /var/log are overlays (what the script writes lands in a temporary upper directory), with
# recording stand-ins for the commands that would reach AWS, Docker, systemd or the journal.

STUBS = {
    "curl": r"""#!/bin/bash
# curl stand-in: the instance metadata service, and downloads from $STUB_DOWNLOAD.
out= url=
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift 2 ;;
    -H|-X|-m|--retry|--proto) shift 2 ;;
    -*) shift ;;
    *) url="$1"; shift ;;
  esac
done
echo "curl $url" >>"$STUB_LOG"
case "$url" in
  http://169.254.169.254/latest/api/token) echo token ;;
  http://169.254.169.254/latest/meta-data/placement/region) echo eu-west-1 ;;
  http://169.254.169.254/latest/meta-data/instance-id) echo i-0123456789abcdef0 ;;
  http://169.254.169.254/latest/meta-data/autoscaling/target-lifecycle-state)
    n=$(($(cat "$STUB_LOG.polls" 2>/dev/null || echo 0) + 1)); echo "$n" >"$STUB_LOG.polls"
    if [ "$n" -ge "${STUB_TERMINATED_AFTER:-1}" ]; then echo Terminated; else echo InService; fi ;;
  http://127.0.0.1:*/livez) [ -z "${STUB_LIVEZ_FAIL:-}" ] || exit 22; [ "$out" = /dev/null ] || echo ok ;;
  https://*) cp "$STUB_DOWNLOAD" "$out" ;;
  *) exit 22 ;;
esac
""",
    "aws": r"""#!/bin/bash
echo "aws $*" >>"$STUB_LOG"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[i]}" = s3 ] && [ "${args[i+1]}" = cp ]; then cp "$STUB_DOWNLOAD" "${args[i+4]}"; fi
  if [ "${args[i]}" = get-login-password ]; then echo password; fi
done
exit 0
""",
    "docker": r"""#!/bin/bash
echo "docker $*" >>"$STUB_LOG"
[ "$1" = login ] && cat >/dev/null
exit 0
""",
    # systemctl: records; `cat UNIT` finds the units in $STUB_UNITS (an AMI's sshd.service
    # by default); starting bastion.service makes `ss` see it on the service port.
    "systemctl": r"""#!/bin/bash
echo "systemctl $*" >>"$STUB_LOG"
case "$1" in
  cat) [[ " ${STUB_UNITS-sshd.service} " == *" $2 "* ]] || exit 1 ;;
  enable) [ "$*" != "enable --now bastion.service" ] || touch "$STUB_LOG.listening" ;;
esac
exit 0
""",
    "ss": r"""#!/bin/bash
echo "ss $*" >>"$STUB_LOG"
[ ! -e "$STUB_LOG.listening" ] || echo 'LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("bastion",pid=1,fd=3))'
""",
    "sshd": """#!/bin/bash\necho "sshd $*" >>"$STUB_LOG"\n""",
    "logger": """#!/bin/bash\necho "logger $*" >>"$STUB_LOG"\n""",
}


@pytest.fixture(autouse=True)
def _drop_installed_binaries(tmp_path):
    """The boots install a copy of the (large) bastion binary into their overlay: drop it
    afterwards, so the temporary directories pytest keeps stay small."""
    yield
    for copy in tmp_path.glob("upper/usr/local/bin/bastion*"):
        copy.unlink()


class Boot:
    def __init__(self, tmp_path, script, download):
        self.tmp = tmp_path
        self.upper = tmp_path / "upper"
        stubs = tmp_path / "stubs"
        stubs.mkdir()
        for name, text in STUBS.items():
            (stubs / name).write_text(text)
            (stubs / name).chmod(0o755)
        self.log = tmp_path / "calls.log"
        self.log.write_text("")
        (tmp_path / "user-data.sh").write_text(script)
        mounts = []
        for d in ("etc", "usr/local", "var/log"):
            up, work = self.upper / d, tmp_path / "work" / d
            up.mkdir(parents=True)
            work.mkdir(parents=True)
            mounts.append(f"mount -t overlay overlay -o lowerdir=/{d},upperdir={up},workdir={work} /{d}")
        inner = " && ".join(mounts + [f"exec bash {tmp_path / 'user-data.sh'}"])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BASTION_"))}
        env.update(PATH=f"{stubs}:{env['PATH']}", STUB_LOG=str(self.log), STUB_DOWNLOAD=str(download))
        self.env = env
        self.result = run([tool("unshare"), "--mount", "--propagation", "private", "bash", "-c", inner],
                          env=env, timeout=120)
        self.calls = self.log.read_text().splitlines()

    def file(self, path):
        return self.upper / path.lstrip("/")

    def __str__(self):
        return f"exit {self.result.returncode}\n--- stderr ---\n{self.result.stderr}\n--- calls ---\n" + "\n".join(self.calls)


def boot_case(tmp_path, case, download):
    cfg, ud = RENDER_CASES[case]
    script, _ = render(tmp_path, cfg, ud)
    return Boot(tmp_path, script, download), cfg, ud


def real_binary():
    assert BASTION.exists(), f"{BASTION} is missing (cargo build --release)"
    return BASTION


def sha256(path):
    return run(["sha256sum", str(path)]).stdout.split()[0]


@pytest.mark.parametrize("case", ["binary over https", "binary from s3, proxy protocol, cross-account"])
def test_boot_installs_the_verified_binary_and_starts_it(tmp_path, case):
    binary = real_binary()
    cfg, ud = RENDER_CASES[case]
    ud = {**ud, "binary_sha256": sha256(binary), "worker_binary_sha256": sha256(binary)}
    script, config = render(tmp_path, cfg, ud)
    b = Boot(tmp_path, script, binary)
    assert b.result.returncode == 0, str(b)
    for name in ("bastion", "bastion-worker"):
        installed = b.file(f"/usr/local/bin/{name}")
        assert installed.read_bytes() == binary.read_bytes()
        assert installed.stat().st_mode & 0o777 == 0o755
    assert b.file("/etc/bastion/bastion.toml").read_text() == config
    assert b.file("/etc/bastion/bastion.toml").stat().st_mode & 0o777 == 0o600
    assert b.file(ud["audit_dir"]).is_dir()
    # Fetched the way the URL says, with the instance's region for S3.
    for url in (ud["binary_url"], ud["worker_binary_url"]):
        if url.startswith("s3://"):
            assert f"aws --region eu-west-1 s3 cp --only-show-errors {url} " in "\n".join(b.calls)
        else:
            assert f"curl {url}" in b.calls
    unit = b.file("/etc/systemd/system/bastion.service").read_text()
    assert "ExecStart=/usr/local/bin/bastion serve --config /etc/bastion/bastion.toml" in unit
    assert "KillMode=mixed" in unit and "Environment=AWS_REGION=eu-west-1" in unit
    assert f"TimeoutStopSec={ud['stop_timeout_seconds']}" in unit
    assert ud["stop_timeout_seconds"] > ud["shutdown_grace_seconds"] + ud["ship_grace_seconds"]
    # The AMI's sshd left the service port before the bastion started, which then served.
    start = b.calls.index("systemctl enable --now bastion.service")
    if ud["host_sshd"] == "disabled":
        off = b.calls.index("systemctl disable --now sshd.service")
        assert off < start and "systemctl mask sshd.service" in b.calls[off:start], str(b)
    else:
        restart = b.calls.index("systemctl restart sshd.service")
        assert b.calls.index("sshd -t") < restart < start, str(b)
        assert b.file("/etc/ssh/sshd_config.d/00-bastion-host-port.conf").read_text().endswith(
            f"\nPort {ud['host_sshd_port']}\n")
    assert f"curl http://127.0.0.1:{ud['health_port']}/livez" in b.calls[start:], str(b)
    assert "systemctl enable --now bastion-drain-watcher.service" in b.calls
    envfile = b.file("/etc/bastion/drain-watcher.env").read_text().splitlines()
    assert envfile == ["AWS_REGION=eu-west-1", f"ASG_NAME={ud['asg_name']}",
                       f"LIFECYCLE_HOOK={ud['lifecycle_hook_name']}", f"HEALTH_PORT={ud['health_port']}",
                       "BASTION_UNIT=bastion.service"]
    # The host key: looked for in SSM (the stand-in says it exists), never generated here.
    calls = "\n".join(b.calls)
    assert ("ssm get-parameter --name /bastion/host_ed25519_key" in calls) is ud["host_key_generate"], calls
    assert "put-parameter" not in calls
    # No call reached anything but the stand-ins' IMDS and the artifact.
    assert not [c for c in b.calls if c.startswith("docker")]


def test_boot_refuses_a_binary_whose_checksum_differs(tmp_path):
    evil = tmp_path / "evil"
    evil.write_bytes(b"#!/bin/sh\necho pwned\n")
    b, cfg, ud = boot_case(tmp_path, "binary over https", evil)
    assert b.result.returncode != 0, str(b)
    assert "SHA-256 mismatch" in b.result.stderr and SHA_OF_NOTHING in b.result.stderr, str(b)
    assert sha256(evil) in b.result.stderr and "refusing to install it" in b.result.stderr
    assert not list(b.upper.glob("usr/local/bin/bastion*"))
    assert not b.file("/etc/systemd/system/bastion.service").exists()
    assert not [c for c in b.calls if c.startswith("systemctl")], str(b)


@pytest.mark.parametrize("case", ["docker from ECR, any IAM user, extra user data",
                                  "docker from a registry, proxy protocol, no forwarding"])
def test_boot_runs_the_container(tmp_path, case):
    b, cfg, ud = boot_case(tmp_path, case, tmp_path / "nothing")
    assert b.result.returncode == 0, str(b)
    calls = "\n".join(b.calls)
    if ud["ecr_registry"]:
        assert f"aws --region eu-west-1 ecr get-login-password" in calls
        assert f"docker login --username AWS --password-stdin {ud['ecr_registry']}" in calls
    else:
        assert "docker login" not in calls
    assert f"docker pull --quiet {ud['docker_image']}" in calls
    assert "systemctl enable --now docker.service" in b.calls
    wrapper = b.file("/usr/local/libexec/bastion-container")
    r = shellcheck(wrapper)
    assert r.returncode == 0, r.stdout
    text = wrapper.read_text()
    for flag in ("--cap-add SYS_ADMIN", "--security-opt seccomp=unconfined", "--security-opt apparmor=unconfined",
                 "--network host", "--volume /etc/bastion:/etc/bastion:ro",
                 f"--env BASTION_LISTEN=0.0.0.0:{ud['service_port']}", "--env AWS_REGION=eu-west-1"):
        assert flag in text, f"{flag!r} not in {text}"
    assert text.rstrip().endswith(f"{ud['docker_image']} serve --config /etc/bastion/bastion.toml")
    unit = b.file("/etc/systemd/system/bastion.service").read_text()
    assert "ExecStart=/usr/local/libexec/bastion-container" in unit
    assert f"stop --time {ud['shutdown_grace_seconds'] + ud['ship_grace_seconds'] + 15} bastion" in unit
    assert f"TimeoutStopSec={ud['stop_timeout_seconds']}" in unit
    # extra_user_data ran last, after the services were started.
    assert b.file("/etc/bastion/extra-ran").read_text() == "extra user data ran\n"


def test_boot_without_docker_says_so(tmp_path):
    cfg, ud = RENDER_CASES["docker from a registry, proxy protocol, no forwarding"]
    script, _ = render(tmp_path, cfg, ud)
    # The same script, where `command -v docker` finds nothing.
    script = script.replace("command -v docker >/dev/null ||", "false ||", 1)
    b = Boot(tmp_path, script, tmp_path / "nothing")
    assert b.result.returncode != 0
    assert "this AMI has no Docker" in b.result.stderr, str(b)


def booted_watcher(tmp_path):
    """A boot of the "binary over https" case: the Boot, the drain watcher it installed, and
    the environment its unit gives it; the call log starts empty."""
    binary = real_binary()
    cfg, ud = RENDER_CASES["binary over https"]
    script, _ = render(tmp_path, cfg, {**ud, "binary_sha256": sha256(binary), "worker_binary_sha256": sha256(binary)})
    b = Boot(tmp_path, script, binary)
    assert b.result.returncode == 0, str(b)
    watcher = b.file("/usr/local/libexec/bastion-drain-watcher")
    assert watcher.stat().st_mode & 0o777 == 0o755
    unit = b.file("/etc/systemd/system/bastion-drain-watcher.service").read_text()
    assert "EnvironmentFile=/etc/bastion/drain-watcher.env" in unit
    env = dict(line.split("=", 1) for line in b.file("/etc/bastion/drain-watcher.env").read_text().splitlines())
    b.log.write_text("")
    return b, watcher, env


def test_drain_watcher_stops_the_bastion_then_completes_the_hook(tmp_path):
    b, watcher, env = booted_watcher(tmp_path)
    # In service for one poll, then Terminated.
    r = run([str(watcher)], env={**b.env, **env, "STUB_TERMINATED_AFTER": "2"}, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = b.log.read_text().splitlines()
    polls = [c for c in calls if c.endswith("/target-lifecycle-state")]
    assert len(polls) == 2, calls
    stop = calls.index("systemctl stop bastion.service")
    complete = next(i for i, c in enumerate(calls) if "complete-lifecycle-action" in c)
    assert stop < complete, calls
    assert calls[complete] == (
        "aws --region eu-west-1 autoscaling complete-lifecycle-action --auto-scaling-group-name bastion "
        "--lifecycle-hook-name bastion-drain --instance-id i-0123456789abcdef0 --lifecycle-action-result CONTINUE")
    # A live bastion is never reported.
    assert not [c for c in calls if "set-instance-health" in c], calls


def test_drain_watcher_reports_a_dead_bastion_once_and_never_a_busy_one(tmp_path):
    """Liveness goes to the Auto Scaling group (it replaces the instance); readiness never does."""
    b, watcher, env = booted_watcher(tmp_path)
    # /livez fails at every poll; Terminated after 10 polls.
    r = run([str(watcher)], env={**b.env, **env, "STUB_TERMINATED_AFTER": "10", "STUB_LIVEZ_FAIL": "1",
                                 "POLL_SECONDS": "0.1"}, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = b.log.read_text().splitlines()
    reports = [i for i, c in enumerate(calls) if "set-instance-health" in c]
    assert len(reports) == 1, calls
    assert calls[reports[0]] == (
        "aws --region eu-west-1 autoscaling set-instance-health --instance-id i-0123456789abcdef0 "
        "--health-status Unhealthy --no-should-respect-grace-period")
    livez = [i for i, c in enumerate(calls) if c.endswith("/livez")]
    assert len([i for i in livez if i < reports[0]]) == 6, "six failures in a row, not fewer"
    assert "/livez has failed 6 times in a row" in r.stderr


# --------------------------------------------------------------------------------------------
# EC2 Instance Connect: eic.tf (the instance role's push statements, the users' policy) is
# locals over the variables and four of main.tf's locals, so it is evaluated with
# variables.tf alone and stand-ins for those four (no provider is needed).

EIC_STAND_INS = """\
locals {
  partition  = "aws"
  region     = %s
  account_id = %s
  asg_name   = var.name
}
"""


def eic_locals(tmp_path, region="eu-west-1", account_id="123456789012", **changes):
    """eic.tf's locals for GOOD + changes (None values are passed as null)."""
    work = tmp_path / "eic"
    work.mkdir(parents=True)
    for f in ("variables.tf", "eic.tf"):
        shutil.copy(MODULE / f, work / f)
    (work / "stand-ins.tf").write_text(EIC_STAND_INS % (json.dumps(region), json.dumps(account_id)))
    (work / "case.tfvars.json").write_text(json.dumps({**GOOD, **changes}))
    expr = ("base64encode(jsonencode({ push = local.eic_push_policy, user = local.eic_user_policy, "
            "os_users = local.eic_push_os_users }))")
    r = run([tool("terraform"), "console", "-var-file=case.tfvars.json"], input=expr + "\n", cwd=work,
            env=tf_env(tmp_path))
    assert r.returncode == 0, f"terraform console failed:\n{r.stderr}"
    out = r.stdout.strip()
    assert out.startswith('"') and out.endswith('"'), out[:300]
    return json.loads(base64.b64decode(out[1:-1]))


def normalized(policy):
    """A policy with every Action, Resource and condition value as a sorted list."""
    def as_list(v):
        return sorted(v) if isinstance(v, list) else [v]
    statements = []
    for st in policy["Statement"]:
        st = dict(st)
        st["Action"], st["Resource"] = as_list(st["Action"]), as_list(st["Resource"])
        if "Condition" in st:
            st["Condition"] = {op: {k: as_list(v) for k, v in keys.items()} for op, keys in st["Condition"].items()}
        statements.append(st)
    return {**policy, "Statement": statements}


def test_eic_stand_ins_are_what_main_tf_defines():
    main = (MODULE / "main.tf").read_text()
    for name, value in (("partition", "data.aws_partition.current.partition"),
                        ("region", "data.aws_region.current.name"),
                        ("account_id", "data.aws_caller_identity.current.account_id"),
                        ("asg_name", "var.name")):
        assert re.search(rf"^\s*{name}\s*=\s*{re.escape(value)}\s*$", main, re.M), f"main.tf: {name} = {value}?"
    # eic.tf needs nothing else of the module (it is evaluated without it).
    used = set(re.findall(r"\blocal\.(\w+)", (MODULE / "eic.tf").read_text()))
    defined = set(re.findall(r"^  (\w+)\s*=", (MODULE / "eic.tf").read_text(), re.M))
    assert used - defined <= {"partition", "region", "account_id", "asg_name"}, used - defined


def test_no_eic_push_statements_without_eic_push(tmp_path):
    for changes in ({}, {"eic_auth": True, "eic_os_users": ["ubuntu"]}):
        got = eic_locals(tmp_path / str(len(changes)), **changes)
        assert got["push"] == {"Version": "2012-10-17", "Statement": []}


def test_eic_push_statements(tmp_path):
    rules = [{"principals": ["group:dev"], "to": ["tag:env=dev:22"], "os_users": ["ubuntu", "ec2-user"]},
             {"principals": ["group:ops"], "to": ["i-0abc*:22"], "os_users": ["admin"]},
             {"principals": ["*"], "to": ["10.0.0.0/8:22"]}]
    got = eic_locals(tmp_path / "tags", eic_push=True, eic_os_users=["ec2-user"], allow_rules=rules,
                     eic_push_instance_tags={"env": "dev", "aws:cloudformation:stack-name": "web"})
    find, push = got["push"]["Statement"]
    assert find == {"Sid": "FindTheInstanceAskedFor", "Effect": "Allow", "Action": ["ec2:DescribeInstances"],
                    "Resource": ["*"]}
    assert push == {
        "Sid": "PushTheUsersKeyToIt", "Effect": "Allow",
        "Action": ["ec2-instance-connect:SendSSHPublicKey"],
        "Resource": ["arn:aws:ec2:eu-west-1:123456789012:instance/*"],
        # Every OS user the bastion may push for, once: [eic] os_users and the rules' own.
        "Condition": {"StringEquals": {"ec2:osuser": ["admin", "ec2-user", "ubuntu"],
                                       "aws:ResourceTag/env": ["dev"],
                                       "aws:ResourceTag/aws:cloudformation:stack-name": ["web"]}},
    }
    assert got["os_users"] == ["admin", "ec2-user", "ubuntu"]
    # No tags: any instance of the account and region, still only for those OS users.
    got = eic_locals(tmp_path / "any", eic_push=True, eic_os_users=["ec2-user", "ubuntu"])
    _, push = got["push"]["Statement"]
    assert push["Condition"] == {"StringEquals": {"ec2:osuser": ["ec2-user", "ubuntu"]}}
    assert push["Resource"] == ["arn:aws:ec2:eu-west-1:123456789012:instance/*"]


def test_eic_push_policy_is_the_documented_one(tmp_path):
    """docs/iam/eic-push-policy.json is what the module grants for its example: the
    default OS user, one rule's ubuntu and instances tagged env=dev."""
    doc = json.loads((ROOT / "docs/iam/eic-push-policy.json").read_text())
    got = eic_locals(tmp_path, region="REGION", account_id="ACCOUNT_ID", eic_push=True,
                     allow_rules=[{"principals": ["group:dev"], "to": ["tag:env=dev:22"], "os_users": ["ubuntu"]}],
                     eic_push_instance_tags={"env": "dev"})
    assert normalized(got["push"]) == normalized(doc)
    actions = lambda p: sorted(a for st in normalized(p)["Statement"] for a in st["Action"])
    assert actions(got["push"]) == actions(doc) == ["ec2-instance-connect:SendSSHPublicKey", "ec2:DescribeInstances"]


def test_eic_user_policy_is_the_documented_one(tmp_path):
    doc = json.loads((ROOT / "docs/iam/eic-user-policy.json").read_text())
    got = eic_locals(tmp_path / "default", region="REGION", account_id="ACCOUNT_ID", eic_auth=True)
    assert normalized(got["user"]) == normalized(doc)
    # The group's own instances (the tag Auto Scaling sets), for the caller's own login by default ...
    cond = got["user"]["Statement"][0]["Condition"]["StringEquals"]
    assert cond == {"aws:ResourceTag/aws:autoscaling:groupName": "bastion", "ec2:osuser": "${aws:username}"}
    # ... or another login, or none at all.
    got = eic_locals(tmp_path / "named", name="jump", eic_auth=True, eic_user_policy_os_user="ec2-user")
    assert got["user"]["Statement"][0]["Condition"]["StringEquals"] == {
        "aws:ResourceTag/aws:autoscaling:groupName": "jump", "ec2:osuser": "ec2-user"}
    assert got["user"]["Statement"][0]["Resource"] == "arn:aws:ec2:eu-west-1:123456789012:instance/*"
    got = eic_locals(tmp_path / "any", eic_auth=True, eic_user_policy_os_user=None)
    assert got["user"]["Statement"][0]["Condition"]["StringEquals"] == {
        "aws:ResourceTag/aws:autoscaling:groupName": "bastion"}


def test_the_role_policy_and_the_outputs_use_eic_tf():
    """iam.tf's policy document takes eic_push_policy's statements whole (conditions
    included); the outputs show the users' policy only with eic_auth."""
    iam = (MODULE / "iam.tf").read_text()
    doc = re.search(r'^data "aws_iam_policy_document" "this" \{\n(.*?)^\}', iam, re.S | re.M)
    assert doc, "iam.tf: no policy document for the instance role"
    block = re.search(r'dynamic "statement" \{\n\s*for_each = local\.eic_push_policy\.Statement\n(.*?)\n  \}\n',
                      doc.group(1), re.S)
    assert block, "the instance role's policy does not take local.eic_push_policy.Statement"
    for wiring in ("sid       = statement.value.Sid", "actions   = statement.value.Action",
                   "resources = statement.value.Resource", 'dynamic "condition"',
                   "try(statement.value.Condition, {})", "test     = condition.value.test",
                   "variable = condition.value.variable", "values   = condition.value.values"):
        assert wiring in block.group(1), wiring
    outputs = (MODULE / "outputs.tf").read_text()
    assert "var.eic_auth ? jsonencode(local.eic_user_policy) : null" in outputs
    assert "var.eic_push ? local.eic_push_os_users : null" in outputs


def test_eic_config_only_when_asked_for(tmp_path):
    """The [[auth]] type = "eic" source and the [eic] table (without bastion check-config)."""
    ud = user_data_vars(binary_url="https://example.com/bastion", binary_sha256=SHA_OF_NOTHING)
    for d in ("off", "on", "auth", "push"):
        (tmp_path / d).mkdir()
    _, off = render(tmp_path / "off", config_vars(), ud)
    t = tomllib.loads(off)
    assert [a["type"] for a in t["auth"]] == ["iam"] and "eic" not in t
    assert all("os_users" not in r for r in t["allow"])
    rules = [{"principals": ["group:dev"], "to": ["tag:env=dev:22"], "os_users": ["ubuntu", "ec2-user"]},
             {"principals": ["*"], "to": ["i-0abc*:22"]}]
    _, on = render(tmp_path / "on", config_vars(eic_auth=True, eic_push=True, eic_os_users=["admin"], allow_rules=rules), ud)
    t = tomllib.loads(on)
    assert t["auth"] == [{"type": "iam", "groups": ["bastion-users"]}, {"type": "eic"}]
    assert t["eic"] == {"push": True, "os_users": ["admin"]}
    assert t["allow"] == rules
    # Each on its own.
    _, auth_only = render(tmp_path / "auth", config_vars(eic_auth=True), ud)
    t = tomllib.loads(auth_only)
    assert [a["type"] for a in t["auth"]] == ["iam", "eic"] and "eic" not in t
    _, push_only = render(tmp_path / "push", config_vars(eic_push=True), ud)
    t = tomllib.loads(push_only)
    assert [a["type"] for a in t["auth"]] == ["iam"] and t["eic"] == {"push": True, "os_users": ["ec2-user"]}


def test_one_imds_hop_is_enough_for_the_container():
    """eic_auth reads IMDS from the bastion's process; in the container too, since it
    shares the instance's network stack: the hop limit stays 1 in every mode."""
    asg = (MODULE / "asg.tf").read_text()
    assert re.search(r"^\s*http_put_response_hop_limit\s*=\s*1\s*$", asg, re.M)
    assert re.search(r"^\s*http_tokens\s*=\s*\"required\"\s*$", asg, re.M)
    assert re.search(r"^\s*--network host\s*$", USER_DATA.read_text(), re.M)
