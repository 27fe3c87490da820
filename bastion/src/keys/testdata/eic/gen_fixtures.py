#!/usr/bin/env python3
"""Writes the test fixtures of bastion/src/keys/eic_verify.rs, once, from the EIC emulator's own PKI.

    python3 gen_fixtures.py [OUT_DIR] [EIC_PY_DIR]

OUT_DIR defaults to the directory of this script's `src/keys/testdata/eic` (scratch crate) or, when the
script itself lives in testdata/eic, that directory. EIC_PY_DIR defaults to tests/e2e of the main
repository (where eic.py lives). Needs the `cryptography` package (as eic.py does).

Everything is dated from one fixed `now` (written to now.txt); the Rust tests use that `now`, never
the real clock, so the fixtures do not rot (certificates: 30 days, staples: 1 day from `now`).
Files:
  now.txt                      generation time, epoch seconds
  bundle.pem                   the trust anchor (the test root only), as eic.Pki.write_bundle writes it
  chain_<kind>.pem             signer-cert as served for kind good + every eic.CHAIN_FAULTS kind
  chain_<kind>.staples         the staples served with it: one "NAME BASE64(DER)" line each
  chain_ecdsa.pem/.staples     RSA signer under an ECDSA P-256 intermediate under an ECDSA P-384 root,
  bundle_ecdsa.pem             with that root as its anchor (ecdsa-with-SHA256 on both curves)
  chain_sha1.pem/.staples      the genuine chain, but the signer re-issued with sha1WithRSAEncryption
  chain_pathlen.pem/.staples   signer -> sub CA -> genuine intermediate (pathlen:0) -> root
  chain_not_ca.pem/.staples    leaf -> genuine signer (cA false) -> intermediate -> root
  records.txt                  an active-keys body (records separated by one empty line)
  records.expect               one line per record of records.txt: "ok" or the expected error kind
  instance.txt                 the instance id the records are for
"""
import base64
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

HERE = Path(__file__).resolve().parent
if HERE.name == "eic":
    default_out, default_eic = HERE, HERE.parents[3] / "tests" / "e2e"   # bastion/src/keys/testdata/eic
else:
    default_out, default_eic = HERE / "src" / "testdata" / "eic", Path("/work/main/tests/e2e")
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else default_out
sys.path.insert(0, str(Path(sys.argv[2]) if len(sys.argv) > 2 else default_eic))

import eic  # noqa: E402  (the emulator: Pki, record_text, CHAIN_FAULTS, OTHER_INSTANCE)

INSTANCE = "i-0123456789abcdef0"
REQUEST = "0c4e2112-8e87-4894-bc09-3881fb7e0ded"


