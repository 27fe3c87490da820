//! Key sources: "which keys may log in as this login, and who is that".
//!
//! Asked only by the monitor, only after the worker has verified that the
//! client holds the private key, and only about that one login: never "all
//! users". Sources are tried in the configured order; the first that
//! authorises the key wins.

pub mod authorized_keys;
mod command;
pub mod eic;
pub mod eic_verify;
mod file;
pub mod iam;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::keys::authorized_keys::{parse_authorized_keys, KeyOptions, PublicKeyBlob};
use crate::keys::eic::EicAuth;
use crate::keys::iam::{IamAuth, IamSource, SdkIam};

/// One `[[auth]]` entry: a source of authorized keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// `type = "file"`: `authorized_keys` files. Exactly one of `dir` and `file` is set.
    File {
        /// `dir`: a directory holding one `authorized_keys` file per login, named after the login.
        dir: Option<PathBuf>,
        /// `file`: one `authorized_keys` file, used for the logins in `logins`.
        file: Option<PathBuf>,
        /// `logins`: the logins `file` applies to; `"*"` means any login. Empty with `dir`.
        logins: Vec<String>,
    },
    /// `type = "command"`: a program compatible with OpenSSH's `AuthorizedKeysCommand`.
    Command {
        /// `command`: absolute program path followed by arguments, as written; the tokens
        /// `%u %f %k %t %%` are expanded when the command runs.
        command: String,
        /// `run_as`: the user the command runs as (default `"nobody"`).
        run_as: String,
        /// `timeout`: how long the command may run (default 10s).
        timeout: Duration,
    },
    /// `type = "iam"`: the SSH public keys IAM users upload (`aws iam upload-ssh-public-key`).
    Iam(IamAuth),
    /// `type = "eic"`: keys pushed to this instance with EC2 Instance Connect
    /// (`aws ec2-instance-connect send-ssh-public-key`), read from the instance metadata
    /// service and verified as AWS's own on-instance scripts do (stricter where they are lax).
    Eic(EicAuth),
}

/// Output of an AuthorizedKeysCommand beyond this is an error, not a key list.
const MAX_COMMAND_OUTPUT: usize = 1024 * 1024;

/// What a source adds to the `auth` audit event (e.g. `iam_arn`): typed, in the audit
/// trail's own vocabulary.
pub use crate::audit::KeyDetail;

/// A key source that authorised a key.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The principal: the login itself for file and command sources, the IAM
    /// user name (as IAM spells it) for the iam source.
    pub user: String,
    /// Which source, for the audit trail: `file:/etc/bastion/users/alice`, `command:/usr/local/bin/keys`, `iam`.
    pub source: String,
    /// The options of the matching authorized_keys line.
    pub options: KeyOptions,
    /// The principal's groups, for `group:` principals in the policy.
    pub groups: Vec<String>,
    /// Extra fields for the audit event.
    pub audit: KeyDetail,
}

/// The answer for one (login, key).
#[derive(Debug)]
pub enum Lookup {
    Authorized(Authorized),
    /// `principal`: who the login turned out to be when some source knew it
    /// (a wrong or restricted key, rather than a login nobody knows); the
    /// refusal goes to that principal's trail.
    Denied {
        reason: String,
        principal: Option<String>,
        audit: KeyDetail,
        /// The kind of the last source that had something to say (`file`,
        /// `command`, `iam`), for the metrics.
        source: Option<&'static str>,
        /// Why, in one of a few words, for the metrics: `unknown_login`,
        /// `key_not_authorized`, `key_restricted` (known key, but expired, `from=`,
        /// inactive, not in the group…), `source_error` (a source could not answer),
        /// `invalid_login`.
        kind: &'static str,
    },
}

/// One configured key source: asked about one (login, key) at a time, in the configured order.
///
/// Adding a source: one file (or folder) that implements this trait, one variant in
/// [`AuthSource`], and one registration line in [`KeySources::new`].
pub trait KeySource: Send + Sync {
    /// The source's kind for the metrics and logs: `file`, `command`, `iam`, `eic`.
    fn kind(&self) -> &'static str;
    /// One line for the start-up announcement.
    fn describe(&self) -> String;
    /// What this source says about the query's key for its login.
    fn answer<'a>(&'a self, q: Query<'a>) -> BoxFuture<'a, Answer>;
}

