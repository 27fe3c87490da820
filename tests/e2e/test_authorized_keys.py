"""`bastion authorized-keys` as a real sshd's AuthorizedKeysCommand (the widdix drop-in).

The target sshd runs in a private mount namespace whose /etc/passwd holds the
widdix-spelled local users (widdix created them; here nothing on the host
changes). sshd runs the command as `nobody` with a clean environment, so a
root-owned wrapper under /run sets the moto endpoint, as an operator's wrapper
would set a proxy.
"""

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from aws import aws_env, rsa_key
from fixtures import run_client
from harness import BASTION, SSHD, free_port, wait_port


class AkcTarget:
    def __init__(self, env, proxy_url, users, args, widdix_conf=None):
        self.env = env
        self.run_dir = Path(f"/run/bastion-akc-{uuid.uuid4().hex[:8]}")
        self.run_dir.mkdir(mode=0o755)
        env.p.cleanups.append(lambda: shutil.rmtree(self.run_dir, ignore_errors=True))
        # The disk cache belongs to the AuthorizedKeysCommandUser.
        self.cache = self.run_dir / "cache"
        self.cache.mkdir(mode=0o700)
        os.chown(self.cache, 65534, 65534)
        self.calls_log = self.run_dir / "exit-codes"
        self.calls_log.touch()
        self.calls_log.chmod(0o666)
        if widdix_conf is not None:
            # Where nobody can read it (pytest's temp dirs are 0700).
            conf = self.run_dir / "aws-ec2-ssh.conf"
            conf.write_text(widdix_conf)
            conf.chmod(0o644)
            args = ["--widdix-config", str(conf), *args]
        wrapper = self.run_dir / "akc.sh"
        exports = "".join(f"export {k}='{v}'\n" for k, v in aws_env(proxy_url).items())
        wrapper.write_text("#!/bin/sh\n" + exports +
                           f"{BASTION} authorized-keys {' '.join(args)} --cache-dir {self.cache} \"$@\"\n"
                           f"rc=$?\necho \"$1 $rc\" >> {self.calls_log}\nexit $rc\n")
        wrapper.chmod(0o755)
        passwd = self.run_dir / "passwd"
        passwd.write_text(Path("/etc/passwd").read_text() + "".join(
            f"{u}:*:{3000 + i}:{3000 + i}::/tmp:/bin/sh\n" for i, u in enumerate(users)))
        self.port = free_port()
        cfg = self.run_dir / "sshd_config"
        cfg.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {env.keys.path('target_host')}\n"
            "AuthorizedKeysFile none\n"
            f"AuthorizedKeysCommand {wrapper} %u\nAuthorizedKeysCommandUser nobody\n"
            "PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin no\n")
        self.log = env.tmp / f"akc-sshd-{self.port}.log"
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f"mount --bind {passwd} /etc/passwd && exec {SSHD} -D -e -f {cfg}"]
        self.proc = env.p.start(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        wait_port("127.0.0.1", self.port, proc=self.proc, what="sshd")

    def ssh(self, key_path, user, command="echo ok"):
        return run_client(["ssh", "-i", key_path, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-p", self.port, f"{user}@127.0.0.1", command], timeout=60)

    def exit_codes(self):
        return [line.split() for line in self.calls_log.read_text().splitlines()]


def test_sshd_authorized_keys_command_with_widdix_config(env, iam, iam_proxy):
    path_w, pub_w, _ = rsa_key(env.keys.dir, "wendy")
    path_x, pub_x, _ = rsa_key(env.keys.dir, "xavier")
    iam.create_group("ssh-users")
    for user, pub in [("wendy@example.com", pub_w), ("xavier", pub_x)]:
        iam.create_user(user)
        iam.upload_key(user, pub)
    iam.add_to_group("wendy@example.com", "ssh-users")
    conf = ('IAM_AUTHORIZED_GROUPS="ssh-users"\nLOCAL_MARKER_GROUP="iam-synced-users"\n'
            'SUDOERS_GROUPS=""\nASSUMEROLE=""\n')
    t = AkcTarget(env, iam_proxy.url, ["wendy.at.example.com", "xavier"],
                  ["--cache-ttl", "2s", "--stale-ttl", "1h"], widdix_conf=conf)

    r = t.ssh(path_w, "wendy.at.example.com")
    assert r.rc == 0 and r.stdout.strip() == b"ok", f"{r.stderr}\n{t.log.read_text()}"
    first = iam_proxy.counts()
    assert iam_proxy.count("ListGroupsForUser") == 1 and iam_proxy.count("ListSSHPublicKeys") == 1, first

    # Within --cache-ttl another sshd process answers from the disk cache.
    r = t.ssh(path_w, "wendy.at.example.com")
    assert r.rc == 0
    assert iam_proxy.counts() == first, "the second login cost no IAM call"

    # Not in IAM_AUTHORIZED_GROUPS: no keys.
    r = t.ssh(path_x, "xavier")
    assert r.rc == 255 and "Permission denied" in r.stderr

    # IAM down past --cache-ttl: the disk answer keeps wendy in (stale).
    iam_proxy.set_mode("down")
    time.sleep(2.2)
    r = t.ssh(path_w, "wendy.at.example.com")
    assert r.rc == 0 and r.stdout.strip() == b"ok", r.stderr
    assert iam_proxy.count("ListGroupsForUser") > 1, "the stale login did ask IAM first"
    codes = t.exit_codes()
    # sshd runs the command for the key query and again for the signature.
    assert {tuple(c) for c in codes} == {("wendy.at.example.com", "0"), ("xavier", "0")}, codes


def test_command_output_and_exit_codes(env, iam, iam_proxy):
    _, pub, _ = rsa_key(env.keys.dir, "yara")
    iam.create_user("yara")
    kid = iam.upload_key("yara", pub + " yara@laptop")
    kid2 = iam.upload_key("yara", rsa_key(env.keys.dir, "yara2")[1])
    iam.set_key_status("yara", kid2, "Inactive")
    e = {**os.environ, **aws_env(iam_proxy.url)}

    def akc(*args):
        return subprocess.run([str(BASTION), "authorized-keys", *args], capture_output=True, text=True, env=e,
                              timeout=60)

    r = akc("yara")
    assert r.returncode == 0, r.stderr
    algo, b64 = pub.split()[:2]
    assert r.stdout == f"{algo} {b64} iam:yara:{kid}\n", "Active keys only, re-encoded, no options"

    r = akc("nosuchuser")
    assert r.returncode == 0 and r.stdout == ""
    r = akc("--group", "admins", "yara")
    assert r.returncode == 0 and r.stdout == "", "not a member: no keys"

    # Fail closed: IAM down and no cache -> exit 1, nothing printed, the reason on stderr.
    iam_proxy.set_mode("down")
    r = akc("--timeout", "3s", "yara")
    assert r.returncode == 1 and r.stdout == ""
    assert "IAM is unreachable" in r.stderr and "no earlier answer" in r.stderr, r.stderr

    # Usage errors exit 64 and name the problem.
    bad = env.tmp / "bad.conf"
    bad.write_text('IAM_AUTHORIZED_GROUPS_TAG="Groups"\n')
    r = akc("--widdix-config", str(bad), "yara")
    assert r.returncode == 64 and f"{bad}:1: IAM_AUTHORIZED_GROUPS_TAG is not supported" in r.stderr, r.stderr
    r = akc("--assume-role-arn", "arn:aws:iam::1:role/x", "yara")
    assert r.returncode == 64 and "--assume-role-arn" in r.stderr
