"""The container image, run the way users run it.

Nothing can be pulled here, so the images are built the way docker/README
says to on such a machine: docker/base.sh (debootstrap --variant=minbase +
docker import) for the base, docker/build.sh --prebuilt for the bastion (the
same docker/Dockerfile users build, its `prebuilt` stage), and a test-only
OpenSSH host image (tests/docker/testhost) for the target and the client.

The layout is a VPC's: an `edge` network where the bastion publishes its port
and the client lives, and an `--internal` `private` network holding an sshd
target that the client cannot reach. The bastion container is on both.
"""

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fixtures import read_jsonl, run_client, to_toml

REPO = Path(__file__).resolve().parents[2]
BASTION = REPO / "target" / "release" / "bastion"
BASE = "bastion-base:bookworm"
IMAGE = "bastion:e2e"
TESTHOST = "bastion-testhost:e2e"
# What the README's "Privileges" section tells users to grant the container.
PRIVILEGES = ["--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined"]


def docker(*args, check=True, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def script(*args, timeout=900) -> None:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def images():
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    assert info.returncode == 0, f"these tests need a running Docker engine: {info.stderr.strip()}"
    assert BASTION.exists(), f"{BASTION} is missing: cargo build --release first"
    script(REPO / "docker" / "base.sh", BASE)
    script(REPO / "docker" / "build.sh", "--prebuilt", "--base", BASE, "-t", IMAGE)
    docker("build", "-q", "--build-arg", f"BASE={BASE}", "-t", TESTHOST, REPO / "tests" / "docker" / "testhost",
           timeout=900)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


class World:
    """Two networks, and the containers started on them (all removed at teardown)."""

    def __init__(self, env):
        self.env = env
        tag = secrets.token_hex(3)
        self.edge = f"bastion-e2e-edge-{tag}"
        self.private = f"bastion-e2e-private-{tag}"
        self.tag = tag
        self.containers: list[str] = []
        docker("network", "create", self.edge)
        docker("network", "create", "--internal", self.private)

    def close(self):
        for c in self.containers:
            docker("rm", "-f", c, check=False)
        for n in (self.edge, self.private):
            docker("network", "rm", n, check=False)

    def name(self, what: str) -> str:
        n = f"bastion-e2e-{what}-{self.tag}"
        self.containers.append(n)
        return n

    def target(self) -> str:
        """An sshd on the private network only, reachable as `target`, letting alice in as root."""
        ak = write(self.env.tmp / "target" / "authorized_keys", self.env.keys.pub("alice") + "\n", 0o600)
        name = self.name("target")
        docker("run", "-d", "--name", name, "--network", self.private, "--network-alias", "target",
               "-v", f"{ak}:/root/.ssh/authorized_keys:ro", TESTHOST)
        # sshd generates its host keys first: wait until it listens.
        deadline = time.monotonic() + 60
        while "Server listening" not in self.logs(name):
            assert time.monotonic() < deadline, f"the target's sshd did not start:\n{self.logs(name)}"
            time.sleep(0.2)
        return name

    def bastion_config(self, allow_to: list[str]) -> Path:
        """/etc/bastion for the bastion container: host key, alice's key, bastion.toml."""
        d = self.env.tmp / "etc-bastion"
        d.mkdir(exist_ok=True)
        shutil.copyfile(self.env.keys.path("bastion_host"), d / "host_key")
        (d / "host_key").chmod(0o600)
        write(d / "users" / "alice", self.env.keys.pub("alice") + "\n")
        write(d / "bastion.toml", to_toml({
            "host_keys": ["/etc/bastion/host_key"],
            "auth": [{"type": "file", "dir": "/etc/bastion/users"}],
            "allow": [{"principals": ["alice"], "to": allow_to}],
            "limits": {"shutdown_grace": "20s"},
        }))
        return d

    def bastion(self, etc: Path, audit: Path, extra=()) -> SimpleNamespace:
        """The bastion container: on `edge` with its port published on loopback, and on `private`."""
        name = self.name("bastion")
        audit.mkdir(exist_ok=True)
        docker("create", "--name", name, "--network", self.edge, "--network-alias", "bastion",
               *PRIVILEGES, "-p", "127.0.0.1::22", "--health-interval", "1s",
               "-v", f"{etc}:/etc/bastion:ro", "-v", f"{audit}:/var/log/bastion",
               "-e", "BASTION_CONFIG=/etc/bastion/bastion.toml", *extra, IMAGE)
        docker("network", "connect", self.private, name)
        docker("start", name)
        host, port = docker("port", name, "22/tcp").stdout.split()[0].rsplit(":", 1)
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            status = docker("inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", name).stdout.strip()
            if status == "running healthy" or not status.startswith("running"):
                break
            time.sleep(0.5)
        assert status == "running healthy", f"{name}: {status}\n{self.logs(name)}"
        return SimpleNamespace(name=name, host=host, port=int(port), audit=audit)

    def client_files(self) -> Path:
        """alice's key and an ssh_config for the client container (mounted at /client)."""
        d = self.env.tmp / "client-container"
        d.mkdir(exist_ok=True)
        shutil.copyfile(self.env.keys.path("alice"), d / "alice")
        (d / "alice").chmod(0o600)
        write(d / "ssh_config", "Host *\n  IdentityFile /client/alice\n  IdentitiesOnly yes\n"
              "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
              "  LogLevel ERROR\n  ConnectTimeout 5\n")
        return d

    def client(self, *ssh_args, timeout=60):
        """`ssh -F /client/ssh_config ARGS…` from a container on the edge network only."""
        d = self.client_files()
        return run_client(["docker", "run", "--rm", "--network", self.edge, "-v", f"{d}:/client:ro", TESTHOST,
                           "ssh", "-F", "/client/ssh_config", *ssh_args], timeout=timeout)

    @staticmethod
    def logs(name: str) -> str:
        r = docker("logs", name, check=False)
        return r.stdout + r.stderr


@pytest.fixture
def vpc(env, images):
    w = World(env)
    try:
        yield w
    finally:
        w.close()


def test_ssh_jump_through_the_container_reaches_a_private_target_and_is_audited(vpc, env, client):
    target = vpc.target()
    b = vpc.bastion(vpc.bastion_config(["target:22"]), env.tmp / "audit")

    # The client cannot reach the target: no route to the internal network, no name for it.
    target_ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                       target).stdout.strip()
    direct = vpc.client(f"root@{target_ip}", "true", timeout=30)
    assert direct.rc == 255, direct
    assert "timed out" in direct.stderr or "unreachable" in direct.stderr, direct.stderr

    # Through the bastion container, by name, with the user's stock ssh -J.
    r = vpc.client("-J", "alice@bastion", "root@target", "cat /etc/hostname; echo via-bastion")
    assert r.rc == 0, f"{r.stderr}\n{vpc.logs(b.name)}"
    assert r.stdout.split()[-1] == b"via-bastion"
    assert r.stdout.split()[0].decode() == docker("inspect", "-f", "{{.Config.Hostname}}", target).stdout.strip()

    # From this host through the published port, as a user outside the VPC would.
    r = run_client(["ssh", "-F", client("alice"), "-J", f"alice@{b.host}:{b.port}", "root@target", "echo published"])
    assert r.rc == 0 and r.stdout.strip() == b"published", r.stderr

    # A forward the policy does not allow is refused, and says why in the trail.
    r = vpc.client("-J", "alice@bastion", "-p", "2222", "root@target", "true")
    assert r.rc == 255, r

    trail = b.audit / "alice.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len([e for e in read_jsonl(trail) if e["event"] == "port"]) < 3:
        time.sleep(0.2)
    ports = [e for e in read_jsonl(trail) if e["event"] == "port"]
    assert [(e["target"], e["allowed"]) for e in ports] == [
        ("target:22", True), ("target:22", True), ("target:2222", False)], ports
    assert "no rule allows alice to reach" in ports[2]["reason"] and "port 2222" in ports[2]["reason"], ports[2]
    sessions = [e for e in read_jsonl(trail) if e["event"] == "session.start"]
    assert sessions and all(e["sandbox"]["seccomp"] and e["sandbox"]["no_new_privs"] for e in sessions), sessions
    # The trail on the mounted volume verifies with the host's own binary.
    v = subprocess.run([str(BASTION), "audit", "verify", str(b.audit)], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr


def test_docker_stop_drains_a_live_session_then_exits_cleanly(vpc, env):
    vpc.target()
    b = vpc.bastion(vpc.bastion_config(["target:22"]), env.tmp / "audit")
    d = vpc.client_files()
    live = subprocess.Popen(["docker", "run", "--rm", "--network", vpc.edge, "-v", f"{d}:/client:ro", TESTHOST,
                             "ssh", "-F", "/client/ssh_config", "-J", "alice@bastion", "root@target",
                             "echo started; sleep 4; echo finished"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "started"
        t0 = time.monotonic()
        stop = docker("stop", "-t", "30", b.name, timeout=60)
        took = time.monotonic() - t0
        out, err = live.communicate(timeout=30)
    finally:
        live.kill()
    assert out.strip() == "finished" and live.returncode == 0, (out, err)
    assert stop.returncode == 0
    code = docker("inspect", "-f", "{{.State.ExitCode}}", b.name).stdout.strip()
    assert code == "0", f"exit {code}\n{vpc.logs(b.name)}"
    # It waited for the session (~4 s), well inside docker's 30 s before SIGKILL.
    assert 1.0 < took < 25, took
    ends = [e for e in read_jsonl(b.audit / "alice.jsonl") if e["event"] == "session.end"]
    assert ends, read_jsonl(b.audit / "alice.jsonl")


def test_the_image_refuses_to_start_without_the_privileges_it_documents(vpc, env):
    etc = vpc.bastion_config(["target:22"])
    common = ["run", "--rm", "-v", f"{etc}:/etc/bastion:ro", "-e", "BASTION_CONFIG=/etc/bastion/bastion.toml"]

    # Docker's defaults: no CAP_SYS_ADMIN.
    r = docker(*common, IMAGE, check=False, timeout=60)
    assert r.returncode == 1, r
    assert "CAP_SYS_ADMIN" in r.stderr and "--cap-add SYS_ADMIN" in r.stderr, r.stderr

    # The capability without the seccomp setting: a trial worker fails at pivot_root, before anything listens.
    r = docker(*common, "--cap-add", "SYS_ADMIN", IMAGE, check=False, timeout=60)
    assert r.returncode == 1, r
    assert "pivot_root" in r.stderr and "trial worker" in r.stderr, r.stderr
    assert "seccomp=unconfined" in r.stderr, r.stderr

    # Explicitly unsandboxed: it starts, and says so loudly.
    name = vpc.name("nosandbox")
    docker("run", "-d", "--name", name, "-v", f"{etc}:/etc/bastion:ro",
           "-e", "BASTION_CONFIG=/etc/bastion/bastion.toml", "-e", "BASTION_SANDBOX__ENABLED=false", IMAGE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "bastion listening" not in vpc.logs(name):
        time.sleep(0.3)
    logs = vpc.logs(name)
    assert "bastion listening" in logs and "sandbox is DISABLED" in logs, logs


def test_configured_by_environment_alone(vpc, env):
    """No config file: host key path, key source and policy from BASTION_* variables."""
    vpc.target()
    etc = vpc.bastion_config(["target:22"])
    (etc / "bastion.toml").unlink()
    name = vpc.name("envonly")
    audit = env.tmp / "audit-env"
    audit.mkdir()
    docker("create", "--name", name, "--network", vpc.edge, "--network-alias", "bastion", *PRIVILEGES,
           "-v", f"{etc}:/etc/bastion:ro", "-v", f"{audit}:/var/log/bastion",
           "-e", "BASTION_HOST_KEYS=/etc/bastion/host_key",
           "-e", 'BASTION_AUTH=[{type = "file", dir = "/etc/bastion/users"}]',
           "-e", 'BASTION_ALLOW=[{principals = ["alice"], to = ["target:22"]}]', IMAGE)
    docker("network", "connect", vpc.private, name)
    docker("start", name)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "bastion listening" not in vpc.logs(name):
        time.sleep(0.3)
    r = vpc.client("-J", "alice@bastion", "root@target", "echo env-only")
    assert r.rc == 0 and r.stdout.strip() == b"env-only", f"{r.stderr}\n{vpc.logs(name)}"
    assert (audit / "alice.jsonl").exists()
