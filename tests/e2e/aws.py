"""AWS pieces for the end-to-end suites: a real moto server, a fault-injecting proxy, boto3 helpers.

Everything listens on 127.0.0.1 and talks only to 127.0.0.1.

- `MotoServer(procs, tmp)`: `moto_server -H 127.0.0.1 -p <free port>` from the venv (next to
  sys.executable), registered with the test's `Processes`; `.url`, `.reset()`.
- `FaultProxy(upstream_url)`: an HTTP/1.1 reverse proxy in front of moto that counts every
  request by (service, action) and injects faults: "pass", "down", "reset", "refuse",
  "throttle", "error", "slow"; optionally only for some actions, optionally only N times.
- `Iam(endpoint_url)`: boto3 IAM/STS setup helpers; `Iam.in_account("111111111111")` works
  inside another moto account (through sts:AssumeRole).
- `aws_env(endpoint_url)`: the environment a bastion process needs to use that endpoint.
- `rsa_key(dir, name)`: an RSA 3072 key pair (real IAM accepts only RSA >= 2048 bits).

How moto 5 maps requests to accounts (verified against moto 5.2.5, see tests/AWS_HARNESS.md):
the account comes from the access key id in the SigV4 `Authorization` header. A key moto has
never issued (e.g. "testing") is account 123456789012. `sts:AssumeRole` with
`RoleArn=arn:aws:iam::<ACCOUNT>:role/<any>` returns an `ASIA…` key that moto files under
<ACCOUNT>, so requests signed with it are served from <ACCOUNT>. The role does not have to
exist, trust policies are not evaluated, secrets and session tokens are not checked.
`POST /moto-api/reset` forgets every account, including the issued `ASIA…` keys (a key issued
before a reset silently maps back to 123456789012 afterwards).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

from harness import Processes, free_port, keygen

REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"

# --------------------------------------------------------------------------
# environment


def clean_environ(base=None) -> dict:
    """`base` (default os.environ) without any AWS_* or MOTO_* variable."""
    base = os.environ if base is None else base
    return {k: v for k, v in base.items() if not k.startswith(("AWS_", "MOTO_"))}


def aws_env(endpoint_url: str, access_key: str = "testing", secret: str = "testing",
            session_token: str | None = None) -> dict:
    """What a bastion process needs to talk to `endpoint_url` (moto or a FaultProxy) and to
    nothing else: endpoint, region, static credentials, no IMDS, no shared config files.

    Merge it over an environment without AWS_* variables (conftest.py strips them from
    os.environ, so `bastion(..., env=aws_env(url))` is enough): a host's AWS_PROFILE or
    AWS_SESSION_TOKEN would otherwise leak in.
    """
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ENDPOINT_URL_IAM": endpoint_url,
        "AWS_ENDPOINT_URL_STS": endpoint_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_EC2_METADATA_DISABLED": "true",
        # A nonexistent path: no profile, no credentials, no endpoint from ~/.aws can apply.
        "AWS_CONFIG_FILE": "/nonexistent/bastion-e2e/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/bastion-e2e/aws-credentials",
    }
    if session_token:
        env["AWS_SESSION_TOKEN"] = session_token
    return env


# --------------------------------------------------------------------------
# moto


def _http(url: str, method: str = "GET", path: str = "/", body: bytes | None = None,
          headers: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _query_call(url: str, service: str, action: str, version: str, access_key: str = "testing") -> tuple[int, bytes]:
    """A raw AWS query-protocol call (moto does not verify signatures, only reads the scope)."""
    auth = (f"AWS4-HMAC-SHA256 Credential={access_key}/20240101/{REGION}/{service}/aws4_request, "
            "SignedHeaders=host, Signature=0")
    return _http(url, "POST", "/", body=f"Action={action}&Version={version}".encode(),
                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                          "Authorization": auth})


class MotoServer:
    """A real `moto_server` on 127.0.0.1:<free port>, killed with the test's processes."""

    def __init__(self, procs: Processes, tmp: Path, timeout: float = 30.0, warm: bool = True):
        if not MOTO_SERVER.exists():
            raise AssertionError(f"{MOTO_SERVER} does not exist (pip install 'moto[server]==5.*' into the venv)")
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        for attempt in range(3):  # a free port can be taken between free_port() and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log_path = tmp / f"moto-{self.port}.log"
            with open(self.log_path, "wb") as log:
                # No AWS_*/MOTO_* from the host: MOTO_ACCOUNT_ID would pin every request to one account.
                self.proc = procs.start([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=clean_environ())
            if self._wait(timeout):
                break
            if attempt == 2:
                raise AssertionError(f"moto_server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        if warm:
            # The first IAM and STS calls load their backends; do it now so tests time only their own calls.
            _query_call(self.url, "sts", "GetCallerIdentity", "2011-06-15")
            _query_call(self.url, "iam", "ListUsers", "2010-05-08")
        self.start_seconds = time.monotonic() - t0

    def _wait(self, timeout: float) -> bool:
        """True once moto answers HTTP; False if it exited (port taken); raises on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, _ = _http(self.url, "GET", "/moto-api/config", timeout=1.0)  # 201 in moto 5.2
                if 200 <= status < 300:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"moto_server did not answer on {self.url} within {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def reset(self) -> None:
        """Forgets everything in every account (users, keys, groups, assumed-role keys)."""
        status, body = _http(self.url, "POST", "/moto-api/reset", body=b"")
        if status != 200:
            raise AssertionError(f"moto reset failed: {status} {body!r}")


# --------------------------------------------------------------------------
# the fault-injecting proxy

_CRED_RE = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect", "content-length"}
_XMLNS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
_IAM_XMLNS = "https://iam.amazonaws.com/doc/2010-05-08/"

MODES = ("pass", "down", "reset", "refuse", "throttle", "error", "slow")


class Request(NamedTuple):
    service: str | None
    action: str | None
    t: float  # time.monotonic() when the request (headers and body) had been read


def parse_action(method: str, path: str, headers, body: bytes) -> tuple[str | None, str | None, str | None]:
    """(service, action, access key id) of an AWS request."""
    service = access_key = action = None
    m = _CRED_RE.search(headers.get("Authorization", "") or "")
    if m:
        access_key, service = m.group(1), m.group(4)
    target = headers.get("X-Amz-Target")
    if target:
        action = target.rsplit(".", 1)[-1]
    else:
        ctype = (headers.get("Content-Type") or "").lower()
        query = urllib.parse.urlsplit(path).query
        if method == "POST" and ("x-www-form-urlencoded" in ctype or body.startswith(b"Action=")):
            query = body.decode("utf-8", errors="replace")
        values = urllib.parse.parse_qs(query).get("Action")
        if values:
            action = values[0]
    return service, action, access_key


class LocalHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer without the reverse DNS lookup (socket.getfqdn) HTTPServer does on bind."""
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Server(LocalHTTPServer):
    def __init__(self, addr, proxy: "FaultProxy"):
        self.proxy = proxy
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self):
        super().setup()
        self.server.proxy._opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.proxy._closed(self.connection)

    def log_message(self, fmt, *args):  # the proxy keeps its own log
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, headers: list, body: bytes, head: bool = False) -> None:
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        if not head and status >= 200 and status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _any(self):
        proxy = self.server.proxy
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        service, action, access_key = parse_action(self.command, self.path, self.headers, body)
        mode, opts = proxy._record(service, action, access_key)
        try:
            if mode in ("down", "reset", "refuse"):
                self.close_connection = True
                if mode == "reset":
                    # RST instead of FIN: the client sees "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                return
            if mode in ("throttle", "error"):
                self._send(*proxy._error_response(service, bool(self.headers.get("X-Amz-Target")), opts))
                return
            if mode == "slow":
                proxy._stop.wait(opts["delay"])
            self._forward(body)
        except OSError:  # the client went away
            self.close_connection = True

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        up = http.client.HTTPConnection(proxy._up_host, proxy._up_port, timeout=proxy.upstream_timeout)
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP:
                    up.putheader(k, v)
            if body or self.command in ("POST", "PUT", "PATCH"):
                up.putheader("Content-Length", str(len(body)))
            up.putheader("Connection", "close")
            up.endheaders(body or None)
            r = up.getresponse()
            data = r.read()  # de-chunks, or reads Content-Length bytes
            headers = [(k, v) for k, v in r.getheaders() if k.lower() not in _HOP]
            status = r.status
            if self.command == "HEAD" and r.getheader("Content-Length"):
                headers.append(("Content-Length", r.getheader("Content-Length")))
        except (OSError, http.client.HTTPException) as e:
            status, data = 502, f"fault proxy: upstream {proxy.upstream}: {e!r}\n".encode()
            headers = [("Content-Type", "text/plain")]
        finally:
            up.close()
        self._send(status, headers, data, head=self.command == "HEAD")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _any


