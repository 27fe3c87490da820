//! `bastion authorized-keys LOGIN`: the iam key source as an OpenSSH
//! `AuthorizedKeysCommand` on ordinary hosts, a drop-in for widdix/aws-ec2-ssh's
//! `authorized_keys_command.sh` (same IAM lookup and cache semantics as the
//! bastion; no Unix users are created, no cron job syncs anything).
//!
//! It prints the login's Active IAM SSH keys, one per line, re-encoded from the
//! parsed key (so a key body can never smuggle `authorized_keys` options in),
//! and exits 0; nothing for an unknown user or a non-member. When IAM cannot
//! answer and no usable cached answer exists, it prints nothing and exits 1,
//! so sshd refuses the key (fail closed).
//!
//! Each sshd login starts a new process, so the memory cache does not help
//! here; `--cache-dir` keeps answers on disk, which both amortises IAM calls
//! across logins and keeps people logged in through an IAM outage (up to
//! `--stale-ttl`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::keys::authorized_keys::PublicKeyBlob;
use crate::keys::iam::{self, Freshness, IamSource, Record, SdkIam, Settings};

/// Settings from widdix's `/etc/aws-ec2-ssh.conf`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WiddixConf {
    /// `IAM_AUTHORIZED_GROUPS`: comma-separated groups whose members may log in.
    pub groups: Vec<String>,
    /// `ASSUMEROLE`: a role ARN to read IAM with (cross-account).
    pub assume_role: Option<String>,
    /// Keys that only steered widdix's user sync and mean nothing here.
    pub ignored: Vec<String>,
}

/// widdix keys that configure its cron-driven user sync (creating Unix users,
/// sudoers, local groups); there is nothing to sync here.
const WIDDIX_SYNC_KEYS: &[&str] = &[
    "LOCAL_MARKER_GROUP",
    "LOCAL_GROUPS",
    "SUDOERS_GROUPS",
    "SUDOERSGROUP",
    "SUDOERS_GROUPS_TAG",
    "USERADD_PROGRAM",
    "USERADD_ARGS",
    "USERDEL_PROGRAM",
    "USERDEL_ARGS",
    "DONOTSYNC",
];

/// Parses widdix's configuration file: shell assignments `KEY="value"`,
/// `KEY='value'` or `KEY=value`, `#` comments. Errors name the file and line.
pub fn parse_widdix_conf(path: &Path, text: &str) -> Result<WiddixConf, Vec<String>> {
    let mut conf = WiddixConf::default();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            errors.push(format!("{at}: expected KEY=\"value\", found {line:?}"));
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let value = match (value.chars().next(), value.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if value.len() >= 2 && q == e => {
                &value[1..value.len() - 1]
            }
            (Some('"' | '\''), _) => {
                errors.push(format!("{at}: {key}: unterminated quote"));
                continue;
            }
            _ => value,
        };
        if value.contains(['$', '`']) {
            errors.push(format!(
                "{at}: {key}: shell expansion ($, `) is not supported; write the value out"
            ));
            continue;
        }
        match key {
            "IAM_AUTHORIZED_GROUPS" => {
                conf.groups = value
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect();
                for g in &conf.groups {
                    if let Err(why) = iam::validate_group_name(g) {
                        errors.push(format!("{at}: IAM_AUTHORIZED_GROUPS: {why}"));
                    }
                }
            }
            "ASSUMEROLE" => {
                if value.is_empty() {
                    conf.assume_role = None;
                } else if let Err(why) = iam::validate_role_arn(value) {
                    errors.push(format!("{at}: ASSUMEROLE: {why}"));
                } else {
                    conf.assume_role = Some(value.to_string());
                }
            }
            // Groups named by an EC2 tag would need the instance's tags; ignoring
            // it would let every IAM user in, so refuse instead.
            "IAM_AUTHORIZED_GROUPS_TAG" if !value.is_empty() => errors.push(format!(
                "{at}: IAM_AUTHORIZED_GROUPS_TAG is not supported; list the groups in IAM_AUTHORIZED_GROUPS (or pass --group)"
            )),
            "IAM_AUTHORIZED_GROUPS_TAG" => {}
            k if WIDDIX_SYNC_KEYS.contains(&k) => conf.ignored.push(k.to_string()),
            other => errors.push(format!(
                "{at}: unknown setting {other}; known: IAM_AUTHORIZED_GROUPS, ASSUMEROLE, and widdix's user-sync settings (ignored)"
            )),
        }
    }
    if errors.is_empty() {
        Ok(conf)
    } else {
        Err(errors)
    }
}

