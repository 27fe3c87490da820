//! Key sources: "which keys may log in as this login, and who is that".
//!
//! Asked only by the monitor, only after the worker has verified that the
//! client holds the private key, and only about that one login: never "all
//! users". Sources are tried in the configured order; the first that
//! authorises the key wins.

pub mod authorized_keys;
pub mod eic;
pub mod eic_verify;
pub mod iam;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use tokio::io::AsyncReadExt;

use crate::keys::authorized_keys::{parse_authorized_keys, KeyOptions, PublicKeyBlob};
use crate::keys::eic::{EicAuth, EicSource};
use crate::keys::iam::{Freshness, IamAuth, IamSource, Record, SdkIam};

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

/// Extra fields a source adds to the `auth` audit event (e.g. `iam_arn`).
pub type AuditFields = Vec<(&'static str, Value)>;

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
    pub audit: AuditFields,
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
        audit: AuditFields,
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

enum Source {
    Dir(PathBuf),
    File {
        path: PathBuf,
        logins: Vec<String>,
    },
    Command {
        argv: Vec<String>,
        uid: u32,
        gid: u32,
        timeout: Duration,
    },
    Iam(Arc<IamSource<SdkIam>>),
    Eic(Arc<EicSource>),
}

/// The configured key sources, in order.
pub struct KeySources {
    sources: Vec<Source>,
}

/// What one source said about a login.
enum Answer {
    /// The source has nothing for this login.
    Unknown,
    /// authorized_keys text for this login, and where it came from.
    Keys {
        text: String,
        origin: String,
    },
    /// The source decided by itself.
    Decided(Lookup),
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
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for (i, source) in config.iter().enumerate() {
            match source {
                AuthSource::File { dir: Some(dir), .. } => sources.push(Source::Dir(dir.clone())),
                AuthSource::File {
                    file: Some(path),
                    logins,
                    ..
                } => sources.push(Source::File {
                    path: path.clone(),
                    logins: logins.clone(),
                }),
                AuthSource::File { .. } => {
                    errors.push((i, "dir", "a file source needs `dir` or `file`".to_string()))
                }
                AuthSource::Command {
                    command,
                    run_as,
                    timeout,
                } => {
                    let argv: Vec<String> =
                        command.split_whitespace().map(str::to_string).collect();
                    match nix::unistd::User::from_name(run_as) {
                        Ok(Some(user)) => sources.push(Source::Command {
                            argv,
                            uid: user.uid.as_raw(),
                            gid: user.gid.as_raw(),
                            timeout: *timeout,
                        }),
                        Ok(None) => errors.push((
                            i,
                            "run_as",
                            format!("no such user {run_as:?} on this system"),
                        )),
                        Err(e) => {
                            errors.push((i, "run_as", format!("looking up user {run_as:?}: {e}")))
                        }
                    }
                }
                AuthSource::Iam(c) => sources.push(Source::Iam(Arc::new(IamSource::new(
                    SdkIam::new(c.assume_role_arn.clone(), c.timeout),
                    iam::Settings::from_config(c, want_groups),
                )))),
                AuthSource::Eic(c) => match EicSource::from_config(c) {
                    Ok(src) => sources.push(Source::Eic(Arc::new(src))),
                    Err(e) => errors.push((i, "ca_bundle", e)),
                },
            }
        }
        if errors.is_empty() {
            Ok(KeySources { sources })
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
        for s in &self.sources {
            if let Source::Iam(src) = s {
                for (k, v) in f(src) {
                    match out.iter_mut().find(|(x, _)| *x == k) {
                        Some(e) => e.1 += v,
                        None => out.push((k, v)),
                    }
                }
            }
        }
        out
    }

    /// One line per source, for the start-up announcement.
    pub fn describe(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|s| match s {
                Source::Dir(d) => format!("file: {}/<login>", d.display()),
                Source::File { path, logins } => {
                    format!("file: {} for {}", path.display(), logins.join(", "))
                }
                Source::Command { argv, .. } => format!("command: {}", argv.join(" ")),
                Source::Iam(src) => {
                    let s = src.settings();
                    format!(
                        "iam: {}, cache {} (stale up to {})",
                        if s.groups.is_empty() {
                            "any IAM user".to_string()
                        } else {
                            format!("members of {}", s.groups.join(", "))
                        },
                        humantime::format_duration(s.cache_ttl),
                        humantime::format_duration(s.stale_ttl)
                    )
                }
                Source::Eic(src) => format!(
                    "eic: keys pushed with EC2 Instance Connect, read from the instance metadata service, {} trust anchors",
                    src.anchors()
                ),
            })
            .collect()
    }

    /// Decides whether `key` may log in as `login` from `peer`.
    pub async fn authorize(&self, login: &str, key: &PublicKeyBlob, peer: IpAddr) -> Lookup {
        let fingerprint = key.fingerprint();
        let mut known_login = false;
        let mut principal: Option<String> = None;
        let mut audit: AuditFields = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        let mut answered: Option<&'static str> = None;
        let mut decided_kind: Option<&'static str> = None;
        let (mut failed, mut restricted) = (false, false);
        for source in &self.sources {
            let (text, origin) = match source.keys_for(login, key, &fingerprint).await {
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
                    audit: Vec::new(),
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

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Dir(_) | Source::File { .. } => "file",
            Source::Command { .. } => "command",
            Source::Iam(_) => "iam",
            Source::Eic(_) => "eic",
        }
    }

    async fn keys_for(&self, login: &str, key: &PublicKeyBlob, fingerprint: &str) -> Answer {
        match self {
            Source::Dir(dir) => read_keys_file(dir.join(login)).await,
            Source::File { path, logins } => {
                if logins.iter().any(|l| l == "*" || l == login) {
                    read_keys_file(path.clone()).await
                } else {
                    Answer::Unknown
                }
            }
            Source::Command {
                argv,
                uid,
                gid,
                timeout,
            } => run_command(argv, *uid, *gid, *timeout, login, key, fingerprint).await,
            Source::Iam(src) => iam_decide(src, login, key, fingerprint).await,
            Source::Eic(src) => eic_decide(src, login, key, fingerprint).await,
        }
    }
}

/// The eic source's decision: a verified record for this login holding this key.
async fn eic_decide(
    src: &EicSource,
    login: &str,
    key: &PublicKeyBlob,
    fingerprint: &str,
) -> Answer {
    if crate::keys::eic::validate_os_user(login).is_err() {
        // Not a name EC2 Instance Connect could have stored: no IMDS request.
        return Answer::Unknown;
    }
    let found = match src.keys_for(login, SystemTime::now()).await {
        Ok(f) => f,
        Err(failure) => {
            return Answer::Failed(format!("eic: {}; refusing (fail closed)", failure.reason))
        }
    };
    let deny = |reason: String, kind: &'static str, audit: AuditFields| {
        Answer::Decided(Lookup::Denied {
            reason,
            principal: Some(login.to_string()),
            audit,
            source: Some("eic"),
            kind,
        })
    };
    let instance = Value::from(found.instance_id.clone());
    if let Some(ok) = found.accepted.iter().find(|a| a.key.blob == key.blob) {
        let r = &ok.record;
        let mut audit: AuditFields = vec![
            ("eic_instance", instance),
            (
                "eic_expires",
                Value::from(humantime::format_rfc3339_seconds(r.expires).to_string()),
            ),
        ];
        if let Some(fp) = &found.signer {
            audit.push(("eic_signer", Value::from(fp.clone())));
        }
        if let Some(c) = &r.caller {
            audit.push(("eic_caller", Value::from(c.clone())));
        }
        if let Some(q) = &r.request {
            audit.push(("eic_request", Value::from(q.clone())));
        }
        return Answer::Decided(Lookup::Authorized(Authorized {
            user: login.to_string(),
            source: "eic".to_string(),
            options: KeyOptions::default(),
            groups: Vec::new(),
            audit,
        }));
    }
    let same_key = |line: &Option<String>| {
        line.as_deref()
            .and_then(|l| PublicKeyBlob::from_openssh(l).ok())
            .is_some_and(|k| k.blob == key.blob)
    };
    if let Some((_, why)) = found.rejected.iter().find(|(line, _)| same_key(line)) {
        return deny(
            format!(
                "eic: the EC2 Instance Connect record for key {fingerprint} was rejected: {why}"
            ),
            "key_restricted",
            vec![("eic_instance", instance)],
        );
    }
    let total = found.accepted.len() + found.rejected.len();
    if total == 0 {
        return deny(
            format!(
                "eic: no EC2 Instance Connect key was pushed for {login} to this instance ({}) in the last 60 s",
                found.instance_id
            ),
            "unknown_login",
            vec![("eic_instance", instance)],
        );
    }
    let mut reason = format!(
        "eic: key {fingerprint} is not among the {total} EC2 Instance Connect keys pushed for {login}"
    );
    if !found.rejected.is_empty() {
        let whys: Vec<&str> = found.rejected.iter().map(|(_, w)| w.as_str()).collect();
        reason.push_str(&format!(" ({} rejected: {})", whys.len(), whys.join("; ")));
    }
    deny(
        reason,
        "key_not_authorized",
        vec![("eic_instance", instance)],
    )
}

