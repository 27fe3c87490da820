//! The audit trail's vocabulary: one typed enum, [`AuditEvent`], for every event the bastion
//! writes; serialised once by the writer and read back by the same types ([`Record`]) by
//! `audit show`, `audit read` and the sinks.
//!
//! On disk an event is one JSON object: the writer's own keys (`ts`, `event`, `sid`, `seq`,
//! `prev`, see [`Stamp`]) and the event's fields, all at the top level, keys sorted. A field
//! that is `None` is left out. Adding an event means adding a variant here (its name in
//! `#[serde(rename)]`) and a struct of its fields; readers that do not know a variant see
//! [`AuditEvent::Other`] and keep the line as it is.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who the event is about and where they came from, as far as the session knows it: before
/// authentication only the peer address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Who {
    /// The login name the client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// The principal the key source named (the IAM user, or the login itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SHA-256 fingerprint of the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fp: Option<String>,
    /// The client's address (after PROXY protocol, the real client).
    #[serde(default)]
    pub remote_addr: String,
}

/// Every event of the audit trail. The `event` key names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum AuditEvent {
    /// A public key was proven and judged (`success` says which way).
    #[serde(rename = "auth")]
    Auth(Box<Auth>),
    /// The login was accepted: the session is open.
    #[serde(rename = "session.start")]
    SessionStart(SessionStart),
    /// A forward was asked for (`ssh -J`, `-W`, `-L`) and decided; written before the connect.
    #[serde(rename = "port")]
    Port(Port),
    /// A forward ended, or failed to connect.
    #[serde(rename = "port.end")]
    PortEnd(PortEnd),
    /// The user's key was pushed to an instance with EC2 Instance Connect (or could not be).
    #[serde(rename = "eic.push")]
    EicPush(EicPush),
    /// The connection is over.
    #[serde(rename = "session.end")]
    SessionEnd(SessionEnd),
    /// The worker refused a request (a shell, an agent, …) or was stopped for asking too much.
    #[serde(rename = "refused")]
    Refused(Refused),
    /// An event this version does not know (read back only; never written).
    #[serde(other, skip_serializing)]
    Other,
}

impl AuditEvent {
    /// The `event` key's value.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::Auth(_) => "auth",
            AuditEvent::SessionStart(_) => "session.start",
            AuditEvent::Port(_) => "port",
            AuditEvent::PortEnd(_) => "port.end",
            AuditEvent::EicPush(_) => "eic.push",
            AuditEvent::SessionEnd(_) => "session.end",
            AuditEvent::Refused(_) => "refused",
            AuditEvent::Other => "other",
        }
    }

    /// Who the event is about.
    #[must_use]
    pub fn who(&self) -> Option<&Who> {
        match self {
            AuditEvent::Auth(e) => Some(&e.who),
            AuditEvent::SessionStart(e) => Some(&e.who),
            AuditEvent::Port(e) => Some(&e.who),
            AuditEvent::PortEnd(e) => Some(&e.who),
            AuditEvent::EicPush(e) => Some(&e.who),
            AuditEvent::SessionEnd(e) => Some(&e.who),
            AuditEvent::Refused(e) => Some(&e.who),
            AuditEvent::Other => None,
        }
    }
}

/// `auth`: one publickey attempt, after the signature was verified.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    #[serde(flatten)]
    pub who: Who,
    /// The key's algorithm, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The address the client connected to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<String>,
    pub success: bool,
    /// Why the key was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which source authorised the key: `file:/etc/bastion/users/alice`, `command:…`, `iam`, `eic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether the key's options allow port forwarding (accepted keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_forwarding: Option<bool>,
    /// The key's `permitopen=` destinations, `host:port` (`*` for any port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permitopen: Option<Vec<String>>,
    /// What the key source adds.
    #[serde(flatten)]
    pub detail: KeyDetail,
}

