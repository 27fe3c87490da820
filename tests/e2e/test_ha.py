"""HA behind a real HAProxy: two bastions with one host key, health-checked on /healthz.

HAProxy (TCP mode, roundrobin) balances `ssh -J` connections over two bastions and
checks each one's `health_listen` with `GET /healthz` (200 = in service). The client
checks host keys strictly against one known_hosts entry for the HAProxy address, so
every connection that lands on either bastion proves they present the same key.
Then one bastion is SIGKILLed (HAProxy marks it down, new connections land on the
survivor, a live session there carries on), and the survivor is SIGTERMed (its
/healthz turns 503, HAProxy marks it down, its live session runs to its end, and the
process exits by itself when that session ends, long before shutdown_grace).
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from harness import free_port, wait_port

GRACE_S = 20          # limits.shutdown_grace of both bastions
INTER_MS, FALL, RISE = 300, 2, 2


# --------------------------------------------------------------------------
# HAProxy


class HAProxy:
    """`haproxy -f <cfg> -db` in TCP mode in front of the bastions, with a stats socket."""

    def __init__(self, env, servers: list[tuple[str, int, int]]):
        self.port = free_port()
        self.dir = env.tmp / "haproxy"
        self.dir.mkdir()
        self.sock = self.dir / "admin.sock"
        if len(str(self.sock)) > 100:  # sun_path is 108 bytes
            self.sock = Path(f"/tmp/bt-haproxy-{uuid.uuid4().hex[:8]}.sock")
            env.p.cleanups.append(lambda: self.sock.unlink(missing_ok=True))
        lines = [
            "global",
            f"  stats socket {self.sock} mode 600 level admin",
            "  log stdout format raw local0 info",
            "defaults",
            "  mode tcp",
            "  log global",
            "  option tcplog",
            "  timeout connect 2s",
            "  timeout client 60s",
            "  timeout server 60s",
            "  timeout check 1s",
            # A connection that reached a dead server before its checks failed is
            # retried (after a refusal, 1 s apart) and sent to another server on the last retry.
            "  retries 2",
            "  option redispatch",
            "listen ssh",
            f"  bind 127.0.0.1:{self.port}",
            "  balance roundrobin",
            "  option httpchk GET /healthz",
            "  http-check expect status 200",
        ]
        for name, port, health in servers:
            lines.append(f"  server {name} 127.0.0.1:{port} check port {health} "
                         f"inter {INTER_MS}ms fall {FALL} rise {RISE}")
        self.cfg = self.dir / "haproxy.cfg"
        self.cfg.write_text("\n".join(lines) + "\n")
        r = subprocess.run(["haproxy", "-c", "-f", str(self.cfg)], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, f"haproxy -c: {r.stdout}{r.stderr}\n{self.cfg.read_text()}"
        self.out_path = self.dir / "haproxy.log"
        with open(self.out_path, "wb") as out:
            self.proc = env.p.start(["haproxy", "-f", str(self.cfg), "-db"], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_port("127.0.0.1", self.port, timeout=10, proc=self.proc, what="haproxy")
        except RuntimeError as e:
            raise AssertionError(f"{e}\n{self.log()}") from None
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert time.monotonic() < deadline, f"no haproxy stats socket {self.sock}\n{self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.out_path.read_bytes().decode(errors="replace")[-4000:]

    def command(self, line: str, timeout: float = 5.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, dict]:
        """`show stat` rows of the backend's servers: name -> {status, check_status, check_code, ...}."""
        text = self.command("show stat")
        assert text.startswith("# "), f"show stat: {text!r}"
        rows = csv.DictReader(io.StringIO(text[2:]))
        out = {}
        for row in rows:
            if row.get("pxname") == "ssh" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                row["check_status"] = (row.get("check_status") or "").lstrip("* ").strip()
                out[row["svname"]] = row
        return out

    def wait_server(self, name: str, pred, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            row = self.servers()[name]
            if pred(row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy server {name}: not {what} within {timeout}s: "
                                     f"status={row['status']!r} check_status={row['check_status']!r} "
                                     f"check_code={row.get('check_code')!r} last_chk={row.get('last_chk')!r}\n"
                                     f"--- haproxy log ---\n{self.log()}")
            time.sleep(0.05)


def up(row) -> bool:
    return row["status"] == "UP" and row["check_status"] == "L7OK" and row.get("check_code") == "200"


def down(row) -> bool:
    return row["status"] == "DOWN"


# --------------------------------------------------------------------------
# clients


def strict_client(tmp: Path, keys, name: str, known_hosts: Path) -> Path:
    """A client config that checks host keys strictly against `known_hosts` only."""
    d = tmp / "ha-client"
    d.mkdir(exist_ok=True)
    cfg = d / f"ssh_config_{name}_{known_hosts.name}"
    cfg.write_text("Host *\n" + "".join(f"  {o}\n" for o in [
        "StrictHostKeyChecking yes",
        f"UserKnownHostsFile {known_hosts}",
        "GlobalKnownHostsFile /dev/null",
        "UpdateHostKeys no",
        "CheckHostIP no",
        "IdentitiesOnly yes",
        f"IdentityFile {keys.path(name)}",
        "BatchMode yes",
        "LogLevel ERROR",
        "ConnectTimeout 10",
        "ServerAliveInterval 0",
    ]))
    return cfg


class LiveSession:
    """A long-lived `ssh -J` session whose remote shell echoes each line it reads."""

    REMOTE = 'echo started; while read -r l; do echo "echo:$l"; done; echo done'

    def __init__(self, env, cmd: list):
        self.proc = env.p.start([str(c) for c in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = b""

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def read_line(self, timeout: float) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"live session: no line within {timeout}s (have {self.buf!r}); "
                                     f"rc={self.proc.poll()} stderr: {self._stderr()}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"live session: EOF (have {self.buf!r}); rc={self.proc.wait(5)} "
                                         f"stderr: {self._stderr()}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")

    def ping(self, msg: str, timeout: float = 10) -> None:
        assert self.proc.poll() is None, f"live session ended (rc {self.proc.returncode}): {self._stderr()}"
        try:
            self.proc.stdin.write(f"{msg}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"live session: stdin closed; rc={self.proc.poll()}") from None
        assert self.read_line(timeout) == f"echo:{msg}"

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        """Closes stdin (the remote loop ends); returns (exit code, the last line)."""
        self.proc.stdin.close()
        last = self.read_line(timeout)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"live session did not exit {timeout}s after its last line") from None
        return rc, last


def healthz(port: int) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/healthz")
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def sessions(b, login: str = "alice") -> list[str]:
    """Session ids of allowed forwards in `login`'s trail on bastion `b`."""
    return [e["sid"] for e in b.audit_events(login) if e["event"] == "port" and e.get("allowed")]


# --------------------------------------------------------------------------


def test_haproxy_failover_and_drain(env, keys, bastion, sshd_target, run_client):
    target = sshd_target()
    hp1, hp2 = free_port(), free_port()
    common = {"limits": {"shutdown_grace": f"{GRACE_S}s"}}
    b1 = bastion(config={**common, "health_listen": f"127.0.0.1:{hp1}"}, to=[f"127.0.0.1:{target.port}"])
    b2 = bastion(config={**common, "health_listen": f"127.0.0.1:{hp2}"}, to=[f"127.0.0.1:{target.port}"])
    health = {b1: hp1, b2: hp2}
    # One host key for both: that is what lets a client behind the balancer pin one key.
    assert b1.host_key == b2.host_key == keys.path("bastion_host")
    for b in (b1, b2):
        assert f'host_keys = ["{keys.path("bastion_host")}"]' in b.config_path.read_text()
        assert healthz(health[b]) == (200, "ok\n")

    ha = HAProxy(env, [("b1", b1.port, hp1), ("b2", b2.port, hp2)])
    name = {b1: "b1", b2: "b2"}
    for n in ("b1", "b2"):
        ha.wait_server(n, up, timeout=10, what="UP (L7OK 200)")

    # The client knows the balancer's address with the bastion host key, and the
    # target with its own, and nothing else: strict checking.
    known = env.tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{ha.port} {keys.pub('bastion_host')}\n"
                     f"[127.0.0.1]:{target.port} {keys.pub('target_host')}\n")
    alice, bob = (strict_client(env.tmp, keys, n, known) for n in ("alice", "bob"))
    jump = f"127.0.0.1:{ha.port}"

    def through(cfg, command, login="alice", timeout=30):
        return run_client(["ssh", "-F", cfg, "-J", f"{login}@{jump}", "-p", target.port, "root@127.0.0.1", command],
                          timeout=timeout)

    # Negative control: the same path with another key pinned is refused before login.
    wrong = env.tmp / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{ha.port} {keys.pub('mallory')}\n"
                     f"[127.0.0.1]:{target.port} {keys.pub('target_host')}\n")
    r = through(strict_client(env.tmp, keys, "alice", wrong), "echo never")
    assert r.rc == 255 and b"never" not in r.stdout
    assert "Host key verification failed" in r.stderr or "IDENTIFICATION HAS CHANGED" in r.stderr, r.stderr
    assert sessions(b1) == sessions(b2) == []

    # Roundrobin over two healthy bastions: strictly alternating, every one verified.
    for i in range(6):
        r = through(alice, f"echo hi-{i}")
        assert r.rc == 0 and r.stdout == f"hi-{i}\n".encode(), f"connection {i}: rc={r.rc} {r.stderr}"
    deadline = time.monotonic() + 10
    while len(sessions(b1)) + len(sessions(b2)) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (len(sessions(b1)), len(sessions(b2))) == (3, 3), \
        "roundrobin lands 3 of 6 connections on each bastion, both with the same host key"

    # A long-lived session (bob) through the balancer; its trail says which bastion carries it.
    live = LiveSession(env, ["ssh", "-F", bob, "-J", f"bob@{jump}", "-p", target.port, "root@127.0.0.1",
                             LiveSession.REMOTE])
    assert live.read_line(30) == "started"
    deadline = time.monotonic() + 10
    while not (sessions(b1, "bob") or sessions(b2, "bob")) and time.monotonic() < deadline:
        time.sleep(0.05)
    carriers = [b for b in (b1, b2) if sessions(b, "bob")]
    assert len(carriers) == 1, "the live session is on exactly one bastion"
    survivor = carriers[0]
    other = b2 if survivor is b1 else b1
    live.ping("before-kill")

    # SIGKILL the other bastion: no goodbye, its ports just vanish. Roundrobin sends the
    # next connection to it; HAProxy's checks must take it out, and that connection
    # (started before they do) must still get through, on the survivor.
    before = len(sessions(survivor))
    down_at: dict[str, float] = {}

    def watch_down():
        while time.monotonic() - t_kill < 10:
            try:
                if down(ha.servers()[name[other]]):
                    down_at["t"] = time.monotonic() - t_kill
                    return
            except OSError:
                pass
            time.sleep(0.02)

    t_kill = time.monotonic()
    other.signal(signal.SIGKILL)
    watcher = threading.Thread(target=watch_down, daemon=True)
    watcher.start()
    assert other.wait(timeout=10) == -signal.SIGKILL
    attempts, first_ok = [], None
    while time.monotonic() - t_kill < 5:
        t = time.monotonic()
        r = through(alice, "echo after-kill", timeout=15)
        attempts.append((round(t - t_kill, 2), r.rc, round(time.monotonic() - t, 2)))
        if r.rc == 0:
            assert r.stdout == b"after-kill\n"
            first_ok = time.monotonic() - t_kill
            break
        time.sleep(0.1)
    assert first_ok is not None, f"no connection through haproxy within 5 s of the kill: {attempts}"
    assert [a[1] for a in attempts] == [0], f"with redispatch no client sees the failover: {attempts}"
    watcher.join(timeout=12)
    row = ha.servers()[name[other]]
    assert "t" in down_at and down(row), f"haproxy never marked {name[other]} DOWN: {row}\n{ha.log()}"
    t_down = down_at["t"]
    assert row["check_status"] in ("L4CON", "L4TOUT"), row["check_status"]
    assert t_down < 3, f"fall {FALL} x inter {INTER_MS}ms, yet DOWN only after {t_down:.2f}s"
    assert attempts[0][0] < t_down, "the first connection after the kill started before the DOWN"
    # Now every new connection lands on the survivor, first time.
    for i in range(4):
        r = through(alice, f"echo survivor-{i}")
        assert r.rc == 0 and r.stdout == f"survivor-{i}\n".encode(), f"after DOWN, connection {i}: {r.stderr}"
    deadline = time.monotonic() + 10
    while len(sessions(survivor)) < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sessions(survivor)) == before + 5, "the first success and the 4 after DOWN all on the survivor"
    assert live.proc.poll() is None
    live.ping("after-kill")
    assert up(ha.servers()[name[survivor]])

    # SIGTERM the survivor with the session live: /healthz 503, haproxy takes it out,
    # the session carries on to its end, and the process exits when it ends.
    t_term = time.monotonic()
    survivor.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:
        status, body = healthz(health[survivor])
        if status == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (status, body) == (503, "draining: shutting down, not accepting connections\n")
    row = ha.wait_server(name[survivor], down, timeout=5, what="DOWN after SIGTERM")
    assert row["check_status"] == "L7STS" and row["check_code"] == "503", row
    t_lb_down = time.monotonic() - t_term
    # No server left: haproxy closes new connections; no new session anywhere.
    n = len(sessions(survivor))
    r = through(alice, "echo never", timeout=20)
    assert r.rc == 255 and b"never" not in r.stdout
    assert len(sessions(survivor)) == n
    # The draining bastion keeps relaying the live session both ways.
    assert survivor.alive() and live.proc.poll() is None
    live.ping("while-draining")
    time.sleep(1)
    live.ping("still-draining")
    t_end = time.monotonic()
    rc, last = live.finish()
    assert (rc, last) == (0, "done"), f"live session: rc={rc} last={last!r}"
    assert survivor.wait(timeout=10) == 0
    t_exit = time.monotonic()
    assert t_exit - t_end < 5, f"bastion exited {t_exit - t_end:.1f}s after its last session ended"
    assert t_exit - t_term < GRACE_S - 5, f"draining took {t_exit - t_term:.1f}s of a {GRACE_S}s grace"
    end = survivor.wait_for_event(lambda e: e["event"] == "session.end", login="bob")
    assert end["reason"] == "client disconnected", end
    err = survivor.stderr_text()
    assert "grace period over" not in err and "bastion stopped" in err, err[-3000:]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", health[survivor])) != 0, "health port closed after exit"

    print(f"\nHA timings: kill->first ok {first_ok:.2f}s (attempts {attempts}), kill->DOWN {t_down:.2f}s, "
          f"SIGTERM->LB DOWN {t_lb_down:.2f}s, session end->exit {t_exit - t_end:.2f}s, "
          f"SIGTERM->exit {t_exit - t_term:.2f}s")