/// The iam source's decision: the IAM user the login names (widdix spellings
/// allowed), its Active keys compared by key material, its groups.
async fn iam_decide<A: iam::IamApi>(
    src: &IamSource<A>,
    login: &str,
    key: &PublicKeyBlob,
    fingerprint: &str,
) -> Answer {
    let name = iam::iam_user_for_login(login);
    if let Err(why) = iam::validate_user_name(&name) {
        // Not a name IAM could hold: no call is made.
        tracing::debug!(login, why = %why, "login is not an IAM user name");
        return Answer::Unknown;
    }
    let answer = match src.lookup(&name).await {
        Ok(a) => a,
        Err(outage) => {
            return Answer::Failed(format!(
                "iam: cannot check IAM user {name}: {outage}; refusing (fail closed)"
            ))
        }
    };
    let user = match &*answer.record {
        Record::NoSuchUser => return Answer::Unknown,
        Record::User(u) => u,
    };
    let mut audit: AuditFields = vec![
        ("iam_user", Value::from(user.name.clone())),
        ("iam_arn", Value::from(user.arn.clone())),
        ("iam_cache", Value::from(answer.freshness.word())),
    ];
    if let Freshness::Cached { age } | Freshness::Stale { age, .. } = &answer.freshness {
        audit.push(("iam_cache_age_s", Value::from(age.as_secs())));
    }
    let stale_note = match &answer.freshness {
        Freshness::Stale { why, .. } => {
            audit.push(("iam_stale_reason", Value::from(why.clone())));
            format!(" (from a stale cache: {why})")
        }
        _ => String::new(),
    };
    let deny = |reason: String, audit: AuditFields| {
        Answer::Decided(Lookup::Denied {
            reason: format!("{reason}{stale_note}"),
            principal: Some(user.name.clone()),
            audit,
            source: Some("iam"),
            kind: "key_restricted",
        })
    };
    let required = &src.settings().groups;
    let Some(keys) = &user.keys else {
        return deny(
            format!(
                "IAM user {} is not in any of the groups {}",
                user.name,
                required.join(", ")
            ),
            audit,
        );
    };
    let matching = keys
        .iter()
        .find(|k| PublicKeyBlob::from_openssh(&k.body).is_ok_and(|parsed| parsed.blob == key.blob));
    match matching {
        None => deny(
            format!(
                "key {fingerprint} is not among IAM user {}'s SSH public keys ({} uploaded)",
                user.name,
                keys.len()
            ),
            audit,
        ),
        Some(k) if !k.active => {
            audit.push(("iam_key_id", Value::from(k.id.clone())));
            deny(
                format!(
                    "key {fingerprint} ({}) of IAM user {} is Inactive",
                    k.id, user.name
                ),
                audit,
            )
        }
        Some(k) => {
            audit.push(("iam_key_id", Value::from(k.id.clone())));
            if let Some(g) = &user.groups {
                audit.push(("iam_groups", Value::from(g.clone())));
            }
            if let Freshness::Stale { .. } = answer.freshness {
                tracing::warn!(login, user = %user.name, "login allowed from a stale IAM answer");
            }
            Answer::Decided(Lookup::Authorized(Authorized {
                user: user.name.clone(),
                source: "iam".to_string(),
                options: KeyOptions::default(),
                groups: user.groups.clone().unwrap_or_default(),
                audit,
            }))
        }
    }
}

