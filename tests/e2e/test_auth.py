"""Who may log in: keys, unknown logins, authorized_keys options, the command source."""

import shutil
import tempfile
from pathlib import Path


def test_wrong_key_is_refused_and_audited(env):
    target = env.target()
    bastion = env.bastion()
    # mallory's key, claiming to be alice
    r = env.ssh("mallory", "-J", f"alice@127.0.0.1:{bastion.port}", "-p", str(target.port), "root@127.0.0.1", "true")
    assert r.returncode == 255
    assert "Permission denied (publickey)" in r.stderr
    ev = bastion.wait_event(lambda e: e["event"] == "auth", trail="alice")
    assert ev["success"] is False
    assert ev["key_fp"] == env.keys.fp["mallory"]
    assert "not authorized for alice" in ev["reason"]
    assert not any(e["event"] == "session.start" for e in bastion.events())


def test_unknown_login_goes_to_the_unknown_trail(env):
    target = env.target()
    bastion = env.bastion()
    r = env.jump("alice", bastion, target, "true", login="nosuchuser")
    assert r.returncode == 255 and "Permission denied" in r.stderr
    ev = bastion.wait_event(lambda e: e["event"] == "auth", trail="_unknown")
    assert ev["login"] == "nosuchuser" and ev["success"] is False
    assert "no key source knows the login nosuchuser" in ev["reason"]
    assert not (bastion.audit_dir / "nosuchuser.jsonl").exists(), "no per-login file for unknown logins"


def test_invalid_login_name_is_refused_before_any_source(env):
    target = env.target()
    bastion = env.bastion()
    r = env.jump("alice", bastion, target, "true", login="..")
    assert r.returncode == 255
    ev = bastion.wait_event(lambda e: e["event"] == "auth", trail="_unknown")
    assert "login name is not valid" in ev["reason"]


def test_expired_key(env):
    target = env.target()
    bastion = env.bastion(users={"alice": ['expiry-time="20200101" ' + env.keys.pub("alice")]})
    r = env.jump("alice", bastion, target, "true")
    assert r.returncode == 255
    ev = bastion.wait_event(lambda e: e["event"] == "auth", trail="alice")
    assert ev["success"] is False and "expired at 2020-01-01" in ev["reason"]


def test_future_expiry_still_works(env):
    target = env.target()
    bastion = env.bastion(users={"alice": ['expiry-time="29991231" ' + env.keys.pub("alice")]})
    assert env.jump("alice", bastion, target, "echo ok").stdout.strip() == "ok"


def test_from_mismatch(env):
    target = env.target()
    bastion = env.bastion(users={"alice": ['from="10.9.9.9" ' + env.keys.pub("alice")]})
    r = env.jump("alice", bastion, target, "true")
    assert r.returncode == 255
    ev = bastion.wait_event(lambda e: e["event"] == "auth", trail="alice")
    assert ev["success"] is False and 'from="10.9.9.9"' in ev["reason"] and "127.0.0.1" in ev["reason"]


def test_from_match(env):
    target = env.target()
    bastion = env.bastion(users={"alice": ['from="127.0.0.0/8,!10.0.0.1" ' + env.keys.pub("alice")]})
    assert env.jump("alice", bastion, target, "echo ok").stdout.strip() == "ok"


def test_permitopen_narrows_the_policy(env):
    target = env.target()
    other = env.target()
    bastion = env.bastion(users={"alice": [f'permitopen="127.0.0.1:{other.port}" ' + env.keys.pub("alice")]})
    r = env.jump("alice", bastion, target, "true")
    assert r.returncode == 255, "the policy allows it, the key's permitopen does not"
    ev = bastion.wait_event(lambda e: e["event"] == "port" and not e["allowed"], trail="alice")
    assert "permitopen" in ev["reason"]
    assert env.jump("alice", bastion, other, "echo ok").stdout.strip() == "ok"


def test_restrict_key_logs_in_but_cannot_forward(env):
    target = env.target()
    bastion = env.bastion(users={"alice": ["restrict " + env.keys.pub("alice")]})
    r = env.jump("alice", bastion, target, "true")
    assert r.returncode == 255
    assert bastion.wait_event(lambda e: e["event"] == "session.start", trail="alice")
    ev = bastion.wait_event(lambda e: e["event"] == "port", trail="alice")
    assert ev["allowed"] is False and "restrict" in ev["reason"]


def test_two_keys_for_one_login(env):
    target = env.target()
    bastion = env.bastion(users={"alice": [env.keys.pub("alice"), env.keys.pub("bob")]})
    assert env.jump("alice", bastion, target, "echo a").stdout.strip() == "a"
    assert env.jump("bob", bastion, target, "echo b", login="alice").stdout.strip() == "b"
    fps = {e["key_fp"] for e in bastion.events("alice") if e["event"] == "auth" and e["success"]}
    assert fps == {env.keys.fp["alice"], env.keys.fp["bob"]}


def test_rsa_key_works(env):
    target = env.target()
    bastion = env.bastion()
    assert env.jump("bob", bastion, target, "echo rsa-ok").stdout.strip() == "rsa-ok"
    ev = bastion.wait_event(lambda e: e["event"] == "auth" and e["success"], trail="bob")
    assert ev["key_type"] == "ssh-rsa"


def test_command_key_source(env):
    target = env.target()
    # The command runs as `nobody`, which cannot enter pytest's 0700 temp dirs.
    shared = Path(tempfile.mkdtemp(prefix="bastion-keys-", dir="/tmp"))
    shared.chmod(0o755)
    env.p.cleanups.append(lambda: shutil.rmtree(shared, ignore_errors=True))
    script = shared / "keys.sh"
    calls = shared / "calls"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2 $3" >> {calls}\n'
        f'[ "$1" = carol ] && echo \'{env.keys.pub("alice")}\'\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    calls.touch()
    calls.chmod(0o666)
    auth = f'[[auth]]\ntype = "command"\ncommand = "{script} %u %t %f"\nrun_as = "nobody"\ntimeout = "5s"\n'
    bastion = env.bastion(auth=auth)
    assert env.jump("alice", bastion, target, "echo via-command", login="carol").stdout.strip() == "via-command"
    ev = bastion.wait_event(lambda e: e["event"] == "auth" and e["success"], trail="carol")
    assert ev["source"].startswith("command:")
    line = calls.read_text().splitlines()[0]
    assert line == f"carol ssh-ed25519 {env.keys.fp['alice']}", "tokens %u %t %f expanded"
    r = env.jump("alice", bastion, target, "true", login="dave")
    assert r.returncode == 255