/// The question put to each source: may `key` log in as `login`?
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The login the client asked for.
    pub login: &'a str,
    /// The key the client proved it holds.
    pub key: &'a PublicKeyBlob,
    /// The key's SHA-256 fingerprint, for messages and `%f`.
    pub fingerprint: &'a str,
}

/// Why a configured source could not be built: the `[[auth]]` key at fault, and why.
type BuildError = (&'static str, String);

/// The configured key sources, in order.
pub struct KeySources {
    sources: Vec<Arc<dyn KeySource>>,
    /// The iam sources again, for their metrics.
    iam: Vec<Arc<IamSource<SdkIam>>>,
}

/// What one source said about a login.
// A `Decided` answer carries the audit detail (a few hundred bytes); an answer lives for
// one lookup and is matched on at once, so boxing it would only cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// The source has nothing for this login.
    Unknown,
    /// authorized_keys text for this login, and where it came from.
    Keys {
        /// The text, checked line by line as an `authorized_keys` file.
        text: String,
        /// Where it came from, for the audit trail (`file:/path`, `command:/path`).
        origin: String,
    },
    /// The source decided by itself.
    Decided(Lookup),
    /// The source could not answer (why, for the log and the refusal).
    Failed(String),
}

impl KeySources {
    /// Builds the sources; errors are (index in `[[auth]]`, key, message).
    /// `want_groups`: the policy names groups, so sources that know groups
    /// should ask for them.
    pub fn new(
        config: &[AuthSource],
        want_groups: bool,
    ) -> Result<KeySources, Vec<(usize, &'static str, String)>> {
        let mut sources: Vec<Arc<dyn KeySource>> = Vec::new();
        let mut iam_sources = Vec::new();
        let mut errors = Vec::new();
        for (i, source) in config.iter().enumerate() {
            // The registration: one line per kind of source.
            let built: Result<Arc<dyn KeySource>, BuildError> = match source {
                AuthSource::File {
                    dir,
                    file: f,
                    logins,
                } => file::from_config(dir, f, logins),
                AuthSource::Command {
                    command: c,
                    run_as,
                    timeout,
                } => command::from_config(c, run_as, *timeout),
                AuthSource::Iam(c) => iam::lookup::from_config(c, want_groups, &mut iam_sources),
                AuthSource::Eic(c) => eic::lookup::from_config(c),
            };
            match built {
                Ok(s) => sources.push(s),
                Err((key, message)) => errors.push((i, key, message)),
            }
        }
        if errors.is_empty() {
            Ok(KeySources {
                sources,
                iam: iam_sources,
            })
        } else {
            Err(errors)
        }
    }

    /// IAM lookups by answer, summed over the iam sources (for `/metrics`).
    pub fn iam_counts(&self) -> Vec<(&'static str, u64)> {
        self.sum_iam(|s| s.counts().lookups())
    }

    /// Failed IAM lookups by kind, summed over the iam sources.
    pub fn iam_error_counts(&self) -> Vec<(&'static str, u64)> {
        self.sum_iam(|s| s.counts().errors())
    }

    fn sum_iam(
        &self,
        f: impl Fn(&IamSource<SdkIam>) -> Vec<(&'static str, u64)>,
    ) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for src in &self.iam {
            for (k, v) in f(src) {
                match out.iter_mut().find(|(x, _)| *x == k) {
                    Some(e) => e.1 += v,
                    None => out.push((k, v)),
                }
            }
        }
        out
    }

