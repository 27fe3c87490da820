"""The audit trail leaves the instance: CloudWatch Logs (one stream per user) and S3
(one object per user and session), fed from the local spool, against moto_server
through the fault proxy (so the sinks can be taken down and brought back).

What is asserted is always compared with the local trail the bastion wrote: every
line arrives, in order, exactly once.
"""

import json
import signal
import subprocess
import time
import urllib.request

import boto3

from aws import REGION, aws_env
from harness import BASTION, free_port

GROUP = "/bastion/audit"
BUCKET = "audit-trails"
PREFIX = "bastion/"


def logs_client(url):
    return boto3.client("logs", endpoint_url=url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def s3_client(url):
    return boto3.client("s3", endpoint_url=url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


class Sinks:
    """The sinks' contents, read straight from moto (not through the proxy)."""

    def __init__(self, moto):
        self.logs, self.s3 = logs_client(moto.url), s3_client(moto.url)
        self.logs.create_log_group(logGroupName=GROUP)
        self.s3.create_bucket(Bucket=BUCKET)

    def stream(self, name):
        lines, token = [], None
        try:
            while True:
                kw = {"nextToken": token} if token else {}
                page = self.logs.get_log_events(logGroupName=GROUP, logStreamName=name, startFromHead=True, **kw)
                lines += [e["message"] for e in page["events"]]
                if not page["events"] or page["nextForwardToken"] == token:
                    return lines
                token = page["nextForwardToken"]
        except self.logs.exceptions.ResourceNotFoundException:
            return []

    def objects(self, user):
        out = {}
        for o in self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}{user}/").get("Contents", []):
            out[o["Key"]] = self.s3.get_object(Bucket=BUCKET, Key=o["Key"])
        return out


def local(bastion, user):
    p = bastion.audit_dir / f"{user}.jsonl"
    return p.read_text().splitlines() if p.exists() else []


def by_session(lines):
    out = {}
    for line in lines:
        out.setdefault(json.loads(line)["sid"], []).append(line)
    return out


def wait_until(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def sink_config(**audit):
    return {"audit": {"cloudwatch_log_group": GROUP, "s3_bucket": BUCKET, "s3_prefix": PREFIX,
                      "s3_interval": "2s", **audit}}


def login(client, b, target, user="alice", command="echo ok", timeout=60):
    return subprocess.run(["ssh", "-F", str(client(user)), "-J", f"{user}@127.0.0.1:{b.port}", "-p",
                           str(target.port), "root@127.0.0.1", command], capture_output=True, timeout=timeout)


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text, name, sink):
    for line in text.splitlines():
        if line.startswith(f'{name}{{sink="{sink}"}} '):
            return int(line.split()[-1])
    raise AssertionError(f"{name} for {sink} not in:\n{text}")


def s3_sessions_match(sinks, b, user):
    """Every session of `user` in the local trail has its object, holding exactly its lines."""
    want = by_session(local(b, user))
    got = {k.rsplit("/", 1)[1][:-len(".jsonl")]: o["Body"].read().decode().splitlines()
           for k, o in sinks.objects(user).items()}
    return want and got == want


def test_events_arrive_per_user_and_per_session_and_read_back(env, bastion, moto, iam_proxy, sshd_target, client):
    sinks = Sinks(moto)
    target = sshd_target()
    b = bastion(sink_config(), env=aws_env(iam_proxy.url))
    # A long session: its object is written while it runs (s3_interval), then rewritten whole.
    live = subprocess.Popen(["ssh", "-F", str(client("bob")), "-J", f"bob@127.0.0.1:{b.port}", "-p",
                             str(target.port), "root@127.0.0.1", "sleep 12; echo done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for user in ("alice", "alice", "bob"):
        r = login(client, b, target, user)
        assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr
    bad = subprocess.run(["ssh", "-F", str(client("mallory")), "-J", f"mallory@127.0.0.1:{b.port}", "-p",
                          str(target.port), "root@127.0.0.1", "true"], capture_output=True, timeout=60)
    assert bad.returncode == 255

    # While bob's long session runs, its object already exists, without session.end.
    def partial():
        for k, o in sinks.objects("bob").items():
            lines = o["Body"].read().decode().splitlines()
            if any(json.loads(x)["event"] == "session.start" for x in lines) and \
                    not any(json.loads(x)["event"] == "session.end" for x in lines) and live.poll() is None:
                return k
    key = wait_until(partial, timeout=30, what="a live session's partial S3 object")
    out, err = live.communicate(timeout=30)
    assert out == b"done\n", err

    for user in ("alice", "bob", "_unknown"):  # names no key source knows go to _unknown
        wait_until(lambda: local(b, user) and sinks.stream(user) == local(b, user), what=f"{user}'s CloudWatch stream")
    for user in ("alice", "bob"):
        wait_until(lambda: s3_sessions_match(sinks, b, user), what=f"{user}'s S3 objects")
    assert len(sinks.objects("alice")) == 2
    head = sinks.s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ServerSideEncryption"] == "AES256", head
    assert key.startswith(f"{PREFIX}bob/") and key.endswith(".jsonl")

    # Read back through the bastion's own tools.
    for source in (["--source", "cloudwatch", "--log-group", GROUP],
                   ["--source", "s3", "--bucket", BUCKET, "--prefix", PREFIX]):
        r = subprocess.run([str(BASTION), "audit", "verify", *source], capture_output=True, text=True,
                           env=aws_env(moto.url))
        assert r.returncode == 0 and "every hash chain holds" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(BASTION), "audit", "show", "--source", "cloudwatch", "--log-group", GROUP],
                       capture_output=True, text=True, env=aws_env(moto.url))
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].split()[:3] == ["START", "USER", "FROM"], r.stdout
    assert sum(" alice " in row for row in rows) == 2 and sum(" bob " in row for row in rows) == 2, r.stdout
    assert any("mallory (unknown)" in row and "login refused" in row for row in rows), r.stdout
    assert all(f"127.0.0.1:{target.port}" in row for row in rows if " alice " in row), r.stdout
    r = subprocess.run([str(BASTION), "audit", "show", "--json", "--user", "alice", "--since", "1h",
                        "--source", "s3", "--bucket", BUCKET, "--prefix", PREFIX],
                       capture_output=True, text=True, env=aws_env(moto.url))
    sessions = [json.loads(x) for x in r.stdout.splitlines()]
    assert [s["user"] for s in sessions] == ["alice", "alice"], r.stdout
    assert all(s["to"] == [f"127.0.0.1:{target.port}"] and s["bytes_in"] > 0 and s["outcome"] for s in sessions)
    # A tampered copy does not verify: the check can fail.
    lines = sinks.stream("alice")
    ev = json.loads(lines[1])
    ev["remote_addr"] = "203.0.113.9:1"
    sinks.logs.create_log_group(logGroupName="/bastion/tampered")
    sinks.logs.create_log_stream(logGroupName="/bastion/tampered", logStreamName="alice")
    sinks.logs.put_log_events(logGroupName="/bastion/tampered", logStreamName="alice", logEvents=[
        {"timestamp": int(time.time() * 1000), "message": m}
        for m in [lines[0], json.dumps(ev, separators=(",", ":"), sort_keys=True), *lines[2:]]])
    r = subprocess.run([str(BASTION), "audit", "verify", "--source", "cloudwatch", "--log-group", "/bastion/tampered"],
                       capture_output=True, text=True, env=aws_env(moto.url))
    assert r.returncode == 1 and "prev hash does not match" in r.stderr, r.stdout + r.stderr


