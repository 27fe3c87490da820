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
//! so the few OCSP structures (RFC 6960) are declared in `ocsp.rs` with `der`'s derive macros.
//!
//! Files: this one (the errors, the small helpers the others share), `x509.rs` (PEM,
//! certificates, trust anchors, signature algorithms), `chain.rs` (steps 3–4 and the signer key:
//! [`verify_signer`]), `ocsp.rs` (step 5: the OCSP staples), `record.rs` (step 7: the record
//! format, [`parse_records`], [`verify_record`]), `tests.rs`.

mod chain;
mod ocsp;
mod record;
#[cfg(test)]
mod tests;
mod x509;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;

pub use chain::{verify_signer, SignerKey};
pub use ocsp::OCSP_SKEW;
pub use record::{parse_records, verify_record, RawRecord, VerifiedRecord};
pub use x509::{parse_chain_pem, Anchors, BundleError, PemError};

/// Most certificates accepted in `signer-cert` (the real service serves three).
pub const MAX_CHAIN_LEN: usize = 8;

// --------------------------------------------------------------------------------------------
// errors

/// Why the signer chain (steps 3–5) was refused. `Display` is the operator-facing reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The PEM or DER cannot be parsed, or the chain is empty or too long.
    #[error("{0}")]
    Malformed(String),
    /// The signer's CN is not the expected one.
    #[error("{0}")]
    WrongCn(String),
    /// The chain does not lead to a trust anchor, or a certificate on it may not issue.
    #[error("{0}")]
    UntrustedChain(String),
    /// A certificate on the path (or its anchor) expired before `now`.
    #[error("{0}")]
    CertExpired(String),
    /// A certificate on the path (or its anchor) is not valid yet at `now`.
    #[error("{0}")]
    CertNotYetValid(String),
    /// A signature algorithm that is refused (SHA-1, unknown, key mismatch).
    #[error("{0}")]
    UnsupportedAlgorithm(String),
    /// The signer's key cannot verify records (not RSA 2048–8192, keyUsage).
    #[error("{0}")]
    BadSignerKey(String),
    /// A certificate that needs a staple has none.
    #[error("{0}")]
    MissingStaple(String),
    /// A staple does not parse, is not signed by the issuer, or is not about the certificate.
    #[error("{0}")]
    BadStaple(String),
    /// A staple is outside its validity window.
    #[error("{0}")]
    StaleStaple(String),
    /// A staple says the certificate is revoked.
    #[error("{0}")]
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

/// Why one record (step 7) was refused. `Display` is the operator-facing reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// `#Instance=` or `#Timestamp=` is absent.
    #[error("{0}")]
    MissingField(String),
    /// A field is unusable (timestamp not a non-zero integer, a known field repeated).
    #[error("{0}")]
    Malformed(String),
    /// `#Instance=` names another instance.
    #[error("{0}")]
    WrongInstance(String),
    /// `#Timestamp=` is not after `now`.
    #[error("{0}")]
    Expired(String),
    /// The signature lines are absent or not base64.
    #[error("{0}")]
    MalformedSignature(String),
    /// The signature does not verify with the signer's key.
    #[error("{0}")]
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

// --------------------------------------------------------------------------------------------
// small helpers

/// Served text for an error message: control characters escaped, at most 200 characters.
pub(super) fn clean(s: &str) -> String {
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
pub(super) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    match der::DateTime::from_unix_duration(Duration::from_secs(d.as_secs())) {
        Ok(dt) => dt.to_string(),
        Err(_) => format!("{} (epoch seconds)", d.as_secs()),
    }
}

pub(super) fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

pub(super) fn sha1(data: &[u8]) -> digest::Digest {
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

/// Why an availability zone name was refused by [`region_from_az`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AzError {
    /// The zone is the empty string.
    #[error("empty availability zone")]
    Empty,
    /// The zone (escaped and truncated for the message) does not have AWS's shape.
    #[error("availability zone {0:?} does not match ^([a-z]+-){{2,3}}[0-9][a-z]$")]
    Malformed(String),
}

/// The region of an availability zone (`us-east-1a` → `us-east-1`). The zone must match AWS's
/// `^([a-z]+-){2,3}[0-9][a-z]$`.
pub fn region_from_az(az: &str) -> Result<String, AzError> {
    let parts: Vec<&str> = az.split('-').collect();
    let (last, words) = parts.split_last().ok_or(AzError::Empty)?;
    let words_ok = (2..=3).contains(&words.len())
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()));
    let last_ok = matches!(last.as_bytes(), [d, l] if d.is_ascii_digit() && l.is_ascii_lowercase());
    if !(words_ok && last_ok) {
        return Err(AzError::Malformed(clean(az)));
    }
    Ok(az[..az.len() - 1].to_string())
}

/// The CN the signer certificate must carry: `managed-ssh-signer.<region>.<domain>`.
pub fn expected_signer_cn(region: &str, domain: &str) -> String {
    format!("managed-ssh-signer.{region}.{domain}")
}
