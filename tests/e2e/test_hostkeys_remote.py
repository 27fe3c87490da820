"""Host keys kept in AWS (SSM Parameter Store, Secrets Manager; moto): every instance
presents the same key. And host certificates, so users trust a CA instead of a key."""

import subprocess

import boto3

from aws import aws_env
from fixtures import run_client
from harness import BASTION


def ssm(url):
    return boto3.client("ssm", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def secretsmanager(url):
    return boto3.client("secretsmanager", endpoint_url=url, region_name="us-east-1",
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


def test_two_bastions_share_a_secrets_manager_host_key(env, bastion, moto, client, sshd_target):
    arn = secretsmanager(moto.url).create_secret(
        Name="bastion/host_ed25519_key", SecretString=env.keys.path("bastion_host").read_text())["ARN"]
    # By name and by ARN: both are how operators name secrets.
    a = bastion({"host_keys": ["secretsmanager:bastion/host_ed25519_key"]}, env=aws_env(moto.url))
    b = bastion({"host_keys": [f"secretsmanager:{arn}"]}, env=aws_env(moto.url))
    want = " ".join(env.keys.pub("bastion_host").split()[:2])
    assert scan(a.port) == want and scan(b.port) == want
    target = sshd_target()
    r = run_client(["ssh", "-F", client("alice"), "-J", f"alice@127.0.0.1:{b.port}", "-p", target.port,
                    "root@127.0.0.1", "echo ok"])
    assert r.rc == 0 and r.stdout == b"ok\n", r.stderr
    secret_line = env.keys.path("bastion_host").read_text().splitlines()[1]
    for bast in (a, b):
        assert secret_line not in bast.stderr_text() + bast.stdout_text()


def test_a_missing_secret_stops_the_start_with_its_name(env, bastion, moto):
    b = bastion({"host_keys": ["secretsmanager:bastion/nope"]}, env=aws_env(moto.url), wait=False)
    assert b.wait(30) == 64
    err = b.stderr_text()
    assert "host_keys[0]" in err and "secretsmanager:bastion/nope" in err and "ResourceNotFound" in err, err


# --------------------------------------------------------------------------
# host certificates


def sign_host_key(env, name: str, principals: str, validity: str = "+1d", key: str = "bastion_host"):
    """ssh-keygen -h: a host certificate for `key`, signed by a CA made for this test."""
    ca = env.tmp / "host_ca"
    if not ca.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "host-ca", "-f", str(ca)], check=True)
    pub = env.tmp / f"{name}.pub"
    pub.write_text(env.keys.pub(key) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-h", "-I", name, "-n", principals, "-V", validity, str(pub)],
                   check=True, capture_output=True)
    return env.tmp / f"{name}-cert.pub", (env.tmp / "host_ca.pub").read_text().strip()


def strict_client(env, ca_pub: str):
    """Alice's client, trusting only the CA for the bastion (the target's key is not checked)."""
    known = env.tmp / "known_hosts_ca"
    known.write_text(f"@cert-authority 127.0.0.1 {ca_pub}\n")
    cfg = env.tmp / "ssh_config_ca"
    cfg.write_text(f"""Host bastion-under-test
  HostName 127.0.0.1
  StrictHostKeyChecking yes
  UserKnownHostsFile {known}
  GlobalKnownHostsFile /dev/null
  HostKeyAlias 127.0.0.1
  CheckHostIP no
Host *
  IdentityFile {env.keys.path("alice")}
  IdentitiesOnly yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 10
Host 127.0.0.2
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
""")
    return cfg


def test_a_host_certificate_lets_users_trust_a_ca(env, bastion, moto, sshd_target):
    cert, ca_pub = sign_host_key(env, "bastion", "127.0.0.1,bastion.example.com")
    # The certificate may live in SSM as well (a plain String: it is public).
    ssm(moto.url).put_parameter(Name="/bastion/host_ed25519_cert", Type="String", Value=cert.read_text())
    target = sshd_target(host="127.0.0.2")
    cfg = strict_client(env, ca_pub)

    def login(port):
        return run_client(["ssh", "-F", cfg, "-J", f"alice@bastion-under-test:{port}", "-p", target.port,
                           "root@127.0.0.2", "echo ok"])

    with_cert = bastion({"host_certificates": [str(cert)]}, to=["127.0.0.2:1-65535"])
    r = login(with_cert.port)
    assert r.rc == 0 and r.stdout == b"ok\n", r.stderr
    log = with_cert.stderr_text()
    assert "by CA SHA256:" in log and "for [127.0.0.1,bastion.example.com], valid until" in log, log
    from_ssm = bastion({"host_certificates": ["ssm:/bastion/host_ed25519_cert"]}, to=["127.0.0.2:1-65535"],
                       env=aws_env(moto.url))
    r = login(from_ssm.port)
    assert r.rc == 0 and r.stdout == b"ok\n", r.stderr
    # The same key without its certificate: the client knows only the CA, so it refuses.
    plain = bastion(None, to=["127.0.0.2:1-65535"])
    r = login(plain.port)
    assert r.rc == 255 and "Host key verification failed" in r.stderr, r.stderr


def test_a_wrong_or_expired_host_certificate_stops_the_start(env, bastion):
    other, _ = sign_host_key(env, "other", "127.0.0.1", key="target_host")
    b = bastion({"host_certificates": [str(other)]}, wait=False)
    assert b.wait(30) == 64
    assert "host_certificates[0]" in b.stderr_text() and "not one of host_keys" in b.stderr_text(), b.stderr_text()

    expired, _ = sign_host_key(env, "expired", "127.0.0.1", validity="20200101:20200102")
    b = bastion({"host_certificates": [str(expired)]}, wait=False)
    assert b.wait(30) == 64
    assert "expired" in b.stderr_text(), b.stderr_text()

    pub = env.tmp / "usercert_src.pub"
    pub.write_text(env.keys.pub("bastion_host") + "\n")
    subprocess.run(["ssh-keygen", "-q", "-s", str(env.tmp / "host_ca"), "-I", "u", "-n", "alice", str(pub)],
                   check=True, capture_output=True)
    user_cert = env.tmp / "usercert_src-cert.pub"
    b = bastion({"host_certificates": [str(user_cert)]}, wait=False)
    assert b.wait(30) == 64
    assert "not a host certificate" in b.stderr_text(), b.stderr_text()
    # check-config finds the same problems without starting anything.
    r = subprocess.run([str(BASTION), "check-config", "--config", str(b.config_path)], capture_output=True, text=True)
    assert r.returncode == 64 and "not a host certificate" in r.stderr, r.stderr
