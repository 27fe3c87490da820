//! Parsing of OpenSSH `authorized_keys` files (`sshd(8)`, section "Authorized keys file format").
//!
//! Only the parts a bastion relies on are interpreted: the key itself, `from=`, `permitopen=`,
//! `expiry-time=`, `restrict` / `[no-]port-forwarding` and `command=` (kept for auditing).
//! Options that only matter for shells/PTYs/agents are parsed and ignored. Anything the
//! bastion cannot honour safely (certificates, `cert-authority`, unknown options) makes the
//! line fail, which, as in sshd, means the line is skipped.
//!
//! Files: this one (the line format: the key, the line, the file, login names), `options.rs`
//! (the options before the key: `from=`, `permitopen=`, `expiry-time=`, `restrict`…),
//! `tests.rs`.

mod options;
#[cfg(test)]
mod tests;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use options::parse_options;
pub use options::{KeyOptions, PermitOpen};

/// Key algorithms accepted in plain (non-certificate) form.
const ACCEPTED_ALGOS: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Suffix shared by all OpenSSH certificate key types.
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

/// Why a key or an `authorized_keys` line was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The line (or the part after the options) has no key type and key data.
    #[error("no public key found (expected \"ALGORITHM BASE64 [comment]\")")]
    MissingKey,
    /// The key data is not valid base64.
    #[error("key data is not valid base64: {0}")]
    BadBase64(base64::DecodeError),
    /// The algorithm named on the line differs from the one encoded in the key blob.
    #[error("key type {algo:?} does not match the key data, which is of type {found:?}")]
    AlgoMismatch {
        /// Algorithm named on the line.
        algo: String,
        /// Algorithm found in the blob (lossy UTF-8, or a description if the blob is malformed).
        found: String,
    },
    /// A key algorithm the bastion does not accept.
    #[error("unsupported key algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// An OpenSSH certificate was given instead of a plain key.
    #[error("certificates are not supported yet (key type {0:?})")]
    CertificateNotSupported(String),
    /// The `cert-authority` or `principals=` option was used.
    #[error("cert-authority keys are not supported yet")]
    CertAuthorityNotSupported,
    /// An option name that is not part of the `authorized_keys` format (or not supported here).
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    /// A known option used incorrectly.
    #[error("bad option {name:?}: {reason}")]
    BadOption {
        /// Option name as written.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `expiry-time=` value that is not a valid `YYYYMMDD[HHMM[SS]][Z]` timestamp.
    #[error("bad expiry-time {0:?}: expected YYYYMMDD[HHMM[SS]][Z]")]
    BadExpiry(String),
    /// A `permitopen=` value that is not `host:port`.
    #[error("bad permitopen {value:?}: {reason}")]
    BadPermitOpen {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A public key in SSH wire format, decoded from the base64 of an OpenSSH key line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyBlob {
    /// Key algorithm, e.g. `ssh-ed25519`.
    pub algo: String,
    /// The decoded key blob (SSH wire format, starting with the algorithm string).
    pub blob: Vec<u8>,
}

impl PublicKeyBlob {
    /// Parse "ALGO BASE64 [comment]" (e.g. what `ssh-keygen` writes to `id_ed25519.pub`).
    ///
    /// Validates that the base64 decodes and that the blob's first SSH string
    /// (u32 big-endian length + bytes) equals ALGO. Only the algorithms listed in
    /// sshd's modern defaults are accepted.
    ///
    /// # Errors
    ///
    /// [`KeyError::MissingKey`], [`KeyError::CertificateNotSupported`],
    /// [`KeyError::UnsupportedAlgorithm`], [`KeyError::BadBase64`] or [`KeyError::AlgoMismatch`].
    pub fn from_openssh(s: &str) -> Result<Self, KeyError> {
        parse_key(s).map(|(key, _comment)| key)
    }

    /// `"SHA256:"` + unpadded standard base64 of sha256(blob), exactly as `ssh-keygen -lf` prints it.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(&self.blob))
        )
    }

    /// `"ALGO BASE64"` (no comment).
    #[must_use]
    pub fn to_openssh(&self) -> String {
        format!("{} {}", self.algo, STANDARD.encode(&self.blob))
    }
}

/// One successfully parsed `authorized_keys` line.
#[derive(Clone, Debug)]
pub struct AuthorizedKey {
    /// The public key.
    pub key: PublicKeyBlob,
    /// Its options.
    pub options: KeyOptions,
    /// Trailing comment (may be empty).
    pub comment: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// A line that was skipped, and why.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What was wrong with it.
    pub error: KeyError,
}

