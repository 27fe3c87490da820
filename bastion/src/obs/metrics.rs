//! Counters kept by the monitor and shown at `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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

/// Prometheus text, one metric family at a time.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Adds a family: its `# HELP` and `# TYPE` lines, then one line per (labels, value);
    /// labels are `{name="value",…}` or empty.
    pub fn family(&mut self, name: &str, help: &str, kind: &str, lines: Vec<(String, u64)>) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(self.out, "{name}{labels} {v}");
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}
