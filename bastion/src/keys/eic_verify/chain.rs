//! Steps 3–4 of the signer check: the signer's CN, the walk from the served chain to a trust
//! anchor, each certificate's dates, extensions and CA rights, and the signer's own key. The
//! staples (step 5) are checked in `ocsp.rs`.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::spki::AlgorithmIdentifierRef;

use super::ocsp::check_staple;
use super::x509::{cert_signed_by, sig_alg, Anchors, Cert, RSA_ENCRYPTION};
use super::{clean, rfc3339, since_epoch, staple_name, ChainError, MAX_CHAIN_LEN};

/// The signer's public key, ready to verify records (RSASSA-PSS, SHA-256, MGF1-SHA256, salt 32).
pub struct SignerKey {
    pub(super) key: ParsedPublicKey,
    pub(super) name: String,
}

impl SignerKey {
    pub(super) fn from_cert(c: &Cert) -> Result<SignerKey, ChainError> {
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