/// What a key source adds to an `auth` event. Each source fills its own fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyDetail {
    /// IAM: the IAM user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_user: Option<String>,
    /// IAM: the user's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_arn: Option<String>,
    /// IAM: how fresh the answer was (`fresh`, `cached`, `stale`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_cache: Option<String>,
    /// IAM: the cached answer's age in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_cache_age_s: Option<u64>,
    /// IAM: why a stale answer was used (the outage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_stale_reason: Option<String>,
    /// IAM: the SSH public key's id in IAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_key_id: Option<String>,
    /// IAM: the user's groups, when the policy asks for groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_groups: Option<Vec<String>>,
    /// EIC: the instance the record was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eic_instance: Option<String>,
    /// EIC: when the pushed key expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eic_expires: Option<String>,
    /// EIC: fingerprint of the certificate that signed the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eic_signer: Option<String>,
    /// EIC: who pushed the key (the caller's ARN, from the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eic_caller: Option<String>,
    /// EIC: the push's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eic_request: Option<String>,
}

impl KeyDetail {
    /// What `other` sets replaces what this holds: when several sources speak about one
    /// key, the later has the last word.
    pub fn extend(&mut self, other: KeyDetail) {
        macro_rules! later_wins {
            ($($field:ident),*) => {{
                let KeyDetail { $($field),* } = other;
                $( if $field.is_some() { self.$field = $field; } )*
            }};
        }
        later_wins!(
            iam_user,
            iam_arn,
            iam_cache,
            iam_cache_age_s,
            iam_stale_reason,
            iam_key_id,
            iam_groups,
            eic_instance,
            eic_expires,
            eic_signer,
            eic_caller,
            eic_request
        );
    }
}

/// `session.start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    #[serde(flatten)]
    pub who: Who,
    /// The key source that authorised the login.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<String>,
    /// The worker's pid (in the monitor's pid namespace).
    pub worker_pid: i32,
    /// The sandbox as observed from outside (`sandbox::Observed`: namespaces, uid, seccomp).
    #[serde(default)]
    pub sandbox: Value,
}

/// `port`: a forward decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Port {
    #[serde(flatten)]
    pub who: Who,
    /// What the client asked for, `host:port`.
    pub target: String,
    /// The address that will be connected, when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    pub allowed: bool,
    /// The rule that allowed it, or why not.
    pub reason: String,
    /// The originator address the client gave, as `host:port`.
    #[serde(default)]
    pub originator: String,
}

/// `port.end`: a forward closed, or its connect failed (`error`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortEnd {
    #[serde(flatten)]
    pub who: Who,
    pub target: String,
    pub addr: String,
    /// Bytes from the client to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Bytes from the target to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `eic.push`: one SendSSHPublicKey for one OS user (or a key that cannot be pushed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EicPush {
    #[serde(flatten)]
    pub who: Who,
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_user: Option<String>,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The AWS error code of a failed push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `session.end`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionEnd {
    #[serde(flatten)]
    pub who: Who,
    pub duration_ms: u64,
    /// Why it ended: `client disconnected`, `worker killed`, …
    pub reason: String,
    /// The worker's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// `refused`: a request the bastion does not serve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    #[serde(flatten)]
    pub who: Who,
    /// What was asked for: `shell`, `exec`, `agent`, `auth`, …
    pub what: String,
    pub reason: String,
}

/// The keys every line has: when, which event, which session, where in its chain.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Stamp {
    /// RFC 3339 UTC with milliseconds.
    #[serde(default)]
    pub ts: String,
    /// The event's name (as [`AuditEvent::name`]).
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub sid: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub prev: String,
}

impl Stamp {
    /// The stamp of a trail line; `None` if the line is not a JSON object.
    #[must_use]
    pub fn of(line: &str) -> Option<Stamp> {
        serde_json::from_str(line).ok()
    }
}

/// One line of a trail read back: the stamp and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub stamp: Stamp,
    pub event: AuditEvent,
}

impl Record {
    /// Parses one trail line; `None` for a line that is not an event.
    #[must_use]
    pub fn parse(line: &str) -> Option<Record> {
        let value: Value = serde_json::from_str(line).ok()?;
        let stamp = Stamp::deserialize(&value).ok()?;
        let event = AuditEvent::deserialize(value).ok()?;
        Some(Record { stamp, event })
    }
}
