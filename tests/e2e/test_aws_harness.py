"""Self-tests of the AWS harness (aws.py): a real moto_server, the FaultProxy, the boto3 helpers.

No bastion binary needed. Everything listens on 127.0.0.1.
"""

import http.client
import os
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler

import botocore.exceptions
import pytest
from botocore.exceptions import ClientError

from aws import (DEFAULT_ACCOUNT, FaultProxy, Iam, LocalHTTPServer, assume_role_credentials, aws_env,
                 iam_client, rsa_key, sts_client)

OTHER = "111111111111"


def raw_call(conn: http.client.HTTPConnection, action: str, service: str = "iam", version: str = "2010-05-08",
             access_key: str = "testing") -> http.client.HTTPResponse:
    """A query-protocol call on an open connection (moto reads the scope, not the signature)."""
    conn.request("POST", "/", body=f"Action={action}&Version={version}",
                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                          "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/20240101/us-east-1/"
                                           f"{service}/aws4_request, SignedHeaders=host, Signature=0"})
    return conn.getresponse()


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    """One RSA 3072 public key for the tests that only need some valid key body."""
    return rsa_key(tmp_path_factory.mktemp("aws-harness-keys"), "k")[1]


# --------------------------------------------------------------------------
# moto itself


def test_moto_starts_answers_and_resets(moto, iam):
    assert moto.alive() and moto.url.startswith("http://127.0.0.1:")
    assert moto.start_seconds < 15, f"moto took {moto.start_seconds:.1f}s to start"
    assert iam.account_id == DEFAULT_ACCOUNT
    iam.create_user("alice")
    assert iam.users() == ["alice"]
    moto.reset()
    assert iam.users() == []
    assert "moto-api/reset" in moto.log_text()


def test_unknown_user_is_no_such_entity(iam):
    with pytest.raises(ClientError) as e:
        iam.client.list_ssh_public_keys(UserName="nobody")
    assert error_code(e) == "NoSuchEntity"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    iam.create_user("alice")
    assert iam.list_keys("alice") == []  # a known user without keys: an empty list, not an error
    with pytest.raises(ClientError) as e:
        iam.get_key("alice", "APKAAAAAAAAAAAAAAAAA")
    assert error_code(e) == "NoSuchEntity"
    with pytest.raises(ClientError) as e:
        iam.client.list_groups_for_user(UserName="nobody")
    assert error_code(e) == "NoSuchEntity"
    with pytest.raises(ClientError) as e:
        iam.client.get_group(GroupName="nogroup")
    assert error_code(e) == "NoSuchEntity"


def test_groups(iam, pub):
    iam.create_user("alice")
    iam.create_user("bob")
    iam.create_user("carol")
    assert iam.create_group("ops").endswith(":group/ops")
    iam.create_group("dev")
    iam.add_to_group("alice", "ops")
    iam.add_to_group("bob", "ops")
    iam.add_to_group("alice", "dev")
    assert sorted(iam.group_members("ops")) == ["alice", "bob"]
    assert sorted(iam.groups_of("alice")) == ["dev", "ops"]
    assert iam.groups_of("carol") == []
    iam.remove_from_group("alice", "ops")
    assert iam.group_members("ops") == ["bob"]
    assert iam.groups_of("alice") == ["dev"]
    # delete_user takes keys and memberships first
    iam.upload_key("bob", pub)
    iam.delete_user("bob")
    assert iam.group_members("ops") == []
    assert sorted(iam.users()) == ["alice", "carol"]


def test_moto_does_not_paginate_ssh_keys_or_groups(iam, pub):
    """What moto 5 does with MaxItems (documented in tests/AWS_HARNESS.md): ignores it."""
    iam.create_user("alice")
    iam.create_user("bob")
    ids = [iam.upload_key("alice", pub) for _ in range(3)]
    r = iam.client.list_ssh_public_keys(UserName="alice", MaxItems=1)
    assert [k["SSHPublicKeyId"] for k in r["SSHPublicKeys"]] == ids
    assert not r.get("IsTruncated") and "Marker" not in r
    iam.create_group("ops")
    iam.add_to_group("alice", "ops")
    iam.add_to_group("bob", "ops")
    r = iam.client.get_group(GroupName="ops", MaxItems=1)
    assert len(r["Users"]) == 2 and not r.get("IsTruncated")
    # and it does not validate key bodies (real IAM rejects non-RSA and short RSA keys)
    iam.upload_key("alice", "not a key")