def serve_in_background(make_server, port: int, name: str):
    """`make_server(port)` (a socketserver), served on a daemon thread. Port 0 takes a free
    one; a given port (listening again after a "refuse") is retried for up to 5 s while the
    kernel lets go of it."""
    deadline = time.monotonic() + 5
    while True:
        try:
            srv = make_server(port)
            break
        except OSError:
            if not port or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                     name=f"{name}-{srv.server_address[1]}", daemon=True).start()
    return srv


def stop_serving(srv, conns: set, lock) -> None:
    """Closes the listening socket (connects are refused from now on) and every open
    connection in `conns` (guarded by `lock`)."""
    if srv is not None:
        srv.shutdown()
        srv.server_close()
    with lock:
        conns = list(conns)
    for c in conns:
        try:
            c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FaultProxy:
    """An HTTP/1.1 reverse proxy on 127.0.0.1:<free port> in front of `upstream` (moto).

    Every request is counted by (service, action): service from the SigV4 credential scope,
    action from the query-protocol `Action=` (form body or query string) or `X-Amz-Target`.
    Responses go back with a Content-Length, and client connections are kept alive (moto
    itself closes after every response; the proxy opens one upstream connection per request).

    Modes (`set_mode(mode, only=None, times=None, **opts)`):
      pass      forward
      down      read the request, count it, close the connection without a response (FIN)
      reset     same, but with a TCP RST
      refuse    close the listening socket and every open connection: connects are refused;
                `set_mode("pass")` (or any other mode) listens again on the SAME port
      throttle  HTTP 400, query-protocol XML error Code=Throttling (JSON ThrottlingException
                for X-Amz-Target requests)
      error     like throttle with your own `status=`, `code=`, `message=` (e.g. 403 AccessDenied)
      slow      forward after sleeping `delay=` seconds (default 3.0)
    only:  a set of action names (or (service, action) pairs); other requests pass.
    times: fault only the next N matching requests, then go back to "pass".
    Requests are counted in every mode (not in "refuse", where none arrive).
    """

    def __init__(self, upstream: str, log_path: Path | None = None, upstream_timeout: float = 60.0):
        u = urllib.parse.urlsplit(upstream)
        if u.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the fault proxy only forwards to 127.0.0.1, not {upstream}")
        self.upstream = upstream
        self._up_host, self._up_port = "127.0.0.1", u.port or 80
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counts: Counter = Counter()
        self.requests: list[Request] = []
        self.log: list[dict] = []  # one dict per request: service, action, access_key, t, mode
        self.connections = 0  # TCP connections accepted
        self._conns: set = set()
        self._mode, self._only, self._times, self._opts = "pass", None, None, {}
        self._log_file = open(log_path, "a", buffering=1) if log_path else None
        self._server: _Server | None = None
        self.port = 0
        self._listen()
        self.url = f"http://127.0.0.1:{self.port}"

    # --- listening ---------------------------------------------------------
    def _listen(self) -> None:
        self._server = serve_in_background(lambda port: _Server(("127.0.0.1", port), self), self.port,
                                           "fault-proxy")
        self.port = self._server.server_address[1]

    def _unlisten(self) -> None:
        srv, self._server = self._server, None
        stop_serving(srv, self._conns, self._lock)

    def _opened(self, conn) -> None:
        with self._lock:
            self.connections += 1
            self._conns.add(conn)

    def _closed(self, conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    @property
    def listening(self) -> bool:
        return self._server is not None

    # --- modes -------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str, only=None, times: int | None = None, delay: float = 3.0,
                 status: int = 400, code: str = "Throttling", message: str = "Rate exceeded") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        if mode == "refuse" and (only or times):
            raise ValueError("refuse cannot be limited to actions or times: no request is read")
        if mode == "throttle":
            status, code, message = 400, "Throttling", "Rate exceeded"
        only = None if only is None else {o if isinstance(o, tuple) else str(o) for o in
                                          ([only] if isinstance(only, (str, tuple)) else only)}
        with self._lock:
            self._mode, self._only, self._times = mode, only, times
            self._opts = {"delay": delay, "status": status, "code": code, "message": message}
        if mode == "refuse":
            self._unlisten()
        elif self._server is None and not self._stop.is_set():
            self._listen()

    def _record(self, service, action, access_key) -> tuple[str, dict]:
        """Counts one request; returns the mode that applies to it."""
        t = time.monotonic()
        with self._lock:
            self._counts[(service, action)] += 1
            self.requests.append(Request(service, action, t))
            mode, opts = self._mode, dict(self._opts)
            if mode != "pass" and self._only is not None and action not in self._only \
                    and (service, action) not in self._only:
                mode = "pass"
            if mode not in ("pass", "refuse") and self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._mode, self._only, self._times = "pass", None, None
            self.log.append({"service": service, "action": action, "access_key": access_key, "t": t, "mode": mode})
        if self._log_file:
            try:
                self._log_file.write(f"{t:.3f} {service} {action} {access_key} {mode}\n")
            except ValueError:  # closed
                pass
        return mode, opts

    def _error_response(self, service, json_protocol: bool, opts: dict) -> tuple[int, list, bytes]:
        rid = str(uuid.uuid4())
        if json_protocol:
            code = opts["code"] if opts["code"] != "Throttling" else "ThrottlingException"
            body = json.dumps({"__type": code, "message": opts["message"]}).encode()
            headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", rid)]
        else:
            xmlns = _XMLNS.get(service or "", _IAM_XMLNS)
            kind = "Receiver" if opts["status"] >= 500 else "Sender"
            body = (f'<ErrorResponse xmlns="{xmlns}"><Error><Type>{kind}</Type><Code>{opts["code"]}</Code>'
                    f'<Message>{opts["message"]}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>').encode()
            headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)]
        return opts["status"], headers, body

    # --- counts ------------------------------------------------------------
    def counts(self) -> dict:
        """{(service, action): n}, a copy."""
        with self._lock:
            return dict(self._counts)

    def count(self, action: str | None, service: str | None = None) -> int:
        """Requests for `action` (of any service unless `service` is given)."""
        with self._lock:
            return sum(n for (s, a), n in self._counts.items() if a == action and (service is None or s == service))

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self.requests.clear()
            self.log.clear()
            self.connections = 0

    def wait_count(self, action: str, n: int, timeout: float = 10.0, service: str | None = None) -> int:
        """Waits until at least `n` requests for `action` were seen; returns the count."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.count(action, service)
            if c >= n:
                return c
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} {service or '*'}:{action} request(s) expected within {timeout}s, "
                                     f"saw {c}; all: {self.counts()}")
            time.sleep(0.05)

    # --- teardown ----------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        self._unlisten()
        if self._log_file:
            self._log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# boto3

_session = None
_session_lock = threading.Lock()


def _client(kind: str, endpoint_url: str, access_key: str, secret: str, session_token: str | None, attempts: int):
    global _session
    import boto3
    from botocore.config import Config
    with _session_lock:  # boto3 sessions are not thread-safe; one shared session caches the models
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(kind, endpoint_url=endpoint_url, region_name=REGION,
                               aws_access_key_id=access_key, aws_secret_access_key=secret,
                               aws_session_token=session_token,
                               # total_max_attempts counts the first try; botocore's
                               # "max_attempts" counts retries only (1 = one retry).
                               config=Config(retries={"total_max_attempts": attempts, "mode": "standard"},
                                             connect_timeout=5, read_timeout=30))


def iam_client(endpoint_url: str, access_key: str = "testing", secret: str = "testing",
               session_token: str | None = None, attempts: int = 1):
    """A boto3 IAM client for `endpoint_url`, us-east-1; `attempts` in all (default 1: no retry)."""
    return _client("iam", endpoint_url, access_key, secret, session_token, attempts)


def sts_client(endpoint_url: str, access_key: str = "testing", secret: str = "testing",
               session_token: str | None = None, attempts: int = 1):
    return _client("sts", endpoint_url, access_key, secret, session_token, attempts)


def assume_role_credentials(sts, role_arn: str, session_name: str = "bastion-e2e") -> dict:
    """sts:AssumeRole -> {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}.

    With moto, requests signed with these are served from the account in `role_arn`."""
    c = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
    return {"AWS_ACCESS_KEY_ID": c["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
            "AWS_SESSION_TOKEN": c["SessionToken"]}


def trust_policy(account_id: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"}, "Action": "sts:AssumeRole"}]})


class Iam:
    """Setup helpers over boto3 IAM (and STS) for one moto account.

    Use it against moto directly (the `iam` fixture does), not through the FaultProxy, so that
    setup calls are neither counted nor faulted.
    """

    def __init__(self, endpoint_url: str, access_key: str = "testing", secret: str = "testing",
                 session_token: str | None = None):
        self.endpoint_url = endpoint_url
        self.creds = {"access_key": access_key, "secret": secret, "session_token": session_token}
        self.client = iam_client(endpoint_url, **self.creds)
        self._sts = None
        self._account = None

    @property
    def sts(self):
        if self._sts is None:
            self._sts = sts_client(self.endpoint_url, **self.creds)
        return self._sts

    @property
    def account_id(self) -> str:
        if self._account is None:
            self._account = self.sts.get_caller_identity()["Account"]
        return self._account

    def env(self) -> dict:
        """AWS_ACCESS_KEY_ID etc. of these credentials (merge over aws_env(url))."""
        e = {"AWS_ACCESS_KEY_ID": self.creds["access_key"], "AWS_SECRET_ACCESS_KEY": self.creds["secret"]}
        if self.creds["session_token"]:
            e["AWS_SESSION_TOKEN"] = self.creds["session_token"]
        return e

    # --- accounts ----------------------------------------------------------
    def in_account(self, account_id: str, role: str = "bastion-e2e-setup") -> "Iam":
        """An Iam working inside moto account `account_id` (assumes arn:aws:iam::<id>:role/<role>;
        moto needs no such role). Invalid after moto.reset()."""
        c = assume_role_credentials(self.sts, f"arn:aws:iam::{account_id}:role/{role}")
        other = Iam(self.endpoint_url, c["AWS_ACCESS_KEY_ID"], c["AWS_SECRET_ACCESS_KEY"], c["AWS_SESSION_TOKEN"])
        got = other.account_id
        if got != account_id:
            raise AssertionError(f"assumed a role in {account_id} but moto serves account {got}")
        return other

    def create_role(self, name: str, trusted_account: str = DEFAULT_ACCOUNT) -> str:
        """A role in this account that `trusted_account` may assume (moto does not enforce the
        trust policy, nor require the role to exist for AssumeRole); returns its ARN."""
        return self.client.create_role(RoleName=name, AssumeRolePolicyDocument=trust_policy(trusted_account))["Role"]["Arn"]

    # --- users and keys ----------------------------------------------------
    def create_user(self, name: str, path: str = "/") -> str:
        return self.client.create_user(UserName=name, Path=path)["User"]["Arn"]

    def upload_key(self, user: str, pubkey_text: str) -> str:
        return self.client.upload_ssh_public_key(UserName=user, SSHPublicKeyBody=pubkey_text.strip())["SSHPublicKey"]["SSHPublicKeyId"]

    def set_key_status(self, user: str, key_id: str, status: str) -> None:
        assert status in ("Active", "Inactive"), status
        self.client.update_ssh_public_key(UserName=user, SSHPublicKeyId=key_id, Status=status)

    def delete_key(self, user: str, key_id: str) -> None:
        self.client.delete_ssh_public_key(UserName=user, SSHPublicKeyId=key_id)

    def list_keys(self, user: str) -> list[dict]:
        return self.client.list_ssh_public_keys(UserName=user)["SSHPublicKeys"]

    def get_key(self, user: str, key_id: str, encoding: str = "SSH") -> dict:
        return self.client.get_ssh_public_key(UserName=user, SSHPublicKeyId=key_id, Encoding=encoding)["SSHPublicKey"]

    def users(self) -> list[str]:
        return [u["UserName"] for u in self.client.list_users()["Users"]]

    def delete_user(self, name: str) -> None:
        """Deletes the user's keys and group memberships first, as real IAM requires."""
        for k in self.list_keys(name):
            self.delete_key(name, k["SSHPublicKeyId"])
        for g in self.client.list_groups_for_user(UserName=name)["Groups"]:
            self.remove_from_group(name, g["GroupName"])
        self.client.delete_user(UserName=name)

    # --- groups ------------------------------------------------------------
    def create_group(self, name: str, path: str = "/") -> str:
        return self.client.create_group(GroupName=name, Path=path)["Group"]["Arn"]

    def add_to_group(self, user: str, group: str) -> None:
        self.client.add_user_to_group(UserName=user, GroupName=group)

    def remove_from_group(self, user: str, group: str) -> None:
        self.client.remove_user_from_group(UserName=user, GroupName=group)

    def group_members(self, group: str) -> list[str]:
        return [u["UserName"] for u in self.client.get_group(GroupName=group)["Users"]]

    def groups_of(self, user: str) -> list[str]:
        return [g["GroupName"] for g in self.client.list_groups_for_user(UserName=user)["Groups"]]

    def delete_group(self, name: str) -> None:
        for u in self.group_members(name):
            self.remove_from_group(u, name)
        self.client.delete_group(GroupName=name)


# --------------------------------------------------------------------------
# keys


def rsa_key(directory, name: str) -> tuple[Path, str, str]:
    """ssh-keygen -t rsa -b 3072 -> (private key path, public key text, SHA256:… fingerprint)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    fp = keygen(path, "rsa")
    return path, (d / f"{name}.pub").read_text().strip(), fp
