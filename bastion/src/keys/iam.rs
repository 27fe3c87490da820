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

// ---------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------

/// What the cache needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Required groups (any of them); empty: any user.
    pub groups: Vec<String>,
    /// Ask for every user's groups even when `groups` is empty (the policy names groups).
    pub want_groups: bool,
    pub cache_ttl: Duration,
    pub stale_ttl: Duration,
    pub negative_ttl: Duration,
    pub timeout: Duration,
    pub cache_dir: Option<PathBuf>,
}

impl Settings {
    pub fn from_config(c: &IamAuth, want_groups: bool) -> Settings {
        Settings {
            groups: c.groups.clone(),
            want_groups,
            cache_ttl: c.cache_ttl,
            stale_ttl: c.stale_ttl,
            negative_ttl: c.negative_ttl,
            timeout: c.timeout,
            cache_dir: c.cache_dir.clone(),
        }
    }

    fn needs_groups(&self) -> bool {
        self.want_groups || !self.groups.is_empty()
    }
}

/// One cached answer. `at` is when it was fetched (wall clock, so that an
/// answer read back from disk keeps its age).
#[derive(Debug, Clone)]
struct Cached {
    at: SystemTime,
    record: Arc<Record>,
}

impl Cached {
    fn age(&self, now: SystemTime) -> Duration {
        // A clock that went backwards makes an answer look new; one from the
        // future is treated as too old to trust.
        now.duration_since(self.at).unwrap_or(Duration::MAX)
    }
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// The disk cache was consulted for this user.
    loaded: bool,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
    last_error: String,
}