def test_rsa_key(tmp_path):
    path, pub, fp = rsa_key(tmp_path, "k")
    assert pub.startswith("ssh-rsa ") and path.exists()
    out = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True).stdout
    bits, got_fp = out.split()[:2]
    assert bits == "3072" and got_fp == fp and fp.startswith("SHA256:")


def test_aws_env_points_only_at_the_endpoint():
    e = aws_env("http://127.0.0.1:1234")
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS"):
        assert e[k] == "http://127.0.0.1:1234"
    assert e["AWS_REGION"] == "us-east-1" and e["AWS_EC2_METADATA_DISABLED"] == "true"
    assert e["AWS_ACCESS_KEY_ID"] == "testing" and e["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert "AWS_PROFILE" not in e and "AWS_SESSION_TOKEN" not in e
    for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        assert not os.path.exists(e[k])
    # conftest.py strips the host's AWS_*/MOTO_* so nothing else can leak into a bastion's env
    assert not [k for k in os.environ if k.startswith(("AWS_", "MOTO_"))]


# --------------------------------------------------------------------------
# through the proxy


def test_ssh_key_roundtrip_and_counts(iam_proxy, tmp_path):
    via = Iam(iam_proxy.url)
    _, pub, _ = rsa_key(tmp_path, "alice")
    assert via.create_user("alice") == f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/alice"
    key_id = via.upload_key("alice", pub)
    assert key_id.startswith("APKA")
    keys = via.list_keys("alice")
    assert [(k["SSHPublicKeyId"], k["Status"]) for k in keys] == [(key_id, "Active")]
    got = via.get_key("alice", key_id, encoding="SSH")
    assert got["SSHPublicKeyBody"] == pub and got["Status"] == "Active"
    via.set_key_status("alice", key_id, "Inactive")
    assert via.list_keys("alice")[0]["Status"] == "Inactive"
    via.delete_key("alice", key_id)
    assert via.list_keys("alice") == []
    assert iam_proxy.counts() == {
        ("iam", "CreateUser"): 1, ("iam", "UploadSSHPublicKey"): 1, ("iam", "ListSSHPublicKeys"): 3,
        ("iam", "GetSSHPublicKey"): 1, ("iam", "UpdateSSHPublicKey"): 1, ("iam", "DeleteSSHPublicKey"): 1}
    assert iam_proxy.count("ListSSHPublicKeys") == 3
    assert iam_proxy.count("ListSSHPublicKeys", service="sts") == 0
    assert [r.action for r in iam_proxy.requests][:2] == ["CreateUser", "UploadSSHPublicKey"]
    assert all(r.service == "iam" for r in iam_proxy.requests)
    # boto3 kept its one connection alive through the proxy for all eight calls
    assert iam_proxy.connections == 1
    iam_proxy.reset_counts()
    assert iam_proxy.counts() == {} and iam_proxy.requests == [] and iam_proxy.count("ListSSHPublicKeys") == 0


def test_fixture_iam_bypasses_the_proxy(iam, iam_proxy, pub):
    iam.create_user("alice")
    iam.upload_key("alice", pub)
    assert iam_proxy.total() == 0
    assert Iam(iam_proxy.url).users() == ["alice"]  # same moto behind it
    assert iam_proxy.counts() == {("iam", "ListUsers"): 1}


def test_keep_alive_and_content_length(iam_proxy):
    c = http.client.HTTPConnection("127.0.0.1", iam_proxy.port, timeout=10)
    for _ in range(3):
        r = raw_call(c, "ListUsers")
        body = r.read()
        assert r.status == 200 and int(r.getheader("Content-Length")) == len(body)
        assert r.getheader("Transfer-Encoding") is None and r.getheader("Connection") != "close"
        assert b"<ListUsersResponse" in body
    iam_proxy.set_mode("throttle")
    r = raw_call(c, "ListUsers")
    assert r.status == 400 and len(r.read()) == int(r.getheader("Content-Length"))
    iam_proxy.set_mode("pass")
    r = raw_call(c, "GetCallerIdentity", service="sts", version="2011-06-15")
    assert r.status == 200 and b"<Account>123456789012</Account>" in r.read()
    c.close()
    assert iam_proxy.connections == 1
    assert iam_proxy.counts() == {("iam", "ListUsers"): 4, ("sts", "GetCallerIdentity"): 1}


class _ChunkedUpstream(BaseHTTPRequestHandler):
    """Answers with a chunked body that echoes what it received."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Got-Length", str(len(body)))
        self.end_headers()
        for part in (b"got:", body, b":" + b"x" * 70000):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")


def test_chunked_both_ways(tmp_path):
    up = LocalHTTPServer(("127.0.0.1", 0), _ChunkedUpstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    proxy = FaultProxy(f"http://127.0.0.1:{up.server_address[1]}")
    try:
        c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        # a Content-Length request, then a chunked one, on the same connection
        c.request("POST", "/", body=b"Action=One", headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        body = r.read()
        assert body == b"got:Action=One:" + b"x" * 70000
        assert r.getheader("Content-Length") == str(len(body)) and r.getheader("Transfer-Encoding") is None
        c.request("POST", "/", body=iter([b"Action=", b"Two"]), encode_chunked=True,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        assert r.read().startswith(b"got:Action=Two:") and r.getheader("X-Got-Length") == "10"
        assert proxy.connections == 1
        assert proxy.counts() == {(None, "One"): 1, (None, "Two"): 1}
    finally:
        proxy.close()
        up.shutdown()
        up.server_close()


# --------------------------------------------------------------------------
# faults


def test_throttle(iam_proxy):
    via = Iam(iam_proxy.url)
    via.create_user("alice")
    iam_proxy.set_mode("throttle")
    with pytest.raises(ClientError) as e:
        via.list_keys("alice")
    assert error_code(e) == "Throttling"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as e:
        via.sts.get_caller_identity()
    assert error_code(e) == "Throttling"
    # the exact wire format
    c = http.client.HTTPConnection("127.0.0.1", iam_proxy.port, timeout=10)
    r = raw_call(c, "ListUsers")
    body = r.read().decode()
    assert r.status == 400 and r.getheader("Content-Type") == "text/xml"
    assert int(r.getheader("Content-Length")) == len(body.encode())
    assert re.fullmatch(r'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type>'
                        r'<Code>Throttling</Code><Message>Rate exceeded</Message></Error>'
                        r'<RequestId>[0-9a-f-]{36}</RequestId></ErrorResponse>', body), body
    c.close()
    assert iam_proxy.count("ListSSHPublicKeys") == 1 and iam_proxy.count("GetCallerIdentity", "sts") == 1
    assert iam_proxy.count("ListUsers") == 1
    iam_proxy.set_mode("pass")
    assert via.list_keys("alice") == []


def test_error_mode_access_denied(iam_proxy):
    via = Iam(iam_proxy.url)
    iam_proxy.set_mode("error", status=403, code="AccessDenied", message="not for you")
    with pytest.raises(ClientError) as e:
        via.users()
    assert error_code(e) == "AccessDenied" and e.value.response["Error"]["Message"] == "not for you"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_down_gives_a_transport_error(iam_proxy):
    via = Iam(iam_proxy.url)
    via.create_user("alice")  # an open keep-alive connection: the next request on it is dropped
    iam_proxy.set_mode("down")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        via.list_keys("alice")
    # a fresh connection too
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        Iam(iam_proxy.url).users()
    with socket.create_connection(("127.0.0.1", iam_proxy.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\nAction=ListUsers")
        assert s.recv(100) == b""  # FIN, no response
    assert iam_proxy.count("ListSSHPublicKeys") == 1 and iam_proxy.count("ListUsers") == 2
    iam_proxy.set_mode("pass")
    assert via.users() == ["alice"]


def test_reset_mode_sends_rst(iam_proxy):
    iam_proxy.set_mode("reset")
    with socket.create_connection(("127.0.0.1", iam_proxy.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\nAction=ListUsers")
        with pytest.raises(ConnectionResetError):
            s.recv(100)
    with pytest.raises((botocore.exceptions.ConnectionClosedError, botocore.exceptions.HTTPClientError)):
        Iam(iam_proxy.url).users()
    assert iam_proxy.count("ListUsers") == 2


def test_refuse_then_pass_on_the_same_port(iam_proxy):
    via = Iam(iam_proxy.url)
    via.create_user("alice")
    port = iam_proxy.port
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert raw_call(kept, "ListUsers").read()
    iam_proxy.set_mode("refuse")
    assert not iam_proxy.listening
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        via.users()
    # connections open before were closed too (http.client reconnects on its own and is refused)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        raw_call(kept, "ListUsers").read()
    before = iam_proxy.total()
    iam_proxy.set_mode("pass")
    assert iam_proxy.port == port and iam_proxy.listening
    assert via.users() == ["alice"]
    assert iam_proxy.total() == before + 1


def test_slow(iam_proxy):
    via = Iam(iam_proxy.url)
    via.users()  # connection and client warm
    iam_proxy.set_mode("slow", delay=1.5)
    t = time.monotonic()
    assert via.users() == []
    elapsed = time.monotonic() - t
    assert 1.5 <= elapsed < 4.5, elapsed
    iam_proxy.set_mode("pass")
    t = time.monotonic()
    via.users()
    assert time.monotonic() - t < 1.0


def test_only_limits_the_fault(iam_proxy):
    via = Iam(iam_proxy.url)
    via.create_user("alice")
    iam_proxy.set_mode("throttle", only={"ListSSHPublicKeys"})
    assert via.users() == ["alice"]
    assert via.groups_of("alice") == []
    with pytest.raises(ClientError) as e:
        via.list_keys("alice")
    assert error_code(e) == "Throttling"
    iam_proxy.set_mode("slow", delay=1.0, only={"GetCallerIdentity"})
    t = time.monotonic()
    via.users()
    assert time.monotonic() - t < 0.9
    t = time.monotonic()
    via.sts.get_caller_identity()
    assert time.monotonic() - t >= 1.0
    assert iam_proxy.count("ListSSHPublicKeys") == 1 and iam_proxy.count("ListUsers") == 2
    assert iam_proxy.count("ListGroupsForUser") == 1
    assert [e["mode"] for e in iam_proxy.log[-5:]] == ["pass", "pass", "throttle", "pass", "slow"]


def test_times_then_pass_with_retries(iam_proxy):
    """A fault for the next N requests only: a retrying client gets through on attempt N+1."""
    iam_proxy.set_mode("throttle", times=2)
    retrying = iam_client(iam_proxy.url, attempts=3)
    assert retrying.list_users()["Users"] == []
    assert iam_proxy.count("ListUsers") == 3
    assert iam_proxy.mode == "pass"
    assert [e["mode"] for e in iam_proxy.log] == ["throttle", "throttle", "pass"]


def test_concurrent_requests_are_all_counted(iam_proxy):
    errors = []

    def worker():
        try:
            c = iam_client(iam_proxy.url)
            for _ in range(8):
                c.list_users()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert iam_proxy.counts() == {("iam", "ListUsers"): 32} and len(iam_proxy.requests) == 32
    assert iam_proxy.wait_count("ListUsers", 32, timeout=0) == 32


# --------------------------------------------------------------------------
# accounts


def test_cross_account_via_assume_role(moto, iam, iam_proxy, pub):
    other = iam.in_account(OTHER)
    assert other.account_id == OTHER and iam.account_id == DEFAULT_ACCOUNT
    assert other.create_user("carol") == f"arn:aws:iam::{OTHER}:user/carol"
    key_id = other.upload_key("carol", pub)
    role_arn = other.create_role("bastion-reader")
    assert role_arn == f"arn:aws:iam::{OTHER}:role/bastion-reader"
    iam.create_user("alice")
    assert iam.users() == ["alice"] and other.users() == ["carol"]
    with pytest.raises(ClientError) as e:
        iam.client.list_ssh_public_keys(UserName="carol")
    assert error_code(e) == "NoSuchEntity"

    # what a bastion configured with that role does, through the proxy
    creds = assume_role_credentials(sts_client(iam_proxy.url), role_arn)
    assert creds["AWS_ACCESS_KEY_ID"].startswith("ASIA") and creds["AWS_SESSION_TOKEN"]
    there = iam_client(iam_proxy.url, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"],
                       creds["AWS_SESSION_TOKEN"])
    keys = there.list_ssh_public_keys(UserName="carol")["SSHPublicKeys"]
    assert [k["SSHPublicKeyId"] for k in keys] == [key_id]
    assert iam_proxy.counts() == {("sts", "AssumeRole"): 1, ("iam", "ListSSHPublicKeys"): 1}
    assert [e["access_key"] for e in iam_proxy.log] == ["testing", creds["AWS_ACCESS_KEY_ID"]]

    # a reset forgets the account and the issued key: it maps back to the default account
    moto.reset()
    assert sts_client(moto.url, creds["AWS_ACCESS_KEY_ID"]).get_caller_identity()["Account"] == DEFAULT_ACCOUNT
