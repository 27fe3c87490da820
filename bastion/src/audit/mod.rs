//! The bastion's audit trail: tamper-evident JSON lines, one event per line.
//!
//! Events are written by the privileged monitor process through an [`AuditLog`]
//! handle. Every event goes to `<dir>/<trail>.jsonl`, where `trail` is the login
//! name of the user the event belongs to (see [`trail_name`]), so one user's file
//! only ever holds that user's events. Each line is a JSON object with the keys
//! (sorted, as `serde_json::Map` sorts them):
//!
//! * `ts`: RFC 3339 UTC time with milliseconds,
//! * `event`: the event name,
//! * `sid`: the session id,
//! * `seq`: 0, 1, 2, … for each (session id, trail),
//! * `prev`: the lowercase hex SHA-256 of the previous line of the same
//!   (session id, trail), exactly the bytes written without the trailing
//!   newline; 64 zeros for `seq` 0,
//!
//! followed by the caller's fields. The hash chain makes an edited, removed,
//! inserted or reordered event detectable by [`verify`], except for the last
//! event(s) of a session (see [`verify`]).
//!
//! All file I/O happens on one dedicated thread named `audit-writer`; the
//! [`AuditLog`] handle is cheap to clone and can be used from async code
//! ([`AuditLog::write`]) and from plain threads ([`AuditLog::write_blocking`]).
//! Writes fail closed: a failed write returns an error, turns
//! [`AuditLog::healthy`] false and does not advance the hash chain.

pub mod read;
pub mod sinks;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `prev` value of the first event (`seq` 0) of a session: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The trail used for events without a (valid) login name.
pub const UNKNOWN_TRAIL: &str = "_unknown";

/// Extension of trail files (`<trail>.jsonl`).
const TRAIL_EXTENSION: &str = "jsonl";

/// Name of the probe file [`AuditLog::open`] creates and removes.
const PROBE_NAME: &str = ".bastion-probe";

/// Longest trail name that still fits a file name (NAME_MAX 255 minus ".jsonl").
const MAX_TRAIL_LEN: usize = 255 - 1 - TRAIL_EXTENSION.len();

/// Most trail files the writer thread keeps open at once.
const MAX_OPEN_FILES: usize = 256;

/// Mode of created trail files (before the umask).
const FILE_MODE: u32 = 0o640;

/// Mode of a created audit directory (before the umask).
const DIR_MODE: u32 = 0o750;

/// Keys the writer sets on every event; caller fields with these names are dropped.
const RESERVED_KEYS: [&str; 5] = ["ts", "event", "sid", "seq", "prev"];

/// Errors of [`AuditLog`].
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file-system operation on the audit directory or a trail file failed.
    #[error("audit trail: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "open", "append to", "sync".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The event could not be turned into JSON.
    #[error("audit trail: cannot serialize event {event:?} of session {sid:?}: {source}")]
    Serialize {
        /// Event name.
        event: &'static str,
        /// Session id.
        sid: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The `audit-writer` thread could not be started.
    #[error("audit trail: cannot start the audit-writer thread for {}: {source}", dir.display())]
    Spawn {
        /// The audit directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `audit-writer` thread is gone (it panicked); nothing can be written any more.
    #[error("audit trail: the audit-writer thread for {} is gone; event {event:?} of session {sid:?} was not written", dir.display())]
    WriterGone {
        /// The audit directory.
        dir: PathBuf,
        /// Event name.
        event: &'static str,
        /// Session id.
        sid: String,
    },
}

/// One audit event, built by the caller and handed to [`AuditLog::write`].
#[derive(Debug, Clone)]
pub struct Event {
    /// Event name (`event` key), e.g. "auth", "session_end".
    pub name: &'static str,
    /// Session id (`sid` key).
    pub sid: String,
    /// Trail (file) the event goes to, normally from [`trail_name`]. A trail that
    /// is not a valid trail name is written to [`UNKNOWN_TRAIL`] instead, with the
    /// rejected value in an `invalid_trail` field.
    pub trail: String,
    /// The caller's fields. Fields named `ts`, `event`, `sid`, `seq` or `prev`
    /// are dropped (with a warning): those keys belong to the writer.
    pub fields: Map<String, Value>,
}

impl Event {
    /// A new event with no fields.
    pub fn new(name: &'static str, sid: &str, trail: &str) -> Event {
        Event {
            name,
            sid: sid.to_owned(),
            trail: trail.to_owned(),
            fields: Map::new(),
        }
    }

    /// Sets field `key` to `value` (replacing an earlier value of that key).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    /// Sets field `key` to `value` if it is `Some`; leaves the event unchanged if `None`.
    pub fn with_opt<V: Into<Value>>(self, key: &str, value: Option<V>) -> Event {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }
}

/// The trail (file name without `.jsonl`) for a login name: the login itself, or
/// [`UNKNOWN_TRAIL`] for `None` and for a login that is not a safe file name.
///
/// A safe login is 1 to 249 bytes of `[A-Za-z0-9._@+=,-]` not starting with `.` or
/// `-`. Logins are validated elsewhere; this check is a second line of defence
/// against path traversal. (A login literally named `_unknown` shares the trail
/// of unidentified connections.)
pub fn trail_name(login: Option<&str>) -> String {
    match login {
        Some(l) if is_valid_trail(l) => l.to_owned(),
        _ => UNKNOWN_TRAIL.to_owned(),
    }
}

fn is_valid_trail(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TRAIL_LEN
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+=,-".contains(&b))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `now` as RFC 3339 UTC with milliseconds, clamped to what humantime can format
/// (1970 to 9999) so a wild clock cannot make formatting fail.
fn timestamp(now: SystemTime) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let clamped = match now.duration_since(UNIX_EPOCH) {
        Err(_) => UNIX_EPOCH,
        Ok(d) if d.as_secs() > LAST_SECOND_OF_9999 => {
            UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999)
        }
        Ok(_) => now,
    };
    let mut out = String::with_capacity(24);
    if write!(out, "{}", humantime::format_rfc3339_millis(clamped)).is_err() {
        out.clear();
        out.push_str("1970-01-01T00:00:00.000Z");
    }
    out
}

