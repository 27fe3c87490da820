"""An emulator of EC2 Instance Connect for the end-to-end suites: the API and the on-instance side.

moto's EC2 Instance Connect is a stub (it answers Success and stores nothing), so this module
emulates both halves of the real service, faithfully enough for the bastion's `eic` key source
and its SendSSHPublicKey client to be tested against it. Everything listens on 127.0.0.1, except an
`Imds` given another address (`eic.imds(iid, bind="10.199.7.1")`, for an instance in a namespace).

- `Clock`: the emulator's notion of "now" (starts at the real time, moves only by `advance()`), so
  a test can expire a pushed key with `clock.advance(61)` instead of sleeping.
- `Pki`: a test PKI built with `cryptography`: root CA -> intermediate CA -> signer certificate
  (RSA 2048, CN `managed-ssh-signer.<region>.<domain>`), OCSP responses for the signer and the
  intermediate signed by their issuers, and the faulty variants (wrong CN, revoked, another root,
  missing or stale staple). `write_bundle(path)` writes the trust anchor (the root) as PEM.
- `EicService`: the EC2 Instance Connect API (`SendSSHPublicKey`, AWS JSON 1.1) on its own port.
  It validates like the real API, resolves the instance through moto's DescribeInstances (it must
  exist and be `running`), keeps each pushed key for 60 s on the `Clock`, counts calls, and has
  fault knobs (`throttle(n)`, `fail(n, code)`, `set_mode("refuse")`).
- `Imds`: one IMDSv2 endpoint per emulated instance (`EicService.imds(instance_id)`): token
  `PUT /latest/api/token`, token-checked GETs of the instance identity and of
  `meta-data/managed-ssh-keys/...`, serving the instance's active pushed keys as signed records in
  the real format, plus records a test injects. Fault knobs produce each rejectable record and
  chain (`set_record_fault`, `set_chain_fault`) and an unreachable or failing IMDS (`set_mode`).

The formats, and what a verifier must check, are described in tests/EIC_EMULATOR.md (in our own
words; AWS's on-instance scripts, aws/aws-ec2-instance-connect-config, are the reference for them,
but none of their code is used here).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import secrets
import struct
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from aws import REGION, LocalHTTPServer, serve_in_background, stop_serving

DEFAULT_DOMAIN = "amazonaws.com"
DEFAULT_CALLER = "arn:aws:iam::123456789012:user/bastion-e2e"
KEY_LIFETIME = 60  # seconds a pushed key stays (API reference: "The key remains for 60 seconds")
TARGET_PREFIX = "AWSEC2InstanceConnectService"
JSON_11 = "application/x-amz-json-1.1"
SIGNING_NAME = "ec2-instance-connect"  # the SigV4 service name in the credential scope
MAX_TOKEN_TTL = 21600  # IMDSv2: 1 second .. 6 hours

# --------------------------------------------------------------------------
# time


class Clock:
    """The emulator's clock: `now()` in epoch seconds. Starts at the real time and moves only when
    a test calls `advance(seconds)` (it does not follow the real clock: time stands still between
    calls, so a test is never racing a 60-second expiry). Key lifetimes, `#Timestamp=` values and
    IMDSv2 token lifetimes are measured on it."""

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._now += seconds
            return self._now


# --------------------------------------------------------------------------
# SSH public keys (SendSSHPublicKey accepts RSA >= 2048 bits and ED25519 only)


class KeyRejected(ValueError):
    """An SSHPublicKey the real API would refuse (message says why)."""


def _ssh_fields(blob: bytes) -> list[bytes]:
    """The length-prefixed fields of an SSH wire-format key blob (RFC 4253 section 6.6)."""
    out, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise KeyRejected("truncated key blob")
        (n,) = struct.unpack(">I", blob[i:i + 4])
        i += 4
        if i + n > len(blob):
            raise KeyRejected("truncated key blob")
        out.append(blob[i:i + n])
        i += n
    return out


def ssh_key_info(text: str) -> tuple[str, int]:
    """(key type, bits) of one OpenSSH public key line `type base64 [comment]`; raises KeyRejected
    for anything SendSSHPublicKey refuses: not one line, options before the type, bad base64,
    a blob whose inner type differs from the outer one, ECDSA, DSA, security keys, certificates,
    unknown types, RSA under 2048 bits."""
    if "\n" in text.strip("\r\n") or "\r" in text.strip("\r\n"):
        # A newline inside the key would let a caller forge record lines on the instance.
        raise KeyRejected("the key must be a single line")
    parts = text.strip().split()
    if len(parts) < 2:
        raise KeyRejected("not an OpenSSH public key (type and base64 blob expected)")
    kind, b64 = parts[0], parts[1]
    if kind in ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-dss") \
            or kind.startswith("sk-") or "-cert-" in kind:
        raise KeyRejected(f"unsupported key type {kind} (RSA or ED25519 required)")
    if kind not in ("ssh-rsa", "ssh-ed25519"):
        raise KeyRejected(f"unsupported or malformed key type {kind!r}")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyRejected("the key blob is not valid base64") from None
    fields = _ssh_fields(blob)
    if not fields or fields[0] != kind.encode():
        raise KeyRejected("the key blob's type does not match the key type")
    if kind == "ssh-rsa":
        if len(fields) != 3:
            raise KeyRejected("malformed RSA key")
        bits = int.from_bytes(fields[2], "big").bit_length()
        if bits < 2048:
            raise KeyRejected(f"RSA key of {bits} bits: at least 2048 required")
        return kind, bits
    if len(fields) != 2 or len(fields[1]) != 32:
        raise KeyRejected("malformed ED25519 key")
    return kind, 256


# --------------------------------------------------------------------------
# the test PKI


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _issue(cn: str, key, issuer_cert: x509.Certificate | None, issuer_key, ca: bool,
           days: int = 30) -> x509.Certificate:
    """A v3 certificate that passes `openssl verify -x509_strict`: critical basicConstraints, key
    usage, subject and authority key identifiers. `issuer_cert=None`: self-signed."""
    now = _utcnow()
    issuer_name = _name(cn) if issuer_cert is None else issuer_cert.subject
    issuer_pub = key.public_key() if issuer_cert is None else issuer_cert.public_key()
    b = (x509.CertificateBuilder()
         .subject_name(_name(cn))
         .issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=1))
         .not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=(None if issuer_cert is None else 0) if ca else None),
                        critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                      crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False))
    return b.sign(issuer_key if issuer_cert is not None else key, hashes.SHA256())


def cert_fingerprint(cert: x509.Certificate) -> str:
    """How a staple is named: the SHA-1 of the certificate's DER, upper-case hex, no colons (what
    `openssl x509 -noout -fingerprint -sha1` prints, colons removed)."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()