/// What the lookups answered, for `/metrics`.
#[derive(Default)]
pub struct Counts {
    fresh: AtomicU64,
    cached: AtomicU64,
    stale: AtomicU64,
    outage: AtomicU64,
    throttled: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

impl Counts {
    pub fn lookups(&self) -> Vec<(&'static str, u64)> {
        [
            ("fresh", &self.fresh),
            ("cached", &self.cached),
            ("stale", &self.stale),
            ("outage", &self.outage),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }

    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        [
            ("throttled", &self.throttled),
            ("unavailable", &self.unavailable),
            ("other", &self.other),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }

    fn answered(&self, r: &Result<Answer, Outage>) {
        let c = match r {
            Ok(a) => match a.freshness {
                Freshness::Fresh => &self.fresh,
                Freshness::Cached { .. } => &self.cached,
                Freshness::Stale { .. } => &self.stale,
            },
            Err(_) => &self.outage,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, kind: &ApiErrorKind) {
        let c = match kind {
            ApiErrorKind::Throttled => &self.throttled,
            ApiErrorKind::Unavailable => &self.unavailable,
            ApiErrorKind::Other => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Cached, coalesced, back-off-aware IAM lookups.
pub struct IamSource<A: IamApi> {
    api: A,
    settings: Settings,
    counts: Counts,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    fetches: Semaphore,
    backoff: Mutex<Backoff>,
    last_sweep: Mutex<Instant>,
}

impl<A: IamApi> IamSource<A> {
    pub fn new(api: A, settings: Settings) -> IamSource<A> {
        IamSource {
            api,
            settings,
            counts: Counts::default(),
            slots: Mutex::new(HashMap::new()),
            fetches: Semaphore::new(MAX_CONCURRENT_FETCHES),
            backoff: Mutex::new(Backoff::default()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// IAM's answer about `name` (a valid IAM user name), from the cache when
    /// it is young enough; concurrent lookups of one user share one fetch.
    pub async fn lookup(&self, name: &str) -> Result<Answer, Outage> {
        let r = self.lookup_inner(name).await;
        self.counts.answered(&r);
        r
    }

    async fn lookup_inner(&self, name: &str) -> Result<Answer, Outage> {
        self.sweep();
        // IAM user names are unique regardless of case.
        let key = name.to_ascii_lowercase();
        let slot = {
            let mut slots = self.slots.lock().map_err(|_| poisoned())?;
            slots.entry(key.clone()).or_default().clone()
        };
        // Whoever holds the slot is fetching this user; the rest wait here and
        // then find the fresh answer.
        let mut slot = slot.lock().await;
        if !slot.loaded {
            slot.loaded = true;
            if slot.cached.is_none() {
                slot.cached = self.load_from_disk(&key).await;
            }
        }
        let now = SystemTime::now();
        if let Some(c) = &slot.cached {
            let age = c.age(now);
            let ttl = match *c.record {
                Record::NoSuchUser => self.settings.negative_ttl,
                Record::User(_) => self.settings.cache_ttl,
            };
            if age < ttl {
                return Ok(Answer {
                    record: c.record.clone(),
                    freshness: Freshness::Cached { age },
                });
            }
        }
        let usable = slot
            .cached
            .as_ref()
            .filter(|c| c.age(now) < self.settings.stale_ttl)
            .cloned();
        // Backing off after a failure: users with a usable answer keep it and
        // cost IAM nothing; the others have nothing to lose by asking.
        if let (Some(c), Some(why)) = (&usable, self.backing_off()) {
            return Ok(Answer {
                record: c.record.clone(),
                freshness: Freshness::Stale {
                    age: c.age(now),
                    why: format!("backing off after an IAM failure ({why})"),
                },
            });
        }
        let previous = slot.cached.as_ref().map(|c| c.record.clone());
        let fetched = {
            let _permit = self.fetches.acquire().await.map_err(|_| poisoned())?;
            match tokio::time::timeout(self.settings.timeout, self.fetch(name, previous.as_deref()))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(ApiError {
                    kind: ApiErrorKind::Unavailable,
                    message: format!(
                        "no answer within {}",
                        humantime::format_duration(self.settings.timeout)
                    ),
                }),
            }
        };
        match fetched {
            Ok(record) => {
                self.succeeded();
                let record = Arc::new(record);
                let cached = Cached {
                    at: SystemTime::now(),
                    record: record.clone(),
                };
                self.save_to_disk(&key, &cached).await;
                slot.cached = Some(cached);
                Ok(Answer {
                    record,
                    freshness: Freshness::Fresh,
                })
            }
            Err(e) => {
                self.failed(&e);
                let why = e.to_string();
                match usable {
                    Some(c) => {
                        tracing::warn!(user = name, error = %why, "IAM lookup failed; using the last good answer");
                        Ok(Answer {
                            record: c.record.clone(),
                            freshness: Freshness::Stale {
                                age: c.age(SystemTime::now()),
                                why,
                            },
                        })
                    }
                    None => {
                        tracing::warn!(user = name, error = %why, "IAM lookup failed and no usable cached answer; refusing");
                        let detail = match &slot.cached {
                            Some(c) => format!(
                                "{why}; the last good answer is {} old, past stale_ttl ({})",
                                humantime::format_duration(round_secs(c.age(SystemTime::now()))),
                                humantime::format_duration(self.settings.stale_ttl)
                            ),
                            None => format!("{why}; no earlier answer to fall back on"),
                        };
                        Err(Outage(detail))
                    }
                }
            }
        }
    }

    /// Asks IAM about one user. `previous` saves calls: the ARN and the key
    /// bodies of known key ids do not change.
    async fn fetch(&self, name: &str, previous: Option<&Record>) -> Result<Record, ApiError> {
        let prev = match previous {
            Some(Record::User(u)) => Some(u),
            _ => None,
        };
        let (canonical, arn) = match prev {
            Some(u) => (u.name.clone(), u.arn.clone()),
            None => match self.api.get_user(name).await? {
                Some(found) => found,
                None => return Ok(Record::NoSuchUser),
            },
        };
        let groups = if self.settings.needs_groups() {
            match self.api.list_groups(&canonical).await? {
                Some(g) => Some(g),
                None => return Ok(Record::NoSuchUser),
            }
        } else {
            None
        };
        let member = self.settings.groups.is_empty()
            || groups.as_ref().is_some_and(|g| {
                g.iter().any(|x| {
                    self.settings
                        .groups
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(x))
                })
            });
        let keys = if member {
            let Some(listed) = self.api.list_keys(&canonical).await? else {
                return Ok(Record::NoSuchUser);
            };
            let mut keys = Vec::with_capacity(listed.len());
            for (id, active) in listed {
                let known = prev
                    .and_then(|u| u.keys.as_ref())
                    .and_then(|ks| ks.iter().find(|k| k.id == id))
                    .map(|k| k.body.clone());
                let body = match known {
                    Some(b) => b,
                    None => match self.api.get_key(&canonical, &id).await? {
                        Some(b) => b,
                        // Deleted between the list and the get: it is gone.
                        None => continue,
                    },
                };
                keys.push(IamKey { id, active, body });
            }
            Some(keys)
        } else {
            None
        };
        Ok(Record::User(IamUser {
            name: canonical,
            arn,
            groups,
            keys,
        }))
    }

    fn backing_off(&self) -> Option<String> {
        let b = self.backoff.lock().ok()?;
        match b.until {
            Some(t) if Instant::now() < t => Some(b.last_error.clone()),
            _ => None,
        }
    }

    fn succeeded(&self) {
        if let Ok(mut b) = self.backoff.lock() {
            if b.failures > 0 {
                tracing::info!("IAM answers again");
            }
            *b = Backoff::default();
        }
    }

    fn failed(&self, e: &ApiError) {
        self.counts.failed(&e.kind);
        if let Ok(mut b) = self.backoff.lock() {
            b.failures = b.failures.saturating_add(1);
            let exp = BACKOFF_START
                .saturating_mul(1u32 << (b.failures - 1).min(16))
                .min(BACKOFF_MAX);
            // Full jitter between half and all of it, so that bastions behind
            // one load balancer do not retry in step.
            let jitter = rand::random::<f64>() * 0.5 + 0.5;
            b.until = Some(Instant::now() + exp.mul_f64(jitter));
            b.last_error = e.to_string();
        }
    }

    /// Drops answers nobody can use any more (older than every TTL), at most once a minute.
    fn sweep(&self) {
        let Ok(mut last) = self.last_sweep.lock() else {
            return;
        };
        if last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        let keep_for = self.settings.stale_ttl.max(self.settings.negative_ttl);
        let now = SystemTime::now();
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|_, slot| match slot.try_lock() {
                // In use: keep.
                Err(_) => true,
                Ok(s) => s.cached.as_ref().is_some_and(|c| c.age(now) < keep_for),
            });
        }
    }

    // --- the optional disk cache ------------------------------------------

    fn disk_path(&self, key: &str) -> Option<PathBuf> {
        self.settings
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("iam-user-{key}.json")))
    }

    async fn load_from_disk(&self, key: &str) -> Option<Cached> {
        let path = self.disk_path(key)?;
        match tokio::task::spawn_blocking(move || read_cache_file(&path)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "ignoring the IAM disk cache entry");
                None
            }
            Err(_) => None,
        }
    }

