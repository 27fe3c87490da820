"""pytest fixtures: `env` gives each test its own world (see harness.py)."""

import os

import pytest

from harness import BASTION, Env


def pytest_sessionstart(session):
    if os.geteuid() != 0:
        raise pytest.UsageError("the end-to-end suites must run as root (namespaces, mounts, sshd)")
    if not BASTION.exists():
        raise pytest.UsageError(f"{BASTION} does not exist: run cargo build --release first")


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.p.close()