def ocsp_response(cert: x509.Certificate, issuer: x509.Certificate, issuer_key, status: str = "good",
                  this_update: dt.datetime | None = None, next_update: dt.datetime | None = None) -> bytes:
    """A DER OCSP response (BasicOCSPResponse, successful) about `cert`, signed directly by its
    issuer. The CertID uses SHA-1 (what `openssl ocsp -issuer … -cert …` asks about by default, and
    it only matches a response with the same hash algorithm); no nonce."""
    now = _utcnow()
    this_update = this_update or now - dt.timedelta(hours=1)
    next_update = next_update or now + dt.timedelta(days=1)
    kw = {}
    if status == "revoked":
        kw = {"cert_status": ocsp.OCSPCertStatus.REVOKED, "revocation_time": now - dt.timedelta(hours=2),
              "revocation_reason": x509.ReasonFlags.key_compromise}
    elif status == "good":
        kw = {"cert_status": ocsp.OCSPCertStatus.GOOD, "revocation_time": None, "revocation_reason": None}
    else:
        raise ValueError(status)
    b = (ocsp.OCSPResponseBuilder()
         .add_response(cert=cert, issuer=issuer, algorithm=hashes.SHA1(), this_update=this_update,
                       next_update=next_update, **kw)
         .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer))
    return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@dataclass
class Chain:
    """What an instance's IMDS serves as the signer: the key that signs records, the certificates
    of `signer-cert` (signer first, then its issuers up to and including a root), and the OCSP
    staples of `signer-ocsp/` (fingerprint name -> DER)."""
    kind: str
    signer_key: rsa.RSAPrivateKey
    certs: list
    staples: dict

    @property
    def signer(self) -> x509.Certificate:
        return self.certs[0]

    def pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.certs)


CHAIN_FAULTS = ("wrong_cn", "revoked_signer", "revoked_intermediate", "untrusted_root", "missing_staple",
                "missing_intermediate_staple", "stale_staple")


class Pki:
    """The test PKI. Certificates are valid from one day ago for 30 days (real time: openssl and
    the bastion check them against the real clock, not the emulator's `Clock`).

    `chain(kind)` returns the `Chain` an IMDS serves: `"good"` or one of `CHAIN_FAULTS`:
      wrong_cn                     signer CN `managed-ssh-signer.us-west-2.<domain>` (another region),
                                   under the genuine intermediate, good staples
      revoked_signer               genuine chain, the signer's staple says revoked
      revoked_intermediate         genuine chain, the intermediate's staple says revoked
      untrusted_root               signer -> intermediate -> root with the SAME names as the genuine
                                   ones but other keys: only the trust anchor check catches it
      missing_staple               genuine chain, the signer's staple is not served
      missing_intermediate_staple  genuine chain, the intermediate's staple is not served
      stale_staple                 genuine chain, the signer's staple expired yesterday
    Records served with a faulty chain are signed by that chain's signer key, so the signature
    itself verifies and only the chain check in question fails.
    """

    def __init__(self, region: str = REGION, domain: str = DEFAULT_DOMAIN):
        self.region, self.domain = region, domain
        self.signer_cn = f"managed-ssh-signer.{region}.{domain}"
        self.root_key, self.int_key, self.signer_key = _rsa(), _rsa(), _rsa()
        self.root = _issue("EIC Test Root CA", self.root_key, None, None, ca=True, days=60)
        self.intermediate = _issue("EIC Test Intermediate CA", self.int_key, self.root, self.root_key, ca=True)
        self.signer = _issue(self.signer_cn, self.signer_key, self.intermediate, self.int_key, ca=False)
        self._chains: dict[str, Chain] = {}
        self._lock = threading.Lock()

    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()

    def write_bundle(self, path) -> Path:
        """Writes the trust anchor (the root certificate, PEM) to `path`: the CA bundle the tests
        hand to the bastion."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.root_pem())
        return p

    def chain(self, kind: str = "good") -> Chain:
        with self._lock:
            if kind not in self._chains:
                self._chains[kind] = self._build(kind)
            return self._chains[kind]

    def _staples(self, signer, signer_status="good", int_status="good", **kw) -> dict:
        return {cert_fingerprint(signer): ocsp_response(signer, self.intermediate, self.int_key, signer_status, **kw),
                cert_fingerprint(self.intermediate): ocsp_response(self.intermediate, self.root, self.root_key,
                                                                   int_status)}

    def _build(self, kind: str) -> Chain:
        genuine = [self.signer, self.intermediate, self.root]
        if kind == "good":
            return Chain(kind, self.signer_key, genuine, self._staples(self.signer))
        if kind == "wrong_cn":
            key = _rsa()
            cert = _issue(f"managed-ssh-signer.us-west-2.{self.domain}", key, self.intermediate, self.int_key, ca=False)
            return Chain(kind, key, [cert, self.intermediate, self.root], self._staples(cert))
        if kind == "revoked_signer":
            return Chain(kind, self.signer_key, genuine, self._staples(self.signer, signer_status="revoked"))
        if kind == "revoked_intermediate":
            return Chain(kind, self.signer_key, genuine, self._staples(self.signer, int_status="revoked"))
        if kind == "untrusted_root":
            rk, ik, sk = _rsa(), _rsa(), _rsa()
            root = _issue("EIC Test Root CA", rk, None, None, ca=True, days=60)
            inter = _issue("EIC Test Intermediate CA", ik, root, rk, ca=True)
            signer = _issue(self.signer_cn, sk, inter, ik, ca=False)
            staples = {cert_fingerprint(signer): ocsp_response(signer, inter, ik),
                       cert_fingerprint(inter): ocsp_response(inter, root, rk)}
            return Chain(kind, sk, [signer, inter, root], staples)
        if kind == "missing_staple":
            staples = self._staples(self.signer)
            del staples[cert_fingerprint(self.signer)]
            return Chain(kind, self.signer_key, genuine, staples)
        if kind == "missing_intermediate_staple":
            staples = self._staples(self.signer)
            del staples[cert_fingerprint(self.intermediate)]
            return Chain(kind, self.signer_key, genuine, staples)
        if kind == "stale_staple":
            now = _utcnow()
            return Chain(kind, self.signer_key, genuine,
                         self._staples(self.signer, this_update=now - dt.timedelta(days=2),
                                       next_update=now - dt.timedelta(days=1)))
        raise ValueError(f"unknown chain kind {kind!r}; one of good, {', '.join(CHAIN_FAULTS)}")


# --------------------------------------------------------------------------
# records


RECORD_FAULTS = ("expired", "wrong_instance", "bad_signature", "garbage_signature", "no_timestamp", "no_instance")
OTHER_INSTANCE = "i-0fedcba9876543210"


def sign_record(signed: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """RSA-PSS, SHA-256, MGF1 with SHA-256, salt length 32: the signature over a record's bytes."""
    return key.sign(signed, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())