    async fn save_to_disk(&self, key: &str, cached: &Cached) {
        let Some(path) = self.disk_path(key) else {
            return;
        };
        let stored = StoredAnswer {
            version: 1,
            fetched_unix: cached
                .at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            record: (*cached.record).clone(),
        };
        match tokio::task::spawn_blocking(move || write_cache_file(&path, &stored)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the IAM disk cache"),
            Err(_) => {}
        }
    }
}

fn poisoned() -> Outage {
    Outage("internal error: the IAM cache is unusable".into())
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[derive(Serialize, Deserialize)]
struct StoredAnswer {
    version: u32,
    fetched_unix: u64,
    record: Record,
}

/// Reads one disk cache entry; refuses files others could have written, since
/// whoever writes them decides who logs in.
fn read_cache_file(path: &Path) -> Result<Option<Cached>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: not a regular file owned by uid {euid} and writable only by it",
            path.display()
        ));
    }
    if let Some(dir) = path.parent() {
        let d = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if (d.uid() != euid && d.uid() != 0) || d.mode() & 0o022 != 0 {
            return Err(format!(
                "{}: the cache directory must belong to uid {euid} (or root) and be writable only by its owner",
                dir.display()
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stored: StoredAnswer =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if stored.version != 1 {
        return Err(format!(
            "{}: unknown cache format version {}",
            path.display(),
            stored.version
        ));
    }
    Ok(Some(Cached {
        at: UNIX_EPOCH + Duration::from_secs(stored.fetched_unix),
        record: Arc::new(stored.record),
    }))
}

fn write_cache_file(path: &Path, stored: &StoredAnswer) -> Result<(), String> {
    let text = serde_json::to_vec(stored).map_err(|e| e.to_string())?;
    // The tmp name carries the pid: several sshd-run `authorized-keys` share the directory.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    crate::fsutil::replace_file(path, &tmp, &text).map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The AWS SDK
// ---------------------------------------------------------------------------

/// The real IAM, through the AWS SDK: region, credentials and endpoint from
/// the standard chain (`AWS_REGION`, `AWS_ACCESS_KEY_ID`…, profiles, web
/// identity, container and instance credentials, `AWS_ENDPOINT_URL[_IAM]`),
/// optionally through an assumed role.
pub struct SdkIam {
    assume_role_arn: Option<String>,
    timeout: Duration,
    client: OnceCell<aws_sdk_iam::Client>,
}

impl SdkIam {
    pub fn new(assume_role_arn: Option<String>, timeout: Duration) -> SdkIam {
        SdkIam {
            assume_role_arn,
            timeout,
            client: OnceCell::new(),
        }
    }

    /// The client, built on first use (inside the runtime; building it calls nothing).
    async fn client(&self) -> &aws_sdk_iam::Client {
        self.client
            .get_or_init(|| async {
                use aws_config::retry::RetryConfig;
                use aws_config::timeout::TimeoutConfig;
                // IAM is a global service: any region of the partition signs
                // for it. us-east-1 unless the environment names another.
                let region = aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else("us-east-1");
                // Retries with exponential back-off and jitter inside one
                // lookup; the lookup as a whole is bounded by `timeout`.
                let retry = RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(2));
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(self.timeout.min(Duration::from_secs(5)))
                    .operation_timeout(self.timeout)
                    .build();
                let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(region)
                    .retry_config(retry)
                    .timeout_config(timeouts)
                    .load()
                    .await;
                let mut conf = aws_sdk_iam::config::Builder::from(&base);
                if let Some(arn) = &self.assume_role_arn {
                    // The SDK caches the role's session and renews it shortly
                    // before it expires.
                    let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                        .session_name("bastion-key-reader")
                        .configure(&base)
                        .build()
                        .await;
                    conf = conf.credentials_provider(provider);
                }
                aws_sdk_iam::Client::from_conf(conf.build())
            })
            .await
    }
}

/// Sorts an SDK error into throttling, outage, "no such entity" or other.
fn classify<E>(e: aws_sdk_iam::error::SdkError<E>) -> ApiResult<std::convert::Infallible>
where
    E: aws_sdk_iam::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_iam::error::{DisplayErrorContext, SdkError};
    let kind = match &e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            let status = s.raw().status().as_u16();
            if code == "NoSuchEntity" {
                return Ok(None);
            }
            if code.contains("Throttl")
                || code == "RequestLimitExceeded"
                || code == "TooManyRequestsException"
                || status == 429
            {
                ApiErrorKind::Throttled
            } else if status >= 500 || code == "ServiceFailure" {
                ApiErrorKind::Unavailable
            } else {
                ApiErrorKind::Other
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ApiErrorKind::Unavailable
        }
        _ => ApiErrorKind::Other,
    };
    let message = match &e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or("no message")
        ),
        other => DisplayErrorContext(other).to_string(),
    };
    Err(ApiError { kind, message })
}