/// Everything `bastion authorized-keys` was told.
#[derive(Debug)]
pub struct Request {
    pub login: String,
    pub widdix_config: Option<PathBuf>,
    pub groups: Vec<String>,
    pub assume_role_arn: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub cache_ttl: Duration,
    pub stale_ttl: Duration,
    pub negative_ttl: Duration,
    pub timeout: Duration,
}

/// Everything `bastion authorized-keys --eic` was told.
#[derive(Debug)]
pub struct EicRequest {
    pub login: String,
    pub fingerprint: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub imds_endpoint: Option<String>,
    pub timeout: Duration,
}

/// Runs `bastion authorized-keys --eic`: the verified EC2 Instance Connect keys of a
/// login on this instance, one per line (only the one with `fingerprint` if given).
/// Rejected records are named on stderr (sshd logs it); a failure of the whole
/// answer (IMDS, the signer's chain) prints nothing and exits 1.
pub fn run_eic(req: EicRequest) -> ExitCode {
    let bundle = match &req.ca_bundle {
        Some(p) => p.clone(),
        None => match crate::config::system_ca_bundle() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {e}; give --ca-bundle");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let source = match crate::keys::eic::EicSource::load(&bundle, req.timeout, req.imds_endpoint) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --ca-bundle {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let found = match runtime.block_on(source.keys_for(&req.login, std::time::SystemTime::now())) {
        Ok(f) => f,
        Err(failure) => {
            eprintln!(
                "bastion authorized-keys: no EC2 Instance Connect keys for {}: {}",
                req.login, failure.reason
            );
            return ExitCode::from(1);
        }
    };
    for (line, why) in &found.rejected {
        let what = line
            .as_deref()
            .and_then(|l| PublicKeyBlob::from_openssh(l).ok())
            .map_or("a record".to_string(), |k| {
                format!("the record for {}", k.fingerprint())
            });
        eprintln!("bastion authorized-keys: {what} was rejected: {why}");
    }
    let mut out = String::new();
    for a in &found.accepted {
        if req
            .fingerprint
            .as_deref()
            .is_some_and(|f| f != a.key.fingerprint())
        {
            continue;
        }
        out.push_str(&a.key.to_openssh());
        out.push('\n');
    }
    print!("{out}");
    ExitCode::SUCCESS
}

/// A single-threaded runtime for one lookup; exit code 1 if it cannot start.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        })
}

/// Exit code for usage and configuration errors.
const EXIT_USAGE: u8 = 64;

