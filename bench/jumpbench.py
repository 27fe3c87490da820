#!/usr/bin/env python3
"""jumpbench: the bastion against an OpenSSH jump host, side by side.

Starts, on 127.0.0.1 only:
  - a target: a real /usr/sbin/sshd that lets a generated ed25519 client key in as root;
  - an OpenSSH jump host: a second /usr/sbin/sshd configured as a jump host
    (local forwarding to the target only, no TTY, ForceCommand /bin/false);
  - the bastion: `bastion serve --config` with the equivalent settings
    (file key source, one allow rule to the target, audit trail, sandbox on);
and drives both jump hosts with the stock `ssh -J`, the same client config,
the same target and the same host key type. Prints one table (openssh |
bastion | ratio bastion/openssh | which direction is better) and writes the
figures as JSON. bench/README.md explains every row.

Python 3 standard library only. Runs as root (the bastion's sandbox needs it,
and so does starting sshd). Everything it starts is killed, its cgroups and
temp dir removed, when it ends: normally, on an error, Ctrl-C or SIGTERM.

    python3 bench/jumpbench.py [--quick] [--size 1GiB] [--rounds N] [--connects N] [--idle N]
                               [--concurrency N] [--load-seconds S] [--json out.json]
                               [--compare old.json] [--bastion-bin PATH] [--openssh-user USER]
                               [--ssh-option KEY=VALUE] [--max-seconds S] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
KIB, MIB, GIB = 1024, 1024 ** 2, 1024 ** 3
SCHEMA = 1

# Defaults of a full run and of --quick (a smoke run: does it run, do numbers come out).
FULL = {"size": GIB, "rounds": 3, "connects": 50, "idle": 100, "concurrency": 8, "load_seconds": 10.0,
        "max_seconds": 3600}
QUICK = {"size": 16 * MIB, "rounds": 1, "connects": 5, "idle": 3, "concurrency": 4, "load_seconds": 2.0,
         "max_seconds": 300}

# The rows of the table, in order: key, label, unit, which direction is better.
METRICS = [
    ("connect_median_ms", "connect latency, median", "ms", "lower"),
    ("connect_p95_ms", "connect latency, p95", "ms", "lower"),
    ("throughput_up_mibps", "throughput up", "MiB/s", "higher"),
    ("throughput_down_mibps", "throughput down", "MiB/s", "higher"),
    ("cpu_s_per_gib", "jump CPU per GiB forwarded", "s", "lower"),
    ("cpu_ms_per_conn", "jump CPU per connection", "ms", "lower"),
    ("mem_kib_per_idle", "memory per idle forwarded session (PSS)", "KiB", "lower"),
    ("logins_per_s", "logins completed per second", "1/s", "higher"),
    ("idle_sessions_per_gib", "idle forwarded sessions held in 1 GiB", "", "higher"),
]
SERVERS = ("openssh", "bastion")


def log(msg: str) -> None:
    print(f"[jumpbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Stop(Exception):
    """Raised in the benchmark's threads once cleanup has started."""


class BenchError(Exception):
    """A failure the benchmark explains itself (no traceback needed)."""


# --------------------------------------------------------------------------
# processes


class Procs:
    """Every process the benchmark starts, each in its own session (process group).

    `close()` kills them all; after it, `popen` refuses, so a thread of the
    login load cannot start a client behind the cleanup's back.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.closed = False

    def popen(self, cmd, **kw) -> subprocess.Popen:
        with self.lock:
            if self.closed:
                raise Stop()
            p = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
            self.live.add(p)
            return p

    @staticmethod
    def _killpg(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, p: subprocess.Popen) -> None:
        """Kills p's whole group (an `ssh -J` also has its proxy `ssh` there) and reaps p."""
        self._killpg(p)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (p.stdin, p.stdout, p.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        with self.lock:
            self.live.discard(p)

    def run(self, cmd, timeout: float, stdin=subprocess.DEVNULL) -> tuple[int, bytes, str, float]:
        """Runs a client command; returns (rc, stdout, stderr, wall seconds). Kills its group on timeout."""
        t0 = time.perf_counter()
        p = self.popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(p)
            raise BenchError(f"command timed out after {timeout:.0f}s: {' '.join(map(str, cmd))}") from None
        finally:
            self.kill(p)
        return p.returncode, out, err.decode(errors="replace"), time.perf_counter() - t0

    def close(self) -> None:
        with self.lock:
            self.closed = True
            live = list(self.live)
        for p in live:
            self._killpg(p)
        for p in live:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"cleanup: pid {p.pid} did not exit after SIGKILL")


# --------------------------------------------------------------------------
# accounting: cgroups (v2, or v1 cpuacct/memory), else the /proc process tree


def _mounts() -> list[tuple[str, str, str, str]]:
    """(mount point, root within the hierarchy, fstype, super options) of every mount."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        sep = parts.index("-")
        out.append((parts[4].replace("\\040", " "), parts[3], parts[sep + 1], parts[sep + 3]))
    return out


def _own_cgroups() -> dict[str, str]:
    """Our cgroup path per hierarchy: '' for v2, else each v1 controller name."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _try_mkdir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        try:
            d.mkdir()
            # Can we move a process in? (Read-only or delegated-elsewhere hierarchies say no.)
            if os.access(d / "cgroup.procs", os.W_OK):
                return d
            d.rmdir()
        except OSError:
            continue
    return None


