"""The `iam` key source against a real moto_server, through the fault proxy.

The real bastion binary asks "IAM" (moto, behind `iam_proxy`, which counts and
faults requests) through the AWS SDK; the real OpenSSH client logs in through
it to a real sshd. Setup goes to moto directly (the `iam` fixture), so only
the bastion's own calls are counted. IAM users get RSA keys: real IAM accepts
nothing else.
"""

import json
import threading
import time
from pathlib import Path

from aws import aws_env, rsa_key
from fixtures import run_client


def iam_auth(**kw) -> dict:
    return {"type": "iam", **kw}


class World:
    """A target, a bastion with an iam key source, and helpers to log in."""

    def __init__(self, env, bastion, iam_proxy, sshd_target, ssh_configs, auth=None, allow=None,
                 extra_env=None, limits=None, extra_config=None):
        self.env, self.proxy = env, iam_proxy
        self.target = sshd_target()
        config = {"auth": [auth or iam_auth(cache_ttl="60s")]}
        if allow is not None:
            config["allow"] = allow
        if limits:
            config["limits"] = limits
        config.update(extra_config or {})
        self.bastion = bastion(config, users={}, env={**aws_env(iam_proxy.url), **(extra_env or {})})
        self.configs = ssh_configs

    def user_key(self, name):
        """An RSA key pair named `name` (its client config uses it for -J and the target)."""
        path, pub, fp = rsa_key(self.env.keys.dir, name)
        # The target must accept it too: the bastion only forwards.
        ak = next(self.env.tmp.glob(f"target_{self.target.port}_*/authorized_keys"))
        ak.write_text(ak.read_text() + pub + "\n")
        return pub, fp

    def login(self, key, login, command="echo ok", timeout=60):
        cfg = self.configs.for_key(key)
        return run_client(["ssh", "-F", cfg, "-J", f"{login}@{self.bastion.host}:{self.bastion.port}",
                           "-p", self.target.port, f"root@{self.target.host}", command], timeout=timeout)

    def auth_events(self, trail=None):
        return [e for e in self.bastion.audit_events(trail) if e["event"] == "auth"]

    def last_auth(self, trail, n):
        """Waits for the n-th auth event in `trail` and returns it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            evs = self.auth_events(trail)
            if len(evs) >= n:
                return evs[n - 1]
            time.sleep(0.05)
        raise AssertionError(f"fewer than {n} auth events in {trail}: {self.bastion.audit_events()}")


def ok(r):
    assert r.rc == 0 and r.stdout.strip() == b"ok", f"rc={r.rc} stderr={r.stderr}"


def refused(r):
    assert r.rc == 255 and "Permission denied" in r.stderr, f"rc={r.rc} stderr={r.stderr}"


def world(env, bastion, iam_proxy, sshd_target, ssh_configs, **kw):
    return World(env, bastion, iam_proxy, sshd_target, ssh_configs, **kw)


# --------------------------------------------------------------------------
# who may log in


def test_active_key_logs_in_and_the_audit_names_the_arn(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs)
    pub, fp = w.user_key("ivan")
    arn = iam.create_user("ivan")
    key_id = iam.upload_key("ivan", pub)
    ok(w.login("ivan", "ivan"))
    ev = w.last_auth("ivan", 1)
    assert ev["success"] is True and ev["source"] == "iam"
    assert ev["iam_arn"] == arn and ev["iam_user"] == "ivan" and ev["iam_key_id"] == key_id
    assert ev["key_fp"] == fp and ev["iam_cache"] == "fresh"
    start = w.bastion.wait_for_event(lambda e: e["event"] == "session.start", login="ivan")
    assert start["user"] == "ivan"


def test_inactive_deleted_unknown_and_wrong_key_are_refused_with_reasons(env, bastion, iam, iam_proxy, sshd_target,
                                                                         ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs,
              auth=iam_auth(cache_ttl="1s", negative_ttl="1s"))
    pub, fp = w.user_key("judy")
    other_pub, other_fp = w.user_key("judy2")
    iam.create_user("judy")
    key_id = iam.upload_key("judy", pub)
    ok(w.login("judy", "judy"))

    # Set Inactive: the cached answer holds for cache_ttl, then access ends.
    iam.set_key_status("judy", key_id, "Inactive")
    time.sleep(1.2)
    refused(w.login("judy", "judy"))
    ev = w.last_auth("judy", 2)
    assert ev["success"] is False
    assert ev["reason"] == f"key {fp} ({key_id}) of IAM user judy is Inactive", ev

    # Active again, then deleted.
    iam.set_key_status("judy", key_id, "Active")
    time.sleep(1.2)
    ok(w.login("judy", "judy"))
    iam.delete_key("judy", key_id)
    iam.upload_key("judy", other_pub)
    time.sleep(1.2)
    refused(w.login("judy", "judy"))
    ev = w.last_auth("judy", 4)
    assert ev["reason"] == f"key {fp} is not among IAM user judy's SSH public keys (1 uploaded)", ev
    # The other key works.
    ok(w.login("judy2", "judy"))

    # A user IAM does not know: the unknown trail, no per-login file.
    refused(w.login("judy", "nosuchiamuser"))
    ev = w.last_auth("_unknown", 1)
    assert ev["login"] == "nosuchiamuser" and "no key source knows the login nosuchiamuser" in ev["reason"]
    assert not w.bastion.trail("nosuchiamuser").exists()
    # ... and it is remembered for negative_ttl: a second try within it makes no call.
    n = iam_proxy.count("GetUser")
    refused(w.login("judy", "nosuchiamuser"))
    assert iam_proxy.count("GetUser") == n, "negative answers are cached"


def test_group_membership_is_required_and_leaving_the_group_ends_access(env, bastion, iam, iam_proxy, sshd_target,
                                                                        ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs,
              auth=iam_auth(groups=["bastion-users"], cache_ttl="1s"))
    pub, _ = w.user_key("kate")
    iam.create_user("kate")
    iam.upload_key("kate", pub)
    iam.create_group("bastion-users")
    iam.create_group("others")
    iam.add_to_group("kate", "others")
    refused(w.login("kate", "kate"))
    ev = w.last_auth("kate", 1)
    assert ev["reason"] == "IAM user kate is not in any of the groups bastion-users", ev
    assert iam_proxy.count("ListSSHPublicKeys") == 0, "a non-member's keys are not even listed"

    iam.add_to_group("kate", "bastion-users")
    time.sleep(1.2)
    ok(w.login("kate", "kate"))
    ev = w.last_auth("kate", 2)
    assert ev["success"] is True and sorted(ev["iam_groups"]) == ["bastion-users", "others"]

    iam.remove_from_group("kate", "bastion-users")
    time.sleep(1.2)
    refused(w.login("kate", "kate"))
    assert "not in any of the groups" in w.last_auth("kate", 3)["reason"]


def test_widdix_spelling_of_the_login(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs)
    pub, _ = w.user_key("leo")
    arn = iam.create_user("leo.m+ops=1,x@example.com")
    iam.upload_key("leo.m+ops=1,x@example.com", pub)
    ok(w.login("leo", "leo.m.plus.ops.equal.1.comma.x.at.example.com"))
    # The raw IAM characters work too (`-J` splits on commas, so that one stays spelled),
    # and both land in one trail named after the IAM user.
    ok(w.login("leo", "leo.m+ops=1.comma.x@example.com"))
    evs = w.auth_events("leo.m+ops=1,x@example.com")
    assert [e["login"] for e in evs] == ["leo.m.plus.ops.equal.1.comma.x.at.example.com",
                                         "leo.m+ops=1.comma.x@example.com"]
    assert all(e["success"] and e["iam_arn"] == arn for e in evs)


def test_group_principals_in_the_policy(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs,
              allow=[{"principals": ["group:ops"], "to": ["127.0.0.1:1-65535"]}])
    pub_m, _ = w.user_key("mona")
    pub_n, _ = w.user_key("ned")
    for user, pub in [("mona", pub_m), ("ned", pub_n)]:
        iam.create_user(user)
        iam.upload_key(user, pub)
    iam.create_group("ops")
    iam.add_to_group("mona", "ops")
    ok(w.login("mona", "mona"))
    r = w.login("ned", "ned")
    assert r.rc == 255
    port = w.bastion.wait_for_event(lambda e: e["event"] == "port", login="ned")
    assert port["allowed"] is False, port
    assert iam_proxy.count("ListGroupsForUser") >= 1, "groups are fetched because the policy names one"


def test_cross_account_via_assume_role(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    keys_account = iam.in_account("111111111111")
    pub, _ = rsa_key(env.keys.dir, "olga")[1:]
    arn = keys_account.create_user("olga")
    keys_account.upload_key("olga", pub)
    role = "arn:aws:iam::111111111111:role/bastion-key-reader"
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs,
              auth=iam_auth(assume_role_arn=role, cache_ttl="1s"))
    ak = next(env.tmp.glob(f"target_{w.target.port}_*/authorized_keys"))
    ak.write_text(ak.read_text() + pub + "\n")
    for _ in range(3):
        ok(w.login("olga", "olga"))
        time.sleep(1.1)  # past cache_ttl: every login asks IAM again
    ev = w.last_auth("olga", 3)
    assert ev["iam_arn"] == arn and arn.startswith("arn:aws:iam::111111111111:user/")
    assert iam_proxy.count("AssumeRole") == 1, f"the role session is reused: {iam_proxy.counts()}"
    # The documented minimal policies cover every call the bastion made.
    docs = Path(__file__).resolve().parents[2] / "docs/iam"
    granted = set()
    for name in ["key-reader-policy.json", "assume-key-reader-policy.json"]:
        for st in json.loads((docs / name).read_text())["Statement"]:
            granted |= set([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    called = {f"{svc}:{action}" for (svc, action) in iam_proxy.counts()}
    assert called <= granted and "iam:GetSSHPublicKey" in called, (called, granted)
    assert iam_proxy.count("ListSSHPublicKeys") >= 2

    # Without the role, the bastion's own account has no such user.
    plain = bastion({"auth": [iam_auth()]}, users={}, env=aws_env(iam_proxy.url))
    r = run_client(["ssh", "-F", ssh_configs.for_key("olga"), "-J", f"olga@127.0.0.1:{plain.port}",
                    "-p", w.target.port, "root@127.0.0.1", "true"])
    assert r.rc == 255
    e = plain.wait_for_event(lambda e: e["event"] == "auth", login="_unknown")
    assert "no key source knows the login olga" in e["reason"]


def test_logins_that_are_not_iam_names_make_no_iam_call(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs)
    w.user_key("pat")
    for login in ["p" * 65, "pat!x", "pat/../x"]:
        refused(w.login("pat", login))
    assert len(w.auth_events("_unknown")) == 3
    # Scanners and health checks: TCP connects and key exchanges without a key.
    r = run_client(["ssh-keyscan", "-p", w.bastion.port, "127.0.0.1"], timeout=30)
    assert "ssh-ed25519" in r.out
    assert iam_proxy.total() == 0, f"no IAM call without a proven key and a valid name: {iam_proxy.counts()}"


# --------------------------------------------------------------------------
# amortisation


def test_logins_within_cache_ttl_are_amortised_and_first_logins_coalesce(env, bastion, iam, iam_proxy, sshd_target,
                                                                         ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs, auth=iam_auth(cache_ttl="5m"),
              limits={"per_source": 20, "max_startups": 40})
    pub, _ = w.user_key("quin")
    iam.create_user("quin")
    iam.upload_key("quin", pub)
    iam_proxy.set_mode("slow", delay=0.5)  # so that the concurrent logins really overlap
    results = [None] * 6

    def one(i):
        results[i] = w.login("quin", "quin")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        ok(r)
    first = iam_proxy.counts()
    assert iam_proxy.count("GetUser") == 1 and iam_proxy.count("ListSSHPublicKeys") == 1 \
        and iam_proxy.count("GetSSHPublicKey") == 1, f"6 concurrent first logins coalesce: {first}"
    iam_proxy.set_mode("pass")
    for _ in range(8):
        ok(w.login("quin", "quin"))
    assert iam_proxy.counts() == first, "8 more logins within cache_ttl cost no IAM call"
    caches = [e["iam_cache"] for e in w.auth_events("quin")]
    assert caches.count("fresh") == 1 and caches.count("cached") == 13, caches


# --------------------------------------------------------------------------
# faults


def test_iam_down_stale_answers_then_fail_closed_then_recovery(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs, auth=iam_auth(cache_ttl="1s", stale_ttl="8s"))
    pub, _ = w.user_key("rita")
    iam.create_user("rita")
    iam.upload_key("rita", pub)
    ok(w.login("rita", "rita"))
    fetched = time.monotonic()
    iam_proxy.set_mode("down")
    time.sleep(1.2)
    ok(w.login("rita", "rita"))
    ev = w.last_auth("rita", 2)
    assert ev["success"] is True and ev["iam_cache"] == "stale", ev
    assert "IAM is unreachable" in ev["iam_stale_reason"], ev
    # Past stale_ttl: fail closed, with the reason.
    time.sleep(max(0.0, fetched + 8.5 - time.monotonic()))
    refused(w.login("rita", "rita"))
    ev = w.last_auth("rita", 3)
    assert ev["success"] is False
    assert "IAM is unreachable" in ev["reason"] and "past stale_ttl (8s)" in ev["reason"] \
        and "fail closed" in ev["reason"], ev
    # IAM back: fresh answers again.
    iam_proxy.set_mode("pass")
    ok(w.login("rita", "rita"))
    assert w.last_auth("rita", 4)["iam_cache"] == "fresh"


def test_throttling_backs_off_and_serves_stale_answers(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs, auth=iam_auth(cache_ttl="1s", stale_ttl="1h"))
    pub, _ = w.user_key("sam")
    iam.create_user("sam")
    iam.upload_key("sam", pub)
    ok(w.login("sam", "sam"))
    iam_proxy.set_mode("throttle")
    time.sleep(1.2)
    iam_proxy.reset_counts()
    logins = 5
    for _ in range(logins):
        ok(w.login("sam", "sam"))
    evs = w.auth_events("sam")[1:]
    assert all(e["success"] and e["iam_cache"] == "stale" for e in evs), evs
    assert "IAM is throttling: Throttling: Rate exceeded" in evs[0]["iam_stale_reason"]
    assert any("backing off" in e["iam_stale_reason"] for e in evs[1:]), \
        [e["iam_stale_reason"] for e in evs]
    # Without back-off each login would cost 3 attempts; with it, far fewer.
    assert iam_proxy.total() < 3 * logins, iam_proxy.counts()
    # A user with no cached answer is refused while IAM throttles: fail closed.
    w.user_key("tom")
    refused(w.login("tom", "tom"))
    ev = w.last_auth("tom", 1)
    assert "IAM is throttling" in ev["reason"] and "no earlier answer" in ev["reason"], ev


def test_slow_iam_still_logs_in_within_the_login_grace(env, bastion, iam, iam_proxy, sshd_target, ssh_configs):
    w = world(env, bastion, iam_proxy, sshd_target, ssh_configs)
    pub, _ = w.user_key("uma")
    iam.create_user("uma")
    iam.upload_key("uma", pub)
    iam_proxy.set_mode("slow", delay=2.0)
    t0 = time.monotonic()
    ok(w.login("uma", "uma"))
    took = time.monotonic() - t0
    # Three calls (GetUser, ListSSHPublicKeys, GetSSHPublicKey), each 2 s late.
    assert took >= 6.0, f"the proxy's delay did not apply ({took:.1f}s)"
    assert w.last_auth("uma", 1)["iam_cache"] == "fresh"
