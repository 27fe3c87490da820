"""pytest fixtures for the end-to-end suites.

`env` gives each test its own world (harness.py: temp dir, keys, targets,
bastions, namespaces). The fixtures below expose the same world through the
harness API described in tests/README.md (fixtures.py). Teardown (kill every
process group, delete namespaces, unmount) runs whether the test passed or not.

A test that cannot run fails: a missing bastion binary fails each test that
starts one (the OpenSSH-only harness self-tests still run).
"""

import os

import pytest

from aws import FaultProxy, Iam, MotoServer
from eic import EicService
from fixtures import Bastion, Netns, SshConfigs, run_client as _run_client
from harness import Env

# The bastion reads every BASTION_* variable as configuration and rejects
# unknown keys, so the harness's own BASTION_BIN (already read by harness.py)
# and anything else stray must not reach the processes the tests start.
# BASTION_LOG (the log filter) is kept for debugging runs.
for _name in [n for n in os.environ if n.startswith("BASTION_") and n != "BASTION_LOG"]:
    del os.environ[_name]

# Likewise AWS_* (a host's AWS_PROFILE, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL…) and MOTO_*
# (MOTO_ACCOUNT_ID would pin every moto request to one account): processes that talk to AWS
# get exactly aws.aws_env(url), merged over an environment without them.
for _name in [n for n in os.environ if n.startswith(("AWS_", "MOTO_"))]:
    del os.environ[_name]


def pytest_sessionstart(session):
    if os.geteuid() != 0:
        raise pytest.UsageError("the end-to-end suites must run as root (namespaces, mounts, sshd)")


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.p.close()


@pytest.fixture
def keys(env):
    """alice (ed25519), bob (rsa 3072), mallory (ed25519, authorized nowhere),
    bastion_host, target_host: `.path(name)`, `.pub(name)`, `.fp[name]` (SHA256:…)."""
    return env.keys


@pytest.fixture
def sshd_target(env):
    """Factory: sshd_target(host="127.0.0.1", port=None, netns=None) -> a started real sshd
    (`.host`, `.port`, `.netns`, `.proc`) that lets alice and bob in as root."""
    def start(host="127.0.0.1", port=None, netns=None):
        return env.target(host=host, port=port, netns=netns)
    return start


@pytest.fixture
def ssh_configs(env):
    return SshConfigs(env.tmp, env.keys)


@pytest.fixture
def ssh_config(ssh_configs):
    """The shared client options (no identity), for `ssh -F`."""
    return ssh_configs.base


@pytest.fixture
def client(ssh_configs):
    """Factory: client("alice") -> a client config whose IdentityFile is alice's key
    (use with -F: unlike -i it also applies to the -J connection)."""
    return ssh_configs.for_key


@pytest.fixture
def bastion(env):
    """Factory: bastion(config=None, users=None, to=None, host=, port=, netns=, audit_dir=,
    args=(), env=, wait=True) -> a running `bastion serve` (see fixtures.Bastion)."""
    def start(config=None, **kw):
        return Bastion(env.p, env.tmp, env.keys, config, **kw)
    return start


@pytest.fixture
def netns(env):
    """netns("c") -> a new namespace bt-<random>-c with lo up; netns.veth(a, "10.0.0.1/30", b, "10.0.0.2/30")."""
    return Netns(env.p)


@pytest.fixture
def run_client():
    """run_client(cmd, timeout=60, netns=None) -> (rc, stdout bytes, stderr text)."""
    return _run_client


# --------------------------------------------------------------------------
# AWS (moto): see tests/AWS_HARNESS.md


@pytest.fixture
def moto(env):
    """A real moto_server on 127.0.0.1 for this test (`.url`, `.reset()`, `.log_path`)."""
    return MotoServer(env.p, env.tmp / "moto")


@pytest.fixture
def iam_proxy(env, moto):
    """A FaultProxy in front of `moto` (`.url`, `.set_mode(...)`, `.count(action)`, ...)."""
    proxy = FaultProxy(moto.url, log_path=env.tmp / "moto" / "proxy.log")
    env.p.cleanups.append(proxy.close)
    return proxy


@pytest.fixture
def iam(moto):
    """An `aws.Iam` in moto's default account 123456789012, talking to moto directly
    (not through `iam_proxy`, so setup calls are neither counted nor faulted)."""
    return Iam(moto.url)


# --------------------------------------------------------------------------
# EC2 and EC2 Instance Connect: see tests/EIC_EMULATOR.md


def _boto(kind: str, url: str, validate: bool = True):
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client(
        kind, endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
        # parameter_validation=False: botocore would refuse too-short values itself, and the point
        # is to see what the (emulated) service says to a client that does not validate (the Rust SDK).
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, parameter_validation=validate,
                      connect_timeout=5, read_timeout=30))


@pytest.fixture
def ec2(moto):
    """A boto3 EC2 client talking to moto directly (setup calls)."""
    return _boto("ec2", moto.url)


@pytest.fixture
def eic(env, moto):
    """The EC2 Instance Connect emulator (API + one IMDS per instance) on a free port, resolving
    instances in `moto`, closed at teardown."""
    svc = EicService(moto.url, env.tmp / "eic")
    env.p.cleanups.append(svc.close)
    return svc


@pytest.fixture
def eic_client(eic):
    """A real `ec2-instance-connect` client (boto3, as `aws ec2-instance-connect`) for the
    emulator, without client-side validation."""
    return _boto("ec2-instance-connect", eic.url, validate=False)
