//! `health_listen`: liveness and readiness for load balancers and
//! orchestrators, and `/metrics` in the Prometheus text format, over plain
//! HTTP/1.1 (one request per connection).
//!
//! - `/livez`: the process is up and able to serve (its runtime answers, and
//!   the sandbox runtime directory exists). Busy, draining or an audit backlog
//!   do not make it fail: what watches it (an Auto Scaling group, systemd, a
//!   container HEALTHCHECK) replaces or restarts the bastion, which would kill
//!   live sessions and lose nothing else.
//! - `/readyz` (and `/healthz`, its older name): the bastion takes new
//!   sessions: for a load balancer's target health.
//!
//! Neither ever calls AWS: a load balancer's health checks must not cost IAM
//! calls, and an IAM outage must not take healthy bastions out of service
//! (the cache rides it out; see [`crate::keys::iam`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::server::monitor::{Phase, Shared};

/// `bastion healthcheck`: asks our own `path` (`/livez` or `/readyz`) at `addr` (an
/// unspecified address means this host's loopback) and returns the status line and body
/// when it is `200`, or why not. Blocking, for a container's HEALTHCHECK.
pub fn probe(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    s.take(4096)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(format!("{status}: {body}"))
    } else if status.is_empty() {
        Err(format!("{addr}: no answer"))
    } else {
        Err(format!("{addr}: {status}: {body}"))
    }
}

/// A key source's kind, the label value: `file:/etc/…`, `command:/usr/…` -> `file`, `command`.
fn source_kind(source: &str) -> String {
    source.split(':').next().unwrap_or("none").to_string()
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Counters kept by the monitor. Label values are from small fixed sets.
#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub dropped: AtomicU64,
    /// (source, result) -> count; source is `iam`, `file`, `command` or `none`.
    pub auth: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (source, reason kind) -> refused logins.
    pub refusals: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// decision (`allowed`, `denied`, `failed`) -> count.
    pub forwards: Mutex<BTreeMap<&'static str, u64>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub spawn_micros: AtomicU64,
    pub spawns: AtomicU64,
}

impl Metrics {
    pub fn auth(&self, source: &str, result: &'static str) {
        if let Ok(mut m) = self.auth.lock() {
            *m.entry((source_kind(source), result)).or_default() += 1;
        }
    }

    pub fn refusal(&self, source: &str, kind: &'static str) {
        if let Ok(mut m) = self.refusals.lock() {
            *m.entry((source_kind(source), kind)).or_default() += 1;
        }
    }

    pub fn forward(&self, decision: &'static str) {
        if let Ok(mut m) = self.forwards.lock() {
            *m.entry(decision).or_default() += 1;
        }
    }

