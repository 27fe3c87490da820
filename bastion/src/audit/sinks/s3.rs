//! S3: immutable chunks, one folder per user and session (see [`S3`]).

use super::*;

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
) -> Result<String, SinkError> {
    let object = format!("s3://{bucket}/{key}");
    let obj = rt
        .block_on(client.get_object().bucket(bucket).key(key).send())
        .map_err(SinkError::aws("GetObject", object.clone()))?;
    let body = rt
        .block_on(obj.body.collect())
        .map_err(|e| SinkError::Aws {
            call: "reading",
            resource: object,
            detail: e.to_string(),
        })?
        .into_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A session of a trail whose lines are being shipped.
struct OpenSession {
    trail: String,
    /// The last sequence number taken (pending or in S3): a batch read again after a failed
    /// round holds lines this session already has.
    taken_seq: Option<u64>,
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
pub(super) struct S3 {
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
    pub(super) fn new(cfg: config::S3Sink, state_dir: &Path, flush: Arc<AtomicBool>) -> S3 {
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

    fn save_marks(&self, trail: &str) -> Result<(), SinkError> {
        let Some(marks) = self.marks.get(trail) else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.marks_dir)?;
            crate::fsutil::replace_file(
                &self.marks_dir.join(trail),
                &self.marks_dir.join(format!(".{trail}.tmp")),
                &serde_json::to_vec(marks).unwrap_or_default(),
            )
        };
        write().map_err(SinkError::local(format!(
            "record the S3 chunks of {trail} in {}",
            self.marks_dir.display()
        )))
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
    ) -> Result<u64, SinkError> {
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
                    let object = format!("s3://{}/{key}", self.cfg.bucket);
                    return Err(SinkError::aws("PutObject", object)(e));
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
    fn last_seq_in(&mut self, rt: &tokio::runtime::Runtime, key: &str) -> Result<u64, SinkError> {
        let client = self.client(rt);
        let bucket = &self.cfg.bucket;
        get_object_text(rt, &client, bucket, key)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| Line::parse(l.to_string(), 0).seq)
            .max()
            .ok_or_else(|| {
                SinkError::Invalid(format!("s3://{bucket}/{key} exists but holds no event"))
            })
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
    ) -> Result<Shipped, SinkError> {
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
                taken_seq: None,
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
            if held.is_some_and(|h| line.seq <= h) || s.taken_seq.is_some_and(|t| line.seq <= t) {
                continue;
            }
            s.taken_seq = Some(line.seq);
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
    fn tick(&mut self, rt: &tokio::runtime::Runtime) -> Result<u64, SinkError> {
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
}