class Accounting:
    """Where one server's processes are counted: its own cgroup(s), or its process tree.

    cgroup v2 (preferred): every process the server ever forks stays in the
    group (the bastion's workers too: a new cgroup *namespace* changes only
    their view), cpu.stat counts the CPU of exited processes as well,
    cgroup.procs lists the live ones, cgroup.kill ends them all.
    memory.current, when the memory controller is on, is a cross-check of
    the PSS figure. Without v2 (or when it is not writable), cgroup v1
    cpuacct and memory do the same. Without any cgroup: the live process
    tree's utime+stime plus the server's cutime+cstime (reaped children).
    """

    def __init__(self, name: str):
        self.name = name
        self.v2: Path | None = None
        self.v1: dict[str, Path] = {}
        self.root_pid: int | None = None
        tag = f"jumpbench-{os.getpid()}-{name}"
        mounts = _mounts()
        own = _own_cgroups()
        for mnt, root, fstype, _ in mounts:
            if fstype == "cgroup2":
                cands = [Path(mnt) / tag]
                ownpath = own.get("", "/")
                if ownpath not in ("/", ""):
                    cands.append(Path(mnt) / ownpath.lstrip("/") / tag)
                self.v2 = _try_mkdir(cands)
                if self.v2:
                    break
        for ctrl in ("cpuacct", "memory"):
            if ctrl == "cpuacct" and self.v2 is not None:
                continue  # v2's cpu.stat is always there
            if ctrl == "memory" and self.v2 is not None and (self.v2 / "memory.current").exists():
                continue
            for mnt, root, fstype, opts in mounts:
                if fstype == "cgroup" and ctrl in opts.split(","):
                    path = own.get(ctrl, "/")
                    rel = path[len(root):] if root != "/" and path.startswith(root) else path
                    g = _try_mkdir([Path(mnt) / rel.lstrip("/") / tag, Path(mnt) / tag])
                    if g:
                        self.v1[ctrl] = g
                    break

    # --- description -----------------------------------------------------
    def method(self) -> dict:
        cpu = ("cgroup2 cpu.stat usage_usec" if self.v2 else
               "cgroup1 cpuacct.usage" if "cpuacct" in self.v1 else
               "/proc utime+stime of the live tree + cutime+cstime of the server")
        procs = ("cgroup2 cgroup.procs" if self.v2 else
                 "cgroup1 cgroup.procs" if self.v1 else "/proc process tree of the server")
        mem = ("cgroup2 memory.current" if self.v2 and (self.v2 / "memory.current").exists() else
               "cgroup1 memory.usage_in_bytes" if "memory" in self.v1 else None)
        return {"cpu": cpu, "processes": procs, "cgroup_memory": mem,
                "cgroups": [str(g) for g in self.groups()]}

    def groups(self) -> list[Path]:
        return ([self.v2] if self.v2 else []) + list(self.v1.values())

    # --- start -----------------------------------------------------------
    def wrap(self, cmd: list) -> list:
        """cmd, started inside the groups: a shell moves itself in, then execs cmd."""
        if not self.groups():
            return [str(c) for c in cmd]
        script = 'for g in $JUMPBENCH_CGROUPS; do echo $$ > "$g/cgroup.procs" || exit 97; done; exec "$@"'
        return ["sh", "-c", script, "jumpbench-cg", *[str(c) for c in cmd]]

    def env(self) -> dict:
        return {"JUMPBENCH_CGROUPS": " ".join(str(g) for g in self.groups())}

    # --- readings --------------------------------------------------------
    def pids(self) -> list[int]:
        for g in self.groups():
            try:
                return [int(x) for x in (g / "cgroup.procs").read_text().split()]
            except OSError:
                pass
        return _tree(self.root_pid) if self.root_pid else []

    def cpu_seconds(self) -> float:
        if self.v2:
            for line in (self.v2 / "cpu.stat").read_text().splitlines():
                k, v = line.split()
                if k == "usage_usec":
                    return int(v) / 1e6
        if "cpuacct" in self.v1:
            return int((self.v1["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        tck = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in _tree(self.root_pid) if self.root_pid else []:
            f = _stat_fields(pid)
            if f:
                total += int(f[13]) + int(f[14])
                if pid == self.root_pid:
                    total += int(f[15]) + int(f[16])
        return total / tck

    def memory_bytes(self) -> int | None:
        try:
            if self.v2 and (self.v2 / "memory.current").exists():
                return int((self.v2 / "memory.current").read_text())
            if "memory" in self.v1:
                return int((self.v1["memory"] / "memory.usage_in_bytes").read_text())
        except OSError:
            pass
        return None

    # --- end -------------------------------------------------------------
    def kill_all(self) -> None:
        if self.v2 and (self.v2 / "cgroup.kill").exists():
            try:
                (self.v2 / "cgroup.kill").write_text("1")
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)

    def remove(self) -> None:
        for g in self.groups():
            for _ in range(100):
                try:
                    g.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                log(f"cleanup: could not remove cgroup {g}")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat split so that index i is field i+1 of proc(5): [3] ppid, [13] utime, [14] stime,
    [15] cutime, [16] cstime (the command name, which may hold spaces, is skipped)."""
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return [""] * 2 + s[s.rindex(")") + 2:].split()


def _tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f:
                children.setdefault(int(f[3]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
        todo += children.get(pid, [])
    return out


def memory_snapshot(acct: Accounting) -> dict:
    """PSS, USS (private) and RSS summed over all the server's processes (KiB), plus the cgroup's figure."""
    pss = uss = rss = 0
    n = unreadable = 0
    for pid in acct.pids():
        vals = _smaps(pid)
        if vals is None:
            unreadable += 1
            continue
        n += 1
        pss += vals.get("Pss", 0)
        uss += vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)
        rss += vals.get("Rss", 0)
    return {"processes": n, "unreadable": unreadable, "pss_kib": pss, "uss_kib": uss, "rss_kib": rss,
            "cgroup_bytes": acct.memory_bytes()}


def _smaps(pid: int) -> dict[str, int] | None:
    for name in ("smaps_rollup", "smaps"):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except FileNotFoundError:
            if name == "smaps_rollup" and Path(f"/proc/{pid}").exists():
                continue  # kernel older than 4.14: sum smaps
            return None
        except OSError:
            return None
        out: dict[str, int] = {}
        for line in text.splitlines():
            m = re.match(r"^(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
        return out
    return None


# --------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, log_path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before listening\n{tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s\n{tail(log_path)}")


def tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return f"(no {path})"
    return f"--- {path.name} (last {len(lines)} lines) ---\n" + "\n".join(lines)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 256MiB, 1048576)")
    mult = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": 1024 * GIB}[m.group(2).upper()]
    n = int(float(m.group(1)) * mult)
    if n < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return n


def fmt_size(n: int) -> str:
    for unit, mult in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= mult and n % mult == 0:
            return f"{n // mult} {unit}"
    return f"{n} B"


def fmt_num(v) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def finite_or_null(v):
    """v with every NaN or infinity replaced by None, so the JSON stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite_or_null(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_or_null(x) for x in v]
    return v


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least q% of the samples at or below it."""
    s = sorted(samples)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def median(samples: list[float]) -> float:
    s = sorted(samples)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def cmd_output(cmd: list, stderr=True) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + (r.stderr if stderr else "")).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(bastion_bin: Path) -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("model name", "Model", "cpu model"):
                model = v.strip()
                break
    except OSError:
        pass
    git = cmd_output(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"], stderr=False)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model or platform.processor() or platform.machine(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "memory_total_kib": _meminfo("MemTotal"),
        "openssh": cmd_output(["ssh", "-V"]).splitlines()[0] if cmd_output(["ssh", "-V"]) else "",
        "sshd": (cmd_output([SSHD, "-V"]).splitlines() or [""])[0],
        "bastion": cmd_output([str(bastion_bin), "--version"], stderr=False),
        "bastion_bin": str(bastion_bin),
        "git": git,
        "python": platform.python_version(),
    }


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# --------------------------------------------------------------------------
# the world: keys, target, the two jump hosts, the client config


class Server:
    """One running sshd or bastion with its accounting."""

    def __init__(self, name: str, port: int, login: str, proc: subprocess.Popen, acct: Accounting, log_path: Path):
        self.name, self.port, self.login, self.proc, self.acct, self.log_path = name, port, login, proc, acct, log_path
        self.idle_procs = 1

    @property
    def jump(self) -> str:
        return f"{self.login}@127.0.0.1:{self.port}"


class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.accts: list[Accounting] = []
        self.servers: list[Server] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="jumpbench-"))
        self.details: dict = {s: {} for s in SERVERS}

    # --- set-up ----------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        keys = self.tmp / "keys"
        keys.mkdir()
        for name in ("client", "target_host", "jump_host"):
            subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", f"jumpbench-{name}",
                            "-f", str(keys / name)], check=True, timeout=30)
        self.client_key = keys / "client"
        pub = (keys / "client.pub").read_text().strip()
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

        self.client_cfg = self.tmp / "ssh_config"
        self.client_cfg.write_text("Host *\n" + "".join(f"  {o}\n" for o in [
            "StrictHostKeyChecking no", "UserKnownHostsFile /dev/null", "GlobalKnownHostsFile /dev/null",
            "CheckHostIP no", "UpdateHostKeys no", "IdentitiesOnly yes", f"IdentityFile {self.client_key}",
            "BatchMode yes", "LogLevel ERROR", "ConnectTimeout 10", "ServerAliveInterval 0",
            "ControlMaster no", "ControlPath none", "Compression no", "ForwardAgent no", "ForwardX11 no",
            "AddressFamily inet",
        ] + [o.replace("=", " ", 1) for o in a.ssh_option]))

        # Admission limits, the same number on both jump hosts: enough for the load's
        # concurrency and the idle sessions' parallel opening, with room to spare.
        startups = max(64, 4 * a.concurrency)
        sessions = max(1000, 2 * (a.idle + a.concurrency) + 100)

        # The target.
        tdir = self.tmp / "target"
        tdir.mkdir()
        (tdir / "authorized_keys").write_text(pub + "\n")
        self.target_port = free_port()
        self.target = self._sshd("target", tdir, self.target_port, keys / "target_host", [
            "AllowTcpForwarding no", f"MaxStartups {startups}", "LoginGraceTime 30",
            # Commands run as `$SHELL -c …`; Debian's bash sources ~/.bashrc when started by sshd
            # unless SHLVL says it is nested, and root's .bashrc may do anything (pyenv init, …).
            # Neither that nor ~/.ssh/rc is the jump host's cost: keep both out of every figure.
            "SetEnv SHLVL=1", "PermitUserRC no",
        ])

        # The OpenSSH jump host: local forwarding to the target only (as the bastion's allow
        # rule), no TTY, no command, no agent/X11/unix-socket/tunnel forwarding. Its login is an
        # unprivileged account by default: sshd skips post-authentication privilege separation
        # (the second process per connection) for root, which no real jump host relies on.
        jdir = self.tmp / "openssh-jump"
        jdir.mkdir()
        (jdir / "authorized_keys").write_text(pub + "\n")
        # sshd reads authorized_keys with the login's uid: let it through the temp dir.
        for d in (self.tmp, jdir):
            d.chmod(0o711)
        (jdir / "authorized_keys").chmod(0o644)
        if a.openssh_user != "root":
            blocked = [str(d) for d in self.tmp.parents if not d.stat().st_mode & 0o001]
            if blocked:
                raise BenchError(f"{blocked[0]} is not searchable by others, so sshd cannot read the jump "
                                 f"host's authorized_keys as {a.openssh_user}: use a TMPDIR such as /tmp, "
                                 "or --openssh-user root")
        port = free_port()
        proc, acct, lp = self._sshd_proc("openssh", jdir, port, keys / "jump_host", [
            "AllowTcpForwarding local", f"PermitOpen 127.0.0.1:{self.target_port}",
            "PermitTTY no", "ForceCommand /bin/false", "X11Forwarding no", "AllowAgentForwarding no",
            "AllowStreamLocalForwarding no", "PermitTunnel no", "GatewayPorts no",
            f"MaxStartups {startups}", "MaxSessions 10", "LoginGraceTime 20",
        ])
        self.servers.append(Server("openssh", port, a.openssh_user, proc, acct, lp))

        # The bastion, with the equivalent config.
        bdir = self.tmp / "bastion"
        (bdir / "users").mkdir(parents=True)
        (bdir / "users" / "bench").write_text(pub + "\n")
        port = free_port()
        cfg = bdir / "config.toml"
        cfg.write_text(
            f'listen = ["127.0.0.1:{port}"]\n'
            f'host_keys = ["{keys / "jump_host"}"]\n\n'
            f'[[auth]]\ntype = "file"\ndir = "{bdir / "users"}"\n\n'
            f'[[allow]]\nprincipals = ["*"]\nto = ["127.0.0.1:{self.target_port}"]\n\n'
            f'[audit]\ndir = "{bdir / "audit"}"\nstdout = false\n\n'
            f'[sandbox]\nenabled = true\n\n'
            f'[limits]\nlogin_grace = "20s"\nmax_startups = {startups}\nper_source = {startups}\n'
            f'max_sessions = {sessions}\n'
        )
        acct = Accounting("bastion")
        self.accts.append(acct)
        lp = bdir / "bastion.log"
        # The bastion reads every BASTION_* variable as configuration: pass none but the log filter.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_") or k == "BASTION_LOG"}
        env.setdefault("BASTION_LOG", "info")
        with open(lp, "wb") as out:
            proc = self.procs.popen(acct.wrap([a.bastion_bin, "serve", "--config", cfg]),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**env, **acct.env()})
        acct.root_pid = proc.pid
        wait_port(port, proc, "bastion", lp)
        self.servers.append(Server("bastion", port, "bench", proc, acct, lp))

        log(f"target sshd :{self.target_port}, openssh jump :{self.servers[0].port}, "
            f"bastion :{self.servers[1].port}, temp dir {self.tmp}")

    def _sshd_proc(self, name: str, d: Path, port: int, host_key: Path, extra: list[str]):
        lines = [
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}", "PidFile none", "StrictModes no", "UsePAM no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "PrintMotd no", "PrintLastLog no", "UseDNS no",
            *extra,
        ]
        cfg = d / "sshd_config"
        # Newer OpenSSH (9.8+) penalises sources that fail or churn; the load comes from one
        # address, so it is switched off where the option exists.
        for optional in (["PerSourcePenalties no"], []):
            cfg.write_text("\n".join(lines + optional) + "\n")
            r = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                break
        else:
            raise BenchError(f"sshd -t rejects the {name} config: {r.stderr.strip()}\n{cfg.read_text()}")
        acct = Accounting(name)
        self.accts.append(acct)
        lp = d / "sshd.log"
        with open(lp, "wb") as out:
            proc = self.procs.popen(acct.wrap([SSHD, "-D", "-e", "-f", cfg]), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **acct.env()})
        acct.root_pid = proc.pid
        wait_port(port, proc, f"sshd ({name})", lp)
        return proc, acct, lp

    def _sshd(self, name, d, port, host_key, extra) -> Server:
        proc, acct, lp = self._sshd_proc(name, d, port, host_key, extra)
        return Server(name, port, "root", proc, acct, lp)

    # --- teardown --------------------------------------------------------
    def close(self, keep: bool) -> None:
        self.procs.close()
        for acct in self.accts:
            acct.kill_all()
        for acct in self.accts:
            acct.remove()
        if keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- clients ---------------------------------------------------------
    def ssh(self, s: Server, command: str, *extra) -> list:
        return ["ssh", "-F", self.client_cfg, "-J", s.jump, "-p", self.target_port, *extra,
                "root@127.0.0.1", command]

    def connect(self, s: Server, timeout: float = 60) -> float:
        rc, out, err, secs = self.procs.run(self.ssh(s, "true"), timeout=timeout)
        if rc != 0:
            raise BenchError(f"ssh -J {s.jump} … true failed ({rc}): {err.strip()}\n{tail(s.log_path)}")
        return secs

    def algorithms(self, s: Server) -> dict:
        """What the client negotiates with the jump host (kex, host key, cipher, MAC), from ssh -v."""
        _, _, err, _ = self.procs.run(["ssh", "-v", "-F", self.client_cfg, "-p", s.port, f"{s.login}@127.0.0.1",
                                       "true"], timeout=30)
        out = {}
        for key, pat in (("kex", r"kex: algorithm: (\S+)"), ("host_key", r"kex: host key algorithm: (\S+)"),
                         ("cipher", r"kex: server->client cipher: (\S+)"),
                         ("mac", r"kex: server->client cipher: \S+ MAC: (\S+)")):
            m = re.search(pat, err)
            out[key] = m.group(1) if m else "?"
        return out

    def wait_quiet(self, s: Server, timeout: float = 30) -> None:
        """Until the jump host is back to its idle process count (closed sessions gone)."""
        deadline = time.monotonic() + timeout
        while len(s.acct.pids()) > s.idle_procs and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- phases ----------------------------------------------------------
    def phase_latency(self) -> None:
        n = self.args.connects
        log(f"connect latency: {n} × `ssh -J … true` per jump host, alternating")
        samples = {s.name: [] for s in self.servers}
        cpu0 = {s.name: s.acct.cpu_seconds() for s in self.servers}
        tcpu0 = self.target.acct.cpu_seconds()
        for i in range(n):
            order = self.servers if i % 2 == 0 else list(reversed(self.servers))
            for s in order:
                samples[s.name].append(self.connect(s) * 1000)
        tcpu = self.target.acct.cpu_seconds() - tcpu0
        for s in self.servers:
            cpu = s.acct.cpu_seconds() - cpu0[s.name]
            self.details[s.name]["latency"] = {
                "samples_ms": [round(x, 3) for x in samples[s.name]],
                "jump_cpu_s": round(cpu, 6), "connects": n,
                "target_cpu_s_both_jumps": round(tcpu, 6),
            }
            self.details[s.name]["cpu_ms_per_conn"] = cpu * 1000 / n

    def phase_throughput(self) -> None:
        """--rounds transfers of --size each way per jump host, the jump hosts alternating;
        the row is the median round, the CPU per GiB is over all rounds."""
        size, rounds = self.args.size, self.args.rounds
        runs = {(s.name, d): [] for s in self.servers for d in ("up", "down")}
        for r in range(rounds):
            order = self.servers if r % 2 == 0 else list(reversed(self.servers))
            for direction in ("up", "down"):
                for s in order:
                    log(f"throughput {direction} ({r + 1}/{rounds}): {fmt_size(size)} through {s.name}")
                    self.wait_quiet(s)
                    cpu0, tcpu0 = s.acct.cpu_seconds(), self.target.acct.cpu_seconds()
                    secs = self._transfer(s, direction, size)
                    cpu, tcpu = s.acct.cpu_seconds() - cpu0, self.target.acct.cpu_seconds() - tcpu0
                    runs[(s.name, direction)].append({"wall_s": round(secs, 6), "jump_cpu_s": round(cpu, 6),
                                                      "target_cpu_s": round(tcpu, 6), "mibps": size / MIB / secs})
        for (name, direction), rs in runs.items():
            self.details[name][f"throughput_{direction}"] = {
                "bytes": size * len(rs), "rounds": rs,
                "jump_cpu_s": round(sum(x["jump_cpu_s"] for x in rs), 6),
                "mibps": median([x["mibps"] for x in rs]),
            }

    def _transfer(self, s: Server, direction: str, size: int) -> float:
        timeout = 120 + size / (2 * MIB)  # bounded even at 2 MiB/s
        t0 = time.perf_counter()
        if direction == "up":
            src = self.procs.popen(["head", "-c", size, "/dev/zero"], stdout=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                rc, out, err, _ = self.procs.run(self.ssh(s, "wc -c"), timeout=timeout, stdin=src.stdout)
            finally:
                self.procs.kill(src)
        else:
            ssh = self.procs.popen(self.ssh(s, f"head -c {size} /dev/zero"), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                _, out, _, _ = self.procs.run(["wc", "-c"], timeout=timeout, stdin=ssh.stdout)
                try:
                    rc = ssh.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    rc = -1
                err = ssh.stderr.read().decode(errors="replace") if ssh.stderr else ""
            finally:
                self.procs.kill(ssh)
        secs = time.perf_counter() - t0
        got = out.decode(errors="replace").strip()
        if rc != 0 or got != str(size):
            raise BenchError(f"throughput {direction} via {s.name}: rc {rc}, {got!r} bytes of {size}: "
                             f"{err.strip()}\n{tail(s.log_path)}")
        return secs

    def phase_load(self) -> None:
        a = self.args
        for s in self.servers:
            log(f"login load: {a.concurrency} concurrent clients for {a.load_seconds:g}s through {s.name}")
            self.wait_quiet(s)
            ok, fail, errors = 0, 0, []
            lock = threading.Lock()
            cpu0 = s.acct.cpu_seconds()
            start = time.perf_counter()
            deadline = time.monotonic() + a.load_seconds

            def client():
                nonlocal ok, fail
                while time.monotonic() < deadline:
                    try:
                        rc, _, err, _ = self.procs.run(self.ssh(s, "true"), timeout=60)
                    except (Stop, BenchError) as e:
                        rc, err = -1, str(e)
                        if isinstance(e, Stop):
                            return
                    with lock:
                        if rc == 0:
                            ok += 1
                        else:
                            fail += 1
                            if len(errors) < 5:
                                errors.append(err.strip()[-300:])

            threads = [threading.Thread(target=client, daemon=True) for _ in range(a.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=a.load_seconds + 120)
            elapsed = time.perf_counter() - start
            cpu = s.acct.cpu_seconds() - cpu0
            if ok == 0:
                raise BenchError(f"login load via {s.name}: no login completed; errors: {errors}\n{tail(s.log_path)}")
            if fail:
                log(f"  {s.name}: {fail} of {ok + fail} logins failed, e.g. {errors[0]!r}")
            self.details[s.name]["load"] = {
                "concurrency": a.concurrency, "seconds": round(elapsed, 6), "completed": ok, "failed": fail,
                "errors": errors, "jump_cpu_s": round(cpu, 6), "jump_cpu_ms_per_login": cpu * 1000 / ok,
                "logins_per_s": ok / elapsed,
            }

    def phase_idle(self) -> None:
        n = self.args.idle
        for s in self.servers:
            log(f"idle sessions: {n} × `ssh -J … 'echo ready; exec sleep 3600'` held open through {s.name}")
            self.wait_quiet(s)
            time.sleep(0.5)
            base = memory_snapshot(s.acct)
            sessions = self._open_idle(s, n)
            time.sleep(1.0)  # let the last sessions finish their post-login allocations
            held = memory_snapshot(s.acct)
            for p in sessions:
                self.procs.kill(p)
            if held["unreadable"] or base["unreadable"]:
                log(f"  warning: {held['unreadable']} of {s.name}'s processes had no readable smaps")
            per = (held["pss_kib"] - base["pss_kib"]) / n
            cg = None
            if held["cgroup_bytes"] is not None and base["cgroup_bytes"] is not None:
                cg = (held["cgroup_bytes"] - base["cgroup_bytes"]) / KIB / n
            self.details[s.name]["idle"] = {
                "sessions": n, "baseline": base, "held": held,
                "pss_kib_per_session": per,
                "processes_per_session": (held["processes"] - base["processes"]) / n,
                "cgroup_kib_per_session": cg,
            }
            self.wait_quiet(s)

    def _open_idle(self, s: Server, n: int) -> list[subprocess.Popen]:
        """n authenticated sessions through s, each with one forwarded channel, idle; opened a few at a time."""
        batch = max(1, min(self.args.concurrency, 8))
        deadline = time.monotonic() + 60 + 2 * n
        errlog = open(self.tmp / f"idle-{s.name}.err", "ab")
        sessions, pending = [], []
        try:
            for _ in range(n):
                p = self.procs.popen(self.ssh(s, "echo ready; exec sleep 3600"), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=errlog)
                sessions.append(p)
                pending.append(p)
                while len(pending) >= batch:
                    self._await_ready(s, pending.pop(0), deadline)
            for p in pending:
                self._await_ready(s, p, deadline)
        except BaseException:
            for p in sessions:
                self.procs.kill(p)
            raise
        finally:
            errlog.close()
        return sessions

    def _await_ready(self, s: Server, p: subprocess.Popen, deadline: float) -> None:
        buf = b""
        fd = p.stdout.fileno()
        while b"ready\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"idle session through {s.name} not ready in time\n{tail(s.log_path)}")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    p.wait(timeout=10)
                    raise BenchError(f"idle session through {s.name} ended ({p.returncode}) before it was ready\n"
                                     f"{tail(self.tmp / f'idle-{s.name}.err')}\n{tail(s.log_path)}")
                buf += chunk

    # --- the run ---------------------------------------------------------
    def run(self) -> dict:
        a = self.args
        load_start = loadavg()
        self.setup()
        for s in self.servers:
            self.details[s.name]["algorithms"] = self.algorithms(s)
            self.details[s.name]["accounting"] = s.acct.method()
            self.details[s.name]["login"] = s.login
            for _ in range(2):  # warm-up: page cache, the first exec of every binary
                self.connect(s)
            self.wait_quiet(s, timeout=5)
            s.idle_procs = len(s.acct.pids())
            self.details[s.name]["idle_processes"] = s.idle_procs
        self.phase_latency()
        self.phase_throughput()
        self.phase_load()
        self.phase_idle()

        metrics = {}
        for key, label, unit, better in METRICS:
            metrics[key] = {"label": label, "unit": unit, "better": better}
        for s in SERVERS:
            d = self.details[s]
            lat = d["latency"]["samples_ms"]
            up, down = d["throughput_up"], d["throughput_down"]
            per = d["idle"]["pss_kib_per_session"]
            vals = {
                "connect_median_ms": median(lat),
                "connect_p95_ms": percentile(lat, 95),
                "throughput_up_mibps": up["mibps"],
                "throughput_down_mibps": down["mibps"],
                "cpu_s_per_gib": (up["jump_cpu_s"] + down["jump_cpu_s"]) / ((up["bytes"] + down["bytes"]) / GIB),
                "cpu_ms_per_conn": d["cpu_ms_per_conn"],
                "mem_kib_per_idle": per,
                "logins_per_s": d["load"]["logins_per_s"],
                "idle_sessions_per_gib": (GIB / (per * KIB)) if per > 0 else float("nan"),
            }
            for k, v in vals.items():
                metrics[k][s] = v
        for m in metrics.values():
            o, b = m.get("openssh"), m.get("bastion")
            m["ratio"] = b / o if o and math.isfinite(o) and math.isfinite(b) and o != 0 else None

        return {
            "schema": SCHEMA,
            "tool": "bench/jumpbench.py",
            "argv": sys.argv[1:],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "quick": bool(a.quick),
            "params": {"size_bytes": a.size, "rounds": a.rounds, "connects": a.connects, "idle": a.idle,
                       "concurrency": a.concurrency, "load_seconds": a.load_seconds,
                       "openssh_user": a.openssh_user, "ssh_options": a.ssh_option},
            "machine": {**machine_info(a.bastion_bin), "loadavg_start": load_start, "loadavg_end": loadavg()},
            "metrics": metrics,
            "details": self.details,
        }


# --------------------------------------------------------------------------
# output


def table(result: dict) -> str:
    rows = [("metric", "openssh", "bastion", "ratio", "better")]
    for key, label, unit, better in METRICS:
        m = result["metrics"][key]
        name = f"{label} ({unit})" if unit else label
        if key.startswith("throughput"):
            name = f"{label}, {fmt_size(result['params']['size_bytes'])} ({unit})"
        ratio = f"{m['ratio']:.2f}x" if m.get("ratio") is not None else "n/a"
        rows.append((name, fmt_num(m.get("openssh")), fmt_num(m.get("bastion")), ratio, better))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:4], widths[1:4])]
                               + [r[4].ljust(widths[4])]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(result: dict) -> str:
    mc, p, d = result["machine"], result["params"], result["details"]
    alg = "; ".join(f"{s} {d[s]['algorithms']['kex']} / {d[s]['algorithms']['cipher']}"
                    + (f" / {d[s]['algorithms']['mac']}" if d[s]['algorithms']['mac'] not in ("<implicit>", "?") else "")
                    for s in SERVERS)
    out = [
        f"jumpbench: OpenSSH jump host vs bastion on 127.0.0.1{' (--quick: smoke sizes, not figures to quote)' if result['quick'] else ''}",
        f"machine:   {mc['nproc']} CPUs ({mc['cpu_model']}), Linux {mc['kernel']} {mc['arch']}, "
        f"{(mc['memory_total_kib'] or 0) // 1024} MiB RAM",
        f"software:  {mc['openssh']}; {mc['bastion']}{' (git ' + mc['git'] + ')' if mc['git'] else ''}",
        f"load avg:  {' '.join(map(str, mc['loadavg_start']))} at start, {' '.join(map(str, mc['loadavg_end']))} at end",
        f"params:    {p['connects']} connects, {fmt_size(p['size_bytes'])} each way × {p['rounds']}, {p['concurrency']} concurrent "
        f"clients for {p['load_seconds']:g}s, {p['idle']} idle sessions"
        + (f", client options {' '.join(p['ssh_options'])}" if p["ssh_options"] else ""),
        f"kex/cipher (client to jump): {alg}",
        f"accounting: CPU {d['bastion']['accounting']['cpu']}; PSS from /proc/<pid>/smaps_rollup over "
        f"{d['bastion']['accounting']['processes']}",
        "",
        table(result),
        "",
    ]
    notes = []
    for s in SERVERS:
        idle, load = d[s]["idle"], d[s]["load"]
        cg = idle.get("cgroup_kib_per_session")
        notes.append(f"{s}: login {d[s]['login']}; idle: {idle['processes_per_session']:g} process(es)/session"
                     + (f", cgroup memory {fmt_num(cg)} KiB/session" if cg is not None else "")
                     + f"; under load: {fmt_num(load['jump_cpu_ms_per_login'])} ms CPU/login, "
                     f"{load['failed']} failed; the jump alone could do "
                     f"~{fmt_num(1000 / result['metrics']['cpu_ms_per_conn'][s])} logins/s per CPU core")
    out += notes
    return "\n".join(out)


def comparison(result: dict, before: dict, source: str) -> str:
    """The bastion's figures, and its ratios to OpenSSH, now against an earlier JSON; no thresholds.

    The ratio is measured against OpenSSH on the same machine in the same run, so it drifts less
    with the machine than the bastion's own figure does.
    """
    mb = before.get("machine", {})
    rows = [("metric", "bastion before", "now", "change", "ratio before", "now", "better")]
    for key, label, unit, better in METRICS:
        old_m, new_m = before.get("metrics", {}).get(key, {}), result["metrics"][key]
        old, new = old_m.get("bastion"), new_m.get("bastion")
        change = "n/a"
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (old, new)) and old:
            change = f"{(new / old - 1) * 100:+.1f}%"

        def ratio(m):
            return f"{m['ratio']:.2f}x" if isinstance(m.get("ratio"), (int, float)) else "n/a"
        rows.append((f"{label} ({unit})" if unit else label, fmt_num(old), fmt_num(new), change,
                     ratio(old_m), ratio(new_m), better))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    same = before.get("params") == result["params"]
    lines = [f"compared with {source} ({before.get('time', '?')}, git {mb.get('git', '?')}; "
             f"{'same parameters' if same else 'DIFFERENT parameters: ' + json.dumps(before.get('params'))}):"]
    for i, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1])]
                               + [r[-1].ljust(widths[-1])]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark the bastion against an OpenSSH jump host (sshd) on 127.0.0.1, side by side.",
        epilog="See bench/README.md for what each row measures and how.")
    ap.add_argument("--quick", action="store_true",
                    help="smoke-run sizes: 16MiB, 5 connects, 3 idle sessions, 2 s load (under a minute)")
    ap.add_argument("--size", type=parse_size, help="bytes moved each way for throughput (default 1GiB)")
    ap.add_argument("--rounds", type=int, help="transfers of --size each way per jump host; the median counts (default 3)")
    ap.add_argument("--connects", type=int, help="sequential `ssh -J … true` per jump host for latency (default 50)")
    ap.add_argument("--idle", type=int, help="idle forwarded sessions held for the memory figure (default 100)")
    ap.add_argument("--concurrency", type=int, help="concurrent clients in the login load (default 8)")
    ap.add_argument("--load-seconds", type=float, help="duration of the login load per jump host (default 10)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--compare", type=Path, metavar="OLD.json",
                    help="also print the bastion's figures against an earlier --json file (no thresholds)")
    ap.add_argument("--bastion-bin", type=Path,
                    default=Path(os.environ.get("BASTION_BIN", ROOT / "target/release/bastion")),
                    help="the bastion binary (default: $BASTION_BIN or target/release/bastion)")
    ap.add_argument("--openssh-user", default="nobody",
                    help="login on the OpenSSH jump host (default nobody: an unprivileged account, as on a real "
                         "jump host; root makes sshd skip post-auth privilege separation)")
    ap.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra client option for every hop to both jump hosts and the target, e.g. "
                         "KexAlgorithms=curve25519-sha256 to force one key exchange (repeatable)")
    ap.add_argument("--max-seconds", type=int, help="give up (and clean up) after this long (default 3600; quick 300)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, audit trail) for a post-mortem")
    a = ap.parse_args(argv)
    prof = QUICK if a.quick else FULL
    for k, v in prof.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for k in ("rounds", "connects", "idle", "concurrency"):
        if getattr(a, k) < 1:
            ap.error(f"--{k} must be at least 1")
    if a.load_seconds <= 0:
        ap.error("--load-seconds must be positive")
    a.bastion_bin = a.bastion_bin.resolve()
    if a.compare:
        try:
            json.loads(a.compare.read_text())["metrics"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--compare {a.compare}: not a jumpbench JSON file ({e})")
    return a


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_timeout(signum, frame):
    raise TimeoutError("the run took longer than --max-seconds")


def main(argv=None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("jumpbench: must run as root (the bastion's sandbox, and both sshds log in as root)", file=sys.stderr)
        return 2
    missing = [x for x in ("ssh", "ssh-keygen", "head", "wc", "sh") if not shutil.which(x)]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD + " (openssh-server)")
    if not os.access(a.bastion_bin, os.X_OK):
        missing.append(f"{a.bastion_bin} (cargo build --release, or --bastion-bin)")
    try:
        pwd.getpwnam(a.openssh_user)
    except KeyError:
        missing.append(f"the account {a.openssh_user!r} (--openssh-user)")
    if missing:
        print(f"jumpbench: missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    # Enough file descriptors for every idle session, the same for both servers (inherited).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    # SIGINT too, even when started with it ignored (a background job of a script).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(a.max_seconds)
    bench = Bench(a)
    rc = 0
    try:
        result = bench.run()
        signal.alarm(0)
        print(report(result), flush=True)
        if a.compare:
            print("\n" + comparison(result, json.loads(a.compare.read_text()), str(a.compare)), flush=True)
        if a.json:
            tmp = a.json.with_name(a.json.name + ".tmp")
            tmp.write_text(json.dumps(finite_or_null(result), indent=2, allow_nan=False) + "\n")
            tmp.replace(a.json)
            log(f"wrote {a.json}")
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        rc = 130
    except (BenchError, TimeoutError) as e:
        log(f"error: {e}")
        rc = 1
    finally:
        signal.alarm(0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        bench.close(keep=a.keep)
    return rc


if __name__ == "__main__":
    sys.exit(main())
