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
//! session id and sequence; S3: a session's object is rewritten whole, under
//! a key named after the session).
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
}

/// The running sinks.
#[derive(Debug, Default)]
pub struct Shipping {
    pub sinks: Vec<Arc<SinkStats>>,
    pub spool_max: u64,
}

impl Shipping {
    /// Starts one thread per configured remote sink. Nothing is configured: nothing runs.
    pub fn start(cfg: &config::Audit, dir: &Path) -> Result<Shipping, String> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(group) = &cfg.cloudwatch_log_group {
            sinks.push(Box::new(CloudWatch::new(group.clone())));
        }
        if let Some(s3) = &cfg.s3 {
            sinks.push(Box::new(S3::new(s3.clone())));
        }
        let mut stats = Vec::new();
        for sink in sinks {
            let st = Arc::new(SinkStats {
                name: sink.name(),
                up: AtomicBool::new(true),
                unshipped: AtomicU64::new(0),
                shipped: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            });
            let mut spool = Spool::open(dir, sink.name())?;
            // The spool's size is known before the first session is admitted.
            st.unshipped.store(spool.unshipped(), Ordering::Release);
            let st2 = Arc::clone(&st);
            std::thread::Builder::new()
                .name(format!("audit-{}", sink.name()))
                .spawn(move || run(sink, &mut spool, &st2))
                .map_err(|e| format!("cannot start the {} audit sink: {e}", st.name))?;
            stats.push(st);
        }
        Ok(Shipping {
            sinks: stats,
            spool_max: cfg.spool_max,
        })
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
        let state = dir.join(".shipped").join(sink);
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
        self.unshipped_in(&self.trails())
    }

    /// What `trails` (a listing of the spool) hold beyond this sink's cursors.
    fn unshipped_in(&self, trails: &[(String, u64)]) -> u64 {
        trails
            .iter()
            .map(|(t, len)| len.saturating_sub(self.cursors.get(t).copied().unwrap_or(0)))
            .sum()
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
    /// Called every round: periodic work (S3 rewrites live sessions' objects).
    fn tick(&mut self, _rt: &tokio::runtime::Runtime) -> Result<u64, String> {
        Ok(0)
    }
}

fn run(mut sink: Box<dyn Sink>, spool: &mut Spool, stats: &SinkStats) {
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
        stats
            .unshipped
            .store(spool.unshipped_in(&listing), Ordering::Release);
        match failure {
            Some(why) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let was_up = stats.up.swap(false, Ordering::AcqRel);
                if was_up || last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(sink = stats.name, error = %why, retry_in = ?backoff,
                        "audit sink failed; events stay in the spool and are retried");
                    last_error_log = Some(Instant::now());
                }
                std::thread::sleep(jitter(backoff));
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            None => {
                if !stats.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(sink = stats.name, "audit sink recovered");
                }
                backoff = Duration::from_secs(1);
                if !more {
                    std::thread::sleep(POLL);
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
// S3: one object per user and session

struct OpenSession {
    trail: String,
    /// Offset where its first line starts.
    start: u64,
    /// Offset where its last line ends.
    last: u64,
    first_ts: i64,
    lines: Vec<String>,
    /// Lines not in the object yet.
    dirty: bool,
    /// When its object was last written, or when it was first seen.
    since: Instant,
}

struct S3 {
    cfg: config::S3Sink,
    client: Option<aws_sdk_s3::Client>,
    open: HashMap<(String, String), OpenSession>,
}

impl S3 {
    fn new(cfg: config::S3Sink) -> S3 {
        S3 {
            cfg,
            client: None,
            open: HashMap::new(),
        }
    }

    fn key(&self, trail: &str, sid: &str, first_ts: i64) -> String {
        let t =
            SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(first_ts).unwrap_or(0));
        let day = humantime::format_rfc3339_seconds(t).to_string();
        let (y, m, d) = (&day[0..4], &day[5..7], &day[8..10]);
        format!("{}{trail}/{y}/{m}/{d}/{sid}.jsonl", self.cfg.prefix)
    }

    fn upload(
        &mut self,
        rt: &tokio::runtime::Runtime,
        id: &(String, String),
    ) -> Result<u64, String> {
        let Some(s) = self.open.get(id) else {
            return Ok(0);
        };
        let key = self.key(&s.trail, &id.1, s.first_ts);
        let mut body = s.lines.join("\n");
        body.push('\n');
        let n = s.lines.len() as u64;
        let client = self
            .client
            .get_or_insert_with(|| s3_client(&sdk_config(rt)));
        let mut put = client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .body(body.into_bytes().into());
        put = match &self.cfg.kms {
            None => put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256),
            Some(key_id) => put
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(key_id.clone()),
        };
        rt.block_on(put.send()).map_err(|e| {
            format!(
                "PutObject s3://{}/{key}: {}",
                self.cfg.bucket,
                crate::awsutil::error_text(&e)
            )
        })?;
        if let Some(s) = self.open.get_mut(id) {
            s.dirty = false;
            s.since = Instant::now();
        }
        Ok(n)
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
            if line.sid.is_empty() {
                start = line.end;
                continue;
            }
            let id = (trail.to_string(), line.sid.clone());
            let s = self.open.entry(id.clone()).or_insert_with(|| OpenSession {
                trail: trail.to_string(),
                start,
                last: line.end,
                first_ts: line.ts_ms,
                lines: Vec::new(),
                dirty: false,
                since: Instant::now(),
            });
            s.lines.push(line.text.clone());
            s.last = line.end;
            s.dirty = true;
            if line.event == "session.end" {
                ended.push(id);
            }
            start = line.end;
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
            events += self.upload(rt, &id)?;
            self.open.remove(&id);
        }
        // Durable: up to the first line of the oldest session of this trail still open.
        let durable = self
            .open
            .values()
            .filter(|s| s.trail == trail)
            .map(|s| s.start)
            .min()
            .unwrap_or(taken);
        Ok(Shipped {
            taken,
            durable,
            events,
        })
    }

    /// Long sessions: every `s3_interval`, a live session's object is written with what it
    /// holds so far (rewritten whole when it ends; its events are counted then).
    fn tick(&mut self, rt: &tokio::runtime::Runtime) -> Result<u64, String> {
        let interval = self.cfg.interval;
        let due: Vec<(String, String)> = self
            .open
            .iter()
            .filter(|(_, s)| s.dirty && s.since.elapsed() >= interval)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.upload(rt, &id)?;
        }
        Ok(0)
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
    fn s3_keys_are_per_user_day_and_session() {
        let s3 = S3::new(config::S3Sink {
            bucket: "b".into(),
            prefix: "audit/".into(),
            kms: None,
            interval: Duration::from_secs(300),
        });
        assert_eq!(
            s3.key("alice", "abc", 1_795_590_000_123),
            "audit/alice/2026/11/25/abc.jsonl"
        );
    }

    #[test]
    fn spool_full_compares_the_slowest_sink_with_the_limit() {
        let sink = |n| {
            Arc::new(SinkStats {
                name: "cloudwatch",
                up: AtomicBool::new(true),
                unshipped: AtomicU64::new(n),
                shipped: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            })
        };
        let under = Shipping {
            sinks: vec![sink(100)],
            spool_max: 100,
        };
        assert_eq!(under.spool_full(), None);
        let over = Shipping {
            sinks: vec![sink(10), sink(101)],
            spool_max: 100,
        };
        assert!(over
            .spool_full()
            .unwrap()
            .contains("101 bytes not yet shipped to cloudwatch"));
    }
}
