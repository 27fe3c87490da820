//! Step 5 of the signer check: the OCSP staples (RFC 6960, only what a staple check needs). The
//! few OCSP structures are declared here with `der`'s derive macros: there is no `x509-ocsp`
//! release on `der` 0.8.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{AnyRef, ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode, Sequence, Tag, Tagged};
use x509_cert::name::Name;
use x509_cert::spki::AlgorithmIdentifierRef;

use super::x509::{sig_alg, verify_sig, Cert, Signed};
use super::{clean, rfc3339, sha1, since_epoch, staple_name, ChainError};

/// Clock skew allowed around an OCSP staple's [thisUpdate, nextUpdate] (openssl's default).
pub const OCSP_SKEW: Duration = Duration::from_secs(5 * 60);

const SHA1_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");

/// `OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT ResponseBytes OPTIONAL }`
#[derive(Sequence)]
struct OcspResponse<'a> {
    status: AnyRef<'a>,
    #[asn1(context_specific = "0", optional = "true")]
    bytes: Option<ResponseBytes<'a>>,
}

/// `ResponseBytes`: the type of the response, and the response (here a BasicOCSPResponse).
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

/// `SingleResponse`: one certificate's status, and the window in which that status holds.
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

/// `CertID`: which certificate (issuer name and key hashes, serial) a response is about.
#[derive(Sequence)]
struct CertId<'a> {
    hash_algorithm: AlgorithmIdentifierRef<'a>,
    issuer_name_hash: &'a OctetStringRef,
    issuer_key_hash: &'a OctetStringRef,
    serial_number: AnyRef<'a>,
}

/// A GeneralizedTime `YYYYMMDDHHMMSS[.fff]Z` (fractions allowed and dropped, which RFC 5280
/// forbids in certificates but RFC 6960 does not in OCSP).
pub(super) fn generalized_time(any: &AnyRef<'_>) -> Result<SystemTime, String> {
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
pub(super) fn check_staple(
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
