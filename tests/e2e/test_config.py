"""bastion check-config, serve with bad configs, --version."""

import os
import re
import socket

from harness import BASTION, free_port, run


def check(path, env=None):
    return run([str(BASTION), "check-config", "--config", str(path)], env={**os.environ, **(env or {})})


def base(env, tmp_path, extra_top="", extra=""):
    users = tmp_path / "users"
    users.mkdir(exist_ok=True)
    return (f'{extra_top}listen = ["127.0.0.1:2222"]\nhost_keys = ["{env.keys.path("bastion_host")}"]\n'
            f'[[auth]]\ntype = "file"\ndir = "{users}"\n{extra}')


def test_version():
    r = run([str(BASTION), "--version"])
    assert r.returncode == 0 and re.fullmatch(r"bastion \d+\.\d+\.\d+\n", r.stdout)


def test_valid_config(env, tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text(base(env, tmp_path, extra='[[allow]]\nprincipals = ["*"]\nto = ["10.0.0.0/8:22", "db.internal:5432"]\n'))
    r = check(f)
    assert r.returncode == 0, r.stderr
    assert "configuration is valid" in r.stdout


CASES = [
    # (name, text after the base, key, message fragment)
    ("unknown key", None, "lisen", "unknown key"),
    ("wrong type", "[limits]\nmax_startups = \"many\"\n", "limits.max_startups", "integer"),
    ("bad duration", "[limits]\nlogin_grace = \"soon\"\n", "limits.login_grace", "soon"),
    ("per_source above max_startups", "[limits]\nmax_startups = 2\nper_source = 5\n", "limits.per_source", "max_startups"),
    ("bad CIDR", "[[allow]]\nprincipals = [\"*\"]\nto = [\"10.0.0.0/33:22\"]\n", "allow[0].to[0]", "10.0.0.0/33"),
    ("unknown auth type", "[[auth]]\ntype = \"ldap\"\n", "auth[1].type", "ldap"),
    ("eic trust bundle", "[[auth]]\ntype = \"eic\"\nca_bundle = \"/nonexistent/ca.pem\"\n", "auth[1].ca_bundle", "cannot read"),
    ("eic os user", "[eic]\nos_users = [\"ec2 user\"]\n", "eic.os_users[0]", "not a user name"),
    ("tag target", "[[allow]]\nprincipals = [\"*\"]\nto = [\"tag:env\"]\n", "allow[0].to[0]", "tag:KEY=VALUE"),
    ("iam role ARN", "[[auth]]\ntype = \"iam\"\nassume_role_arn = \"arn:aws:iam::1:role/x\"\n", "auth[1].assume_role_arn", "not an IAM role ARN"),
]


def test_each_malformed_config_names_key_and_file(env, tmp_path):
    for i, (name, extra, key, fragment) in enumerate(CASES):
        f = tmp_path / f"bad{i}.toml"
        if extra is None:
            f.write_text('lisen = ["127.0.0.1:1"]\n' + base(env, tmp_path))
        else:
            f.write_text(base(env, tmp_path, extra=extra))
        r = check(f)
        assert r.returncode == 64, f"{name}: {r.returncode} {r.stderr}"
        line = next((ln for ln in r.stderr.splitlines() if ln.startswith("error: ") and f": {key}: " in ln), None)
        assert line, f"{name}: no error line for {key} in:\n{r.stderr}"
        assert str(f) in line, f"{name}: the file is not named: {line}"
        assert fragment in line, f"{name}: {fragment!r} not in {line}"
    r = check(tmp_path / "bad0.toml")
    assert "hint: did you mean listen?" in r.stderr


def test_missing_host_key_file_has_a_hint(env, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(base(env, tmp_path).replace(str(env.keys.path("bastion_host")), "/nonexistent/hostkey"))
    r = check(f)
    assert r.returncode == 64
    assert "host_keys[0]" in r.stderr and "/nonexistent/hostkey" in r.stderr
    assert "hint:" in r.stderr and "ssh-keygen" in r.stderr


def test_all_problems_are_listed_together(env, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(base(env, tmp_path, extra_top='bogus = 1\n', extra="[limits]\nper_source = 0\nshutdown_grace = \"x\"\n"))
    r = check(f)
    assert r.returncode == 64
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 3, r.stderr
    assert {k for k in ["bogus", "limits.per_source", "limits.shutdown_grace"] if any(f": {k}: " in e for e in errors)} == \
        {"bogus", "limits.per_source", "limits.shutdown_grace"}


def test_env_var_errors_name_the_variable(env, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(base(env, tmp_path))
    r = check(f, env={"BASTION_LIMITS__MAX_STARTUPS": "abc"})
    assert r.returncode == 64
    assert "environment variable BASTION_LIMITS__MAX_STARTUPS" in r.stderr
    r = check(f, env={"BASTION_LIMITS__MAX_STARTUPS": "12"})
    assert r.returncode == 0, r.stderr


def test_toml_syntax_error(env, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("listen = [\n")
    r = check(f)
    assert r.returncode == 64 and str(f) in r.stderr and "line" in r.stderr


def test_serve_with_a_bad_config_exits_64_without_binding(env, tmp_path):
    port = free_port()
    f = tmp_path / "c.toml"
    f.write_text(base(env, tmp_path).replace("127.0.0.1:2222", f"127.0.0.1:{port}") + "[limits]\nmax_startups = -1\n")
    r = run([str(BASTION), "serve", "--config", str(f)], timeout=20)
    assert r.returncode == 64, r.stderr
    assert "limits.max_startups" in r.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing may listen"
