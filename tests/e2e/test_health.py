"""`health_listen`: /livez (liveness, for what restarts or replaces the bastion), /readyz and
/healthz (readiness, for the load balancer), /metrics for Prometheus; none calls AWS."""

import http.client
import signal
import subprocess
import time

from harness import free_port
from test_iam import World, iam_auth, ok


def get(port, path, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path)
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body


def metric(text, name, labels=""):
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return int(line.split()[-1])
    raise AssertionError(f"{name}{labels} not in:\n{text}")


def test_healthz_and_metrics_never_call_aws(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    hport = free_port()
    w = World(env, bastion, iam_proxy, sshd_target, ssh_configs, auth=iam_auth(cache_ttl="60s"),
              extra_config={"health_listen": f"127.0.0.1:{hport}", "limits": {"shutdown_grace": "20s"}})
    for _ in range(20):
        assert get(hport, "/healthz") == (200, "ok\n")
        assert get(hport, "/readyz") == (200, "ok\n")
        assert get(hport, "/livez") == (200, "ok\n")
    assert get(hport, "/nope")[0] == 404
    assert get(hport, "/healthz", method="POST")[0] == 405
    assert iam_proxy.total() == 0, "health checks cost no AWS call"

    pub, _ = w.user_key("vic")
    iam.create_user("vic")
    iam.upload_key("vic", pub)
    r = w.login("vic", "vic", command="head -c 200000 /dev/zero | tr '\\0' x; echo; echo ok")
    assert r.rc == 0 and r.stdout.endswith(b"x\nok\n") and len(r.stdout) > 200000, r.stderr
    ok(w.login("vic", "vic"))
    w.bastion.wait_for_event(lambda e: e["event"] == "port.end" and e.get("bytes_out", 0) + e.get("bytes_in", 0) > 200000,
                             login="vic")

    # IAM down: a new user is refused, but the bastion stays healthy.
    iam_proxy.set_mode("down")
    w.user_key("wes")
    r = w.login("wes", "wes")
    assert r.rc == 255
    assert get(hport, "/healthz") == (200, "ok\n")

    status, text = get(hport, "/metrics")
    assert status == 200
    assert metric(text, "bastion_auth_total", '{source="iam",result="accepted"}') == 2
    assert metric(text, "bastion_auth_total", '{source="iam",result="refused"}') >= 1
    assert metric(text, "bastion_auth_refusals_total", '{source="iam",reason="source_error"}') >= 1
    assert metric(text, "bastion_iam_lookups_total", '{answer="fresh"}') == 1
    assert metric(text, "bastion_iam_lookups_total", '{answer="cached"}') == 1
    assert metric(text, "bastion_iam_lookups_total", '{answer="outage"}') >= 1
    assert metric(text, "bastion_iam_errors_total", '{kind="unavailable"}') >= 1
    assert metric(text, "bastion_forwards_total", '{decision="allowed"}') == 2
    assert metric(text, "bastion_forward_bytes_total", '{direction="out"}') \
        + metric(text, "bastion_forward_bytes_total", '{direction="in"}') > 200000
    assert metric(text, "bastion_worker_spawns_total") >= 3
    assert metric(text, "bastion_connections_total") >= 3

    # SIGTERM with a live session: the load balancer is told to stop sending (503),
    # while the session carries on.
    iam_proxy.set_mode("pass")
    live = subprocess.Popen(["ssh", "-F", str(ssh_configs.for_key("vic")), "-J",
                             f"vic@127.0.0.1:{w.bastion.port}", "-p", str(w.target.port), "root@127.0.0.1",
                             "sleep 30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    env.p.procs.append(live)
    w.bastion.wait_for_event(lambda e: e["event"] == "port" and e["allowed"], login="vic", timeout=20)
    time.sleep(0.5)
    w.bastion.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, body = get(hport, "/healthz")
        if status == 503:
            break
        time.sleep(0.1)
    assert (status, body) == (503, "draining: shutting down, not accepting connections\n")
    assert get(hport, "/readyz") == (status, body)
    # Draining is not dead: whatever watches liveness must not kill the live session.
    assert get(hport, "/livez") == (200, "ok\n")
    assert live.poll() is None, "the live session is not cut"


def test_drain_delay_fails_health_first_and_keeps_accepting_until_it_ends(env, bastion, sshd_target, ssh_configs):
    """Behind a load balancer that only learns from health checks, SIGTERM must not
    refuse connections it still sends: 503 first, accept for drain_delay, then drain."""
    hport = free_port()
    target = sshd_target()
    b = bastion({"health_listen": f"127.0.0.1:{hport}",
                 "allow": [{"principals": ["alice"], "to": [f"127.0.0.1:{target.port}"]}],
                 "limits": {"drain_delay": "8s", "shutdown_grace": "10s"}})
    cfg = ssh_configs.for_key("alice")

    def login():
        return subprocess.run(["ssh", "-F", str(cfg), "-J", f"alice@127.0.0.1:{b.port}", "-p", str(target.port),
                               "root@127.0.0.1", "echo in"], capture_output=True, timeout=30)

    assert get(hport, "/healthz") == (200, "ok\n")
    t0 = time.monotonic()
    b.signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and get(hport, "/healthz")[0] == 200:
        time.sleep(0.05)
    status, body = get(hport, "/healthz")
    assert status == 503 and body.startswith("leaving:"), (status, body)
    # Still in the delay: a new connection is served in full.
    r = login()
    assert time.monotonic() - t0 < 8, "the login did not happen inside drain_delay; lengthen it"
    assert r.returncode == 0 and r.stdout.strip() == b"in", r.stderr
    # After the delay the listener is closed (and, with no session left, the process exits).
    while time.monotonic() - t0 < 8.5:
        time.sleep(0.1)
    r = login()
    assert r.returncode == 255, r
    assert b.wait(timeout=20) == 0