fn fail<T, E>(e: aws_sdk_iam::error::SdkError<E>) -> ApiResult<T>
where
    E: aws_sdk_iam::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match classify(e) {
        Ok(None) => Ok(None),
        Err(e) => Err(e),
        Ok(Some(never)) => match never {},
    }
}

impl IamApi for SdkIam {
    async fn get_user(&self, name: &str) -> ApiResult<(String, String)> {
        let out = match self.client().await.get_user().user_name(name).send().await {
            Ok(o) => o,
            Err(e) => return fail(e),
        };
        match out.user() {
            Some(u) => Ok(Some((u.user_name().to_string(), u.arn().to_string()))),
            None => Err(ApiError {
                kind: ApiErrorKind::Other,
                message: "GetUser answered without a user".into(),
            }),
        }
    }

    async fn list_keys(&self, name: &str) -> ApiResult<Vec<(String, bool)>> {
        let mut pages = self
            .client()
            .await
            .list_ssh_public_keys()
            .user_name(name)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            for k in page.ssh_public_keys() {
                out.push((
                    k.ssh_public_key_id().to_string(),
                    *k.status() == aws_sdk_iam::types::StatusType::Active,
                ));
            }
        }
        Ok(Some(out))
    }

    async fn get_key(&self, name: &str, id: &str) -> ApiResult<String> {
        let out = match self
            .client()
            .await
            .get_ssh_public_key()
            .user_name(name)
            .ssh_public_key_id(id)
            .encoding(aws_sdk_iam::types::EncodingType::Ssh)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => return fail(e),
        };
        Ok(out
            .ssh_public_key()
            .map(|k| k.ssh_public_key_body().to_string()))
    }

    async fn list_groups(&self, name: &str) -> ApiResult<Vec<String>> {
        let mut pages = self
            .client()
            .await
            .list_groups_for_user()
            .user_name(name)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            out.extend(page.groups().iter().map(|g| g.group_name().to_string()));
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn widdix_spellings_both_ways() {
        assert_eq!(
            iam_user_for_login("first.last.at.example.com"),
            "first.last@example.com"
        );
        assert_eq!(iam_user_for_login("a.plus.b.equal.c.comma.d"), "a+b=c,d");
        assert_eq!(
            iam_user_for_login("x.at.y.at.z"),
            "x@y@z",
            "every occurrence"
        );
        assert_eq!(iam_user_for_login("alice"), "alice");
        assert_eq!(widdix_login("a+b=c,d@e"), "a.plus.b.equal.c.comma.d.at.e");
        for name in ["alice", "a+b=c,d@e.f", "first.last@example.com"] {
            assert_eq!(iam_user_for_login(&widdix_login(name)), name);
        }
    }

    #[test]
    fn the_policy_document_grants_exactly_what_is_called() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/iam/key-reader-policy.json")).unwrap();
        let mut granted: Vec<String> = doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|st| st["Action"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        granted.sort();
        let mut called: Vec<String> = IAM_ACTIONS.iter().map(|s| s.to_string()).collect();
        called.sort();
        assert_eq!(granted, called);
    }

    #[test]
    fn names_and_arns() {
        assert!(validate_user_name("alice@example.com").is_ok());
        assert!(validate_user_name("a_b+c=d,e.f-g").is_ok());
        assert!(validate_user_name(&"a".repeat(64)).is_ok());
        assert!(validate_user_name(&"a".repeat(65))
            .unwrap_err()
            .contains("1 to 64"));
        assert!(validate_user_name("a b").unwrap_err().contains("' '"));
        assert!(validate_user_name("").is_err());
        assert!(validate_group_name("bastion-users").is_ok());
        assert!(validate_group_name("ops/admins").is_err());
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/bastion-key-reader").is_ok());
        assert!(validate_role_arn("arn:aws-cn:iam::123456789012:role/path/r").is_ok());
        for bad in [
            "arn:aws:iam::12345678901:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:sts::123456789012:role/x",
            "arn:aws:iam::123456789012:role/",
            "role/x",
        ] {
            assert!(validate_role_arn(bad).is_err(), "{bad}");
        }
    }

    /// (keys as (id, active, body), groups) of one fake user.
    type FakeUser = (Vec<(String, bool, String)>, Vec<String>);

    /// A scripted IAM: users, keys and groups in memory, a call counter, and
    /// a switch that makes every call fail.
    #[derive(Default)]
    struct Fake {
        users: Mutex<HashMap<String, FakeUser>>,
        calls: AtomicUsize,
        failing: Mutex<Option<ApiErrorKind>>,
        delay: Duration,
    }

    impl Fake {
        fn add(&self, user: &str, keys: &[(&str, bool, &str)], groups: &[&str]) {
            self.users.lock().unwrap().insert(
                user.into(),
                (
                    keys.iter()
                        .map(|(i, a, b)| (i.to_string(), *a, b.to_string()))
                        .collect(),
                    groups.iter().map(|g| g.to_string()).collect(),
                ),
            );
        }
        async fn call(&self) -> Result<(), ApiError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            match self.failing.lock().unwrap().clone() {
                Some(kind) => Err(ApiError {
                    kind,
                    message: "Throttling: Rate exceeded".into(),
                }),
                None => Ok(()),
            }
        }
        fn user(&self, name: &str) -> Option<FakeUser> {
            self.users
                .lock()
                .unwrap()
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }
    }

    impl IamApi for Arc<Fake> {
        async fn get_user(&self, name: &str) -> ApiResult<(String, String)> {
            self.call().await?;
            let users = self.users.lock().unwrap();
            Ok(users
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .map(|k| (k.clone(), format!("arn:aws:iam::123456789012:user/{k}"))))
        }
        async fn list_keys(&self, name: &str) -> ApiResult<Vec<(String, bool)>> {
            self.call().await?;
            Ok(self
                .user(name)
                .map(|(keys, _)| keys.into_iter().map(|(i, a, _)| (i, a)).collect()))
        }
        async fn get_key(&self, name: &str, id: &str) -> ApiResult<String> {
            self.call().await?;
            Ok(self
                .user(name)
                .and_then(|(keys, _)| keys.into_iter().find(|k| k.0 == id).map(|k| k.2)))
        }
        async fn list_groups(&self, name: &str) -> ApiResult<Vec<String>> {
            self.call().await?;
            Ok(self.user(name).map(|(_, g)| g))
        }
    }

    fn settings(groups: &[&str]) -> Settings {
        Settings {
            groups: groups.iter().map(|g| g.to_string()).collect(),
            want_groups: false,
            cache_ttl: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            cache_dir: None,
        }
    }

    fn source(fake: &Arc<Fake>, s: Settings) -> Arc<IamSource<Arc<Fake>>> {
        Arc::new(IamSource::new(fake.clone(), s))
    }

    /// Pretends the cached answer for `user` was fetched `ago`.
    async fn age_entry(src: &IamSource<Arc<Fake>>, user: &str, ago: Duration) {
        let slot = src.slots.lock().unwrap().get(user).unwrap().clone();
        let mut slot = slot.lock().await;
        let c = slot.cached.as_mut().unwrap();
        c.at = SystemTime::now() - ago;
    }

    #[tokio::test]
    async fn caches_and_reuses_key_material() {
        let fake = Arc::new(Fake::default());
        fake.add(
            "alice",
            &[
                ("K1", true, "ssh-rsa AAAA1"),
                ("K2", false, "ssh-rsa AAAA2"),
            ],
            &[],
        );
        let src = source(&fake, settings(&[]));
        let a = src.lookup("alice").await.unwrap();
        assert_eq!(a.freshness, Freshness::Fresh);
        // GetUser + ListSSHPublicKeys + two GetSSHPublicKey.
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
        for _ in 0..10 {
            let again = src.lookup("ALICE").await.unwrap();
            assert!(matches!(again.freshness, Freshness::Cached { .. }));
        }
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            4,
            "cached answers cost nothing"
        );
        // Past cache_ttl: one ListSSHPublicKeys, no GetUser, no GetSSHPublicKey for known ids.
        age_entry(&src, "alice", Duration::from_secs(61)).await;
        let b = src.lookup("alice").await.unwrap();
        assert_eq!(b.freshness, Freshness::Fresh);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 5);
        match &*b.record {
            Record::User(u) => {
                assert_eq!(u.arn, "arn:aws:iam::123456789012:user/alice");
                let keys = u.keys.as_ref().unwrap();
                assert_eq!(keys.len(), 2);
                assert!(keys[0].active && !keys[1].active);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_first_lookups_coalesce() {
        let fake = Arc::new(Fake {
            delay: Duration::from_millis(50),
            ..Default::default()
        });
        fake.add("bob", &[("K1", true, "ssh-rsa AAAA1")], &[]);
        let src = source(&fake, settings(&[]));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let src = src.clone();
                tokio::spawn(async move { src.lookup("bob").await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            3,
            "one GetUser, one list, one get"
        );
    }

    #[tokio::test]
    async fn unknown_users_are_remembered_for_negative_ttl() {
        let fake = Arc::new(Fake::default());
        let src = source(&fake, settings(&[]));
        assert_eq!(
            *src.lookup("nobody").await.unwrap().record,
            Record::NoSuchUser
        );
        assert_eq!(
            *src.lookup("nobody").await.unwrap().record,
            Record::NoSuchUser
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        age_entry(&src, "nobody", Duration::from_secs(11)).await;
        fake.add("nobody", &[], &[]);
        assert!(matches!(
            *src.lookup("nobody").await.unwrap().record,
            Record::User(_)
        ));
    }

    #[tokio::test]
    async fn non_members_keys_are_not_listed() {
        let fake = Arc::new(Fake::default());
        fake.add("carol", &[("K1", true, "ssh-rsa AAAA1")], &["other"]);
        let src = source(&fake, settings(&["Bastion-Users"]));
        let a = src.lookup("carol").await.unwrap();
        match &*a.record {
            Record::User(u) => {
                assert_eq!(u.groups.as_deref(), Some(&["other".to_string()][..]));
                assert_eq!(u.keys, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            2,
            "GetUser + ListGroupsForUser only"
        );
        fake.add("dave", &[("K1", true, "ssh-rsa AAAA1")], &["bastion-users"]);
        match &*src.lookup("dave").await.unwrap().record {
            Record::User(u) => assert_eq!(
                u.keys.as_ref().map(Vec::len),
                Some(1),
                "group names ignore case"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn outages_serve_stale_then_fail_closed() {
        let fake = Arc::new(Fake::default());
        fake.add("erin", &[("K1", true, "ssh-rsa AAAA1")], &[]);
        let src = source(&fake, settings(&[]));
        src.lookup("erin").await.unwrap();
        *fake.failing.lock().unwrap() = Some(ApiErrorKind::Throttled);
        age_entry(&src, "erin", Duration::from_secs(120)).await;
        let calls = fake.calls.load(Ordering::SeqCst);
        let a = src.lookup("erin").await.unwrap();
        match &a.freshness {
            Freshness::Stale { why, .. } => assert!(why.contains("throttling"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), calls + 1);
        // Backing off: the next lookups do not call IAM.
        for _ in 0..5 {
            let a = src.lookup("erin").await.unwrap();
            match &a.freshness {
                Freshness::Stale { why, .. } => assert!(why.contains("backing off"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            calls + 1,
            "no calls while backing off"
        );
        // A user with nothing cached still asks, and fails closed.
        let e = src.lookup("frank").await.unwrap_err();
        assert!(e.0.contains("no earlier answer"), "{}", e.0);
        // Past stale_ttl: fail closed, with the age in the reason.
        age_entry(&src, "erin", Duration::from_secs(3601)).await;
        let e = src.lookup("erin").await.unwrap_err();
        assert!(e.0.contains("past stale_ttl"), "{}", e.0);
        // IAM is back: fresh again, and the back-off is over.
        *fake.failing.lock().unwrap() = None;
        src.backoff.lock().unwrap().until = None;
        assert_eq!(
            src.lookup("erin").await.unwrap().freshness,
            Freshness::Fresh
        );
    }

    #[tokio::test]
    async fn an_empty_answer_is_not_an_outage() {
        let fake = Arc::new(Fake::default());
        fake.add("gina", &[("K1", true, "ssh-rsa AAAA1")], &[]);
        let src = source(&fake, settings(&[]));
        src.lookup("gina").await.unwrap();
        fake.add("gina", &[], &[]);
        age_entry(&src, "gina", Duration::from_secs(61)).await;
        match &*src.lookup("gina").await.unwrap().record {
            Record::User(u) => assert_eq!(u.keys.as_ref().map(Vec::len), Some(0)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn disk_cache_survives_a_restart_and_rejects_foreign_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let fake = Arc::new(Fake::default());
        fake.add("hank", &[("K1", true, "ssh-rsa AAAA1")], &[]);
        let mut s = settings(&[]);
        s.cache_dir = Some(dir.path().into());
        source(&fake, s.clone()).lookup("hank").await.unwrap();
        let file = dir.path().join("iam-user-hank.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A new process while IAM is down: the disk answer is used, without a call.
        *fake.failing.lock().unwrap() = Some(ApiErrorKind::Unavailable);
        let calls = fake.calls.load(Ordering::SeqCst);
        let a = source(&fake, s.clone()).lookup("hank").await.unwrap();
        assert!(matches!(a.freshness, Freshness::Cached { .. }));
        assert_eq!(fake.calls.load(Ordering::SeqCst), calls);
        // A cache file others may write is ignored (fail closed).
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(source(&fake, s).lookup("hank").await.is_err());
    }
}
