//! EC2 Instance Connect, both ways round.
//!
//! **As a key source** (`[[auth]] type = "eic"`): a user runs
//! `aws ec2-instance-connect send-ssh-public-key --instance-id <this bastion>
//! --instance-os-user <login> …`, and for 60 s the instance metadata service
//! (IMDS) serves that key as a signed record. [`EicSource`] reads the records
//! for one login over IMDSv2 and accepts a key only when the signer's chain,
//! its OCSP staples and the record itself all verify ([`crate::keys::eic_verify`]).
//! Nothing is cached: every login reads the records afresh, so no key outlives
//! its record.
//!
//! **Onward** (`[eic] push = true`): when a user asks for an instance id
//! (`ssh -J alice@bastion ec2-user@i-0123…`), the monitor resolves it with
//! `DescribeInstances` and, once the policy allows it, pushes the very key the
//! user authenticated with to the instance with `SendSSHPublicKey`
//! ([`Ec2Api`]), so the user's own end-to-end SSH to the instance succeeds
//! without the bastion holding any key of theirs.
//!
//! Files: this one (the settings, the names, the IMDS reader [`EicSource`]), `eic/lookup.rs`
//! (the source's decision for one login and key, as a [`crate::keys::KeySource`]),
//! `eic/push.rs` (the onward push), and `eic_verify/` (the pure verification).

use std::time::{Duration, SystemTime};

use aws_config::imds::client::error::ImdsError;

use crate::keys::authorized_keys::PublicKeyBlob;
use crate::keys::eic_verify::{self, Anchors, RawRecord, VerifiedRecord};

/// The settings of one `type = "eic"` key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EicAuth {
    /// `ca_bundle`: PEM trust anchors for the EC2 Instance Connect signer's chain
    /// (default: the system bundle, the first of [`crate::config::SYSTEM_CA_BUNDLES`] that exists).
    pub ca_bundle: std::path::PathBuf,
    /// `timeout`: the longest one lookup in the instance metadata service may take (default 5s).
    pub timeout: Duration,
}

/// Default `timeout` of the eic key source.
pub const EIC_TIMEOUT: Duration = Duration::from_secs(5);

/// EC2 Instance Connect's `InstanceOSUser` rule: 1–32 characters,
/// `^[A-Za-z_][A-Za-z0-9@._-]{0,30}[A-Za-z0-9$_-]?$`, or a name of 2–32
/// characters that starts with digits followed by a letter or one of `@._-`.
pub fn validate_os_user(user: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{user:?} is not a user name EC2 Instance Connect accepts (1-32 characters: letters, digits, @ . _ -, not starting with -)"
        ))
    };
    let b = user.as_bytes();
    if b.is_empty() || b.len() > 32 {
        return bad();
    }
    let middle = |c: u8| c.is_ascii_alphanumeric() || b"@._-".contains(&c);
    let last_ok = |c: u8| c.is_ascii_alphanumeric() || b"$_-".contains(&c);
    let first = b[0];
    let ok = if first.is_ascii_alphabetic() || first == b'_' {
        match b.len() {
            1 => true,
            n => b[1..n - 1].iter().all(|&c| middle(c)) && (middle(b[n - 1]) || last_ok(b[n - 1])),
        }
    } else if first.is_ascii_digit() {
        // "0day": digits, then a letter or one of @._-, then the usual characters.
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        b.len() >= 2
            && digits < b.len()
            && (b[digits].is_ascii_alphabetic() || b"@._-".contains(&b[digits]))
            && b[digits..].iter().all(|&c| middle(c) || c == b'$')
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        bad()
    }
}