    /// One line per source, for the start-up announcement.
    pub fn describe(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.describe()).collect()
    }

    /// Decides whether `key` may log in as `login` from `peer`.
    pub async fn authorize(&self, login: &str, key: &PublicKeyBlob, peer: IpAddr) -> Lookup {
        let fingerprint = key.fingerprint();
        let mut known_login = false;
        let mut principal: Option<String> = None;
        let mut audit = KeyDetail::default();
        let mut reasons: Vec<String> = Vec::new();
        let mut answered: Option<&'static str> = None;
        let mut decided_kind: Option<&'static str> = None;
        let (mut failed, mut restricted) = (false, false);
        for source in &self.sources {
            let (text, origin) = match source
                .answer(Query {
                    login,
                    key,
                    fingerprint: &fingerprint,
                })
                .await
            {
                Answer::Unknown => continue,
                Answer::Failed(why) => {
                    failed = true;
                    answered = Some(source.kind());
                    tracing::warn!(login, error = %why, "key source failed");
                    reasons.push(why);
                    continue;
                }
                Answer::Decided(Lookup::Authorized(a)) => return Lookup::Authorized(a),
                Answer::Decided(Lookup::Denied {
                    reason,
                    principal: p,
                    audit: fields,
                    kind,
                    ..
                }) => {
                    if kind == "key_restricted" {
                        restricted = true;
                    } else {
                        decided_kind = decided_kind.or(Some(kind));
                    }
                    answered = Some(source.kind());
                    reasons.push(reason);
                    principal = principal.or(p);
                    audit.extend(fields);
                    continue;
                }
                Answer::Keys { text, origin } => {
                    answered = Some(source.kind());
                    (text, origin)
                }
            };
            let parsed = parse_authorized_keys(&text);
            for bad in &parsed.errors {
                tracing::warn!(origin = %origin, line = bad.line, error = %bad.error, "skipping authorized_keys line");
            }
            if !parsed.keys.is_empty() {
                known_login = true;
            }
            for entry in parsed.keys.iter().filter(|e| e.key.blob == key.blob) {
                if entry.options.expired(SystemTime::now()) {
                    let when = entry
                        .options
                        .expiry
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .unwrap_or_default();
                    reasons.push(format!(
                        "key {fingerprint} expired at {when} ({origin} line {})",
                        entry.line
                    ));
                    restricted = true;
                    continue;
                }
                if !entry.options.from_allows(peer) {
                    reasons.push(format!(
                        "the key's from=\"{}\" restriction does not allow {peer} ({origin} line {})",
                        entry.options.from.as_deref().unwrap_or(""),
                        entry.line
                    ));
                    restricted = true;
                    continue;
                }
                return Lookup::Authorized(Authorized {
                    user: login.to_string(),
                    source: origin,
                    options: entry.options.clone(),
                    groups: Vec::new(),
                    audit: KeyDetail::default(),
                });
            }
        }
        let reason = if !reasons.is_empty() {
            reasons.join("; ")
        } else if known_login {
            format!("key {fingerprint} is not authorized for {login}")
        } else {
            format!("no key source knows the login {login}")
        };
        let known = known_login || !reasons.is_empty();
        let kind = if restricted {
            "key_restricted"
        } else if failed {
            "source_error"
        } else if known_login {
            "key_not_authorized"
        } else {
            decided_kind.unwrap_or("unknown_login")
        };
        Lookup::Denied {
            reason,
            principal: principal.or_else(|| known.then(|| login.to_string())),
            audit,
            source: answered,
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIrvfN7B7bWkTt3WJoN7kmqjxj0YGhMRwDbyUuMWEfuV test";

    #[tokio::test]
    async fn dir_source_authorizes_and_explains() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("alice"),
            format!("{KEY}\nexpiry-time=\"20200101\" {KEY}\n"),
        )
        .unwrap();
        let sources = KeySources::new(
            &[AuthSource::File {
                dir: Some(dir.path().into()),
                file: None,
                logins: vec![],
            }],
            false,
        )
        .unwrap();
        let key = PublicKeyBlob::from_openssh(KEY).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            sources.authorize("alice", &key, ip).await,
            Lookup::Authorized(_)
        ));
        match sources.authorize("bob", &key, ip).await {
            Lookup::Denied {
                reason,
                principal,
                kind,
                ..
            } => {
                assert_eq!(principal, None);
                assert_eq!(kind, "unknown_login");
                assert!(reason.contains("no key source knows"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(
            dir.path().join("carol"),
            format!("expiry-time=\"20200101\" {KEY}\n"),
        )
        .unwrap();
        match sources.authorize("carol", &key, ip).await {
            Lookup::Denied {
                reason,
                principal,
                kind,
                ..
            } => {
                assert_eq!(principal.as_deref(), Some("carol"));
                assert_eq!(kind, "key_restricted");
                assert!(reason.contains("expired"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
