"""The harness's fixture objects, built on harness.py (conftest.py exposes them).

- `run_client(cmd, timeout=60, netns=None)` -> ClientResult(rc, stdout bytes, stderr text);
  a command that outlives its timeout is killed with its whole process group
  and the test FAILS (never hangs, never skips).
- `SshConfigs`: the shared client options (`ssh_config`) and one config per
  user key (`client("alice")`), because `-F` reaches the `-J` connection and
  `-i` does not.
- `Bastion`: the real binary with a config given as a dict (deep-merged over
  the default), as TOML text, or as the default; stdout/stderr captured to
  files; audit trail helpers.
- `Netns`: network namespaces, veth pairs and addresses for topologies.

Everything started here is registered with the test's `Processes` and torn
down when the test ends, pass or fail.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, NamedTuple

from harness import BASTION, Processes, free_port, wait_port

# --------------------------------------------------------------------------
# client commands


class ClientResult(NamedTuple):
    rc: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")


def in_netns(cmd: list, netns: str | None) -> list:
    return ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)


def run_client(cmd, timeout: float = 60, netns: str | None = None, input: bytes | None = None,
               env: dict | None = None, cwd=None) -> ClientResult:
    """Runs a client command in its own process group; kills the group on timeout."""
    cmd = in_netns([str(c) for c in cmd], netns)
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         env=env, cwd=cwd)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        raise AssertionError(f"client command timed out after {timeout}s: {cmd}\n"
                             f"stdout: {out[-2000:]!r}\nstderr: {err.decode(errors='replace')[-2000:]}") from None
    finally:
        # Anything the command left behind in its group (e.g. a jump ssh) goes too.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return ClientResult(p.returncode, out, err.decode(errors="replace"))


# --------------------------------------------------------------------------
# ssh client configuration

CLIENT_OPTIONS = [
    "StrictHostKeyChecking no",
    "UserKnownHostsFile /dev/null",
    "IdentitiesOnly yes",
    "BatchMode yes",
    "LogLevel ERROR",
    "ConnectTimeout 10",
    "ServerAliveInterval 0",
]


class SshConfigs:
    """Client configs: `base` (no identity) and one per key name."""

    def __init__(self, tmp: Path, keys):
        self.dir = tmp / "client"
        self.dir.mkdir(exist_ok=True)
        self.keys = keys
        self.base = self.dir / "ssh_config"
        self.base.write_text("Host *\n" + "".join(f"  {o}\n" for o in CLIENT_OPTIONS))

    def for_key(self, name: str) -> Path:
        """A config whose IdentityFile is key `name`; used with -F by every command (and so by -J)."""
        cfg = self.dir / f"ssh_config_{name}"
        if not cfg.exists():
            # Written aside and renamed into place: clients started from several threads
            # at once must never read a half-written config (an empty one means
            # StrictHostKeyChecking=ask, i.e. "Host key verification failed").
            tmp = self.dir / f".ssh_config_{name}.{os.getpid()}.{threading.get_ident()}"
            tmp.write_text("Host *\n" + "".join(f"  {o}\n" for o in CLIENT_OPTIONS)
                           + f"  IdentityFile {self.keys.path(name)}\n")
            os.replace(tmp, cfg)
        return cfg


# --------------------------------------------------------------------------
# TOML writing (just what bastion configs need)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _is_table_array(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def to_toml(d: dict, prefix: str = "") -> str:
    """Writes a dict as TOML: scalars first, then [tables], then [[arrays of tables]]."""
    out = []
    for k, v in d.items():
        if v is None or isinstance(v, dict) or _is_table_array(v):
            continue
        out.append(f"{_toml_key(k)} = {_toml_value(v)}\n")
    for k, v in d.items():
        if isinstance(v, dict):
            name = f"{prefix}{_toml_key(k)}"
            out.append(f"\n[{name}]\n" + to_toml(v, name + "."))
    for k, v in d.items():
        if _is_table_array(v):
            name = f"{prefix}{_toml_key(k)}"
            for item in v:
                out.append(f"\n[[{name}]]\n" + to_toml(item, name + "."))
    return "".join(out)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` wins; nested dicts merge; lists replace; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------
# the bastion


def by_session(lines: list[str]) -> dict[str, list[str]]:
    """Audit trail lines (JSON text) grouped by their session id, in order."""
    out: dict[str, list[str]] = {}
    for line in lines:
        out.setdefault(json.loads(line)["sid"], []).append(line)
    return out


def read_jsonl(path: Path) -> list[dict]:
    """Parses a JSON-lines file; a last line still being written (no newline yet) is left out."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    out = [json.loads(line) for line in complete if line.strip()]
    if tail.strip():
        try:
            out.append(json.loads(tail))
        except json.JSONDecodeError:
            pass
    return out


