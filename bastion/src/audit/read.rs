//! Reading an audit trail back, from the local directory or from where the
//! remote sinks put it (CloudWatch Logs streams, S3 objects), for
//! `bastion audit verify` and `bastion audit show`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::audit::{AuditEvent, Record, Stamp, VerifyError, VerifySummary};

/// Where a trail is read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A trail file or the audit directory.
    Dir(PathBuf),
    /// A CloudWatch Logs group (one stream per user).
    CloudWatch { group: String },
    /// An S3 bucket and prefix: chunks `<prefix><user>/YYYY/MM/DD/<sid>/<first seq>.jsonl`
    /// (and whole-session objects `<prefix><user>/YYYY/MM/DD/<sid>.jsonl` of earlier versions).
    S3 { bucket: String, prefix: String },
}

/// One file, stream or object: its name and its lines, in order.
#[derive(Debug)]
pub struct Trail {
    pub name: String,
    pub user: String,
    pub lines: Vec<String>,
}

/// Reads every trail of `source`, or only `user`'s.
pub fn read(source: &Source, user: Option<&str>) -> Result<Vec<Trail>, String> {
    match source {
        Source::Dir(path) => read_dir(path, user),
        Source::CloudWatch { group } => remote(|rt, conf| read_cloudwatch(rt, conf, group, user)),
        Source::S3 { bucket, prefix } => remote(|rt, conf| read_s3(rt, conf, bucket, prefix, user)),
    }
}

fn read_dir(path: &Path, user: Option<&str>) -> Result<Vec<Trail>, String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot list {}: {e}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if user.is_some_and(|u| u != name) {
            continue;
        }
        let text =
            std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        out.push(Trail {
            name: f.display().to_string(),
            user: name,
            lines: text.lines().map(str::to_string).collect(),
        });
    }
    Ok(out)
}

fn remote<T>(
    f: impl FnOnce(&tokio::runtime::Runtime, &aws_config::SdkConfig) -> Result<T, String>,
) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let conf = rt.block_on(aws_config::defaults(aws_config::BehaviorVersion::latest()).load());
    f(&rt, &conf)
}

fn read_cloudwatch(
    rt: &tokio::runtime::Runtime,
    conf: &aws_config::SdkConfig,
    group: &str,
    user: Option<&str>,
) -> Result<Vec<Trail>, String> {
    let client = aws_sdk_cloudwatchlogs::Client::new(conf);
    let mut streams = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = client
            .describe_log_streams()
            .log_group_name(group)
            .set_next_token(token.clone());
        if let Some(u) = user {
            req = req.log_stream_name_prefix(u);
        }
        let page = rt.block_on(req.send()).map_err(|e| {
            format!(
                "DescribeLogStreams {group}: {}",
                crate::awsutil::error_text(&e)
            )
        })?;
        streams.extend(
            page.log_streams()
                .iter()
                .filter_map(|s| s.log_stream_name().map(str::to_string))
                .filter(|s| user.is_none_or(|u| u == s)),
        );
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    streams.sort();
    let mut out = Vec::new();
    for stream in streams {
        let mut lines = Vec::new();
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let page = rt
                .block_on(
                    client
                        .get_log_events()
                        .log_group_name(group)
                        .log_stream_name(&stream)
                        .start_from_head(true)
                        .set_next_token(token.clone())
                        .send(),
                )
                .map_err(|e| {
                    format!(
                        "GetLogEvents {group}/{stream}: {}",
                        crate::awsutil::error_text(&e)
                    )
                })?;
            for ev in page.events() {
                if let Some(m) = ev.message() {
                    // A retry after a crash may have delivered an event twice: the
                    // same session and sequence is the same event.
                    if seen.insert(identity(m)) {
                        lines.push(m.to_string());
                    }
                }
            }
            let next = page.next_forward_token().map(str::to_string);
            if page.events().is_empty() || next == token {
                break;
            }
            token = next;
        }
        out.push(Trail {
            name: format!("cloudwatch:{group}/{stream}"),
            user: stream,
            lines,
        });
    }
    Ok(out)
}

/// (sid, seq) of an event line, or the whole line for anything else.
fn identity(line: &str) -> String {
    match Stamp::of(line) {
        Some(Stamp {
            sid,
            seq: Some(seq),
            ..
        }) if !sid.is_empty() => format!("{sid}/{seq}"),
        _ => line.to_string(),
    }
}