// ---------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------

/// Cheap, cloneable (`Clone + Send + Sync`) handle to the audit trail's single
/// `audit-writer` thread.
///
/// The writer thread owns all trail files (at most 256 open at once, least
/// recently used closed first) and the hash-chain state, a map
/// (session id, trail) → (next seq, hash of the previous line). That state lives
/// in memory only: call [`AuditLog::end_session`] when a session is over, or it
/// grows for the life of the process. The thread ends when the last handle is
/// dropped.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tx: mpsc::Sender<Request>,
    healthy: Arc<AtomicBool>,
    shipping: crate::audit::sinks::Shipping,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

enum Request {
    Write {
        event: Event,
        durable: bool,
        reply: Reply,
    },
    EndSession {
        sid: String,
    },
}

/// Where the writer sends a write's result: a tokio oneshot for async callers,
/// a std channel for blocking callers (tokio's `blocking_recv` panics when called
/// inside a runtime, a std `recv` merely blocks).
enum Reply {
    Async(tokio::sync::oneshot::Sender<Result<(), AuditError>>),
    Blocking(mpsc::SyncSender<Result<(), AuditError>>),
}

impl Reply {
    fn send(self, result: Result<(), AuditError>) {
        // The caller may have given up waiting (a dropped future): the event was
        // still handled, and there is nobody left to tell.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

impl AuditLog {
    /// Creates the directory if needed (mode 0750, parents too) and proves it is
    /// writable by creating, appending to, syncing and removing a probe file
    /// `.bastion-probe`; returns an error otherwise (the monitor refuses to
    /// start). Then starts the `audit-writer` thread. With `stdout`, every event
    /// line is also written to standard output once it is in its file.
    ///
    /// A relative `dir` is made absolute against the current directory now, so a
    /// later change of directory does not move the trail.
    pub fn open(dir: &Path, stdout: bool) -> Result<AuditLog, AuditError> {
        let dir = std::path::absolute(dir).map_err(|source| AuditError::Io {
            op: "resolve the audit directory",
            path: dir.to_path_buf(),
            source,
        })?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(|source| AuditError::Io {
                op: "create the audit directory",
                path: dir.clone(),
                source,
            })?;
        match fs::metadata(&dir) {
            Ok(meta) if meta.permissions().mode() & 0o007 != 0 => {
                tracing::warn!(dir = %dir.display(), mode = format_args!("{:o}", meta.permissions().mode() & 0o7777),
                    "the audit directory is accessible to everyone");
            }
            Ok(_) => {}
            Err(source) => {
                return Err(AuditError::Io {
                    op: "stat the audit directory",
                    path: dir,
                    source,
                })
            }
        }
        probe(&dir)?;

        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer::new(dir.clone(), stdout, Arc::clone(&healthy));
        std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|source| AuditError::Spawn {
                dir: dir.clone(),
                source,
            })?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                dir,
                tx,
                healthy,
                shipping: Default::default(),
            }),
        })
    }

    /// Appends `event` to its trail and returns once it is written (appended with
    /// a single `write`; with `durable`, also `fdatasync`ed, and for a new file
    /// its directory entry synced too). On success and when enabled, the line is
    /// then copied to standard output.
    ///
    /// On failure the error carries the OS error and path, [`AuditLog::healthy`]
    /// turns false, the hash chain does not advance (the next event of the session
    /// re-uses the seq/prev) and a partly written line is cut off again.
    ///
    /// If this future is dropped after the event was queued, the event is still
    /// written; only the result is lost.
    pub async fn write(&self, event: Event, durable: bool) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (name, sid) = (event.name, event.sid.clone());
        if self
            .inner
            .tx
            .send(Request::Write {
                event,
                durable,
                reply: Reply::Async(tx),
            })
            .is_err()
        {
            return Err(self.writer_gone(name, sid));
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(self.writer_gone(name, sid)),
        }
    }

    /// Blocking variant of [`AuditLog::write`] for non-async callers. It does not
    /// panic inside a tokio runtime, but blocks the calling thread until the event
    /// is written, so prefer [`AuditLog::write`] there.
    pub fn write_blocking(&self, event: Event, durable: bool) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (name, sid) = (event.name, event.sid.clone());
        if self
            .inner
            .tx
            .send(Request::Write {
                event,
                durable,
                reply: Reply::Blocking(tx),
            })
            .is_err()
        {
            return Err(self.writer_gone(name, sid));
        }
        match rx.recv() {
            Ok(result) => result,
            Err(_) => Err(self.writer_gone(name, sid)),
        }
    }

    /// Forgets the hash-chain state of session `sid` (in every trail): a later
    /// event with the same session id starts a new chain at seq 0. Queued behind
    /// earlier writes, so it never overtakes them.
    pub fn end_session(&self, sid: &str) {
        if self
            .inner
            .tx
            .send(Request::EndSession {
                sid: sid.to_owned(),
            })
            .is_err()
        {
            self.inner.healthy.store(false, Ordering::Release);
        }
    }

    /// False after a write failed (or the writer thread is gone), true again after
    /// the next successful write.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    /// After a failure: can the directory take a write again? Runs the same
    /// probe as [`AuditLog::open`] (create, append, sync, remove a file). It does
    /// not change [`AuditLog::healthy`]; the next successful event write does.
    pub fn recheck(&self) -> Result<(), AuditError> {
        probe(&self.inner.dir)
    }

    /// Starts the remote sinks configured in `cfg`, fed from this log's directory
    /// (see [`crate::audit::sinks`]). Call once, before the handle is cloned.
    pub fn start_shipping(&mut self, cfg: &crate::config::Audit) -> Result<(), String> {
        let shipping = crate::audit::sinks::Shipping::start(cfg, &self.inner.dir)?;
        let inner = Arc::get_mut(&mut self.inner)
            .ok_or("start_shipping: the audit log is already shared")?;
        inner.shipping = shipping;
        Ok(())
    }

    /// The remote sinks and their state.
    pub fn shipping(&self) -> &crate::audit::sinks::Shipping {
        &self.inner.shipping
    }

    /// The (absolute) audit directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn writer_gone(&self, event: &'static str, sid: String) -> AuditError {
        self.inner.healthy.store(false, Ordering::Release);
        AuditError::WriterGone {
            dir: self.inner.dir.clone(),
            event,
            sid,
        }
    }
}

