//! What `/livez`, `/readyz` and `/metrics` say about this bastion: the server's side of
//! [`crate::obs::health::HealthView`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::obs::health::HealthView;
use crate::obs::metrics::Exposition;
use crate::server::monitor::{Phase, Shared};

/// The monitor's state and the shutdown phase, as the health endpoint sees them.
pub struct Health {
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
}

impl Health {
    pub fn new(shared: Arc<Shared>, phase: watch::Receiver<Phase>) -> Health {
        Health { shared, phase }
    }
}

impl HealthView for Health {
    fn not_live(&self) -> Option<String> {
        not_live(&self.shared)
    }

    fn not_ready(&self) -> Option<String> {
        unhealthy(&self.shared, *self.phase.borrow())
    }

    fn metrics(&self) -> String {
        render(&self.shared)
    }
}

/// Why the bastion cannot serve at all, if it cannot: what only a restart or a new
/// instance mends. Draining, full or an audit backlog are not among these.
fn not_live(shared: &Shared) -> Option<String> {
    if shared.config.sandbox.enabled && !shared.root_dir_ready() {
        return Some("the sandbox runtime directory is missing".into());
    }
    None
}

/// Why the bastion cannot take new sessions right now, if it cannot.
fn unhealthy(shared: &Shared, phase: Phase) -> Option<String> {
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
    let mut out = Exposition::default();
    let mut counter = |name: &str, help: &str, kind: &str, lines: Vec<(String, u64)>| {
        out.family(name, help, kind, lines)
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
    out.finish()
}