def record_text(fields: list, key_line: str, signer_key, fault: str | None = None,
                sig_wrap: int | None = None) -> str:
    """One record: `#Name=value` lines in the order given, the key line, the base64 signature
    (one line, or `sig_wrap` columns per line), each line ending in "\\n". The signed bytes are the
    `#` lines and the key line, each with its "\\n" (not the signature lines).

    `fault` (one of RECORD_FAULTS) is applied to `fields` (a list of (name, value)) by the caller
    except the signature faults, applied here: `bad_signature` flips one bit of a valid signature
    (still valid base64, the right length), `garbage_signature` is not base64 at all."""
    signed = "".join(f"#{k}={v}\n" for k, v in fields) + key_line + "\n"
    sig = sign_record(signed.encode(), signer_key)
    if fault == "bad_signature":
        sig = bytearray(sig)
        sig[len(sig) // 2] ^= 0x01
        sig = bytes(sig)
    b64 = base64.b64encode(sig).decode()
    if fault == "garbage_signature":
        b64 = "this is not a valid signature"
    if sig_wrap:
        b64 = "\n".join(b64[i:i + sig_wrap] for i in range(0, len(b64), sig_wrap))
    return signed + b64 + "\n"


@dataclass
class PushedKey:
    """One accepted SendSSHPublicKey: served on the instance until `expires_at` (Clock time)."""
    instance_id: str
    os_user: str
    key: str
    request_id: str
    caller: str
    pushed_at: float
    expires_at: float


@dataclass
class Call:
    """One request to the EicService: the action, the parameters it named, and the outcome
    ("Success" or the error code)."""
    action: str | None
    instance_id: str | None
    os_user: str | None
    outcome: str
    status: int
    request_id: str
    t: float = field(default_factory=time.monotonic)
    access_key: str | None = None
    region: str | None = None


# --------------------------------------------------------------------------
# a small HTTP server that can stop listening and listen again on the same port


class _Listener:
    """Listening on <bind>:<port> (127.0.0.1 unless `_init_listener(bind=...)`) with a handler
    class; `_unlisten()` closes the socket (and every open connection), so clients get "connection
    refused", and `_listen()` binds the SAME address and port again."""

    handler = None  # a BaseHTTPRequestHandler subclass, set by subclasses
    name = "listener"

    def _init_listener(self, bind: str = "127.0.0.1") -> None:
        self._conns: set = set()
        self._conn_lock = threading.Lock()
        self._server = None
        self.bind = bind
        self.port = 0
        self._listen()
        self.url = f"http://{bind}:{self.port}"

    def _listen(self) -> None:
        def make(port):
            srv = LocalHTTPServer((self.bind, port), self.handler)
            srv.owner = self
            return srv

        self._server = serve_in_background(make, self.port, self.name)
        self.port = self._server.server_address[1]

    def _unlisten(self) -> None:
        srv, self._server = self._server, None
        stop_serving(srv, self._conns, self._conn_lock)

    @property
    def listening(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        self._closed = True
        self._unlisten()


class _BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        o = self.server.owner
        with o._conn_lock:
            o._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            o = self.server.owner
            with o._conn_lock:
                o._conns.discard(self.connection)

    def log_message(self, fmt, *args):
        pass

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", headers=(), head: bool = False):
        self.send_response_only(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and not head:
            self.wfile.write(body)


# --------------------------------------------------------------------------
# the EC2 Instance Connect API

# Parameter constraints of SendSSHPublicKey (service model ec2-instance-connect 2018-04-02).
INSTANCE_ID_RE = re.compile(r"i-[a-f0-9]+")
OS_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9@._-]{0,30}[A-Za-z0-9$_-]?"
                        r"|(?=.{2,32}$)[0-9]{1,32}[A-Za-z@._-][A-Za-z0-9@._-]*[A-Za-z0-9$_-]?")
AZ_RE = re.compile(r"(\w+-){2,3}\d+\w+")
_CRED_RE = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")

# HTTP status of each modelled error (the API reference lists 400 for the client errors).
ERROR_STATUS = {"AuthException": 400, "InvalidArgsException": 400, "EC2InstanceNotFoundException": 400,
                "EC2InstanceStateInvalidException": 400, "ThrottlingException": 400,
                "EC2InstanceUnavailableException": 503, "ServiceException": 500}


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or ERROR_STATUS.get(code, 400)


class _EicHandler(_BaseHandler):
    server: LocalHTTPServer

    def do_POST(self):
        self.server.owner._handle(self)

    def do_GET(self):
        self._body()
        self._send(404, b'{"message":"Not Found"}', JSON_11)

    do_PUT = do_DELETE = do_GET


class EicService(_Listener):
    """The EC2 Instance Connect API on http://127.0.0.1:<port> (`.url`), AWS JSON 1.1:
    `POST /`, `X-Amz-Target: AWSEC2InstanceConnectService.SendSSHPublicKey`,
    `Content-Type: application/x-amz-json-1.1`, body `{"InstanceId", "InstanceOSUser",
    "SSHPublicKey", "AvailabilityZone"?}` -> 200 `{"RequestId": "<uuid>", "Success": true}`.
    Errors: HTTP 400 (500 for ServiceException) with `{"__type": "<Code>", "Message": "..."}` and
    an `x-amzn-ErrorType` header, as botocore and the Rust SDK parse them.

    What it checks, in this order (mirroring the real service):
      1. fault knobs: `throttle(n)` / `fail(n, code)` answer the next n calls with that error
         before anything else (as a front-end throttle would);
      2. the SigV4 `Authorization` header names service `ec2-instance-connect` in its credential
         scope (the signature itself is not verified): otherwise `AuthException`;
      3. the target names SendSSHPublicKey (`UnknownOperationException`), the body is a JSON
         object (`SerializationException`);
      4. parameters, all `InvalidArgsException`: InstanceId 10-32 chars `^i-[a-f0-9]+$`;
         InstanceOSUser 1-32 chars matching the model's pattern; SSHPublicKey 80-4096 chars,
         one line, ssh-rsa of >= 2048 bits or ssh-ed25519 (ECDSA, DSA, security keys,
         certificates refused); AvailabilityZone, if given, 6-32 chars `^(\\w+-){2,3}\\d+\\w+$`;
      5. the instance, through moto's DescribeInstances: unknown -> `EC2InstanceNotFoundException`,
         in another AvailabilityZone than the one given -> `EC2InstanceNotFoundException`, not
         `running` -> `EC2InstanceStateInvalidException`; moto unreachable -> `ServiceException`.
    Then the key is stored for (instance, user) until `Clock.now() + 60`; several pushes coexist.

    `moto_url` is where DescribeInstances goes (moto directly, so those calls are not faulted or
    counted by a FaultProxy). `caller_arn` fills each record's `#Caller=`.
    """

    handler = _EicHandler
    name = "eic-api"

    def __init__(self, moto_url: str, tmp: Path | str, clock: Clock | None = None, region: str = REGION,
                 domain: str = DEFAULT_DOMAIN, caller_arn: str = DEFAULT_CALLER, pki: Pki | None = None):
        self.moto_url, self.region, self.domain, self.caller_arn = moto_url, region, domain, caller_arn
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.clock = clock or Clock()
        self.pki = pki or Pki(region, domain)
        self.ca_bundle = self.pki.write_bundle(self.tmp / "eic-ca-bundle.pem")
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], list[PushedKey]] = {}
        self.pushes: list[PushedKey] = []  # every accepted push, in order (expired ones too)
        self.calls: list[Call] = []
        self._faults: list[tuple[str, str, int]] = []  # (code, message, status), consumed one per call
        self._ec2 = None
        self._imds: dict[str, Imds] = {}
        self._closed = False
        self._init_listener()

    # --- environment -------------------------------------------------------
    def env(self) -> dict:
        """What a process needs to send its SendSSHPublicKey calls here (merge over aws.aws_env):
        the service-specific endpoint variable of the AWS SDKs (service id "EC2 Instance Connect")."""
        return {"AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT": self.url}

    # --- fault knobs ---------------------------------------------------------
    def throttle(self, times: int = 1) -> None:
        """The next `times` calls get HTTP 400 `ThrottlingException`, whatever they ask."""
        self.fail(times, "ThrottlingException", "Rate exceeded")

    def fail(self, times: int = 1, code: str = "ServiceException", message: str = "Internal error",
             status: int | None = None) -> None:
        """The next `times` calls get error `code` (HTTP status from ERROR_STATUS unless given),
        e.g. fail(1, "AuthException", "not authorized"), fail(2, "EC2InstanceUnavailableException")."""
        with self._lock:
            self._faults.extend([(code, message, status or ERROR_STATUS.get(code, 400))] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_mode(self, mode: str) -> None:
        """"refuse": stop listening (connects are refused); "up": listen again on the same port."""
        if mode == "refuse":
            self._unlisten()
        elif mode == "up":
            if self._server is None:
                self._listen()
        else:
            raise ValueError(mode)

    # --- counts --------------------------------------------------------------
    def count(self, outcome: str | None = None, action: str = "SendSSHPublicKey") -> int:
        """Calls of `action` (all, or only those whose outcome is "Success" or an error code)."""
        with self._lock:
            return sum(1 for c in self.calls if c.action == action and (outcome is None or c.outcome == outcome))

    def wait_count(self, n: int, outcome: str | None = None, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            c = self.count(outcome)
            if c >= n:
                return c
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} SendSSHPublicKey call(s) ({outcome or 'any'}) expected within "
                                     f"{timeout}s, saw {c}: {self.calls}")
            time.sleep(0.05)

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()

    # --- keys ----------------------------------------------------------------
    def active_keys(self, instance_id: str, os_user: str) -> list[PushedKey]:
        """The keys pushed for (instance, user) that have not expired on the Clock, oldest first."""
        now = self.clock.now()
        with self._lock:
            live = [k for k in self._keys.get((instance_id, os_user), []) if k.expires_at > now]
            self._keys[(instance_id, os_user)] = live
            return list(live)

    def users_with_keys(self, instance_id: str) -> list[str]:
        with self._lock:
            users = sorted({u for (i, u) in self._keys if i == instance_id})
        return [u for u in users if self.active_keys(instance_id, u)]

    def push(self, instance_id: str, os_user: str, key: str, request_id: str | None = None,
             caller: str | None = None) -> PushedKey:
        """Stores a key directly, with no validation and no call counted (test setup)."""
        now = self.clock.now()
        k = PushedKey(instance_id, os_user, key.strip(), request_id or str(uuid.uuid4()),
                      caller or self.caller_arn, now, now + KEY_LIFETIME)
        with self._lock:
            self._keys.setdefault((instance_id, os_user), []).append(k)
            self.pushes.append(k)
        return k

    # --- moto ---------------------------------------------------------------
    def _ec2_client(self):
        if self._ec2 is None:
            import boto3
            from botocore.config import Config
            self._ec2 = boto3.session.Session().client(
                "ec2", endpoint_url=self.moto_url, region_name=self.region, aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30))
        return self._ec2

    def describe_instance(self, instance_id: str) -> dict | None:
        """moto's view of the instance (DescribeInstances), or None if moto does not know it."""
        from botocore.exceptions import ClientError
        try:
            with self._lock:
                client = self._ec2_client()
            r = client.describe_instances(InstanceIds=[instance_id])
        except ClientError as e:
            if e.response["Error"]["Code"] in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                return None
            raise
        for res in r.get("Reservations", []):
            for inst in res.get("Instances", []):
                if inst["InstanceId"] == instance_id:
                    return inst
        return None

    # --- IMDS ----------------------------------------------------------------
    def imds(self, instance_id: str, az: str | None = None, **kw) -> "Imds":
        """The IMDS of emulated instance `instance_id` (started on first use, then the same one;
        later calls ignore the arguments). The AvailabilityZone comes from moto unless given.
        `bind="10.199.7.1"` listens on that (already configured) address instead of 127.0.0.1,
        so processes in a network namespace can reach it, as an instance reaches 169.254.169.254;
        `.url` names that address."""
        with self._lock:
            existing = self._imds.get(instance_id)
        if existing is not None:
            return existing
        if az is None:
            inst = self.describe_instance(instance_id)
            az = (inst or {}).get("Placement", {}).get("AvailabilityZone") or f"{self.region}a"
        m = Imds(self, instance_id, az=az, domain=self.domain, **kw)
        with self._lock:
            self._imds[instance_id] = m
        return m

    def close(self) -> None:
        for m in list(self._imds.values()):
            m.close()
        super().close()

    # --- the API -------------------------------------------------------------
    def _handle(self, h: _EicHandler) -> None:
        rid = str(uuid.uuid4())
        try:
            body = h._body()
        except (OSError, ValueError):
            h.close_connection = True
            return
        target = h.headers.get("X-Amz-Target") or ""
        action = target.rsplit(".", 1)[-1] if target else None
        m = _CRED_RE.search(h.headers.get("Authorization") or "")
        params: dict = {}
        try:
            with self._lock:
                fault = self._faults.pop(0) if self._faults else None
            if fault:
                raise ApiError(fault[0], fault[1], fault[2])
            if not m or m.group(4) != SIGNING_NAME:
                raise ApiError("AuthException", "Missing or invalid SigV4 credential scope "
                                                f"(service must be {SIGNING_NAME})")
            if target != f"{TARGET_PREFIX}.SendSSHPublicKey":
                raise ApiError("UnknownOperationException", f"Unknown operation {target!r}")
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                raise ApiError("SerializationException", "Body is not valid JSON") from None
            if not isinstance(params, dict):
                raise ApiError("SerializationException", "Body must be a JSON object")
            pushed = self._send_ssh_public_key(params, rid, m.group(1))
            result = {"RequestId": pushed.request_id, "Success": True}
            self._record(action, params, "Success", 200, rid, m)
            h._send(200, json.dumps(result).encode(), JSON_11, [("x-amzn-RequestId", rid)])
        except ApiError as e:
            self._record(action, params, e.code, e.status, rid, m)
            payload = json.dumps({"__type": e.code, "Message": e.message}).encode()
            h._send(e.status, payload, JSON_11, [("x-amzn-RequestId", rid), ("x-amzn-ErrorType", f"{e.code}:")])
        except OSError:
            h.close_connection = True

    def _record(self, action, params, outcome, status, rid, m) -> None:
        c = Call(action, params.get("InstanceId") if isinstance(params, dict) else None,
                 params.get("InstanceOSUser") if isinstance(params, dict) else None, outcome, status, rid,
                 access_key=m.group(1) if m else None, region=m.group(3) if m else None)
        with self._lock:
            self.calls.append(c)

    def _send_ssh_public_key(self, p: dict, rid: str, access_key: str) -> PushedKey:
        def s(name: str, required: bool) -> str | None:
            v = p.get(name)
            if v is None:
                if required:
                    raise ApiError("InvalidArgsException", f"{name} is required")
                return None
            if not isinstance(v, str):
                raise ApiError("InvalidArgsException", f"{name} must be a string")
            return v

        instance_id, user = s("InstanceId", True), s("InstanceOSUser", True)
        key, az = s("SSHPublicKey", True), s("AvailabilityZone", False)
        if not (10 <= len(instance_id) <= 32) or not INSTANCE_ID_RE.fullmatch(instance_id):
            raise ApiError("InvalidArgsException", f"Invalid instance ID {instance_id!r}")
        if not (1 <= len(user) <= 32) or not OS_USER_RE.fullmatch(user):
            raise ApiError("InvalidArgsException", f"Invalid OS user {user!r}")
        if not (80 <= len(key) <= 4096):
            raise ApiError("InvalidArgsException", f"SSHPublicKey must be 80 to 4096 characters, not {len(key)}")
        try:
            ssh_key_info(key)
        except KeyRejected as e:
            raise ApiError("InvalidArgsException", f"Invalid SSH public key: {e}") from None
        if az is not None and (not (6 <= len(az) <= 32) or not AZ_RE.fullmatch(az)):
            raise ApiError("InvalidArgsException", f"Invalid availability zone {az!r}")
        try:
            inst = self.describe_instance(instance_id)
        except Exception as e:  # moto down: the real service would report its own failure
            raise ApiError("ServiceException", f"Could not look up the instance: {e}") from None
        if inst is None:
            raise ApiError("EC2InstanceNotFoundException", f"Instance {instance_id} not found")
        if az is not None and inst.get("Placement", {}).get("AvailabilityZone") != az:
            raise ApiError("EC2InstanceNotFoundException", f"Instance {instance_id} not found in {az}")
        state = inst.get("State", {}).get("Name")
        if state != "running":
            raise ApiError("EC2InstanceStateInvalidException", f"Instance {instance_id} is {state}, not running")
        return self.push(instance_id, user, key, request_id=rid, caller=self.caller_arn)


