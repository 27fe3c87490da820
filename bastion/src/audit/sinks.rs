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
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::config;

/// Where the sinks keep their cursors, under the audit directory.
const STATE_DIR: &str = ".shipped";
/// Most bytes read from one trail per round.
const READ_CHUNK: u64 = 4 << 20;
/// Idle poll interval when nothing was left to ship.
const POLL: Duration = Duration::from_millis(500);
/// CloudWatch Logs: most events and bytes per PutLogEvents (each event costs
/// its message plus 26 bytes), and the longest span of one batch.
const CW_MAX_EVENTS: usize = 10_000;
const CW_MAX_BYTES: usize = 1_048_576;
const CW_EVENT_OVERHEAD: usize = 26;
const CW_MAX_SPAN_MS: i64 = 24 * 3600 * 1000 - 1000;
/// CloudWatch Logs: at most 5 PutLogEvents per second per stream.
const CW_STREAM_INTERVAL: Duration = Duration::from_millis(200);
/// CloudWatch Logs: how many of a stream's last events are compared after a restart or a
/// failed put (whose events may have arrived all the same). Batches are no larger, so a
/// whole batch is always within what is compared.
const CW_DEDUP_TAIL: i32 = 500;
const CW_BATCH_EVENTS: usize = if (CW_DEDUP_TAIL as usize) < CW_MAX_EVENTS {
    CW_DEDUP_TAIL as usize
} else {
    CW_MAX_EVENTS
};

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

