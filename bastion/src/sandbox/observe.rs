//! What the kernel says about a running worker, read by the monitor from
//! outside (`/proc`), for the audit trail.

/// What `/proc/<pid>/status` and `/proc/<pid>/ns` say about a worker, read
/// by the monitor from outside: the audit trail records what the kernel
/// reports, not what the worker claims.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Observed {
    /// Whether the sandbox is switched on (`sandbox.enabled`).
    pub enabled: bool,
    /// The worker's effective uid.
    pub uid: Option<u32>,
    /// `NoNewPrivs:`.
    pub no_new_privs: Option<bool>,
    /// `Seccomp:` (2 = filter).
    pub seccomp: Option<u32>,
    /// `CapEff:`, in hex as the kernel shows it.
    pub cap_eff: Option<String>,
    /// Whether its net namespace differs from the monitor's.
    pub netns_isolated: bool,
    /// Whether its mount namespace differs from the monitor's.
    pub mntns_isolated: bool,
    /// Whether its pid namespace differs from the monitor's.
    pub pidns_isolated: bool,
}

/// Reads the sandbox facts of process `pid` from /proc.
pub fn observe(pid: i32, enabled: bool) -> Observed {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let differs = |ns: &str| {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"));
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"));
        matches!((theirs, ours), (Ok(a), Ok(b)) if a != b)
    };
    Observed {
        enabled,
        uid: field("Uid:").and_then(|v| v.split_whitespace().nth(1)?.parse().ok()),
        no_new_privs: field("NoNewPrivs:").map(|v| v == "1"),
        seccomp: field("Seccomp:").and_then(|v| v.parse().ok()),
        cap_eff: field("CapEff:"),
        netns_isolated: differs("net"),
        mntns_isolated: differs("mnt"),
        pidns_isolated: differs("pid"),
    }
}