# --------------------------------------------------------------------------
# IMDS


@dataclass
class Injected:
    """A record a test added to an instance's active-keys, served until `expires_at` (Clock time);
    `fields` are its (name, value) pairs as written (see `Imds.inject_record`), `raw` verbatim text."""
    os_user: str
    key: str
    fields: list
    fault: str | None
    expires_at: float
    raw: str | None = None


class _ImdsHandler(_BaseHandler):
    def do_PUT(self):
        self.server.owner._handle(self, "PUT")

    def do_GET(self):
        self.server.owner._handle(self, "GET")

    def do_HEAD(self):
        self.server.owner._handle(self, "HEAD")

    def do_POST(self):
        self.server.owner._handle(self, "POST")


class Imds(_Listener):
    """The IMDSv2 endpoint of one emulated instance: http://127.0.0.1:<port>, or <bind>:<port> when
    given `bind` (`.url`; give it to the bastion as AWS_EC2_METADATA_SERVICE_ENDPOINT, see `env()`).

    IMDSv2 (tokens required, as with HttpTokens=required):
      PUT /latest/api/token with `X-aws-ec2-metadata-token-ttl-seconds: 1..21600` -> 200, the token
        (text), the TTL echoed in the same header; header missing or out of range -> 400; a request
        with `X-Forwarded-For` -> 403 (as the real IMDS refuses proxied token requests).
      GET/HEAD without `X-aws-ec2-metadata-token`, or with an unknown or expired one -> 401.
      Tokens expire on the emulator's Clock (so `clock.advance()` can expire them too).
    Paths (with or without a trailing slash; directory listings one name per line, subdirectories
    with a trailing "/"):
      /latest/meta-data/instance-id                    the instance id
      /latest/meta-data/placement/availability-zone    e.g. us-east-1a
      /latest/meta-data/placement/region               e.g. us-east-1
      /latest/meta-data/services/domain                amazonaws.com
      /latest/meta-data/services/partition             aws
      /latest/meta-data/managed-ssh-keys/active-keys/  users with active keys ("alice/")
      /latest/meta-data/managed-ssh-keys/active-keys/<user>/
                                                       the user's records, or 404 when none
      /latest/meta-data/managed-ssh-keys/signer-cert/  PEM: signer, intermediate, root
      /latest/meta-data/managed-ssh-keys/signer-ocsp/  staple names (SHA-1 fingerprints), one per line
      /latest/meta-data/managed-ssh-keys/signer-ocsp/<FP>
                                                       base64 (one line) of the DER OCSP response
    Anything else -> 404.

    Knobs:
      set_record_fault(kind, user=None)  every served record (of `user`, or all) gets `kind` from
                                         RECORD_FAULTS; None clears it
      set_chain_fault(kind)              serve `Pki.chain(kind)` (one of CHAIN_FAULTS), None: genuine
      inject_record(user, key, ...)      an extra record (any fields, any fault)
      inject_raw(user, text)             extra text appended verbatim to the user's records
      set_mode("refuse"|"error"|"slow"|"up")   connection refused / HTTP 500 for every request /
                                         answers after `delay` seconds / normal
      sig_wrap                           None (one-line signatures) or a column count (e.g. 76)
    Counts: `requests` [(method, path, status)], `count(path_prefix, method=None)`.
    """

    handler = _ImdsHandler
    name = "imds"

    def __init__(self, service: EicService, instance_id: str, az: str, domain: str = DEFAULT_DOMAIN,
                 sig_wrap: int | None = None, bind: str = "127.0.0.1"):
        self.service, self.instance_id, self.az, self.domain = service, instance_id, az, domain
        m = re.fullmatch(r"((?:[a-z]+-)+[0-9]+)[a-z]+", az)
        self.region = m.group(1) if m else az[:-1]
        self.expected_signer_cn = f"managed-ssh-signer.{self.region}.{domain}"
        self.clock = service.clock
        self.sig_wrap = sig_wrap
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._record_fault: tuple[str | None, str | None] = (None, None)
        self._chain_kind = "good"
        self._injected: list[Injected] = []
        self._sig_cache: dict = {}
        self.mode, self.delay = "up", 3.0
        self.requests: list[tuple[str, str, int]] = []
        self._closed = False
        self._init_listener(bind)

    def env(self) -> dict:
        """The variables that point an AWS-SDK-style IMDS client at this endpoint (merge over
        aws.aws_env, whose AWS_EC2_METADATA_DISABLED=true this turns off)."""
        return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.url, "AWS_EC2_METADATA_DISABLED": "false"}

    # --- knobs ---------------------------------------------------------------
    def set_record_fault(self, kind: str | None, user: str | None = None) -> None:
        if kind is not None and kind not in RECORD_FAULTS:
            raise ValueError(f"unknown record fault {kind!r}; one of {RECORD_FAULTS}")
        with self._lock:
            self._record_fault = (kind, user)

    def set_chain_fault(self, kind: str | None) -> None:
        if kind is not None and kind not in CHAIN_FAULTS:
            raise ValueError(f"unknown chain fault {kind!r}; one of {CHAIN_FAULTS}")
        self.service.pki.chain(kind or "good")  # build it now, not in a request
        with self._lock:
            self._chain_kind = kind or "good"

    def inject_record(self, user: str, key: str, *, expires_in: float = KEY_LIFETIME, timestamp: int | None = None,
                      instance: str | None = None, caller: str | None = None, request: str | None = None,
                      extra_fields: list = (), fault: str | None = None, fields: list | None = None) -> Injected:
        """Adds a record for `user`, served (after the pushed ones) until `expires_in` Clock seconds
        from now. `#Timestamp=` is `timestamp` or the expiry; `#Instance=` this instance unless
        `instance`; `extra_fields` [(name, value)] come after the usual four and are signed too;
        `fields` replaces the whole list; `fault` one of RECORD_FAULTS."""
        if fault is not None and fault not in RECORD_FAULTS:
            raise ValueError(fault)
        exp = self.clock.now() + expires_in
        if fields is None:
            fields = [("Timestamp", str(int(timestamp if timestamp is not None else exp))),
                      ("Instance", instance or self.instance_id),
                      ("Caller", caller or self.service.caller_arn),
                      ("Request", request or str(uuid.uuid4()))] + list(extra_fields)
        rec = Injected(user, key.strip(), list(fields), fault, exp)
        with self._lock:
            self._injected.append(rec)
        return rec

    def inject_raw(self, user: str, text: str, expires_in: float = KEY_LIFETIME) -> None:
        """Appends `text` verbatim to `user`'s active-keys answer (malformed-input tests)."""
        with self._lock:
            self._injected.append(Injected(user, "", [], None, self.clock.now() + expires_in, raw=text))

    def clear_injected(self) -> None:
        with self._lock:
            self._injected.clear()

    def set_mode(self, mode: str, delay: float = 3.0) -> None:
        if mode not in ("up", "refuse", "error", "slow"):
            raise ValueError(mode)
        self.mode, self.delay = mode, delay
        if mode == "refuse":
            self._unlisten()
        elif self._server is None and not self._closed:
            self._listen()

    def count(self, path_prefix: str = "", method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if p.startswith(path_prefix) and (method is None or m == method))

    # --- content -------------------------------------------------------------
    def chain(self) -> Chain:
        return self.service.pki.chain(self._chain_kind)

    def _apply_fault(self, fields: list, fault: str | None) -> list:
        out = []
        for k, v in fields:
            if k == "Timestamp" and fault == "expired":
                # In the past for any verifier: the real clock, which never runs ahead of ours.
                v = str(int(time.time()) - 10)
            if k == "Instance" and fault == "wrong_instance":
                v = OTHER_INSTANCE
            if (k == "Timestamp" and fault == "no_timestamp") or (k == "Instance" and fault == "no_instance"):
                continue
            out.append((k, v))
        return out

    def _render(self, fields: list, key: str, fault: str | None, chain: Chain) -> str:
        fields = self._apply_fault(fields, fault)
        cache_key = (tuple(fields), key, fault, chain.kind, self.sig_wrap)
        with self._lock:
            cached = self._sig_cache.get(cache_key)
        if cached is None:  # PSS signatures are randomised: sign once, serve the same bytes
            cached = record_text(fields, key, chain.signer_key, fault, self.sig_wrap)
            with self._lock:
                self._sig_cache[cache_key] = cached
        return cached

    def records(self, user: str) -> str | None:
        """The active-keys answer for `user` (records separated by an empty line), or None (404)."""
        chain = self.chain()
        with self._lock:
            fault_kind, fault_user = self._record_fault
        fault = fault_kind if fault_user in (None, user) else None
        parts = []
        for k in self.service.active_keys(self.instance_id, user):
            fields = [("Timestamp", str(int(k.expires_at))), ("Instance", self.instance_id),
                      ("Caller", k.caller), ("Request", k.request_id)]
            parts.append(self._render(fields, k.key, fault, chain))
        now = self.clock.now()
        with self._lock:
            injected = [r for r in self._injected if r.os_user == user and r.expires_at > now]
        for r in injected:
            parts.append(r.raw if r.raw is not None else self._render(r.fields, r.key, r.fault or fault, chain))
        return "\n".join(parts) if parts else None

    def _users(self) -> list[str]:
        now = self.clock.now()
        with self._lock:
            injected = {r.os_user for r in self._injected if r.expires_at > now}
        return sorted(set(self.service.users_with_keys(self.instance_id)) | injected)

    def _lookup(self, path: str) -> str | None:
        md = "/latest/meta-data/"
        if path in ("/latest", "/latest/"):
            return "api/\nmeta-data/"
        if not path.startswith(md) and path != md.rstrip("/"):
            return None
        rel = path[len(md):] if path.startswith(md) else ""
        rel = rel[:-1] if rel.endswith("/") else rel
        chain = self.chain()
        static = {
            "": "instance-id\nmanaged-ssh-keys/\nplacement/\nservices/",
            "instance-id": self.instance_id,
            "placement": "availability-zone\nregion",
            "placement/availability-zone": self.az,
            "placement/region": self.region,
            "services": "domain\npartition",
            "services/domain": self.domain,
            "services/partition": "aws",
            "managed-ssh-keys": "active-keys/\nsigner-cert\nsigner-ocsp/",
            "managed-ssh-keys/signer-cert": chain.pem(),
            "managed-ssh-keys/signer-ocsp": "\n".join(chain.staples),
        }
        if rel in static:
            return static[rel]
        if rel == "managed-ssh-keys/active-keys":
            return "\n".join(f"{u}/" for u in self._users()) or None
        if rel.startswith("managed-ssh-keys/active-keys/"):
            user = rel[len("managed-ssh-keys/active-keys/"):]
            return None if "/" in user else self.records(user)
        if rel.startswith("managed-ssh-keys/signer-ocsp/"):
            der = chain.staples.get(rel[len("managed-ssh-keys/signer-ocsp/"):])
            return None if der is None else base64.b64encode(der).decode()
        return None

    # --- HTTP ----------------------------------------------------------------
    def _handle(self, h: _ImdsHandler, method: str) -> None:
        try:
            h._body()
        except (OSError, ValueError):
            h.close_connection = True
            return
        path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
        status, body, headers = self._answer(h, method, path)
        with self._lock:
            self.requests.append((method, path, status))
        if self.mode == "slow":
            time.sleep(self.delay)
        try:
            h._send(status, body.encode(), "text/plain", headers, head=method == "HEAD")
        except OSError:
            h.close_connection = True

    def _answer(self, h, method: str, path: str) -> tuple[int, str, list]:
        if self.mode == "error":
            return 500, "Internal Server Error", []
        now = self.clock.now()
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, "Method Not Allowed", []
            if h.headers.get("X-Forwarded-For"):
                return 403, "Forbidden", []
            ttl = h.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            if ttl is None or not ttl.strip().isdigit() or not (1 <= int(ttl) <= MAX_TOKEN_TTL):
                return 400, "Bad Request", []
            token = base64.urlsafe_b64encode(secrets.token_bytes(42)).decode()
            with self._lock:
                self._tokens[token] = now + int(ttl)
            return 200, token, [("X-aws-ec2-metadata-token-ttl-seconds", str(int(ttl)))]
        if method not in ("GET", "HEAD"):
            return 405, "Method Not Allowed", []
        token = h.headers.get("X-aws-ec2-metadata-token")
        with self._lock:
            exp = self._tokens.get(token) if token else None
        if exp is None or exp <= now:
            return 401, "Unauthorized", []
        value = self._lookup(path)
        if value is None:
            return 404, "Not Found", []
        return 200, value, []