def ssh_key(comment: str) -> str:
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{raw} {comment}"


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def sha1_reissue(cert: x509.Certificate, issuer_key) -> x509.Certificate:
    """`cert` signed again by `issuer_key` with sha1WithRSAEncryption. `cryptography` refuses to
    build SHA-1 certificates, so the TBS is edited by hand: the sha256WithRSAEncryption OID
    (1.2.840.113549.1.1.11) becomes 1.2.840.113549.1.1.5, which has the same length."""
    sha256_rsa = bytes.fromhex("06092a864886f70d01010b0500")
    sha1_rsa = bytes.fromhex("06092a864886f70d0101050500")
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(sha256_rsa) == 1
    tbs = tbs.replace(sha256_rsa, sha1_rsa)
    sig = issuer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    der = _der(0x30, tbs + _der(0x30, sha1_rsa) + _der(0x03, b"\x00" + sig))
    return x509.load_der_x509_certificate(der)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    pki = eic.Pki()  # region us-east-1 (eic's REGION), domain amazonaws.com; dated from the real now
    (OUT / "now.txt").write_text(f"{now}\n")
    (OUT / "instance.txt").write_text(f"{INSTANCE}\n")
    pki.write_bundle(OUT / "bundle.pem")

    def write_chain(kind, certs, staples):
        (OUT / f"chain_{kind}.pem").write_text(
            "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs))
        (OUT / f"chain_{kind}.staples").write_text(
            "".join(f"{name} {base64.b64encode(der).decode()}\n" for name, der in staples.items()))

    for kind in ("good",) + eic.CHAIN_FAULTS:
        write_chain(kind, pki.chain(kind).certs, pki.chain(kind).staples)

    # Extra chains the emulator does not serve, built with its own helpers.
    root_k, int_k = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP256R1())
    root = eic._issue("EIC Test ECDSA Root CA", root_k, None, None, ca=True, days=60)
    inter = eic._issue("EIC Test ECDSA Intermediate CA", int_k, root, root_k, ca=True)
    signer = eic._issue(pki.signer_cn, pki.signer_key, inter, int_k, ca=False)
    write_chain("ecdsa", [signer, inter, root],
                {eic.cert_fingerprint(signer): eic.ocsp_response(signer, inter, int_k),
                 eic.cert_fingerprint(inter): eic.ocsp_response(inter, root, root_k)})
    (OUT / "bundle_ecdsa.pem").write_text(root.public_bytes(serialization.Encoding.PEM).decode())
    sha1_signer = sha1_reissue(pki.signer, pki.int_key)
    write_chain("sha1", [sha1_signer, pki.intermediate, pki.root],
                {eic.cert_fingerprint(sha1_signer): eic.ocsp_response(sha1_signer, pki.intermediate, pki.int_key),
                 eic.cert_fingerprint(pki.intermediate): eic.ocsp_response(pki.intermediate, pki.root, pki.root_key)})

    sub_k, leaf_k = eic._rsa(), eic._rsa()
    sub = eic._issue("EIC Test Sub CA", sub_k, pki.intermediate, pki.int_key, ca=True)
    deep = eic._issue(pki.signer_cn, pki.signer_key, sub, sub_k, ca=False)
    write_chain("pathlen", [deep, sub, pki.intermediate, pki.root],
                {eic.cert_fingerprint(deep): eic.ocsp_response(deep, sub, sub_k),
                 eic.cert_fingerprint(sub): eic.ocsp_response(sub, pki.intermediate, pki.int_key),
                 eic.cert_fingerprint(pki.intermediate): eic.ocsp_response(pki.intermediate, pki.root, pki.root_key)})
    leaf = eic._issue(pki.signer_cn, leaf_k, pki.signer, pki.signer_key, ca=False)
    write_chain("not_ca", [leaf, pki.signer, pki.intermediate, pki.root],
                {eic.cert_fingerprint(leaf): eic.ocsp_response(leaf, pki.signer, pki.signer_key),
                 **pki.chain("good").staples})

    good_key = pki.chain("good").signer_key
    other_key = pki.chain("untrusted_root").signer_key  # same CN, another key

    def fields(extra=(), timestamp=None, instance=INSTANCE):
        f = [("Timestamp", str(now + 60) if timestamp is None else timestamp), ("Instance", instance),
             ("Caller", eic.DEFAULT_CALLER), ("Request", REQUEST)]
        return f + list(extra)

    records = []  # (expected kind, text)
    for expect, fault, fl, wrap, key in (
            ("ok", None, fields(), None, good_key),
            ("expired", "expired", fields(), None, good_key),
            ("wrong_instance", "wrong_instance", fields(), None, good_key),
            ("bad_signature", "bad_signature", fields(), None, good_key),
            ("malformed_signature", "garbage_signature", fields(), None, good_key),
            ("missing_field", "no_timestamp", fields(), None, good_key),
            ("missing_field", "no_instance", fields(), None, good_key),
            ("ok", None, fields(), 76, good_key),
            ("ok", None, fields(extra=[("Extra", "unknown=field, signed over")]), None, good_key),
            ("bad_signature", None, fields(), None, other_key),
            # Signed, but with unusable fields (what inject_record(fields=...) can serve).
            ("malformed", None, fields(timestamp="0"), None, good_key),
            ("malformed", None, fields(timestamp="17x"), None, good_key),
            ("malformed", None, fields(timestamp="-5"), None, good_key),
            ("malformed", None, fields(extra=[("Instance", INSTANCE)]), None, good_key)):
        # The emulator's own fault application (Imds._apply_fault does not use its instance).
        fl = eic.Imds._apply_fault(None, fl, fault)
        if fault == "expired":  # eic writes the real time - 10; pin it to the fixed now
            fl = [(k, str(now - 10) if k == "Timestamp" else v) for k, v in fl]
        records.append((expect, eic.record_text(fl, ssh_key(f"user{len(records)}@example"), key, fault, wrap)))
    # As Imds.records() joins them: one empty line between records, the body ends with "\n".
    (OUT / "records.txt").write_text("\n".join(text for _, text in records))
    (OUT / "records.expect").write_text("".join(f"{k}\n" for k, _ in records))
    print(f"wrote fixtures to {OUT} (now={now})")


if __name__ == "__main__":
    main()
