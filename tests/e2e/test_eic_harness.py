"""Self-tests of the EC2 Instance Connect emulator (eic.py): the SendSSHPublicKey API against a real
moto server, the per-instance IMDSv2 endpoints, and, most important, the served records checked
INDEPENDENTLY of eic.py's own code with the `openssl` and `base64` command-line tools, the way
AWS's on-instance scripts check them: a good record passes, and each faulty record or chain fails
exactly the check it is meant to fail.

No bastion binary needed. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import struct
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from eic import (CHAIN_FAULTS, DEFAULT_CALLER, KEY_LIFETIME, OTHER_INSTANCE, RECORD_FAULTS, EicService, imds_fetch)

USER = "ec2-user"

# --------------------------------------------------------------------------
# fixtures (ec2, eic and eic_client are in conftest.py)


@pytest.fixture
def run_instance(ec2):
    """run_instance(state="running") -> a new moto instance id (stopped if asked)."""
    ami = "ami-12c6146b"  # moto runs instances of any AMI id; listing its ~1300 images costs ~1 s

    def run(state: str = "running") -> str:
        iid = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
        if state == "stopped":
            ec2.stop_instances(InstanceIds=[iid])
        elif state == "terminated":
            ec2.terminate_instances(InstanceIds=[iid])
        got = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
        assert got == state, f"moto put {iid} in state {got}, not {state}"
        return iid
    return run


def ssh_keygen(d: Path, name: str, kind: str, bits: int | None = None) -> str:
    d.mkdir(parents=True, exist_ok=True)
    args = ["ssh-keygen", "-q", "-N", "", "-f", str(d / name), "-t", kind]
    if bits:
        args += ["-b", str(bits)]
    subprocess.run(args, check=True, capture_output=True)
    return (d / f"{name}.pub").read_text().strip()


def _ssh_string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def fake_dsa_key() -> str:
    """An ssh-dss public key line (OpenSSH no longer generates DSA keys): p, q, g, y."""
    blob = _ssh_string(b"ssh-dss") + b"".join(_ssh_string(b"\x00" + bytes([0x80 + i]) * n)
                                             for i, n in enumerate((128, 20, 128, 128)))
    return "ssh-dss " + base64.b64encode(blob).decode() + " dsa@test"


def code_of(excinfo) -> tuple[str, int]:
    e = excinfo.value
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


# --------------------------------------------------------------------------
# raw HTTP helpers for the IMDS


def hreq(url: str, method: str, path: str, headers: dict | None = None) -> tuple[int, str, dict]:
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def token(url: str, ttl: int = 60) -> str:
    st, body, _ = hreq(url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})
    assert st == 200, st
    return body


def md_get(url: str, path: str, tok: str, method: str = "GET") -> tuple[int, str]:
    st, body, _ = hreq(url, method, "/latest/meta-data/" + path, {"X-aws-ec2-metadata-token": tok})
    return st, body


# --------------------------------------------------------------------------
# an independent verifier: openssl and coreutils base64, no eic.py crypto


def sh(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30, **kw)


@dataclass
class Rec:
    fields: list  # the "#..." lines, as served
    key: str
    sig_lines: list

    def field(self, name: str) -> str | None:
        for line in self.fields:
            if line.startswith(f"#{name}="):
                return line[len(name) + 2:]
        return None

    def signed_bytes(self) -> bytes:
        # Every '#' line in order (known or not) and the key line, each followed by "\n".
        return ("".join(f + "\n" for f in self.fields) + self.key + "\n").encode()


def parse_records(text: str) -> list[Rec]:
    """Splits an active-keys answer the way a line reader does: '#' lines, then a line starting
    with "ssh" (the key), then signature lines up to an empty line or the end. A block without a
    key line is skipped up to the next empty line. Lines lose leading/trailing blanks."""
    lines = [ln.strip(" \t") for ln in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    out, i = [], 0
    while i < len(lines):
        fields = []
        while i < len(lines) and lines[i].startswith("#"):
            fields.append(lines[i])
            i += 1
        if i < len(lines) and lines[i].startswith("ssh"):
            key = lines[i]
            i += 1
            sig = []
            while i < len(lines) and lines[i] != "":
                sig.append(lines[i])
                i += 1
            out.append(Rec(fields, key, sig))
        else:
            while i < len(lines) and lines[i] != "":
                i += 1
        i += 1
    return out


@dataclass
class RecordVerdict:
    rec: Rec
    present: bool = False      # #Timestamp= (non-zero) and #Instance= both there
    timestamp_ok: bool = False  # #Timestamp= later than the real clock
    instance_ok: bool = False   # #Instance= equals meta-data/instance-id
    decode_ok: bool = False     # `base64 --decode` of the signature lines succeeded
    signature_ok: bool = False  # `openssl dgst -sha256 … pss … saltlen 32 -verify` succeeded
    dgst_out: str = ""

    @property
    def accepted(self) -> bool:
        return self.present and self.timestamp_ok and self.instance_ok and self.decode_ok and self.signature_ok


@dataclass
class Verdict:
    expected_cn: str
    cn: str = ""
    cn_ok: bool = False
    chain_ok: bool = False
    verify_out: str = ""
    ocsp: dict = field(default_factory=dict)  # "signer" / "intermediate" -> (ok, output)
    records: list = field(default_factory=list)
    certs: list = field(default_factory=list)

    @property
    def chain_accepted(self) -> bool:
        return self.cn_ok and self.chain_ok and all(ok for ok, _ in self.ocsp.values())

    def failed(self) -> set:
        """The names of the checks that failed (chain-level, and record-level for every record)."""
        bad = set()
        if not self.cn_ok:
            bad.add("cn")
        if not self.chain_ok:
            bad.add("chain")
        bad |= {f"ocsp:{k}" for k, (ok, _) in self.ocsp.items() if not ok}
        for r in self.records:
            for name in ("present", "timestamp_ok", "instance_ok", "decode_ok", "signature_ok"):
                if not getattr(r, name):
                    bad.add(name)
        return bad


def split_pem(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", text, re.S)


def openssl_verify(served, bundle: Path, work: Path) -> Verdict:
    """Checks what an IMDS served with openssl, the way AWS's parse script does, except the chain
    step: served certificates are passed as -untrusted and only `bundle` as -CAfile (AWS's script
    puts the served ones into -CAfile too; see test_aws_style_cafile_would_trust_a_served_root)."""
    work.mkdir(parents=True, exist_ok=True)
    region = re.sub(r"[a-z]+$", "", served.az)
    v = Verdict(expected_cn=f"managed-ssh-signer.{region}.{served.domain}")
    pems = split_pem(served.signer_pem)
    assert pems, f"no certificate in signer-cert: {served.signer_pem!r}"
    certs = []
    for i, p in enumerate(pems):
        path = work / f"cert{i}.pem"
        path.write_text(p)
        certs.append(path)
    v.certs = certs
    # 1. the signer's CN (what `openssl x509 -subject` prints after "CN = ")
    subj = sh(["openssl", "x509", "-noout", "-subject", "-in", certs[0]]).stdout.strip()
    v.cn = re.sub(r"^.*CN\s*=\s*", "", subj)
    v.cn_ok = v.cn == v.expected_cn
    # 2. the chain, to the trust anchors in the bundle only
    untrusted = work / "untrusted.pem"
    untrusted.write_text("".join(pems[1:]))
    r = sh(["openssl", "verify", "-x509_strict", "-CAfile", bundle, "-untrusted", untrusted, certs[0]])
    v.verify_out = (r.stdout + r.stderr).strip()
    v.chain_ok = r.returncode == 0 and r.stdout.strip() == f"{certs[0]}: OK"
    # 3. OCSP: each certificate but the last, until one is itself a trust anchor; the staple is
    #    named by the certificate's SHA-1 fingerprint and must be signed by the next certificate.
    staple_dir = work / "ocsp"
    staple_dir.mkdir(exist_ok=True)
    for name, der in served.staples.items():
        (staple_dir / name).write_bytes(der)
    anchors = {p.strip() for p in split_pem(bundle.read_text())}
    for i in range(len(certs) - 1):
        if pems[i].strip() in anchors:
            break
        fp_out = sh(["openssl", "x509", "-noout", "-fingerprint", "-sha1", "-in", certs[i]]).stdout
        fp = fp_out.strip().split("=", 1)[1].replace(":", "")
        r = sh(["openssl", "ocsp", "-no_nonce", "-issuer", certs[i + 1], "-cert", certs[i], "-VAfile", certs[i + 1],
                "-respin", staple_dir / fp])
        label = "signer" if i == 0 else ("intermediate" if i == 1 else f"cert{i}")
        v.ocsp[label] = (r.returncode == 0 and r.stdout.startswith(f"{certs[i]}: good"), (r.stdout + r.stderr).strip())
    # 4. the records, with the signer certificate's public key
    pubkey = work / "pubkey.pem"
    r = sh(["openssl", "x509", "-pubkey", "-noout", "-in", certs[0]])
    assert r.returncode == 0, r.stderr
    pubkey.write_text(r.stdout)
    for n, rec in enumerate(parse_records(served.records_text or "")):
        rv = RecordVerdict(rec)
        ts, inst = rec.field("Timestamp"), rec.field("Instance")
        rv.present = bool(inst) and ts is not None and ts.isdigit() and int(ts) != 0
        rv.timestamp_ok = rv.present and int(ts) > int(time.time())
        rv.instance_ok = rv.present and inst == served.instance_id
        (work / f"{n}-signed").write_bytes(rec.signed_bytes())
        (work / f"{n}-sig").write_text("".join(s + "\n" for s in rec.sig_lines))
        dec = work / f"{n}-decoded"
        with open(dec, "wb") as out:
            d = subprocess.run(["base64", "--decode", str(work / f"{n}-sig")], stdout=out, stderr=subprocess.PIPE,
                               timeout=30)
        rv.decode_ok = d.returncode == 0
        if rv.decode_ok:
            r = sh(["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                    "-verify", pubkey, "-signature", dec, work / f"{n}-signed"])
            rv.signature_ok = r.returncode == 0
            rv.dgst_out = (r.stdout + r.stderr).strip()
        v.records.append(rv)
    return v


@pytest.fixture
def pushed(eic, eic_client, run_instance, keys):
    """A running instance with alice's ED25519 key pushed for ec2-user through the API:
    (instance id, Imds, SendSSHPublicKey response)."""
    iid = run_instance()
    resp = eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub("alice"))
    return iid, eic.imds(iid), resp


# --------------------------------------------------------------------------
# SendSSHPublicKey


def test_send_accepts_rsa3072_and_ed25519(eic, eic_client, run_instance, keys):
    iid = run_instance()
    for name in ("bob", "alice"):  # bob: RSA 3072, alice: ED25519
        r = eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub(name),
                                           AvailabilityZone="us-east-1a")
        assert r["Success"] is True
        assert re.fullmatch(r"[0-9a-f-]{36}", r["RequestId"]), r
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert eic.count("Success") == 2 and eic.count() == 2
    active = eic.active_keys(iid, USER)
    assert [k.key for k in active] == [keys.pub("bob"), keys.pub("alice")]
    assert all(k.expires_at == k.pushed_at + KEY_LIFETIME for k in active)
    assert eic.calls[0].access_key == "testing" and eic.calls[0].region == "us-east-1"


def test_send_rejects_invalid_input(env, eic, eic_client, run_instance, keys):
    running, stopped = run_instance(), run_instance("stopped")
    d = env.tmp / "eic-keys"
    ecdsa = ssh_keygen(d, "ecdsa", "ecdsa", 256)
    rsa1024 = ssh_keygen(d, "rsa1024", "rsa", 1024)
    alice = keys.pub("alice")
    cases = [
        # (InstanceId, InstanceOSUser, SSHPublicKey, extra, expected code)
        ("i-XYZ0123456789", USER, alice, {}, "InvalidArgsException"),        # not hex
        ("instance-0123456", USER, alice, {}, "InvalidArgsException"),       # no i- prefix
        ("i-0123", USER, alice, {}, "InvalidArgsException"),                 # shorter than 10
        ("i-0123456789abcdef0", USER, alice, {}, "EC2InstanceNotFoundException"),
        (stopped, USER, alice, {}, "EC2InstanceStateInvalidException"),
        (running, "-root", alice, {}, "InvalidArgsException"),               # bad first character
        (running, "ec2 user", alice, {}, "InvalidArgsException"),
        (running, "u" * 33, alice, {}, "InvalidArgsException"),              # longer than 32
        (running, "", alice, {}, "InvalidArgsException"),
        (running, "ec2-user\n", alice, {}, "InvalidArgsException"),
        (running, USER, ecdsa, {}, "InvalidArgsException"),
        (running, USER, rsa1024, {}, "InvalidArgsException"),
        (running, USER, fake_dsa_key(), {}, "InvalidArgsException"),
        (running, USER, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", {}, "InvalidArgsException"),   # < 80 chars
        (running, USER, "ssh-rsa " + "A" * 4100, {}, "InvalidArgsException"),               # > 4096 chars
        (running, USER, alice + "\n#Instance=i-0123456789abcdef0", {}, "InvalidArgsException"),  # two lines
        (running, USER, 'from="10.0.0.0/8" ' + alice, {}, "InvalidArgsException"),        # options
        (running, USER, alice, {"AvailabilityZone": "us-east-1b"}, "EC2InstanceNotFoundException"),
        (running, USER, alice, {"AvailabilityZone": "nowhere"}, "InvalidArgsException"),
    ]
    for iid, user, key, extra, expected in cases:
        with pytest.raises(ClientError) as ei:
            eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=user, SSHPublicKey=key, **extra)
        assert code_of(ei) == (expected, 400), (iid, user, key[:40], extra)
    assert eic.count() == len(cases) and eic.count("Success") == 0
    assert eic.active_keys(running, USER) == [] and eic.pushes == []
    # the OS users the model's pattern allows
    for user in ("root", "ec2-user", "_svc", "user.name@corp", "a$", "0day", "12.x"):
        assert eic_client.send_ssh_public_key(InstanceId=running, InstanceOSUser=user, SSHPublicKey=alice)["Success"]


def test_send_rejects_unsigned_or_wrongly_scoped_requests(eic, run_instance, keys):
    iid = run_instance()
    body = json.dumps({"InstanceId": iid, "InstanceOSUser": USER, "SSHPublicKey": keys.pub("alice")})

    def raw(headers):
        u = urllib.parse.urlsplit(eic.url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        c.request("POST", "/", body=body, headers=headers)
        r = c.getresponse()
        out = r.status, json.loads(r.read()), r.getheader("x-amzn-ErrorType")
        c.close()
        return out

    base = {"Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AWSEC2InstanceConnectService.SendSSHPublicKey"}
    scope = "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=0"
    st, b, et = raw(base)
    assert (st, b["__type"], et) == (400, "AuthException", "AuthException:")
    st, b, _ = raw({**base, "Authorization": scope.format("ec2")})
    assert (st, b["__type"]) == (400, "AuthException")
    st, b, _ = raw({**base, "Authorization": scope.format("ec2-instance-connect"),
                    "X-Amz-Target": "AWSEC2InstanceConnectService.Nope"})
    assert (st, b["__type"]) == (400, "UnknownOperationException")
    st, b, _ = raw({**base, "Authorization": scope.format("ec2-instance-connect")})
    assert st == 200 and b["Success"] is True and set(b) == {"RequestId", "Success"}


def test_throttle_and_failure_knobs(eic, eic_client, run_instance, keys):
    iid = run_instance()
    eic.throttle(2)
    for _ in range(2):
        with pytest.raises(ClientError) as ei:
            eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub("alice"))
        assert code_of(ei) == ("ThrottlingException", 400)
    assert eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub("alice"))["Success"]
    # the throttle applies before validation, as a front-end throttle does
    eic.throttle(1)
    with pytest.raises(ClientError) as ei:
        eic_client.send_ssh_public_key(InstanceId="bad", InstanceOSUser=USER, SSHPublicKey="x")
    assert code_of(ei) == ("ThrottlingException", 400)
    eic.fail(1, "ServiceException")
    with pytest.raises(ClientError) as ei:
        eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub("alice"))
    assert code_of(ei) == ("ServiceException", 500)
    eic.fail(1, "AuthException", "not authorized")
    with pytest.raises(ClientError) as ei:
        eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub("alice"))
    assert code_of(ei) == ("AuthException", 400) and "not authorized" in str(ei.value)
    assert eic.count("ThrottlingException") == 3 and eic.count("Success") == 1 and eic.count() == 6
    assert len(eic.active_keys(iid, USER)) == 1
    # refused connections, then the same port again
    port = eic.port
    eic.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    eic.set_mode("up")
    assert eic.port == port
    assert eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub("alice"))["Success"]


# --------------------------------------------------------------------------
# IMDS


def test_pushed_key_in_imds_then_gone_after_60s(eic, eic_client, run_instance, keys):
    iid, other = run_instance(), run_instance()
    t0 = eic.clock.now()
    resp = eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub("alice"))
    imds, imds_other = eic.imds(iid), eic.imds(other)
    assert imds.port != imds_other.port
    tok = token(imds.url)
    st, body = md_get(imds.url, f"managed-ssh-keys/active-keys/{USER}/", tok)
    assert st == 200
    recs = parse_records(body)
    assert len(recs) == 1
    r = recs[0]
    assert r.key == keys.pub("alice")
    # the field lines, in order: expiry, instance, caller, the API's RequestId
    assert r.fields == [f"#Timestamp={int(t0 + 60)}", f"#Instance={iid}", f"#Caller={DEFAULT_CALLER}",
                        f"#Request={resp['RequestId']}"]
    assert len(r.sig_lines) == 1 and len(base64.b64decode(r.sig_lines[0])) == 256  # RSA 2048
    assert body.endswith("\n")
    # the fast-path probe of AWS's script: HEAD, 404 when the user has no keys
    assert md_get(imds.url, f"managed-ssh-keys/active-keys/{USER}/", tok, "HEAD")[0] == 200
    assert md_get(imds.url, "managed-ssh-keys/active-keys/root/", tok, "HEAD")[0] == 404
    assert md_get(imds.url, "managed-ssh-keys/active-keys/", tok) == (200, f"{USER}/")
    # the other instance's IMDS does not serve it
    assert md_get(imds_other.url, f"managed-ssh-keys/active-keys/{USER}/", token(imds_other.url))[0] == 404
    eic.clock.advance(59)
    assert md_get(imds.url, f"managed-ssh-keys/active-keys/{USER}/", tok)[0] == 200
    eic.clock.advance(2)  # 61 s after the push
    assert md_get(imds.url, f"managed-ssh-keys/active-keys/{USER}/", token(imds.url))[0] == 404
    assert md_get(imds.url, f"managed-ssh-keys/active-keys/{USER}/", token(imds.url), "HEAD")[0] == 404
    assert eic.active_keys(iid, USER) == [] and len(eic.pushes) == 1


def test_two_pushes_two_records(eic, eic_client, run_instance, keys):
    iid = run_instance()
    ids = [eic_client.send_ssh_public_key(InstanceId=iid, InstanceOSUser=USER, SSHPublicKey=keys.pub(n))["RequestId"]
           for n in ("alice", "bob")]
    served = imds_fetch(eic.imds(iid).url, USER)
    recs = parse_records(served.records_text)
    assert [r.key for r in recs] == [keys.pub("alice"), keys.pub("bob")]
    assert [r.field("Request") for r in recs] == ids
    assert "\n\n" in served.records_text  # records are separated by an empty line


def test_imdsv2_token_enforcement(eic, run_instance):
    iid = run_instance()
    imds = eic.imds(iid)
    # no token, a made-up token: 401, for GET and HEAD
    assert hreq(imds.url, "GET", "/latest/meta-data/instance-id")[0] == 401
    assert hreq(imds.url, "HEAD", "/latest/meta-data/instance-id")[0] == 401
    assert md_get(imds.url, "instance-id", "AQAEAnotARealToken==")[0] == 401
    # the token request needs a TTL of 1..21600 seconds, and no X-Forwarded-For
    assert hreq(imds.url, "PUT", "/latest/api/token")[0] == 400
    for bad in ("0", "21601", "abc", "-5"):
        assert hreq(imds.url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": bad})[0] == 400
    assert hreq(imds.url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60",
                                                       "X-Forwarded-For": "10.0.0.1"})[0] == 403
    assert hreq(imds.url, "GET", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == 405
    st, tok, hdrs = hreq(imds.url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "30"})
    assert st == 200 and hdrs["x-aws-ec2-metadata-token-ttl-seconds"] == "30" and len(tok) >= 40
    assert md_get(imds.url, "instance-id", tok) == (200, iid)
    assert md_get(imds.url, "instance-id/", tok) == (200, iid)  # AWS's script asks with a trailing slash
    eic.clock.advance(31)  # tokens expire on the emulator's clock
    assert md_get(imds.url, "instance-id", tok)[0] == 401
    assert md_get(imds.url, "instance-id", token(imds.url))[0] == 200
    assert md_get(imds.url, "no/such/path", token(imds.url))[0] == 404


def test_imds_metadata_paths(eic, run_instance):
    iid = run_instance()
    imds = eic.imds(iid)
    tok = token(imds.url)
    assert md_get(imds.url, "placement/availability-zone", tok) == (200, "us-east-1a")  # moto's placement
    assert md_get(imds.url, "placement/region", tok) == (200, "us-east-1")
    assert md_get(imds.url, "services/domain", tok) == (200, "amazonaws.com")
    assert imds.expected_signer_cn == "managed-ssh-signer.us-east-1.amazonaws.com"
    st, pem = md_get(imds.url, "managed-ssh-keys/signer-cert/", tok)
    assert st == 200 and len(split_pem(pem)) == 3
    st, listing = md_get(imds.url, "managed-ssh-keys/signer-ocsp/", tok)
    names = listing.split("\n")
    assert st == 200 and len(names) == 2 and all(re.fullmatch(r"[0-9A-F]{40}", n) for n in names)
    for n in names:
        st, b64 = md_get(imds.url, f"managed-ssh-keys/signer-ocsp/{n}", tok)
        assert st == 200 and base64.b64decode(b64, validate=True)[:1] == b"\x30"  # a DER SEQUENCE
    assert md_get(imds.url, "managed-ssh-keys/signer-ocsp/" + "0" * 40, tok)[0] == 404
    assert md_get(imds.url, f"managed-ssh-keys/active-keys/{USER}/", tok)[0] == 404
    assert imds.env() == {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_EC2_METADATA_DISABLED": "false"}
    assert eic.env() == {"AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT": eic.url}
    assert imds.count("/latest/meta-data/managed-ssh-keys/signer-ocsp/") == 4
    assert eic.ca_bundle.read_text() == eic.pki.root_pem()


def test_imds_down_knobs(eic, run_instance):
    imds = eic.imds(run_instance())
    port = imds.port
    imds.set_mode("error")
    assert hreq(imds.url, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == 500
    imds.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    imds.set_mode("up")
    assert imds.port == port
    assert md_get(imds.url, "instance-id", token(imds.url))[0] == 200
    imds.set_mode("slow", delay=1.0)
    t = time.monotonic()
    token(imds.url)
    assert time.monotonic() - t >= 0.9
    imds.set_mode("up")



def test_imds_bound_to_another_address(eic, run_instance):
    """`eic.imds(iid, bind=...)` listens on that address only (here 127.0.0.2; the EIC suite binds
    a veth address so an instance's namespace can reach it), also after refuse/up."""
    iid = run_instance()
    imds = eic.imds(iid, bind="127.0.0.2")
    assert imds.url == f"http://127.0.0.2:{imds.port}" and imds.bind == "127.0.0.2"
    assert imds_fetch(imds.url, USER).instance_id == iid
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", imds.port), timeout=2).close()
    imds.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", imds.port), timeout=2).close()
    imds.set_mode("up")
    assert imds_fetch(imds.url, USER).instance_id == iid
    assert eic.imds(iid) is imds and eic.url.startswith("http://127.0.0.1:")


# --------------------------------------------------------------------------
# the served records, checked with openssl


def test_good_record_passes_openssl(env, eic, pushed):
    iid, imds, resp = pushed
    served = imds_fetch(imds.url, USER)
    v = openssl_verify(served, eic.ca_bundle, env.tmp / "verify")
    assert v.cn == v.expected_cn == "managed-ssh-signer.us-east-1.amazonaws.com"
    assert v.chain_ok, v.verify_out
    assert set(v.ocsp) == {"signer", "intermediate"}
    assert all(ok for ok, _ in v.ocsp.values()), v.ocsp
    assert len(v.records) == 1 and v.records[0].accepted, v.records[0]
    assert v.failed() == set()


RECORD_CASES = [
    ("expired", {"timestamp_ok"}),
    ("wrong_instance", {"instance_ok"}),
    ("bad_signature", {"signature_ok"}),
    ("garbage_signature", {"decode_ok", "signature_ok"}),
    ("no_timestamp", {"present", "timestamp_ok", "instance_ok"}),
    ("no_instance", {"present", "timestamp_ok", "instance_ok"}),
]
CHAIN_CASES = [
    ("wrong_cn", {"cn"}),
    ("revoked_signer", {"ocsp:signer"}),
    ("revoked_intermediate", {"ocsp:intermediate"}),
    ("untrusted_root", {"chain"}),
    ("missing_staple", {"ocsp:signer"}),
    ("missing_intermediate_staple", {"ocsp:intermediate"}),
    ("stale_staple", {"ocsp:signer"}),
]


@pytest.mark.parametrize("fault,fails", RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_record_fault_fails_its_check(env, eic, pushed, fault, fails):
    iid, imds, _ = pushed
    assert {c[0] for c in RECORD_CASES} == set(RECORD_FAULTS)  # every record knob has its case
    imds.set_record_fault(fault)
    served = imds_fetch(imds.url, USER)
    v = openssl_verify(served, eic.ca_bundle, env.tmp / "verify")
    assert v.chain_accepted, (v.verify_out, v.ocsp)
    assert len(v.records) == 1 and not v.records[0].accepted
    assert v.failed() == fails, (v.failed(), v.records[0])
    if fault == "wrong_instance":
        assert v.records[0].rec.field("Instance") == OTHER_INSTANCE
    # the knob off again: the same key verifies
    imds.set_record_fault(None)
    assert openssl_verify(imds_fetch(imds.url, USER), eic.ca_bundle, env.tmp / "verify2").failed() == set()


@pytest.mark.parametrize("fault,fails", CHAIN_CASES, ids=[c[0] for c in CHAIN_CASES])
def test_chain_fault_fails_its_check(env, eic, pushed, fault, fails):
    iid, imds, _ = pushed
    assert {c[0] for c in CHAIN_CASES} == set(CHAIN_FAULTS)  # every chain knob has its case
    imds.set_chain_fault(fault)
    served = imds_fetch(imds.url, USER)
    v = openssl_verify(served, eic.ca_bundle, env.tmp / "verify")
    assert v.failed() == fails, (v.failed(), v.verify_out, v.ocsp, v.cn)
    # the records are signed by the served signer's key: their signature still verifies
    assert len(v.records) == 1 and v.records[0].signature_ok
    if fault.startswith("revoked"):
        label = next(iter(fails)).split(":")[1]
        assert ": revoked" in v.ocsp[label][1], v.ocsp[label]
    if fault == "stale_staple":
        assert "Status times invalid" in v.ocsp["signer"][1], v.ocsp["signer"]
    if fault == "untrusted_root":
        assert v.cn_ok and "error" in v.verify_out.lower()
    imds.set_chain_fault(None)
    assert openssl_verify(imds_fetch(imds.url, USER), eic.ca_bundle, env.tmp / "verify2").failed() == set()


def test_aws_style_cafile_would_trust_a_served_root(env, eic, pushed):
    """Why a verifier must use only its own bundle as trust anchors: AWS's parse script passes the
    served certificates (after the signer) together with the CA bundle as one -CAfile, so a chain
    that brings its own root verifies. Documented in EIC_EMULATOR.md; the bastion must not do this."""
    iid, imds, _ = pushed
    imds.set_chain_fault("untrusted_root")
    served = imds_fetch(imds.url, USER)
    work = env.tmp / "aws-style"
    v = openssl_verify(served, eic.ca_bundle, work)
    assert not v.chain_ok
    ca_trust = work / "ca-trust.pem"
    ca_trust.write_text("".join(split_pem(served.signer_pem)[1:]) + eic.ca_bundle.read_text())
    r = sh(["openssl", "verify", "-x509_strict", "-CAfile", ca_trust, v.certs[0]])
    assert r.returncode == 0 and r.stdout.strip() == f"{v.certs[0]}: OK", r.stdout + r.stderr


def test_injected_records_unknown_fields_and_wrapped_signatures(env, eic, run_instance, keys):
    """Unknown '#' lines are part of the signed bytes; signatures may span several lines; records of
    all kinds can be injected next to pushed ones."""
    iid = run_instance()
    imds = eic.imds(iid, sig_wrap=76)
    eic.push(iid, USER, keys.pub("alice"))
    imds.inject_record(USER, keys.pub("bob"), extra_fields=[("Future", "field=with=equals")])
    imds.inject_record(USER, keys.pub("mallory"), fault="bad_signature")
    imds.inject_record("root", keys.pub("bob"))
    served = imds_fetch(imds.url, USER)
    v = openssl_verify(served, eic.ca_bundle, env.tmp / "verify")
    assert [r.rec.key for r in v.records] == [keys.pub(n) for n in ("alice", "bob", "mallory")]
    assert [r.accepted for r in v.records] == [True, True, False]
    bob = v.records[1].rec
    assert bob.fields[-1] == "#Future=field=with=equals" and len(bob.sig_lines) == 5  # 344 chars / 76
    # without the unknown line the signature does not verify: every '#' line is signed
    work = env.tmp / "verify"
    stripped = Rec([f for f in bob.fields if not f.startswith("#Future=")], bob.key, bob.sig_lines)
    (work / "stripped").write_bytes(stripped.signed_bytes())
    r = sh(["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
            "-verify", work / "pubkey.pem", "-signature", work / "1-decoded", work / "stripped"])
    assert r.returncode != 0
    # a timestamp of our choice, and raw text a parser must skip
    imds.clear_injected()
    imds.inject_record(USER, keys.pub("bob"), timestamp=int(time.time()) - 1)
    imds.inject_raw(USER, "#Timestamp=9999999999\nnot a key line\ngarbage\n")
    v = openssl_verify(imds_fetch(imds.url, USER), eic.ca_bundle, env.tmp / "verify3")
    assert [(r.rec.key, r.accepted) for r in v.records] == [(keys.pub("alice"), True), (keys.pub("bob"), False)]
    assert v.records[1].signature_ok and not v.records[1].timestamp_ok
