"""The audit trail leaves the instance: CloudWatch Logs (one stream per user) and S3
(immutable chunks, one folder per user and session), fed from the local spool, against
moto_server through the fault proxy (so the sinks can be taken down and brought back).

What is asserted is always compared with the local trail the bastion wrote: every
line arrives, in order, exactly once. The bucket is versioned, so an object written
twice would show as a second version: every chunk must have exactly one.
"""

import json
import signal
import subprocess
import time
import urllib.request

import boto3

from aws import REGION, aws_env
from fixtures import by_session
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
        self.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

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

    def chunks(self, user):
        """Key → lines of every chunk of `user`."""
        out = {}
        for o in self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}{user}/").get("Contents", []):
            body = self.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().decode()
            out[o["Key"]] = body.splitlines()
        return out

    def sessions(self, user):
        """Session id → its lines, its chunks (<user>/YYYY/MM/DD/<sid>/<first seq>.jsonl) put
        back together in sequence order."""
        parts = {}
        for key, lines in self.chunks(user).items():
            *_, sid, chunk = key.split("/")
            assert chunk.endswith(".jsonl") and chunk[:-6].isdigit(), key
            assert all(json.loads(x)["sid"] == sid for x in lines), key
            assert json.loads(lines[0])["seq"] == int(chunk[:-6]), f"{key} starts with another event"
            parts.setdefault(sid, []).append((int(chunk[:-6]), lines))
        return {sid: [x for _, lines in sorted(chunks) for x in lines] for sid, chunks in parts.items()}

    def rewritten(self):
        """Keys written more than once (the bucket is versioned)."""
        seen = {}
        for v in self.s3.list_object_versions(Bucket=BUCKET).get("Versions", []):
            seen[v["Key"]] = seen.get(v["Key"], 0) + 1
        return {k: n for k, n in seen.items() if n > 1}


def local(bastion, user):
    p = bastion.audit_dir / f"{user}.jsonl"
    return p.read_text().splitlines() if p.exists() else []


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
    """Every session of `user` in the local trail is in S3, its chunks holding exactly its lines."""
    want = by_session(local(b, user))
    return want and sinks.sessions(user) == want


