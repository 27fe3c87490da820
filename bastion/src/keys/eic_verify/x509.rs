//! X.509 for the signer chain: PEM, certificates, trust anchors and the accepted signature
//! algorithms (sha256/384/512WithRSAEncryption, ecdsa-with-SHA256/384 on P-256/P-384).

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
use der::{Decode, Encode, Sequence, Tag, Tagged};
use x509_cert::name::Name;
use x509_cert::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;

use super::{clean, ChainError};

// --------------------------------------------------------------------------------------------
// PEM

/// Why a PEM text did not give certificates. The line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// A PEM block of another type (the text is escaped and truncated).
    #[error("line {line}: {text:?} is not a certificate")]
    NotACertificate { line: usize, text: String },
    /// Text outside the blocks where only whitespace may be (served chains).
    #[error("line {line}: text outside a certificate block")]
    TextOutside { line: usize },
    /// The body of certificate `index` (from 0) is not base64.
    #[error("certificate {index} ending on line {line}: bad base64 ({error})")]
    BadBase64 {
        index: usize,
        line: usize,
        error: String,
    },
    /// A header or another PEM boundary inside a certificate block.
    #[error("line {line}: unexpected {text:?} inside a certificate block")]
    UnexpectedInside { line: usize, text: String },
    /// The text ends inside a block.
    #[error("a certificate block has no END line")]
    NoEnd,
    /// No CERTIFICATE block at all.
    #[error("no certificate found")]
    NoCertificate,
}

/// The CERTIFICATE blocks of a PEM text, as DER. `strict`: nothing but whitespace may appear
/// outside the blocks (served chains). Otherwise other text is skipped (comments in CA bundles).
fn pem_certificates(pem: &str, strict: bool) -> Result<Vec<Vec<u8>>, PemError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for (n, raw) in pem.lines().enumerate() {
        let line = raw.trim();
        match body.as_mut() {
            None if line == BEGIN => body = Some(String::new()),
            None if line.starts_with("-----BEGIN ") => {
                return Err(PemError::NotACertificate {
                    line: n + 1,
                    text: clean(line),
                });
            }
            None if strict && !line.is_empty() => {
                return Err(PemError::TextOutside { line: n + 1 });
            }
            None => {}
            Some(b) if line == END => {
                let der = BASE64
                    .decode(b.as_bytes())
                    .map_err(|e| PemError::BadBase64 {
                        index: out.len(),
                        line: n + 1,
                        error: e.to_string(),
                    })?;
                out.push(der);
                body = None;
            }
            Some(_) if line.starts_with("-----") || line.contains(':') => {
                return Err(PemError::UnexpectedInside {
                    line: n + 1,
                    text: clean(line),
                });
            }
            Some(b) => b.push_str(line),
        }
    }
    if body.is_some() {
        return Err(PemError::NoEnd);
    }
    if out.is_empty() {
        return Err(PemError::NoCertificate);
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
pub(super) struct Signed<'a> {
    pub(super) tbs: AnyRef<'a>,
    pub(super) algorithm: AlgorithmIdentifierRef<'a>,
    pub(super) signature: BitStringRef<'a>,
    #[asn1(context_specific = "0", optional = "true")]
    certs: Option<AnyRef<'a>>, // BasicOCSPResponse only; not used
}

/// A parsed certificate with its exact DER and its to-be-signed bytes.
pub(super) struct Cert {
    pub(super) der: Vec<u8>,
    pub(super) cert: Certificate,
    pub(super) tbs: Vec<u8>,
}

impl Cert {
    pub(super) fn parse(der: &[u8]) -> Result<Cert, String> {
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

    pub(super) fn subject(&self) -> &Name {
        self.cert.tbs_certificate().subject()
    }

    pub(super) fn issuer(&self) -> &Name {
        self.cert.tbs_certificate().issuer()
    }

    pub(super) fn spki(&self) -> &SubjectPublicKeyInfoOwned {
        self.cert.tbs_certificate().subject_public_key_info()
    }

    /// The CN values of the subject, as strings (`Err` for a CN that is not a string type we read).
    pub(super) fn common_names(&self) -> Vec<Result<String, String>> {
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
    pub(super) fn label(&self) -> String {
        match self.common_names().first() {
            Some(Ok(cn)) => format!("CN={}", clean(cn)),
            _ => clean(&self.subject().to_string()),
        }
    }

    pub(super) fn extension<'a, T: Decode<'a> + der::oid::AssociatedOid>(
        &'a self,
        what: &str,
    ) -> Result<Option<T>, String> {
        match self.cert.tbs_certificate().get_extension::<T>() {
            Ok(ext) => Ok(ext.map(|(_, v)| v)),
            Err(e) => Err(format!("has a malformed {what} extension ({e})")),
        }
    }
}

/// Why a CA bundle gave no trust anchor ([`Anchors::from_pem`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bundle is not PEM, or holds no CERTIFICATE block.
    #[error("CA bundle: {0}")]
    Pem(PemError),
    /// No block is a certificate this module can read; the first one's reason.
    #[error("CA bundle: certificate {index} is {why}")]
    Certificate { index: usize, why: String },
}

/// Trust anchors: the certificates of the configured CA bundle (never served ones).
pub struct Anchors {
    pub(super) certs: Vec<Cert>,
    skipped: usize,
}

impl Anchors {
    /// Reads a PEM bundle. Text outside CERTIFICATE blocks (comments) is ignored. A block that
    /// is not a certificate this module can read is skipped and counted ([`Anchors::skipped`]):
    /// a system bundle may hold one odd old root, and it must not take every other anchor
    /// down with it. A bundle with no readable certificate is an error.
    pub fn from_pem(pem: &str) -> Result<Anchors, BundleError> {
        let ders = pem_certificates(pem, false).map_err(BundleError::Pem)?;
        let mut certs = Vec::new();
        let mut first_error = None;
        for (n, der) in ders.iter().enumerate() {
            match Cert::parse(der) {
                Ok(c) => certs.push(c),
                Err(why) => {
                    first_error.get_or_insert(BundleError::Certificate { index: n, why });
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
pub(super) const RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

#[derive(Clone, Copy)]
pub(super) enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Clone, Copy)]
pub(super) enum SigAlg {
    Rsa(Hash),
    Ecdsa(Hash),
}

/// The accepted signature algorithms. `Err` names the refused one.
pub(super) fn sig_alg(alg: &AlgorithmIdentifierRef<'_>) -> Result<SigAlg, String> {
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
pub(super) fn verify_sig(
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
pub(super) fn cert_signed_by(cert: &Cert, issuer: &Cert) -> Result<(), String> {
    let alg = AlgorithmIdentifierRef::from(cert.cert.signature_algorithm());
    let alg = sig_alg(&alg)?;
    let sig = cert
        .cert
        .signature()
        .as_bytes()
        .ok_or("the signature is not a whole number of bytes")?;
    verify_sig(issuer.spki(), alg, &cert.tbs, sig)
}
