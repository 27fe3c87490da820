//! `bastion audit verify`: the hash chains of a trail checked, and what that can and cannot
//! detect.

use super::*;

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
