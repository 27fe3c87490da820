"""EC2 Instance Connect, both ways round, end to end (issue 4).

1. The `eic` key source: alice pushes her key to the BASTION's own instance with a real
   SendSSHPublicKey call (the emulator in eic.py, through boto3) and logs in with it; the bastion
   reads and verifies the signed records from its instance's IMDS (the emulator again), and every
   faulty chain or record, an IMDS that is down, an expired push and a login nobody pushed for are
   refused, each with its reason in the audit trail. `bastion authorized-keys --eic` is the same
   check for sshd's AuthorizedKeysCommand.
2. Onward push (`[eic] push = true`): `ssh -J alice@bastion root@i-0…` to an instance that knows
   no key of alice's. The instance is realistic (`eic_instance`): a moto instance in a VPC subnet
   10.199.N.0/24 with a private IP and tags, a network namespace holding that IP, the emulator's
   IMDS for it on the host end of the veth (as 169.254.169.254 is reachable from an instance), and
   a real sshd there whose ONLY key source is `bastion authorized-keys --eic` for `%u %f`. The
   bastion logs alice in with its file source, resolves the id with DescribeInstances (moto),
   checks the policy against the id and tags, pushes alice's key with SendSSHPublicKey, and
   connects to the private IP; alice's own client then authenticates end to end.

The harness piece is checked without the bastion by
`test_harness_eic_instance_is_reachable_in_its_namespace`. See tests/EIC_EMULATOR.md.
"""

from __future__ import annotations

import atexit
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from aws import REGION, aws_env
from eic import CHAIN_FAULTS, DEFAULT_CALLER, EicService
from fixtures import run_client
from harness import BASTION, SSHD, keygen, wait_port

E2E_DIR = Path(__file__).resolve().parent
AMI = "ami-12c6146b"  # moto runs instances of any AMI id
VPC_CIDR = "10.199.0.0/16"  # instance subnets are 10.199.N.0/24, N = 1, 2, …
UNKNOWN_INSTANCE = "i-0123456789abcdef0"
BIN = str(BASTION)

# --------------------------------------------------------------------------
# AWS side


@pytest.fixture
def bastion_instance(ec2, eic):
    """The instance the bastion itself runs on (for the `eic` key source): a running moto instance
    and its IMDS on 127.0.0.1. -> (instance id, Imds)."""
    iid = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    return iid, eic.imds(iid)


def send_key(eic_client, iid: str, user: str, pub: str) -> str:
    """SendSSHPublicKey through the API -> the RequestId."""
    r = eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=user, SSHPublicKey=pub)
    assert r["Success"] is True, r
    return r["RequestId"]


# --------------------------------------------------------------------------
# sshd's rules for an AuthorizedKeysCommand


def akc_path_problems(path) -> list[str]:
    """What sshd would object to in `path` as an AuthorizedKeysCommand: the file (if it exists)
    and every directory above it must be owned by root and not writable by group or others."""
    problems = []
    p = Path(os.path.realpath(path))
    chain = ([p] if p.exists() else []) + list(p.parents)
    for q in chain:
        st = q.stat()
        if st.st_uid != 0:
            problems.append(f"{q} is owned by uid {st.st_uid}, not root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"{q} is writable by group or others ({stat.filemode(st.st_mode)})")
    return problems


def assert_akc_path_safe(path) -> None:
    problems = akc_path_problems(path)
    assert not problems, f"sshd would refuse {path} as AuthorizedKeysCommand: " + "; ".join(problems)


_AKC_BIN: str | None = None


def akc_bin() -> str:
    """The bastion binary as sshd's AuthorizedKeysCommand. sshd refuses a command below a directory
    that group or others may write (a checkout under /tmp, say), so the targets run a copy (debug
    info stripped) in a root-owned directory under /run, made once per test run, removed at exit."""
    global _AKC_BIN
    if _AKC_BIN is None:
        d = Path(f"/run/bastion-e2e-akc-{os.getpid()}")
        d.mkdir(mode=0o755, exist_ok=True)
        os.chmod(d, 0o755)
        atexit.register(shutil.rmtree, d, True)
        dst = d / "bastion"
        subprocess.run(["objcopy", "--strip-debug", str(BASTION), str(dst)], check=True, capture_output=True)
        dst.chmod(0o755)
        assert_akc_path_safe(dst)
        _AKC_BIN = str(dst)
    return _AKC_BIN


# --------------------------------------------------------------------------
# a realistic EC2 target: moto instance + namespace + IMDS + sshd with the EIC AuthorizedKeysCommand


def host_routes() -> list[tuple[str, str]]:
    """(destination, device) of every IPv4 route in every table of the host's namespace."""
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=True).stdout
    return [(r.get("dst", ""), r.get("dev", "")) for r in json.loads(out or "[]")]


