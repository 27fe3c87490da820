//! Unit tests of the audit log: the writer, the chains, verify.

use super::*;
use serde_json::Map;

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
    let who = Who {
        login: Some(login.into()),
        user: Some("ubuntu".into()),
        key_fp: Some("SHA256:abc".into()),
        remote_addr: "192.0.2.1:50000".into(),
    };
    let body = event::Auth {
        who,
        success: true,
        ..Default::default()
    };
    Event::new(sid, trail, AuditEvent::Auth(Box::new(body)))
}

/// A `port` event to `target`.
fn port(sid: &str, trail: &str, target: &str, allowed: bool) -> Event {
    let body = event::Port {
        target: target.into(),
        addr: Some("10.0.0.5:5432".into()),
        allowed,
        ..Default::default()
    };
    Event::new(sid, trail, AuditEvent::Port(body))
}

/// A `session.end` event that took `duration_ms`.
fn end(sid: &str, trail: &str, duration_ms: u64) -> Event {
    let body = event::SessionEnd {
        duration_ms,
        ..Default::default()
    };
    Event::new(sid, trail, AuditEvent::SessionEnd(body))
}

/// A `refused` event.
fn refused(sid: &str, trail: &str) -> Event {
    let body = event::Refused {
        what: "shell".into(),
        ..Default::default()
    };
    Event::new(sid, trail, AuditEvent::Refused(body))
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
            let ev = port(sid, trail, "db.internal:5432", i % 2 == 0);
            log.write(ev, false).await.unwrap();
        }
    }
    for sid in ["s1", "s2", "s4"] {
        let ev = end(sid, "alice", 42);
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
    log.write(refused("s9", &trail_name(None)), false)
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
async fn invalid_trail_is_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path(), false).unwrap();
    let ev = auth("s1", "../escape", "x");
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
        .write(port("s2", "alice", "t:1", true), false)
        .await
        .is_err());
    assert!(!log.healthy());

    fs::remove_dir(&path).unwrap();
    log.write(port("s2", "alice", "t:1", true), false)
        .await
        .unwrap();
    assert!(log.healthy());
    let all = lines(&path);
    assert_eq!(all.len(), 1);
    // The failed events did not use up seq 0.
    assert_eq!(parse(&all[0])["seq"], 0);
    assert_eq!(parse(&all[0])["prev"], GENESIS_PREV);
    assert_eq!(parse(&all[0])["event"], "port");
    log.write(end("s2", "alice", 1), true).await.unwrap();
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
        log.write(refused("filler", &format!("u{i}")), false)
            .await
            .unwrap();
    }
    let saved = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();

    let err = log
        .write(port("s1", "alice", "a:1", true), true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuditError::Io { path: p, .. } if p == &path),
        "{err}"
    );
    assert!(!log.healthy());

    fs::remove_dir(&path).unwrap();
    fs::write(&path, saved).unwrap();
    log.write(port("s1", "alice", "a:2", true), true)
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
        .write(port("s1", "alice", "t:1", true), false)
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
        .write(port("s1", "alice", "t:1", true), true)
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
    log.write_blocking(end("s1", "alice", 7), true).unwrap();
    let path = tmp.path().join("alice.jsonl");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o037, 0);
    assert_eq!(lines(&path).len(), 2);
    verify(&path).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_write_inside_a_runtime_does_not_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path(), true).unwrap();
    log.write_blocking(refused("s1", "_unknown"), false)
        .unwrap();
    log.write(refused("s1", "_unknown"), false).await.unwrap();
    assert_eq!(verify(tmp.path()).unwrap().events, 2);
}

#[tokio::test]
async fn end_session_restarts_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path(), false).unwrap();
    for _ in 0..3 {
        log.write(port("s1", "alice", "t:1", true), false)
            .await
            .unwrap();
    }
    log.write(port("s2", "alice", "t:1", true), false)
        .await
        .unwrap();
    log.end_session("s1");
    log.write(port("s1", "alice", "t:1", true), false)
        .await
        .unwrap();
    log.write(port("s2", "alice", "t:1", true), false)
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
        log.write(port("s1", "alice", "t:1", true), true)
            .await
            .unwrap();
    }
    // A crash mid-write leaves an incomplete line behind.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"event\":\"forw").unwrap();
    drop(f);
    let log = AuditLog::open(tmp.path(), false).unwrap();
    log.write(port("s7", "alice", "t:1", true), true)
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
                let trail = if t % 2 == 0 { "alice" } else { "bob" };
                let ev = port(&format!("s{t}"), trail, &format!("h:{i}"), true);
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

#[tokio::test]
async fn events_read_back_as_the_same_types() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path(), false).unwrap();
    let written = [
        auth("s1", "alice", "alice"),
        port("s1", "alice", "db:5432", false),
        refused("s1", "alice"),
        end("s1", "alice", 9),
    ];
    for e in &written {
        log.write(e.clone(), false).await.unwrap();
    }
    let path = tmp.path().join("alice.jsonl");
    let read: Vec<Record> = lines(&path)
        .iter()
        .map(|l| Record::parse(l).unwrap())
        .collect();
    let events: Vec<AuditEvent> = read.iter().map(|r| r.event.clone()).collect();
    let bodies: Vec<AuditEvent> = written.iter().map(|e| e.body.clone()).collect();
    assert_eq!(events, bodies);
    let seqs: Vec<Option<u64>> = read.iter().map(|r| r.stamp.seq).collect();
    assert_eq!(seqs, [Some(0), Some(1), Some(2), Some(3)]);
    assert_eq!(read[1].stamp.event, "port");
    // A field that is None is left out, not written as null.
    assert!(!lines(&path)[0].contains("null"), "{}", lines(&path)[0]);
}

#[test]
fn unknown_events_are_kept_as_other_and_non_events_are_none() {
    let line = r#"{"event":"shell.start","sid":"s1","seq":4,"ts":"2026-01-01T00:00:00.000Z","prev":"x","tty":"80x24"}"#;
    let record = Record::parse(line).unwrap();
    assert_eq!(record.event, AuditEvent::Other);
    assert_eq!(record.stamp.seq, Some(4));
    assert_eq!(record.stamp.event, "shell.start");
    assert!(Record::parse(r#"{"sid":"s1","seq":0}"#).is_none());
    assert!(Record::parse("not json").is_none());
    // A known event with a field of the wrong type is not silently misread.
    assert!(
        Record::parse(r#"{"event":"port.end","target":"a:1","addr":"b","bytes_in":"many"}"#)
            .is_none()
    );
}
