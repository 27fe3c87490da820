//! The IAM key source: per-user answers cached (memory and disk), coalesced, refreshed in
//! the background, and kept through outages and throttling within their limits.

use super::*;

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
pub(super) struct Cached {
    pub(super) at: SystemTime,
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
pub(super) struct Slot {
    pub(super) cached: Option<Cached>,
    /// The disk cache was consulted for this user.
    loaded: bool,
}

#[derive(Default)]
pub(super) struct Backoff {
    failures: u32,
    pub(super) until: Option<Instant>,
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
    pub(super) slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    fetches: Semaphore,
    pub(super) backoff: Mutex<Backoff>,
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

pub(super) fn poisoned() -> Outage {
    Outage("internal error: the IAM cache is unusable".into())
}

pub(super) fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredAnswer {
    version: u32,
    fetched_unix: u64,
    record: Record,
}

/// Reads one disk cache entry; refuses files others could have written, since
/// whoever writes them decides who logs in.
pub(super) fn read_cache_file(path: &Path) -> Result<Option<Cached>, String> {
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

pub(super) fn write_cache_file(path: &Path, stored: &StoredAnswer) -> Result<(), String> {
    let text = serde_json::to_vec(stored).map_err(|e| e.to_string())?;
    // The tmp name carries the pid: several sshd-run `authorized-keys` share the directory.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    crate::fsutil::replace_file(path, &tmp, &text).map_err(|e| format!("{}: {e}", path.display()))
}
