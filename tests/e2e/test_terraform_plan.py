"""The Terraform module planned as a whole: `terraform test` runs the plan tests in
terraform/tests/*.tftest.hcl against `mock_provider "aws"`.

A mocked provider still needs the real provider's schema, so `terraform init`
installs hashicorp/aws, here from the local plugin mirror (TF_PLUGIN_MIRROR,
default /opt/tf-plugins: registry.terraform.io/hashicorp/aws/<version>/<os_arch>/,
which the machine image carries) and never from the network; no AWS credentials
and no AWS call are involved (the mocks answer every data source, see
terraform/tests/aws/mock.tfmock.hcl). The module is copied to a temporary
directory first, so nothing is written into the checkout.

Also checked: the tests fail when the module breaks what they check (a mutated
copy), so a green run means something; the examples, which source the module
by relative path, pass `terraform validate`; and upgrading from the previous
version (whose state holds the host key parameter) forgets that parameter
instead of destroying it.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "terraform"
MIRROR = Path(os.environ.get("TF_PLUGIN_MIRROR", "/opt/tf-plugins"))


def terraform():
    path = shutil.which("terraform")
    assert path, "terraform is not on PATH (tests/run checks it)"
    return path


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 900)
    return subprocess.run(cmd, **kw)


def expected_runs():
    """Every `run` block of every test file: all of them must pass."""
    return sum(len(re.findall(r'^run "[^"]+" \{', f.read_text(), re.M)) for f in MODULE.glob("tests/*.tftest.hcl"))


def mirror_env(base):
    """Environment for terraform: providers from the plugin mirror, never the network."""
    assert (MIRROR / "registry.terraform.io/hashicorp/aws").is_dir(), \
        f"{MIRROR} holds no hashicorp/aws provider (set TF_PLUGIN_MIRROR to a filesystem mirror that does)"
    cli = base / "terraformrc"
    cli.write_text(
        'provider_installation {\n'
        f'  filesystem_mirror {{\n    path    = "{MIRROR}"\n    include = ["registry.terraform.io/*/*"]\n  }}\n'
        '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n'
        '}\n')
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(cli), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    return env


COPY_IGNORE = shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of the module, initialised against the plugin mirror only."""
    base = tmp_path_factory.mktemp("tfplan")
    env = mirror_env(base)
    work = base / "terraform"
    shutil.copytree(MODULE, work, ignore=COPY_IGNORE)
    r = run([terraform(), "init", "-input=false", "-no-color", "-backend=false"], cwd=work, env=env)
    assert r.returncode == 0, f"terraform init (mirror {MIRROR}) failed:\n{r.stdout}{r.stderr}"
    return work, env


