//! Remote audit sinks, fed from the local spool: the audit directory itself.
//!
//! Every event is first appended to `<audit.dir>/<trail>.jsonl` by the
//! audit writer (and `fdatasync`ed when it gates a forward) before anyone is
//! told it happened: that file is the spool. Each remote sink (CloudWatch
//! Logs, S3) runs on its own thread, reads the trail files from its own
//! cursor, ships complete lines, and only then moves its cursor, which it
//! keeps on disk (`<audit.dir>/.shipped/<sink>/<trail>`, written aside and
//! renamed). A crash or `kill -9` loses at most the cursor's last move: the
//! next start ships from the cursor again, and each sink drops what it
//! already holds (CloudWatch: the stream's last events are compared by
//! session id and sequence; S3: chunks are named after their session and first
//! sequence number and never overwritten, so a chunk that is already there is
//! read back instead of sent twice).
//!
//! At exit ([`Shipping::flush`]), once the sessions have ended, every sink is
//! asked to ship all the spool holds, for up to `audit.ship_grace`; what is
//! left is named in the log, and stays in the spool for the next start.
//!
//! A sink outage never blocks SSH traffic: writes go to the spool as always,
//! the sink retries with jittered back-off, and `/metrics` and the log say
//! so. What the slowest sink has not shipped is the spool's size; above
//! `audit.spool_max` new sessions are refused (fail closed) until it drains.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audit::Stamp;
use crate::config;

mod cloudwatch;
mod s3;

use cloudwatch::CloudWatch;
use s3::S3;
pub use s3::{get_object_text, s3_client};

/// Where the sinks keep their cursors, under the audit directory.
const STATE_DIR: &str = ".shipped";
/// Most bytes read from one trail per round.
const READ_CHUNK: u64 = 4 << 20;
/// Idle poll interval when nothing was left to ship.
const POLL: Duration = Duration::from_millis(500);
/// What one sink has done, for `/metrics` and for admission.
#[derive(Debug)]
pub struct SinkStats {
    /// `cloudwatch` or `s3`.
    pub name: &'static str,
    /// False while the sink's last attempt failed.
    pub up: AtomicBool,
    /// Bytes of the spool this sink has not shipped yet.
    pub unshipped: AtomicU64,
    /// Events shipped since start.
    pub shipped: AtomicU64,
    /// Failed attempts since start.
    pub errors: AtomicU64,
    /// Rounds over the spool completed since start (each one ships what it found).
    pub rounds: AtomicU64,
    /// The trails with bytes this sink has not shipped yet, and how many, as of the last round.
    pub pending: std::sync::Mutex<Vec<(String, u64)>>,
    /// The last failure, if the last round failed.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl SinkStats {
    fn new(name: &'static str) -> SinkStats {
        SinkStats {
            name,
            up: AtomicBool::new(true),
            unshipped: AtomicU64::new(0),
            shipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            pending: std::sync::Mutex::new(Vec::new()),
            last_error: std::sync::Mutex::new(None),
        }
    }
}

/// The running sinks.
#[derive(Debug, Default)]
pub struct Shipping {
    pub sinks: Vec<Arc<SinkStats>>,
    pub spool_max: u64,
    /// Set by [`Shipping::flush`]: ship everything now (S3 cuts live sessions' chunks) and
    /// retry failures without the long back-off.
    flush: Arc<AtomicBool>,
}

/// What one sink had not shipped when [`Shipping::flush`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unshipped {
    pub sink: &'static str,
    pub bytes: u64,
    /// Trails with unshipped bytes, and how many.
    pub trails: Vec<(String, u64)>,
    /// The sink's last error, if its last attempt failed.
    pub error: Option<String>,
}

/// Why a sink could not ship: kept as the sink's last error, logged, and reported at exit.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A call to AWS failed: which call, on what, and AWS's own words.
    #[error("{call} {resource}: {detail}")]
    Aws {
        call: &'static str,
        resource: String,
        detail: String,
    },
    /// The spool or the sink's own state on this disk.
    #[error("cannot {what}: {source}")]
    Local {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Something the sink was given or found is not what it must be.
    #[error("{0}")]
    Invalid(String),
}

impl SinkError {
    /// For `map_err` on an AWS SDK call: `call` (e.g. `PutObject`) on `resource`.
    pub fn aws<E, R>(
        call: &'static str,
        resource: impl Into<String>,
    ) -> impl FnOnce(aws_sdk_s3::error::SdkError<E, R>) -> SinkError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        move |e| SinkError::Aws {
            call,
            resource: resource.into(),
            detail: crate::awsutil::error_text(&e),
        }
    }

    /// For `map_err` on a local I/O operation: "cannot `what`".
    pub fn local(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SinkError {
        move |source| SinkError::Local {
            what: what.into(),
            source,
        }
    }
}