async fn read_keys_file(path: PathBuf) -> Answer {
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Answer::Keys {
            text,
            origin: format!("file:{}", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Answer::Unknown,
        Err(e) => Answer::Failed(format!("reading {}: {e}", path.display())),
    }
}

/// Expands OpenSSH AuthorizedKeysCommand tokens in one argument.
pub fn expand_tokens(arg: &str, login: &str, key: &PublicKeyBlob, fingerprint: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut chars = arg.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(login),
            Some('f') => out.push_str(fingerprint),
            Some('k') => out.push_str(key.to_openssh().split_whitespace().nth(1).unwrap_or("")),
            Some('t') => out.push_str(&key.algo),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

async fn run_command(
    argv: &[String],
    uid: u32,
    gid: u32,
    timeout: Duration,
    login: &str,
    key: &PublicKeyBlob,
    fingerprint: &str,
) -> Answer {
    let Some((program, args)) = argv.split_first() else {
        return Answer::Failed("empty command".into());
    };
    let origin = format!("command:{program}");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(
        args.iter()
            .map(|a| expand_tokens(a, login, key, fingerprint)),
    )
    .env_clear()
    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    .uid(uid)
    .gid(gid)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Answer::Failed(format!("{origin}: cannot start: {e}")),
    };
    let Some(stdout) = child.stdout.take() else {
        return Answer::Failed(format!("{origin}: no stdout"));
    };
    let work = async {
        let mut out = Vec::new();
        let read = stdout
            .take(MAX_COMMAND_OUTPUT as u64 + 1)
            .read_to_end(&mut out)
            .await;
        let status = child.wait().await;
        (read, status, out)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Answer::Failed(format!(
            "{origin}: timed out after {}",
            humantime::format_duration(timeout)
        )),
        Ok((Err(e), _, _)) => Answer::Failed(format!("{origin}: reading its output: {e}")),
        Ok((_, Err(e), _)) => Answer::Failed(format!("{origin}: {e}")),
        Ok((Ok(_), Ok(status), out)) => {
            if !status.success() {
                Answer::Failed(format!("{origin}: exited with {status}"))
            } else if out.len() > MAX_COMMAND_OUTPUT {
                Answer::Failed(format!(
                    "{origin}: printed more than {MAX_COMMAND_OUTPUT} bytes"
                ))
            } else if out.iter().all(|b| b.is_ascii_whitespace()) {
                Answer::Unknown
            } else {
                Answer::Keys {
                    text: String::from_utf8_lossy(&out).into_owned(),
                    origin,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIrvfN7B7bWkTt3WJoN7kmqjxj0YGhMRwDbyUuMWEfuV test";

    #[test]
    fn tokens_expand_like_openssh() {
        let key = PublicKeyBlob::from_openssh(KEY).unwrap();
        let got = expand_tokens("%u:%t:%f:%%:%x:%", "alice", &key, "SHA256:abc");
        assert_eq!(got, "alice:ssh-ed25519:SHA256:abc:%:%x:%");
        assert_eq!(
            expand_tokens("%k", "a", &key, ""),
            "AAAAC3NzaC1lZDI1NTE5AAAAIIrvfN7B7bWkTt3WJoN7kmqjxj0YGhMRwDbyUuMWEfuV"
        );
    }

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