def test_events_arrive_per_user_and_per_session_and_read_back(env, bastion, moto, iam_proxy, sshd_target, client):
    sinks = Sinks(moto)
    target = sshd_target()
    b = bastion(sink_config(), env=aws_env(iam_proxy.url))
    # A long session: chunks are written while it runs (s3_interval), and the rest at its end.
    live = subprocess.Popen(["ssh", "-F", str(client("bob")), "-J", f"bob@127.0.0.1:{b.port}", "-p",
                             str(target.port), "root@127.0.0.1", "sleep 12; echo done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for user in ("alice", "alice", "bob"):
        r = login(client, b, target, user)
        assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr
    bad = subprocess.run(["ssh", "-F", str(client("mallory")), "-J", f"mallory@127.0.0.1:{b.port}", "-p",
                          str(target.port), "root@127.0.0.1", "true"], capture_output=True, timeout=60)
    assert bad.returncode == 255

    # While bob's long session runs, its first chunk already exists, without session.end.
    def partial():
        for k, lines in sinks.chunks("bob").items():
            if any(json.loads(x)["event"] == "session.start" for x in lines) and \
                    not any(json.loads(x)["event"] == "session.end" for x in lines) and live.poll() is None:
                return k
    key = wait_until(partial, timeout=30, what="a live session's first S3 chunk")
    out, err = live.communicate(timeout=30)
    assert out == b"done\n", err

    for user in ("alice", "bob", "_unknown"):  # names no key source knows go to _unknown
        wait_until(lambda: local(b, user) and sinks.stream(user) == local(b, user), what=f"{user}'s CloudWatch stream")
    for user in ("alice", "bob"):
        wait_until(lambda: s3_sessions_match(sinks, b, user), what=f"{user}'s S3 objects")
    assert len(sinks.sessions("alice")) == 2
    head = sinks.s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ServerSideEncryption"] == "AES256", head
    assert key.startswith(f"{PREFIX}bob/") and key.endswith("/0000000000.jsonl")
    # The live session's chunk was not rewritten when the session ended: a second chunk holds the rest.
    assert len([k for k in sinks.chunks("bob") if k.rsplit("/", 2)[1] == key.rsplit("/", 2)[1]]) >= 2
    assert sinks.rewritten() == {}

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
    killed = [sid for sid, lines in sinks.sessions("alice").items()
              if not any(json.loads(x)["event"] == "session.end" for x in lines)]
    assert len(killed) == 1, "the killed session's chunks hold what it wrote, without session.end"
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0

    # A crash between a delivery and its cursor update (simulated: the cursors and S3's
    # chunk marks are lost) must not deliver twice: the stream's tail is compared by
    # session and sequence, and S3 refuses to overwrite a chunk (If-None-Match), which the
    # bastion then reads back.
    lost = list((first.audit_dir / ".shipped").glob("*/alice"))
    assert {p.parent.name for p in lost} >= {"cloudwatch", "s3"}, lost
    for cursor in lost:
        cursor.unlink()
    third = bastion(sink_config(), env=aws_env(iam_proxy.url), audit_dir=first.audit_dir)
    r = login(client, third, target)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(by_session(local(third, "alice"))) == 3 and sinks.stream("alice") == local(third, "alice"),
               what="the third session, and no duplicate")
    wait_until(lambda: s3_sessions_match(sinks, third, "alice"), what="three sessions in S3")
    assert "already in CloudWatch were not sent again" in third.stderr_text()
    assert "S3 audit chunk already there" in third.stderr_text()
    assert sinks.rewritten() == {}


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
    # Not ready, but alive: an audit backlog must not get the instance replaced (its spool
    # would be lost with it).
    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/livez", timeout=5) as r:
        assert r.status == 200
    assert "audit spool full; refusing a new connection" in b.stderr_text()

    # Two failed S3 rounds at least: the second read the same lines again.
    wait_until(lambda: metric(metrics(hport), "bastion_audit_sink_errors_total", "s3") >= 2, timeout=60,
               what="S3 failing twice")
    iam_proxy.set_mode("pass")
    wait_until(lambda: len(sinks.stream("carol")) == 200, timeout=90, what="the backlog shipped")
    # The rounds that failed during the outage read the same lines again: S3 holds each once.
    wait_until(lambda: sinks.sessions("carol") == by_session(local(b, "carol")), timeout=90,
               what="the backlog in S3, each event once")
    assert sinks.rewritten() == {}
    wait_until(lambda: login(client, b, target).returncode == 0, what="logins admitted again")


def test_sigterm_ships_live_sessions_chunks_before_exit(env, bastion, moto, iam_proxy, sshd_target, client):
    """At exit the spool is shipped at once, even what s3_interval would have kept for later."""
    sinks = Sinks(moto)
    target = sshd_target()
    b = bastion(sink_config(s3_interval="1h", ship_grace="30s"), env=aws_env(iam_proxy.url))
    r = login(client, b, target)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: s3_sessions_match(sinks, b, "alice"), what="the first session in S3")
    # A session still running at SIGTERM: its lines wait for s3_interval (1h) until the exit.
    live = subprocess.Popen(["ssh", "-F", str(client("alice")), "-J", f"alice@127.0.0.1:{b.port}", "-p",
                             str(target.port), "root@127.0.0.1", "sleep 3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env.p.procs.append(live)
    wait_until(lambda: len(by_session(local(b, "alice"))) == 2, what="the second session's events")
    time.sleep(1)
    assert len(sinks.sessions("alice")) == 1, "s3_interval keeps a live session's lines back"
    b.signal(signal.SIGTERM)
    assert b.wait(60) == 0
    assert live.wait(10) == 0
    # Everything is there the moment the process is gone.
    assert s3_sessions_match(sinks, b, "alice"), (sinks.sessions("alice"), by_session(local(b, "alice")))
    assert sinks.stream("alice") == local(b, "alice")
    assert "audit spool shipped" in b.stderr_text()
    assert "not shipped before exit" not in b.stderr_text()
    assert sinks.rewritten() == {}


def test_sigterm_with_the_sinks_down_waits_ship_grace_then_says_what_stays(env, bastion, moto, iam_proxy,
                                                                            sshd_target, client):
    """A sink outage at exit: the bastion waits ship_grace (not forever), names what it could
    not ship, and keeps it in the spool; a later start on the same disk ships it."""
    sinks = Sinks(moto)
    target = sshd_target()
    iam_proxy.set_mode("down")  # both sinks: nothing leaves
    b = bastion(sink_config(ship_grace="4s"), env=aws_env(iam_proxy.url))
    r = login(client, b, target)
    assert r.returncode == 0, r.stderr
    b.signal(signal.SIGTERM)
    started = time.monotonic()
    assert b.wait(60) == 0
    took = time.monotonic() - started
    assert 4 <= took < 20, f"exit took {took:.1f} s with ship_grace 4s"
    err = b.stderr_text()
    size = (b.audit_dir / "alice.jsonl").stat().st_size
    for sink in ("s3", "cloudwatch"):
        line = next((x for x in err.splitlines() if "audit trail not shipped before exit" in x and sink in x), None)
        assert line, f"no word about {sink}'s unshipped trail:\n{err}"
        assert f"bytes={size}" in line or f'"bytes":{size}' in line, line
        assert "alice" in line and "lost" in line, line
    assert sinks.stream("alice") == [] and sinks.sessions("alice") == {}
    spooled = local(b, "alice")
    assert any(json.loads(x)["event"] == "session.end" for x in spooled), spooled
    # The spool kept it: the next start ships it all.
    iam_proxy.set_mode("pass")
    again = bastion(sink_config(), env=aws_env(iam_proxy.url), audit_dir=b.audit_dir)
    wait_until(lambda: sinks.stream("alice") == spooled, what="the spool shipped by the next start")
    wait_until(lambda: s3_sessions_match(sinks, again, "alice"), what="the spool in S3")