impl Shipping {
    /// Starts one thread per configured remote sink. Nothing is configured: nothing runs.
    pub fn start(cfg: &config::Audit, dir: &Path) -> Result<Shipping, String> {
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
                .map_err(|e| format!("cannot start the {} audit sink: {e}", st.name))?;
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
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ts_ms = v
            .get("ts")
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Line {
            end,
            ts_ms,
            sid: v
                .get("sid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            seq: v.get("seq").and_then(Value::as_u64).unwrap_or(0),
            event: v
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
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
    fn open(dir: &Path, sink: &str) -> Result<Spool, String> {
        let state = dir.join(STATE_DIR).join(sink);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state)
            .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
        let mut cursors = HashMap::new();
        for entry in
            fs::read_dir(&state).map_err(|e| format!("cannot list {}: {e}", state.display()))?
        {
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
        let tmp = self.state.join(format!(".{trail}.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{durable}")?;
        f.sync_data()?;
        fs::rename(&tmp, self.state.join(trail))?;
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
    ) -> Result<Shipped, String>;
    /// Called every round: periodic work (S3 writes live sessions' chunks).
    fn tick(&mut self, _rt: &tokio::runtime::Runtime) -> Result<u64, String> {
        Ok(0)
    }
    /// How far `trail` is durably at the sink, of the `taken` bytes read so far.
    fn durable(&mut self, _trail: &str, taken: u64) -> u64 {
        taken
    }
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
        let mut failure: Option<String> = None;
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
                        failure = Some(format!(
                            "cannot record the {} cursor of {trail}: {e}",
                            stats.name
                        ));
                    }
                }
                continue;
            }
            let lines = match spool.read_lines(&trail, len) {
                Ok(l) => l,
                Err(e) => {
                    failure = Some(format!("cannot read the spool {trail}.jsonl: {e}"));
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
                        failure = Some(format!(
                            "cannot record the {} cursor of {trail}: {e}",
                            stats.name
                        ));
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
            e.clone_from(&failure);
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

/// An S3 client; path-style addressing where an endpoint is configured (an S3-compatible
/// store or a test's emulator on an IP address, where bucket host names do not resolve).
pub fn s3_client(conf: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(conf)
        .force_path_style(
            conf.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// An S3 object's body as text (invalid UTF-8 replaced).
pub fn get_object_text(
    rt: &tokio::runtime::Runtime,
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<String, String> {
    let obj = rt
        .block_on(client.get_object().bucket(bucket).key(key).send())
        .map_err(|e| {
            format!(
                "GetObject s3://{bucket}/{key}: {}",
                crate::awsutil::error_text(&e)
            )
        })?;
    let body = rt
        .block_on(obj.body.collect())
        .map_err(|e| format!("reading s3://{bucket}/{key}: {e}"))?
        .into_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn sdk_config(rt: &tokio::runtime::Runtime) -> aws_config::SdkConfig {
    rt.block_on(crate::awsutil::sdk_config(Duration::from_secs(30)))
}

// ---------------------------------------------------------------------------
// CloudWatch Logs: one stream per user

struct CloudWatch {
    group: String,
    client: Option<aws_sdk_cloudwatchlogs::Client>,
    /// Streams known to exist, with what their tail already holds (sid, seq),
    /// read once per stream and process.
    streams: HashMap<String, HashSet<(String, u64)>>,
    last_put: HashMap<String, Instant>,
}

impl CloudWatch {
    fn new(group: String) -> CloudWatch {
        CloudWatch {
            group,
            client: None,
            streams: HashMap::new(),
            last_put: HashMap::new(),
        }
    }

    /// Creates the stream if needed and reads what its tail already holds.
    fn prepare(&mut self, rt: &tokio::runtime::Runtime, stream: &str) -> Result<(), String> {
        if self.streams.contains_key(stream) {
            return Ok(());
        }
        let client = self
            .client
            .get_or_insert_with(|| aws_sdk_cloudwatchlogs::Client::new(&sdk_config(rt)));
        let group = &self.group;
        let created = rt.block_on(
            client
                .create_log_stream()
                .log_group_name(group)
                .log_stream_name(stream)
                .send(),
        );
        if let Err(e) = created {
            let exists = e
                .as_service_error()
                .is_some_and(|s| s.is_resource_already_exists_exception());
            if !exists {
                return Err(format!(
                    "CreateLogStream {group}/{stream}: {}",
                    crate::awsutil::error_text(&e)
                ));
            }
        }
        let tail = rt
            .block_on(
                client
                    .get_log_events()
                    .log_group_name(group)
                    .log_stream_name(stream)
                    .start_from_head(false)
                    .limit(CW_DEDUP_TAIL)
                    .send(),
            )
            .map_err(|e| {
                format!(
                    "GetLogEvents {group}/{stream}: {}",
                    crate::awsutil::error_text(&e)
                )
            })?;
        let held = tail
            .events()
            .iter()
            .filter_map(|e| e.message())
            .map(|m| {
                let l = Line::parse(m.to_string(), 0);
                (l.sid, l.seq)
            })
            .collect();
        self.streams.insert(stream.to_string(), held);
        Ok(())
    }
}

impl Sink for CloudWatch {
    fn name(&self) -> &'static str {
        "cloudwatch"
    }

    fn ship(
        &mut self,
        rt: &tokio::runtime::Runtime,
        trail: &str,
        lines: &[Line],
        _at_start: u64,
    ) -> Result<Shipped, String> {
        self.prepare(rt, trail)?;
        if let Some(t) = self.last_put.get(trail) {
            if let Some(wait) = CW_STREAM_INTERVAL.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let held = self.streams.get(trail).cloned().unwrap_or_default();
        let first_start = lines[0].end - lines[0].text.len() as u64 - 1;
        let (mut events, mut bytes, mut taken) = (Vec::new(), 0usize, first_start);
        let first_ts = lines[0].ts_ms;
        let mut last_ts = first_ts;
        let mut skipped = 0;
        for line in lines {
            if !line.sid.is_empty() && held.contains(&(line.sid.clone(), line.seq)) {
                // Already in the stream (shipped just before a crash).
                taken = line.end;
                skipped += 1;
                continue;
            }
            let size = line.text.len() + CW_EVENT_OVERHEAD;
            if size > CW_MAX_BYTES {
                tracing::warn!(trail, sid = %line.sid, seq = line.seq, bytes = line.text.len(),
                    "audit event too large for CloudWatch Logs; it remains in the local trail only");
                taken = line.end;
                continue;
            }
            // Events must be in time order: a clock step backwards keeps the previous time
            // (the event's own `ts` is in the message).
            let ts = line.ts_ms.max(last_ts);
            if events.len() == CW_BATCH_EVENTS
                || bytes + size > CW_MAX_BYTES
                || ts - first_ts > CW_MAX_SPAN_MS
            {
                break;
            }
            events.push(
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(ts)
                    .message(line.text.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            );
            bytes += size;
            last_ts = ts;
            taken = line.end;
        }
        if skipped > 0 {
            tracing::info!(
                trail,
                skipped,
                "audit events already in CloudWatch were not sent again"
            );
        }
        if events.is_empty() {
            return Ok(Shipped {
                taken,
                durable: taken,
                events: 0,
            });
        }
        let n = events.len() as u64;
        let client = self.client.as_ref().ok_or("no client")?;
        let out = rt
            .block_on(
                client
                    .put_log_events()
                    .log_group_name(&self.group)
                    .log_stream_name(trail)
                    .set_log_events(Some(events))
                    .send(),
            )
            .map_err(|e| {
                format!(
                    "PutLogEvents {}/{trail}: {}",
                    self.group,
                    crate::awsutil::error_text(&e)
                )
            });
        let out = match out {
            Ok(out) => out,
            Err(why) => {
                // The stream may have been deleted meanwhile: create it (and read
                // its tail) again on the next attempt.
                self.streams.remove(trail);
                return Err(why);
            }
        };
        self.last_put.insert(trail.to_string(), Instant::now());
        if let Some(r) = out.rejected_log_events_info() {
            tracing::warn!(trail, too_old = ?r.too_old_log_event_end_index(), too_new = ?r.too_new_log_event_start_index(),
                expired = ?r.expired_log_event_end_index(), "CloudWatch Logs rejected some audit events (out of its time window); they remain in the local trail");
        }
        Ok(Shipped {
            taken,
            durable: taken,
            events: n,
        })
    }
}

// ---------------------------------------------------------------------------
// S3: immutable chunks, one folder per user and session

/// A session of a trail whose lines are being shipped.
struct OpenSession {
    trail: String,
    /// Lines read but not in S3 yet, from `pending_seq` on, starting at offset `pending_start`.
    pending: Vec<String>,
    pending_seq: u64,
    pending_start: u64,
    /// Timestamp of the first pending line: names the day folder of the next chunk.
    pending_ts: i64,
    /// Offset where the last line read of this session ends.
    last: u64,
    /// When the last chunk was written, or the session first seen.
    since: Instant,
}

/// What is known to be in S3 of one session: every line up to `seq`, the last of which ends
/// at `end` in the trail file. Kept on disk (`.shipped/s3.sessions/<trail>`) until the trail's
/// cursor has passed `end`, so that a restart reading from the cursor never cuts a chunk
/// anywhere but where the previous process cut it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ChunkMark {
    seq: u64,
    end: u64,
}

/// The S3 sink. Each session's events go to
/// `<prefix><user>/<YYYY>/<MM>/<DD>/<sid>/<first seq>.jsonl` objects ("chunks"), each written
/// once and never rewritten: every PutObject carries `If-None-Match: *`, so the instance role
/// needs no right to overwrite (see the Terraform module's policy) and a bucket with
/// versioning and Object Lock keeps every chunk as first written. A chunk is cut at
/// `session.end`, every `s3_interval` for a live session, and at exit. The day is the one of
/// the chunk's first event; a reader puts a session back together by its id and sequence
/// numbers across chunks (and days).
struct S3 {
    cfg: config::S3Sink,
    client: Option<aws_sdk_s3::Client>,
    open: HashMap<(String, String), OpenSession>,
    /// Where the per-trail [`ChunkMark`]s are kept.
    marks_dir: PathBuf,
    /// trail → sid → what is in S3.
    marks: HashMap<String, HashMap<String, ChunkMark>>,
    /// Set at exit: every pending line is due, whatever `s3_interval` says.
    flush: Arc<AtomicBool>,
}

impl S3 {
    fn new(cfg: config::S3Sink, state_dir: &Path, flush: Arc<AtomicBool>) -> S3 {
        S3 {
            cfg,
            client: None,
            open: HashMap::new(),
            marks_dir: state_dir.join("s3.sessions"),
            marks: HashMap::new(),
            flush,
        }
    }

    fn key(&self, trail: &str, sid: &str, first_seq: u64, first_ts: i64) -> String {
        let t =
            SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(first_ts).unwrap_or(0));
        let day = humantime::format_rfc3339_seconds(t).to_string();
        let (y, m, d) = (&day[0..4], &day[5..7], &day[8..10]);
        format!(
            "{}{trail}/{y}/{m}/{d}/{sid}/{first_seq:010}.jsonl",
            self.cfg.prefix
        )
    }

    /// The marks of `trail`, read from disk once per process.
    fn marks_of(&mut self, trail: &str) -> &mut HashMap<String, ChunkMark> {
        let dir = &self.marks_dir;
        self.marks.entry(trail.to_string()).or_insert_with(|| {
            fs::read(dir.join(trail))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        })
    }

    fn save_marks(&self, trail: &str) -> Result<(), String> {
        let Some(marks) = self.marks.get(trail) else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.marks_dir)?;
            let tmp = self.marks_dir.join(format!(".{trail}.tmp"));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(marks).unwrap_or_default())?;
            f.sync_data()?;
            fs::rename(&tmp, self.marks_dir.join(trail))
        };
        write().map_err(|e| {
            format!(
                "cannot record the S3 chunks of {trail} in {}: {e}",
                self.marks_dir.display()
            )
        })
    }

    fn client(&mut self, rt: &tokio::runtime::Runtime) -> aws_sdk_s3::Client {
        self.client
            .get_or_insert_with(|| s3_client(&sdk_config(rt)))
            .clone()
    }

    /// Writes the pending lines of session `id` as new chunks; returns how many events went
    /// out. A chunk that already exists (a previous process wrote it and died before it
    /// recorded it) is read back: the lines it holds are not sent again.
    fn put_pending(
        &mut self,
        rt: &tokio::runtime::Runtime,
        id: &(String, String),
    ) -> Result<u64, String> {
        let mut sent = 0;
        loop {
            let Some(s) = self.open.get(id) else {
                return Ok(sent);
            };
            if s.pending.is_empty() {
                return Ok(sent);
            }
            let first_seq = s.pending_seq;
            let key = self.key(&s.trail, &id.1, first_seq, s.pending_ts);
            let mut body = s.pending.join("\n");
            body.push('\n');
            let n = s.pending.len() as u64;
            let last_seq = first_seq + n - 1;
            let end = s.last;
            let client = self.client(rt);
            let mut put = client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .if_none_match("*")
                .content_type("application/x-ndjson")
                .body(body.into_bytes().into());
            put = match &self.cfg.kms {
                None => put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256),
                Some(key_id) => put
                    .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(key_id.clone()),
            };
            let (held_through, events) = match rt.block_on(put.send()) {
                Ok(_) => (last_seq, n),
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) => {
                    let held = self.last_seq_in(rt, &key)?;
                    tracing::info!(key = %key, through_seq = held,
                        "S3 audit chunk already there (written before a restart); its events are not sent again");
                    // A chunk starts with the event it is named after: it holds at least that.
                    (held.max(first_seq), 0)
                }
                Err(e) => {
                    return Err(format!(
                        "PutObject s3://{}/{key}: {}",
                        self.cfg.bucket,
                        crate::awsutil::error_text(&e)
                    ))
                }
            };
            sent += events;
            let Some(s) = self.open.get_mut(id) else {
                return Ok(sent);
            };
            // Drop what S3 now holds; what is left (a chunk that held fewer lines) goes next.
            let drop = usize::try_from(held_through + 1 - first_seq)
                .unwrap_or(usize::MAX)
                .min(s.pending.len());
            s.pending.drain(..drop);
            s.pending_seq += drop as u64;
            s.since = Instant::now();
            let mark_end = if s.pending.is_empty() {
                end
            } else {
                s.pending_start
            };
            let trail = s.trail.clone();
            self.marks_of(&trail).insert(
                id.1.clone(),
                ChunkMark {
                    seq: held_through,
                    end: mark_end,
                },
            );
            self.save_marks(&trail)?;
        }
    }

    /// The sequence number of the last event in an existing chunk.
    fn last_seq_in(&mut self, rt: &tokio::runtime::Runtime, key: &str) -> Result<u64, String> {
        let client = self.client(rt);
        let bucket = &self.cfg.bucket;
        get_object_text(rt, &client, bucket, key)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| Line::parse(l.to_string(), 0).seq)
            .max()
            .ok_or_else(|| format!("s3://{bucket}/{key} exists but holds no event"))
    }
}

impl Sink for S3 {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn ship(
        &mut self,
        rt: &tokio::runtime::Runtime,
        trail: &str,
        lines: &[Line],
        at_start: u64,
    ) -> Result<Shipped, String> {
        let mut start = lines[0].end - lines[0].text.len() as u64 - 1;
        let mut ended = Vec::new();
        for line in lines {
            let line_start = start;
            start = line.end;
            if line.sid.is_empty() {
                continue;
            }
            // Lines a previous chunk holds (read again after a restart) are not sent again.
            let held = self.marks_of(trail).get(&line.sid).map(|m| m.seq);
            let id = (trail.to_string(), line.sid.clone());
            let s = self.open.entry(id.clone()).or_insert_with(|| OpenSession {
                trail: trail.to_string(),
                pending: Vec::new(),
                pending_seq: line.seq,
                pending_start: line_start,
                pending_ts: line.ts_ms,
                last: line.end,
                since: Instant::now(),
            });
            s.last = line.end;
            if line.event == "session.end" {
                ended.push(id);
            }
            if held.is_some_and(|h| line.seq <= h) {
                continue;
            }
            if s.pending.is_empty() {
                s.pending_seq = line.seq;
                s.pending_start = line_start;
                s.pending_ts = line.ts_ms;
            }
            s.pending.push(line.text.clone());
        }
        let taken = lines.last().map_or(start, |l| l.end);
        // Sessions of the previous process that never said session.end (it was
        // killed): once everything it wrote has been read, they are over too.
        if taken >= at_start {
            for (id, s) in &self.open {
                if id.0 == trail && s.last <= at_start && !ended.contains(id) {
                    ended.push(id.clone());
                }
            }
        }
        let mut events = 0;
        for id in ended {
            events += self.put_pending(rt, &id)?;
            self.open.remove(&id);
        }
        Ok(Shipped {
            taken,
            durable: self.durable(trail, taken),
            events,
        })
    }