fn read_s3(
    rt: &tokio::runtime::Runtime,
    conf: &aws_config::SdkConfig,
    bucket: &str,
    prefix: &str,
    user: Option<&str>,
) -> Result<Vec<Trail>, String> {
    let client = crate::audit::sinks::s3_client(conf);
    let list_prefix = match user {
        Some(u) => format!("{prefix}{u}/"),
        None => prefix.to_string(),
    };
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = rt
            .block_on(
                client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&list_prefix)
                    .set_continuation_token(token.clone())
                    .send(),
            )
            .map_err(|e| {
                format!(
                    "ListObjectsV2 s3://{bucket}/{list_prefix}: {}",
                    crate::awsutil::error_text(&e)
                )
            })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .filter(|k| k.ends_with(".jsonl")),
        );
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let mut out = Vec::new();
    for session in group_s3_keys(prefix, keys) {
        let mut lines: Vec<String> = Vec::new();
        // A chunk sent again after a crash may repeat events: each sequence number once.
        let mut next_seq = 0u64;
        for key in &session.keys {
            let text = crate::audit::sinks::get_object_text(rt, &client, bucket, key)
                .map_err(|e| e.to_string())?;
            for line in text.lines() {
                let seq = Stamp::of(line).and_then(|s| s.seq);
                match seq {
                    Some(n) if n < next_seq && !lines.is_empty() => continue,
                    Some(n) => next_seq = n + 1,
                    None => {}
                }
                lines.push(line.to_string());
            }
        }
        out.push(Trail {
            name: format!("s3://{bucket}/{}", session.name),
            user: session.user,
            lines,
        });
    }
    Ok(out)
}

/// One session's objects in S3, in order.
#[derive(Debug, PartialEq, Eq)]
struct S3Session {
    user: String,
    /// Its folder (chunks) or its object (whole-session objects).
    name: String,
    keys: Vec<String>,
}

/// Groups the listed keys under `prefix` by user and session: a session's chunks
/// (`<user>/YYYY/MM/DD/<sid>/<first seq>.jsonl`, possibly under several days) in sequence
/// order, or a whole-session object (`<user>/YYYY/MM/DD/<sid>.jsonl`). Other keys are not
/// the bastion's and are left out. Sessions come in the order of their first key.
fn group_s3_keys(prefix: &str, mut keys: Vec<String>) -> Vec<S3Session> {
    keys.sort();
    let mut order: Vec<(String, String)> = Vec::new();
    // (user, session id) → (its name, its chunks as (first seq, key)).
    type Chunks = (String, Vec<(u64, String)>);
    let mut sessions: BTreeMap<(String, String), Chunks> = BTreeMap::new();
    for key in keys {
        let Some(rel) = key.strip_prefix(prefix) else {
            continue;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let (user, sid, seq, name) = match parts.as_slice() {
            [user, y, m, d, sid, chunk] => {
                let Some(seq) = chunk
                    .strip_suffix(".jsonl")
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let name = format!("{prefix}{user}/{y}/{m}/{d}/{sid}/");
                (user.to_string(), sid.to_string(), seq, name)
            }
            [user, _, _, _, object] => {
                let Some(sid) = object.strip_suffix(".jsonl") else {
                    continue;
                };
                (user.to_string(), sid.to_string(), 0, key.clone())
            }
            _ => continue,
        };
        let id = (user, sid);
        let entry = sessions.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            (name, Vec::new())
        });
        entry.1.push((seq, key));
    }
    order
        .into_iter()
        .filter_map(|id| {
            let (name, mut chunks) = sessions.remove(&id)?;
            chunks.sort();
            Some(S3Session {
                user: id.0,
                name,
                keys: chunks.into_iter().map(|(_, k)| k).collect(),
            })
        })
        .collect()
}

/// Checks the hash chains of every trail read, like [`crate::audit::verify`].
pub fn verify(trails: &[Trail]) -> Result<VerifySummary, VerifyError> {
    let mut summary = VerifySummary {
        files: 0,
        events: 0,
        sessions: 0,
    };
    for t in trails {
        crate::audit::verify_lines(
            Path::new(&t.name),
            t.lines.iter().map(|l| l.as_bytes().to_vec()),
            &mut summary,
        )?;
    }
    Ok(summary)
}

/// One session as `audit show` prints it.
#[derive(Debug, Default, Clone)]
pub struct Session {
    pub sid: String,
    pub user: String,
    pub login: String,
    pub from: String,
    pub start: String,
    pub start_time: Option<SystemTime>,
    pub targets: Vec<String>,
    pub refused: Vec<String>,
    pub duration_ms: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub outcome: String,
}

