"""End-to-end harness: real OpenSSH clients, the real bastion binary, real sshd targets.

Nothing is mocked. Every process a test starts is killed, and every network
namespace and mount removed, when the test ends (pass or fail).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASTION = Path(os.environ.get("BASTION_BIN", ROOT / "target/release/bastion"))
SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 20.0, netns: str | None = None, proc=None, what="server") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        if netns:
            r = subprocess.run(["ip", "netns", "exec", netns, "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"],
                               capture_output=True)
            if r.returncode == 0:
                return
        else:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout}s")


def run(cmd, timeout=60, check=False, **kw) -> subprocess.CompletedProcess:
    """Runs a client command; returns the CompletedProcess with text stdout/stderr."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stderr}")
    return r


def keygen(path: Path, kind: str = "ed25519") -> str:
    args = ["ssh-keygen", "-q", "-N", "", "-f", str(path), "-t", kind]
    if kind == "rsa":
        args += ["-b", "3072"]
    subprocess.run(args, check=True)
    out = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True).stdout
    return out.split()[1]  # SHA256:...


class Processes:
    """Everything started during one test, torn down at the end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.cleanups: list = []

    def start(self, cmd, **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            # The whole group, even when its leader is gone (a jump ssh, a worker).
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # never let one stuck process skip the rest
                print(f"teardown: pid {p.pid} did not exit after SIGKILL")
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - best-effort teardown
                print(f"teardown: {e}")


class Keys:
    def __init__(self, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.fp = {}
        for name, kind in [("alice", "ed25519"), ("bob", "rsa"), ("mallory", "ed25519"), ("bastion_host", "ed25519"), ("target_host", "ed25519")]:
            self.fp[name] = keygen(d / name, kind)

    def path(self, name: str) -> Path:
        return self.dir / name

    def pub(self, name: str) -> str:
        return (self.dir / f"{name}.pub").read_text().strip()


class Env:
    """One test's world: a temp dir, keys, client configs, targets, bastions."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.p = Processes()
        self.keys = Keys(tmp / "keys")

    # --- clients ---------------------------------------------------------
    def client_config(self, user: str) -> Path:
        """An ssh_config for `user`'s key; -F is passed on to the -J connection, -i is not."""
        cfg = self.tmp / f"ssh_config_{user}"
        if not cfg.exists():
            cfg.write_text(
                "Host *\n"
                "  StrictHostKeyChecking no\n"
                "  UserKnownHostsFile /dev/null\n"
                "  IdentitiesOnly yes\n"
                f"  IdentityFile {self.keys.path(user)}\n"
                "  BatchMode yes\n"
                "  LogLevel ERROR\n"
                "  ConnectTimeout 10\n"
            )
        return cfg

    def ssh(self, user: str, *args, timeout=60, netns: str | None = None) -> subprocess.CompletedProcess:
        cmd = ["ssh", "-F", str(self.client_config(user)), *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        return run(cmd, timeout=timeout)

    def jump(self, user: str, bastion: "Bastion", target: "Target", command: str, login=None, timeout=60, extra=()) -> subprocess.CompletedProcess:
        login = login or user
        return self.ssh(user, "-J", f"{login}@{bastion.host}:{bastion.port}", "-p", str(target.port), *extra,
                        f"root@{target.host}", command, timeout=timeout)

    # --- targets ---------------------------------------------------------
    def target(self, host="127.0.0.1", port=None, netns=None) -> "Target":
        port = port or free_port()
        return Target(self, host, port, netns)

    # --- bastions --------------------------------------------------------
    def bastion(self, **kw) -> "Bastion":
        return Bastion(self, **kw)

    # --- network namespaces ----------------------------------------------
    def netns(self, tag: str) -> str:
        name = f"bt-{uuid.uuid4().hex[:6]}-{tag}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.p.cleanups.append(lambda: subprocess.run(["ip", "netns", "del", name], check=False))
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def veth(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> None:
        a, b = f"v{uuid.uuid4().hex[:7]}", f"v{uuid.uuid4().hex[:7]}"
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
        for ns, dev, addr in [(ns_a, a, addr_a), (ns_b, b, addr_b)]:
            subprocess.run(["ip", "link", "set", dev, "netns", ns], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)


class Target:
    """A real OpenSSH sshd accepting alice's and bob's keys for root."""

    def __init__(self, env: Env, host: str, port: int, netns: str | None):
        self.host, self.port, self.netns = host, port, netns
        # Unique even for the same host:port in different namespaces.
        d = env.tmp / f"target_{port}_{uuid.uuid4().hex[:6]}"
        d.mkdir()
        ak = d / "authorized_keys"
        ak.write_text(env.keys.pub("alice") + "\n" + env.keys.pub("bob") + "\n")
        cfg = d / "sshd_config"
        cfg.write_text(
            f"Port {port}\nListenAddress {host}\nHostKey {env.keys.path('target_host')}\n"
            f"AuthorizedKeysFile {ak}\nPidFile none\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nAllowTcpForwarding yes\n"
            "MaxStartups 100\n"
        )
        cmd = [SSHD, "-D", "-e", "-f", str(cfg)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.log = open(d / "sshd.log", "w")
        self.proc = env.p.start(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(host, port, netns=netns, proc=self.proc, what="sshd")


class Bastion:
    """The real bastion binary with a config file written for this test."""

    def __init__(self, env: Env, allow=None, users=None, limits=None, extra="", audit_dir=None,
                 netns=None, host="127.0.0.1", port=None, auth=None, wait=True, stdout_audit=True):
        self.env = env
        self.host, self.port = host, port or free_port()
        self.dir = env.tmp / f"bastion_{self.port}"
        self.dir.mkdir()
        self.users = self.dir / "users"
        self.users.mkdir()
        for login, lines in (users if users is not None else {"alice": [env.keys.pub("alice")], "bob": [env.keys.pub("bob")]}).items():
            (self.users / login).write_text("\n".join(lines) + "\n")
        self.audit_dir = Path(audit_dir) if audit_dir else self.dir / "audit"
        allow = allow if allow is not None else [(["*"], ["127.0.0.1:1-65535"])]
        text = f'listen = ["{host}:{self.port}"]\nhost_keys = ["{env.keys.path("bastion_host")}"]\n'
        text += auth if auth is not None else f'[[auth]]\ntype = "file"\ndir = "{self.users}"\n'
        for principals, to in allow:
            text += f"[[allow]]\nprincipals = {json.dumps(principals)}\nto = {json.dumps(to)}\n"
        text += f'[audit]\ndir = "{self.audit_dir}"\nstdout = {"true" if stdout_audit else "false"}\n'
        text += "[limits]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in (limits or {}).items())
        text += extra
        self.config = self.dir / "bastion.toml"
        self.config.write_text(text)
        self.out_path, self.err_path = self.dir / "stdout", self.dir / "stderr"
        cmd = [str(BASTION), "serve", "--config", str(self.config)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.netns = netns
        self.proc = env.p.start(cmd, stdout=open(self.out_path, "w"), stderr=open(self.err_path, "w"),
                                env={**os.environ, "BASTION_LOG": "info"})
        self.pid = self.proc.pid
        if wait:
            try:
                wait_port(host, self.port, netns=netns, proc=self.proc, what="bastion")
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n--- bastion stderr ---\n{self.stderr()}") from None

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def events(self, trail: str | None = None) -> list[dict]:
        files = [self.audit_dir / f"{trail}.jsonl"] if trail else sorted(self.audit_dir.glob("*.jsonl"))
        out = []
        for f in files:
            if f.exists():
                out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        return out

    def wait_event(self, pred, trail=None, timeout=10.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in self.events(trail):
                if pred(e):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no matching audit event within {timeout}s; have: {self.events(trail)}")

    def signal(self, sig) -> None:
        # ip netns exec execs the bastion, so the pid is the bastion's.
        os.kill(self.proc.pid, sig)

    def wait(self, timeout=30) -> int:
        return self.proc.wait(timeout=timeout)


def proc_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def tmpfs(path: Path, size: str, cleanups: list) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    cleanups.append(lambda: subprocess.run(["umount", "-l", str(path)], check=False))


def fill(path: Path) -> None:
    """Fills the filesystem holding `path` until ENOSPC."""
    with open(path / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