/// An EC2 instance id as a client may ask for it: `i-` and 8 or 17 hex digits.
pub fn is_instance_id(host: &str) -> bool {
    host.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

pub(crate) mod lookup;
mod push;

pub use push::{check_pushable, Ec2Api, Ec2Failure, Instance, PushableError, Pushed};

// ---------------------------------------------------------------------------------------------
// The key source

const META: &str = "/latest/meta-data/";

/// Why the instance metadata service could not give an answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImdsFailure(String);

/// What the instance metadata says about one login, verified.
#[derive(Debug)]
pub struct KeysFor {
    /// This instance.
    pub instance_id: String,
    /// The signer certificate's SHA-1 fingerprint, when there were records to verify.
    pub signer: Option<String>,
    /// Records that passed every check.
    pub accepted: Vec<Accepted>,
    /// Records that failed a check: the key line when there was one, and why.
    pub rejected: Vec<(Option<String>, String)>,
}

/// One verified record.
#[derive(Debug)]
pub struct Accepted {
    pub key: PublicKeyBlob,
    pub record: VerifiedRecord,
}

/// A lookup failed as a whole: the reason, and a short kind for the metrics.
#[derive(Debug)]
pub struct EicFailure {
    pub reason: String,
    pub kind: &'static str,
}

/// Reads and verifies EC2 Instance Connect records from the instance metadata service.
pub struct EicSource {
    anchors: Anchors,
    timeout: Duration,
    endpoint: Option<String>,
    /// This instance's id, zone and domain: fixed for the instance's life.
    identity: tokio::sync::OnceCell<(String, String, String)>,
    client: std::sync::Mutex<Option<aws_config::imds::Client>>,
}

impl EicSource {
    /// `endpoint`: the IMDS base URL; `None` for `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the
    /// default (http://169.254.169.254).
    pub fn new(anchors: Anchors, timeout: Duration, endpoint: Option<String>) -> EicSource {
        EicSource {
            anchors,
            timeout,
            endpoint,
            identity: tokio::sync::OnceCell::new(),
            client: std::sync::Mutex::new(None),
        }
    }

    /// From the `[[auth]]` entry: reads the trust anchors.
    pub fn from_config(c: &EicAuth) -> Result<EicSource, AnchorsError> {
        EicSource::load(&c.ca_bundle, c.timeout, None)
    }

    /// Reads the trust anchors from `bundle` (PEM).
    pub fn load(
        bundle: &std::path::Path,
        timeout: Duration,
        endpoint: Option<String>,
    ) -> Result<EicSource, AnchorsError> {
        let anchors = read_anchors(bundle)?;
        if anchors.skipped() > 0 {
            tracing::warn!(
                bundle = %bundle.display(),
                skipped = anchors.skipped(),
                used = anchors.len(),
                "some certificates of the CA bundle could not be read and are not trust anchors"
            );
        }
        Ok(EicSource::new(anchors, timeout, endpoint))
    }

    /// The trust bundle's size, for the start-up announcement.
    pub fn anchors(&self) -> usize {
        self.anchors.len()
    }

    fn client(&self, fresh: bool) -> Result<aws_config::imds::Client, ImdsFailure> {
        let mut slot = self
            .client
            .lock()
            .map_err(|_| ImdsFailure("IMDS client lock poisoned".into()))?;
        if fresh || slot.is_none() {
            let mut b = aws_config::imds::Client::builder()
                .max_attempts(2)
                .connect_timeout(Duration::from_secs(1))
                .read_timeout(self.timeout)
                .operation_timeout(self.timeout)
                .token_ttl(Duration::from_secs(300));
            if let Some(url) = &self.endpoint {
                b = b
                    .endpoint(url)
                    .map_err(|e| ImdsFailure(format!("invalid IMDS endpoint {url:?}: {e}")))?;
            }
            *slot = Some(b.build());
        }
        slot.clone()
            .ok_or_else(|| ImdsFailure("no IMDS client".into()))
    }

    /// GET one metadata path; `Ok(None)` on 404. A 401 (token expired or
    /// revoked) gets one retry with a new token.
    async fn get(&self, path: &str) -> Result<Option<String>, ImdsFailure> {
        let mut fresh = false;
        loop {
            let client = self.client(fresh)?;
            let result = tokio::time::timeout(self.timeout, client.get(format!("{META}{path}")))
                .await
                .map_err(|_| {
                    ImdsFailure(format!(
                        "the instance metadata service (IMDS) did not answer {META}{path} within {}",
                        humantime::format_duration(self.timeout)
                    ))
                })?;
            match result {
                Ok(body) => return Ok(Some(body.as_ref().to_string())),
                Err(ImdsError::ErrorResponse(r)) => match r.response().status().as_u16() {
                    404 => return Ok(None),
                    401 if !fresh => fresh = true,
                    status => {
                        return Err(ImdsFailure(format!(
                            "the instance metadata service (IMDS) answered {META}{path} with HTTP {status}"
                        )))
                    }
                },
                Err(e) => {
                    return Err(ImdsFailure(format!(
                        "the instance metadata service (IMDS) could not be read ({META}{path}): {}",
                        aws_sdk_ssm::error::DisplayErrorContext(&e)
                    )))
                }
            }
        }
    }

    async fn must_get(&self, path: &str) -> Result<String, ImdsFailure> {
        self.get(path).await?.ok_or_else(|| {
            ImdsFailure(format!(
                "the instance metadata service (IMDS) has no {META}{path} (HTTP 404)"
            ))
        })
    }

    /// (instance id, availability zone, domain), read once.
    async fn identity(&self) -> Result<&(String, String, String), ImdsFailure> {
        self.identity
            .get_or_try_init(|| async {
                let id = self.must_get("instance-id").await?.trim().to_string();
                if !is_instance_id(&id) {
                    return Err(ImdsFailure(format!(
                        "the instance metadata service (IMDS) gave an instance id that is not one: {id:?}"
                    )));
                }
                let az = self
                    .must_get("placement/availability-zone")
                    .await?
                    .trim()
                    .to_string();
                let domain = self.must_get("services/domain").await?.trim().to_string();
                Ok((id, az, domain))
            })
            .await
    }

    /// The verified records for `login`. `Err` when nothing can be trusted (IMDS
    /// unreachable, the signer's chain or its staples do not verify): fail closed.
    pub async fn keys_for(&self, login: &str, now: SystemTime) -> Result<KeysFor, EicFailure> {
        let imds = |e: ImdsFailure| EicFailure {
            reason: e.0,
            kind: "imds",
        };
        // Never build a path from a name EC2 Instance Connect could not have stored.
        if validate_os_user(login).is_err() {
            return Ok(KeysFor {
                instance_id: String::new(),
                signer: None,
                accepted: Vec::new(),
                rejected: Vec::new(),
            });
        }
        let (instance_id, az, domain) = self.identity().await.map_err(imds)?.clone();
        let body = self
            .get(&format!("managed-ssh-keys/active-keys/{login}/"))
            .await
            .map_err(imds)?;
        let records: Vec<RawRecord> = body
            .as_deref()
            .map(eic_verify::parse_records)
            .unwrap_or_default();
        let mut out = KeysFor {
            instance_id: instance_id.clone(),
            signer: None,
            accepted: Vec::new(),
            rejected: Vec::new(),
        };
        if records.is_empty() {
            return Ok(out);
        }
        let region = eic_verify::region_from_az(&az).map_err(|e| EicFailure {
            reason: format!("availability zone {az:?} from IMDS: {e}"),
            kind: "imds",
        })?;
        let expected_cn = eic_verify::expected_signer_cn(&region, &domain);
        let chain_pem = self
            .must_get("managed-ssh-keys/signer-cert/")
            .await
            .map_err(imds)?;
        let chain = eic_verify::parse_chain_pem(&chain_pem).map_err(|e| EicFailure {
            reason: format!("the signer certificate from IMDS ({}): {e}", e.kind()),
            kind: e.kind(),
        })?;
        let listing = self
            .get("managed-ssh-keys/signer-ocsp/")
            .await
            .map_err(imds)?
            .unwrap_or_default();
        let mut staples = std::collections::HashMap::new();
        for name in listing.lines().map(str::trim).filter(|n| !n.is_empty()) {
            // Only names that can be SHA-1 fingerprints; anything else is not ours to fetch.
            if name.len() != 40 || !name.bytes().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            if let Some(b64) = self
                .get(&format!("managed-ssh-keys/signer-ocsp/{name}"))
                .await
                .map_err(imds)?
            {
                use base64::Engine;
                let compact: String = b64.split_whitespace().collect();
                match base64::engine::general_purpose::STANDARD.decode(compact) {
                    Ok(der) => {
                        staples.insert(name.to_ascii_uppercase(), der);
                    }
                    Err(e) => {
                        tracing::warn!(staple = name, error = %e, "OCSP staple from IMDS is not base64; ignored")
                    }
                }
            }
        }
        let signer = eic_verify::verify_signer(&chain, &staples, &self.anchors, &expected_cn, now)
            .map_err(|e| EicFailure {
                reason: format!(
                    "the EC2 Instance Connect signer is not trusted ({}): {e}",
                    e.kind()
                ),
                kind: e.kind(),
            })?;
        out.signer = Some(signer.fingerprint().to_string());
        for rec in &records {
            match eic_verify::verify_record(rec, &signer, &instance_id, now) {
                Ok(v) => match PublicKeyBlob::from_openssh(&v.key_line) {
                    Ok(key) => out.accepted.push(Accepted { key, record: v }),
                    Err(e) => out.rejected.push((
                        Some(v.key_line.clone()),
                        format!("the key line does not parse: {e}"),
                    )),
                },
                Err(e) => out
                    .rejected
                    .push((Some(rec.key_line.clone()), format!("({}) {e}", e.kind()))),
            }
        }
        Ok(out)
    }
}

/// Why a trust bundle gave no trust anchor; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum AnchorsError {
    /// The file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    /// The file is not a PEM bundle of readable certificates.
    #[error("{}: {error}", path.display())]
    Bundle {
        path: std::path::PathBuf,
        error: eic_verify::BundleError,
    },
    /// The file holds no certificate.
    #[error("{} holds no certificate", path.display())]
    Empty { path: std::path::PathBuf },
}

