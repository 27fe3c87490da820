"""A machine that looks like the bastion's EC2 instance, for test_instance_boot.py.

- `build_image()`: tests/instance/build.sh (debootstrap + docker import; cached by a hash of
  its inputs) -> the image tag. Amazon Linux 2023 as the module's user data sees it: systemd
  as PID 1, sshd.service enabled on port 22, curl, the AWS CLI, ssh-keygen.
- `Instance`: one container of that image (systemd booted, `--network none`), and around it,
  inside its network namespace and nowhere else:
    * `Imds`: an IMDSv2 emulator on 169.254.169.254:80 (the address is added to the
      container's `lo`), serving the region, the instance id, the Auto Scaling target
      lifecycle state (settable), the instance role's credentials and the identity document;
    * moto_server (aws.MotoServer) behind an `InstanceProxy` (an aws.FaultProxy) listening on
      127.0.0.1:5000, the endpoint every process of the machine uses (the image's systemd
      DefaultEnvironment sets AWS_ENDPOINT_URL to it: see tests/instance/build.sh);
    * the test's own sshd targets and OpenSSH clients (`nsenter --net=...`).
  Nothing listens or connects anywhere else: the container has no interface but `lo`.
- `NetNs`: enters a network namespace on the calling thread only (setns(2)), so that sockets
  (servers, boto3 clients) and child processes made inside `with ns:` live in it.

Teardown (`Instance.close()`) removes the container and stops every server and process,
whatever happened; the namespace goes with the container.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import aws
from aws import FaultProxy, LocalHTTPServer, MotoServer, serve_in_background, stop_serving
from fixtures import sha256_file
from harness import Processes, keygen

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tests" / "instance" / "build.sh"
REGION = aws.REGION
ACCOUNT = aws.DEFAULT_ACCOUNT
MOTO_PORT = 5000  # what tests/instance/rootfs/etc/systemd/system.conf.d/50-aws-endpoint.conf names
IMDS_ADDR = "169.254.169.254"
ROLE = "bastion-instance-role"
CLONE_NEWNET = 0x40000000

# --------------------------------------------------------------------------
# the image


def build_image(timeout: float = 1500) -> tuple[str, float]:
    """tests/instance/build.sh -> (tag, seconds it took; about 0 when the image was cached)."""
    t0 = time.monotonic()
    # PYTHON: the pip that fetches the AWS CLI's wheels (this venv's: it has pip).
    r = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable})
    if r.returncode != 0:
        raise AssertionError(f"{BUILD_SCRIPT} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    tag = r.stdout.strip().splitlines()[-1]
    assert tag.startswith("bastion-instance:"), r.stdout
    return tag, time.monotonic() - t0


def docker(*args, check=True, timeout=120, input=None) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *map(str, args)], capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(map(str, args))[:300]}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def missing_capabilities() -> list[str]:
    """Capabilities this process's bounding set lacks (runc cannot give a container what the
    engine's parent does not hold: `--privileged` then fails with "unable to apply caps")."""
    names = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
             "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
             "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG "
             "MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM "
             "BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE").split()
    bnd = next(int(line.split()[1], 16) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("CapBnd:"))
    return [n for i, n in enumerate(names) if not bnd >> i & 1]


def privilege_flags() -> list[str]:
    """`--privileged` (the bastion builds user, pid, net and mount namespaces per connection),
    or, where this machine's engine cannot grant every capability, its equivalent less those."""
    missing = missing_capabilities()
    if not missing:
        return ["--privileged"]
    flags = ["--cap-add", "ALL"]
    for cap in missing:
        flags += ["--cap-drop", cap]
    return flags + ["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                    "--security-opt", "systempaths=unconfined"]


# --------------------------------------------------------------------------
# network namespaces

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


class NetNs:
    """The network namespace of process `pid`. `with ns:` moves the calling thread into it and
    back (threads and processes started inside stay in it; sockets keep the namespace they were
    made in). `ns.cmd([...])` is the command run in it with nsenter."""

    def __init__(self, pid: int):
        self.pid = pid
        self.path = f"/proc/{pid}/ns/net"
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._local = threading.local()

    def __enter__(self):
        stack = self._local.__dict__.setdefault("stack", [])
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.fd)
        except OSError:
            os.close(saved)
            raise
        stack.append(saved)
        return self

    def __exit__(self, *exc):
        saved = self._local.stack.pop()
        try:
            _setns(saved)
        finally:
            os.close(saved)

    def cmd(self, argv) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *map(str, argv)]

    def run(self, argv, timeout=60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(argv), timeout=timeout, **kw)

    def port_open(self, host: str, port: int) -> bool:
        with self:
            try:
                with socket.create_connection((host, port), timeout=1):
                    return True
            except OSError:
                return False

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


