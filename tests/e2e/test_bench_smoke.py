"""Smoke run of the benchmark (bench/jumpbench.py --quick): does it run, do numbers come out.

No timing assertion: the figures only have to exist, be positive and finite,
appear in the table and in the JSON for both jump hosts, and the run must
leave no process, port, cgroup or temp dir behind. See bench/README.md.
"""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from harness import BASTION, ROOT

BENCH = ROOT / "bench" / "jumpbench.py"

# Every row of the table, with the direction that is better (the JSON's keys).
METRICS = {
    "connect_median_ms": "lower",
    "connect_p95_ms": "lower",
    "throughput_up_mibps": "higher",
    "throughput_down_mibps": "higher",
    "cpu_s_per_gib": "lower",
    "cpu_ms_per_conn": "lower",
    "mem_kib_per_idle": "lower",
    "logins_per_s": "higher",
    "idle_sessions_per_gib": "higher",
}


def positive_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def number(text: str) -> float:
    return float(text.replace(",", ""))


def run_bench(args: list, timeout: float = 240):
    """Runs the benchmark; on timeout SIGTERM (it cleans up after itself), then SIGKILL."""
    p = subprocess.Popen([sys.executable, str(BENCH), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        raise AssertionError(f"jumpbench --quick did not finish in {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None
    return p.returncode, out, err


def test_bench_quick_runs_and_reports_every_figure(tmp_path):
    assert BASTION.exists(), f"the bastion binary {BASTION} does not exist (cargo build --release, or set BASTION_BIN)"
    out_json = tmp_path / "bench.json"
    rc, out, err = run_bench(["--quick", "--json", str(out_json), "--bastion-bin", str(BASTION)])
    assert rc == 0, f"jumpbench exited {rc}\nstdout:\n{out}\nstderr:\n{err}"

    # The JSON: every metric, for both servers, positive and finite, with its ratio and direction.
    result = json.loads(out_json.read_text())
    assert result["quick"] is True
    assert set(METRICS) <= set(result["metrics"]), sorted(result["metrics"])
    for key, better in METRICS.items():
        m = result["metrics"][key]
        for server in ("openssh", "bastion"):
            assert positive_finite(m.get(server)), (key, server, m)
        assert positive_finite(m["ratio"]), (key, m)
        assert math.isclose(m["ratio"], m["bastion"] / m["openssh"], rel_tol=1e-9)
        assert m["better"] == better, (key, m)
    mc = result["machine"]
    assert mc["nproc"] >= 1 and mc["kernel"] and mc["openssh"].startswith("OpenSSH") and mc["bastion"]
    for server in ("openssh", "bastion"):
        d = result["details"][server]
        assert len(d["latency"]["samples_ms"]) == result["params"]["connects"] == 5
        assert d["load"]["completed"] >= 1
        assert d["idle"]["sessions"] == 3 and d["idle"]["held"]["processes"] > d["idle"]["baseline"]["processes"]

    # The table: a header, then one row per metric with both figures, the ratio and the direction.
    lines = out.splitlines()
    header = next((i for i, line in enumerate(lines) if re.match(r"^metric\s+openssh\s+bastion\s+ratio\s+better$", line)), None)
    assert header is not None, out
    rows = [line for line in lines[header + 2:header + 2 + len(METRICS)]]
    for key, row in zip(METRICS, rows):
        label = result["metrics"][key]["label"]
        assert row.startswith(label), (key, row)
        openssh, bastion, ratio, better = row.split()[-4:]
        assert positive_finite(number(openssh)) and positive_finite(number(bastion)), row
        assert re.fullmatch(r"\d+\.\d\dx", ratio) and positive_finite(float(ratio[:-1])), row
        assert better == METRICS[key], row
    assert "OpenSSH" in out and "kex/cipher" in out

    # Nothing left behind: temp dir, cgroups, listening ports, processes using the temp dir.
    tmp = re.search(r"temp dir (/\S+)", err)
    ports = re.search(r"target sshd :(\d+), openssh jump :(\d+), bastion :(\d+)", err)
    assert tmp and ports, err
    assert not Path(tmp.group(1)).exists()
    for server in ("openssh", "bastion"):
        for cg in result["details"][server]["accounting"]["cgroups"]:
            assert not Path(cg).exists(), cg
    for port in ports.groups():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, f"something still listens on {port}"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert tmp.group(1).encode() not in cmdline, (proc.name, cmdline)


def test_bench_rejects_bad_arguments():
    r = subprocess.run([sys.executable, str(BENCH), "--size", "lots"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not a size" in r.stderr
    r = subprocess.run([sys.executable, str(BENCH), "--idle", "0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--idle must be at least 1" in r.stderr
