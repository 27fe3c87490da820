"""The per-connection worker sandbox, observed from outside through /proc."""

import os
import subprocess

from harness import BASTION, free_port, proc_status, run, wait_port


def ns(pid, kind):
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_live_worker_is_confined(env):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])])
    cfgs = {u: str(env.client_config(u)) for u in ("alice", "bob")}
    sessions = [
        env.p.start(["ssh", "-F", cfgs[u], "-J", f"{u}@127.0.0.1:{bastion.port}", "-p", str(target.port),
                     "root@127.0.0.1", "sleep 4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for u in ("alice", "bob")
    ]
    starts = [bastion.wait_event(lambda e: e["event"] == "session.start", trail=u) for u in ("alice", "bob")]
    uids = set()
    for start in starts:
        pid = start["worker_pid"]
        st = proc_status(pid)
        assert st["NoNewPrivs"] == "1"
        assert st["Seccomp"] == "2"
        assert st["CapEff"] == "0000000000000000"
        assert st["CapPrm"] == "0000000000000000"
        assert st["CapBnd"] == "0000000000000000"
        uid = int(st["Uid"].split()[0])
        assert uid != 0 and all(int(x) == uid for x in st["Uid"].split())
        uids.add(uid)
        for kind in ("net", "mnt", "pid", "ipc", "uts"):
            assert ns(pid, kind) != ns(bastion.pid, kind), f"{kind} namespace is shared with the monitor"
        sb = start["sandbox"]
        assert sb == {**sb, "enabled": True, "uid": uid, "no_new_privs": True, "seccomp": 2,
                      "cap_eff": "0000000000000000", "netns_isolated": True, "mntns_isolated": True, "pidns_isolated": True}
        # The worker sees an empty root: no host files at all.
        assert os.listdir(f"/proc/{pid}/root") == []
        # It runs the small bastion-worker binary (no AWS SDK), not the monitor's.
        exe, small = os.stat(f"/proc/{pid}/exe"), os.stat(BASTION.with_name("bastion-worker"))
        assert (exe.st_dev, exe.st_ino) == (small.st_dev, small.st_ino), "the worker is not bastion-worker"
    assert len(uids) == 2, "concurrent workers run under different uids"
    for s in sessions:
        assert s.wait(timeout=30) == 0


def test_forbidden_syscall_kills_the_worker():
    r = run([str(BASTION), "sandbox-selftest", "--syscall", "forbidden"], timeout=30)
    assert r.returncode == -31, (r.returncode, r.stderr)  # SIGSYS
    assert "SIGSYS" in r.stderr
    ok = run([str(BASTION), "sandbox-selftest", "--syscall", "allowed"], timeout=30)
    assert ok.returncode == 0, ok.stderr


def test_sandbox_off_is_announced_and_recorded(env):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])], extra="[sandbox]\nenabled = false\n")
    assert "sandbox is DISABLED" in bastion.stderr()
    assert env.jump("alice", bastion, target, "echo ok").stdout.strip() == "ok"
    start = bastion.wait_event(lambda e: e["event"] == "session.start", trail="alice")
    assert start["sandbox"]["enabled"] is False


def test_a_lone_bastion_binary_runs_its_workers_itself(tmp_path):
    """Without bastion-worker next to it (one artifact copied alone), workers run the
    bastion binary itself, sandboxed the same way."""
    lone = tmp_path / "bin" / "bastion"
    lone.parent.mkdir()
    lone.write_bytes(BASTION.read_bytes())
    lone.chmod(0o755)
    ok = run([str(lone), "sandbox-selftest", "--syscall", "allowed"], timeout=30)
    assert ok.returncode == 0, ok.stderr
    killed = run([str(lone), "sandbox-selftest", "--syscall", "forbidden"], timeout=30)
    assert killed.returncode == -31 and "SIGSYS" in killed.stderr, (killed.returncode, killed.stderr)


def test_a_bastion_worker_others_could_replace_is_not_run(env, tmp_path):
    """bastion-worker handles every untrusted byte: if anyone but root could write it,
    the bastion does not run it (its own binary serves the workers) and says so."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("bastion", "bastion-worker"):
        (d / name).write_bytes(BASTION.with_name(name).read_bytes())
        (d / name).chmod(0o755)

    def start(tag):
        port = free_port()
        cfg = tmp_path / f"{tag}.toml"
        cfg.write_text(f'listen = ["127.0.0.1:{port}"]\nhost_keys = ["{env.keys.path("bastion_host")}"]\n'
                       f'[[auth]]\ntype = "file"\nfile = "{tmp_path / "none"}"\nlogins = ["*"]\n'
                       f'[audit]\ndir = "{tmp_path / ("audit-" + tag)}"\n')
        (tmp_path / "none").write_text("")
        p = env.p.start([str(d / "bastion"), "serve", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True)
        wait_port("127.0.0.1", port, proc=p, what="bastion")
        p.terminate()
        return p.communicate(timeout=30)[1]

    log = start("ok")
    assert f'"worker":"{d / "bastion-worker"}"' in log, log
    (d / "bastion-worker").chmod(0o777)
    log = start("writable")
    assert "not using bastion-worker" in log and "bastion-worker next to it is not safe to run" in log, log
    assert '"worker":"this binary' in log, log