impl Shipping {
    /// Starts one thread per configured remote sink. Nothing is configured: nothing runs.
    pub fn start(cfg: &config::Audit, dir: &Path) -> Result<Shipping, SinkError> {
        let flush = Arc::new(AtomicBool::new(false));
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(group) = &cfg.cloudwatch_log_group {
            sinks.push(Box::new(CloudWatch::new(group.clone())));
        }
        if let Some(s3) = &cfg.s3 {
            sinks.push(Box::new(S3::new(
                s3.clone(),
                &dir.join(STATE_DIR),
                Arc::clone(&flush),
            )));
        }
        let mut stats = Vec::new();
        for sink in sinks {
            let st = Arc::new(SinkStats::new(sink.name()));
            let mut spool = Spool::open(dir, sink.name())?;
            // The spool's size is known before the first session is admitted.
            st.unshipped.store(spool.unshipped(), Ordering::Release);
            let st2 = Arc::clone(&st);
            let flush2 = Arc::clone(&flush);
            std::thread::Builder::new()
                .name(format!("audit-{}", sink.name()))
                .spawn(move || run(sink, &mut spool, &st2, &flush2))
                .map_err(SinkError::local(format!(
                    "start the {} audit sink",
                    st.name
                )))?;
            stats.push(st);
        }
        Ok(Shipping {
            sinks: stats,
            spool_max: cfg.spool_max,
            flush,
        })
    }