def free_subnet(used: set) -> int:
    """N such that 10.199.N.0/24 is not routed on the host (nor taken in this test). A broader route
    covering 10.199.0.0/16 (a VPN, a real VPC) would be hijacked by our addresses: fail clearly."""
    vpc = ipaddress.ip_network(VPC_CIDR)
    routes = []
    for dst, dev in host_routes():
        if dst in ("", "default"):
            continue
        net = ipaddress.ip_network(dst, strict=False)
        routes.append((net, dev))
        if net.overlaps(vpc) and net.prefixlen < vpc.prefixlen:
            raise AssertionError(f"the host routes {dst} (dev {dev}), which covers {VPC_CIDR}: the EIC suite's "
                                 f"instance subnets would shadow real addresses; `ip route` must not cover {VPC_CIDR}")
    for n in range(1, 255):
        if n in used:
            continue
        net = ipaddress.ip_network(f"10.199.{n}.0/24")
        if not any(r.overlaps(net) for r, _ in routes):
            return n
    raise AssertionError(f"every 10.199.N.0/24 is already routed on the host: {routes}")


class EicInstance:
    """One EC2 target. `.id`, `.ip` (10.199.N.10, in `.ns`), `.host_ip` (10.199.N.1, the host end of
    the veth, where `.imds` listens), `.imds`, `.sshd_log`, `.sshd_config`, `.tags`.

    sshd listens on .ip:22 inside `.ns`; by default its only key source is
      AuthorizedKeysCommand <bastion> authorized-keys --eic --ca-bundle <eic.ca_bundle>
                            --imds-endpoint <imds.url> %u %f
    run as root. `start_sshd(authorized_keys=[...])` or `start_sshd(akc="<command>")` restarts it
    with a plain AuthorizedKeysFile or another command (harness self-test)."""

    def __init__(self, env, netns, ec2, eic, vpc_id: str, n: int, tags: dict):
        self.env, self.eic, self.n, self.tags = env, eic, n, dict(tags)
        self.host_ip, self.ip = f"10.199.{n}.1", f"10.199.{n}.10"
        subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.199.{n}.0/24",
                                   AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in self.tags.items()]}] \
            if self.tags else []
        inst = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro", SubnetId=subnet,
                                 PrivateIpAddress=self.ip, TagSpecifications=spec)["Instances"][0]
        self.id = inst["InstanceId"]
        assert inst.get("PrivateIpAddress") == self.ip, f"moto gave {self.id} {inst.get('PrivateIpAddress')}"
        self.ns = netns(f"i{n}")
        self.host_dev, self.ns_dev = netns.veth_host(self.ns, f"{self.host_ip}/24", f"{self.ip}/24")
        self.imds = eic.imds(self.id, bind=self.host_ip)
        self.dir = env.tmp / f"instance-{n}-{self.id}"
        self.dir.mkdir()
        self.sshd_log = self.dir / "sshd.log"
        self.sshd_config = self.dir / "sshd_config"
        self.proc = None
        self.start_sshd()

    def akc_command(self) -> str:
        return (f"{akc_bin()} authorized-keys --eic --ca-bundle {self.eic.ca_bundle} --imds-endpoint {self.imds.url} "
                "%u %f")

    def start_sshd(self, authorized_keys: list | None = None, akc: str | None = None) -> None:
        self.stop_sshd()
        if authorized_keys is not None:
            ak = self.dir / "authorized_keys"
            ak.write_text("".join(f"{k}\n" for k in authorized_keys))
            keys = f"AuthorizedKeysFile {ak}\n"
        else:
            command = akc or self.akc_command()
            keys = f"AuthorizedKeysFile none\nAuthorizedKeysCommand {command}\nAuthorizedKeysCommandUser root\n"
        self.sshd_config.write_text(
            f"Port 22\nListenAddress {self.ip}\nHostKey {self.env.keys.path('target_host')}\n" + keys +
            "PidFile none\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nAllowTcpForwarding yes\n"
            "MaxStartups 100\nLogLevel VERBOSE\n")
        log = open(self.sshd_log, "a")
        log.write(f"=== sshd started with {self.sshd_config} ===\n{self.sshd_config.read_text()}===\n")
        log.flush()
        self.proc = self.env.p.start(["ip", "netns", "exec", self.ns, SSHD, "-D", "-e", "-f", str(self.sshd_config)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_port(self.ip, 22, netns=self.ns, proc=self.proc, what="instance sshd")
        except RuntimeError as e:
            raise AssertionError(f"{e}\n--- sshd log ---\n{self.sshd_log.read_text()[-3000:]}") from None

    def stop_sshd(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        return self.sshd_log.read_text(errors="replace")


@pytest.fixture
def eic_instance(env, netns, ec2, eic):
    """eic_instance(tags={"env": "dev"}) -> a started EicInstance in its own 10.199.N.0/24."""
    state = {"vpc": None, "used": set()}

    def make(tags: dict | None = None) -> EicInstance:
        if state["vpc"] is None:
            state["vpc"] = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
        n = free_subnet(state["used"])
        state["used"].add(n)
        return EicInstance(env, netns, ec2, eic, state["vpc"], n, tags or {})
    return make


# --------------------------------------------------------------------------
# logins and the audit trail


def ok(r, what="login"):
    assert r.rc == 0 and r.stdout.strip() == b"ok", f"{what}: rc={r.rc} stdout={r.stdout!r} stderr={r.stderr}"


def refused(r, what="login"):
    assert r.rc == 255, f"{what} should have failed: rc={r.rc} stdout={r.stdout!r} stderr={r.stderr}"


def login_via(client, b, target, key="alice", login=None, command="echo ok", timeout=60):
    """ssh -J <login>@bastion root@<target sshd on 127.0.0.1>: the key source test's login."""
    return run_client(["ssh", "-F", client(key), "-J", f"{login or key}@127.0.0.1:{b.port}", "-p", target.port,
                       "root@127.0.0.1", command], timeout=timeout)


def jump(client, b, host, key="alice", login=None, command="echo ok", timeout=90):
    """ssh -J <login>@bastion root@<host> (an instance id, sent to the bastion as it is)."""
    return run_client(["ssh", "-F", client(key), "-J", f"{login or key}@127.0.0.1:{b.port}", "-p", "22",
                       f"root@{host}", command], timeout=timeout)


def _ci(text, subs) -> bool:
    return any(s.lower() in (text or "").lower() for s in subs)


def auth_failures(b, login: str) -> list[dict]:
    """Every `auth` event with success false for `login`, in any trail (an unknown login may go to
    `_unknown`), oldest first."""
    evs = [e for e in b.audit_events()
           if e.get("event") == "auth" and e.get("success") is False and login in (e.get("login"), e.get("user"))]
    return sorted(evs, key=lambda e: e.get("ts", ""))


def refusal_reason(b, login: str, before: int = 0, timeout: float = 10.0) -> str:
    """The reason of the last refused login of `login`, once more than `before` refusals exist."""
    deadline = time.monotonic() + timeout
    while True:
        evs = auth_failures(b, login)
        if len(evs) > before:
            return evs[-1].get("reason") or ""
        if time.monotonic() > deadline:
            raise AssertionError(f"no refused auth event for {login} (after {before}) within {timeout}s; have:\n"
                                 + "\n".join(json.dumps(e) for e in b.audit_events())
                                 + f"\n--- bastion stderr ---\n{b.stderr_text()[-3000:]}")
        time.sleep(0.05)


def auth_success(b, login: str, n: int = 1, timeout: float = 10.0) -> dict:
    """The n-th successful `auth` event in `login`'s trail."""
    deadline = time.monotonic() + timeout
    while True:
        evs = [e for e in b.audit_events(login) if e.get("event") == "auth" and e.get("success") is True]
        if len(evs) >= n:
            return evs[n - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} successful auth events for {login}: {b.audit_events()}")
        time.sleep(0.05)


def events(b, name: str, login: str = "alice") -> list[dict]:
    return [e for e in b.audit_events(login) if e.get("event") == name]


def denial(b, subs, login: str = "alice", timeout: float = 15.0) -> dict:
    """The `port` (allowed false), `refused` or `eic.push` (success false) event whose reason names
    one of `subs` (case-insensitive)."""
    deadline = time.monotonic() + timeout
    while True:
        for e in b.audit_events(login):
            bad = ((e.get("event") == "port" and e.get("allowed") is False) or e.get("event") == "refused"
                   or (e.get("event") == "eic.push" and e.get("success") is False))
            if bad and _ci(e.get("reason"), subs):
                return e
        if time.monotonic() > deadline:
            raise AssertionError(f"no denial naming {subs} within {timeout}s; have:\n"
                                 + "\n".join(json.dumps(e) for e in b.audit_events())
                                 + f"\n--- bastion stderr ---\n{b.stderr_text()[-3000:]}")
        time.sleep(0.05)


def port_event(b, target: str, login: str = "alice", n: int = 1, timeout: float = 10.0) -> dict:
    """The n-th `port` event for `target` ("i-…:22")."""
    deadline = time.monotonic() + timeout
    while True:
        evs = [e for e in events(b, "port", login) if e.get("target") == target]
        if len(evs) >= n:
            return evs[n - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} port events for {target}: {b.audit_events()}")
        time.sleep(0.05)


# --------------------------------------------------------------------------
# bastion configurations


def eic_source_config(eic, **extra) -> dict:
    return {"auth": [{"type": "eic", "ca_bundle": str(eic.ca_bundle), "timeout": "5s", **extra}]}


def eic_source_bastion(bastion, moto, eic, imds, target):
    """A bastion whose only key source is `eic`, on the instance whose IMDS is `imds`."""
    return bastion(eic_source_config(eic), users={}, to=[f"127.0.0.1:{target.port}"],
                   env={**aws_env(moto.url), **eic.env(), **imds.env()})


def push_config(push: bool = True, to=("i-*:22",), os_users=("root",), rule_os_users=None) -> dict:
    rule = {"principals": ["*"], "to": list(to)}
    if rule_os_users is not None:
        rule["os_users"] = list(rule_os_users)
    eic_table = {"push": push, "timeout": "10s"}
    if os_users is not None:
        eic_table["os_users"] = list(os_users)
    return {"allow": [rule], "eic": eic_table}


def push_bastion(bastion, moto, eic, users=None, **kw):
    """A bastion logging users in with its file source (alice, bob) and reaching EC2 instances by id."""
    return bastion(push_config(**kw), users=users, env={**aws_env(moto.url), **eic.env()})


# ==========================================================================
# the harness piece (no bastion needed)


def test_harness_eic_instance_is_reachable_in_its_namespace(env, keys, ec2, eic, eic_instance, client, netns):
    """HARNESS SELF-TEST (no new bastion feature needed): the EC2 target the onward tests use."""
    inst = eic_instance(tags={"env": "dev", "Name": "harness"})

    # moto knows it: running, in its subnet, with the private IP and the tags.
    d = ec2.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]
    assert d["State"]["Name"] == "running" and d["PrivateIpAddress"] == inst.ip
    assert {t["Key"]: t["Value"] for t in d["Tags"]} == {"env": "dev", "Name": "harness"}
    assert d["Placement"]["AvailabilityZone"] == f"{REGION}a"
    # Our addresses are routed on the host through our veth only.
    mine = [dev for dst, dev in host_routes() if dst == f"10.199.{inst.n}.0/24"]
    assert mine == [inst.host_dev], host_routes()

    # The host's namespace (where the bastion's monitor runs) reaches sshd on the private IP.
    with socket.create_connection((inst.ip, 22), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(64).startswith(b"SSH-2.0-")
    # ... and nothing listens on that address in the host namespace itself.
    r = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    assert inst.ip not in r.stdout and inst.host_ip in r.stdout

    # The IMDS answers inside the namespace, on the host end of the veth, as 169.254.169.254 would.
    assert inst.imds.url == f"http://{inst.host_ip}:{inst.imds.port}"
    eic.push(inst.id, "root", keys.pub("alice"))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from eic import imds_fetch; "
            "s = imds_fetch(sys.argv[2], 'root'); "
            "print(json.dumps({'id': s.instance_id, 'az': s.az, 'records': s.records_text, 'staples': len(s.staples)}))")
    r = netns.exec(inst.ns, [sys.executable, "-c", code, E2E_DIR, inst.imds.url], timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["id"] == inst.id and got["az"] == f"{REGION}a" and got["staples"] == 2
    assert keys.pub("alice").split()[1] in got["records"] and f"#Instance={inst.id}" in got["records"]
    # Not on loopback inside the namespace: only through the veth.
    r = netns.exec(inst.ns, [sys.executable, "-c", code, E2E_DIR, f"http://127.0.0.1:{inst.imds.port}"], timeout=60)
    assert r.returncode != 0

    # Throwaway check of the sshd itself: a plain AuthorizedKeysFile lets alice in as root, directly.
    inst.start_sshd(authorized_keys=[keys.pub("alice")])
    r = run_client(["ssh", "-F", client("alice"), f"root@{inst.ip}", "echo ok; ip -4 -o addr show"], timeout=60)
    assert r.rc == 0 and r.out.startswith("ok\n") and f"{inst.ip}/24" in r.out, r
    refused(run_client(["ssh", "-F", client("mallory"), f"root@{inst.ip}", "echo ok"], timeout=60), "mallory")

    # The AuthorizedKeysCommand wiring, with a stand-in command in a root-owned directory: sshd runs
    # it as root with %u %f, and takes the key it prints (AuthorizedKeysFile none).
    run_dir = Path(f"/run/bastion-eic-{uuid.uuid4().hex[:8]}")
    run_dir.mkdir(mode=0o755)
    env.p.cleanups.append(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    calls = run_dir / "calls"
    stand_in = run_dir / "akc.sh"
    stand_in.write_text(f"#!/bin/sh\necho \"$(id -u) $*\" >> {calls}\n"
                        f"[ \"$1\" = root ] && [ \"$2\" = \"{keys.fp['alice']}\" ] && echo '{keys.pub('alice')}'\n"
                        "exit 0\n")
    stand_in.chmod(0o755)
    assert akc_path_problems(stand_in) == []
    inst.start_sshd(akc=f"{stand_in} %u %f")
    ok(run_client(["ssh", "-F", client("alice"), f"root@{inst.ip}", "echo ok"], timeout=60), "alice via the stand-in")
    refused(run_client(["ssh", "-F", client("mallory"), f"root@{inst.ip}", "echo ok"], timeout=60), "mallory")
    lines = calls.read_text().splitlines()
    assert f"0 root {keys.fp['alice']}" in lines and f"0 root {keys.fp['mallory']}" in lines, lines

    # And the configuration the onward tests use: the bastion's own `authorized-keys --eic`.
    inst.start_sshd()
    text = inst.sshd_config.read_text()
    assert (f"AuthorizedKeysCommand {akc_bin()} authorized-keys --eic --ca-bundle {eic.ca_bundle} "
            f"--imds-endpoint {inst.imds.url} %u %f\n") in text
    assert "AuthorizedKeysFile none\n" in text and "AuthorizedKeysCommandUser root\n" in text
    assert akc_path_problems(akc_bin()) == []
    # With nothing pushed for mallory, the target lets nobody in with it (binary built or not).
    refused(run_client(["ssh", "-F", client("mallory"), f"root@{inst.ip}", "echo ok"], timeout=60), "mallory")


# ==========================================================================
# 1. the `eic` key source: logging in to the bastion with a pushed key


def test_pushed_key_logs_in_and_the_audit_names_the_push(bastion, moto, eic, eic_client, bastion_instance, keys,
                                                          sshd_target, client):
    iid, imds = bastion_instance
    target = sshd_target()
    b = eic_source_bastion(bastion, moto, eic, imds, target)
    t0 = eic.clock.now()
    rid = send_key(eic_client, iid, "alice", keys.pub("alice"))
    ok(login_via(client, b, target))

    ev = auth_success(b, "alice")
    assert ev["source"] == "eic" and ev["login"] == "alice"
    call = [c for c in eic.calls if c.outcome == "Success"][-1]
    assert call.request_id == rid and call.instance_id == iid and call.os_user == "alice"
    assert ev["eic_instance"] == iid
    assert ev["eic_request"] == rid == eic.pushes[-1].request_id
    assert ev["eic_caller"] == eic.pushes[-1].caller == DEFAULT_CALLER
    expires = dt.datetime.fromisoformat(ev["eic_expires"].replace("Z", "+00:00"))
    assert expires.tzinfo is not None
    assert abs(expires.timestamp() - (t0 + 60)) <= 5, (ev["eic_expires"], t0)
    if "key_fp" in ev:
        assert ev["key_fp"] == keys.fp["alice"]
    # The records came from the bastion's own IMDS, over IMDSv2.
    assert imds.count("/latest/meta-data/managed-ssh-keys/active-keys/alice") >= 1
    assert imds.count("/latest/api/token", "PUT") >= 1

    # A key pushed for alice is not bob's: bob (nothing pushed) is refused.
    refused(login_via(client, b, target, key="bob"), "bob")
    reason = refusal_reason(b, "bob")
    assert re.search(r"no (eic|ec2 instance connect) key", reason, re.I) and "bob" in reason, reason


def test_login_without_a_push_is_refused(bastion, moto, ec2, eic, eic_client, bastion_instance, keys, sshd_target,
                                         client):
    iid, imds = bastion_instance
    target = sshd_target()
    b = eic_source_bastion(bastion, moto, eic, imds, target)
    refused(login_via(client, b, target))
    reason = refusal_reason(b, "alice")
    assert re.search(r"no (eic|ec2 instance connect) key", reason, re.I) and "alice" in reason, reason
    assert imds.count("/latest/meta-data/managed-ssh-keys/active-keys/alice") >= 1, imds.requests
    # A push for another instance does not count for this one.
    other = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    send_key(eic_client, other, "alice", keys.pub("alice"))
    n = len(auth_failures(b, "alice"))
    refused(login_via(client, b, target))
    refusal_reason(b, "alice", before=n)
    # Pushed for this instance: in.
    send_key(eic_client, iid, "alice", keys.pub("alice"))
    ok(login_via(client, b, target))


# fault -> (the check that must have failed, as the reason's "(kind)", words the reason must use)
CHAIN_REASONS = {
    "wrong_cn": ("wrong_cn", ["CN"]),
    "untrusted_root": ("untrusted_chain", ["trust"]),
    "revoked_signer": ("revoked", ["revoked"]),
    "revoked_intermediate": ("revoked", ["revoked"]),
    "missing_staple": ("missing_staple", ["staple"]),
    "missing_intermediate_staple": ("missing_staple", ["staple"]),
    "stale_staple": ("stale_staple", ["stale", "nextUpdate"]),
}
assert set(CHAIN_REASONS) == set(CHAIN_FAULTS)


@pytest.mark.parametrize("fault", sorted(CHAIN_REASONS))
def test_chain_fault_refuses_the_login(fault, bastion, moto, eic, eic_client, bastion_instance, keys, sshd_target,
                                       client):
    """A fresh bastion per fault: it may keep a verified chain for a while, never a failed one."""
    iid, imds = bastion_instance
    target = sshd_target()
    imds.set_chain_fault(fault)
    b = eic_source_bastion(bastion, moto, eic, imds, target)
    send_key(eic_client, iid, "alice", keys.pub("alice"))
    refused(login_via(client, b, target), fault)
    reason = refusal_reason(b, "alice")
    kind, words = CHAIN_REASONS[fault]
    assert f"({kind})" in reason, f"{fault}: {reason!r} does not name the check {kind}"
    assert _ci(reason, words), f"{fault}: {reason!r} names none of {words}"
    assert b.alive()


RECORD_REASONS = {
    "expired": ("expired", ["expired"]),
    "wrong_instance": ("wrong_instance", ["instance"]),
    "bad_signature": ("bad_signature", ["signature"]),
    "garbage_signature": ("malformed_signature", ["signature"]),
    # Not in the list of reasons; what the check is about.
    "no_timestamp": ("missing_field", ["timestamp"]),
    "no_instance": ("missing_field", ["instance"]),
}


@pytest.mark.parametrize("fault", sorted(RECORD_REASONS))
def test_record_fault_refuses_the_login(fault, bastion, moto, eic, eic_client, bastion_instance, keys, sshd_target,
                                        client):
    iid, imds = bastion_instance
    target = sshd_target()
    b = eic_source_bastion(bastion, moto, eic, imds, target)
    send_key(eic_client, iid, "alice", keys.pub("alice"))
    imds.set_record_fault(fault)
    refused(login_via(client, b, target), fault)
    reason = refusal_reason(b, "alice")
    kind, words = RECORD_REASONS[fault]
    assert f"({kind})" in reason, f"{fault}: {reason!r} does not name the check {kind}"
    assert _ci(reason, words), f"{fault}: {reason!r} names none of {words}"
    # The same push, served without the fault: accepted (nothing about the refusal was remembered).
    imds.set_record_fault(None)
    ok(login_via(client, b, target), f"{fault} cleared")


def test_push_expires_after_60_seconds(bastion, moto, eic, eic_client, bastion_instance, keys, sshd_target, client):
    iid, imds = bastion_instance
    target = sshd_target()
    b = eic_source_bastion(bastion, moto, eic, imds, target)
    send_key(eic_client, iid, "alice", keys.pub("alice"))
    ok(login_via(client, b, target))
    ok(login_via(client, b, target), "second login within 60 s")
    eic.clock.advance(61)
    assert eic.active_keys(iid, "alice") == []
    refused(login_via(client, b, target), "login after 61 s")
    reason = refusal_reason(b, "alice")
    assert re.search(r"no (eic|ec2 instance connect) key", reason, re.I), reason


def test_imds_down_fails_closed_and_recovers(bastion, moto, eic, eic_client, bastion_instance, keys, sshd_target, client):
    iid, imds = bastion_instance
    target = sshd_target()
    b = eic_source_bastion(bastion, moto, eic, imds, target)
    send_key(eic_client, iid, "alice", keys.pub("alice"))

    imds.set_mode("refuse")
    refused(login_via(client, b, target), "IMDS refusing connections")
    assert "imds" in refusal_reason(b, "alice").lower()
    assert b.alive(), b.stderr_text()[-3000:]

    imds.set_mode("error")
    n = len(auth_failures(b, "alice"))
    refused(login_via(client, b, target), "IMDS answering 500")
    assert "imds" in refusal_reason(b, "alice", before=n).lower()

    imds.set_mode("up")
    ok(login_via(client, b, target), "IMDS back")
    assert b.alive()


# --- `bastion authorized-keys --eic` (sshd's AuthorizedKeysCommand) --------------


def akc(eic, imds, *args, timeout=60):
    # sshd runs the command with an empty environment.
    return run_client([BIN, "authorized-keys", "--eic", "--ca-bundle", eic.ca_bundle, "--imds-endpoint", imds.url,
                       *args], timeout=timeout, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def key_ids(text: str) -> list[tuple[str, str]]:
    """(type, base64) of each key line printed."""
    return [tuple(line.split()[:2]) for line in text.splitlines() if line.strip()]


def test_authorized_keys_eic_cli(eic, eic_client, bastion_instance, keys):
    iid, imds = bastion_instance
    alice = tuple(keys.pub("alice").split()[:2])
    bob = tuple(keys.pub("bob").split()[:2])
    # Nothing pushed: exit 0, no output.
    r = akc(eic, imds, "ec2-user")
    assert r.rc == 0 and r.stdout == b"", r

    send_key(eic_client, iid, "ec2-user", keys.pub("alice"))
    send_key(eic_client, iid, "ec2-user", keys.pub("bob"))
    r = akc(eic, imds, "ec2-user")
    assert r.rc == 0 and sorted(key_ids(r.out)) == sorted([alice, bob]), r
    # Only the key with the fingerprint sshd names (%f).
    r = akc(eic, imds, "ec2-user", keys.fp["alice"])
    assert r.rc == 0 and key_ids(r.out) == [alice], r
    r = akc(eic, imds, "ec2-user", keys.fp["bob"])
    assert r.rc == 0 and key_ids(r.out) == [bob], r
    r = akc(eic, imds, "ec2-user", keys.fp["mallory"])
    assert r.rc == 0 and r.stdout == b"", r
    # Another user's keys are not this one's.
    r = akc(eic, imds, "root")
    assert r.rc == 0 and r.stdout == b"", r

    # A bad record is left out.
    imds.set_record_fault("bad_signature")
    r = akc(eic, imds, "ec2-user")
    assert r.stdout == b"", r
    imds.set_record_fault(None)

    # The chain does not verify: exit 1, nothing printed, a message.
    imds.set_chain_fault("revoked_signer")
    r = akc(eic, imds, "ec2-user")
    assert r.rc == 1 and r.stdout == b"" and r.stderr.strip(), r
    imds.set_chain_fault("untrusted_root")
    r = akc(eic, imds, "ec2-user", keys.fp["alice"])
    assert r.rc == 1 and r.stdout == b"" and r.stderr.strip(), r
    imds.set_chain_fault(None)

    # IMDS unreachable: exit 1, a message, then fine again.
    imds.set_mode("refuse")
    r = akc(eic, imds, "ec2-user")
    assert r.rc == 1 and r.stdout == b"" and r.stderr.strip(), r
    imds.set_mode("up")
    r = akc(eic, imds, "ec2-user", keys.fp["alice"])
    assert r.rc == 0 and key_ids(r.out) == [alice], r

    # 60 s later the keys are gone.
    eic.clock.advance(61)
    r = akc(eic, imds, "ec2-user")
    assert r.rc == 0 and r.stdout == b"", r


# ==========================================================================
# 2. onward: pushing alice's key to the instance she asks for by id


def success_calls(eic) -> list:
    return [c for c in eic.calls if c.outcome == "Success"]


def test_push_lets_alice_in_and_only_while_the_key_lives(bastion, moto, eic, eic_instance, keys, client):
    inst = eic_instance(tags={"env": "dev"})
    b_plain = push_bastion(bastion, moto, eic, push=False)
    b_push = push_bastion(bastion, moto, eic, push=True)
    target = f"{inst.id}:22"

    # B resolves the id and connects, but pushes nothing: the instance knows no key of alice's.
    refused(jump(client, b_plain, inst.id), "B before any push")
    ev = port_event(b_plain, target)
    assert ev["allowed"] is True and ev["addr"] == f"{inst.ip}:22", ev
    assert eic.count() == 0 and events(b_plain, "eic.push") == []

    # A pushes alice's key (for root), then connects: alice's own client gets in.
    ok(jump(client, b_push, inst.id), "A with push")
    assert eic.count("Success") == 1
    call = success_calls(eic)[0]
    assert call.instance_id == inst.id and call.os_user == "root"
    # The very key alice authenticated with (key material; the bastion never sees her comment).
    material = lambda line: line.split()[:2]  # noqa: E731
    assert [(p.instance_id, p.os_user, material(p.key)) for p in eic.pushes] == \
        [(inst.id, "root", material(keys.pub("alice")))]
    pushes = events(b_push, "eic.push")
    assert len(pushes) == 1, pushes
    assert pushes[0]["instance_id"] == inst.id and pushes[0]["os_user"] == "root" and pushes[0]["success"] is True
    assert pushes[0]["request_id"] == call.request_id
    ev = port_event(b_push, target)
    assert ev["allowed"] is True and ev["addr"] == f"{inst.ip}:22", ev
    # The target's sshd got it from its IMDS through `authorized-keys --eic`.
    assert inst.imds.count("/latest/meta-data/managed-ssh-keys/active-keys/root") >= 1

    # While the pushed key lives (< 60 s), B's connections get in too, without a push of their own.
    ok(jump(client, b_plain, inst.id), "B within 60 s of A's push")
    assert eic.count() == 1 and events(b_plain, "eic.push") == []

    # 61 s later the key is gone: B (a fresh connection, no push) is refused again.
    eic.clock.advance(61)
    refused(jump(client, b_plain, inst.id), "B after 61 s")
    assert eic.count() == 1
    # ... and A pushes afresh for each forward.
    ok(jump(client, b_push, inst.id), "A again")
    assert eic.count("Success") == 2 and len(events(b_push, "eic.push")) == 2


def test_tag_rule_allows_dev_and_denies_prod_without_a_push(bastion, moto, eic, eic_instance, client):
    prod = eic_instance(tags={"env": "prod"})
    dev = eic_instance(tags={"env": "dev"})
    b = push_bastion(bastion, moto, eic, to=["tag:env=dev:22"])

    refused(jump(client, b, prod.id), "prod")
    ev = denial(b, ["no rule allows"])
    assert ev["event"] == "port" and ev["allowed"] is False and ev["target"] == f"{prod.id}:22", ev
    assert eic.count() == 0 and events(b, "eic.push") == []

    ok(jump(client, b, dev.id), "dev")
    assert eic.count("Success") == 1 and success_calls(eic)[0].instance_id == dev.id
    assert port_event(b, f"{dev.id}:22")["allowed"] is True
    assert [e["instance_id"] for e in events(b, "eic.push")] == [dev.id]


def test_id_glob_that_does_not_match_is_denied_without_a_push(bastion, moto, eic, eic_instance, client):
    inst = eic_instance(tags={"env": "dev"})
    first = inst.id[2]
    other = "0" if first != "0" else "1"
    b = push_bastion(bastion, moto, eic, to=[f"i-{other}*:22"])
    refused(jump(client, b, inst.id), "id glob not matching")
    ev = denial(b, ["no rule allows"])
    assert ev["event"] == "port" and ev["allowed"] is False and ev["target"] == f"{inst.id}:22", ev
    assert eic.count() == 0 and events(b, "eic.push") == []
    # The same id under a glob that matches it: in.
    b2 = push_bastion(bastion, moto, eic, to=[f"i-{first}*:22"])
    ok(jump(client, b2, inst.id), "id glob matching")
    assert eic.count("Success") == 1


def test_targets_given_as_addresses_are_never_pushed_to(bastion, moto, eic, eic_instance, client):
    inst = eic_instance(tags={"env": "dev"})
    b = push_bastion(bastion, moto, eic, to=["i-*:22", f"10.199.{inst.n}.0/24:22"])
    # Allowed and connected, but nothing pushed: the instance does not know alice's key.
    refused(jump(client, b, inst.ip), "by address")
    ev = port_event(b, f"{inst.ip}:22")
    assert ev["allowed"] is True, ev
    assert eic.count() == 0 and events(b, "eic.push") == []
    # By id, the same instance lets her in.
    ok(jump(client, b, inst.id), "by id")
    assert eic.count("Success") == 1


def test_stopped_instance_is_refused(bastion, moto, ec2, eic, eic_instance, client):
    inst = eic_instance(tags={"env": "dev"})
    ec2.stop_instances(InstanceIds=[inst.id])
    assert ec2.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]["State"]["Name"] == "stopped"
    b = push_bastion(bastion, moto, eic)
    refused(jump(client, b, inst.id), "stopped")
    ev = denial(b, ["not running", "state"])
    assert inst.id in ev["reason"] or ev.get("target") == f"{inst.id}:22" or ev.get("instance_id") == inst.id, ev
    assert eic.count("Success") == 0 and eic.pushes == []


def test_unknown_instance_is_refused(bastion, moto, eic, client):
    b = push_bastion(bastion, moto, eic)
    refused(jump(client, b, UNKNOWN_INSTANCE), "unknown instance")
    ev = denial(b, ["not found"])
    assert UNKNOWN_INSTANCE in ev["reason"] or ev.get("target") == f"{UNKNOWN_INSTANCE}:22", ev
    assert eic.count() == 0


def test_throttled_push_is_refused_then_works(bastion, moto, eic, eic_instance, client):
    inst = eic_instance(tags={"env": "dev"})
    b = push_bastion(bastion, moto, eic)
    eic.throttle(20)
    refused(jump(client, b, inst.id), "throttled")
    denial(b, ["throttl"])
    assert eic.count("ThrottlingException") >= 1 and eic.count("Success") == 0
    failed = [e for e in events(b, "eic.push") if e.get("success") is False]
    assert failed and failed[0]["instance_id"] == inst.id, events(b, "eic.push")
    eic.clear_faults()
    ok(jump(client, b, inst.id), "after the throttling")
    assert eic.count("Success") == 1


def test_ecdsa_key_is_refused_before_any_call(bastion, moto, eic, eic_instance, keys, client):
    inst = eic_instance(tags={"env": "dev"})
    keygen(keys.dir / "carol", "ecdsa")
    carol = keys.pub("carol")
    assert carol.startswith("ecdsa-sha2-"), carol
    b = push_bastion(bastion, moto, eic, users={"alice": [keys.pub("alice")], "carol": [carol]})
    refused(jump(client, b, inst.id, key="carol"), "ECDSA")
    denial(b, ["key type"], login="carol")
    assert eic.count() == 0 and eic.calls == []
    # alice's Ed25519 key on the same bastion is pushed.
    ok(jump(client, b, inst.id), "alice")
    assert eic.count("Success") == 1


def test_rule_os_users_push_once_per_user(bastion, moto, eic, eic_instance, keys, client):
    inst = eic_instance(tags={"env": "dev"})
    b = push_bastion(bastion, moto, eic, os_users=["admin"], rule_os_users=["ec2-user", "root"])
    ok(jump(client, b, inst.id), "two OS users")
    calls = success_calls(eic)
    assert sorted(c.os_user for c in calls) == ["ec2-user", "root"] and {c.instance_id for c in calls} == {inst.id}
    assert eic.count() == 2, eic.calls  # not [eic].os_users' "admin"
    pushes = events(b, "eic.push")
    assert sorted(e["os_user"] for e in pushes) == ["ec2-user", "root"], pushes
    assert all(e["success"] is True for e in pushes)
    assert {e["request_id"] for e in pushes} == {c.request_id for c in calls}
    assert {k.os_user for k in eic.pushes} == {"ec2-user", "root"}
    assert len(eic.active_keys(inst.id, "ec2-user")) == 1 and len(eic.active_keys(inst.id, "root")) == 1