    pub fn spawned(&self, took: Duration) {
        bump(&self.spawns);
        self.spawn_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Why the bastion cannot serve at all, if it cannot: what only a restart or a new
/// instance mends. Draining, full or an audit backlog are not among these.
pub fn not_live(shared: &Shared) -> Option<String> {
    if shared.config.sandbox.enabled && !shared.root_dir_ready() {
        return Some("the sandbox runtime directory is missing".into());
    }
    None
}

/// Why the bastion cannot take new sessions right now, if it cannot.
pub fn unhealthy(shared: &Shared, phase: Phase) -> Option<String> {
    match phase {
        Phase::Running => {}
        Phase::Leaving => {
            return Some(
                "leaving: shutting down, still accepting connections until drain_delay ends".into(),
            )
        }
        Phase::Draining | Phase::Closing => {
            return Some("draining: shutting down, not accepting connections".into())
        }
    }
    if !shared.audit.healthy() {
        return Some("the audit trail cannot be written".into());
    }
    if let Some(why) = shared.audit.shipping().spool_full() {
        return Some(why);
    }
    let (sessions, max) = shared.sessions();
    if sessions >= max {
        return Some(format!("full: {sessions} of {max} sessions"));
    }
    not_live(shared)
}

fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let mut out = String::with_capacity(2048);
    let mut counter = |name: &str, help: &str, kind: &str, lines: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let (sessions, max) = shared.sessions();
    counter(
        "bastion_connections_total",
        "TCP connections accepted.",
        "counter",
        vec![(String::new(), m.connections.load(Ordering::Relaxed))],
    );
    counter(
        "bastion_connections_dropped_total",
        "Connections dropped by admission control.",
        "counter",
        vec![(String::new(), m.dropped.load(Ordering::Relaxed))],
    );
    counter(
        "bastion_sessions",
        "Connections open now.",
        "gauge",
        vec![(String::new(), sessions as u64)],
    );
    counter(
        "bastion_sessions_max",
        "limits.max_sessions.",
        "gauge",
        vec![(String::new(), max as u64)],
    );
    let auth = m.auth.lock().map(|a| a.clone()).unwrap_or_default();
    counter(
        "bastion_auth_total",
        "Publickey attempts with a proven key, by key source and result.",
        "counter",
        auth.into_iter()
            .map(|((s, r), v)| (format!("{{source=\"{s}\",result=\"{r}\"}}"), v))
            .collect(),
    );
    let refusals = m.refusals.lock().map(|a| a.clone()).unwrap_or_default();
    counter(
        "bastion_auth_refusals_total",
        "Refused logins, by key source and reason.",
        "counter",
        refusals
            .into_iter()
            .map(|((s, r), v)| (format!("{{source=\"{s}\",reason=\"{r}\"}}"), v))
            .collect(),
    );
    let fwd = m.forwards.lock().map(|a| a.clone()).unwrap_or_default();
    counter(
        "bastion_forwards_total",
        "Onward connection requests, by decision.",
        "counter",
        fwd.into_iter()
            .map(|(d, v)| (format!("{{decision=\"{d}\"}}"), v))
            .collect(),
    );
    counter(
        "bastion_forward_bytes_total",
        "Bytes relayed by closed forwards (in: from the client).",
        "counter",
        vec![
            (
                "{direction=\"in\"}".into(),
                m.bytes_in.load(Ordering::Relaxed),
            ),
            (
                "{direction=\"out\"}".into(),
                m.bytes_out.load(Ordering::Relaxed),
            ),
        ],
    );
    counter(
        "bastion_worker_spawn_microseconds_total",
        "Time spent starting sandboxed workers.",
        "counter",
        vec![(String::new(), m.spawn_micros.load(Ordering::Relaxed))],
    );
    counter(
        "bastion_worker_spawns_total",
        "Sandboxed workers started.",
        "counter",
        vec![(String::new(), m.spawns.load(Ordering::Relaxed))],
    );
    counter(
        "bastion_iam_lookups_total",
        "IAM key source lookups, by answer: fresh (IAM asked), cached, stale (IAM failed), outage (refused).",
        "counter",
        shared
            .sources
            .iam_counts()
            .into_iter()
            .map(|(k, v)| (format!("{{answer=\"{k}\"}}"), v))
            .collect(),
    );
    counter(
        "bastion_iam_errors_total",
        "Failed IAM lookups, by kind.",
        "counter",
        shared
            .sources
            .iam_error_counts()
            .into_iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v))
            .collect(),
    );
    let sinks = &shared.audit.shipping().sinks;
    let per_sink = |f: &dyn Fn(&crate::audit::sinks::SinkStats) -> u64| -> Vec<(String, u64)> {
        sinks
            .iter()
            .map(|s| (format!("{{sink=\"{}\"}}", s.name), f(s)))
            .collect()
    };
    counter(
        "bastion_audit_sink_up",
        "1 while the remote audit sink's last attempt succeeded.",
        "gauge",
        per_sink(&|s| u64::from(s.up.load(Ordering::Relaxed))),
    );
    counter(
        "bastion_audit_spool_bytes",
        "Audit trail bytes not yet shipped to the sink.",
        "gauge",
        per_sink(&|s| s.unshipped.load(Ordering::Relaxed)),
    );
    counter(
        "bastion_audit_shipped_events_total",
        "Audit events delivered to the sink.",
        "counter",
        per_sink(&|s| s.shipped.load(Ordering::Relaxed)),
    );
    counter(
        "bastion_audit_sink_errors_total",
        "Failed attempts to ship to the sink (each retried).",
        "counter",
        per_sink(&|s| s.errors.load(Ordering::Relaxed)),
    );
    out
}

/// Serves `/healthz` and `/metrics` until the monitor exits.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, phase: watch::Receiver<Phase>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let phase = *phase.borrow();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), answer(stream, &shared, phase)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared, phase: Phase) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // The request line is all we need; stop at its end or a full buffer.
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let verdict = |why: Option<String>| match why {
        None => ("200 OK", "ok\n".to_string(), "text/plain"),
        Some(why) => ("503 Service Unavailable", format!("{why}\n"), "text/plain"),
    };
    let (status, body, kind) = match (method, path) {
        ("GET" | "HEAD", "/readyz" | "/healthz") => verdict(unhealthy(shared, phase)),
        ("GET" | "HEAD", "/livez") => verdict(not_live(shared)),
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            render(shared),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found\n".into(), "text/plain"),
        _ => ("405 Method Not Allowed", "GET only\n".into(), "text/plain"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