    /// At exit, once no session can write any more: asks every sink to ship all the spool
    /// holds now, and waits until each has done so in a round that began after the ask, or
    /// until `grace` is over. Returns what is still unshipped (empty: everything went out).
    /// What is returned stays in the spool, and a later start on the same disk ships it.
    pub fn flush(&self, grace: Duration) -> Vec<Unshipped> {
        self.flush.store(true, Ordering::Release);
        let asked: Vec<u64> = self
            .sinks
            .iter()
            .map(|s| s.rounds.load(Ordering::Acquire))
            .collect();
        let deadline = Instant::now() + grace;
        loop {
            // Two rounds after the ask: the first may have begun before it.
            let done = self.sinks.iter().zip(&asked).all(|(s, r0)| {
                s.rounds.load(Ordering::Acquire) >= r0 + 2
                    && s.unshipped.load(Ordering::Acquire) == 0
            });
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sinks
            .iter()
            .filter(|s| s.unshipped.load(Ordering::Acquire) > 0)
            .map(|s| Unshipped {
                sink: s.name,
                bytes: s.unshipped.load(Ordering::Acquire),
                trails: s.pending.lock().map(|p| p.clone()).unwrap_or_default(),
                error: s.last_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect()
    }

    /// Why new sessions must be refused, if the spool is over `spool_max`.
    pub fn spool_full(&self) -> Option<String> {
        self.sinks
            .iter()
            .find(|s| s.unshipped.load(Ordering::Acquire) > self.spool_max)
            .map(|s| {
                format!(
                    "the audit spool holds {} bytes not yet shipped to {} (limit {})",
                    s.unshipped.load(Ordering::Acquire),
                    s.name,
                    self.spool_max
                )
            })
    }
}

// ---------------------------------------------------------------------------
// The spool: trail files and one sink's cursors

/// One complete line of a trail, with where it ends in the file.
#[derive(Debug, Clone)]
pub struct Line {
    pub end: u64,
    pub text: String,
    pub ts_ms: i64,
    pub sid: String,
    pub seq: u64,
    pub event: String,
}

impl Line {
    /// Parses the fields sinks need; None for a line that is not an event (shipped as is by
    /// CloudWatch, never grouped by S3).
    fn parse(text: String, end: u64) -> Line {
        let stamp = Stamp::of(&text).unwrap_or_default();
        let ts_ms = humantime::parse_rfc3339(&stamp.ts)
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Line {
            end,
            ts_ms,
            sid: stamp.sid,
            seq: stamp.seq.unwrap_or(0),
            event: stamp.event,
            text,
        }
    }
}

struct Spool {
    dir: PathBuf,
    state: PathBuf,
    /// trail → durable cursor (bytes of the file shipped for good).
    cursors: HashMap<String, u64>,
    /// trail → how far this process has read (≥ cursor).
    read: HashMap<String, u64>,
    /// trail → its length when this process started (events of sessions that
    /// ended with the previous process lie before it).
    at_start: HashMap<String, u64>,
}

impl Spool {
    fn open(dir: &Path, sink: &str) -> Result<Spool, SinkError> {
        let state = dir.join(STATE_DIR).join(sink);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state)
            .map_err(SinkError::local(format!("create {}", state.display())))?;
        let mut cursors = HashMap::new();
        let entries =
            fs::read_dir(&state).map_err(SinkError::local(format!("list {}", state.display())))?;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            if let Some(n) = fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                cursors.insert(name, n);
            }
        }
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            state,
            read: cursors.clone(),
            cursors,
            at_start: HashMap::new(),
        };
        spool.at_start = spool.trails().into_iter().collect();
        Ok(spool)
    }

    /// Every trail and its current length.
    fn trails(&self) -> Vec<(String, u64)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let trail = name.strip_suffix(".jsonl")?.to_string();
                let meta = e.metadata().ok()?;
                meta.is_file().then_some((trail, meta.len()))
            })
            .collect();
        out.sort();
        out
    }

    fn unshipped(&self) -> u64 {
        self.pending_in(&self.trails()).iter().map(|(_, n)| n).sum()
    }

    /// The trails of `trails` (a listing of the spool) that hold bytes beyond this sink's
    /// cursors, and how many.
    fn pending_in(&self, trails: &[(String, u64)]) -> Vec<(String, u64)> {
        trails
            .iter()
            .map(|(t, len)| {
                let n = len.saturating_sub(self.cursors.get(t).copied().unwrap_or(0));
                (t.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Complete lines of `trail` from this process's read position, up to `len`.
    fn read_lines(&mut self, trail: &str, len: u64) -> std::io::Result<Vec<Line>> {
        let mut from = self.read.get(trail).copied().unwrap_or(0);
        if from > len {
            // The file is shorter than our cursor: it was replaced. Start over.
            tracing::warn!(
                trail,
                cursor = from,
                len,
                "audit trail is shorter than what was shipped; shipping it again from the start"
            );
            from = 0;
            self.cursors.insert(trail.to_string(), 0);
        }
        let mut f = fs::File::open(self.dir.join(format!("{trail}.jsonl")))?;
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.take((len - from).min(READ_CHUNK)).read_to_end(&mut buf)?;
        let mut lines = Vec::new();
        let mut pos = from;
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            if chunk.last() != Some(&b'\n') {
                break; // a line still being written
            }
            pos += chunk.len() as u64;
            let text = String::from_utf8_lossy(&chunk[..chunk.len() - 1]).to_string();
            if text.is_empty() {
                continue;
            }
            lines.push(Line::parse(text, pos));
        }
        Ok(lines)
    }

    fn advance(&mut self, trail: &str, read: u64, durable: u64) -> std::io::Result<()> {
        self.read.insert(trail.to_string(), read);
        if self.cursors.get(trail) == Some(&durable) {
            return Ok(());
        }
        crate::fsutil::replace_file(
            &self.state.join(trail),
            &self.state.join(format!(".{trail}.tmp")),
            format!("{durable}\n").as_bytes(),
        )?;
        self.cursors.insert(trail.to_string(), durable);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The loop every sink runs

/// What a sink made of a batch of lines.
struct Shipped {
    /// Lines up to this offset were taken (read position).
    taken: u64,
    /// Lines up to this offset are durably at the sink (cursor).
    durable: u64,
    /// Events delivered by this call.
    events: u64,
}

trait Sink: Send {
    fn name(&self) -> &'static str;
    /// Ships (some of) `lines`, all from `trail`, in file order. `at_start` is the trail's
    /// length when this process started.
    fn ship(
        &mut self,
        rt: &tokio::runtime::Runtime,
        trail: &str,
        lines: &[Line],
        at_start: u64,
    ) -> Result<Shipped, SinkError>;
    /// Called every round: periodic work (S3 writes live sessions' chunks).
    fn tick(&mut self, _rt: &tokio::runtime::Runtime) -> Result<u64, SinkError> {
        Ok(0)
    }
    /// How far `trail` is durably at the sink, of the `taken` bytes read so far.
    fn durable(&mut self, _trail: &str, taken: u64) -> u64 {
        taken
    }
}

fn cursor_error(sink: &str, trail: &str, e: std::io::Error) -> SinkError {
    SinkError::local(format!("record the {sink} cursor of {trail}"))(e)
}

fn run(mut sink: Box<dyn Sink>, spool: &mut Spool, stats: &SinkStats, flush: &AtomicBool) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(sink = stats.name, error = %e, "audit sink cannot start its runtime");
            stats.up.store(false, Ordering::Release);
            return;
        }
    };
    let mut backoff = Duration::from_secs(1);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let mut failure: Option<SinkError> = None;
        let mut more = false;
        let listing = spool.trails();
        for (trail, len) in listing.iter().cloned() {
            if failure.is_some() {
                break;
            }
            let read = spool.read.get(&trail).copied().unwrap_or(0);
            if read == len {
                // Nothing new, but what was read may have reached the sink since (S3's
                // chunks of live sessions): move the cursor up to it.
                if spool.cursors.get(&trail).copied().unwrap_or(0) < len {
                    let durable = sink.durable(&trail, len);
                    if let Err(e) = spool.advance(&trail, len, durable) {
                        failure = Some(cursor_error(stats.name, &trail, e));
                    }
                }
                continue;
            }
            let lines = match spool.read_lines(&trail, len) {
                Ok(l) => l,
                Err(e) => {
                    failure = Some(SinkError::local(format!("read the spool {trail}.jsonl"))(e));
                    break;
                }
            };
            if lines.is_empty() {
                continue;
            }
            let at_start = spool.at_start.get(&trail).copied().unwrap_or(0);
            match sink.ship(&rt, &trail, &lines, at_start) {
                Ok(done) => {
                    stats.shipped.fetch_add(done.events, Ordering::Relaxed);
                    if let Err(e) = spool.advance(&trail, done.taken, done.durable) {
                        failure = Some(cursor_error(stats.name, &trail, e));
                    }
                    more |= done.taken < len;
                }
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none() {
            if let Err(e) = sink
                .tick(&rt)
                .map(|n| stats.shipped.fetch_add(n, Ordering::Relaxed))
            {
                failure = Some(e);
            }
        }
        let pending = spool.pending_in(&listing);
        stats
            .unshipped
            .store(pending.iter().map(|(_, n)| n).sum(), Ordering::Release);
        if let Ok(mut p) = stats.pending.lock() {
            *p = pending;
        }
        if let Ok(mut e) = stats.last_error.lock() {
            *e = failure.as_ref().map(ToString::to_string);
        }
        stats.rounds.fetch_add(1, Ordering::AcqRel);
        match failure {
            Some(why) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let was_up = stats.up.swap(false, Ordering::AcqRel);
                if was_up || last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(sink = stats.name, error = %why, retry_in = ?backoff,
                        "audit sink failed; events stay in the spool and are retried");
                    last_error_log = Some(Instant::now());
                }
                // At exit, retry every second: the grace period is short.
                let wait = jitter(backoff);
                let start = Instant::now();
                while start.elapsed() < wait
                    && !(flush.load(Ordering::Acquire) && start.elapsed() >= Duration::from_secs(1))
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            None => {
                if !stats.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(sink = stats.name, "audit sink recovered");
                }
                backoff = Duration::from_secs(1);
                if !more && !flush.load(Ordering::Acquire) {
                    std::thread::sleep(POLL);
                } else if !more {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// `d` ± 25 %.
fn jitter(d: Duration) -> Duration {
    let f = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

fn sdk_config(rt: &tokio::runtime::Runtime) -> aws_config::SdkConfig {
    rt.block_on(crate::awsutil::sdk_config(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_reads_complete_lines_only_and_keeps_its_cursor() {
        let tmp = tempfile::tempdir().unwrap();
        let trail = tmp.path().join("alice.jsonl");
        fs::write(
            &trail,
            "{\"event\":\"auth\",\"sid\":\"s1\",\"seq\":0,\"ts\":\"2026-11-25T07:00:00.123Z\"}\n{\"event\":\"port\",\"sid\":\"s1\",\"seq\":1",
        )
        .unwrap();
        let mut spool = Spool::open(tmp.path(), "test").unwrap();
        let len = fs::metadata(&trail).unwrap().len();
        assert_eq!(spool.unshipped(), len);
        let lines = spool.read_lines("alice", len).unwrap();
        assert_eq!(lines.len(), 1, "the unfinished last line is not read");
        let first = &lines[0];
        assert_eq!(
            (first.sid.as_str(), first.seq, first.event.as_str()),
            ("s1", 0, "auth")
        );
        assert_eq!(first.ts_ms, 1_795_590_000_123);
        spool.advance("alice", first.end, first.end).unwrap();
        assert_eq!(spool.unshipped(), len - first.end);
        // A new process starts from the recorded cursor.
        let mut again = Spool::open(tmp.path(), "test").unwrap();
        assert_eq!(again.cursors.get("alice"), Some(&first.end));
        assert!(again.read_lines("alice", len).unwrap().is_empty());
    }

    #[test]
    fn spool_full_compares_the_slowest_sink_with_the_limit() {
        let sink = |n| {
            let s = SinkStats::new("cloudwatch");
            s.unshipped.store(n, Ordering::Relaxed);
            Arc::new(s)
        };
        let under = Shipping {
            sinks: vec![sink(100)],
            spool_max: 100,
            ..Shipping::default()
        };
        assert_eq!(under.spool_full(), None);
        let over = Shipping {
            sinks: vec![sink(10), sink(101)],
            spool_max: 100,
            ..Shipping::default()
        };
        assert!(over
            .spool_full()
            .unwrap()
            .contains("101 bytes not yet shipped to cloudwatch"));
    }
}
