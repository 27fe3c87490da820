"""The ciphers the bastion offers (`ciphers`, default: AES-GCM only where the CPU does AES-GCM in
hardware, since OpenSSH clients list chacha20-poly1305 and the CTR modes first and the client's
order decides). The expectation for the default is computed here from /proc/cpuinfo, not from the
bastion's own detection."""

import os
import re

from fixtures import run_client
from harness import BASTION, run


def hardware_aes_gcm() -> bool:
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    return {"aes", "pclmulqdq"} <= flags or {"aes", "pmull"} <= flags


def negotiated(client, port, *extra):
    """Connects straight to the bastion with `ssh -v` (the command itself is refused: the bastion
    runs none) and returns (cipher chosen server->client or None, the client's stderr)."""
    r = run_client(["ssh", "-v", "-F", client("alice"), "-p", port, *extra, "alice@127.0.0.1", "true"])
    m = re.search(r"kex: server->client cipher: (\S+)", r.stderr)
    return (m.group(1) if m else None), r.stderr


def jump(client, port, target, *extra):
    return run_client(["ssh", "-F", client("alice"), *extra, "-J", f"alice@127.0.0.1:{port}", "-p", target.port,
                       "root@127.0.0.1", "echo ok"])


def test_default_follows_the_hardware(bastion, client, sshd_target):
    target = sshd_target()
    b = bastion(to=[f"127.0.0.1:{target.port}"])
    cipher, err = negotiated(client, b.port)
    want = "aes128-gcm@openssh.com" if hardware_aes_gcm() else "chacha20-poly1305@openssh.com"
    assert cipher == want, err
    r = jump(client, b.port, target)
    assert r.rc == 0 and r.stdout == b"ok\n", r.stderr
    # A client that only speaks ChaCha20-Poly1305 gets in only where it is offered.
    cipher, err = negotiated(client, b.port, "-c", "chacha20-poly1305@openssh.com")
    if hardware_aes_gcm():
        assert cipher is None and "no matching cipher found" in err, err
    else:
        assert cipher == "chacha20-poly1305@openssh.com", err
    # The start-up line says what is offered and why.
    assert '"ciphers_automatic":true' in b.stderr_text() or "ciphers_automatic=true" in b.stderr_text(), \
        b.stderr_text()[-2000:]


def test_configured_ciphers_are_the_only_ones(bastion, client, sshd_target):
    target = sshd_target()
    b = bastion({"ciphers": ["chacha20-poly1305@openssh.com", "aes256-ctr"]}, to=[f"127.0.0.1:{target.port}"])
    cipher, err = negotiated(client, b.port)
    assert cipher == "chacha20-poly1305@openssh.com", err
    cipher, err = negotiated(client, b.port, "-c", "aes256-ctr")
    assert cipher == "aes256-ctr", err
    cipher, err = negotiated(client, b.port, "-c", "aes128-gcm@openssh.com")
    assert cipher is None and "no matching cipher found" in err, err
    r = jump(client, b.port, target)
    assert r.rc == 0 and r.stdout == b"ok\n", r.stderr


def test_an_unknown_cipher_is_a_config_error(env, tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    f = tmp_path / "c.toml"
    f.write_text(f'ciphers = ["aes128-gcm@openssh.com", "aes128-cbc"]\nhost_keys = ["{env.keys.path("bastion_host")}"]\n'
                 f'[[auth]]\ntype = "file"\ndir = "{users}"\n')
    r = run([str(BASTION), "check-config", "--config", str(f)], env=dict(os.environ))
    assert r.returncode == 64, r.stderr
    assert re.search(r"ciphers\[1\]: unknown or unsupported cipher \"aes128-cbc\"", r.stderr), r.stderr