/// Creates, appends to, syncs and removes `<dir>/.bastion-probe`.
fn probe(dir: &Path) -> Result<(), AuditError> {
    let path = dir.join(PROBE_NAME);
    let io_err = |op: &'static str, source: io::Error| AuditError::Io {
        op,
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| io_err("create the probe file", e))?;
    file.write_all(b"probe\n")
        .map_err(|e| io_err("append to the probe file", e))?;
    file.sync_data()
        .map_err(|e| io_err("sync the probe file", e))?;
    drop(file);
    fs::remove_file(&path).map_err(|e| io_err("remove the probe file", e))
}

// ---------------------------------------------------------------------------
// The writer thread
// ---------------------------------------------------------------------------

/// Chain state of one (session id, trail).
struct Chain {
    next_seq: u64,
    prev: String,
}

/// An open trail file.
struct OpenTrail {
    file: File,
    /// Last use, for closing the least recently used file.
    last_used: u64,
    /// The file did not end with a newline when opened (a line cut short by a
    /// crash): the next write starts with a newline so its own line stays intact.
    needs_newline: bool,
    /// We created the file and its directory entry has not been synced yet.
    dir_sync_pending: bool,
}

/// A partly written line that could not be cut off right away.
struct PendingTruncate {
    dev: u64,
    ino: u64,
    len: u64,
}

/// Sets `healthy` false when the writer thread ends, normally or by a panic.
struct HealthGuard(Arc<AtomicBool>);

impl Drop for HealthGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct Writer {
    dir: PathBuf,
    stdout: bool,
    stdout_failing: bool,
    healthy: Arc<AtomicBool>,
    /// sid → trail → chain.
    chains: HashMap<String, HashMap<String, Chain>>,
    files: HashMap<String, OpenTrail>,
    pending_truncate: HashMap<String, PendingTruncate>,
    clock: u64,
}

impl Writer {
    fn new(dir: PathBuf, stdout: bool, healthy: Arc<AtomicBool>) -> Writer {
        Writer {
            dir,
            stdout,
            stdout_failing: false,
            healthy,
            chains: HashMap::new(),
            files: HashMap::new(),
            pending_truncate: HashMap::new(),
            clock: 0,
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let _guard = HealthGuard(Arc::clone(&self.healthy));
        while let Ok(request) = rx.recv() {
            match request {
                Request::Write {
                    event,
                    durable,
                    reply,
                } => {
                    let result = self.write(event, durable);
                    self.healthy.store(result.is_ok(), Ordering::Release);
                    reply.send(result);
                }
                Request::EndSession { sid } => {
                    self.chains.remove(&sid);
                }
            }
        }
    }

    fn trail_path(&self, trail: &str) -> PathBuf {
        self.dir.join(format!("{trail}.{TRAIL_EXTENSION}"))
    }

    fn write(&mut self, event: Event, durable: bool) -> Result<(), AuditError> {
        let Event {
            name,
            sid,
            trail,
            mut fields,
        } = event;
        let trail = if is_valid_trail(&trail) {
            trail
        } else {
            tracing::warn!(event = name, sid = %sid, trail = ?trail, "audit event with an invalid trail name goes to {UNKNOWN_TRAIL}");
            fields.insert("invalid_trail".to_owned(), Value::String(trail));
            UNKNOWN_TRAIL.to_owned()
        };
        for key in RESERVED_KEYS {
            if fields.remove(key).is_some() {
                tracing::warn!(event = name, sid = %sid, field = key, "audit event field dropped: the name is reserved");
            }
        }

        let (seq, prev) = match self.chains.get(&sid).and_then(|trails| trails.get(&trail)) {
            Some(chain) => (chain.next_seq, chain.prev.clone()),
            None => (0, GENESIS_PREV.to_owned()),
        };
        fields.insert("ts".to_owned(), Value::String(timestamp(SystemTime::now())));
        fields.insert("event".to_owned(), Value::String(name.to_owned()));
        fields.insert("sid".to_owned(), Value::String(sid.clone()));
        fields.insert("seq".to_owned(), Value::from(seq));
        fields.insert("prev".to_owned(), Value::String(prev));
        let line = serde_json::to_string(&Value::Object(fields)).map_err(|source| {
            AuditError::Serialize {
                event: name,
                sid: sid.clone(),
                source,
            }
        })?;

        self.append(&trail, &line, durable)?;

        let hash = sha256_hex(line.as_bytes());
        self.chains.entry(sid).or_default().insert(
            trail,
            Chain {
                next_seq: seq + 1,
                prev: hash,
            },
        );
        if self.stdout {
            self.copy_to_stdout(&line);
        }
        Ok(())
    }

    /// Appends `line` + "\n" to the trail with one `write_all`, undoing a partial
    /// write on failure.
    fn append(&mut self, trail: &str, line: &str, durable: bool) -> Result<(), AuditError> {
        let path = self.trail_path(trail);
        self.clock += 1;
        let clock = self.clock;
        if !self.files.contains_key(trail) {
            let opened = self.open_trail(trail, &path)?;
            if self.files.len() >= MAX_OPEN_FILES {
                self.close_least_recently_used();
            }
            self.files.insert(trail.to_owned(), opened);
        }
        let Some(open) = self.files.get_mut(trail) else {
            // Unreachable: inserted above.
            return Err(AuditError::Io {
                op: "open",
                path,
                source: io::Error::other("trail file vanished from the cache"),
            });
        };
        open.last_used = clock;

        let before = match open.file.metadata() {
            Ok(meta) => meta,
            Err(source) => {
                self.files.remove(trail);
                return Err(AuditError::Io {
                    op: "stat",
                    path,
                    source,
                });
            }
        };
        let mut buf = Vec::with_capacity(line.len() + 2);
        if open.needs_newline {
            buf.push(b'\n');
        }
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');

        let mut result = (&open.file).write_all(&buf).map_err(|e| ("append to", e));
        if result.is_ok() && durable {
            result = open.file.sync_data().map_err(|e| ("sync", e));
            if result.is_ok() && open.dir_sync_pending {
                result = File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| ("sync the directory of", e));
                if result.is_ok() {
                    open.dir_sync_pending = false;
                }
            }
        }
        match result {
            Ok(()) => {
                open.needs_newline = false;
                Ok(())
            }
            Err((op, source)) => {
                // Cut off whatever part of the line made it, so the file stays
                // verifiable and the chain (not advanced) matches it again.
                if let Err(e) = open.file.set_len(before.len()) {
                    tracing::error!(path = %path.display(), error = %e,
                        "cannot cut a failed audit write off the trail file; will retry before the next write");
                    self.pending_truncate.insert(
                        trail.to_owned(),
                        PendingTruncate {
                            dev: before.dev(),
                            ino: before.ino(),
                            len: before.len(),
                        },
                    );
                }
                // Reopen next time: the file may have been fixed or replaced.
                self.files.remove(trail);
                Err(AuditError::Io { op, path, source })
            }
        }
    }

