//! Verification of EC2 Instance Connect (EIC) `managed-ssh-keys` material served by the IMDS.
//!
//! The format and the checks are described in `tests/EIC_EMULATOR.md` ("What the bastion must check,
//! in order"). This module does steps 3–7 (not the HTTP part) and is pure: no I/O, and the current
//! time is always a parameter.
//!
//! * [`verify_signer`] (steps 3–6) checks the served `signer-cert` chain and its OCSP staples and
//!   returns the [`SignerKey`]. If it fails, no record may be trusted.
//!   1. **Signer name.** The CN attribute of `cert[0]` must equal
//!      `managed-ssh-signer.<region>.<domain>` exactly. **(Stricter.)** AWS's script compares
//!      the text after the last `CN = ` in openssl's one-line subject. Here the attribute itself
//!      is compared, and there must be exactly one CN.
//!   2. **Chain.** `cert[i]` must be signed by `cert[i+1]` (issuer name and signature). The walk
//!      stops at the first certificate that is byte-equal to an anchor, or whose issuer is an
//!      anchor. An anchor is the issuer only if its subject equals the issuer name *and* its key
//!      verifies the signature, and every anchor with that name is tried. **(Stricter.)** Served
//!      certificates are untrusted intermediates only, and trust comes from the configured bundle
//!      alone. AWS's script gives the served certificates to `openssl verify` as trusted `-CAfile`
//!      entries, so a served root with the right names would be trusted there. It is not trusted
//!      here. Every certificate on the path and the anchor must be inside its validity period at
//!      `now`, without clock skew.
//!      - An issuer must be a CA: basicConstraints with cA, and pathLenConstraint respected.
//!        Self-issued intermediates are counted too, which is stricter than RFC 5280. If keyUsage
//!        is present, it must include keyCertSign. An anchor without basicConstraints (an old v1
//!        root) is accepted.
//!      - Certificate and OCSP signatures must be sha256/384/512WithRSAEncryption (RSA of
//!        2048–8192 bits) or ecdsa-with-SHA256/384 (P-256/P-384). SHA-1 and every other algorithm
//!        are refused.
//!      - **(Stricter.)** A certificate with an unknown critical extension or a duplicated
//!        extension is refused, and so is one whose inner and outer signature algorithms differ.
//!      - **(Stricter.)** If the signer has keyUsage, it must include digitalSignature.
//!   3. **Revocation.** Each non-anchor certificate on the verified path, from the signer upwards,
//!      needs the staple named after it ([`staple_name`]). A staple must be a successful basic
//!      OCSP response signed directly by that certificate's issuer on the path (no delegated
//!      responder). Its responder id must name that issuer. Its SHA-1 CertID must match (issuer,
//!      serial). It must say `good`, and `now` must lie within [thisUpdate − 5 min,
//!      nextUpdate + 5 min], the skew of openssl's default. **(Stricter.)** A staple without
//!      nextUpdate is refused, because it would be good forever. See [`verify_signer`] for
//!      which certificates need a staple.
//! * [`parse_records`] splits an `active-keys/<user>/` body the way AWS's
//!   `eic_parse_authorized_keys` reads it.
//! * [`verify_record`] (step 7) checks one record. **(Order.)** The signature is checked *before*
//!   the fields, so the reasons that name record content (instance, expiry) always describe
//!   content that AWS signed. Unsigned junk is reported as a bad signature. The set of accepted
//!   records is the same in either order.
//!
//! Error texts ([`ChainError`], [`RecordError`]) go verbatim into the audit trail. Strings taken
//! from served data are escaped there (control characters) and truncated.
//!
//! Crates: aws-lc-rs does all signature checks and the SHA-1 digests (staple names, OCSP CertIDs).
//! `x509-cert` 0.3 parses certificates on the `der` 0.8 / `spki` 0.8 / `const-oid` 0.10 stack that
//! the project already has. There is no `x509-ocsp` release for `der` 0.8 (0.2.x is on `der` 0.7),
//! so the few OCSP structures (RFC 6960) are declared below with `der`'s derive macros.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    self, ParsedPublicKey, RsaParameters, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode, Sequence, Tag, Tagged};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::name::Name;
use x509_cert::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;

/// Clock skew allowed around an OCSP staple's [thisUpdate, nextUpdate] (openssl's default).
pub const OCSP_SKEW: Duration = Duration::from_secs(5 * 60);
/// Most certificates accepted in `signer-cert` (the real service serves three).
pub const MAX_CHAIN_LEN: usize = 8;

// --------------------------------------------------------------------------------------------
// errors

/// Why the signer chain (steps 3–5) was refused. `Display` is the operator-facing reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// The PEM or DER cannot be parsed, or the chain is empty or too long.
    Malformed(String),
    /// The signer's CN is not the expected one.
    WrongCn(String),
    /// The chain does not lead to a trust anchor, or a certificate on it may not issue.
    UntrustedChain(String),
    /// A certificate on the path (or its anchor) expired before `now`.
    CertExpired(String),
    /// A certificate on the path (or its anchor) is not valid yet at `now`.
    CertNotYetValid(String),
    /// A signature algorithm that is refused (SHA-1, unknown, key mismatch).
    UnsupportedAlgorithm(String),
    /// The signer's key cannot verify records (not RSA 2048–8192, keyUsage).
    BadSignerKey(String),
    /// A certificate that needs a staple has none.
    MissingStaple(String),
    /// A staple does not parse, is not signed by the issuer, or is not about the certificate.
    BadStaple(String),
    /// A staple is outside its validity window.
    StaleStaple(String),
    /// A staple says the certificate is revoked.
    Revoked(String),
}

impl ChainError {
    /// A short stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ChainError::Malformed(_) => "malformed",
            ChainError::WrongCn(_) => "wrong_cn",
            ChainError::UntrustedChain(_) => "untrusted_chain",
            ChainError::CertExpired(_) => "cert_expired",
            ChainError::CertNotYetValid(_) => "cert_not_yet_valid",
            ChainError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            ChainError::BadSignerKey(_) => "bad_signer_key",
            ChainError::MissingStaple(_) => "missing_staple",
            ChainError::BadStaple(_) => "bad_staple",
            ChainError::StaleStaple(_) => "stale_staple",
            ChainError::Revoked(_) => "revoked",
        }
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ChainError::Malformed(m)
        | ChainError::WrongCn(m)
        | ChainError::UntrustedChain(m)
        | ChainError::CertExpired(m)
        | ChainError::CertNotYetValid(m)
        | ChainError::UnsupportedAlgorithm(m)
        | ChainError::BadSignerKey(m)
        | ChainError::MissingStaple(m)
        | ChainError::BadStaple(m)
        | ChainError::StaleStaple(m)
        | ChainError::Revoked(m)) = self;
        f.write_str(m)
    }
}

impl std::error::Error for ChainError {}

/// Why one record (step 7) was refused. `Display` is the operator-facing reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// `#Instance=` or `#Timestamp=` is absent.
    MissingField(String),
    /// A field is unusable (timestamp not a non-zero integer, a known field repeated).
    Malformed(String),
    /// `#Instance=` names another instance.
    WrongInstance(String),
    /// `#Timestamp=` is not after `now`.
    Expired(String),
    /// The signature lines are absent or not base64.
    MalformedSignature(String),
    /// The signature does not verify with the signer's key.
    BadSignature(String),
}

impl RecordError {
    /// A short stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::MissingField(_) => "missing_field",
            RecordError::Malformed(_) => "malformed",
            RecordError::WrongInstance(_) => "wrong_instance",
            RecordError::Expired(_) => "expired",
            RecordError::MalformedSignature(_) => "malformed_signature",
            RecordError::BadSignature(_) => "bad_signature",
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (RecordError::MissingField(m)
        | RecordError::Malformed(m)
        | RecordError::WrongInstance(m)
        | RecordError::Expired(m)
        | RecordError::MalformedSignature(m)
        | RecordError::BadSignature(m)) = self;
        f.write_str(m)
    }
}

impl std::error::Error for RecordError {}

// --------------------------------------------------------------------------------------------
// small helpers