/// Result of parsing a whole `authorized_keys` file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Keys from the lines that parsed.
    pub keys: Vec<AuthorizedKey>,
    /// Lines that were skipped.
    pub errors: Vec<LineError>,
}

/// Parse a whole `authorized_keys` file.
///
/// Blank lines and `#` comments are skipped. A line with a bad key or a bad/unknown option is
/// skipped and reported in `errors` (as sshd does: it ignores lines it cannot parse); other
/// lines still load.
#[must_use]
pub fn parse_authorized_keys(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        match parse_line(content) {
            Ok((key, options, comment)) => parsed.keys.push(AuthorizedKey {
                key,
                options,
                comment,
                line,
            }),
            Err(error) => parsed.errors.push(LineError { line, error }),
        }
    }
    parsed
}

/// Why a login name is refused ([`validate_login`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The name is empty.
    #[error("login name is empty")]
    Empty,
    /// The name is longer than 64 bytes.
    #[error("login name is {0} bytes long; at most 64 are allowed")]
    TooLong(usize),
    /// The name is `.` or `..`.
    #[error("login name must not be {0:?}")]
    Dots(String),
    /// The name starts with `.` or `-`.
    #[error("login name must not start with '.' or '-'")]
    BadStart,
    /// The name holds a character outside `[A-Za-z0-9._@+=,-]`.
    #[error("login name contains the invalid character {0:?}")]
    BadCharacter(char),
}

/// Is this a login name the bastion accepts (before any key source sees it)?
///
/// 1..=64 bytes of `[A-Za-z0-9._@+=,-]`, not starting with `.` or `-`, and not `.` or `..`.
/// # Errors
///
/// Why the name is rejected; its message is a short human sentence.
pub fn validate_login(login: &str) -> Result<(), LoginError> {
    if login.is_empty() {
        return Err(LoginError::Empty);
    }
    if login.len() > 64 {
        return Err(LoginError::TooLong(login.len()));
    }
    if login == "." || login == ".." {
        return Err(LoginError::Dots(login.to_string()));
    }
    if login.starts_with(['.', '-']) {
        return Err(LoginError::BadStart);
    }
    if let Some(c) = login
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@+=,-".contains(*c)))
    {
        return Err(LoginError::BadCharacter(c));
    }
    Ok(())
}

/// Split off the first whitespace-separated token; the rest has leading whitespace removed.
pub(super) fn next_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parse "ALGO BASE64 [comment]" into the key and its (trimmed) comment.
fn parse_key(s: &str) -> Result<(PublicKeyBlob, String), KeyError> {
    let (algo, rest) = next_token(s);
    let (data, comment) = next_token(rest);
    if algo.is_empty() {
        return Err(KeyError::MissingKey);
    }
    if algo.ends_with(CERT_SUFFIX) {
        return Err(KeyError::CertificateNotSupported(algo.into()));
    }
    if !ACCEPTED_ALGOS.contains(&algo) {
        return Err(KeyError::UnsupportedAlgorithm(algo.into()));
    }
    if data.is_empty() {
        return Err(KeyError::MissingKey);
    }
    let blob = STANDARD.decode(data).map_err(KeyError::BadBase64)?;
    let found = blob_algo(&blob);
    if found != Some(algo.as_bytes()) {
        let found = found.map_or_else(
            || "<malformed blob>".to_string(),
            |f| String::from_utf8_lossy(f).into_owned(),
        );
        return Err(KeyError::AlgoMismatch {
            algo: algo.into(),
            found,
        });
    }
    let key = PublicKeyBlob {
        algo: algo.into(),
        blob,
    };
    Ok((key, comment.trim_end().to_string()))
}

/// The first SSH string (u32 big-endian length + bytes) of a key blob.
fn blob_algo(blob: &[u8]) -> Option<&[u8]> {
    let len_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    blob.get(4..4_usize.checked_add(len)?)
}

/// Parse one non-blank, non-comment line (already trimmed).
fn parse_line(line: &str) -> Result<(PublicKeyBlob, KeyOptions, String), KeyError> {
    let (first, rest) = next_token(line);
    // No options if the line starts with a key type. Besides the types we know, treat
    // "WORD AAAA..." as a key line so that e.g. `ssh-dss AAAA...` reports the algorithm.
    let starts_with_key = ACCEPTED_ALGOS.contains(&first)
        || first.ends_with(CERT_SUFFIX)
        || (!first.contains(['=', '"', ',']) && rest.starts_with("AAAA"));
    let (options, key_part) = if starts_with_key {
        (KeyOptions::default(), line)
    } else {
        parse_options(line)?
    };
    let (key, comment) = parse_key(key_part)?;
    Ok((key, options, comment))
}