def test_plan_tests_pass(workdir):
    work, env = workdir
    n = expected_runs()
    assert n >= 30, f"only {n} run blocks in terraform/tests"
    r = run([terraform(), "test", "-no-color"], cwd=work, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"terraform test failed (exit {r.returncode}):\n{out[-20000:]}"
    m = re.search(r"^Success! (\d+) passed, (\d+) failed\.$", r.stdout, re.M)
    assert m, f"no summary line:\n{out[-3000:]}"
    assert (int(m.group(1)), int(m.group(2))) == (n, 0), f"{m.group(0)} (expected {n} passed):\n{out[-5000:]}"
    # Every test file ran, none was skipped.
    for f in sorted(MODULE.glob("tests/*.tftest.hcl")):
        assert f"tests/{f.name}... pass" in r.stdout, f"{f.name} did not pass:\n{r.stdout}"
    assert "... skip" not in r.stdout, r.stdout


MUTATIONS = [
    # (file, what, replaced by, test file, run block that must fail)
    ("asg.tf", 'health_check_type         = "EC2"', 'health_check_type         = "ELB"', "defaults", "defaults"),
    ("lb.tf", 'path                = "/readyz"', 'path                = "/healthz"', "defaults", "defaults"),
    ("iam.tf", 'values   = ["false"]', 'values   = ["true"]', "audit", "an_existing_bucket_gets_only_conditional_puts"),
    ("main.tf", "var.shutdown_grace_seconds + var.audit_ship_grace_seconds + 120",
     "var.shutdown_grace_seconds + 120", "defaults", "ship_grace_reaches_the_stop_timeout_and_the_heartbeat"),
    ("security_groups.tf", "from_port         = var.host_sshd_port", "from_port         = var.service_port",
     "host_sshd", "port_adds_one_rule_from_the_admins"),
    ("iam.tf", '"arn:${local.partition}:logs:', '"arn:aws:logs:', "iam", "another_partition"),
]


@pytest.mark.parametrize("file,old,new,test,block", MUTATIONS, ids=[f"{m[0]}:{m[4]}" for m in MUTATIONS])
def test_plan_tests_catch_a_broken_module(workdir, tmp_path, file, old, new, test, block):
    """The same tests on a copy of the module with one thing broken: that run block fails."""
    work, env = workdir
    broken = tmp_path / "terraform"
    shutil.copytree(work, broken, symlinks=True)
    text = (broken / file).read_text()
    assert text.count(old) == 1, f"{file}: {old!r} is not there once (the mutation is stale)"
    (broken / file).write_text(text.replace(old, new))
    r = run([terraform(), "test", "-no-color", f"-filter=tests/{test}.tftest.hcl"], cwd=broken, env=env)
    assert r.returncode != 0, f"the tests still pass with {file} broken:\n{r.stdout}"
    assert f'run "{block}"... fail' in r.stdout, f"{block} did not fail:\n{r.stdout}{r.stderr[-3000:]}"


@pytest.mark.parametrize("example", sorted(p.parent.name for p in (ROOT / "examples").glob("*/main.tf")))
def test_example_validates(tmp_path, example):
    """Each example (with the module beside it, as ../../terraform) inits and validates."""
    env = mirror_env(tmp_path)
    shutil.copytree(MODULE, tmp_path / "terraform", ignore=COPY_IGNORE)
    shutil.copytree(ROOT / "examples" / example, tmp_path / "examples" / example, ignore=COPY_IGNORE)
    work = tmp_path / "examples" / example
    r = run([terraform(), "init", "-input=false", "-no-color", "-backend=false"], cwd=work, env=env)
    assert r.returncode == 0, f"terraform init in examples/{example}:\n{r.stdout}{r.stderr}"
    r = run([terraform(), "validate", "-no-color"], cwd=work, env=env)
    assert r.returncode == 0 and "The configuration is valid" in r.stdout, \
        f"terraform validate in examples/{example}:\n{r.stdout}{r.stderr}"


PROVIDER_WITHOUT_AWS = """\
provider "aws" {
  region                      = "eu-west-1"
  access_key                  = "not-used"
  secret_key                  = "not-used"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
}
"""


def test_upgrade_forgets_the_old_host_key_parameter(tmp_path):
    """The previous version kept the host key in aws_ssm_parameter.host_key; this one's
    `removed` block (host_key.tf) makes Terraform forget it, not destroy it. Planned
    with the real provider (no AWS call: nothing to refresh) on a state holding it."""
    env = mirror_env(tmp_path)
    host_key = (MODULE / "host_key.tf").read_text()
    removed = re.search(r"^removed \{\n  from = aws_ssm_parameter\.host_key\n.*?^\}\n", host_key, re.S | re.M)
    assert removed and "destroy = false" in removed.group(0), "host_key.tf: no removed block keeping the parameter"
    work = tmp_path / "root"
    work.mkdir()
    (work / "main.tf").write_text(
        'terraform {\n  required_providers {\n    aws = { source = "hashicorp/aws" }\n  }\n}\n'
        + PROVIDER_WITHOUT_AWS + removed.group(0))
    name = "/bastion/host_ed25519_key"
    (work / "terraform.tfstate").write_text(json.dumps({
        "version": 4, "terraform_version": "1.9.0", "serial": 1,
        "lineage": "8a1c4a52-0000-4000-8000-000000000001", "outputs": {},
        "resources": [{
            "mode": "managed", "type": "aws_ssm_parameter", "name": "host_key",
            "provider": 'provider["registry.terraform.io/hashicorp/aws"]',
            "instances": [{"index_key": 0, "schema_version": 0, "sensitive_attributes": [], "attributes": {
                "id": name, "name": name, "type": "SecureString", "value": "not the key",
                "arn": f"arn:aws:ssm:eu-west-1:123456789012:parameter{name}"}}],
        }],
    }))
    r = run([terraform(), "init", "-input=false", "-no-color"], cwd=work, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([terraform(), "plan", "-refresh=false", "-input=false", "-no-color"], cwd=work, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "Plan: 0 to add, 0 to change, 0 to destroy." in out, r.stdout
    assert "will no longer be managed by Terraform" in out and "aws_ssm_parameter.host_key[0]" in out, r.stdout
    assert "it will not delete them" in out, r.stdout