/// Served text for an error message: control characters escaped, at most 200 characters.
fn clean(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 3339 (UTC, seconds) for messages, or epoch seconds if out of range.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    match der::DateTime::from_unix_duration(Duration::from_secs(d.as_secs())) {
        Ok(dt) => dt.to_string(),
        Err(_) => format!("{} (epoch seconds)", d.as_secs()),
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn sha1(data: &[u8]) -> digest::Digest {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data)
}

/// The SHA-1 fingerprint of a DER certificate as staples are named: upper-case hex, no colons
/// (what `openssl x509 -noout -fingerprint -sha1` prints, colons removed).
pub fn staple_name(der: &[u8]) -> String {
    sha1(der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The region of an availability zone (`us-east-1a` → `us-east-1`). The zone must match AWS's
/// `^([a-z]+-){2,3}[0-9][a-z]$`.
pub fn region_from_az(az: &str) -> Result<String, String> {
    let parts: Vec<&str> = az.split('-').collect();
    let (last, words) = parts
        .split_last()
        .ok_or_else(|| "empty availability zone".to_string())?;
    let words_ok = (2..=3).contains(&words.len())
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()));
    let last_ok = matches!(last.as_bytes(), [d, l] if d.is_ascii_digit() && l.is_ascii_lowercase());
    if !(words_ok && last_ok) {
        return Err(format!(
            "availability zone {:?} does not match ^([a-z]+-){{2,3}}[0-9][a-z]$",
            clean(az)
        ));
    }
    Ok(az[..az.len() - 1].to_string())
}

/// The CN the signer certificate must carry: `managed-ssh-signer.<region>.<domain>`.
pub fn expected_signer_cn(region: &str, domain: &str) -> String {
    format!("managed-ssh-signer.{region}.{domain}")
}

// --------------------------------------------------------------------------------------------
// PEM

/// The CERTIFICATE blocks of a PEM text, as DER. `strict`: nothing but whitespace may appear
/// outside the blocks (served chains). Otherwise other text is skipped (comments in CA bundles).
fn pem_certificates(pem: &str, strict: bool) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for (n, raw) in pem.lines().enumerate() {
        let line = raw.trim();
        match body.as_mut() {
            None if line == BEGIN => body = Some(String::new()),
            None if line.starts_with("-----BEGIN ") => {
                return Err(format!(
                    "line {}: {:?} is not a certificate",
                    n + 1,
                    clean(line)
                ));
            }
            None if strict && !line.is_empty() => {
                return Err(format!("line {}: text outside a certificate block", n + 1));
            }
            None => {}
            Some(b) if line == END => {
                let der = BASE64.decode(b.as_bytes()).map_err(|e| {
                    format!(
                        "certificate {} ending on line {}: bad base64 ({e})",
                        out.len(),
                        n + 1
                    )
                })?;
                out.push(der);
                body = None;
            }
            Some(_) if line.starts_with("-----") || line.contains(':') => {
                return Err(format!(
                    "line {}: unexpected {:?} inside a certificate block",
                    n + 1,
                    clean(line)
                ));
            }
            Some(b) => b.push_str(line),
        }
    }
    if body.is_some() {
        return Err("a certificate block has no END line".into());
    }
    if out.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(out)
}

/// Parses `signer-cert` (signer first, then its issuers) into DER certificates. Only PEM
/// CERTIFICATE blocks and whitespace are allowed. The DER is checked by [`verify_signer`].
pub fn parse_chain_pem(pem: &str) -> Result<Vec<Vec<u8>>, ChainError> {
    pem_certificates(pem, true).map_err(|e| {
        ChainError::Malformed(format!("signer-cert is not a PEM certificate chain: {e}"))
    })
}

// --------------------------------------------------------------------------------------------
// certificates

/// The parts of a signed structure (certificate or BasicOCSPResponse) needed to check its
/// signature. The to-be-signed part is kept raw: it is verified as served, never re-encoded.
#[derive(Sequence)]
struct Signed<'a> {
    tbs: AnyRef<'a>,
    algorithm: AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
    #[asn1(context_specific = "0", optional = "true")]
    certs: Option<AnyRef<'a>>, // BasicOCSPResponse only; not used
}

/// A parsed certificate with its exact DER and its to-be-signed bytes.
struct Cert {
    der: Vec<u8>,
    cert: Certificate,
    tbs: Vec<u8>,
}

impl Cert {
    fn parse(der: &[u8]) -> Result<Cert, String> {
        let cert = Certificate::from_der(der)
            .map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
        let raw =
            Signed::from_der(der).map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
        let tbs = raw
            .tbs
            .to_der()
            .map_err(|e| format!("cannot re-read its TBSCertificate ({e})"))?;
        Ok(Cert {
            der: der.to_vec(),
            cert,
            tbs,
        })
    }

    fn subject(&self) -> &Name {
        self.cert.tbs_certificate().subject()
    }

    fn issuer(&self) -> &Name {
        self.cert.tbs_certificate().issuer()
    }

    fn spki(&self) -> &SubjectPublicKeyInfoOwned {
        self.cert.tbs_certificate().subject_public_key_info()
    }

    /// The CN values of the subject, as strings (`Err` for a CN that is not a string type we read).
    fn common_names(&self) -> Vec<Result<String, String>> {
        self.subject()
            .iter()
            .filter(|atv| atv.oid == COMMON_NAME)
            .map(|atv| {
                let v = &atv.value;
                let s = match v.tag() {
                    Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
                        std::str::from_utf8(v.value()).ok()
                    }
                    _ => None,
                };
                s.map(str::to_string)
                    .ok_or_else(|| format!("a CN of ASN.1 type {}", v.tag()))
            })
            .collect()
    }

    /// `CN=<cn>` (or the whole subject) for messages.
    fn label(&self) -> String {
        match self.common_names().first() {
            Some(Ok(cn)) => format!("CN={}", clean(cn)),
            _ => clean(&self.subject().to_string()),
        }
    }

    fn extension<'a, T: Decode<'a> + der::oid::AssociatedOid>(
        &'a self,
        what: &str,
    ) -> Result<Option<T>, String> {
        match self.cert.tbs_certificate().get_extension::<T>() {
            Ok(ext) => Ok(ext.map(|(_, v)| v)),
            Err(e) => Err(format!("has a malformed {what} extension ({e})")),
        }
    }
}

/// Trust anchors: the certificates of the configured CA bundle (never served ones).
pub struct Anchors {
    certs: Vec<Cert>,
    skipped: usize,
}

impl Anchors {
    /// Reads a PEM bundle. Text outside CERTIFICATE blocks (comments) is ignored. A block that
    /// is not a certificate this module can read is skipped and counted ([`Anchors::skipped`]):
    /// a system bundle may hold one odd old root, and it must not take every other anchor
    /// down with it. A bundle with no readable certificate is an error.
    pub fn from_pem(pem: &str) -> Result<Anchors, String> {
        let ders = pem_certificates(pem, false).map_err(|e| format!("CA bundle: {e}"))?;
        let mut certs = Vec::new();
        let mut first_error = None;
        for (n, der) in ders.iter().enumerate() {
            match Cert::parse(der) {
                Ok(c) => certs.push(c),
                Err(e) => {
                    first_error.get_or_insert(format!("CA bundle: certificate {n} is {e}"));
                }
            }
        }
        let skipped = ders.len() - certs.len();
        match first_error {
            Some(e) if certs.is_empty() => Err(e),
            _ => Ok(Anchors { certs, skipped }),
        }
    }

    /// How many blocks of the bundle were not readable certificates.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// How many anchors the bundle holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// True if the bundle holds no anchor (never, for a bundle read by [`Anchors::from_pem`]).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

// --------------------------------------------------------------------------------------------
// signatures

const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SHA1_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Clone, Copy)]
enum SigAlg {
    Rsa(Hash),
    Ecdsa(Hash),
}

/// The accepted signature algorithms. `Err` names the refused one.
fn sig_alg(alg: &AlgorithmIdentifierRef<'_>) -> Result<SigAlg, String> {
    let null_or_absent = alg.parameters.is_none_or(|p| p.is_null());
    let (a, ok) = match alg.oid.to_string().as_str() {
        "1.2.840.113549.1.1.11" => (SigAlg::Rsa(Hash::Sha256), null_or_absent),
        "1.2.840.113549.1.1.12" => (SigAlg::Rsa(Hash::Sha384), null_or_absent),
        "1.2.840.113549.1.1.13" => (SigAlg::Rsa(Hash::Sha512), null_or_absent),
        "1.2.840.10045.4.3.2" => (SigAlg::Ecdsa(Hash::Sha256), alg.parameters.is_none()),
        "1.2.840.10045.4.3.3" => (SigAlg::Ecdsa(Hash::Sha384), alg.parameters.is_none()),
        "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1" | "1.2.840.10040.4.3" => {
            return Err("SHA-1, which is refused".into());
        }
        other => return Err(format!("the unsupported algorithm {other}")),
    };
    if !ok {
        return Err(format!("{} with unexpected parameters", alg.oid));
    }
    Ok(a)
}

/// Checks `sig` over `msg` with the key of `spki`. `Err` says why, for the caller's message.
fn verify_sig(
    spki: &SubjectPublicKeyInfoOwned,
    alg: SigAlg,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or("the issuer's public key is malformed")?;
    let key_oid = spki.algorithm.oid;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let algorithm: &'static dyn VerificationAlgorithm = match (alg, key_oid, curve) {
        (SigAlg::Rsa(h), k, _) if k == RSA_ENCRYPTION => match h {
            Hash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Hash::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Hash::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        },
        (SigAlg::Ecdsa(Hash::Sha256), k, Some(c)) if k == EC_PUBLIC_KEY && c == P256 => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        (SigAlg::Ecdsa(Hash::Sha384), k, Some(c)) if k == EC_PUBLIC_KEY && c == P256 => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        (SigAlg::Ecdsa(Hash::Sha256), k, Some(c)) if k == EC_PUBLIC_KEY && c == P384 => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        (SigAlg::Ecdsa(Hash::Sha384), k, Some(c)) if k == EC_PUBLIC_KEY && c == P384 => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        _ => return Err("the issuer's key type does not match the signature algorithm".into()),
    };
    UnparsedPublicKey::new(algorithm, key)
        .verify(msg, sig)
        .map_err(|_| "the signature does not verify".into())
}

/// Whether `issuer`'s key made `cert`'s signature.
fn cert_signed_by(cert: &Cert, issuer: &Cert) -> Result<(), String> {
    let alg = AlgorithmIdentifierRef::from(cert.cert.signature_algorithm());
    let alg = sig_alg(&alg)?;
    let sig = cert
        .cert
        .signature()
        .as_bytes()
        .ok_or("the signature is not a whole number of bytes")?;
    verify_sig(issuer.spki(), alg, &cert.tbs, sig)
}

