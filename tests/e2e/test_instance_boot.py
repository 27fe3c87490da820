"""The Terraform module's real user data, booted on a machine that looks like its AMI.

The machine is a container of the image tests/instance/build.sh makes (Debian bookworm
dressed as Amazon Linux 2023 as far as the user data can tell: systemd as PID 1, sshd.service
enabled on port 22, curl, the AWS CLI, ssh-keygen), run with `--network none`. Everything it
talks to lives inside its network namespace (instance.py): an IMDSv2 emulator on
169.254.169.254:80, moto_server behind the fault proxy on 127.0.0.1:5000 (the AWS endpoint of
every process on the machine, through systemd's DefaultEnvironment: the image's one
deviation from a real instance), the test's sshd target and its OpenSSH client.

The user data is rendered from terraform/templates/ with `terraform console` (as test_terraform's
render() does; INSTANCE_TEMPLATES=<dir> renders another copy of the two templates instead, e.g.
an older version's) and run as cloud-init would: once, as root, after boot, as a systemd
service (its output in the instance's diagnostics and in <tmp>/user-data.out). The
artifacts are this checkout's target/release/bastion and bastion-worker (stripped of their
debug information, as a release publishes them), served from a moto S3 bucket with their
SHA-256s. Scenarios, each on a fresh machine:

- default (host_sshd = "disabled", the host key generated at boot): the bastion takes port 22
  from the image's sshd, serves `ssh -J` with the key now in SSM, runs its sessions in
  bastion-worker, answers /livez, /readyz, /healthz; a wrong worker checksum stops the boot;
- admin port (host_sshd = "port" on 2222, the host key created beforehand);
- drain: the Auto Scaling lifecycle state turns to Terminated; the drain watcher stops the
  bastion, which ships the audit trail to S3 before the lifecycle action is completed;
- drain with the S3 sink down: the bastion gives up after ship_grace, says what was not
  shipped, and the lifecycle action is completed all the same, within the stop timeout.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import select
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from aws import rsa_key
from fixtures import by_session
from harness import BASTION, keygen
from instance import AUDIT_KEY_RE, MOTO_PORT, Instance, Target, build_image, public_of, wait_for

ROOT = Path(__file__).resolve().parents[2]
# The templates rendered: the module's, or another copy of them (INSTANCE_TEMPLATES=<dir>, e.g.
# an older version's, to see what this suite says of it).
TEMPLATES = Path(os.environ.get("INSTANCE_TEMPLATES") or ROOT / "terraform" / "templates")

WORKER = BASTION.with_name("bastion-worker")
SHUTDOWN_GRACE = 20
SHIP_GRACE = 20
STOP_TIMEOUT = SHUTDOWN_GRACE + SHIP_GRACE + 30
HOST_SSHD_PORT = 2222
HEALTH_PORT = 8080
AUDIT_DIR = "/var/lib/bastion/audit"
AUDIT_PREFIX = "audit/"
TARGET_PORT = 2200
SHA_OF_NOTHING = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# How long the drain watcher takes to see Terminated (it polls every 5 s) plus slack.
WATCHER_POLL = 5


# --------------------------------------------------------------------------------------------
# the image, and booting one instance


@pytest.fixture(scope="module")
def image():
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    assert info.returncode == 0, f"these tests need a running Docker engine: {info.stderr.strip()}"
    tag, seconds = build_image()
    print(f"instance image {tag} ({seconds:.0f} s)")
    return tag


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """What a release publishes: the two binaries with their debug information stripped, as
    docker/build.sh stages them (the release build keeps line tables: hundreds of MB)."""
    d = tmp_path_factory.mktemp("artifacts")
    out = {}
    for name, src in (("bastion", BASTION), ("worker", WORKER)):
        assert src.exists(), f"{src} is missing: cargo build --release first"
        dst = d / src.name
        r = subprocess.run(["objcopy", "--strip-debug", str(src), str(dst)], capture_output=True, text=True)
        assert r.returncode == 0, f"objcopy --strip-debug {src}: {r.stderr}"
        out[name] = dst
    return SimpleNamespace(**out)


def render(tmp: Path, config_vars: dict, user_data_vars: dict) -> str:
    """The user data as the module renders it (test_terraform.render() does the same): the
    configuration templatefile()d first and handed to the user data's, in `terraform console`
    in an empty directory; the variables travel as base64 JSON, the result as base64."""
    def b64(o):
        return base64.b64encode(json.dumps(o).encode()).decode()

    user_data, config = TEMPLATES / "user-data.sh.tftpl", TEMPLATES / "bastion.toml.tftpl"
    expr = (f'base64encode(templatefile("{user_data}", merge(jsondecode(base64decode("{b64(user_data_vars)}")), '
            f'{{ bastion_config = templatefile("{config}", jsondecode(base64decode("{b64(config_vars)}"))) }})))')
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not on PATH (see tests/run)"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "terraformrc").write_text("")
    r = subprocess.run([terraform, "console"], input=expr + "\n", cwd=tmp, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "TF_CLI_CONFIG_FILE": str(tmp / "terraformrc"),
                                         "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"})
    assert r.returncode == 0, f"terraform console failed:\n{r.stderr}"
    out = r.stdout.strip()
    assert out.startswith('"') and out.endswith('"'), out[:300]
    return base64.b64decode(out[1:-1]).decode()


def variables(facts: dict, host_sshd: str, host_key_generate: bool, **over) -> tuple[dict, dict]:
    """(bastion.toml variables, user data variables): everything the module passes."""
    cfg = {
        "service_port": 22,
        "health_port": HEALTH_PORT,
        "proxy_protocol": False,
        "host_key_ref": f"ssm:{Instance.HOST_KEY_PARAM}",
        "iam_groups": [Instance.GROUP],
        "assume_role_arn": "",
        # Loopback targets are only reachable through an explicit rule: this one.
        "allow_rules": [{"principals": ["*"], "to": [f"127.0.0.1:{TARGET_PORT}"], "os_users": None}],
        "eic_auth": False,
        "eic_push": False,
        "eic_os_users": [],
        "audit_dir": AUDIT_DIR,
        "cloudwatch_log_group": "",
        "s3_bucket": Instance.AUDIT_BUCKET,
        "s3_prefix": AUDIT_PREFIX,
        "s3_kms_key_id": "",
        "shutdown_grace_seconds": SHUTDOWN_GRACE,
        "ship_grace_seconds": SHIP_GRACE,
    }
    ud = {
        "binary_url": f"s3://{Instance.BINARY_BUCKET}/v1/bastion",
        "binary_sha256": facts["bastion_sha256"],
        "worker_binary_url": f"s3://{Instance.BINARY_BUCKET}/v1/bastion-worker",
        "worker_binary_sha256": facts["worker_sha256"],
        "docker_image": "",
        "ecr_registry": "",
        "ecr_region": "",
        "service_port": 22,
        "health_port": HEALTH_PORT,
        "audit_dir": AUDIT_DIR,
        "log_level": "info",
        "asg_name": Instance.ASG,
        "lifecycle_hook_name": Instance.HOOK,
        "shutdown_grace_seconds": SHUTDOWN_GRACE,
        "ship_grace_seconds": SHIP_GRACE,
        "stop_timeout_seconds": STOP_TIMEOUT,
        "extra_user_data": "",
        "host_sshd": host_sshd,
        "host_sshd_port": HOST_SSHD_PORT,
        "host_key_parameter_name": Instance.HOST_KEY_PARAM,
        "host_key_generate": host_key_generate,
        "host_key_kms_key_arn": "",
    }
    for k, v in over.items():
        (ud if k in ud else cfg)[k] = v
    return cfg, ud


class Booted(SimpleNamespace):
    """An instance after its user data ran, with the test's client key and target."""

    def ssh_config(self, known_hosts: list[str]) -> Path:
        kh = self.tmp / "known_hosts"
        kh.write_text("".join(line + "\n" for line in known_hosts))
        cfg = self.tmp / "ssh_config"
        cfg.write_text(
            "Host *\n"
            f"  IdentityFile {self.client_key}\n"
            "  IdentitiesOnly yes\n"
            "  BatchMode yes\n"
            "  StrictHostKeyChecking yes\n"
            f"  UserKnownHostsFile {kh}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  CheckHostIP no\n"
            "  LogLevel ERROR\n"
            "  ConnectTimeout 10\n")
        return cfg

    def jump(self, command: str, bastion_key: str) -> list[str]:
        """The `ssh -J alice@127.0.0.1:22 root@127.0.0.1:<target>` command line (to run in the
        namespace), strict about both host keys."""
        cfg = self.ssh_config([f"127.0.0.1 {bastion_key}", f"[127.0.0.1]:{self.target.port} {self.target.host_pub}"])
        return self.inst.ns.cmd(["ssh", "-F", cfg, "-J", f"{Instance.USER}@127.0.0.1:22", "-p", self.target.port,
                                 "root@127.0.0.1", command])

    def login(self, command: str, bastion_key: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.jump(command, bastion_key), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


def boot(tmp: Path, image: str, artifacts, name: str, host_sshd: str = "disabled", precreate_key: bool = False,
         **over) -> Booted:
    """A fresh instance, set up as the module would have it, its user data run."""
    inst = Instance(tmp, image, name)
    try:
        client_key, client_pub, _ = rsa_key(tmp / "client", Instance.USER)
        host_key = None
        if precreate_key:
            keygen(tmp / "host_ed25519_key", "ed25519")
            host_key = (tmp / "host_ed25519_key").read_text()
        facts = inst.setup_aws(artifacts.bastion, artifacts.worker, client_pub, host_key=host_key)
        cfg, ud = variables(facts, host_sshd, host_key_generate=not precreate_key, **over)
        script = render(tmp / "render", cfg, ud)
        inst.run_user_data(script)
        target = Target(inst, client_pub, port=TARGET_PORT)
        return Booted(inst=inst, tmp=tmp, client_key=client_key, client_pub=client_pub, host_key=host_key,
                      facts=facts, cfg=cfg, ud=ud, target=target)
    except BaseException:
        inst.save_diagnostics()
        inst.close()
        raise


def teardown(b: Booted) -> None:
    path = b.inst.save_diagnostics()
    print(f"diagnostics of {b.inst.name}: {path}")
    b.inst.close()


class Checks:
    """Collects every failed check of a scenario, then fails once with all of them and the
    instance's diagnostics (the user data's output, the journals)."""

    def __init__(self, inst: Instance):
        self.inst, self.failed = inst, []

    def __call__(self, ok, message) -> bool:
        if not ok:
            self.failed.append(message() if callable(message) else message)
        return bool(ok)

    def done(self) -> None:
        if self.failed:
            raise AssertionError("\n".join(f"- {m}" for m in self.failed) + "\n\n" + self.inst.diagnostics())


def user_data_ok(b: Booted, check: Checks) -> bool:
    r = b.inst.user_data
    return check(r.returncode == 0,
                 lambda: f"the user data exited {r.returncode}; its last lines:\n{r.stderr[-1500:]}")


def bastion_listeners(b: Booted, port: int) -> tuple[list[str], list[str]]:
    """(lines of the bastion's listening sockets on `port`, lines of anything else's)."""
    lines = b.inst.listeners(port)
    mine = [line for line in lines if '(("bastion",' in line]
    return mine, [line for line in lines if line not in mine]


def wait_for_bastion_key(b: Booted, want: str | None, timeout: float = 30) -> list[str]:
    """Polls ssh-keyscan on :22 until it shows `want` (or anything, when None); returns the
    last answer whatever it was."""
    deadline = time.monotonic() + timeout
    while True:
        got = b.inst.keyscan(22)
        if got and (want is None or got == [want]) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def trail_lines(b: Booted, user: str = Instance.USER) -> list[str]:
    text = b.inst.read(f"{AUDIT_DIR}/{user}.jsonl") or ""
    return [line for line in text.splitlines() if line.strip()]


def read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """The first line `proc` prints, waiting at most `timeout` seconds (b"" if none came)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else b""


def wait_for_session_end(b: Booted, timeout: float = 20) -> list[str]:
    def ended():
        lines = trail_lines(b)
        return lines if any(json.loads(line).get("event") == "session.end" for line in lines) else None
    return wait_for(ended, timeout, "the session's session.end event in the local trail", diag=b.inst.diagnostics)


# --------------------------------------------------------------------------------------------
# default: host_sshd = "disabled", host key generated at boot


@pytest.fixture(scope="module")
def default(image, artifacts, tmp_path_factory):
    b = boot(tmp_path_factory.mktemp("instance-default"), image, artifacts, "default")
    try:
        yield b
    finally:
        teardown(b)


def test_user_data_hands_port_22_to_the_bastion(default):
    b, check = default, Checks(default.inst)
    user_data_ok(b, check)
    key = b.inst.host_key_in_ssm()
    pub = None
    if check(key is not None, f"no host key parameter {Instance.HOST_KEY_PARAM} in SSM after the user data "
                              "(host_key_generate = true: the first instance generates it)"):
        param = b.inst.ssm_parameter()
        check(param["Type"] == "SecureString", f"the host key parameter is a {param['Type']}, not a SecureString")
        pub = public_of(key, b.tmp)
    got = wait_for_bastion_key(b, pub)
    check(pub is not None and got == [pub],
          f"ssh-keyscan -p 22 127.0.0.1 shows {got}, not the key in SSM ({pub})")
    mine, others = bastion_listeners(b, 22)
    check(mine, f"the bastion does not listen on port 22; listening there: {others}")
    check(not others, f"something else listens on port 22: {others}")
    sshd = b.inst.unit("sshd.service", "ActiveState", "UnitFileState")
    check(sshd.get("ActiveState") == "inactive", f"the image's sshd.service is {sshd.get('ActiveState')}, not stopped")
    check(sshd.get("UnitFileState") in ("disabled", "masked"),
          f"the image's sshd.service is {sshd.get('UnitFileState')}, not disabled")
    time.sleep(3)  # a bastion that fails to serve restarts within RestartSec=5
    unit = b.inst.unit("bastion.service", "ActiveState", "SubState", "NRestarts", "Result")
    check(unit.get("ActiveState") == "active" and unit.get("SubState") == "running",
          f"bastion.service is {unit.get('ActiveState')}/{unit.get('SubState')} (result {unit.get('Result')})")
    check(unit.get("NRestarts") == "0", f"bastion.service restarted {unit.get('NRestarts')} times")
    # The launch template requires IMDSv2: nothing on the machine may have needed IMDSv1.
    refused = [r for r in b.inst.imds.requests if r["status"] in (400, 401, 403, 405)]
    check(not refused, f"IMDS requests without a valid IMDSv2 token: {refused}")
    check.done()


def test_ssh_jump_through_the_bastion(default):
    b = default
    key = b.inst.host_key_in_ssm()
    assert key is not None, f"no host key in SSM: nothing to trust\n{b.inst.diagnostics()}"
    r = b.login("echo jumped to $(hostname -s)-$((6 * 7))", public_of(key, b.tmp))
    assert r.returncode == 0, f"ssh -J failed ({r.returncode}): {r.stderr}\n{b.inst.diagnostics()}"
    assert r.stdout.startswith("jumped to ") and r.stdout.endswith("-42\n"), r.stdout
    # The trail records it: the IAM user, the target.
    lines = wait_for_session_end(b)
    events = [json.loads(line) for line in lines]
    ports = [e for e in events if e["event"] == "port"]
    assert ports and ports[-1].get("allowed") is True, events


def test_sessions_run_in_bastion_worker(default):
    b = default
    key = b.inst.host_key_in_ssm()
    assert key is not None, f"no host key in SSM: nothing to trust\n{b.inst.diagnostics()}"
    live = b.inst.procs.start(b.jump("echo open; sleep 30", public_of(key, b.tmp)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        first = read_line(live, 30)
        assert first == b"open\n", f"the session did not open ({first!r})\n{b.inst.diagnostics()}"
        workers = wait_for(lambda: [p for p in b.inst.processes() if p["comm"] == "bastion-worker"], 10,
                           "a bastion-worker process", diag=b.inst.diagnostics)
        main_pid = int(b.inst.unit("bastion.service", "MainPID")["MainPID"])
        bastion_exe = b.inst.exec(["readlink", f"/proc/{main_pid}/exe"]).stdout.strip()
        installed = str(Path(bastion_exe).with_name("bastion-worker"))
        for w in workers:
            # What the process runs: the file bastion-worker, opened by the monitor and executed
            # through /proc/self/fd (so its exe is that file), byte for byte the artifact.
            assert w["exe"] == installed, f"worker {w} runs {w['exe']!r}, not {installed}\n{b.inst.diagnostics()}"
            digest = b.inst.exec(["sha256sum", f"/proc/{w['pid']}/exe"]).stdout.split()[0]
            assert digest == b.facts["worker_sha256"], (digest, b.facts)
        installed_digest = b.inst.exec(["sha256sum", installed]).stdout.split()[0]
        assert installed_digest == b.facts["worker_sha256"]
        # And the monitor said so when it started.
        # (worker=… as text, "worker":"…" as JSON)
        journal = b.inst.journal("bastion.service", 500)
        said = [line for line in journal.splitlines() if "bastion listening" in line]
        assert said and re.search(rf'\bworker"?[=:]"?{re.escape(installed)}\b', said[-1]), journal
    finally:
        live.kill()
        live.wait(timeout=10)


def test_health_endpoints(default):
    b = default

    def statuses():
        out = {}
        for path in ("/livez", "/readyz", "/healthz"):
            try:
                out[path] = b.inst.http_get(HEALTH_PORT, path)[0]
            except OSError as e:
                out[path] = repr(e)
        return out

    got = statuses()
    deadline = time.monotonic() + 20
    while set(got.values()) != {200} and time.monotonic() < deadline:
        time.sleep(0.5)
        got = statuses()
    assert got == {"/livez": 200, "/readyz": 200, "/healthz": 200}, f"{got}\n{b.inst.diagnostics()}"


def test_a_wrong_worker_checksum_stops_the_boot(image, artifacts, tmp_path):
    b = boot(tmp_path, image, artifacts, "badworker", worker_binary_sha256=SHA_OF_NOTHING)
    try:
        check = Checks(b.inst)
        r = b.inst.user_data
        check(r.returncode != 0, "the user data exited 0 although bastion-worker's SHA-256 is not "
                                 f"worker_binary_sha256 ({SHA_OF_NOTHING})")
        unit = b.inst.unit("bastion.service", "ActiveState", "ExecMainStartTimestampMonotonic", "NRestarts")
        check(unit.get("ActiveState") != "active" and unit.get("ExecMainStartTimestampMonotonic", "0") == "0",
              f"bastion.service was started: {unit}")
        mine, _ = bastion_listeners(b, 22)
        check(not mine, f"a bastion listens on port 22: {mine}")
        check.done()
    finally:
        teardown(b)


# --------------------------------------------------------------------------------------------
# admin port: host_sshd = "port" (2222), the host key created beforehand


def test_admin_port_keeps_sshd_on_2222(image, artifacts, tmp_path):
    b = boot(tmp_path, image, artifacts, "adminport", host_sshd="port", precreate_key=True)
    try:
        check = Checks(b.inst)
        user_data_ok(b, check)
        pub = public_of(b.host_key, tmp_path)
        check(b.inst.host_key_in_ssm() == b.host_key, "the pre-created host key parameter was changed")
        got = wait_for_bastion_key(b, pub)
        check(got == [pub], f"ssh-keyscan -p 22 127.0.0.1 shows {got}, not the pre-created key {pub}")
        mine, others = bastion_listeners(b, 22)
        check(mine and not others, f"port 22: the bastion's sockets {mine}, others {others}")
        admin = b.inst.listeners(HOST_SSHD_PORT)
        check(admin and all('(("sshd",' in line for line in admin),
              f"sshd does not listen on {HOST_SSHD_PORT}: {admin}")
        sshd = b.inst.unit("sshd.service", "ActiveState")
        check(sshd.get("ActiveState") == "active", f"sshd.service is {sshd.get('ActiveState')}")
        admin_keys = b.inst.keyscan(HOST_SSHD_PORT)
        check(admin_keys and admin_keys != [pub], f"port {HOST_SSHD_PORT} answers with {admin_keys}")
        unit = b.inst.unit("bastion.service", "ActiveState", "NRestarts")
        check(unit.get("ActiveState") == "active" and unit.get("NRestarts") == "0", f"bastion.service: {unit}")
        check.done()
    finally:
        teardown(b)


# --------------------------------------------------------------------------------------------
# drain on Auto Scaling termination


def s3_sessions(objects: dict[str, bytes], user: str) -> tuple[dict[str, list[str]], list[str]]:
    """({session id: its lines, chunks concatenated in key order}, keys not in the layout
    audit/<trail>/YYYY/MM/DD/<session-id>/<chunk>.jsonl) for `user`'s trail."""
    sessions: dict[str, list[str]] = defaultdict(list)
    stray = []
    for key in sorted(objects):
        m = AUDIT_KEY_RE.match(key)
        if not m or m["prefix"] != AUDIT_PREFIX:
            stray.append(key)
            continue
        if m["trail"] != user:
            continue
        body = objects[key].decode()
        if body and not body.endswith("\n"):
            stray.append(f"{key} (does not end with a complete line)")
        sessions[m["sid"]] += body.splitlines()
    return dict(sessions), stray


def drained(b: Booted, timeout: float) -> dict:
    """Waits for CompleteLifecycleAction (as the proxy answered it) after Terminated."""
    return wait_for(lambda: b.inst.proxy.completed and b.inst.proxy.completed[0], timeout,
                    "CompleteLifecycleAction", interval=0.5, diag=b.inst.diagnostics)


def stop_seconds(b: Booted) -> tuple[float, dict]:
    """How long bastion.service took to stop (deactivating -> inactive), from systemd."""
    u = b.inst.unit("bastion.service", "ActiveExitTimestampMonotonic", "InactiveEnterTimestampMonotonic",
                    "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    began, ended = int(u.get("ActiveExitTimestampMonotonic") or 0), int(u.get("InactiveEnterTimestampMonotonic") or 0)
    return (ended - began) / 1e6 if began and ended > began else -1.0, u


def completed_after_the_stop(done: dict, unit: dict) -> bool:
    """Was the lifecycle action completed once bastion.service had stopped? (The container
    shares the kernel's CLOCK_MONOTONIC: systemd's *TimestampMonotonic and the proxy's
    time.monotonic() are on one clock.)"""
    stopped = int(unit.get("InactiveEnterTimestampMonotonic") or 0)
    return 0 < stopped <= done["t"] * 1e6


def ready(b: Booted, check: Checks) -> str | None:
    """The bastion's public host key once it serves it on :22, else None (and a failed check)."""
    if not user_data_ok(b, check):
        return None
    pub = public_of(b.host_key, b.tmp) if b.host_key else None
    got = wait_for_bastion_key(b, pub)
    if not check(got == [pub], f"the bastion does not serve port 22 with its key: ssh-keyscan shows {got}"):
        return None
    return pub


def test_drain_ships_the_trail_then_completes_the_hook(image, artifacts, tmp_path):
    b = boot(tmp_path, image, artifacts, "drain", precreate_key=True)
    try:
        check = Checks(b.inst)
        pub = ready(b, check)
        if pub is None:
            check.done()
        r = b.login("echo before the drain", pub)
        assert r.returncode == 0 and r.stdout == "before the drain\n", \
            f"{r.returncode} {r.stderr}\n{b.inst.diagnostics()}"
        wait_for_session_end(b)
        b.inst.imds.set_lifecycle_state("Terminated")
        done = drained(b, WATCHER_POLL + SHIP_GRACE + 40)
        wait_for(lambda: b.inst.unit("bastion.service", "ActiveState")["ActiveState"] in ("inactive", "failed"), 10,
                 "bastion.service to be stopped", diag=b.inst.diagnostics)
        check(done["instance"] == b.facts["instance_id"] and done["result"] == "CONTINUE", f"completed: {done}")
        local = trail_lines(b)
        objects = b.inst.audit_objects()
        sessions, stray = s3_sessions(objects, Instance.USER)
        check(not stray, f"audit objects outside audit/<trail>/YYYY/MM/DD/<session-id>/<chunk>.jsonl: {stray}")
        want = by_session(local)
        check(want and sessions == want,
              lambda: f"S3 does not hold the local trail per session:\n  local: {json.dumps(want)[:3000]}\n"
                      f"  S3 objects: {sorted(objects)}\n  S3 by session: {json.dumps(sessions)[:3000]}")
        puts = [t for t, op, path in b.inst.proxy.s3_log
                if op == "PutObject" and path.lstrip("/").startswith(f"{Instance.AUDIT_BUCKET}/")]
        check(puts, "no PutObject to the audit bucket went through the proxy")
        check(not puts or puts[-1] < done["t"],
              lambda: f"CompleteLifecycleAction ({done['t']:.3f}) came before the last PutObject ({puts[-1]:.3f})")
        seconds, unit = stop_seconds(b)
        check(0 <= seconds < STOP_TIMEOUT and unit.get("Result") != "timeout",
              f"bastion.service stopped in {seconds:.1f} s: {unit}")
        check(completed_after_the_stop(done, unit),
              f"CompleteLifecycleAction ({done['t']:.3f}) came before bastion.service had stopped: {unit}")
        check.done()
    finally:
        teardown(b)


def test_drain_with_the_s3_sink_down(image, artifacts, tmp_path):
    b = boot(tmp_path, image, artifacts, "sinkdown", precreate_key=True)
    try:
        check = Checks(b.inst)
        pub = ready(b, check)
        if pub is None:
            check.done()
        # S3 is down for writes from now on: the session's events stay in the spool.
        b.inst.proxy.set_mode("down", only={("s3", "PutObject"), ("s3", "CreateMultipartUpload"),
                                            ("s3", "UploadPart"), ("s3", "CompleteMultipartUpload")})
        r = b.login("echo sink down", pub)
        assert r.returncode == 0 and r.stdout == "sink down\n", f"{r.returncode} {r.stderr}\n{b.inst.diagnostics()}"
        lines = wait_for_session_end(b)
        sid = json.loads(lines[-1])["sid"]
        b.inst.imds.set_lifecycle_state("Terminated")
        done = drained(b, WATCHER_POLL + STOP_TIMEOUT + 40)
        check(done["result"] == "CONTINUE", f"completed: {done}")
        seconds, unit = stop_seconds(b)
        check(SHIP_GRACE <= seconds < STOP_TIMEOUT,
              f"the drain took {seconds:.1f} s; expected at least ship_grace ({SHIP_GRACE} s) and less than the "
              f"stop timeout ({STOP_TIMEOUT} s): {unit}")
        check(unit.get("Result") != "timeout", f"bastion.service was killed at the stop timeout: {unit}")
        check(completed_after_the_stop(done, unit),
              f"CompleteLifecycleAction ({done['t']:.3f}) came before bastion.service had stopped: {unit}")
        journal = b.inst.journal("bastion.service", 400)
        said = [line for line in journal.splitlines() if "audit trail not shipped" in line]
        check(said, "no \"audit trail not shipped\" line in journalctl -u bastion")
        check(any("s3" in line.lower() and re.search(r"\d+\s*bytes|bytes\D{0,3}\d+", line) for line in said),
              f"the \"audit trail not shipped\" line names neither the sink (s3) nor the bytes: {said}")
        sessions, _ = s3_sessions(b.inst.audit_objects(), Instance.USER)
        check(sid not in sessions, f"the session {sid} reached S3 although PutObject was down")
        check.done()
    finally:
        teardown(b)


def test_the_endpoint_is_the_proxy_on_the_fixed_port():
    """The image's DefaultEnvironment names the port the proxy listens on."""
    conf = (ROOT / "tests/instance/rootfs/etc/systemd/system.conf.d/50-aws-endpoint.conf").read_text()
    assert f"DefaultEnvironment=AWS_ENDPOINT_URL=http://127.0.0.1:{MOTO_PORT}\n" in conf
    assert [line for line in conf.splitlines() if "AWS_" in line and not line.startswith("#")] == \
        [f"DefaultEnvironment=AWS_ENDPOINT_URL=http://127.0.0.1:{MOTO_PORT}"]