/// Runs `bastion authorized-keys`.
pub fn run(req: Request) -> ExitCode {
    let mut groups = Vec::new();
    let mut assume = None;
    if let Some(path) = &req.widdix_config {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        };
        match parse_widdix_conf(path, &text) {
            Ok(conf) => {
                groups = conf.groups;
                assume = conf.assume_role;
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    // Flags win over the file.
    if !req.groups.is_empty() {
        groups = req.groups.clone();
    }
    if req.assume_role_arn.is_some() {
        assume = req.assume_role_arn.clone();
    }
    let mut problems = Vec::new();
    for g in &groups {
        if let Err(why) = iam::validate_group_name(g) {
            problems.push(format!("--group: {why}"));
        }
    }
    if let Some(arn) = &assume {
        if let Err(why) = iam::validate_role_arn(arn) {
            problems.push(format!("--assume-role-arn: {why}"));
        }
    }
    if req.stale_ttl < req.cache_ttl {
        problems.push("--stale-ttl must be at least --cache-ttl".into());
    }
    if let Some(dir) = &req.cache_dir {
        if !dir.is_dir() {
            problems.push(format!(
                "--cache-dir {}: not a directory (create it, owned by the AuthorizedKeysCommandUser, mode 0700)",
                dir.display()
            ));
        }
    }
    if !problems.is_empty() {
        for p in problems {
            eprintln!("error: {p}");
        }
        return ExitCode::from(EXIT_USAGE);
    }

    let name = iam::iam_user_for_login(&req.login);
    if let Err(why) = iam::validate_user_name(&name) {
        // Not a name IAM could hold: no keys, and no IAM call.
        eprintln!("bastion authorized-keys: {why}");
        return ExitCode::SUCCESS;
    }
    let settings = Settings {
        groups,
        want_groups: false,
        cache_ttl: req.cache_ttl,
        stale_ttl: req.stale_ttl,
        negative_ttl: req.negative_ttl,
        timeout: req.timeout,
        cache_dir: req.cache_dir.clone(),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let source = IamSource::new(SdkIam::new(assume, req.timeout), settings);
    let answer = match runtime.block_on(source.lookup(&name)) {
        Ok(a) => a,
        Err(outage) => {
            eprintln!("error: cannot check IAM user {name}: {outage}");
            return ExitCode::from(1);
        }
    };
    if let Freshness::Stale { why, .. } = &answer.freshness {
        eprintln!("bastion authorized-keys: using a stale answer for {name}: {why}");
    }
    let lines = match &*answer.record {
        Record::NoSuchUser => Vec::new(),
        Record::User(user) => key_lines(user),
    };
    for line in lines {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// The authorized_keys lines for a user: Active keys only, re-encoded.
fn key_lines(user: &iam::IamUser) -> Vec<String> {
    let Some(keys) = &user.keys else {
        return Vec::new();
    };
    keys.iter()
        .filter(|k| k.active)
        .filter_map(|k| match PublicKeyBlob::from_openssh(&k.body) {
            Ok(parsed) => Some(format!(
                "{} iam:{}:{}",
                parsed.to_openssh(),
                user.name,
                k.id
            )),
            Err(e) => {
                eprintln!(
                    "bastion authorized-keys: skipping key {} of {}: {e}",
                    k.id, user.name
                );
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widdix_conf_as_installed() {
        let text = r#"# aws-ec2-ssh configuration
IAM_AUTHORIZED_GROUPS="bastion-users, ops"
LOCAL_MARKER_GROUP="iam-synced-users"
LOCAL_GROUPS=""
SUDOERS_GROUPS="admins"
ASSUMEROLE='arn:aws:iam::111111111111:role/keys'
IAM_AUTHORIZED_GROUPS_TAG=""

USERADD_PROGRAM="/usr/sbin/useradd"
USERADD_ARGS="--create-home --shell /bin/bash"
"#;
        let conf = parse_widdix_conf(Path::new("/etc/aws-ec2-ssh.conf"), text).unwrap();
        assert_eq!(conf.groups, vec!["bastion-users", "ops"]);
        assert_eq!(
            conf.assume_role.as_deref(),
            Some("arn:aws:iam::111111111111:role/keys")
        );
        assert!(conf.ignored.contains(&"SUDOERS_GROUPS".to_string()));
    }

    #[test]
    fn widdix_conf_errors_name_file_and_line() {
        let text = "IAM_AUTHORIZED_GROUPS=\"ok,no/slash\"\nASSUMEROLE=\"arn:nope\"\nIAM_AUTHORIZED_GROUPS_TAG=\"Groups\"\nWHAT=1\njunk\nLOCAL_GROUPS=\"$X\"\nX=\"open\n";
        let errs = parse_widdix_conf(Path::new("/etc/c.conf"), text).unwrap_err();
        assert_eq!(errs.len(), 7, "{errs:#?}");
        assert!(
            errs[0].starts_with("/etc/c.conf:1: IAM_AUTHORIZED_GROUPS:"),
            "{}",
            errs[0]
        );
        assert!(errs[1].starts_with("/etc/c.conf:2: ASSUMEROLE:"));
        assert!(errs[2].contains("IAM_AUTHORIZED_GROUPS_TAG is not supported"));
        assert!(errs[3].contains(":4: unknown setting WHAT"));
        assert!(errs[4].contains(":5: expected KEY=\"value\""));
        assert!(errs[5].contains(":6: LOCAL_GROUPS: shell expansion"));
        assert!(errs[6].contains(":7: X: unterminated quote"));
    }

    #[test]
    fn only_active_parsable_keys_are_printed_without_options() {
        let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIrvfN7B7bWkTt3WJoN7kmqjxj0YGhMRwDbyUuMWEfuV";
        let user = iam::IamUser {
            name: "alice".into(),
            arn: "arn:aws:iam::123456789012:user/alice".into(),
            groups: None,
            keys: Some(vec![
                iam::IamKey {
                    id: "K1".into(),
                    active: true,
                    body: format!("{ed} laptop"),
                },
                iam::IamKey {
                    id: "K2".into(),
                    active: false,
                    body: ed.into(),
                },
                iam::IamKey {
                    id: "K3".into(),
                    active: true,
                    body: format!("command=\"/bin/sh\" {ed}"),
                },
            ]),
        };
        assert_eq!(key_lines(&user), vec![format!("{ed} iam:alice:K1")]);
    }
}