class Bastion:
    """`bastion serve --config <tmp>/config.toml`, started and waited for.

    config: None for the default, a dict deep-merged over the default
    (`{"limits": {"per_source": 3}}`, `{"allow": [...]}` replaces the rules,
    `{"sandbox": None}` drops a table), or TOML text written as is, where
    @PORT@, @HOST@, @DIR@, @HOSTKEY@, @USERS@ and @AUDIT@ are replaced.
    users: login -> list of authorized_keys lines (default: alice's and bob's keys).
    """

    def __init__(self, procs: Processes, tmp: Path, keys, config=None, *, users=None, to=None,
                 host: str = "127.0.0.1", port: int | None = None, netns: str | None = None,
                 audit_dir: Path | None = None, args=(), env: dict | None = None,
                 wait: bool = True, start_timeout: float = 20.0):
        self.host = host
        self.port = port or free_port()
        self.netns = netns
        self.dir = tmp / f"bastion-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir(parents=True)
        self.users_dir = self.dir / "users"
        self.users_dir.mkdir()
        if users is None:
            users = {"alice": [keys.pub("alice")], "bob": [keys.pub("bob")]}
        for login, lines in users.items():
            (self.users_dir / login).write_text("".join(f"{line}\n" for line in lines))
        self.audit_dir = Path(audit_dir) if audit_dir else self.dir / "audit"
        self.host_key = keys.path("bastion_host")
        self.default = {
            "listen": [f"{host}:{self.port}"],
            "host_keys": [str(self.host_key)],
            "auth": [{"type": "file", "dir": str(self.users_dir)}],
            "allow": [{"principals": ["*"], "to": list(to) if to else ["127.0.0.1:1-65535"]}],
            "audit": {"dir": str(self.audit_dir), "stdout": True},
            "sandbox": {"enabled": True},
            "limits": {"login_grace": "20s"},
        }
        if config is None:
            text = to_toml(self.default)
        elif isinstance(config, dict):
            text = to_toml(deep_merge(self.default, config))
        else:
            text = str(config)
            for token, value in {"@PORT@": str(self.port), "@HOST@": host, "@DIR@": str(self.dir),
                                 "@HOSTKEY@": str(self.host_key), "@USERS@": str(self.users_dir),
                                 "@AUDIT@": str(self.audit_dir)}.items():
                text = text.replace(token, value)
        self.config_path = self.dir / "config.toml"
        self.config_path.write_text(text)
        self.stdout_path, self.stderr_path = self.dir / "stdout", self.dir / "stderr"
        if not BASTION.exists():
            raise AssertionError(f"the bastion binary {BASTION} does not exist (cargo build --release, or set BASTION_BIN)")
        cmd = in_netns([str(BASTION), "serve", "--config", str(self.config_path), *args], netns)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = procs.start(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env={**os.environ, **(env or {})})
        self.pid = self.proc.pid  # `ip netns exec` execs, so this is the bastion itself
        if wait:
            self.wait_listening(start_timeout)

    # --- start-up --------------------------------------------------------
    def wait_listening(self, timeout: float = 20.0) -> None:
        try:
            wait_port(self.host, self.port, timeout=timeout, netns=self.netns, proc=self.proc, what="bastion")
        except RuntimeError as e:
            raise AssertionError(f"{e}\n--- config ---\n{self.config_path.read_text()}"
                                 f"--- bastion stderr ---\n{self.stderr_text()}") from None

    # --- output ----------------------------------------------------------
    def stdout_text(self) -> str:
        return self.stdout_path.read_bytes().decode(errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_bytes().decode(errors="replace")

    def stdout_events(self) -> list[dict]:
        """The JSON lines on stdout that look like audit events."""
        out = []
        for line in self.stdout_text().splitlines():
            if line.startswith("{"):
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(e, dict) and "event" in e:
                    out.append(e)
        return out

    # --- audit -----------------------------------------------------------
    def trail(self, login: str) -> Path:
        return self.audit_dir / f"{login}.jsonl"

    def audit_events(self, login: str | None = None) -> list[dict]:
        """Events of `<audit_dir>/<login>.jsonl`, or of every trail file (file by file)."""
        if login is not None:
            return read_jsonl(self.trail(login))
        out = []
        for f in sorted(self.audit_dir.glob("*.jsonl")):
            out += read_jsonl(f)
        return out

    def wait_for_event(self, pred: Callable[[dict], bool], timeout: float = 10.0, login: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.audit_events(login):
                if pred(e):
                    return e
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"no matching audit event within {timeout}s in "
                             f"{self.trail(login) if login else self.audit_dir}; have:\n"
                             + "\n".join(json.dumps(e) for e in self.audit_events(login))
                             + f"\n--- bastion stderr ---\n{self.stderr_text()[-4000:]}")

    # --- process ---------------------------------------------------------
    def signal(self, sig) -> None:
        os.kill(self.pid, sig)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"bastion (pid {self.pid}) still running after {timeout}s\n"
                                 f"--- stderr ---\n{self.stderr_text()[-4000:]}") from None