/// Sessions of the trails (a refused login is a session without `session.start`), oldest first,
/// started at or after `since`.
pub fn sessions(trails: &[Trail], since: Option<SystemTime>) -> Vec<Session> {
    let mut by_id: BTreeMap<(String, String), Session> = BTreeMap::new();
    for t in trails {
        for line in &t.lines {
            let Some(Record { stamp, event }) = Record::parse(line) else {
                continue;
            };
            let s = by_id
                .entry((t.user.clone(), stamp.sid.clone()))
                .or_insert_with(|| Session {
                    sid: stamp.sid.clone(),
                    user: t.user.clone(),
                    outcome: "open".into(),
                    ..Default::default()
                });
            if s.start.is_empty() {
                s.start = stamp.ts.clone();
                s.start_time = humantime::parse_rfc3339(&s.start).ok();
            }
            if let Some(who) = event.who() {
                if s.login.is_empty() {
                    s.login = who.login.clone().unwrap_or_default();
                }
                if s.from.is_empty() {
                    s.from = who.remote_addr.clone();
                }
            }
            match event {
                AuditEvent::Auth(a) if !a.success && s.outcome == "open" => {
                    s.outcome = format!("login refused: {}", a.reason.unwrap_or_default());
                }
                AuditEvent::SessionStart(_) => s.outcome = "open".into(),
                AuditEvent::Port(p) if p.allowed && !s.targets.contains(&p.target) => {
                    s.targets.push(p.target);
                }
                AuditEvent::Port(p) if p.allowed => {}
                AuditEvent::Port(p) => s.refused.push(format!("{} ({})", p.target, p.reason)),
                AuditEvent::PortEnd(p) => {
                    s.bytes_in += p.bytes_in.unwrap_or(0);
                    s.bytes_out += p.bytes_out.unwrap_or(0);
                }
                AuditEvent::SessionEnd(e) => {
                    s.duration_ms = Some(e.duration_ms);
                    if !s.outcome.starts_with("login refused") {
                        s.outcome = if e.reason.is_empty() {
                            "ended".into()
                        } else {
                            e.reason
                        };
                    }
                }
                _ => {}
            }
        }
    }
    let mut out: Vec<Session> = by_id
        .into_values()
        .filter(|s| since.is_none_or(|t| s.start_time.is_some_and(|st| st >= t)))
        .collect();
    out.sort_by(|a, b| a.start.cmp(&b.start).then(a.sid.cmp(&b.sid)));
    out
}

impl Session {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("sid".into(), json!(self.sid));
        m.insert("user".into(), json!(self.user));
        m.insert("login".into(), json!(self.login));
        m.insert("from".into(), json!(self.from));
        m.insert("start".into(), json!(self.start));
        m.insert("to".into(), json!(self.targets));
        m.insert("refused".into(), json!(self.refused));
        m.insert("duration_ms".into(), json!(self.duration_ms));
        m.insert("bytes_in".into(), json!(self.bytes_in));
        m.insert("bytes_out".into(), json!(self.bytes_out));
        m.insert("outcome".into(), json!(self.outcome));
        Value::Object(m)
    }
}

/// The sessions as an aligned text table.
pub fn table(sessions: &[Session]) -> String {
    let mut rows = vec![[
        "START".to_string(),
        "USER".into(),
        "FROM".into(),
        "TO".into(),
        "DURATION".into(),
        "BYTES IN/OUT".into(),
        "OUTCOME".into(),
    ]];
    for s in sessions {
        let to = if s.targets.is_empty() && s.refused.is_empty() {
            "-".to_string()
        } else {
            let mut v = s.targets.clone();
            v.extend(s.refused.iter().map(|r| format!("refused {r}")));
            v.join(", ")
        };
        rows.push([
            s.start.clone(),
            if s.user == crate::audit::UNKNOWN_TRAIL && !s.login.is_empty() {
                format!("{} (unknown)", s.login)
            } else {
                s.user.clone()
            },
            if s.from.is_empty() {
                "-".into()
            } else {
                s.from.clone()
            },
            to,
            s.duration_ms
                .map(|ms| {
                    humantime::format_duration(Duration::from_millis(ms - ms % 1000)).to_string()
                })
                .map(|d| if d == "0s" { "<1s".into() } else { d })
                .unwrap_or_else(|| "-".into()),
            format!("{}/{}", s.bytes_in, s.bytes_out),
            s.outcome.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_keys_group_into_sessions_in_sequence_order_across_days() {
        let keys = [
            "audit/bob/2026/11/25/s2/0000000000.jsonl",
            "audit/alice/2026/11/26/s1/0000000010.jsonl",
            "audit/alice/2026/11/25/s1/0000000002.jsonl",
            "audit/alice/2026/11/25/s1/0000000000.jsonl",
            "audit/alice/2026/11/24/old.jsonl",
            "audit/alice/2026/11/25/s1/notes.txt",
            "audit/README",
        ]
        .map(String::from)
        .to_vec();
        let got = group_s3_keys("audit/", keys);
        let want = vec![
            S3Session {
                user: "alice".into(),
                name: "audit/alice/2026/11/24/old.jsonl".into(),
                keys: vec!["audit/alice/2026/11/24/old.jsonl".into()],
            },
            S3Session {
                user: "alice".into(),
                name: "audit/alice/2026/11/25/s1/".into(),
                keys: vec![
                    "audit/alice/2026/11/25/s1/0000000000.jsonl".into(),
                    "audit/alice/2026/11/25/s1/0000000002.jsonl".into(),
                    "audit/alice/2026/11/26/s1/0000000010.jsonl".into(),
                ],
            },
            S3Session {
                user: "bob".into(),
                name: "audit/bob/2026/11/25/s2/".into(),
                keys: vec!["audit/bob/2026/11/25/s2/0000000000.jsonl".into()],
            },
        ];
        assert_eq!(got, want);
    }
}
