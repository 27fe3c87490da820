//! The writer thread: one per audit log, owning the open trail files, the hash chains and
//! the durability of each append.

use super::*;

// ---------------------------------------------------------------------------
// The writer thread
// ---------------------------------------------------------------------------

/// Chain state of one (session id, trail).
pub(super) struct Chain {
    next_seq: u64,
    prev: String,
}

/// An open trail file.
pub(super) struct OpenTrail {
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
pub(super) struct PendingTruncate {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) len: u64,
}

/// Sets `healthy` false when the writer thread ends, normally or by a panic.
pub(super) struct HealthGuard(Arc<AtomicBool>);

impl Drop for HealthGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub(super) struct Writer {
    dir: PathBuf,
    stdout: bool,
    stdout_failing: bool,
    healthy: Arc<AtomicBool>,
    /// sid → trail → chain.
    chains: HashMap<String, HashMap<String, Chain>>,
    pub(super) files: HashMap<String, OpenTrail>,
    pub(super) pending_truncate: HashMap<String, PendingTruncate>,
    clock: u64,
}

impl Writer {
    pub(super) fn new(dir: PathBuf, stdout: bool, healthy: Arc<AtomicBool>) -> Writer {
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

    pub(super) fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let _guard = HealthGuard(Arc::clone(&self.healthy));
        while let Ok(request) = rx.recv() {
            match request {
                Request::Write {
                    event,
                    durable,
                    reply,
                } => {
                    let result = self.write(*event, durable);
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

    pub(super) fn write(&mut self, event: Event, durable: bool) -> Result<(), AuditError> {
        let Event { sid, trail, body } = event;
        let name = body.name();
        let fields = serde_json::to_value(&body).and_then(|v| match v {
            Value::Object(fields) => Ok(fields),
            _ => Err(serde::ser::Error::custom(
                "an audit event must be a JSON object",
            )),
        });
        let serialize_error = |source| AuditError::Serialize {
            event: name,
            sid: sid.clone(),
            source,
        };
        let mut fields = fields.map_err(serialize_error)?;
        let trail = if is_valid_trail(&trail) {
            trail
        } else {
            tracing::warn!(event = name, sid = %sid, trail = ?trail, "audit event with an invalid trail name goes to {UNKNOWN_TRAIL}");
            fields.insert("invalid_trail".to_owned(), Value::String(trail));
            UNKNOWN_TRAIL.to_owned()
        };

        let (seq, prev) = match self.chains.get(&sid).and_then(|trails| trails.get(&trail)) {
            Some(chain) => (chain.next_seq, chain.prev.clone()),
            None => (0, GENESIS_PREV.to_owned()),
        };
        fields.insert("ts".to_owned(), Value::String(timestamp(SystemTime::now())));
        fields.insert("sid".to_owned(), Value::String(sid.clone()));
        fields.insert("seq".to_owned(), Value::from(seq));
        fields.insert("prev".to_owned(), Value::String(prev));
        let line = serde_json::to_string(&Value::Object(fields)).map_err(serialize_error)?;

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