# --------------------------------------------------------------------------
# network namespaces


def sh(cmd: list, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Netns:
    """Namespaces bt-<random>-<tag>, veth pairs and addresses; all deleted at teardown."""

    def __init__(self, procs: Processes):
        self.procs = procs
        self.names: list[str] = []

    def new(self, tag: str) -> str:
        name = f"bt-{uuid.uuid4().hex[:6]}-{tag}"
        sh(["ip", "netns", "add", name])
        self.names.append(name)
        self.procs.cleanups.append(lambda: self._delete(name))
        sh(["ip", "-n", name, "link", "set", "lo", "up"])
        # A new namespace may not route: make it explicit, whatever the host says.
        sh(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        return name

    __call__ = new

    @staticmethod
    def _delete(name: str) -> None:
        # Processes still inside (none should be: they were killed first) would keep it alive.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def veth(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> tuple[str, str]:
        """A veth pair between two namespaces with an address (CIDR) on each end, up."""
        a, b = f"bt{uuid.uuid4().hex[:8]}", f"bt{uuid.uuid4().hex[:8]}"
        sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        # If anything below fails, the pair must not stay behind in the host namespace.
        self.procs.cleanups.append(lambda: subprocess.run(["ip", "link", "del", a], capture_output=True))
        for ns, dev, addr in [(ns_a, a, addr_a), (ns_b, b, addr_b)]:
            sh(["ip", "link", "set", dev, "netns", ns])
            sh(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
        return a, b

    def veth_host(self, ns: str, host_addr: str, ns_addr: str) -> tuple[str, str]:
        """A veth pair between the HOST's namespace (`host_addr`, CIDR) and `ns` (`ns_addr`), up:
        processes on the host (a bastion's monitor) reach the namespace's address and back."""
        a, b = f"bt{uuid.uuid4().hex[:8]}", f"bt{uuid.uuid4().hex[:8]}"
        sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        # Deleting one end deletes the pair; at teardown before the namespace goes.
        self.procs.cleanups.append(lambda: subprocess.run(["ip", "link", "del", a], capture_output=True))
        sh(["ip", "link", "set", b, "netns", ns])
        sh(["ip", "addr", "add", host_addr, "dev", a])
        sh(["ip", "link", "set", a, "up"])
        sh(["ip", "-n", ns, "addr", "add", ns_addr, "dev", b])
        sh(["ip", "-n", ns, "link", "set", b, "up"])
        return a, b

    def route(self, ns: str, dest: str, via: str) -> None:
        sh(["ip", "-n", ns, "route", "add", dest, "via", via])

    def exec(self, ns: str, cmd: list, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *[str(c) for c in cmd]], capture_output=True, text=True, **kw)

    def port_open(self, ns: str | None, host: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connect from `ns` to host:port succeeds within `timeout`."""
        if ns is None:
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    return True
            except OSError:
                return False
        r = subprocess.run(["ip", "netns", "exec", ns, "timeout", str(timeout), "bash", "-c",
                            f"exec 3<>/dev/tcp/{host}/{port}"], capture_output=True)
        return r.returncode == 0


# --------------------------------------------------------------------------
# filesystems


def tmpfs_mount(path: Path, size: str, procs: Processes) -> Path:
    """A tmpfs of `size` at `path`, unmounted at teardown."""
    path.mkdir(parents=True, exist_ok=True)
    sh(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
    procs.cleanups.append(lambda: subprocess.run(["umount", "-l", str(path)], capture_output=True))
    return path


def fill_until_enospc(path: Path, name: str = "filler") -> int:
    """Writes zeros into `path/name` until the filesystem says ENOSPC; returns the bytes written."""
    written = 0
    fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as e:
                if e.errno == 28:  # ENOSPC
                    break
                raise
            if n == 0:
                break
            written += n
        # Smaller writes take the last partial page too.
        for size in (512, 64, 1):
            while True:
                try:
                    written += os.write(fd, b"\0" * size)
                except OSError as e:
                    if e.errno == 28:
                        break
                    raise
    finally:
        os.close(fd)
    return written


# --------------------------------------------------------------------------
# client command lines through a jump host (the bastion, or an OpenSSH sshd
# in the harness self-tests)


class Via:
    """How a client reaches a target through a jump host.

    cfg: the per-user client config (-F); jump: "login@host:port" for -J;
    host/port: the target's sshd as the client names it; netns: where the
    client runs (None: the host's namespace).
    """

    def __init__(self, cfg: Path, jump: str, host: str, port: int, user: str = "root", netns: str | None = None):
        self.cfg, self.jump, self.host, self.port, self.user, self.netns = str(cfg), jump, host, port, user, netns

    @property
    def ssh_e(self) -> str:
        """The `rsync -e` command."""
        return f"ssh -F {self.cfg} -J {self.jump} -p {self.port}"

    def ssh(self, command: str, *extra, timeout: float = 60) -> ClientResult:
        return run_client(["ssh", "-F", self.cfg, "-J", self.jump, "-p", self.port, *extra,
                           f"{self.user}@{self.host}", command], timeout=timeout, netns=self.netns)

    def scp(self, src: str, dst: str, timeout: float = 120) -> ClientResult:
        """scp -J; remote paths are written as ':path'."""
        def spec(p):
            return f"{self.user}@{self.host}{p}" if str(p).startswith(":") else str(p)
        return run_client(["scp", "-q", "-F", self.cfg, "-J", self.jump, "-P", self.port, spec(src), spec(dst)],
                          timeout=timeout, netns=self.netns)

    def sftp_batch(self, batch: str, workdir: Path, timeout: float = 120) -> ClientResult:
        f = workdir / f"sftp-batch-{uuid.uuid4().hex[:6]}"
        f.write_text(batch)
        return run_client(["sftp", "-q", "-F", self.cfg, "-J", self.jump, "-P", self.port, "-b", f,
                           f"{self.user}@{self.host}"], timeout=timeout, netns=self.netns)

    def rsync(self, src: str, dst: str, timeout: float = 120) -> ClientResult:
        def spec(p):
            return f"{self.user}@{self.host}{p}" if str(p).startswith(":") else str(p)
        return run_client(["rsync", "-a", "-e", self.ssh_e, spec(src), spec(dst)], timeout=timeout, netns=self.netns)


def sha256_file(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def random_tree(root: Path) -> Path:
    """A small directory tree with nested dirs, binary and text files, an empty file and a symlink."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    random_file(root / "a" / "b" / "c" / "blob.bin", 700_000)
    random_file(root / "a" / "small.bin", 1234)
    (root / "top.txt").write_text("top\n" * 1000)
    (root / "a" / "b" / "empty").write_bytes(b"")
    (root / "link").symlink_to("top.txt")
    return root


def trees_equal(a: Path, b: Path) -> bool:
    return subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True).returncode == 0


def transfers_roundtrip(via: Via, workdir: Path, remote_dir: Path, size: int = 20 * 1024 * 1024) -> None:
    """scp up and back, sftp put/get and rsync of a tree through `via`; asserts byte equality.

    remote_dir: a directory the target can write (same machine: the target
    sshd runs here, in whatever network namespace).
    """
    src = random_file(workdir / "payload.bin", size)
    want = sha256_file(src)

    r = via.scp(str(src), f":{remote_dir / 'scp-up.bin'}")
    assert r.rc == 0, f"scp up: {r.stderr}"
    r = via.scp(f":{remote_dir / 'scp-up.bin'}", str(workdir / "scp-down.bin"))
    assert r.rc == 0, f"scp down: {r.stderr}"
    assert sha256_file(remote_dir / "scp-up.bin") == want
    assert sha256_file(workdir / "scp-down.bin") == want

    r = via.sftp_batch(f"put {src} {remote_dir / 'sftp-up.bin'}\nget {remote_dir / 'sftp-up.bin'} {workdir / 'sftp-down.bin'}\n",
                       workdir)
    assert r.rc == 0, f"sftp: {r.stderr}"
    assert sha256_file(remote_dir / "sftp-up.bin") == want
    assert sha256_file(workdir / "sftp-down.bin") == want

    tree = random_tree(workdir / "tree")
    r = via.rsync(f"{tree}/", f":{remote_dir / 'tree-copy'}/")
    assert r.rc == 0, f"rsync up: {r.stderr}"
    r = via.rsync(f":{remote_dir / 'tree-copy'}/", f"{workdir / 'tree-back'}/")
    assert r.rc == 0, f"rsync down: {r.stderr}"
    assert trees_equal(tree, remote_dir / "tree-copy"), "rsync up differs"
    assert trees_equal(tree, workdir / "tree-back"), "rsync down differs"
