"""Self-tests of the harness, with a second real OpenSSH sshd as the jump host.

These need no bastion binary: they check that the fixtures, the client
command lines, the namespace topology and the teardown do what the bastion
suites rely on. The benchmark reuses the same fixtures.
"""

import os
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from fixtures import (ClientResult, Netns, Via, deep_merge, fill_until_enospc, read_jsonl, run_client,
                      tmpfs_mount, to_toml, transfers_roundtrip)
from harness import Processes, free_port, wait_port


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for whoever reaps orphans."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def ssh(cfg, *args, timeout=60, netns=None) -> ClientResult:
    return run_client(["ssh", "-F", cfg, *args], timeout=timeout, netns=netns)


def test_keys_have_the_right_types_and_fingerprints(keys):
    for name, kind in [("alice", "ED25519"), ("bob", "RSA"), ("mallory", "ED25519"),
                       ("bastion_host", "ED25519"), ("target_host", "ED25519")]:
        out = subprocess.run(["ssh-keygen", "-lf", f"{keys.path(name)}.pub"], capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[1] == keys.fp[name] and keys.fp[name].startswith("SHA256:")
        assert out[-1] == f"({kind})", out
        assert keys.path(name).stat().st_mode & 0o077 == 0, "private keys must be 0600 for ssh"
    bits = subprocess.run(["ssh-keygen", "-lf", f"{keys.path('bob')}.pub"], capture_output=True, text=True).stdout
    assert bits.startswith("3072 ")
    assert len(set(keys.fp.values())) == 5


def test_client_configs(ssh_config, client, keys):
    base = ssh_config.read_text()
    for opt in ["StrictHostKeyChecking no", "UserKnownHostsFile /dev/null", "IdentitiesOnly yes",
                "BatchMode yes", "LogLevel ERROR", "ConnectTimeout 10", "ServerAliveInterval 0"]:
        assert opt in base
    assert "IdentityFile" not in base
    alice = client("alice").read_text()
    assert f"IdentityFile {keys.path('alice')}" in alice and "BatchMode yes" in alice
    # ssh itself reads them as meant.
    r = subprocess.run(["ssh", "-G", "-F", str(client("alice")), "example"], capture_output=True, text=True, check=True)
    assert f"identityfile {keys.path('alice')}" in r.stdout and "batchmode yes" in r.stdout


def test_sshd_target_lets_alice_and_bob_in_but_not_mallory(sshd_target, client):
    t = sshd_target()
    r = ssh(client("alice"), "-p", t.port, "root@127.0.0.1", "id -u; echo $SSH_CONNECTION")
    assert r.rc == 0, r.stderr
    uid, conn = r.out.splitlines()
    assert uid == "0" and conn.endswith(f" 127.0.0.1 {t.port}")
    r = ssh(client("bob"), "-p", t.port, "root@127.0.0.1", "echo rsa")
    assert (r.rc, r.out) == (0, "rsa\n"), r.stderr
    r = ssh(client("mallory"), "-p", t.port, "root@127.0.0.1", "echo no")
    assert r.rc == 255 and "Permission denied (publickey)" in r.stderr and r.stdout == b""


def test_jump_through_openssh(sshd_target, client, ssh_config, keys):
    target, jump = sshd_target(), sshd_target()
    via = Via(client("alice"), f"root@127.0.0.1:{jump.port}", "127.0.0.1", target.port)
    r = via.ssh("echo hi; echo $SSH_CONNECTION")
    assert r.rc == 0, r.stderr
    hi, conn = r.out.splitlines()
    assert hi == "hi"
    # The target saw the connection come from the jump host's onward socket.
    assert conn.split()[2:] == ["127.0.0.1", str(target.port)]
    # mallory's config reaches the jump with mallory's key: refused there.
    r = Via(client("mallory"), f"root@127.0.0.1:{jump.port}", "127.0.0.1", target.port).ssh("echo no")
    assert r.rc == 255 and "Permission denied" in r.stderr and r.stdout == b""
    # Why configs and not -i: -i is not passed on to the -J connection.
    r = ssh(ssh_config, "-i", keys.path("alice"), "-J", f"root@127.0.0.1:{jump.port}", "-p", target.port,
            "root@127.0.0.1", "echo no")
    assert r.rc == 255 and r.stdout == b""
    # Stdin and binary stdout pass through untouched.
    blob = os.urandom(300_000)
    r = run_client(["ssh", "-F", client("alice"), "-J", f"root@127.0.0.1:{jump.port}", "-p", target.port,
                    "root@127.0.0.1", "cat"], input=blob)
    assert r.rc == 0 and r.stdout == blob


def test_scp_sftp_rsync_through_an_openssh_jump(sshd_target, client, tmp_path):
    target, jump = sshd_target(), sshd_target()
    work, remote = tmp_path / "work", tmp_path / "remote"
    work.mkdir(), remote.mkdir()
    via = Via(client("alice"), f"root@127.0.0.1:{jump.port}", "127.0.0.1", target.port)
    transfers_roundtrip(via, work, remote)


def test_dash_w_and_dash_l_through_an_openssh_jump(env, sshd_target, client):
    target, jump = sshd_target(), sshd_target()
    cfg = client("alice")
    proxy = f"ssh -F {cfg} -p {jump.port} -W %h:%p root@127.0.0.1"
    r = ssh(cfg, "-o", f"ProxyCommand={proxy}", "-p", target.port, "root@127.0.0.1", "echo via-W")
    assert (r.rc, r.out) == (0, "via-W\n"), r.stderr

    local = free_port()
    fwd = env.p.start(["ssh", "-F", str(cfg), "-p", str(jump.port), "-N", "-o", "ExitOnForwardFailure=yes",
                       "-L", f"127.0.0.1:{local}:127.0.0.1:{target.port}", "root@127.0.0.1"],
                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port("127.0.0.1", local, proc=fwd, what="ssh -L")
    r = ssh(cfg, "-p", local, "root@127.0.0.1", "echo via-L")
    assert (r.rc, r.out) == (0, "via-L\n"), r.stderr


def test_private_subnet_topology_with_an_openssh_jump(netns, sshd_target, client, run_client):
    c, b, t = netns("c"), netns("b"), netns("t")
    netns.veth(c, "10.251.0.2/30", b, "10.251.0.1/30")
    netns.veth(b, "10.251.1.1/30", t, "10.251.1.2/30")
    netns.route(c, "default", "10.251.0.1")
    netns.route(t, "default", "10.251.1.1")
    assert netns.exec(b, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    target = sshd_target(host="10.251.1.2", port=22, netns=t)
    jump = sshd_target(host="10.251.0.1", port=22, netns=b)
    cfg = client("alice")

    # The client's namespace sees neither loopback services of the host nor T.
    assert netns.port_open(c, "10.251.0.1", 22)
    assert not netns.port_open(c, "10.251.1.2", 22)
    assert netns.port_open(b, "10.251.1.2", 22)
    r = run_client(["ssh", "-F", cfg, "-o", "ConnectTimeout=3", "root@10.251.1.2", "echo direct"], netns=c, timeout=30)
    assert r.rc == 255 and b"direct" not in r.stdout, "T must not be reachable from C directly"

    r = run_client(["ssh", "-F", cfg, "-J", "root@10.251.0.1", "root@10.251.1.2", "hostname -I; echo $SSH_CONNECTION"],
                   netns=c)
    assert r.rc == 0, r.stderr
    addrs, conn = r.out.splitlines()
    assert "10.251.1.2" in addrs.split()
    assert conn.split()[0] == "10.251.1.1", "T sees the jump host's address, not the client's"


def test_tmpfs_fill_helper(env, tmp_path):
    d = tmpfs_mount(tmp_path / "small", "128k", env.p)
    assert subprocess.run(["mountpoint", "-q", str(d)]).returncode == 0
    (d / "first").write_text("x")
    n = fill_until_enospc(d)
    assert 64 * 1024 < n <= 128 * 1024
    with pytest.raises(OSError) as e:
        with open(d / "more", "ab", buffering=0) as f:
            f.write(b"y" * 4096)
    assert e.value.errno == 28
    (d / "filler").unlink()
    (d / "more").write_bytes(b"z" * 4096)


def test_teardown_kills_processes_and_removes_namespaces_and_mounts(tmp_path, keys):
    from harness import Env
    e = Env(tmp_path / "inner")
    ns = Netns(e.p)
    name = ns.new("x")
    t = e.target(host="127.0.0.1", port=free_port(), netns=name)
    mnt = tmpfs_mount(tmp_path / "mnt", "64k", e.p)
    sleeper = e.p.start(["ip", "netns", "exec", name, "sleep", "300"])
    pids = [t.proc.pid, sleeper.pid]
    e.p.close()
    for pid in pids:
        assert gone(pid), f"pid {pid} survived teardown"
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["mountpoint", "-q", str(mnt)]).returncode != 0


def test_run_client_times_out_and_kills_the_group(tmp_path):
    marker = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(AssertionError, match="timed out"):
        run_client(["bash", "-c", f"sleep 300 & echo $! > {marker}; wait"], timeout=1)
    assert time.monotonic() - start < 10
    pid = int(marker.read_text())
    time.sleep(0.2)
    assert gone(pid), "the background child must be killed too"
    r = run_client(["sh", "-c", "printf 'a\\0b'; echo err >&2; exit 3"])
    assert (r.rc, r.stdout, r.stderr) == (3, b"a\0b", "err\n")


def test_toml_writer_and_merge():
    default = {
        "listen": ["127.0.0.1:2222"],
        "host_keys": ["/k"],
        "auth": [{"type": "file", "dir": "/u"}],
        "allow": [{"principals": ["*"], "to": ["127.0.0.1:22"]}],
        "audit": {"dir": "/a", "stdout": True},
        "sandbox": {"enabled": True},
        "limits": {"login_grace": "20s"},
    }
    assert tomllib.loads(to_toml(default)) == default
    merged = deep_merge(default, {"limits": {"per_source": 3}, "allow": [{"principals": ["bob"], "to": ["h:1"]}],
                                  "sandbox": None})
    parsed = tomllib.loads(to_toml(merged))
    assert parsed["limits"] == {"login_grace": "20s", "per_source": 3}
    assert parsed["allow"] == [{"principals": ["bob"], "to": ["h:1"]}]
    assert "sandbox" not in parsed and default["sandbox"] == {"enabled": True}


def test_jsonl_reader_ignores_a_line_being_written(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"event":"auth","seq":0}\n{"event":"session.st')
    assert read_jsonl(f) == [{"event": "auth", "seq": 0}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_bastion_fixture_reports_a_missing_listener(bastion, tmp_path):
    """The bastion fixture fails (with the captured stderr) when nothing listens in time.

    `serve` with a config naming a host key that does not exist must exit
    without listening; the fixture's wait turns that into a failure that
    shows the bastion's own words.
    """
    with pytest.raises(AssertionError) as e:
        bastion({"host_keys": [str(tmp_path / "no-such-key")]}, start_timeout=20)
    msg = str(e.value)
    assert "bastion" in msg and "--- bastion stderr ---" in msg and "--- config ---" in msg


def test_bastion_fixture_configs_are_what_the_binary_accepts(bastion, sshd_target, client, run_client, keys):
    """The fixture's default config, a dict override and a TOML text with
    @TOKENS@ all pass `check-config`, start, and carry a real session; the
    handle's audit, stdout, signal and wait helpers work."""
    from harness import BASTION
    target = sshd_target()
    b = bastion(to=[f"127.0.0.1:{target.port}"])
    r = run_client([BASTION, "check-config", "--config", b.config_path])
    assert r.rc == 0, r.stderr
    parsed = tomllib.loads(b.config_path.read_text())
    assert parsed["listen"] == [f"127.0.0.1:{b.port}"] and parsed["sandbox"] == {"enabled": True}
    assert parsed["limits"] == {"login_grace": "20s"} and parsed["audit"]["stdout"] is True
    assert (b.dir / "users" / "alice").read_text() == keys.pub("alice") + "\n"

    via = Via(client("alice"), f"alice@127.0.0.1:{b.port}", "127.0.0.1", target.port)
    r = via.ssh("echo fixture-ok")
    assert (r.rc, r.out) == (0, "fixture-ok\n"), r.stderr
    end = b.wait_for_event(lambda e: e["event"] == "session.end", login="alice")
    trail = b.audit_events("alice")
    assert trail[-1] == end and trail[0]["event"] == "auth"
    assert b.audit_events() == trail, "only alice has a trail"
    deadline = time.monotonic() + 5
    while len(b.stdout_events()) < len(trail) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.stdout_events() == trail
    b.signal(__import__("signal").SIGTERM)
    assert b.wait(timeout=30) == 0

    merged = bastion({"limits": {"per_source": 3, "max_startups": 10}}, to=[f"127.0.0.1:{target.port}"])
    assert tomllib.loads(merged.config_path.read_text())["limits"] == {
        "login_grace": "20s", "per_source": 3, "max_startups": 10}
    assert run_client([BASTION, "check-config", "--config", merged.config_path]).rc == 0

    text = bastion(
        'listen = ["@HOST@:@PORT@"]\nhost_keys = ["@HOSTKEY@"]\n'
        '[[auth]]\ntype = "file"\ndir = "@USERS@"\n'
        f'[[allow]]\nprincipals = ["alice"]\nto = ["127.0.0.1:{target.port}"]\n'
        '[audit]\ndir = "@AUDIT@"\nstdout = false\n',
        users={"alice": ["restrict,port-forwarding " + keys.pub("alice")]})
    r = Via(client("alice"), f"alice@127.0.0.1:{text.port}", "127.0.0.1", target.port).ssh("echo text-ok")
    assert (r.rc, r.out) == (0, "text-ok\n"), r.stderr + text.stderr_text()
    assert text.stdout_events() == []
    assert text.wait_for_event(lambda e: e["event"] == "port" and e["allowed"], login="alice")