    /// Up to the first line of this trail not in S3 yet.
    fn durable(&mut self, trail: &str, taken: u64) -> u64 {
        let durable = self
            .open
            .values()
            .filter(|s| s.trail == trail && !s.pending.is_empty())
            .map(|s| s.pending_start)
            .min()
            .unwrap_or(taken);
        // Marks the cursor passes are never needed again. Should they fail to be
        // forgotten on disk, they are forgotten at the next chance: no harm either way.
        let marks = self.marks_of(trail);
        let before = marks.len();
        marks.retain(|_, m| m.end > durable);
        if marks.len() != before {
            if let Err(e) = self.save_marks(trail) {
                tracing::debug!(error = %e, "S3 chunk marks not pruned");
            }
        }
        durable
    }

    /// Long sessions: every `s3_interval` (and at exit, at once), what a live session wrote
    /// since its last chunk becomes a new chunk.
    fn tick(&mut self, rt: &tokio::runtime::Runtime) -> Result<u64, String> {
        let interval = if self.flush.load(Ordering::Acquire) {
            Duration::ZERO
        } else {
            self.cfg.interval
        };
        let due: Vec<(String, String)> = self
            .open
            .iter()
            .filter(|(_, s)| !s.pending.is_empty() && s.since.elapsed() >= interval)
            .map(|(id, _)| id.clone())
            .collect();
        let mut events = 0;
        for id in due {
            events += self.put_pending(rt, &id)?;
        }
        Ok(events)
    }
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
    fn s3_chunk_keys_are_per_user_day_session_and_first_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let s3 = S3::new(
            config::S3Sink {
                bucket: "b".into(),
                prefix: "audit/".into(),
                kms: None,
                interval: Duration::from_secs(300),
            },
            tmp.path(),
            Arc::new(AtomicBool::new(false)),
        );
        assert_eq!(
            s3.key("alice", "abc", 42, 1_795_590_000_123),
            "audit/alice/2026/11/25/abc/0000000042.jsonl"
        );
    }

    #[test]
    fn s3_chunk_marks_survive_a_restart_until_the_cursor_passes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config::S3Sink {
            bucket: "b".into(),
            prefix: String::new(),
            kms: None,
            interval: Duration::from_secs(300),
        };
        let flush = Arc::new(AtomicBool::new(false));
        let mut s3 = S3::new(cfg.clone(), tmp.path(), Arc::clone(&flush));
        s3.marks_of("alice")
            .insert("s1".into(), ChunkMark { seq: 4, end: 500 });
        s3.save_marks("alice").unwrap();
        // A new process reads them back, and a cursor short of them keeps them.
        let mut again = S3::new(cfg.clone(), tmp.path(), Arc::clone(&flush));
        assert_eq!(again.durable("alice", 400), 400);
        assert_eq!(
            again.marks_of("alice").get("s1"),
            Some(&ChunkMark { seq: 4, end: 500 })
        );
        // Once the cursor passes the mark's end, it is forgotten on disk too.
        assert_eq!(again.durable("alice", 600), 600);
        let third = &mut S3::new(cfg, tmp.path(), flush);
        assert!(third.marks_of("alice").is_empty());
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
