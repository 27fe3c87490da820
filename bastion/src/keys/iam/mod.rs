//! The `iam` key source: SSH public keys that IAM users upload themselves
//! (`aws iam upload-ssh-public-key`), optionally limited to members of IAM groups.
//!
//! Only the login being authenticated is looked up, and only after the client
//! proved possession of a key: `GetUser` (once per user, for the ARN),
//! `ListGroupsForUser` (when groups matter), `ListSSHPublicKeys` and, for key
//! ids not seen before, `GetSSHPublicKey`. Key material never changes for a key
//! id, so a refresh of a known user costs one or two calls.
//!
//! IAM throttling is account-wide and cannot be raised, so every answer is
//! cached ([`IamSource`]):
//! - a fresh answer is reused for `cache_ttl`; "no such user" for `negative_ttl`;
//! - concurrent lookups of one user wait for a single set of calls;
//! - when IAM fails (throttling, transport errors, timeouts, 5xx, access
//!   denied), the last good answer is used for up to `stale_ttl` and the
//!   decision says so; all lookups then back off (exponential, with jitter)
//!   before calling IAM again for users that still have a usable answer;
//! - past `stale_ttl`, or with no answer at all, the lookup fails closed.
//!
//! An answer that a user has no keys, or is not in a group, is an answer, not
//! an outage: it takes effect at once.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, Semaphore};

pub(crate) mod lookup;
mod sdk;
mod source;
#[cfg(test)]
mod tests;

pub use sdk::SdkIam;
pub use source::{Counts, IamSource, Settings};

/// The settings of one `type = "iam"` key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamAuth {
    /// `groups`: IAM groups whose members may log in; empty means any IAM user (default `[]`).
    pub groups: Vec<String>,
    /// `assume_role_arn`: a role (usually in another account) assumed to read the users' keys.
    pub assume_role_arn: Option<String>,
    /// `cache_ttl`: how long a fresh answer is reused (default 60s, > 0).
    pub cache_ttl: Duration,
    /// `stale_ttl`: how long the last good answer is used while IAM is unreachable or
    /// throttling (default 1h, at least `cache_ttl`).
    pub stale_ttl: Duration,
    /// `negative_ttl`: how long "no such IAM user" is remembered (default 10s, > 0).
    pub negative_ttl: Duration,
    /// `timeout`: the longest one user's lookup may take, retries included (default 10s, > 0).
    pub timeout: Duration,
    /// `cache_dir`: where answers are also kept on disk, so that a restart during an IAM
    /// outage still has them (default: memory only).
    pub cache_dir: Option<PathBuf>,
}

/// Defaults of the `iam` key source, shared with `bastion authorized-keys`.
pub const IAM_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default `stale_ttl`.
pub const IAM_STALE_TTL: Duration = Duration::from_secs(3600);
/// Default `negative_ttl`.
pub const IAM_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Default `timeout` of one IAM lookup.
pub const IAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Every IAM action the key source calls; `docs/iam/key-reader-policy.json`
/// grants exactly these (a unit test holds the two together).
pub const IAM_ACTIONS: &[&str] = &[
    "iam:GetUser",
    "iam:ListSSHPublicKeys",
    "iam:GetSSHPublicKey",
    "iam:ListGroupsForUser",
];

/// Longest IAM user name (IAM's limit).
pub const MAX_USER_NAME: usize = 64;
/// Longest IAM group name (IAM's limit).
pub const MAX_GROUP_NAME: usize = 128;
/// Concurrent IAM lookups (of different users) at most; more wait their turn.
const MAX_CONCURRENT_FETCHES: usize = 8;
/// First back-off after an IAM failure; doubles per consecutive failure.
const BACKOFF_START: Duration = Duration::from_secs(2);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often cache entries past any use are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The widdix/aws-ec2-ssh spellings of characters IAM user names may hold and
/// Unix user names may not.
const WIDDIX: &[(&str, char)] = &[
    (".plus.", '+'),
    (".equal.", '='),
    (".comma.", ','),
    (".at.", '@'),
];

/// The IAM user name a login stands for: the login itself, with the widdix
/// spellings (`.plus.` `.equal.` `.comma.` `.at.`, every occurrence) turned
/// back into `+ = , @`.
pub fn iam_user_for_login(login: &str) -> String {
    let mut out = login.to_string();
    for (spelled, c) in WIDDIX {
        out = out.replace(spelled, &c.to_string());
    }
    out
}

/// The widdix spelling of an IAM user name (what widdix made the Unix user).
pub fn widdix_login(iam_user: &str) -> String {
    let mut out = String::with_capacity(iam_user.len());
    for c in iam_user.chars() {
        match WIDDIX.iter().find(|(_, w)| *w == c) {
            Some((spelled, _)) => out.push_str(spelled),
            None => out.push(c),
        }
    }
    out
}