// --------------------------------------------------------------------------------------------
// the chain

/// The signer's public key, ready to verify records (RSASSA-PSS, SHA-256, MGF1-SHA256, salt 32).
pub struct SignerKey {
    key: ParsedPublicKey,
    name: String,
}

impl SignerKey {
    fn from_cert(c: &Cert) -> Result<SignerKey, ChainError> {
        let bad = |why: String| {
            ChainError::BadSignerKey(format!("signer certificate ({}) {why}", c.label()))
        };
        if c.spki().algorithm.oid != RSA_ENCRYPTION {
            return Err(bad(format!(
                "has a {} key, not RSA",
                c.spki().algorithm.oid
            )));
        }
        let bits = c
            .spki()
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| bad("has a malformed key".into()))?;
        let len = RsaParameters::public_modulus_len(bits)
            .map_err(|_| bad("has a malformed RSA key".into()))?;
        if !(2048..=8192).contains(&len) {
            return Err(bad(format!(
                "has an RSA key of {len} bits (2048 to 8192 required)"
            )));
        }
        // The default PSS salt length of this algorithm is the digest length: 32 bytes.
        let key = ParsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, bits)
            .map_err(|e| bad(format!("has an unusable RSA key ({e})")))?;
        Ok(SignerKey {
            key,
            name: staple_name(&c.der),
        })
    }

    /// The SHA-1 fingerprint of the signer certificate (as in [`staple_name`]), for the audit trail.
    pub fn fingerprint(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({})", self.name)
    }
}

/// The validity period, critical extensions and signature algorithm of one certificate.
fn check_cert(c: &Cert, what: &str, now: SystemTime) -> Result<(), ChainError> {
    let tbs = c.cert.tbs_certificate();
    let v = tbs.validity();
    let (not_before, not_after) = (
        v.not_before.to_unix_duration(),
        v.not_after.to_unix_duration(),
    );
    let t = since_epoch(now);
    if t < not_before {
        let at = rfc3339(UNIX_EPOCH + not_before);
        return Err(ChainError::CertNotYetValid(format!(
            "{what} is not valid before {at}"
        )));
    }
    if t > not_after {
        return Err(ChainError::CertExpired(format!(
            "{what} expired at {}",
            rfc3339(UNIX_EPOCH + not_after)
        )));
    }
    if tbs.signature() != c.cert.signature_algorithm() {
        return Err(ChainError::UntrustedChain(format!(
            "{what} has different inner and outer signature algorithms"
        )));
    }
    sig_alg(&AlgorithmIdentifierRef::from(c.cert.signature_algorithm()))
        .map_err(|e| ChainError::UnsupportedAlgorithm(format!("{what} is signed with {e}")))?;
    // basicConstraints, keyUsage, extKeyUsage, subjectAltName, subject and authority key ids.
    const KNOWN: [&str; 6] = [
        "2.5.29.19",
        "2.5.29.15",
        "2.5.29.37",
        "2.5.29.17",
        "2.5.29.14",
        "2.5.29.35",
    ];
    let exts = tbs.extensions().map(Vec::as_slice).unwrap_or_default();
    for (n, e) in exts.iter().enumerate() {
        if exts[..n].iter().any(|p| p.extn_id == e.extn_id) {
            return Err(ChainError::UntrustedChain(format!(
                "{what} has the extension {} twice",
                e.extn_id
            )));
        }
        if e.critical && !KNOWN.contains(&e.extn_id.to_string().as_str()) {
            return Err(ChainError::UntrustedChain(format!(
                "{what} has an unsupported critical extension {}",
                e.extn_id
            )));
        }
    }
    Ok(())
}

/// Whether `c` may issue certificates with `below` intermediates between it and the signer.
fn check_issuer(c: &Cert, what: &str, below: usize, anchor: bool) -> Result<(), ChainError> {
    let fail = |why: String| ChainError::UntrustedChain(format!("{what} {why}"));
    match c
        .extension::<BasicConstraints>("basicConstraints")
        .map_err(fail)?
    {
        None if anchor => {}
        None => {
            return Err(fail(
                "is not a CA: it has no basicConstraints extension".into(),
            ))
        }
        Some(bc) if !bc.ca => {
            return Err(fail(
                "is not a CA: its basicConstraints say cA false".into(),
            ))
        }
        Some(BasicConstraints {
            path_len_constraint: Some(max),
            ..
        }) if below > usize::from(max) => {
            return Err(fail(format!(
                "has pathLenConstraint {max} but {below} intermediate certificate(s) below it"
            )));
        }
        Some(_) => {}
    }
    if let Some(ku) = c.extension::<KeyUsage>("keyUsage").map_err(fail)? {
        if !ku.key_cert_sign() {
            return Err(fail(
                "may not sign certificates: its keyUsage lacks keyCertSign".into(),
            ));
        }
    }
    Ok(())
}

/// Steps 3–5: the signer's CN, the chain to a trust anchor, and the OCSP staples. `chain` is
/// `signer-cert` as DER (signer first), and `staples` maps a staple name to the DER
/// `OCSPResponse` (base64 already decoded). On success it returns the signer's key.
///
/// Which certificates need a staple: every certificate on the verified path that is not itself
/// an anchor. That is the certificates from the signer up to the one that an anchor issued (none
/// if the signer itself is pinned in the bundle). Each staple must be signed by that
/// certificate's issuer *on the path*, which for the last one is the anchor. The emulator and
/// AWS's script walk served certificates up to the next-to-last one. With signer,
/// intermediate and root served, that is the same two staples. This module decides by the path,
/// not by what was served, so a chain served *without* its root still needs the intermediate's
/// staple, signed by the anchor. Otherwise leaving the root out would skip the intermediate's
/// revocation check. An anchor never needs a staple.
pub fn verify_signer(
    chain: &[Vec<u8>],
    staples: &HashMap<String, Vec<u8>>,
    anchors: &Anchors,
    expected_cn: &str,
    now: SystemTime,
) -> Result<SignerKey, ChainError> {
    if chain.is_empty() {
        return Err(ChainError::Malformed(
            "signer-cert holds no certificate".into(),
        ));
    }
    if chain.len() > MAX_CHAIN_LEN {
        let n = chain.len();
        return Err(ChainError::Malformed(format!(
            "signer-cert holds {n} certificates (at most {MAX_CHAIN_LEN})"
        )));
    }
    let parse = |i: usize| {
        Cert::parse(&chain[i])
            .map_err(|e| ChainError::Malformed(format!("certificate {i} of signer-cert is {e}")))
    };
    let signer = parse(0)?;

    // Step 3: the CN attribute itself, exactly one.
    let cns = signer.common_names();
    let cn = match cns.as_slice() {
        [Ok(cn)] => cn,
        [] => {
            return Err(ChainError::WrongCn(format!(
                "signer certificate has no CN, expected {expected_cn}"
            )))
        }
        [Err(e)] => {
            return Err(ChainError::WrongCn(format!(
                "signer certificate has {e}, expected {expected_cn}"
            )))
        }
        many => {
            let n = many.len();
            return Err(ChainError::WrongCn(format!(
                "signer certificate has {n} CN attributes, expected one: {expected_cn}"
            )));
        }
    };
    if cn != expected_cn {
        let cn = clean(cn);
        return Err(ChainError::WrongCn(format!(
            "signer certificate CN is {cn}, expected {expected_cn}"
        )));
    }

    // Step 4: path[k] is signed by path[k + 1], the last one by `anchor`.
    let mut path = vec![signer];
    let anchor: &Cert = 'walk: {
        if let Some(a) = anchors.certs.iter().find(|a| a.der == chain[0]) {
            path.clear(); // the signer itself is pinned in the bundle
            check_cert(a, "signer certificate (pinned in the trust bundle)", now)?;
            break 'walk a;
        }
        loop {
            let i = path.len() - 1;
            let cur = &path[i];
            let what = format!("certificate {i} ({})", cur.label());
            check_cert(cur, &what, now)?;
            // Every anchor with the issuer's name is tried, and an anchor counts only if its
            // key verifies. A served root with the same names but another key is no anchor.
            let mut anchor_err = None;
            for a in anchors.certs.iter().filter(|a| a.subject() == cur.issuer()) {
                if cert_signed_by(cur, a).is_ok() {
                    let awhat = format!("trust anchor ({}) that issued {what}", a.label());
                    match check_cert(a, &awhat, now).and_then(|()| check_issuer(a, &awhat, i, true))
                    {
                        Ok(()) => break 'walk a,
                        Err(e) => anchor_err = anchor_err.or(Some(e)),
                    }
                }
            }
            if let Some(e) = anchor_err {
                return Err(e);
            }
            if i + 1 >= chain.len() {
                return Err(ChainError::UntrustedChain(format!(
                    "the chain does not end at a trusted anchor: {what} is not signed by any certificate in the trust bundle"
                )));
            }
            let next = parse(i + 1)?;
            let nwhat = format!("certificate {} ({})", i + 1, next.label());
            if next.subject() != cur.issuer() {
                let issuer = clean(&cur.issuer().to_string());
                return Err(ChainError::UntrustedChain(format!(
                    "{what} names issuer {issuer}, but the next one is {nwhat}"
                )));
            }
            cert_signed_by(cur, &next).map_err(|e| {
                ChainError::UntrustedChain(format!("{what} is not signed by {nwhat}: {e}"))
            })?;
            check_issuer(&next, &nwhat, i, false)?;
            path.push(next);
        }
    };

    // Step 5: a staple for each certificate on the path, about it and signed by its issuer.
    for (k, cert) in path.iter().enumerate() {
        let (issuer, iwhat) = match path.get(k + 1) {
            Some(c) => (c, format!("certificate {} ({})", k + 1, c.label())),
            None => (anchor, format!("the trust anchor ({})", anchor.label())),
        };
        check_staple(k, cert, issuer, &iwhat, staples, now)?;
    }

    // The signer key (of the pinned anchor itself, if the signer is one).
    let signer = path.first().unwrap_or(anchor);
    if let Some(ku) = signer
        .extension::<KeyUsage>("keyUsage")
        .map_err(ChainError::BadSignerKey)?
    {
        if !ku.digital_signature() {
            let label = signer.label();
            return Err(ChainError::BadSignerKey(format!(
                "signer certificate ({label}) keyUsage lacks digitalSignature"
            )));
        }
    }
    SignerKey::from_cert(signer)
}