/// The configuration check collects messages (`impl Into<String>`): the outermost edge.
impl From<AnchorsError> for String {
    fn from(e: AnchorsError) -> String {
        e.to_string()
    }
}

/// Reads a PEM trust bundle: an error names the file (unreadable, not PEM, no certificate).
pub fn read_anchors(bundle: &std::path::Path) -> Result<Anchors, AnchorsError> {
    let path = || bundle.to_path_buf();
    let text = std::fs::read_to_string(bundle).map_err(|error| AnchorsError::Read {
        path: path(),
        error,
    })?;
    let anchors = Anchors::from_pem(&text).map_err(|error| AnchorsError::Bundle {
        path: path(),
        error,
    })?;
    if anchors.is_empty() {
        return Err(AnchorsError::Empty { path: path() });
    }
    Ok(anchors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_users_as_the_api_takes_them() {
        for ok in [
            "ec2-user",
            "ubuntu",
            "root",
            "_x",
            "a",
            "0day",
            "a$",
            "user.name@x",
        ] {
            assert!(validate_os_user(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a/b",
            "a b",
            "ab\n",
            "0",
            "12",
            &"a".repeat(33),
            "a$b",
        ] {
            assert!(validate_os_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instance_ids() {
        assert!(is_instance_id("i-0123456789abcdef0"));
        assert!(is_instance_id("i-12345678"));
        assert!(!is_instance_id("i-0123456789ABCDEF0"));
        assert!(!is_instance_id("i-123"));
        assert!(!is_instance_id("db.internal"));
        assert!(!is_instance_id("i-0123456789abcdef0.example.com"));
    }
}