def test_kill_9_then_restart_ships_every_spooled_event_exactly_once(env, bastion, moto, iam_proxy, sshd_target,
                                                                     client):
    sinks = Sinks(moto)
    target = sshd_target()
    iam_proxy.set_mode("down")  # nothing leaves while the first process lives
    first = bastion(sink_config(), env=aws_env(iam_proxy.url))
    r = login(client, first, target)
    assert r.returncode == 0, r.stderr
    live = subprocess.Popen(["ssh", "-F", str(client("alice")), "-J", f"alice@127.0.0.1:{first.port}", "-p",
                             str(target.port), "root@127.0.0.1", "sleep 30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env.p.procs.append(live)
    def second_forwarding():
        sessions = list(by_session(local(first, "alice")).values())
        return len(sessions) == 2 and any(json.loads(x)["event"] == "port" for x in sessions[1])
    wait_until(second_forwarding, what="the second session's forward")
    time.sleep(0.5)
    first.signal(signal.SIGKILL)
    first.wait(10)
    spooled = local(first, "alice")
    assert len(by_session(spooled)) == 2 and sinks.stream("alice") == [], "nothing was shipped before the crash"

    # The next start ships what the spool holds: the finished session and the killed one.
    iam_proxy.set_mode("pass")
    second = bastion(sink_config(), env=aws_env(iam_proxy.url), audit_dir=first.audit_dir)
    wait_until(lambda: sinks.stream("alice") == spooled, what="the spooled events in CloudWatch")
    wait_until(lambda: s3_sessions_match(sinks, second, "alice"), what="both sessions' S3 objects")
    killed = [k for k, o in sinks.objects("alice").items()
              if not any(json.loads(x)["event"] == "session.end" for x in o["Body"].read().decode().splitlines())]
    assert len(killed) == 1, "the killed session's object holds what it wrote, without session.end"
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0

    # A crash between a delivery and its cursor update (simulated: the cursors are lost)
    # must not deliver twice: the stream's tail is compared by session and sequence.
    for cursor in (first.audit_dir / ".shipped").glob("*/alice"):
        cursor.unlink()
    third = bastion(sink_config(), env=aws_env(iam_proxy.url), audit_dir=first.audit_dir)
    r = login(client, third, target)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(by_session(local(third, "alice"))) == 3 and sinks.stream("alice") == local(third, "alice"),
               what="the third session, and no duplicate")
    wait_until(lambda: s3_sessions_match(sinks, third, "alice"), what="three S3 objects")
    assert "already in CloudWatch were not sent again" in third.stderr_text()


def test_a_sink_outage_never_blocks_ssh_and_is_visible_then_recovers(env, bastion, moto, iam_proxy, sshd_target,
                                                                      client):
    sinks = Sinks(moto)
    target = sshd_target()
    hport = free_port()
    iam_proxy.set_mode("down", only={"PutLogEvents", "CreateLogStream", "GetLogEvents"})
    b = bastion({**sink_config(), "health_listen": f"127.0.0.1:{hport}"}, env=aws_env(iam_proxy.url))
    for _ in range(2):
        r = login(client, b, target)
        assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr
    wait_until(lambda: metric(metrics(hport), "bastion_audit_sink_errors_total", "cloudwatch") > 0,
               what="CloudWatch errors in /metrics")
    m = metrics(hport)
    assert metric(m, "bastion_audit_sink_up", "cloudwatch") == 0
    assert metric(m, "bastion_audit_spool_bytes", "cloudwatch") > 0
    assert "audit sink failed; events stay in the spool" in b.stderr_text()
    # S3 was not down: it shipped.
    wait_until(lambda: s3_sessions_match(sinks, b, "alice"), what="S3 objects during the CloudWatch outage")
    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=5) as r:
        assert r.status == 200, "an outage alone does not take the bastion out of service"

    iam_proxy.set_mode("pass")
    wait_until(lambda: sinks.stream("alice") == local(b, "alice"), timeout=90, what="recovery")
    wait_until(lambda: metric(metrics(hport), "bastion_audit_sink_up", "cloudwatch") == 1, what="sink up again")
    assert metric(metrics(hport), "bastion_audit_spool_bytes", "cloudwatch") == 0
    assert "audit sink recovered" in b.stderr_text()