// --------------------------------------------------------------------------------------------
// OCSP (RFC 6960), only what a staple check needs

/// `OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT ResponseBytes OPTIONAL }`
#[derive(Sequence)]
struct OcspResponse<'a> {
    status: AnyRef<'a>,
    #[asn1(context_specific = "0", optional = "true")]
    bytes: Option<ResponseBytes<'a>>,
}

#[derive(Sequence)]
struct ResponseBytes<'a> {
    response_type: ObjectIdentifier,
    response: &'a OctetStringRef,
}

/// `ResponseData` (the signed part of a BasicOCSPResponse).
#[derive(Sequence)]
struct ResponseData<'a> {
    #[asn1(context_specific = "0", optional = "true")]
    version: Option<u8>,
    responder_id: AnyRef<'a>, // [1] EXPLICIT Name | [2] EXPLICIT KeyHash
    produced_at: AnyRef<'a>,
    responses: Vec<SingleResponse<'a>>,
    #[asn1(context_specific = "1", optional = "true")]
    extensions: Option<AnyRef<'a>>,
}

#[derive(Sequence)]
struct SingleResponse<'a> {
    cert_id: CertId<'a>,
    cert_status: AnyRef<'a>, // good [0] IMPLICIT NULL | revoked [1] IMPLICIT RevokedInfo | unknown [2]
    this_update: AnyRef<'a>,
    #[asn1(context_specific = "0", optional = "true")]
    next_update: Option<AnyRef<'a>>,
    #[asn1(context_specific = "1", optional = "true")]
    extensions: Option<AnyRef<'a>>,
}

#[derive(Sequence)]
struct CertId<'a> {
    hash_algorithm: AlgorithmIdentifierRef<'a>,
    issuer_name_hash: &'a OctetStringRef,
    issuer_key_hash: &'a OctetStringRef,
    serial_number: AnyRef<'a>,
}

/// A GeneralizedTime `YYYYMMDDHHMMSS[.fff]Z` (fractions allowed and dropped, which RFC 5280
/// forbids in certificates but RFC 6960 does not in OCSP).
fn generalized_time(any: &AnyRef<'_>) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "bad GeneralizedTime {:?}",
            clean(&String::from_utf8_lossy(any.value()))
        )
    };
    if any.tag() != Tag::GeneralizedTime {
        return Err(format!("expected a GeneralizedTime, found {}", any.tag()));
    }
    let v = any.value();
    let (digits, rest) = v.split_at_checked(14).ok_or_else(bad)?;
    let frac_ok = match rest {
        [b'Z'] => true,
        [b'.', f @ .., b'Z'] => !f.is_empty() && f.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !frac_ok || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| {
        digits[r]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'))
    };
    let small = |r| u8::try_from(num(r)).map_err(|_| bad());
    let dt = der::DateTime::new(
        num(0..4),
        small(4..6)?,
        small(6..8)?,
        small(8..10)?,
        small(10..12)?,
        small(12..14)?,
    )
    .map_err(|_| bad())?;
    Ok(UNIX_EPOCH + dt.unix_duration())
}

/// One staple: `cert` (path position `k`) as seen by its issuer `issuer` (named `iwhat`).
fn check_staple(
    k: usize,
    cert: &Cert,
    issuer: &Cert,
    iwhat: &str,
    staples: &HashMap<String, Vec<u8>>,
    now: SystemTime,
) -> Result<(), ChainError> {
    let what = format!("certificate {k} ({})", cert.label());
    let name = staple_name(&cert.der);
    let Some(der) = staples.get(&name) else {
        return Err(ChainError::MissingStaple(format!(
            "no OCSP staple for {what}; looked for {name}"
        )));
    };
    let bad = |why: String| ChainError::BadStaple(format!("OCSP staple for {what} {why}"));
    let resp =
        OcspResponse::from_der(der).map_err(|e| bad(format!("is not an OCSP response ({e})")))?;
    if resp.status.tag() != Tag::Enumerated || resp.status.value() != [0] {
        return Err(bad(format!(
            "does not have status successful (status {:?})",
            resp.status.value()
        )));
    }
    let rb = resp
        .bytes
        .ok_or_else(|| bad("has no response bytes".into()))?;
    if rb.response_type != OCSP_BASIC {
        return Err(bad(format!(
            "is of type {}, not a basic OCSP response",
            rb.response_type
        )));
    }
    let basic = Signed::from_der(rb.response.as_bytes())
        .map_err(|e| bad(format!("is not a basic OCSP response ({e})")))?;
    let tbs = basic
        .tbs
        .to_der()
        .map_err(|e| bad(format!("cannot be re-read ({e})")))?;
    let alg = sig_alg(&basic.algorithm).map_err(|e| {
        ChainError::UnsupportedAlgorithm(format!("OCSP staple for {what} is signed with {e}"))
    })?;
    let sig = basic
        .signature
        .as_bytes()
        .ok_or_else(|| bad("has a malformed signature".into()))?;
    verify_sig(issuer.spki(), alg, &tbs, sig)
        .map_err(|e| bad(format!("is not signed by its issuer, {iwhat}: {e}")))?;
    let data = ResponseData::from_der(&tbs)
        .map_err(|e| bad(format!("has malformed response data ({e})")))?;
    if data.version.is_some_and(|v| v != 0) {
        return Err(bad("has an unknown version".into()));
    }

    // The responder must be the issuer itself (no delegated responder), as with `-VAfile issuer`.
    let key_hash = sha1(issuer.spki().subject_public_key.raw_bytes());
    let responder_ok = match data.responder_id.tag() {
        Tag::ContextSpecific {
            constructed: true,
            number,
        } if number.value() == 1 => {
            Name::from_der(data.responder_id.value()).is_ok_and(|n| &n == issuer.subject())
        }
        Tag::ContextSpecific {
            constructed: true,
            number,
        } if number.value() == 2 => <&OctetStringRef>::from_der(data.responder_id.value())
            .is_ok_and(|h| h.as_bytes() == key_hash.as_ref()),
        _ => false,
    };
    if !responder_ok {
        return Err(bad(format!(
            "names a responder other than its issuer, {iwhat}"
        )));
    }

    // The SHA-1 CertID of (cert, issuer).
    let name_hash = sha1(
        &issuer
            .subject()
            .to_der()
            .map_err(|e| bad(format!("cannot be matched ({e})")))?,
    );
    let serial = cert
        .cert
        .tbs_certificate()
        .serial_number()
        .to_der()
        .map_err(|e| bad(format!("cannot be matched ({e})")))?;
    let ours = |id: &CertId<'_>| {
        id.hash_algorithm.oid == SHA1_OID
            && id.hash_algorithm.parameters.is_none_or(|p| p.is_null())
            && id.issuer_name_hash.as_bytes() == name_hash.as_ref()
            && id.issuer_key_hash.as_bytes() == key_hash.as_ref()
            && id.serial_number.to_der().is_ok_and(|s| s == serial)
    };
    let mine: Vec<&SingleResponse<'_>> =
        data.responses.iter().filter(|r| ours(&r.cert_id)).collect();
    if mine.is_empty() {
        return Err(bad(format!(
            "does not cover it (no response for its SHA-1 CertID under {iwhat})"
        )));
    }
    for r in mine {
        match r.cert_status.tag() {
            Tag::ContextSpecific {
                constructed: false,
                number,
            } if number.value() == 0 && r.cert_status.value().is_empty() => {}
            Tag::ContextSpecific {
                constructed: true,
                number,
            } if number.value() == 1 => {
                // RevokedInfo ::= SEQUENCE { revocationTime GeneralizedTime, reason [0] OPTIONAL }
                let when = der::SliceReader::new(r.cert_status.value())
                    .and_then(|mut rd| AnyRef::decode(&mut rd))
                    .ok()
                    .and_then(|t| generalized_time(&t).ok())
                    .map(|t| format!(" (revoked at {})", rfc3339(t)))
                    .unwrap_or_default();
                return Err(ChainError::Revoked(format!(
                    "{what} is revoked according to its OCSP staple{when}"
                )));
            }
            _ => return Err(bad("does not say good (status unknown or malformed)".into())),
        }
        let this_update = generalized_time(&r.this_update)
            .map_err(|e| bad(format!("has a bad thisUpdate: {e}")))?;
        let Some(next_update) = &r.next_update else {
            return Err(bad("has no nextUpdate".into()));
        };
        let next_update =
            generalized_time(next_update).map_err(|e| bad(format!("has a bad nextUpdate: {e}")))?;
        if next_update < this_update {
            return Err(bad("has nextUpdate before thisUpdate".into()));
        }
        let t = since_epoch(now);
        if since_epoch(this_update) > t + OCSP_SKEW {
            let at = rfc3339(this_update);
            return Err(ChainError::StaleStaple(format!(
                "OCSP staple for {what} is not valid yet: thisUpdate {at} is in the future"
            )));
        }
        if t > since_epoch(next_update) + OCSP_SKEW {
            let at = rfc3339(next_update);
            return Err(ChainError::StaleStaple(format!(
                "OCSP staple for {what} is stale: nextUpdate {at} is in the past"
            )));
        }
    }
    Ok(())
}