    fn open_trail(&mut self, trail: &str, path: &Path) -> Result<OpenTrail, AuditError> {
        let io_err = |op: &'static str, source: io::Error| AuditError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        let created_new = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        let (file, created) = match created_new {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let file = OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| io_err("open", e))?;
                (file, false)
            }
            Err(e) => return Err(io_err("create", e)),
        };
        let meta = file.metadata().map_err(|e| io_err("stat", e))?;
        if !meta.is_file() {
            return Err(io_err("open", io::Error::other("not a regular file")));
        }
        let mut len = meta.len();
        if let Some(pending) = self.pending_truncate.remove(trail) {
            if pending.dev == meta.dev() && pending.ino == meta.ino() && len > pending.len {
                if let Err(e) = file.set_len(pending.len) {
                    self.pending_truncate.insert(trail.to_owned(), pending);
                    return Err(io_err("cut a partly written line off", e));
                }
                len = pending.len;
            }
        }
        let needs_newline = if len == 0 {
            false
        } else {
            // The file is write-only (O_APPEND); read its last byte through a
            // second, read-only descriptor.
            let reader = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| io_err("open for reading", e))?;
            let mut last = [0u8; 1];
            reader
                .read_exact_at(&mut last, len - 1)
                .map_err(|e| io_err("read the end of", e))?;
            last[0] != b'\n'
        };
        if needs_newline {
            tracing::warn!(path = %path.display(), "audit trail file ends in an incomplete line (an interrupted write?); it is kept as is");
        }
        Ok(OpenTrail {
            file,
            last_used: 0,
            needs_newline,
            dir_sync_pending: created,
        })
    }

    fn close_least_recently_used(&mut self) {
        let oldest = self
            .files
            .iter()
            .min_by_key(|(_, open)| open.last_used)
            .map(|(trail, _)| trail.clone());
        if let Some(trail) = oldest {
            // A file created but never synced durably keeps its directory entry
            // unsynced: sync it now so closing loses nothing a durable write needs.
            if let Some(open) = self.files.remove(&trail) {
                if open.dir_sync_pending {
                    let _ = File::open(&self.dir).and_then(|d| d.sync_all());
                }
            }
        }
    }

    fn copy_to_stdout(&mut self, line: &str) {
        let mut out = io::stdout().lock();
        let result = out
            .write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        match result {
            Ok(()) => self.stdout_failing = false,
            Err(e) => {
                if !self.stdout_failing {
                    tracing::error!(error = %e, "cannot copy audit events to standard output (they are still in the audit files)");
                }
                self.stdout_failing = true;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

/// What [`verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySummary {
    /// Files read.
    pub files: usize,
    /// Events (lines) checked.
    pub events: usize,
    /// Distinct session ids, counted per file (a session spread over two trails
    /// counts twice).
    pub sessions: usize,
}

/// Errors of [`verify`].
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The first event that breaks a hash chain, or a line that is not an event.
    #[error("{}: line {line}{}: {message}", file.display(), describe_event(sid.as_deref(), *seq))]
    Broken {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The event's session id, if it could be read.
        sid: Option<String>,
        /// The event's seq, if it could be read.
        seq: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// A file or directory could not be read.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn describe_event(sid: Option<&str>, seq: Option<u64>) -> String {
    match (sid, seq) {
        (Some(sid), Some(seq)) => format!(" (session {sid}, seq {seq})"),
        (Some(sid), None) => format!(" (session {sid})"),
        _ => String::new(),
    }
}

/// Checks the hash chains of a trail file, or of every `*.jsonl` file directly in
/// a directory (in name order), and returns what it checked or the FIRST broken
/// event.
///
/// Every line must be a JSON object with a string `sid`, an integer `seq` and a
/// 64-hex-digit `prev`; within one file, the events of a session must have seq
/// 0, 1, 2, … and each `prev` must be the SHA-256 of that session's previous line
/// (64 zeros for seq 0). A seq-0 event with a zero `prev` may also restart a
/// session id seen before (the writer restarts chains after
/// [`AuditLog::end_session`]). A last line without its newline is accepted if it
/// is otherwise valid.
///
/// Known limit: the chain only proves each event's predecessors. Removing or
/// editing the LAST event(s) of a session (or truncating the file, or deleting
/// a whole file or session) is not detectable from the chain alone; nor is a
/// consistent rewrite of a whole session by someone who can write the file.
pub fn verify(path: &Path) -> Result<VerifySummary, VerifyError> {
    let meta = fs::metadata(path).map_err(|source| VerifyError::Io {
        op: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    let mut summary = VerifySummary {
        files: 0,
        events: 0,
        sessions: 0,
    };
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(|source| VerifyError::Io {
            op: "list",
            path: path.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| VerifyError::Io {
                op: "list",
                path: path.to_path_buf(),
                source,
            })?;
            let file = entry.path();
            if file.extension().is_some_and(|ext| ext == TRAIL_EXTENSION) {
                let is_file = fs::metadata(&file)
                    .map_err(|source| VerifyError::Io {
                        op: "stat",
                        path: file.clone(),
                        source,
                    })?
                    .is_file();
                if is_file {
                    files.push(file);
                }
            }
        }
        files.sort();
        for file in files {
            verify_file(&file, &mut summary)?;
        }
    } else {
        verify_file(path, &mut summary)?;
    }
    Ok(summary)
}

fn verify_file(path: &Path, summary: &mut VerifySummary) -> Result<(), VerifyError> {
    let io_err = |op: &'static str, source: io::Error| VerifyError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| io_err("open", e))?;
    let mut reader = BufReader::new(file);
    let mut failed = None;
    let lines = std::iter::from_fn(|| {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Some(buf)
            }
            Err(e) => {
                failed = Some(e);
                None
            }
        }
    });
    let checked = verify_lines(path, lines, summary);
    match failed {
        Some(e) => Err(io_err("read", e)),
        None => checked,
    }
}

/// Checks the hash chains of one trail given as lines (without their newlines), in order;
/// `name` names it in errors. See [`verify`] for the rules.
pub fn verify_lines(
    name: &Path,
    lines: impl Iterator<Item = Vec<u8>>,
    summary: &mut VerifySummary,
) -> Result<(), VerifyError> {
    // sid → (last seq, hash of its line)
    let mut sessions: HashMap<String, (u64, String)> = HashMap::new();
    for (i, buf) in lines.enumerate() {
        check_line(&buf, &mut sessions).map_err(|(sid, seq, message)| VerifyError::Broken {
            file: name.to_path_buf(),
            line: i + 1,
            sid,
            seq,
            message,
        })?;
        summary.events += 1;
    }
    summary.files += 1;
    summary.sessions += sessions.len();
    Ok(())
}

type LineError = (Option<String>, Option<u64>, String);

fn check_line(line: &[u8], sessions: &mut HashMap<String, (u64, String)>) -> Result<(), LineError> {
    if line.is_empty() {
        return Err((None, None, "not valid JSON: empty line".to_owned()));
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|e| (None, None, format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err((None, None, "not a JSON object".to_owned()));
    };
    let sid = match obj.get("sid") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err((None, None, "\"sid\" is not a string".to_owned())),
        None => return Err((None, None, "no \"sid\" field".to_owned())),
    };
    let seq = match obj.get("seq") {
        Some(v) => match v.as_u64() {
            Some(seq) => seq,
            None => {
                return Err((
                    Some(sid),
                    None,
                    format!("\"seq\" is not an unsigned integer: {v}"),
                ))
            }
        },
        None => return Err((Some(sid), None, "no \"seq\" field".to_owned())),
    };
    let fail = |message: String| (Some(sid.clone()), Some(seq), message);
    let prev = match obj.get("prev") {
        Some(Value::String(p))
            if p.len() == 64
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            p.as_str()
        }
        Some(v) => {
            return Err(fail(format!(
                "\"prev\" is not 64 lowercase hex digits: {v}"
            )))
        }
        None => return Err(fail("no \"prev\" field".to_owned())),
    };

    let restart = seq == 0 && prev == GENESIS_PREV;
    match sessions.get(&sid) {
        _ if restart => {}
        None if seq == 0 => {
            return Err(fail(format!(
                "seq 0 must have an all-zero prev (found {prev})"
            )));
        }
        None => {
            return Err(fail(format!(
                "first event of session {sid} in this file has seq {seq}, expected 0 (earlier events were removed)"
            )));
        }
        Some((last, _)) if seq > last.saturating_add(1) => {
            return Err(fail(format!(
                "sequence jumps from {last} to {seq} (an event was removed)"
            )));
        }
        Some((last, _)) if seq != last.saturating_add(1) => {
            return Err(fail(format!(
                "sequence goes from {last} back to {seq} (an event was duplicated, reordered or inserted)"
            )));
        }
        Some((_, hash)) if prev != hash.as_str() => {
            return Err(fail(format!(
                "prev hash does not match the previous event of session {sid} (expected {hash}, found {prev})"
            )));
        }
        Some(_) => {}
    }
    let hash = sha256_hex(line);
    sessions.insert(sid, (seq, hash));
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn parse(line: &str) -> Map<String, Value> {
        match serde_json::from_str(line).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn broken(err: VerifyError) -> (PathBuf, usize, Option<String>, Option<u64>, String) {
        match err {
            VerifyError::Broken {
                file,
                line,
                sid,
                seq,
                message,
            } => (file, line, sid, seq, message),
            other => panic!("expected Broken, got {other}"),
        }
    }

    fn auth(sid: &str, trail: &str, login: &str) -> Event {
        Event::new("auth", sid, trail)
            .with("login", login)
            .with("user", "ubuntu")
            .with("key_fp", "SHA256:abc")
            .with("remote_addr", "192.0.2.1:50000")
            .with("success", true)
            .with_opt("reason", None::<String>)
    }

    /// Writes an interleaved history of three sessions of alice and one of bob.
    async fn history(log: &AuditLog) {
        for (sid, trail) in [
            ("s1", "alice"),
            ("s2", "alice"),
            ("s3", "bob"),
            ("s4", "alice"),
        ] {
            log.write(auth(sid, trail, trail), true).await.unwrap();
        }
        for i in 0..3u64 {
            for (sid, trail) in [
                ("s1", "alice"),
                ("s2", "alice"),
                ("s3", "bob"),
                ("s4", "alice"),
            ] {
                let ev = Event::new("forward", sid, trail)
                    .with("target", "db.internal:5432")
                    .with("addr", "10.0.0.5:5432")
                    .with("allowed", i % 2 == 0);
                log.write(ev, false).await.unwrap();
            }
        }
        for sid in ["s1", "s2", "s4"] {
            let ev = Event::new("session_end", sid, "alice")
                .with("bytes_in", 1234u64)
                .with("bytes_out", 5678u64)
                .with("duration_ms", 42u64);
            log.write(ev, true).await.unwrap();
        }
    }

    #[test]
    fn handle_is_send_sync_clone() {
        fn assert_traits<T: Clone + Send + Sync + 'static>() {}
        assert_traits::<AuditLog>();
    }

    #[test]
    fn trail_names() {
        assert_eq!(trail_name(Some("alice")), "alice");
        assert_eq!(trail_name(Some("a.b_c@d+e=f,g-h")), "a.b_c@d+e=f,g-h");
        assert_eq!(trail_name(None), UNKNOWN_TRAIL);
        for bad in [
            "",
            ".hidden",
            "-rf",
            "../etc/passwd",
            "a/b",
            "a b",
            "émile",
            "a\n",
        ] {
            assert_eq!(trail_name(Some(bad)), UNKNOWN_TRAIL, "{bad:?}");
        }
        assert_eq!(
            trail_name(Some(&"a".repeat(MAX_TRAIL_LEN))),
            "a".repeat(MAX_TRAIL_LEN)
        );
        assert_eq!(
            trail_name(Some(&"a".repeat(MAX_TRAIL_LEN + 1))),
            UNKNOWN_TRAIL
        );
    }

    #[test]
    fn timestamps_are_rfc3339_millis_and_never_fail() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(300_000_000_000)),
            "9999-12-31T23:59:59.000Z"
        );
    }

    #[tokio::test]
    async fn interleaved_sessions_chain_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        history(&log).await;

        let alice = lines(&tmp.path().join("alice.jsonl"));
        assert_eq!(alice.len(), 3 + 9 + 3);
        // Check seq/prev by hand for every session in alice's file.
        let mut last: HashMap<String, (u64, String)> = HashMap::new();
        for line in &alice {
            let obj = parse(line);
            let sid = obj["sid"].as_str().unwrap().to_owned();
            let seq = obj["seq"].as_u64().unwrap();
            let prev = obj["prev"].as_str().unwrap();
            match last.get(&sid) {
                None => {
                    assert_eq!(seq, 0);
                    assert_eq!(prev, GENESIS_PREV);
                }
                Some((s, h)) => {
                    assert_eq!(seq, s + 1);
                    assert_eq!(prev, h);
                }
            }
            assert!(obj["ts"].as_str().unwrap().ends_with('Z'));
            assert_eq!(
                obj["ts"].as_str().unwrap().len(),
                "2023-11-14T22:13:20.123Z".len()
            );
            last.insert(sid, (seq, hex::encode(Sha256::digest(line.as_bytes()))));
        }
        assert_eq!(last["s1"].0, 4);
        let first = parse(&alice[0]);
        assert_eq!(first["event"], "auth");
        assert_eq!(first["login"], "alice");
        assert_eq!(first["success"], true);
        assert!(!first.contains_key("reason"));

        let s = verify(&tmp.path().join("alice.jsonl")).unwrap();
        assert_eq!(
            s,
            VerifySummary {
                files: 1,
                events: 15,
                sessions: 3
            }
        );
        let s = verify(tmp.path()).unwrap();
        assert_eq!(
            s,
            VerifySummary {
                files: 2,
                events: 15 + 4,
                sessions: 4
            }
        );
    }

    #[tokio::test]
    async fn users_are_separated() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        history(&log).await;
        // One session that authenticates first as unknown, then as bob.
        log.write(
            Event::new("connect", "s9", &trail_name(None)).with("remote_addr", "198.51.100.7:2222"),
            false,
        )
        .await
        .unwrap();
        log.write(auth("s9", &trail_name(Some("bob")), "bob"), false)
            .await
            .unwrap();

        for line in lines(&tmp.path().join("alice.jsonl")) {
            let obj = parse(&line);
            assert!(
                ["s1", "s2", "s4"].contains(&obj["sid"].as_str().unwrap()),
                "{line}"
            );
            assert_ne!(obj.get("login"), Some(&Value::from("bob")));
        }
        for line in lines(&tmp.path().join("bob.jsonl")) {
            let obj = parse(&line);
            assert!(
                ["s3", "s9"].contains(&obj["sid"].as_str().unwrap()),
                "{line}"
            );
        }
        let unknown = lines(&tmp.path().join("_unknown.jsonl"));
        assert_eq!(unknown.len(), 1);
        // s9 has its own chain in each trail: seq 0 in both.
        assert_eq!(parse(&unknown[0])["seq"], 0);
        let bob = lines(&tmp.path().join("bob.jsonl"));
        assert_eq!(parse(bob.last().unwrap())["seq"], 0);
        verify(tmp.path()).unwrap();
    }

    #[tokio::test]
    async fn invalid_trail_and_reserved_fields_are_contained() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        let ev = Event::new("auth", "s1", "../escape")
            .with("seq", 99)
            .with("sid", "forged")
            .with("login", "x");
        log.write(ev, false).await.unwrap();
        assert!(!tmp.path().parent().unwrap().join("escape.jsonl").exists());
        let unknown = lines(&tmp.path().join("_unknown.jsonl"));
        let obj = parse(&unknown[0]);
        assert_eq!(obj["invalid_trail"], "../escape");
        assert_eq!(obj["seq"], 0);
        assert_eq!(obj["sid"], "s1");
        verify(tmp.path()).unwrap();
    }

    #[tokio::test]
    async fn tampered_middle_line_breaks_the_next_event_of_that_session() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        history(&log).await;
        let path = tmp.path().join("alice.jsonl");
        let mut all = lines(&path);
        // Line index 4 is s2's first forward event (seq 1); s2's next is index 7.
        let obj = parse(&all[4]);
        assert_eq!(
            (obj["sid"].as_str().unwrap(), obj["seq"].as_u64().unwrap()),
            ("s2", 1)
        );
        all[4] = all[4].replace("db.internal:5432", "db.internal:5433");
        fs::write(&path, all.join("\n") + "\n").unwrap();

        let (file, line, sid, seq, message) = broken(verify(&path).unwrap_err());
        assert_eq!(file, path);
        assert_eq!(line, 8);
        assert_eq!(sid.as_deref(), Some("s2"));
        assert_eq!(seq, Some(2));
        assert!(
            message.contains("prev hash does not match the previous event of session s2"),
            "{message}"
        );
        // The directory walk reports the same, with the file name in the message.
        let text = verify(tmp.path()).unwrap_err().to_string();
        assert!(
            text.contains("alice.jsonl: line 8 (session s2, seq 2): prev hash"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn removed_middle_line_is_a_sequence_jump() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        history(&log).await;
        let path = tmp.path().join("alice.jsonl");
        let mut all = lines(&path);
        all.remove(3); // s1 seq 1
        fs::write(&path, all.join("\n") + "\n").unwrap();
        let (_, line, sid, seq, message) = broken(verify(&path).unwrap_err());
        assert_eq!((line, sid.as_deref(), seq), (6, Some("s1"), Some(2)));
        assert!(
            message.contains("sequence jumps from 0 to 2 (an event was removed)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn duplicated_or_headless_sessions_are_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        history(&log).await;
        let path = tmp.path().join("alice.jsonl");
        let all = lines(&path);

        let mut dup = all.clone();
        dup.insert(4, all[3].clone());
        fs::write(&path, dup.join("\n") + "\n").unwrap();
        let (_, line, _, _, message) = broken(verify(&path).unwrap_err());
        assert_eq!(line, 5);
        assert!(message.contains("back to 1"), "{message}");

        // Dropping s1's first event: its next event has no predecessor.
        let mut headless = all.clone();
        headless.remove(0);
        fs::write(&path, headless.join("\n") + "\n").unwrap();
        let (_, line, sid, _, message) = broken(verify(&path).unwrap_err());
        assert_eq!((line, sid.as_deref()), (3, Some("s1")));
        assert!(message.contains("expected 0"), "{message}");
    }

    #[tokio::test]
    async fn garbage_line_is_not_json() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        history(&log).await;
        let path = tmp.path().join("bob.jsonl");
        let mut all = lines(&path);
        all.insert(2, "this is {not json".to_owned());
        fs::write(&path, all.join("\n") + "\n").unwrap();
        let (_, line, sid, seq, message) = broken(verify(&path).unwrap_err());
        assert_eq!((line, sid, seq), (3, None, None));
        assert!(message.starts_with("not valid JSON: "), "{message}");

        for (bad, expect) in [
            ("[1,2]", "not a JSON object"),
            ("{\"seq\":0}", "no \"sid\" field"),
            ("{\"sid\":\"x\",\"prev\":\"00\"}", "no \"seq\" field"),
            ("{\"sid\":\"x\",\"seq\":0}", "no \"prev\" field"),
            ("", "empty line"),
        ] {
            fs::write(&path, format!("{bad}\n")).unwrap();
            let (_, line, _, _, message) = broken(verify(&path).unwrap_err());
            assert_eq!(line, 1);
            assert!(message.contains(expect), "{bad}: {message}");
        }
    }

    #[test]
    fn verify_io_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.jsonl");
        match verify(&missing) {
            Err(VerifyError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io error, got {other:?}"),
        }
        // Empty directory: nothing to check, nothing broken.
        assert_eq!(
            verify(tmp.path()).unwrap(),
            VerifySummary {
                files: 0,
                events: 0,
                sessions: 0
            }
        );
    }

    #[tokio::test]
    async fn failed_write_fails_closed_and_does_not_advance_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        log.write(auth("s1", "bob", "bob"), true).await.unwrap();
        assert!(log.healthy());

        // A directory in place of alice's file: opening it fails, even for root.
        let path = tmp.path().join("alice.jsonl");
        fs::create_dir(&path).unwrap();
        let err = log
            .write(auth("s2", "alice", "alice"), true)
            .await
            .unwrap_err();
        match &err {
            AuditError::Io {
                path: p, source, ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(source.raw_os_error(), Some(libc::EISDIR));
            }
            other => panic!("expected Io error, got {other}"),
        }
        assert!(err.to_string().contains("alice.jsonl"), "{err}");
        assert!(!log.healthy());
        // Another failure for the same session: still failing.
        assert!(log
            .write(Event::new("forward", "s2", "alice"), false)
            .await
            .is_err());
        assert!(!log.healthy());

        fs::remove_dir(&path).unwrap();
        log.write(
            Event::new("forward", "s2", "alice").with("target", "t:1"),
            false,
        )
        .await
        .unwrap();
        assert!(log.healthy());
        let all = lines(&path);
        assert_eq!(all.len(), 1);
        // The failed events did not use up seq 0.
        assert_eq!(parse(&all[0])["seq"], 0);
        assert_eq!(parse(&all[0])["prev"], GENESIS_PREV);
        assert_eq!(parse(&all[0])["event"], "forward");
        log.write(Event::new("session_end", "s2", "alice"), true)
            .await
            .unwrap();
        assert_eq!(
            verify(tmp.path()).unwrap(),
            VerifySummary {
                files: 2,
                events: 3,
                sessions: 2
            }
        );
    }

    #[tokio::test]
    async fn failed_write_on_an_existing_trail_resumes_the_same_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        let path = tmp.path().join("alice.jsonl");
        log.write(auth("s1", "alice", "alice"), true).await.unwrap();
        // Push alice's handle out of the cache by using MAX_OPEN_FILES other trails.
        for i in 0..MAX_OPEN_FILES {
            log.write(Event::new("connect", "filler", &format!("u{i}")), false)
                .await
                .unwrap();
        }
        let saved = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();

        let err = log
            .write(
                Event::new("forward", "s1", "alice").with("target", "a:1"),
                true,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AuditError::Io { path: p, .. } if p == &path),
            "{err}"
        );
        assert!(!log.healthy());

        fs::remove_dir(&path).unwrap();
        fs::write(&path, saved).unwrap();
        log.write(
            Event::new("forward", "s1", "alice").with("target", "a:2"),
            true,
        )
        .await
        .unwrap();
        assert!(log.healthy());
        let all = lines(&path);
        assert_eq!(all.len(), 2);
        let second = parse(&all[1]);
        assert_eq!(second["seq"], 1);
        assert_eq!(second["target"], "a:2");
        assert_eq!(
            verify(&path).unwrap(),
            VerifySummary {
                files: 1,
                events: 2,
                sessions: 1
            }
        );
        assert_eq!(verify(tmp.path()).unwrap().files, MAX_OPEN_FILES + 1);
    }

    #[test]
    fn a_partial_line_that_could_not_be_cut_is_cut_before_the_next_write() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(
            tmp.path().to_path_buf(),
            false,
            Arc::new(AtomicBool::new(true)),
        );
        writer
            .write(Event::new("forward", "s1", "alice"), false)
            .unwrap();
        let path = tmp.path().join("alice.jsonl");
        let good_len = fs::metadata(&path).unwrap().len();
        // As after a write that failed part-way and whose set_len failed too.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"forw").unwrap();
        drop(f);
        let meta = fs::metadata(&path).unwrap();
        writer.files.remove("alice");
        writer.pending_truncate.insert(
            "alice".to_owned(),
            PendingTruncate {
                dev: meta.dev(),
                ino: meta.ino(),
                len: good_len,
            },
        );

        writer
            .write(Event::new("forward", "s1", "alice"), true)
            .unwrap();
        assert!(writer.pending_truncate.is_empty());
        assert_eq!(
            verify(&path).unwrap(),
            VerifySummary {
                files: 1,
                events: 2,
                sessions: 1
            }
        );
    }

    #[test]
    fn open_on_an_impossible_dir_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let err = AuditLog::open(&file.join("audit"), false).unwrap_err();
        assert!(matches!(err, AuditError::Io { .. }), "{err}");
        assert!(err.to_string().contains("plain-file"), "{err}");
        // A regular file as the directory itself.
        assert!(AuditLog::open(&file, false).is_err());
    }

    #[test]
    fn open_creates_the_directory_and_leaves_no_probe() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/audit");
        let log = AuditLog::open(&dir, false).unwrap();
        assert!(dir.is_dir());
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o027, 0);
        assert!(!dir.join(PROBE_NAME).exists());
        assert_eq!(log.dir(), dir);
        assert!(log.healthy());
        assert!(format!("{log:?}").contains("AuditLog"));
    }

    #[test]
    fn blocking_writes_are_durable_and_files_are_0640() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        log.write_blocking(auth("s1", "alice", "alice"), true)
            .unwrap();
        log.write_blocking(
            Event::new("session_end", "s1", "alice").with("duration_ms", 7u64),
            true,
        )
        .unwrap();
        let path = tmp.path().join("alice.jsonl");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o037, 0);
        assert_eq!(lines(&path).len(), 2);
        verify(&path).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn blocking_write_inside_a_runtime_does_not_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), true).unwrap();
        log.write_blocking(Event::new("connect", "s1", "_unknown"), false)
            .unwrap();
        log.write(Event::new("disconnect", "s1", "_unknown"), false)
            .await
            .unwrap();
        assert_eq!(verify(tmp.path()).unwrap().events, 2);
    }

    #[tokio::test]
    async fn end_session_restarts_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        for _ in 0..3 {
            log.write(Event::new("forward", "s1", "alice"), false)
                .await
                .unwrap();
        }
        log.write(Event::new("forward", "s2", "alice"), false)
            .await
            .unwrap();
        log.end_session("s1");
        log.write(Event::new("forward", "s1", "alice"), false)
            .await
            .unwrap();
        log.write(Event::new("forward", "s2", "alice"), false)
            .await
            .unwrap();
        let seqs: Vec<(String, u64)> = lines(&tmp.path().join("alice.jsonl"))
            .iter()
            .map(|l| {
                let o = parse(l);
                (
                    o["sid"].as_str().unwrap().to_owned(),
                    o["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        let expect: Vec<(String, u64)> = [
            ("s1", 0),
            ("s1", 1),
            ("s1", 2),
            ("s2", 0),
            ("s1", 0),
            ("s2", 1),
        ]
        .iter()
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
        assert_eq!(seqs, expect);
        assert_eq!(
            verify(tmp.path()).unwrap(),
            VerifySummary {
                files: 1,
                events: 6,
                sessions: 2
            }
        );
    }

    #[tokio::test]
    async fn partial_line_left_by_a_crash_does_not_swallow_the_next_event() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("alice.jsonl");
        {
            let log = AuditLog::open(tmp.path(), false).unwrap();
            log.write(Event::new("forward", "s1", "alice"), true)
                .await
                .unwrap();
        }
        // A crash mid-write leaves an incomplete line behind.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"forw").unwrap();
        drop(f);
        let log = AuditLog::open(tmp.path(), false).unwrap();
        log.write(Event::new("forward", "s7", "alice"), true)
            .await
            .unwrap();
        let all = lines(&path);
        assert_eq!(all.len(), 3);
        assert_eq!(parse(&all[2])["sid"], "s7");
        let (_, line, _, _, message) = broken(verify(&path).unwrap_err());
        assert_eq!(line, 2);
        assert!(message.starts_with("not valid JSON"), "{message}");
    }

    #[tokio::test]
    async fn concurrent_writers_keep_every_chain_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path(), false).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25u64 {
                    let ev = Event::new(
                        "forward",
                        &format!("s{t}"),
                        if t % 2 == 0 { "alice" } else { "bob" },
                    )
                    .with("bytes_in", i);
                    log.write(ev, i % 10 == 0).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            verify(tmp.path()).unwrap(),
            VerifySummary {
                files: 2,
                events: 200,
                sessions: 8
            }
        );
    }
}