def test_a_full_spool_refuses_new_sessions_until_it_drains(env, bastion, moto, iam_proxy, sshd_target, client):
    sinks = Sinks(moto)
    target = sshd_target()
    hport = free_port()
    audit_dir = env.tmp / "spool"
    audit_dir.mkdir(mode=0o750)
    # 200 KiB of another user's events that never reached the sinks (a long outage).
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    filler = "".join(json.dumps({"event": "filler", "n": i, "pad": "x" * 900, "prev": "0" * 64, "seq": i,
                                 "sid": "backlog", "ts": now}, sort_keys=True, separators=(",", ":")) + "\n"
                     for i in range(200))
    (audit_dir / "carol.jsonl").write_text(filler)
    iam_proxy.set_mode("down")
    b = bastion({**sink_config(spool_max="64KiB"), "health_listen": f"127.0.0.1:{hport}"},
                env=aws_env(iam_proxy.url), audit_dir=audit_dir)
    r = login(client, b, target)
    assert r.returncode == 255, r
    # The refusal says why, as a banner before authentication (shown at LogLevel INFO;
    # -o options are not passed to a -J hop, so ask the bastion directly).
    r = subprocess.run(["ssh", "-F", str(client("alice")), "-o", "LogLevel=INFO", "-p", str(b.port),
                        "alice@127.0.0.1", "true"], capture_output=True, timeout=60)
    assert r.returncode == 255 and b"audit spool is full" in r.stderr, r.stderr
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=5)
        raise AssertionError("/healthz must say 503 while the spool is full")
    except urllib.error.HTTPError as e:
        status = e.code
        body = e.read().decode()
    assert status == 503 and "not yet shipped" in body, body
    assert "audit spool full; refusing a new connection" in b.stderr_text()

    iam_proxy.set_mode("pass")
    wait_until(lambda: len(sinks.stream("carol")) == 200, timeout=90, what="the backlog shipped")
    wait_until(lambda: login(client, b, target).returncode == 0, what="logins admitted again")