// --------------------------------------------------------------------------------------------
// records

/// One record of an `active-keys/<user>/` body, as split by [`parse_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// `(name, value)` of each `#name=value` line, in order (the value is everything after the
    /// first `=`). `#` lines without `=` are only in `field_lines`.
    pub fields: Vec<(String, String)>,
    /// Every `#` line of the record as served (after trimming), `#` included: the signed lines.
    pub field_lines: Vec<String>,
    /// The key line (starts with `ssh`). It is not parsed here.
    pub key_line: String,
    /// The signature lines, joined without separators.
    pub signature_b64: String,
}

impl RawRecord {
    /// The exact bytes the signature covers: each `#` line and then the key line, each with `\n`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in self
            .field_lines
            .iter()
            .chain(std::iter::once(&self.key_line))
        {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out
    }
}

/// Splits an `active-keys` body into records the way AWS's `eic_parse_authorized_keys` reads it.
/// Only lines that end in `\n` count (a last line without one is lost), and each is trimmed of
/// spaces and tabs at both ends (nothing else: a `\r` stays). A record is its `#` lines, then a key
/// line that starts with `ssh`, then signature lines up to an empty line or the end. A block whose
/// first non-`#` line does not start with `ssh` (or is empty) is skipped up to the next empty line.
pub fn parse_records(body: &str) -> Vec<RawRecord> {
    let lines: Vec<&str> = body
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| l.trim_matches([' ', '\t']))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        while i < lines.len() && lines[i].starts_with('#') {
            i += 1;
        }
        let field_lines = &lines[start..i];
        match lines.get(i) {
            Some(key) if key.starts_with("ssh") => {
                i += 1;
                let sig_start = i;
                while i < lines.len() && !lines[i].is_empty() {
                    i += 1;
                }
                out.push(RawRecord {
                    fields: field_lines
                        .iter()
                        .filter_map(|l| l[1..].split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    field_lines: field_lines.iter().map(|l| l.to_string()).collect(),
                    key_line: key.to_string(),
                    signature_b64: lines[sig_start..i].concat(),
                });
            }
            _ => {
                while i < lines.len() && !lines[i].is_empty() {
                    i += 1;
                }
            }
        }
        i += 1; // the empty line that ends the record (or past the end)
    }
    out
}

/// A record that passed every check of step 7 except the key line's own syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    /// The key line, for the caller to parse as an OpenSSH public key.
    pub key_line: String,
    /// `#Timestamp=`: the record is good strictly before this time.
    pub expires: SystemTime,
    /// `#Caller=`, for the audit trail.
    pub caller: Option<String>,
    /// `#Request=` (the SendSSHPublicKey request id), for the audit trail.
    pub request: Option<String>,
}

