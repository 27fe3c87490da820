"""ssh -J, scp -J, sftp -J, rsync, -W and -L through the bastion to real sshd targets."""

import hashlib
import os
import subprocess
import time

from harness import free_port, run, wait_port


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_jump_runs_a_command_and_is_audited(env):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])])
    r = env.jump("alice", bastion, target, "echo hello-from-target")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello-from-target"

    end = bastion.wait_event(lambda e: e["event"] == "session.end", trail="alice")
    events = bastion.events("alice")
    names = [e["event"] for e in events]
    assert names[:3] == ["auth", "session.start", "port"], names
    assert "port.end" in names and names[-1] == "session.end"
    auth, start, port = events[0], events[1], events[2]
    assert auth["success"] is True and auth["login"] == "alice" and auth["user"] == "alice"
    assert auth["key_fp"] == env.keys.fp["alice"]
    assert auth["remote_addr"].startswith("127.0.0.1:")
    assert auth["source"].startswith("file:")
    assert port["allowed"] is True
    assert port["target"] == f"127.0.0.1:{target.port}" and port["addr"] == f"127.0.0.1:{target.port}"
    assert "allow[0]" in port["reason"]
    pend = next(e for e in events if e["event"] == "port.end")
    assert pend["bytes_in"] > 1000 and pend["bytes_out"] > 1000, pend
    assert pend["duration_ms"] >= 0 and end["duration_ms"] >= pend["duration_ms"]
    # Every event carries the chain fields and who/where.
    for i, e in enumerate(events):
        assert e["seq"] == i and len(e["prev"]) == 64 and e["sid"] == auth["sid"]
        assert e["login"] == "alice" and e["remote_addr"] == auth["remote_addr"]
    # And the stdout stream has the same events.
    # The stdout stream carries the same lines (written right after the file).
    deadline = time.time() + 5
    while time.time() < deadline:
        stdout_lines = [line for line in bastion.stdout().splitlines() if line.startswith("{")]
        if len(stdout_lines) >= len(events):
            break
        time.sleep(0.05)
    trail_lines = (bastion.audit_dir / "alice.jsonl").read_text().splitlines()
    assert stdout_lines == trail_lines


def test_scp_sftp_and_rsync_are_byte_exact(env, tmp_path):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])])
    cfg = str(env.client_config("alice"))
    jump = f"alice@127.0.0.1:{bastion.port}"
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024))

    up = tmp_path / "scp_up.bin"
    r = run(["scp", "-q", "-F", cfg, "-J", jump, "-P", str(target.port), str(src), f"root@127.0.0.1:{up}"])
    assert r.returncode == 0, r.stderr
    down = tmp_path / "scp_down.bin"
    r = run(["scp", "-q", "-F", cfg, "-J", jump, "-P", str(target.port), f"root@127.0.0.1:{up}", str(down)])
    assert r.returncode == 0, r.stderr
    assert sha256(up) == sha256(src) == sha256(down)

    batch = tmp_path / "batch"
    put, get = tmp_path / "sftp_up.bin", tmp_path / "sftp_down.bin"
    batch.write_text(f"put {src} {put}\nget {put} {get}\n")
    r = run(["sftp", "-q", "-F", cfg, "-J", jump, "-P", str(target.port), "-b", str(batch), "root@127.0.0.1"])
    assert r.returncode == 0, r.stderr
    assert sha256(put) == sha256(src) == sha256(get)

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f1").write_bytes(os.urandom(300_000))
    (tree / "top.txt").write_text("top\n")
    dest = tmp_path / "tree_copy"
    r = run(["rsync", "-a", "-e", f"ssh -F {cfg} -J {jump} -p {target.port}", f"{tree}/", f"root@127.0.0.1:{dest}/"])
    assert r.returncode == 0, r.stderr
    assert subprocess.run(["diff", "-r", str(tree), str(dest)]).returncode == 0

    ends = [e for e in bastion.events("alice") if e["event"] == "port.end"]
    assert max(e["bytes_out"] for e in ends) > 12 * 1024 * 1024, "the upload's bytes are counted"
    assert max(e["bytes_in"] for e in ends) > 12 * 1024 * 1024, "the download's bytes are counted"


def test_dash_w_and_local_forward(env):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])])
    cfg = str(env.client_config("alice"))
    proxy = f"ssh -F {cfg} -p {bastion.port} -W %h:%p alice@127.0.0.1"
    r = env.ssh("alice", "-o", f"ProxyCommand={proxy}", "-p", str(target.port), "root@127.0.0.1", "echo via-W")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "via-W"

    local = free_port()
    fwd = env.p.start(["ssh", "-F", cfg, "-p", str(bastion.port), "-N", "-o", "ExitOnForwardFailure=yes",
                       "-L", f"{local}:127.0.0.1:{target.port}", "alice@127.0.0.1"])
    wait_port("127.0.0.1", local, proc=fwd, what="ssh -L")
    r = env.ssh("alice", "-p", str(local), "root@127.0.0.1", "echo via-L")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "via-L"
    fwd.terminate()
    ports = [e for e in bastion.events("alice") if e["event"] == "port"]
    assert len(ports) >= 2 and all(p["allowed"] for p in ports)


def test_private_subnet_reachable_only_through_the_bastion(env):
    # client ns C --10.251.0.0/30-- bastion ns B --10.251.1.0/30-- target ns T
    c, b, t = env.netns("c"), env.netns("b"), env.netns("t")
    env.veth(c, "10.251.0.2/30", b, "10.251.0.1/30")
    env.veth(b, "10.251.1.1/30", t, "10.251.1.2/30")
    subprocess.run(["ip", "-n", c, "route", "add", "default", "via", "10.251.0.1"], check=True)
    subprocess.run(["ip", "-n", t, "route", "add", "default", "via", "10.251.1.1"], check=True)
    # B has routes both ways but does not route: only the bastion process crosses.
    # (A new namespace may inherit ip_forward=1 from the host.)
    for key in ["net.ipv4.ip_forward=0", "net.ipv4.conf.all.forwarding=0"]:
        subprocess.run(["ip", "netns", "exec", b, "sysctl", "-qw", key], check=True)
    target = env.target(host="10.251.1.2", port=22, netns=t)
    bastion = env.bastion(netns=b, host="10.251.0.1", port=2222, allow=[(["*"], ["10.251.1.0/24:22"])])

    direct = env.ssh("alice", "-o", "ConnectTimeout=3", "root@10.251.1.2", "true", netns=c, timeout=30)
    assert direct.returncode == 255, "the target must not be reachable from the client's network directly"

    r = env.ssh("alice", "-J", "alice@10.251.0.1:2222", "root@10.251.1.2", "hostname -I; echo in-private-subnet", netns=c)
    assert r.returncode == 0, r.stderr
    assert "in-private-subnet" in r.stdout and "10.251.1.2" in r.stdout
    port = bastion.wait_event(lambda e: e["event"] == "port", trail="alice")
    assert port["allowed"] and port["addr"] == "10.251.1.2:22"
    assert bastion.events("alice")[0]["remote_addr"].startswith("10.251.0.2:")
    del target
