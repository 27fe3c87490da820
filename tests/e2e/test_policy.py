"""Where users may go, and what the bastion refuses to do for them."""

from harness import run


def test_denied_port_is_refused_with_a_reason(env):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], ["127.0.0.1:1-2"])])
    r = env.jump("alice", bastion, target, "true")
    assert r.returncode == 255
    ev = bastion.wait_event(lambda e: e["event"] == "port", trail="alice")
    assert ev["allowed"] is False
    assert ev["target"] == f"127.0.0.1:{target.port}"
    assert f"no rule allows alice to reach 127.0.0.1 on port {target.port}" in ev["reason"]
    assert "addr" not in ev


def test_no_rule_for_the_principal(env):
    target = env.target()
    bastion = env.bastion(allow=[(["bob"], [f"127.0.0.1:{target.port}"])])
    assert env.jump("alice", bastion, target, "true").returncode == 255
    ev = bastion.wait_event(lambda e: e["event"] == "port", trail="alice")
    assert ev["reason"] == "no forwarding rule applies to alice"
    assert env.jump("bob", bastion, target, "echo bob-ok").stdout.strip() == "bob-ok"


def test_imds_is_denied_by_a_wildcard(env):
    bastion = env.bastion(allow=[(["*"], ["0.0.0.0/0:80"])])
    r = env.ssh("alice", "-p", str(bastion.port), "-W", "169.254.169.254:80", "alice@127.0.0.1", timeout=20)
    assert r.returncode == 255
    ev = bastion.wait_event(lambda e: e["event"] == "port", trail="alice")
    assert ev["allowed"] is False and "link-local" in ev["reason"] and "metadata" in ev["reason"]


def test_loopback_needs_an_explicit_rule(env):
    target = env.target()
    wide = env.bastion(allow=[(["*"], [f"0.0.0.0/0:{target.port}"])])
    assert env.jump("alice", wide, target, "true").returncode == 255
    ev = wide.wait_event(lambda e: e["event"] == "port", trail="alice")
    assert ev["allowed"] is False and "loopback" in ev["reason"]
    explicit = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])])
    assert env.jump("alice", explicit, target, "echo ok").stdout.strip() == "ok"


def test_names_are_resolved_and_checked(env):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])])
    r = env.ssh("alice", "-J", f"alice@127.0.0.1:{bastion.port}", "-p", str(target.port), "root@localhost", "echo by-name")
    assert r.returncode == 0, r.stderr
    ev = bastion.wait_event(lambda e: e["event"] == "port", trail="alice")
    assert ev["target"] == f"localhost:{target.port}" and ev["addr"] == f"127.0.0.1:{target.port}"
    r = env.ssh("alice", "-p", str(bastion.port), "-W", "no-such-host.invalid:22", "alice@127.0.0.1", timeout=30)
    assert r.returncode == 255
    ev = bastion.wait_event(lambda e: e["event"] == "port" and not e["allowed"], trail="alice")
    assert "could not be resolved" in ev["reason"]


def test_remote_forwarding_is_refused(env):
    bastion = env.bastion()
    r = env.ssh("alice", "-p", str(bastion.port), "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22",
                "alice@127.0.0.1", timeout=20)
    assert r.returncode == 255 and "remote port forwarding failed" in r.stderr
    ev = bastion.wait_event(lambda e: e["event"] == "refused", trail="alice")
    assert ev["what"] == "tcpip-forward" and "-R" in ev["reason"]


def test_shell_and_exec_on_the_bastion_are_refused_with_a_hint(env):
    bastion = env.bastion()
    r = env.ssh("alice", "-tt", "-p", str(bastion.port), "alice@127.0.0.1", timeout=20)
    assert r.returncode == 1
    assert "ssh -J" in (r.stdout + r.stderr)
    r = env.ssh("alice", "-p", str(bastion.port), "alice@127.0.0.1", "cat /etc/shadow", timeout=20)
    assert r.returncode == 1 and "ssh -J" in r.stderr and "root:" not in r.stdout
    r = env.ssh("alice", "-p", str(bastion.port), "-s", "alice@127.0.0.1", "sftp", timeout=20)
    assert r.returncode != 0
    bastion.wait_event(lambda e: e["event"] == "refused" and e["what"] == "subsystem", trail="alice")
    refused = [e for e in bastion.events("alice") if e["event"] == "refused"]
    assert {e["what"] for e in refused} >= {"shell", "exec", "subsystem"}
    assert any("cat /etc/shadow" in e["reason"] for e in refused)


def test_agent_forwarding_request_does_not_break_a_jump(env):
    target = env.target()
    bastion = env.bastion(allow=[(["*"], [f"127.0.0.1:{target.port}"])])
    # The client asks for agent forwarding only when it has an agent.
    cfg = str(env.client_config("alice"))
    r = run(["ssh-agent", "ssh", "-F", cfg, "-A", "-p", str(bastion.port), "alice@127.0.0.1", "true"], timeout=20)
    assert r.returncode == 1
    bastion.wait_event(lambda e: e["event"] == "refused" and e["what"] == "agent", trail="alice")
    assert env.jump("alice", bastion, target, "echo still-fine", extra=["-A"]).stdout.strip() == "still-fine"