fn iam_name_chars(name: &str) -> Option<char> {
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_+=,.@-".contains(*c)))
}

/// Is `name` a valid IAM user name (`[\w+=,.@-]{1,64}`)? Checked before any IAM call.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_NAME {
        return Err(format!(
            "{name:?} is not a valid IAM user name (1 to {MAX_USER_NAME} characters, found {})",
            name.len()
        ));
    }
    if let Some(c) = iam_name_chars(name) {
        return Err(format!(
            "{name:?} is not a valid IAM user name (it contains {c:?}; IAM allows letters, digits and _+=,.@-)"
        ));
    }
    Ok(())
}

/// Is `name` a valid IAM group name (`[\w+=,.@-]{1,128}`)?
pub fn validate_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(format!(
            "{name:?} is not a valid IAM group name (1 to {MAX_GROUP_NAME} characters)"
        ));
    }
    if let Some(c) = iam_name_chars(name) {
        return Err(format!(
            "{name:?} is not a valid IAM group name (it contains {c:?}; IAM allows letters, digits and _+=,.@-)"
        ));
    }
    Ok(())
}

/// Is `arn` an IAM role ARN (`arn:<partition>:iam::<12 digits>:role/<path/name>`)?
pub fn validate_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty() && !r.ends_with('/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not an IAM role ARN (arn:aws:iam::<account id>:role/<name>)"
        ))
    }
}

// ---------------------------------------------------------------------------
// What IAM said
// ---------------------------------------------------------------------------

/// One SSH key of an IAM user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamKey {
    /// `SSHPublicKeyId`.
    pub id: String,
    /// `Active` (true) or `Inactive`.
    pub active: bool,
    /// The key as IAM returns it with `Encoding=SSH` (`ssh-rsa AAAA… comment`).
    pub body: String,
}

/// An IAM user as far as the bastion cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamUser {
    /// The user name as IAM spells it.
    pub name: String,
    /// The user's ARN.
    pub arn: String,
    /// The user's groups, when they were asked for (`None`: not needed).
    pub groups: Option<Vec<String>>,
    /// The user's SSH keys; `None` when not listed because the user is in none
    /// of the required groups.
    pub keys: Option<Vec<IamKey>>,
}

/// IAM's answer about one user name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// IAM has no user of that name.
    NoSuchUser,
    User(IamUser),
}

/// How current an answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Just fetched from IAM.
    Fresh,
    /// From the cache, younger than `cache_ttl` (or `negative_ttl`).
    Cached { age: Duration },
    /// IAM failed; this is the last good answer, younger than `stale_ttl`.
    Stale { age: Duration, why: String },
}

impl Freshness {
    /// The word for the audit trail's `iam_cache` field.
    pub fn word(&self) -> &'static str {
        match self {
            Freshness::Fresh => "fresh",
            Freshness::Cached { .. } => "cached",
            Freshness::Stale { .. } => "stale",
        }
    }
}

/// A lookup's result: IAM's answer and how current it is.
#[derive(Debug, Clone)]
pub struct Answer {
    pub record: Arc<Record>,
    pub freshness: Freshness,
}

/// IAM could not be asked and there is no usable answer: fail closed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Outage(pub String);

/// How an IAM call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// `Throttling` / `Rate exceeded` and the like.
    Throttled,
    /// Transport errors, timeouts, 5xx.
    Unavailable,
    /// Anything else (access denied, malformed responses, …).
    Other,
}

/// A failed IAM call.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    /// What went wrong, for logs and the audit trail (never a credential).
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            ApiErrorKind::Throttled => "IAM is throttling",
            ApiErrorKind::Unavailable => "IAM is unreachable",
            ApiErrorKind::Other => "IAM call failed",
        };
        write!(f, "{what}: {}", self.message)
    }
}

/// `Ok(None)`: IAM says no such entity (the user does not exist).
pub type ApiResult<T> = Result<Option<T>, ApiError>;

/// The IAM calls the key source makes: the AWS SDK ([`SdkIam`]) in the
/// bastion, a scripted fake in unit tests.
pub trait IamApi: Send + Sync + 'static {
    /// `GetUser`: (user name as IAM spells it, ARN).
    fn get_user(&self, name: &str) -> impl Future<Output = ApiResult<(String, String)>> + Send;
    /// `ListSSHPublicKeys`, all pages: (key id, active).
    fn list_keys(&self, name: &str) -> impl Future<Output = ApiResult<Vec<(String, bool)>>> + Send;
    /// `GetSSHPublicKey` with `Encoding=SSH`: the key body.
    fn get_key(&self, name: &str, id: &str) -> impl Future<Output = ApiResult<String>> + Send;
    /// `ListGroupsForUser`, all pages: group names.
    fn list_groups(&self, name: &str) -> impl Future<Output = ApiResult<Vec<String>>> + Send;
}
