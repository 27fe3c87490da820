//! Step 7: the records of an `active-keys/<user>/` body, split as AWS's
//! `eic_parse_authorized_keys` reads them, and each one checked against the signer's key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{clean, rfc3339, since_epoch, RecordError, SignerKey};

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
