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

pub mod event;
pub mod read;
pub mod sinks;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

pub use event::{AuditEvent, KeyDetail, Record, Stamp, Who};
pub use verify::{verify, verify_lines, VerifyError, VerifySummary};
use writer::*;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
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

/// One audit event on its way to the writer: the event, its session and its trail.
#[derive(Debug, Clone)]
pub struct Event {
    /// Session id (`sid` key).
    pub sid: String,
    /// Trail (file) the event goes to, normally from [`trail_name`]. A trail that
    /// is not a valid trail name is written to [`UNKNOWN_TRAIL`] instead, with the
    /// rejected value in an `invalid_trail` field.
    pub trail: String,
    /// The event itself.
    pub body: AuditEvent,
}

impl Event {
    /// `body` for session `sid`, to go to `trail`.
    pub fn new(sid: &str, trail: &str, body: AuditEvent) -> Event {
        Event {
            sid: sid.to_owned(),
            trail: trail.to_owned(),
            body,
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
        /// Boxed: the queue holds requests, most of them small.
        event: Box<Event>,
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
        let (name, sid) = self.enqueue(event, durable, Reply::Async(tx))?;
        rx.await
            .unwrap_or_else(|_| Err(self.writer_gone(name, sid)))
    }

    /// Blocking variant of [`AuditLog::write`] for non-async callers. It does not
    /// panic inside a tokio runtime, but blocks the calling thread until the event
    /// is written, so prefer [`AuditLog::write`] there.
    pub fn write_blocking(&self, event: Event, durable: bool) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (name, sid) = self.enqueue(event, durable, Reply::Blocking(tx))?;
        rx.recv()
            .unwrap_or_else(|_| Err(self.writer_gone(name, sid)))
    }

    /// Hands `event` to the writer thread; returns its name and session for a later
    /// "writer gone" error.
    fn enqueue(
        &self,
        event: Event,
        durable: bool,
        reply: Reply,
    ) -> Result<(&'static str, String), AuditError> {
        let (name, sid) = (event.body.name(), event.sid.clone());
        match self.inner.tx.send(Request::Write {
            event: Box::new(event),
            durable,
            reply,
        }) {
            Ok(()) => Ok((name, sid)),
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
    pub fn start_shipping(&mut self, cfg: &crate::config::Audit) -> Result<(), sinks::SinkError> {
        let shipping = sinks::Shipping::start(cfg, &self.inner.dir)?;
        let inner = Arc::get_mut(&mut self.inner).ok_or_else(|| {
            sinks::SinkError::Invalid("start_shipping: the audit log is already shared".into())
        })?;
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