/// Step 7 for one record. The checks are the signature (base64, then RSASSA-PSS over
/// [`RawRecord::signed_bytes`]), then `#Instance=` and `#Timestamp=` present and not repeated,
/// then the timestamp a non-zero integer, the instance equal to `instance_id`, and the timestamp
/// strictly after `now` in whole seconds.
pub fn verify_record(
    rec: &RawRecord,
    signer: &SignerKey,
    instance_id: &str,
    now: SystemTime,
) -> Result<VerifiedRecord, RecordError> {
    if rec.signature_b64.is_empty() {
        return Err(RecordError::MalformedSignature(
            "record has no signature lines".into(),
        ));
    }
    let sig = BASE64
        .decode(rec.signature_b64.as_bytes())
        .map_err(|_| RecordError::MalformedSignature("signature is not base64".into()))?;
    signer
        .key
        .verify_sig(&rec.signed_bytes(), &sig)
        .map_err(|_| {
            RecordError::BadSignature(format!(
                "signature does not verify with signer {}",
                signer.name
            ))
        })?;

    let field = |name: &str| -> Result<Option<&str>, RecordError> {
        let mut values = rec
            .fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(RecordError::Malformed(format!(
                "record has more than one #{name}= field"
            )));
        }
        Ok(first)
    };
    let (caller, request) = (field("Caller")?, field("Request")?);
    let instance = field("Instance")?
        .ok_or_else(|| RecordError::MissingField("record has no #Instance= field".into()))?;
    let ts = field("Timestamp")?
        .ok_or_else(|| RecordError::MissingField("record has no #Timestamp= field".into()))?;
    let expires = Some(ts)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t != 0)
        .and_then(|t| UNIX_EPOCH.checked_add(Duration::from_secs(t)))
        .ok_or_else(|| {
            RecordError::Malformed(format!(
                "#Timestamp= is not a non-zero integer: {:?}",
                clean(ts)
            ))
        })?;
    if instance != instance_id {
        let (theirs, ours) = (clean(instance), clean(instance_id));
        return Err(RecordError::WrongInstance(format!(
            "record is for instance {theirs}, this is {ours}"
        )));
    }
    if since_epoch(expires).as_secs() <= since_epoch(now).as_secs() {
        return Err(RecordError::Expired(format!(
            "record expired at {}",
            rfc3339(expires)
        )));
    }
    Ok(VerifiedRecord {
        key_line: rec.key_line.clone(),
        expires,
        caller: caller.map(str::to_string),
        request: request.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CN: &str = "managed-ssh-signer.us-east-1.amazonaws.com";
    const BUNDLE: &str = include_str!("testdata/eic/bundle.pem");
    const RECORDS: &str = include_str!("testdata/eic/records.txt");
    const RECORDS_EXPECT: &str = include_str!("testdata/eic/records.expect");
    const CALLER: &str = "arn:aws:iam::123456789012:user/bastion-e2e";
    const REQUEST: &str = "0c4e2112-8e87-4894-bc09-3881fb7e0ded";
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86400);

    macro_rules! chain_fixture {
        ($($kind:literal),*) => {
            fn fixture(kind: &str) -> (&'static str, &'static str) {
                match kind {
                    $($kind => (
                        include_str!(concat!("testdata/eic/chain_", $kind, ".pem")),
                        include_str!(concat!("testdata/eic/chain_", $kind, ".staples")),
                    ),)*
                    other => panic!("no fixture {other}"),
                }
            }
        };
    }
    chain_fixture!(
        "good",
        "wrong_cn",
        "revoked_signer",
        "revoked_intermediate",
        "untrusted_root",
        "missing_staple",
        "missing_intermediate_staple",
        "stale_staple",
        "ecdsa",
        "sha1",
        "pathlen",
        "not_ca"
    );

    fn now() -> SystemTime {
        let secs: u64 = include_str!("testdata/eic/now.txt").trim().parse().unwrap();
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn instance() -> &'static str {
        include_str!("testdata/eic/instance.txt").trim()
    }

    fn anchors() -> Anchors {
        Anchors::from_pem(BUNDLE).unwrap()
    }

    fn certs(kind: &str) -> Vec<Vec<u8>> {
        parse_chain_pem(fixture(kind).0).unwrap()
    }

    fn staples(kind: &str) -> HashMap<String, Vec<u8>> {
        fixture(kind)
            .1
            .lines()
            .map(|l| {
                let (name, b64) = l.split_once(' ').unwrap();
                (name.to_string(), BASE64.decode(b64).unwrap())
            })
            .collect()
    }

    fn verify_at(kind: &str, t: SystemTime) -> Result<SignerKey, ChainError> {
        verify_signer(&certs(kind), &staples(kind), &anchors(), CN, t)
    }

    fn err(r: Result<SignerKey, ChainError>) -> ChainError {
        r.expect_err("the chain must be refused")
    }

    fn pem_of(der: &[u8]) -> String {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            BASE64.encode(der)
        )
    }

    fn good_signer() -> SignerKey {
        verify_at("good", now()).unwrap()
    }

    fn fixture_records() -> Vec<(RawRecord, &'static str)> {
        let recs = parse_records(RECORDS);
        let expect: Vec<&str> = RECORDS_EXPECT.lines().collect();
        assert_eq!(
            recs.len(),
            expect.len(),
            "records.txt and records.expect disagree"
        );
        recs.into_iter().zip(expect).collect()
    }

    // ---- chains ---------------------------------------------------------------------------

    #[test]
    fn good_chain_verifies() {
        let key = good_signer();
        assert_eq!(key.fingerprint(), staple_name(&certs("good")[0]));
        assert_eq!(anchors().len(), 1);
    }

    #[test]
    fn each_chain_fault_has_its_kind() {
        for (kind, expect) in [
            ("wrong_cn", "wrong_cn"),
            ("revoked_signer", "revoked"),
            ("revoked_intermediate", "revoked"),
            ("untrusted_root", "untrusted_chain"),
            ("missing_staple", "missing_staple"),
            ("missing_intermediate_staple", "missing_staple"),
            ("stale_staple", "stale_staple"),
            ("sha1", "unsupported_algorithm"),
        ] {
            let e = err(verify_at(kind, now()));
            assert_eq!(e.kind(), expect, "{kind}: {e}");
        }
    }

    #[test]
    fn chain_fault_messages_are_specific() {
        let int = "certificate 1 (CN=EIC Test Intermediate CA)";
        let signer = format!("certificate 0 (CN={CN})");
        assert_eq!(
            err(verify_at("wrong_cn", now())).to_string(),
            format!("signer certificate CN is managed-ssh-signer.us-west-2.amazonaws.com, expected {CN}")
        );
        // The staple was made a moment after `now`; its revocation time is 2 h before that.
        let revoked = err(verify_at("revoked_signer", now())).to_string();
        let prefix = format!("{signer} is revoked according to its OCSP staple (revoked at ");
        let at = revoked
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{revoked}"));
        let lo = rfc3339(now() - 2 * HOUR);
        let hi = rfc3339(now() - 2 * HOUR + Duration::from_secs(60));
        assert!(lo.as_str() <= at && at <= hi.as_str(), "{revoked}");
        assert!(err(verify_at("revoked_intermediate", now()))
            .to_string()
            .starts_with(&format!("{int} is revoked according to its OCSP staple")));
        assert_eq!(
            err(verify_at("untrusted_root", now())).to_string(),
            "the chain does not end at a trusted anchor: certificate 2 (CN=EIC Test Root CA) is not signed by any certificate in the trust bundle"
        );
        let name0 = staple_name(&certs("good")[0]);
        assert_eq!(
            err(verify_at("missing_staple", now())).to_string(),
            format!("no OCSP staple for {signer}; looked for {name0}")
        );
        let name1 = staple_name(&certs("good")[1]);
        assert_eq!(
            err(verify_at("missing_intermediate_staple", now())).to_string(),
            format!("no OCSP staple for {int}; looked for {name1}")
        );
        let stale = err(verify_at("stale_staple", now())).to_string();
        assert!(
            stale.starts_with(&format!("OCSP staple for {signer} is stale: nextUpdate ")),
            "{stale}"
        );
        assert!(stale.ends_with(" is in the past"), "{stale}");
        let sha1 = err(verify_at("sha1", now())).to_string();
        assert_eq!(
            sha1,
            format!("{signer} is signed with SHA-1, which is refused")
        );
    }

    #[test]
    fn good_chain_with_another_expected_cn_is_wrong_cn() {
        let e = err(verify_signer(
            &certs("good"),
            &staples("good"),
            &anchors(),
            "managed-ssh-signer.eu-west-1.amazonaws.com",
            now(),
        ));
        assert_eq!(e.kind(), "wrong_cn");
        assert_eq!(
            e.to_string(),
            format!("signer certificate CN is {CN}, expected managed-ssh-signer.eu-west-1.amazonaws.com")
        );
        // Not a suffix or prefix match.
        let e = err(verify_signer(
            &certs("good"),
            &staples("good"),
            &anchors(),
            &CN[1..],
            now(),
        ));
        assert_eq!(e.kind(), "wrong_cn");
    }

    #[test]
    fn served_root_is_never_an_anchor() {
        // The untrusted chain's own root, served, with its own (valid) staples: still refused.
        let forged = certs("untrusted_root");
        assert_eq!(
            err(verify_signer(
                &forged,
                &staples("untrusted_root"),
                &anchors(),
                CN,
                now()
            ))
            .kind(),
            "untrusted_chain"
        );
        // The genuine chain against a bundle holding the forged root (same name, other key).
        let other = Anchors::from_pem(&pem_of(&forged[2])).unwrap();
        let e = err(verify_signer(
            &certs("good"),
            &staples("good"),
            &other,
            CN,
            now(),
        ));
        assert_eq!(e.kind(), "untrusted_chain", "{e}");
        // A forged intermediate (same name as the genuine one) under the genuine root is no better.
        let mixed = vec![
            forged[0].clone(),
            forged[1].clone(),
            certs("good")[2].clone(),
        ];
        let e = err(verify_signer(
            &mixed,
            &staples("untrusted_root"),
            &anchors(),
            CN,
            now(),
        ));
        assert_eq!(e.kind(), "untrusted_chain", "{e}");
    }

    #[test]
    fn chain_without_the_root_still_needs_the_intermediate_staple() {
        let two = certs("good")[..2].to_vec();
        verify_signer(&two, &staples("good"), &anchors(), CN, now()).unwrap();
        let e = err(verify_signer(
            &two,
            &staples("missing_intermediate_staple"),
            &anchors(),
            CN,
            now(),
        ));
        assert_eq!(e.kind(), "missing_staple");
        let e = err(verify_signer(
            &two,
            &staples("revoked_intermediate"),
            &anchors(),
            CN,
            now(),
        ));
        assert_eq!(e.kind(), "revoked");
    }

    #[test]
    fn walk_stops_at_an_anchor_in_the_middle() {
        // The intermediate as the only anchor: only the signer's staple is needed.
        let c = certs("good");
        let a = Anchors::from_pem(&pem_of(&c[1])).unwrap();
        verify_signer(&c, &staples("missing_intermediate_staple"), &a, CN, now()).unwrap();
        verify_signer(
            &c[..1],
            &staples("missing_intermediate_staple"),
            &a,
            CN,
            now(),
        )
        .unwrap();
        // ...and the intermediate's revocation is then not looked at.
        verify_signer(&c, &staples("revoked_intermediate"), &a, CN, now()).unwrap();
        assert_eq!(
            err(verify_signer(&c, &staples("missing_staple"), &a, CN, now())).kind(),
            "missing_staple"
        );
        // A signer pinned in the bundle is trusted as is (no staple needed).
        let pinned = Anchors::from_pem(&pem_of(&c[0])).unwrap();
        verify_signer(&c[..1], &HashMap::new(), &pinned, CN, now()).unwrap();
    }

    #[test]
    fn bundle_with_several_anchors_and_comments() {
        let forged_root = pem_of(&certs("untrusted_root")[2]);
        let bundle = format!(
            "# EIC Test Root CA (forged)\n{forged_root}\n# EIC Test Root CA\r\n{}",
            BUNDLE.replace('\n', "\r\n")
        );
        let a = Anchors::from_pem(&bundle).unwrap();
        assert_eq!(a.len(), 2);
        // Both anchors have the issuer's name; the one whose key verifies is used.
        verify_signer(&certs("good"), &staples("good"), &a, CN, now()).unwrap();
    }

    #[test]
    fn broken_chains_are_refused() {
        let c = certs("good");
        let s = staples("good");
        let e = err(verify_signer(&[], &s, &anchors(), CN, now()));
        assert_eq!(e.kind(), "malformed");
        let e = err(verify_signer(&c[..1], &s, &anchors(), CN, now()));
        assert_eq!(e.kind(), "untrusted_chain");
        assert!(e.to_string().contains("certificate 0 (CN=managed-ssh-signer.us-east-1.amazonaws.com) is not signed by any certificate"), "{e}");
        let swapped = vec![c[0].clone(), c[2].clone(), c[1].clone()];
        let e = err(verify_signer(&swapped, &s, &anchors(), CN, now()));
        assert_eq!(e.kind(), "untrusted_chain");
        assert!(e.to_string().starts_with("certificate 0 (CN=managed-ssh-signer.us-east-1.amazonaws.com) names issuer CN=EIC Test Intermediate CA, but the next one is certificate 1 (CN=EIC Test Root CA)"), "{e}");
        let mut garbage = c.clone();
        garbage[1] = b"\x30\x03\x02\x01\x01".to_vec();
        assert_eq!(
            err(verify_signer(&garbage, &s, &anchors(), CN, now())).kind(),
            "malformed"
        );
        let mut truncated = c.clone();
        truncated[0].pop();
        assert_eq!(
            err(verify_signer(&truncated, &s, &anchors(), CN, now())).kind(),
            "malformed"
        );
        let mut trailing = c.clone();
        trailing[0].push(0);
        assert_eq!(
            err(verify_signer(&trailing, &s, &anchors(), CN, now())).kind(),
            "malformed"
        );
        // A bit flipped inside the signer's TBS: its signature no longer verifies.
        let mut flipped = c.clone();
        let at = flipped[0].len() / 3;
        flipped[0][at] ^= 0x01;
        let e = err(verify_signer(&flipped, &s, &anchors(), CN, now()));
        assert_eq!(e.kind(), "untrusted_chain");
        assert!(e.to_string().ends_with("is not signed by certificate 1 (CN=EIC Test Intermediate CA): the signature does not verify"), "{e}");
        let too_long: Vec<Vec<u8>> = std::iter::repeat_n(c[0].clone(), MAX_CHAIN_LEN + 1).collect();
        assert_eq!(
            err(verify_signer(&too_long, &s, &anchors(), CN, now())).kind(),
            "malformed"
        );
    }

    #[test]
    fn a_signer_used_as_issuer_is_not_a_ca() {
        // signer -> signer: names do not chain; the signer is not a CA either way.
        let c = certs("good");
        let e = err(verify_signer(
            &[c[0].clone(), c[0].clone()],
            &staples("good"),
            &anchors(),
            CN,
            now(),
        ));
        assert_eq!(e.kind(), "untrusted_chain");
    }

    #[test]
    fn issuers_must_be_cas_within_their_path_length() {
        // The genuine intermediate has pathlen:0; here a sub CA sits below it.
        let e = err(verify_at("pathlen", now()));
        assert_eq!(e.kind(), "untrusted_chain");
        assert_eq!(
            e.to_string(),
            "certificate 2 (CN=EIC Test Intermediate CA) has pathLenConstraint 0 but 1 intermediate certificate(s) below it"
        );
        // ...also when the intermediate is the anchor.
        let c = certs("pathlen");
        let a = Anchors::from_pem(&pem_of(&c[2])).unwrap();
        let e = err(verify_signer(&c, &staples("pathlen"), &a, CN, now()));
        assert!(e.to_string().starts_with("trust anchor (CN=EIC Test Intermediate CA) that issued certificate 1 (CN=EIC Test Sub CA) has pathLenConstraint 0"), "{e}");
        // The genuine signer (cA false) used as an issuer.
        let e = err(verify_at("not_ca", now()));
        assert_eq!(e.kind(), "untrusted_chain");
        assert_eq!(
            e.to_string(),
            format!("certificate 1 (CN={CN}) is not a CA: its basicConstraints say cA false")
        );
    }

    #[test]
    fn pinned_signer_is_still_checked_for_dates() {
        let c = certs("good");
        let pinned = Anchors::from_pem(&pem_of(&c[0])).unwrap();
        let e = err(verify_signer(
            &c[..1],
            &HashMap::new(),
            &pinned,
            CN,
            now() + 31 * DAY,
        ));
        assert_eq!(e.kind(), "cert_expired");
    }

    #[test]
    fn far_times_do_not_panic() {
        let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(err(verify_at("good", far)).kind(), "cert_expired");
        assert_eq!(
            err(verify_at("good", UNIX_EPOCH)).kind(),
            "cert_not_yet_valid"
        );
        let (rec, _) = &fixture_records()[0];
        assert_eq!(
            verify_record(rec, &good_signer(), instance(), far)
                .unwrap_err()
                .kind(),
            "expired"
        );
    }

    #[test]
    fn ecdsa_issuers_are_supported() {
        let a = Anchors::from_pem(include_str!("testdata/eic/bundle_ecdsa.pem")).unwrap();
        let key = verify_signer(&certs("ecdsa"), &staples("ecdsa"), &a, CN, now()).unwrap();
        // Same signer key as the genuine chain: the good record verifies with it.
        let (rec, _) = &fixture_records()[0];
        verify_record(rec, &key, instance(), now()).unwrap();
        // ...and this chain does not verify against the RSA bundle.
        assert_eq!(err(verify_at("ecdsa", now())).kind(), "untrusted_chain");
    }

    // ---- time -----------------------------------------------------------------------------

    #[test]
    fn certificate_validity_uses_now() {
        let e = err(verify_at("good", now() + 31 * DAY));
        assert_eq!(e.kind(), "cert_expired", "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("certificate 0 (CN={CN}) expired at ")),
            "{e}"
        );
        let e = err(verify_at("good", now() - 2 * DAY));
        assert_eq!(e.kind(), "cert_not_yet_valid", "{e}");
    }

    #[test]
    fn staple_window_with_skew() {
        // Staples: thisUpdate = generation - 1 h, nextUpdate = generation + 1 day.
        verify_at("good", now() + DAY + Duration::from_secs(4 * 60)).unwrap();
        let e = err(verify_at("good", now() + DAY + Duration::from_secs(6 * 60)));
        assert_eq!(e.kind(), "stale_staple", "{e}");
        assert!(e.to_string().contains("is stale: nextUpdate"), "{e}");
        verify_at("good", now() - HOUR - Duration::from_secs(4 * 60)).unwrap();
        let e = err(verify_at(
            "good",
            now() - HOUR - Duration::from_secs(6 * 60),
        ));
        assert_eq!(e.kind(), "stale_staple", "{e}");
        assert!(
            e.to_string().contains("is not valid yet: thisUpdate"),
            "{e}"
        );
    }

    // ---- staples --------------------------------------------------------------------------

    #[test]
    fn staple_names_are_sha1_fingerprints() {
        let c = certs("good");
        let mut names: Vec<String> = staples("good").into_keys().collect();
        names.sort();
        let mut ours = vec![staple_name(&c[0]), staple_name(&c[1])];
        ours.sort();
        assert_eq!(names, ours);
        assert!(ours.iter().all(|n| n.len() == 40
            && n.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())));
    }

    #[test]
    fn wrong_or_broken_staples_are_bad_staples() {
        let c = certs("good");
        let (n0, n1) = (staple_name(&c[0]), staple_name(&c[1]));
        let good = staples("good");
        let with = |der: Vec<u8>| {
            let mut s = good.clone();
            s.insert(n0.clone(), der);
            verify_signer(&c, &s, &anchors(), CN, now())
        };
        // The intermediate's staple (signed by the root, about the intermediate) under the signer's name.
        let e = err(with(good[&n1].clone()));
        assert_eq!(e.kind(), "bad_staple", "{e}");
        // A staple about the forged signer, signed by the forged intermediate.
        let forged = staples("untrusted_root");
        let forged_signer = staple_name(&certs("untrusted_root")[0]);
        let e = err(with(forged[&forged_signer].clone()));
        assert_eq!(e.kind(), "bad_staple", "{e}");
        assert!(
            e.to_string().contains(
                "is not signed by its issuer, certificate 1 (CN=EIC Test Intermediate CA)"
            ),
            "{e}"
        );
        // wrong_cn's signer staple: signed by the genuine intermediate but about another serial.
        let wrong = staples("wrong_cn");
        let wrong_name = staple_name(&certs("wrong_cn")[0]);
        let e = err(with(wrong[&wrong_name].clone()));
        assert_eq!(e.kind(), "bad_staple", "{e}");
        assert!(e.to_string().contains("does not cover it"), "{e}");
        // Garbage, truncation, a flipped bit in the signed data.
        assert_eq!(err(with(b"not der".to_vec())).kind(), "bad_staple");
        let mut cut = good[&n0].clone();
        cut.truncate(cut.len() - 10);
        assert_eq!(err(with(cut)).kind(), "bad_staple");
        let mut flipped = good[&n0].clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        assert_eq!(err(with(flipped)).kind(), "bad_staple");
        // OCSPResponse with status tryLater (3) and no body.
        assert_eq!(
            err(with(vec![0x30, 0x03, 0x0a, 0x01, 0x03])).kind(),
            "bad_staple"
        );
    }

    #[test]
    fn generalized_times() {
        let t = |s: &[u8]| generalized_time(&AnyRef::new(Tag::GeneralizedTime, s).unwrap());
        assert_eq!(
            t(b"19700101000001Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1)
        );
        assert_eq!(
            t(b"20260101000000.123Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_767_225_600)
        );
        for bad in [
            &b"20260101000000"[..],
            b"2026010100000Z",
            b"20260101000000.Z",
            b"20261301000000Z",
            b"2026010100000aZ",
            b"20260101000000+0100",
        ] {
            assert!(t(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(generalized_time(&AnyRef::new(Tag::UtcTime, b"260101000000Z").unwrap()).is_err());
    }

    // ---- PEM, names -----------------------------------------------------------------------

    #[test]
    fn chain_pem_parsing() {
        assert_eq!(certs("good").len(), 3);
        let good = fixture("good").0;
        assert_eq!(
            parse_chain_pem(&good.replace('\n', "\r\n")).unwrap().len(),
            3
        );
        for bad in [
            String::new(),
            "\n\n".to_string(),
            "garbage".to_string(),
            format!("junk\n{good}"),
            good.replacen("MII", "M!I", 1),
            good.replacen("-----END CERTIFICATE-----", "", 1),
            good.replacen("CERTIFICATE", "PRIVATE KEY", 1),
        ] {
            let e = parse_chain_pem(&bad).unwrap_err();
            assert_eq!(e.kind(), "malformed", "{e}");
        }
        assert!(Anchors::from_pem("").is_err());
        assert!(Anchors::from_pem("# only a comment\n").is_err());
        assert!(Anchors::from_pem(&pem_of(b"\x30\x00")).is_err());
    }

    #[test]
    fn regions_and_names() {
        assert_eq!(region_from_az("us-east-1a").unwrap(), "us-east-1");
        assert_eq!(region_from_az("us-gov-west-1a").unwrap(), "us-gov-west-1");
        assert_eq!(region_from_az("ap-southeast-2c").unwrap(), "ap-southeast-2");
        for bad in [
            "",
            "us-east-1",
            "us-east-1ab",
            "us-east-12a",
            "useast-1a",
            "US-east-1a",
            "us--1a",
            "a-b-c-d-1a",
            "us-east-1a\n",
            "us-east-1-bos-1a",
            "-east-1a",
        ] {
            assert!(region_from_az(bad).is_err(), "{bad:?}");
        }
        assert_eq!(expected_signer_cn("us-east-1", "amazonaws.com"), CN);
    }

    #[test]
    fn served_text_is_escaped_in_messages() {
        assert_eq!(clean("a\nb\r\u{7}c"), "a\\nb\\r\\u{7}c");
        assert_eq!(clean(&"x".repeat(300)).chars().count(), 201);
    }

    // ---- records --------------------------------------------------------------------------

    #[test]
    fn each_record_fault_has_its_kind() {
        let key = good_signer();
        for (n, (rec, expect)) in fixture_records().into_iter().enumerate() {
            match verify_record(&rec, &key, instance(), now()) {
                Ok(v) => {
                    assert_eq!(expect, "ok", "record {n} verified");
                    assert_eq!(v.caller.as_deref(), Some(CALLER));
                }
                Err(e) => assert_eq!(e.kind(), expect, "record {n}: {e}"),
            }
        }
    }

    #[test]
    fn good_record_returns_its_fields() {
        let recs = fixture_records();
        let (rec, _) = &recs[0];
        let v = verify_record(rec, &good_signer(), instance(), now()).unwrap();
        assert_eq!(v.key_line, rec.key_line);
        assert!(
            v.key_line.starts_with("ssh-ed25519 AAAA") && v.key_line.ends_with(" user0@example")
        );
        assert_eq!(v.expires, now() + Duration::from_secs(60));
        assert_eq!(v.caller.as_deref(), Some(CALLER));
        assert_eq!(v.request.as_deref(), Some(REQUEST));
        // The wrapped one and the one with an extra field.
        assert!(recs[7].0.signature_b64.len() > 76 && RECORDS.lines().any(|l| l.len() == 76));
        assert_eq!(
            recs[8].0.fields.last().unwrap(),
            &(
                "Extra".to_string(),
                "unknown=field, signed over".to_string()
            )
        );
        assert!(verify_record(&recs[8].0, &good_signer(), instance(), now()).is_ok());
    }

    #[test]
    fn record_error_messages() {
        let key = good_signer();
        let recs = fixture_records();
        let msg = |n: usize| {
            verify_record(&recs[n].0, &key, instance(), now())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            msg(1),
            format!(
                "record expired at {}",
                rfc3339(now() - Duration::from_secs(10))
            )
        );
        assert_eq!(
            msg(2),
            format!(
                "record is for instance i-0fedcba9876543210, this is {}",
                instance()
            )
        );
        assert!(msg(3).starts_with("signature does not verify"));
        assert_eq!(msg(4), "signature is not base64");
        assert_eq!(msg(5), "record has no #Timestamp= field");
        assert_eq!(msg(6), "record has no #Instance= field");
        assert_eq!(msg(10), "#Timestamp= is not a non-zero integer: \"0\"");
        assert_eq!(msg(13), "record has more than one #Instance= field");
    }

    #[test]
    fn record_expiry_is_strict_in_whole_seconds() {
        let (rec, _) = &fixture_records()[0];
        let key = good_signer();
        let ts = now() + Duration::from_secs(60);
        assert!(verify_record(rec, &key, instance(), ts - Duration::from_secs(1)).is_ok());
        assert!(verify_record(rec, &key, instance(), ts - Duration::from_millis(1)).is_ok());
        assert_eq!(
            verify_record(rec, &key, instance(), ts).unwrap_err().kind(),
            "expired"
        );
        assert_eq!(
            verify_record(rec, &key, instance(), ts + Duration::from_millis(500))
                .unwrap_err()
                .kind(),
            "expired"
        );
    }

    #[test]
    fn record_checks_its_instance_and_signer() {
        let (rec, _) = &fixture_records()[0];
        let e = verify_record(rec, &good_signer(), "i-0fedcba9876543210", now()).unwrap_err();
        assert_eq!(e.kind(), "wrong_instance");
        // The wrong_cn chain's signer (another key) does not verify the genuine records.
        let other = SignerKey::from_cert(&Cert::parse(&certs("wrong_cn")[0]).unwrap()).unwrap();
        assert_eq!(
            verify_record(rec, &other, instance(), now())
                .unwrap_err()
                .kind(),
            "bad_signature"
        );
    }

    #[test]
    fn every_signed_line_is_covered() {
        let key = good_signer();
        let recs = fixture_records();
        let tamper = |n: usize, f: &dyn Fn(&mut RawRecord)| {
            let mut r = recs[n].0.clone();
            f(&mut r);
            verify_record(&r, &key, instance(), now())
                .unwrap_err()
                .kind()
        };
        assert_eq!(tamper(0, &|r| r.key_line.push('x')), "bad_signature");
        assert_eq!(tamper(0, &|r| r.field_lines[2].push('x')), "bad_signature");
        assert_eq!(
            tamper(8, &|r| {
                r.field_lines.pop();
            }),
            "bad_signature"
        );
        assert_eq!(tamper(0, &|r| r.field_lines.swap(0, 1)), "bad_signature");
        assert_eq!(
            tamper(0, &|r| r.field_lines.push("#Note=x".into())),
            "bad_signature"
        );
        assert_eq!(
            tamper(0, &|r| r.signature_b64.clear()),
            "malformed_signature"
        );
        assert_eq!(
            tamper(0, &|r| r.signature_b64.push('\r')),
            "malformed_signature"
        );
        assert_eq!(
            tamper(0, &|r| {
                r.signature_b64.pop();
            }),
            "malformed_signature"
        );
    }

    #[test]
    fn records_are_split_like_aws_does() {
        assert!(parse_records("").is_empty());
        // Blank-line separation, several blank lines, padding trimmed (spaces and tabs only).
        let body = "#A=1\n#B=x=y\nssh-ed25519 K1 c\nSIG1\n\n\n \t#A=2\t\n  ssh-rsa K2\nSI\nG2 \n";
        let r = parse_records(body);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].fields,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(
            r[0].field_lines,
            vec!["#A=1".to_string(), "#B=x=y".to_string()]
        );
        assert_eq!(
            (r[0].key_line.as_str(), r[0].signature_b64.as_str()),
            ("ssh-ed25519 K1 c", "SIG1")
        );
        assert_eq!(r[1].field_lines, vec!["#A=2".to_string()]);
        assert_eq!(
            (r[1].key_line.as_str(), r[1].signature_b64.as_str()),
            ("ssh-rsa K2", "SIG2")
        );
        assert_eq!(r[0].signed_bytes(), b"#A=1\n#B=x=y\nssh-ed25519 K1 c\n");
        // \r is part of the line.
        let r = parse_records("#A=1\r\nssh-ed25519 K\r\nSIG\r\n");
        assert_eq!(r[0].field_lines, vec!["#A=1\r".to_string()]);
        assert_eq!(r[0].fields, vec![("A".into(), "1\r".into())]);
        assert_eq!(
            (r[0].key_line.as_str(), r[0].signature_b64.as_str()),
            ("ssh-ed25519 K\r", "SIG\r")
        );
        // A block whose first non-# line is not a key is skipped to the next blank line.
        let r = parse_records("#A=1\nnot-a-key\nssh-ed25519 HIDDEN\n\n#A=2\nssh-ed25519 K\nSIG\n");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].key_line, "ssh-ed25519 K");
        // Field lines that run into a blank line have no key.
        let r = parse_records("#A=1\n\nssh-ed25519 K\nSIG\n");
        assert_eq!(r.len(), 1);
        assert!(r[0].field_lines.is_empty());
        // A record without a blank line after it swallows what follows as signature lines.
        let r = parse_records("#A=1\nssh-ed25519 K\nSIG\n#A=2\nssh-ed25519 L\n");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].signature_b64, "SIG#A=2ssh-ed25519 L");
        // The last line without \n is lost.
        let r = parse_records("#A=1\nssh-ed25519 K\nSIG");
        assert_eq!(r[0].signature_b64, "");
        assert!(parse_records("#A=1\nssh-ed25519 K").is_empty());
        // # lines without '=' are signed but are no fields; "ssh" must start the key line.
        let r =
            parse_records("#comment\n#A=1\nssh-x K\nS\n\n#A=1\n ssh\tK\nS\n\n#A=1\nrsa-ssh K\nS\n");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].field_lines.len(), 2);
        assert_eq!(r[0].fields.len(), 1);
        assert_eq!(r[1].key_line, "ssh\tK");
    }

    #[test]
    fn fixture_body_has_wrapped_and_single_line_signatures() {
        let recs = fixture_records();
        assert_eq!(recs.len(), 14);
        // 256-byte RSA signatures: 344 base64 characters, one line or wrapped at 76.
        assert!(recs
            .iter()
            .filter(|(_, k)| *k != "malformed_signature")
            .all(|(r, _)| r.signature_b64.len() == 344));
    }

    #[test]
    fn error_kinds_are_distinct_and_stable() {
        let c = [
            ChainError::Malformed(String::new()),
            ChainError::WrongCn(String::new()),
            ChainError::UntrustedChain(String::new()),
            ChainError::CertExpired(String::new()),
            ChainError::CertNotYetValid(String::new()),
            ChainError::UnsupportedAlgorithm(String::new()),
            ChainError::BadSignerKey(String::new()),
            ChainError::MissingStaple(String::new()),
            ChainError::BadStaple(String::new()),
            ChainError::StaleStaple(String::new()),
            ChainError::Revoked(String::new()),
        ];
        let mut kinds: Vec<&str> = c.iter().map(ChainError::kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), c.len());
        let r = [
            RecordError::MissingField(String::new()),
            RecordError::Malformed(String::new()),
            RecordError::WrongInstance(String::new()),
            RecordError::Expired(String::new()),
            RecordError::MalformedSignature(String::new()),
            RecordError::BadSignature(String::new()),
        ];
        let mut kinds: Vec<&str> = r.iter().map(RecordError::kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), r.len());
    }
}