# --------------------------------------------------------------------------
# a reference reader (what the bastion must do), used by the tests to fetch what an IMDS serves


@dataclass
class Served:
    """Everything an instance's IMDS serves for one user, fetched the way a verifier would."""
    instance_id: str
    az: str
    domain: str
    signer_pem: str
    staple_names: list
    staples: dict  # name -> DER
    records_text: str | None
    status: int


def imds_fetch(url: str, user: str, ttl: int = 60, timeout: float = 5.0) -> Served:
    """Reads, with one IMDSv2 token, what a verifier needs: instance id, AZ, domain, signer
    chain, staples (base64-decoded) and the user's records (None on 404)."""
    import http.client
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        def req(method, path, headers):
            c.request(method, path, headers=headers)
            r = c.getresponse()
            return r.status, r.read().decode()
        st, token = req("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})
        if st != 200:
            raise AssertionError(f"token: HTTP {st}")
        hdr = {"X-aws-ec2-metadata-token": token}

        def get(path):
            st, body = req("GET", "/latest/meta-data/" + path, hdr)
            return st, body
        md = {}
        for p in ("instance-id", "placement/availability-zone", "services/domain",
                  "managed-ssh-keys/signer-cert/", "managed-ssh-keys/signer-ocsp/"):
            st, body = get(p)
            if st != 200:
                raise AssertionError(f"{p}: HTTP {st}")
            md[p] = body
        names = md["managed-ssh-keys/signer-ocsp/"].split()
        staples = {}
        for n in names:
            st, body = get(f"managed-ssh-keys/signer-ocsp/{n}")
            if st != 200:
                raise AssertionError(f"staple {n}: HTTP {st}")
            staples[n] = base64.b64decode(body)
        st, recs = get(f"managed-ssh-keys/active-keys/{user}/")
        return Served(md["instance-id"], md["placement/availability-zone"], md["services/domain"],
                      md["managed-ssh-keys/signer-cert/"], names, staples, recs if st == 200 else None, st)
    finally:
        c.close()


__all__ = ["Clock", "Pki", "Chain", "EicService", "Imds", "PushedKey", "Call", "Injected", "Served", "imds_fetch",
           "ssh_key_info", "KeyRejected", "cert_fingerprint", "ocsp_response", "record_text", "sign_record",
           "CHAIN_FAULTS", "RECORD_FAULTS", "KEY_LIFETIME", "OTHER_INSTANCE", "DEFAULT_DOMAIN", "DEFAULT_CALLER"]
