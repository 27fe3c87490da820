"""Host keys from SSM Parameter Store (moto): every instance presents the same key."""

import boto3

from aws import aws_env
from fixtures import run_client


def ssm(url):
    return boto3.client("ssm", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def scan(port):
    r = run_client(["ssh-keyscan", "-t", "ed25519", "-p", port, "127.0.0.1"], timeout=30)
    keys = [line.split(None, 1)[1] for line in r.out.splitlines() if line and not line.startswith("#")]
    assert len(keys) == 1, r
    return keys[0].strip()


def test_two_bastions_share_the_ssm_host_key(env, bastion, moto, client, sshd_target):
    ssm(moto.url).put_parameter(Name="/bastion/host_ed25519_key", Type="SecureString",
                                Value=env.keys.path("bastion_host").read_text())
    config = {"host_keys": ["ssm:/bastion/host_ed25519_key"]}
    a = bastion(config, env=aws_env(moto.url))
    b = bastion(config, env=aws_env(moto.url))
    want = " ".join(env.keys.pub("bastion_host").split()[:2])
    assert scan(a.port) == want and scan(b.port) == want
    # And it is a working host key: a login through each.
    target = sshd_target()
    for bast in (a, b):
        r = run_client(["ssh", "-F", client("alice"), "-J", f"alice@127.0.0.1:{bast.port}", "-p", target.port,
                        "root@127.0.0.1", "echo ok"])
        assert r.rc == 0 and r.stdout == b"ok\n", r.stderr
    # The key is never written to the logs.
    secret_line = env.keys.path("bastion_host").read_text().splitlines()[1]
    for bast in (a, b):
        assert secret_line not in bast.stderr_text() + bast.stdout_text()


def test_a_missing_parameter_stops_the_start_with_its_name(env, bastion, moto):
    b = bastion({"host_keys": ["ssm:/bastion/nope"]}, env=aws_env(moto.url), wait=False)
    assert b.wait(30) == 64
    err = b.stderr_text()
    assert "host_keys[0]" in err and "ssm:/bastion/nope" in err and "ParameterNotFound" in err, err