# --------------------------------------------------------------------------
# IMDSv2


class Imds:
    """An IMDSv2 emulator (what the bastion, the AWS CLI and the user data's curl read).

    PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1..21600) gives a token;
    every GET needs a live one in X-aws-ec2-metadata-token (401 otherwise, as IMDSv2-only
    instances answer). Unknown paths: 404. Every request is logged (`.requests`, and the file).
    `.lifecycle_state` is what meta-data/autoscaling/target-lifecycle-state says ("InService";
    the test sets "Terminated" as Auto Scaling does when it terminates the instance)."""

    def __init__(self, instance_id: str, log_path: Path, region: str = REGION, account: str = ACCOUNT,
                 role: str = ROLE):
        self.instance_id, self.region, self.account, self.role = instance_id, region, account, role
        self.lifecycle_state = "InService"
        self.lifecycle_state_since: float | None = None
        self.requests: list[dict] = []
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._conns: set = set()
        self._log = open(log_path, "a", buffering=1)
        # Credentials moto has not issued: it files them under account 123456789012.
        self.access_key = "ASIA" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.session_token = secrets.token_urlsafe(120)
        self.started = datetime.now(timezone.utc).replace(microsecond=0)
        self._server = None

    def start(self) -> None:
        """Listens on 169.254.169.254:80 in the calling thread's network namespace."""
        self._server = serve_in_background(lambda port: _ImdsServer((IMDS_ADDR, port), self), 80, "imds")

    def close(self) -> None:
        srv, self._server = self._server, None
        stop_serving(srv, self._conns, self._lock)
        self._log.close()

    def set_lifecycle_state(self, state: str) -> None:
        self.lifecycle_state = state
        self.lifecycle_state_since = time.monotonic()

    def paths(self, method="GET") -> list[str]:
        with self._lock:
            return [r["path"] for r in self.requests if r["method"] == method]

    # --- answers -----------------------------------------------------------
    def _credentials(self) -> dict:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return {"Code": "Success", "LastUpdated": now.strftime(fmt), "Type": "AWS-HMAC",
                "AccessKeyId": self.access_key, "SecretAccessKey": self.secret_key, "Token": self.session_token,
                "Expiration": (now + timedelta(hours=6)).strftime(fmt)}

    def answer(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for a GET of `path` (token already checked)."""
        p = urllib.parse.urlsplit(path).path
        text = "text/plain"
        iid = self.instance_id
        meta = {
            "/latest/meta-data/instance-id": iid,
            "/latest/meta-data/placement/region": self.region,
            "/latest/meta-data/placement/availability-zone": f"{self.region}a",
            "/latest/meta-data/local-ipv4": "127.0.0.1",
            "/latest/meta-data/autoscaling/target-lifecycle-state": self.lifecycle_state,
            "/latest/meta-data/iam/security-credentials/": self.role,
            "/latest/meta-data/iam/security-credentials": self.role,
            "/latest/meta-data/": "ami-id\nautoscaling/\niam/\ninstance-id\nlocal-ipv4\nplacement/\n",
            "/latest/meta-data/autoscaling/": "target-lifecycle-state",
            "/latest/meta-data/placement/": "availability-zone\nregion",
            "/latest/meta-data/iam/": "info\nsecurity-credentials/",
            "/latest/meta-data/ami-id": "ami-0123456789abcdef0",
        }
        if p in meta:
            return 200, text, meta[p]
        if p == f"/latest/meta-data/iam/security-credentials/{self.role}":
            return 200, text, json.dumps(self._credentials(), indent=2)
        if p == "/latest/meta-data/iam/info":
            return 200, text, json.dumps({
                "Code": "Success", "LastUpdated": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "InstanceProfileArn": f"arn:aws:iam::{self.account}:instance-profile/{self.role}",
                "InstanceProfileId": "AIPA" + "E2E" * 5}, indent=2)
        if p == "/latest/dynamic/instance-identity/document":
            return 200, text, json.dumps({
                "accountId": self.account, "architecture": "x86_64", "availabilityZone": f"{self.region}a",
                "imageId": "ami-0123456789abcdef0", "instanceId": iid, "instanceType": "t3.micro",
                "pendingTime": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"), "privateIp": "127.0.0.1",
                "region": self.region, "version": "2017-09-30"}, indent=2)
        return 404, "text/html", ('<?xml version="1.0" encoding="iso-8859-1"?>\n'
                                  "<html><head><title>404 - Not Found</title></head></html>\n")

    def _record(self, method: str, path: str, status: int, note: str = "") -> None:
        entry = {"t": time.monotonic(), "method": method, "path": path, "status": status, "note": note}
        with self._lock:
            self.requests.append(entry)
        try:
            self._log.write(f"{entry['t']:.3f} {method} {path} {status} {note}\n")
        except ValueError:
            pass


class _ImdsServer(LocalHTTPServer):
    def __init__(self, addr, imds: Imds):
        self.imds = imds
        super().__init__(addr, _ImdsHandler)


class _ImdsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ImdsServer
    server_version = "EC2ws"
    sys_version = ""

    def setup(self):
        super().setup()
        with self.server.imds._lock:
            self.server.imds._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.imds._lock:
                self.server.imds._conns.discard(self.connection)

    def log_message(self, fmt, *args):
        pass

    def _reply(self, status: int, body: str, ctype: str = "text/plain", headers=()) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_PUT(self):
        imds = self.server.imds
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if urllib.parse.urlsplit(self.path).path != "/latest/api/token":
            imds._record("PUT", self.path, 405)
            return self._reply(405, "Method Not Allowed")
        if self.headers.get("X-Forwarded-For"):
            imds._record("PUT", self.path, 403, "X-Forwarded-For")
            return self._reply(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            imds._record("PUT", self.path, 400, f"ttl={ttl!r}")
            return self._reply(400, "Bad Request")
        token = secrets.token_urlsafe(40)
        with imds._lock:
            imds._tokens[token] = time.monotonic() + int(ttl)
        imds._record("PUT", self.path, 200, f"ttl={ttl}")
        self._reply(200, token, headers=[("X-aws-ec2-metadata-token-ttl-seconds", ttl)])

    def do_GET(self):
        imds = self.server.imds
        token = self.headers.get("X-aws-ec2-metadata-token")
        with imds._lock:
            live = token is not None and imds._tokens.get(token, 0) > time.monotonic()
        if not live:
            imds._record(self.command, self.path, 401, "no token" if token is None else "bad token")
            return self._reply(401, "Unauthorized")
        status, ctype, body = imds.answer(self.path)
        imds._record(self.command, self.path, status)
        self._reply(status, body, ctype)

    do_HEAD = do_GET

    def do_POST(self):
        self.server.imds._record("POST", self.path, 405)
        self._reply(405, "Method Not Allowed")


# --------------------------------------------------------------------------
# the AWS endpoint: the fault proxy on 127.0.0.1:5000, naming S3 operations, answering
# CompleteLifecycleAction (which moto 5 does not implement)

_tls = threading.local()


def s3_operation(method: str, path: str, headers) -> str:
    """The S3 REST operation of a path-style request (the only style an IP endpoint gets)."""
    u = urllib.parse.urlsplit(path)
    q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
    parts = u.path.lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 and parts[1] else ""
    if not bucket:
        return "ListBuckets"
    if key:
        if method == "PUT":
            if "partNumber" in q:
                return "UploadPart"
            return "CopyObject" if headers.get("x-amz-copy-source") else "PutObject"
        if method == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            return "CompleteMultipartUpload" if "uploadId" in q else "PostObject"
        if method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        if method == "HEAD":
            return "HeadObject"
        return "ListParts" if "uploadId" in q else "GetObject"
    if method == "PUT":
        return "CreateBucket" if not q else "PutBucket" + next(iter(q)).title()
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST" and "delete" in q:
        return "DeleteObjects"
    if method == "DELETE":
        return "DeleteBucket"
    if "list-type" in q:
        return "ListObjectsV2"
    return "ListObjects" if not q or set(q) <= {"prefix", "delimiter", "marker", "max-keys", "encoding-type"} \
        else "GetBucket" + next(iter(q)).title()


class _InstanceHandler(aws._Handler):
    def _any(self):
        _tls.s3_op = s3_operation(self.command, self.path, self.headers)
        _tls.path = self.path
        try:
            super()._any()
        finally:
            _tls.s3_op = _tls.path = None

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _any

    def _forward(self, body: bytes) -> None:
        proxy: InstanceProxy = self.server.proxy
        if _tls.__dict__.get("action") == "CompleteLifecycleAction":
            status, data = proxy._complete_lifecycle_action(body)
            self._send(status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", str(secrets.token_hex(16)))], data)
            return
        super()._forward(body)


class _InstanceServer(LocalHTTPServer):
    def __init__(self, addr, proxy):
        self.proxy = proxy
        super().__init__(addr, _InstanceHandler)


_ASG_XMLNS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


class InstanceProxy(FaultProxy):
    """aws.FaultProxy on 127.0.0.1:5000 (in the instance's network namespace), with:

    - S3 requests counted under their REST operation ("PutObject", "GetObject", ...; the base
      proxy sees no action in S3's REST requests), so `set_mode(..., only={"PutObject"})` and
      `count("PutObject")` work; `.s3_log` lists (t, operation, path) of every S3 request;
    - CompleteLifecycleAction answered here, as the real API does, since moto 5.2 answers it
      with HTTP 500 (NotImplementedError): the Auto Scaling group and the hook must exist in
      moto, the instance must be in the group and have a pending lifecycle action (its IMDS
      target lifecycle state is Terminated), the result CONTINUE or ABANDON; else a 400
      ValidationError. Each accepted call is recorded in `.completed`.
    The modes apply to it like to any request (it is counted and faulted first)."""

    def __init__(self, upstream: str, moto_direct, imds: Imds, ns: NetNs, log_path: Path | None = None):
        self._ns = ns  # where it listens, also when it listens again after a "refuse"
        self._moto_direct = moto_direct  # callable(kind) -> boto3 client for moto itself
        self._imds = imds
        self.completed: list[dict] = []
        self.s3_log: list[tuple[float, str, str]] = []
        super().__init__(upstream, log_path=log_path)

    def _listen(self) -> None:
        with self._ns:
            self._server = serve_in_background(lambda port: _InstanceServer(("127.0.0.1", port), self),
                                               self.port or MOTO_PORT, "instance-proxy")
        self.port = self._server.server_address[1]

    def _record(self, service, action, access_key):
        if service == "s3" and action is None:
            action = _tls.__dict__.get("s3_op")
            with self._lock:
                self.s3_log.append((time.monotonic(), action, _tls.__dict__.get("path") or ""))
        _tls.action = action
        return super()._record(service, action, access_key)

    def _complete_lifecycle_action(self, body: bytes) -> tuple[int, bytes]:
        q = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
        asg_name, hook, iid = q.get("AutoScalingGroupName"), q.get("LifecycleHookName"), q.get("InstanceId")
        result = q.get("LifecycleActionResult")

        def error(msg):
            rid = secrets.token_hex(16)
            return 400, (f'<ErrorResponse xmlns="{_ASG_XMLNS}"><Error><Type>Sender</Type><Code>ValidationError</Code>'
                         f"<Message>{msg}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>").encode()

        if result not in ("CONTINUE", "ABANDON"):
            return error(f"Invalid LifecycleActionResult: {result}")
        try:
            asg = self._moto_direct("autoscaling")
            groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name or ""])["AutoScalingGroups"]
            hooks = asg.describe_lifecycle_hooks(AutoScalingGroupName=asg_name)["LifecycleHooks"] if groups else []
        except Exception as e:  # noqa: BLE001 - moto unreachable: say so like a 5xx would
            return 500, f"instance proxy: moto: {e!r}".encode()
        if not groups:
            return error(f"Group {asg_name} not found")
        if not any(h["LifecycleHookName"] == hook for h in hooks):
            return error(f"No Lifecycle Hook found with name {hook} for group {asg_name}")
        in_group = any(i["InstanceId"] == iid for i in groups[0].get("Instances", []))
        if not in_group or iid != self._imds.instance_id or self._imds.lifecycle_state != "Terminated":
            return error(f"No active Lifecycle Action found with instance ID {iid}")
        with self._lock:
            self.completed.append({"t": time.monotonic(), "group": asg_name, "hook": hook, "instance": iid,
                                   "result": result})
        rid = secrets.token_hex(16)
        return 200, (f'<CompleteLifecycleActionResponse xmlns="{_ASG_XMLNS}"><CompleteLifecycleActionResult/>'
                     f"<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata>"
                     "</CompleteLifecycleActionResponse>").encode()


# --------------------------------------------------------------------------
# the instance


class Target:
    """A real OpenSSH sshd (the host's /usr/sbin/sshd) in the instance's network namespace on
    127.0.0.1:<port>, letting `authorized` in as root."""

    def __init__(self, inst: "Instance", authorized: str, port: int = 2200):
        self.port, self.host = port, "127.0.0.1"
        d = inst.tmp / f"target-{port}"
        d.mkdir()
        self.fp = keygen(d / "host_key", "ed25519")
        self.host_pub = (d / "host_key.pub").read_text().strip()
        (d / "authorized_keys").write_text(authorized.strip() + "\n")
        cfg = d / "sshd_config"
        cfg.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile none\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = d / "sshd.log"
        self.proc = inst.procs.start(inst.ns.cmd(["/usr/sbin/sshd", "-D", "-e", "-f", cfg]),
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not inst.ns.port_open("127.0.0.1", port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the target sshd did not listen on 127.0.0.1:{port}:\n{self.log.read_text()}")
            time.sleep(0.05)


class Instance:
    """One booted instance: the container, its IMDS, moto behind the proxy on :5000, setup.

    `Instance(tmp, image, name)` boots it (systemd up, sshd listening on 22), then `.setup_aws()`
    creates what the module would have created (buckets and binaries, IAM group and user with an
    SSH key, the Auto Scaling group with its termination hook; optionally the host key), then
    `.run_user_data(script)` runs the rendered user data as cloud-init would."""

    BINARY_BUCKET = "bastion-artifacts"
    AUDIT_BUCKET = "bastion-audit"
    ASG = "bastion-test"
    HOOK = "bastion-test-drain"
    GROUP = "bastion-users"
    USER = "alice"
    HOST_KEY_PARAM = "/bastion-test/host_ed25519_key"

    def __init__(self, tmp: Path, image: str, name: str):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.name = f"bastion-e2e-instance-{name}-{secrets.token_hex(3)}"
        self.procs = Processes()
        self.ns: NetNs | None = None
        self.imds: Imds | None = None
        self.proxy: InstanceProxy | None = None
        self.moto: MotoServer | None = None
        self.user_data: subprocess.CompletedProcess | None = None
        self.user_data_seconds = 0.0
        self._clients: dict = {}
        self._closed = False
        try:
            self._boot(image)
        except BaseException:
            self.close()
            raise

    # --- lifecycle ---------------------------------------------------------
    def _boot(self, image: str) -> None:
        docker("run", "-d", "--name", self.name, "--hostname", "ip-127-0-0-1",
               "--label", "bastion-e2e=instance", *privilege_flags(), "--cgroupns=private",
               "--network", "none", "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
               "--stop-signal", "SIGRTMIN+3", image, "/sbin/init")
        pid = int(docker("inspect", "-f", "{{.State.Pid}}", self.name).stdout.strip())
        assert pid > 0, f"{self.name} is not running:\n{self.docker_logs()}"
        self.ns = NetNs(pid)
        # systemd up (degraded is fine: nothing here needs every unit), sshd.service listening.
        deadline = time.monotonic() + 60
        while True:
            state = self.exec(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded") and self.ns.port_open("127.0.0.1", 22):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not boot (systemd: {state!r}):\n{self.docker_logs()}\n"
                                     f"{self.exec(['systemctl', '--failed', '--no-pager'], check=False).stdout}")
            time.sleep(0.2)
        # The metadata service's address, as the hypervisor answers it on an instance.
        r = self.ns.run(["ip", "addr", "add", f"{IMDS_ADDR}/32", "dev", "lo"])
        assert r.returncode == 0, r.stderr
        (self.tmp / "moto").mkdir(exist_ok=True)
        with self.ns:
            self.moto = MotoServer(self.procs, self.tmp / "moto")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fn in (lambda: self.proxy and self.proxy.close(), lambda: self.imds and self.imds.close(),
                   self.procs.close, lambda: docker("rm", "-f", self.name, check=False, timeout=60),
                   lambda: self.ns and self.ns.close()):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - best-effort teardown
                print(f"teardown: {e}")

    # --- running things ----------------------------------------------------
    def exec(self, argv, check=True, timeout=60, input=None) -> subprocess.CompletedProcess:
        """`docker exec` (no systemd environment: use `.systemd_run` for that)."""
        r = subprocess.run(["docker", "exec", *(["-i"] if input is not None else []), self.name, *map(str, argv)],
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"in {self.name}: {shlex.join(map(str, argv))}: exit {r.returncode}\n"
                                 f"{r.stdout}\n{r.stderr}")
        return r

    def systemd_run(self, argv, unit: str, timeout=300) -> subprocess.CompletedProcess:
        """As a systemd service of the machine (its DefaultEnvironment included), waited for."""
        return subprocess.run(["docker", "exec", self.name, "systemd-run", "--wait", "--pipe", "--quiet",
                               "--collect", f"--unit={unit}", *map(str, argv)],
                              capture_output=True, text=True, timeout=timeout)

    def read(self, path: str) -> str | None:
        r = self.exec(["cat", path], check=False)
        return r.stdout if r.returncode == 0 else None

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines)]
        if unit:
            argv += ["-u", unit]
        return self.exec(argv, check=False).stdout

    def unit(self, unit: str, *props) -> dict:
        out = self.exec(["systemctl", "show", unit, *[f"--property={p}" for p in props]], check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def listeners(self, port: int) -> list[str]:
        """`ss` lines of the TCP sockets listening on `port`, with their processes."""
        out = self.exec(["ss", "-Hltnp", f"sport = :{port}"], check=False).stdout
        return [line for line in out.splitlines() if line.strip()]

    def docker_logs(self) -> str:
        r = docker("logs", "--tail", "100", self.name, check=False)
        return (r.stdout + r.stderr)[-5000:]

    def diagnostics(self) -> str:
        """What to read when something failed: the user data's output, the units' journals."""
        out = [f"===== instance {self.name}"]
        if self.user_data is not None:
            out += [f"----- user data: exit {self.user_data.returncode} ({self.user_data_seconds:.1f} s)",
                    self.user_data.stdout[-4000:], self.user_data.stderr[-6000:]]
        else:
            out.append("----- user data: not run")
        for unit in ("bastion.service", "bastion-drain-watcher.service", "sshd.service"):
            out += [f"----- journalctl -u {unit}", self.journal(unit, 80)[-8000:]]
        out += ["----- ss -ltnp", self.exec(["ss", "-ltnp"], check=False).stdout]
        if self.proxy is not None:
            out += ["----- AWS calls through the proxy", repr(self.proxy.counts())]
        if self.imds is not None:
            out += ["----- IMDS requests (last 30)",
                    "\n".join(f"{r['t']:.3f} {r['method']} {r['path']} {r['status']} {r['note']}"
                              for r in self.imds.requests[-30:])]
        return "\n".join(out)

    def save_diagnostics(self) -> Path:
        p = self.tmp / "diagnostics.txt"
        try:
            p.write_text(self.diagnostics())
        except Exception as e:  # noqa: BLE001
            p.write_text(f"could not collect diagnostics: {e!r}")
        return p

    # --- AWS -----------------------------------------------------------------
    def client(self, kind: str):
        """A boto3 client talking to moto directly (setup and inspection: neither counted nor
        faulted). Its connections are made in the instance's namespace: call it through `.aws`."""
        if kind not in self._clients:
            import boto3
            from botocore.config import Config
            self._clients[kind] = boto3.session.Session().client(
                kind, endpoint_url=self.moto.url, region_name=REGION, aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=5,
                              read_timeout=60))
        return self._clients[kind]

    def aws(self, kind: str, op: str, **kw):
        """client(kind).<op>(**kw), made from inside the instance's network namespace."""
        with self.ns:
            return getattr(self.client(kind), op)(**kw)

    def _direct(self, kind: str):
        # For the proxy's handler threads, which already live in the namespace.
        return self.client(kind)

    def setup_aws(self, bastion: Path, worker: Path, client_pub: str, host_key: str | None = None) -> dict:
        """What the module and its operator would have made: returns the facts the render needs."""
        with self.ns:
            ec2, asg, s3 = self.client("ec2"), self.client("autoscaling"), self.client("s3")
            ec2.create_launch_template(LaunchTemplateName=f"{self.ASG}-lt",
                                       LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"})
            asg.create_auto_scaling_group(AutoScalingGroupName=self.ASG, MinSize=1, MaxSize=1, DesiredCapacity=1,
                                          LaunchTemplate={"LaunchTemplateName": f"{self.ASG}-lt"},
                                          AvailabilityZones=[f"{REGION}a"])
            asg.put_lifecycle_hook(AutoScalingGroupName=self.ASG, LifecycleHookName=self.HOOK,
                                   LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                                   HeartbeatTimeout=600, DefaultResult="CONTINUE")
            instance_id = asg.describe_auto_scaling_groups(
                AutoScalingGroupNames=[self.ASG])["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
            s3.create_bucket(Bucket=self.BINARY_BUCKET)
            s3.create_bucket(Bucket=self.AUDIT_BUCKET)
            s3.upload_file(str(bastion), self.BINARY_BUCKET, "v1/bastion")
            s3.upload_file(str(worker), self.BINARY_BUCKET, "v1/bastion-worker")
            iam = self.client("iam")
            iam.create_group(GroupName=self.GROUP)
            iam.create_user(UserName=self.USER)
            iam.add_user_to_group(UserName=self.USER, GroupName=self.GROUP)
            iam.upload_ssh_public_key(UserName=self.USER, SSHPublicKeyBody=client_pub.strip())
            if host_key is not None:
                self.client("ssm").put_parameter(Name=self.HOST_KEY_PARAM, Value=host_key, Type="SecureString")
            # The instance's metadata service and the AWS endpoint every process of it uses.
            self.imds = Imds(instance_id, self.tmp / "imds.log")
            self.imds.start()
            self.proxy = InstanceProxy(self.moto.url, self._direct, self.imds, self.ns,
                                       log_path=self.tmp / "moto" / "proxy.log")
        assert self.proxy.port == MOTO_PORT
        return {"instance_id": instance_id, "bastion_sha256": sha256_file(bastion), "worker_sha256": sha256_file(worker)}

    def host_key_in_ssm(self) -> str | None:
        """The private key text the parameter holds, or None when there is no such parameter."""
        with self.ns:
            ssm = self.client("ssm")
            try:
                return ssm.get_parameter(Name=self.HOST_KEY_PARAM, WithDecryption=True)["Parameter"]["Value"]
            except ssm.exceptions.ParameterNotFound:
                return None

    def ssm_parameter(self) -> dict | None:
        with self.ns:
            ssm = self.client("ssm")
            try:
                return ssm.get_parameter(Name=self.HOST_KEY_PARAM)["Parameter"]
            except ssm.exceptions.ParameterNotFound:
                return None

    def audit_objects(self) -> dict[str, bytes]:
        """Every object of the audit bucket: key -> body."""
        out = {}
        with self.ns:
            s3 = self.client("s3")
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.AUDIT_BUCKET):
                for o in page.get("Contents", []):
                    out[o["Key"]] = s3.get_object(Bucket=self.AUDIT_BUCKET, Key=o["Key"])["Body"].read()
        return out

    # --- boot ----------------------------------------------------------------
    def run_user_data(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """As cloud-init runs it: once, as root, after boot, as a systemd service (so with the
        machine's DefaultEnvironment). Output also kept in /var/log/cloud-init-output.log."""
        self.exec(["install", "-d", "-m", "0700", "/var/lib/cloud"])
        self.exec(["sh", "-c", "cat >/var/lib/cloud/user-data.sh && chmod 0700 /var/lib/cloud/user-data.sh"],
                  input=script)
        (self.tmp / "user-data.sh").write_text(script)
        t0 = time.monotonic()
        self.user_data = self.systemd_run(["/bin/bash", "/var/lib/cloud/user-data.sh"], unit="cloud-final-userdata",
                                          timeout=timeout)
        self.user_data_seconds = time.monotonic() - t0
        (self.tmp / "user-data.out").write_text(
            f"exit {self.user_data.returncode}\n--- stdout\n{self.user_data.stdout}\n"
            f"--- stderr\n{self.user_data.stderr}")
        return self.user_data

    # --- clients -------------------------------------------------------------
    def keyscan(self, port: int = 22, kind: str = "ed25519") -> list[str]:
        """`ssh-keyscan` from inside the namespace: ["ssh-ed25519 AAAA…", …]."""
        r = self.ns.run(["ssh-keyscan", "-T", "5", "-t", kind, "-p", str(port), "127.0.0.1"], timeout=30)
        return [" ".join(line.split()[1:3]) for line in r.stdout.splitlines() if line and not line.startswith("#")]

    def http_get(self, port: int, path: str, timeout: float = 5) -> tuple[int, str]:
        import http.client
        with self.ns:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                c.request("GET", path)
                r = c.getresponse()
                return r.status, r.read().decode(errors="replace")
            finally:
                c.close()

    def processes(self) -> list[dict]:
        """Every process of the machine (from its own pid namespace): pid, ppid, comm, exe."""
        script = ('for d in /proc/[0-9]*; do p=${d#/proc/}; c=$(cat $d/comm 2>/dev/null) || continue; '
                  'e=$(readlink $d/exe 2>/dev/null); pp=$(awk \'/^PPid:/{print $2}\' $d/status 2>/dev/null); '
                  'printf "%s\\t%s\\t%s\\t%s\\n" "$p" "$pp" "$c" "$e"; done')
        out = self.exec(["bash", "-c", script], check=False).stdout
        procs = []
        for line in out.splitlines():
            pid, ppid, comm, exe = (line.split("\t") + ["", "", "", ""])[:4]
            procs.append({"pid": int(pid), "ppid": int(ppid or 0), "comm": comm, "exe": exe})
        return procs


def wait_for(pred, timeout: float, what: str, interval: float = 0.25, diag=None):
    """pred()'s first truthy value within `timeout` seconds, else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            got = pred()
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last = e
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last!r})" if last else "")
            if diag is not None:
                msg += "\n" + diag()
            raise AssertionError(msg)
        time.sleep(interval)


def parse_key_line(text: str) -> str:
    """"ssh-ed25519 AAAA… comment" -> "ssh-ed25519 AAAA…"."""
    parts = text.split()
    return " ".join(parts[:2])


def public_of(private_key_text: str, tmp: Path) -> str:
    """The public key ("ssh-ed25519 AAAA…") of an OpenSSH private key."""
    p = tmp / f"key-{secrets.token_hex(4)}"
    p.write_text(private_key_text if private_key_text.endswith("\n") else private_key_text + "\n")
    p.chmod(0o600)
    try:
        r = subprocess.run(["ssh-keygen", "-y", "-f", str(p)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"not an OpenSSH private key: {r.stderr}"
        return parse_key_line(r.stdout)
    finally:
        p.unlink()


AUDIT_KEY_RE = re.compile(r"^(?P<prefix>.*?)(?P<trail>[^/]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
                          r"(?P<sid>[^/]+)/(?P<chunk>[^/]+)\.jsonl$")
