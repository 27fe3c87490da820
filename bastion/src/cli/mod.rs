//! The command line: `bastion serve`, `check-config`, `audit verify`.
//!
//! Errors are printed as `error: …` with their cause chain and a `hint: …`
//! where the next step is obvious. Exit 64 for usage and configuration
//! errors, 1 for everything else.

pub mod authorized_keys;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::audit::AuditLog;
use crate::config::{self, Config, ConfigError, Override};
use crate::ipc::{self, Secret, ToWorker, WorkerInit};
use crate::keys::KeySources;
use crate::sandbox;
use crate::server::monitor::{self, Phase, Shared};
use crate::targets::policy::{Policy, Rule};

/// Exit code for usage and configuration errors (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// A stateless, sandboxed SSH bastion: `ssh -J` through it to private hosts,
/// with keys from files, commands or AWS, and a per-user audit trail.
#[derive(Debug, Parser)]
#[command(name = "bastion", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bastion.
    Serve(ServeArgs),
    /// Validate a configuration and exit: 0 when valid, 64 with every problem listed.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask this bastion's own `/livez` (at `health_listen`) and exit 0 when
    /// it answers 200, 1 otherwise: a container HEALTHCHECK without curl.
    ///
    /// Liveness: a busy or draining bastion is still healthy (an orchestrator
    /// that replaces unhealthy containers must not kill its live sessions).
    Healthcheck {
        /// The TOML configuration file (environment: BASTION_CONFIG), for `health_listen`.
        #[arg(long, short, value_name = "FILE", env = "BASTION_CONFIG")]
        config: Option<PathBuf>,
        /// Ask `/readyz` instead: 200 only while it takes new sessions.
        #[arg(long)]
        ready: bool,
    },
    /// Print a login's IAM SSH keys, for OpenSSH's AuthorizedKeysCommand on
    /// ordinary hosts (a drop-in for widdix/aws-ec2-ssh).
    ///
    /// In sshd_config:
    ///   AuthorizedKeysCommand /usr/local/bin/bastion authorized-keys --widdix-config /etc/aws-ec2-ssh.conf --cache-dir /var/cache/bastion-keys %u
    ///   AuthorizedKeysCommandUser bastion-keys
    ///
    /// Prints the Active keys (nothing for unknown users or non-members) and
    /// exits 0; exits 1 without output when IAM cannot answer and no cached
    /// answer is young enough. AWS region, credentials and endpoint come from
    /// the standard AWS environment and files.
    ///
    /// With --eic it prints instead the keys pushed to this instance with EC2
    /// Instance Connect, verified as the ec2-instance-connect package does
    /// (stricter: served certificates are never trust anchors):
    ///   AuthorizedKeysCommand /usr/local/bin/bastion authorized-keys --eic %u %f
    ///   AuthorizedKeysCommandUser ec2-instance-connect
    /// Exits 1 without output when the instance metadata service cannot be read
    /// or the signer's chain does not verify.
    AuthorizedKeys(AuthorizedKeysArgs),
    /// Work with audit trails.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check that the worker sandbox kills a worker making a forbidden system call.
    #[command(hide = true)]
    SandboxSelftest {
        /// Which system call the sandboxed child makes.
        #[arg(long, value_enum)]
        syscall: SyscallKind,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SyscallKind {
    Forbidden,
    Allowed,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chains of a trail: a file, the audit directory, or what
    /// the remote sinks hold (--source cloudwatch|s3).
    Verify {
        /// A `<login>.jsonl` trail or the audit directory (--source dir).
        path: Option<PathBuf>,
        #[command(flatten)]
        from: TrailSource,
    },
    /// A table of sessions: who, from where, to where, when, how long, bytes, outcome.
    Show {
        /// Only this user's trail (login, or IAM user name).
        #[arg(long)]
        user: Option<String>,
        /// Only sessions that started at or after this time (RFC 3339, e.g.
        /// 2026-11-24T00:00:00Z) or this long ago (e.g. 2h, 7days).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// One JSON object per session instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        from: TrailSource,
    },
}

/// Where `audit verify` and `audit show` read a trail.
#[derive(Debug, clap::Args)]
struct TrailSource {
    /// dir (the local audit directory), cloudwatch or s3.
    #[arg(long, value_enum, default_value = "dir")]
    source: SourceKind,
    /// The audit directory (--source dir); default: audit.dir of --config, or /var/log/bastion.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The CloudWatch Logs group (--source cloudwatch); default: audit.cloudwatch_log_group of --config.
    #[arg(long, value_name = "GROUP")]
    log_group: Option<String>,
    /// The S3 bucket (--source s3); default: audit.s3_bucket of --config.
    #[arg(long, value_name = "BUCKET")]
    bucket: Option<String>,
    /// The S3 key prefix (--source s3); default: audit.s3_prefix of --config.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Take the locations above from this configuration file (environment: BASTION_CONFIG).
    #[arg(long, short, value_name = "FILE", env = "BASTION_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SourceKind {
    Dir,
    Cloudwatch,
    S3,
}

impl TrailSource {
    fn resolve(&self, path: Option<&Path>) -> Result<crate::audit::read::Source, String> {
        use crate::audit::read::Source;
        let cfg = match &self.config {
            Some(p) => Some(config::load(Some(p), std::env::vars(), Vec::new()).map_err(
                |errors| {
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            )?),
            None => None,
        };
        let audit = cfg.as_ref().map(|c| &c.audit);
        Ok(match self.source {
            SourceKind::Dir => Source::Dir(
                path.map(Path::to_path_buf)
                    .or_else(|| self.dir.clone())
                    .or_else(|| audit.map(|a| a.dir.clone()))
                    .unwrap_or_else(|| PathBuf::from("/var/log/bastion")),
            ),
            SourceKind::Cloudwatch => Source::CloudWatch {
                group: self
                    .log_group
                    .clone()
                    .or_else(|| audit.and_then(|a| a.cloudwatch_log_group.clone()))
                    .ok_or("--source cloudwatch needs --log-group (or a --config with audit.cloudwatch_log_group)")?,
            },
            SourceKind::S3 => Source::S3 {
                bucket: self
                    .bucket
                    .clone()
                    .or_else(|| audit.and_then(|a| a.s3.as_ref().map(|s| s.bucket.clone())))
                    .ok_or("--source s3 needs --bucket (or a --config with audit.s3_bucket)")?,
                prefix: self
                    .prefix
                    .clone()
                    .or_else(|| audit.and_then(|a| a.s3.as_ref().map(|s| s.prefix.clone())))
                    .unwrap_or_default(),
            },
        })
    }
}

#[derive(Debug, clap::Args)]
struct AuthorizedKeysArgs {
    /// The login sshd asks about (%u); widdix spellings (.plus. .equal. .comma. .at.) are understood.
    login: String,
    /// With --eic: print only the key with this fingerprint (%f, SHA256:…).
    #[arg(requires = "eic")]
    fingerprint: Option<String>,
    /// Keys pushed with EC2 Instance Connect (read from the instance metadata service) instead of IAM.
    #[arg(long, conflicts_with_all = ["widdix_config", "groups", "assume_role_arn", "cache_dir"])]
    eic: bool,
    /// With --eic: PEM trust anchors for the signer's chain (default: the system bundle).
    #[arg(long, value_name = "FILE", requires = "eic")]
    ca_bundle: Option<PathBuf>,
    /// With --eic: the instance metadata service (default: AWS_EC2_METADATA_SERVICE_ENDPOINT,
    /// else http://169.254.169.254). sshd runs the command with an empty environment.
    #[arg(long, value_name = "URL", requires = "eic")]
    imds_endpoint: Option<String>,
    /// widdix/aws-ec2-ssh's configuration file: IAM_AUTHORIZED_GROUPS and ASSUMEROLE are used.
    #[arg(long, value_name = "FILE")]
    widdix_config: Option<PathBuf>,
    /// Only members of this IAM group (repeatable; any of them); overrides IAM_AUTHORIZED_GROUPS.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// Read IAM through this role (another account); overrides ASSUMEROLE.
    #[arg(long, value_name = "ARN")]
    assume_role_arn: Option<String>,
    /// Keep answers on disk here (owned by the AuthorizedKeysCommandUser, mode 0700), so
    /// logins within the cache lifetime cost no IAM call and an IAM outage locks nobody out.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Reuse an answer this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    cache_ttl: std::time::Duration,
    /// While IAM is unreachable or throttling, use the last answer this long.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    stale_ttl: std::time::Duration,
    /// Remember "no such IAM user" this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    negative_ttl: std::time::Duration,
    /// Give up on IAM after this long (sshd waits for the command).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The TOML configuration file (environment: BASTION_CONFIG).
    #[arg(long, short, value_name = "FILE", env = "BASTION_CONFIG")]
    config: Option<PathBuf>,
    /// Development defaults, no AWS and no config file: listen on
    /// 127.0.0.1:2222, a generated host key, your ~/.ssh/authorized_keys,
    /// forwarding to loopback port 22 only.
    #[arg(long)]
    dev: bool,
    /// Listen address (repeatable); overrides `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Host private key file (repeatable); overrides `host_keys`.
    #[arg(long = "host-key", value_name = "FILE")]
    host_keys: Vec<PathBuf>,
    /// Audit trail directory; overrides `audit.dir`.
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// Run workers WITHOUT the sandbox (sets `sandbox.enabled = false`).
    #[arg(long)]
    no_sandbox: bool,
}

/// Runs the CLI.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { config } => check_config(&config),
        Command::Healthcheck { config, ready } => healthcheck(config.as_deref(), ready),
        Command::AuthorizedKeys(a) if a.eic => {
            crate::cli::authorized_keys::run_eic(crate::cli::authorized_keys::EicRequest {
                login: a.login,
                fingerprint: a.fingerprint,
                ca_bundle: a.ca_bundle,
                imds_endpoint: a.imds_endpoint,
                timeout: a.timeout,
            })
        }
        Command::AuthorizedKeys(a) => {
            crate::cli::authorized_keys::run(crate::cli::authorized_keys::Request {
                login: a.login,
                widdix_config: a.widdix_config,
                groups: a.groups,
                assume_role_arn: a.assume_role_arn,
                cache_dir: a.cache_dir,
                cache_ttl: a.cache_ttl,
                stale_ttl: a.stale_ttl,
                negative_ttl: a.negative_ttl,
                timeout: a.timeout,
            })
        }
        Command::Audit {
            command: AuditCommand::Verify { path, from },
        } => audit_verify(path.as_deref(), &from),
        Command::Audit {
            command:
                AuditCommand::Show {
                    user,
                    since,
                    json,
                    from,
                },
        } => audit_show(user.as_deref(), since.as_deref(), json, &from),
        Command::SandboxSelftest { syscall } => selftest(matches!(syscall, SyscallKind::Forbidden)),
    }
}

fn print_error(message: &str, hint: Option<&str>) {
    eprintln!("error: {message}");
    if let Some(h) = hint {
        eprintln!("hint: {h}");
    }
}

fn print_config_errors(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        print_error(&e.to_string(), e.hint.as_deref());
    }
    eprintln!(
        "{} configuration problem{} found",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(EXIT_USAGE)
}

/// Everything derived from the configuration that can fail, checked before anything binds.
struct Prepared {
    policy: Policy,
    sources: KeySources,
    host_keys: Vec<Secret>,
    /// OpenSSH host certificates (public), each for one of `host_keys`.
    host_certificates: Vec<String>,
    fingerprints: Vec<String>,
}

/// Checks an OpenSSH host certificate: a host certificate, validly signed,
/// valid now, for one of `keys` (when `must_match`: every host key was read).
/// Returns it re-encoded and a line describing it for the start-up log.
fn host_certificate(
    text: &str,
    keys: &[russh::keys::ssh_key::public::KeyData],
    must_match: bool,
) -> Result<(String, String), String> {
    use russh::keys::ssh_key::certificate::CertType;
    let cert = russh::keys::Certificate::from_openssh(text.trim())
        .map_err(|e| format!("not an OpenSSH certificate: {e}"))?;
    if cert.cert_type() != CertType::Host {
        return Err("a user certificate, not a host certificate (sign with ssh-keygen -h)".into());
    }
    cert.verify_signature()
        .map_err(|e| format!("its CA signature does not verify: {e}"))?;
    let now = std::time::SystemTime::now();
    if cert.valid_after_time().is_some_and(|t| now < t) {
        return Err("not valid yet".into());
    }
    if cert.valid_before_time().is_some_and(|t| now >= t) {
        return Err("expired".into());
    }
    if must_match && !keys.iter().any(|k| k == cert.public_key()) {
        return Err("certifies a key that is not one of host_keys".into());
    }
    let encoded = cert
        .to_openssh()
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    let until = match cert.valid_before_time() {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "forever".into(),
    };
    let about = format!(
        "certificate {:?} by CA {} for [{}], valid until {until}",
        cert.key_id(),
        cert.signature_key()
            .fingerprint(russh::keys::HashAlg::Sha256),
        cert.valid_principals().join(",")
    );
    Ok((encoded, about))
}

/// `fetch_remote`: fetch host keys kept in AWS (serve), or only check their references (check-config).
fn prepare(cfg: &Config, fetch_remote: bool) -> Result<Prepared, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let err = |key: String, message: String| ConfigError {
        source: cfg.origins.of(key.split('[').next().unwrap_or(&key)),
        key,
        message,
        hint: None,
    };
    let mut host_keys = Vec::new();
    let mut public_keys = Vec::new();
    let mut fingerprints = Vec::new();
    // What is kept in AWS is fetched only to serve (check-config makes no AWS call).
    let remote: Vec<config::HostKey> = cfg
        .host_keys
        .iter()
        .chain(&cfg.host_certificates)
        .filter(|k| fetch_remote && k.is_remote())
        .cloned()
        .collect();
    let mut fetched = crate::server::hostkeys::fetch(&remote).into_iter();
    let mut read = |source: &config::HostKey| match source {
        config::HostKey::File(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        ),
        _ if !fetch_remote => None,
        _ => Some(
            fetched
                .next()
                .unwrap_or_else(|| Err(format!("{source}: not fetched"))),
        ),
    };
    for (i, source) in cfg.host_keys.iter().enumerate() {
        let Some(text) = read(source) else { continue };
        match text {
            Ok(text) => match russh::keys::decode_secret_key(&text, None) {
                Ok(key) => {
                    fingerprints.push(format!(
                        "{} {}",
                        key.public_key().fingerprint(russh::keys::HashAlg::Sha256),
                        key.algorithm().as_str()
                    ));
                    public_keys.push(key.public_key().key_data().clone());
                    host_keys.push(Secret(text));
                }
                Err(e) => errors.push(err(
                    format!("host_keys[{i}]"),
                    format!("{source} is not an OpenSSH private key: {e}"),
                )),
            },
            Err(why) => errors.push(err(format!("host_keys[{i}]"), why)),
        }
    }
    let mut host_certificates = Vec::new();
    for (i, source) in cfg.host_certificates.iter().enumerate() {
        let Some(text) = read(source) else { continue };
        // Keys of remote host keys are unknown to check-config: match only what was read.
        let all_keys_read = public_keys.len() == cfg.host_keys.len();
        match text.and_then(|t| host_certificate(&t, &public_keys, all_keys_read)) {
            Ok((cert, about)) => {
                fingerprints.push(about);
                host_certificates.push(cert);
            }
            Err(why) => errors.push(err(
                format!("host_certificates[{i}]"),
                format!("{source}: {why}"),
            )),
        }
    }
    let mut rules = Vec::new();
    for rule in &cfg.allow {
        match Rule::parse(&rule.principals, &rule.to) {
            Ok(r) => rules.push(r),
            Err(problems) => {
                for p in problems {
                    errors.push(ConfigError {
                        source: cfg.origins.of(&rule.key),
                        key: format!("{}.{}", rule.key, p.key()),
                        message: p.to_string(),
                        hint: None,
                    });
                }
            }
        }
    }
    let want_groups = cfg
        .allow
        .iter()
        .any(|r| r.principals.iter().any(|p| p.starts_with("group:")));
    let sources = match KeySources::new(&cfg.auth, want_groups) {
        Ok(s) => Some(s),
        Err(problems) => {
            for (i, key, message) in problems {
                errors.push(err(format!("auth[{i}].{key}"), message));
            }
            None
        }
    };
    match sources {
        Some(sources) if errors.is_empty() => Ok(Prepared {
            policy: Policy::new(rules, own_addresses(&cfg.listen)),
            sources,
            host_keys,
            host_certificates,
            fingerprints,
        }),
        _ => Err(errors),
    }
}

/// The bastion's own addresses: every interface address and the listen addresses.
fn own_addresses(listen: &[SocketAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
        for ifa in ifaddrs {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    for l in listen {
        if !l.ip().is_unspecified() && !out.contains(&l.ip()) {
            out.push(l.ip());
        }
    }
    out
}

fn overrides(args: &ServeArgs) -> Vec<Override> {
    let mut out = Vec::new();
    if !args.listen.is_empty() {
        out.push(Override {
            key: "listen".into(),
            value: toml::Value::Array(
                args.listen
                    .iter()
                    .map(|a| toml::Value::String(a.to_string()))
                    .collect(),
            ),
            source: "flag --listen".into(),
        });
    }
    if !args.host_keys.is_empty() {
        out.push(Override {
            key: "host_keys".into(),
            value: toml::Value::Array(
                args.host_keys
                    .iter()
                    .map(|p| toml::Value::String(p.display().to_string()))
                    .collect(),
            ),
            source: "flag --host-key".into(),
        });
    }
    if let Some(dir) = &args.audit_dir {
        out.push(Override {
            key: "audit.dir".into(),
            value: toml::Value::String(dir.display().to_string()),
            source: "flag --audit-dir".into(),
        });
    }
    if args.no_sandbox {
        out.push(Override {
            key: "sandbox.enabled".into(),
            value: toml::Value::Boolean(false),
            source: "flag --no-sandbox".into(),
        });
    }
    out
}

fn check_config(path: &Path) -> ExitCode {
    let cfg = match config::load(Some(path), std::env::vars(), Vec::new()) {
        Ok(c) => c,
        Err(errors) => return print_config_errors(&errors),
    };
    match prepare(&cfg, false) {
        Ok(_) => {
            println!(
                "{}: configuration is valid ({} listen address(es), {} host key(s), {} key source(s), {} forwarding rule(s))",
                path.display(),
                cfg.listen.len(),
                cfg.host_keys.len(),
                cfg.auth.len(),
                cfg.allow.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => print_config_errors(&errors),
    }
}

fn healthcheck(config: Option<&Path>, ready: bool) -> ExitCode {
    // Only `health_listen` matters here: the rest was checked when serve started.
    let listen = match config::load(config, std::env::vars(), Vec::new()) {
        Ok(c) => c.health_listen,
        Err(errors) => {
            for e in &errors {
                print_error(&e.to_string(), e.hint.as_deref());
            }
            return ExitCode::from(1);
        }
    };
    let Some(addr) = listen else {
        print_error(
            "no health_listen to ask",
            Some("set health_listen (BASTION_HEALTH_LISTEN=0.0.0.0:8080) for serve and healthcheck alike"),
        );
        return ExitCode::from(1);
    };
    let path = if ready { "/readyz" } else { "/livez" };
    match crate::obs::health::probe(addr, path, std::time::Duration::from_secs(3)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            print_error(&format!("unhealthy: {why}"), None);
            ExitCode::from(1)
        }
    }
}

fn audit_verify(path: Option<&Path>, from: &TrailSource) -> ExitCode {
    use crate::audit::read::Source;
    let source = match from.resolve(path) {
        Ok(s) => s,
        Err(e) => {
            print_error(&e, None);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (what, result) = match &source {
        Source::Dir(p) => (p.display().to_string(), crate::audit::verify(p)),
        other => {
            let what = match other {
                Source::CloudWatch { group } => format!("cloudwatch:{group}"),
                Source::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
                Source::Dir(_) => unreachable!(),
            };
            match crate::audit::read::read(other, None) {
                Ok(trails) if trails.is_empty() => {
                    print_error(&format!("{what}: no trail found"), None);
                    return ExitCode::from(1);
                }
                Ok(trails) => (what, crate::audit::read::verify(&trails)),
                Err(e) => {
                    print_error(&e, None);
                    return ExitCode::from(1);
                }
            }
        }
    };
    match result {
        Ok(summary) => {
            println!(
                "{what}: OK, {} event(s) in {} session(s) across {} trail(s); every hash chain holds",
                summary.events, summary.sessions, summary.files
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_error(&e.to_string(), None);
            ExitCode::from(1)
        }
    }
}

fn audit_show(user: Option<&str>, since: Option<&str>, json: bool, from: &TrailSource) -> ExitCode {
    let since = match since.map(parse_since).transpose() {
        Ok(s) => s,
        Err(e) => {
            print_error(
                &e,
                Some("write an RFC 3339 time (2026-11-24T09:00:00Z) or a duration (2h, 7days)"),
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let trails = match from
        .resolve(None)
        .and_then(|s| crate::audit::read::read(&s, user))
    {
        Ok(t) => t,
        Err(e) => {
            print_error(&e, None);
            return ExitCode::from(1);
        }
    };
    let sessions = crate::audit::read::sessions(&trails, since);
    if json {
        for s in &sessions {
            println!("{}", s.to_json());
        }
    } else {
        print!("{}", crate::audit::read::table(&sessions));
    }
    ExitCode::SUCCESS
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("--since {s:?} is neither a time nor a duration"))?;
    std::time::SystemTime::now()
        .checked_sub(d)
        .ok_or_else(|| format!("--since {s:?} is too long ago"))
}

fn serve(args: ServeArgs) -> ExitCode {
    let (log_filter, log_json) = crate::obs::logging::init_monitor();
    let loaded = if args.dev {
        crate::cli::dev::config(&args, overrides(&args))
    } else {
        let r = config::load(args.config.as_deref(), std::env::vars(), overrides(&args));
        if args.config.is_none() {
            if let Err(errors) = &r {
                if errors.iter().any(|e| e.key == "host_keys") {
                    eprintln!(
                        "note: no --config given; for a quick local try use: bastion serve --dev"
                    );
                }
            }
        }
        r.map(|c| (c, None))
    };
    let (cfg, dev) = match loaded {
        Ok(c) => c,
        Err(errors) => return print_config_errors(&errors),
    };
    let prepared = match prepare(&cfg, true) {
        Ok(p) => p,
        Err(errors) => return print_config_errors(&errors),
    };

    if cfg.sandbox.enabled {
        if let Err(why) = sandbox::preflight() {
            print_error(
                &format!("cannot sandbox workers: {why}"),
                Some(&sandbox_hint()),
            );
            return ExitCode::from(1);
        }
    } else {
        tracing::warn!("SANDBOX DISABLED by configuration: workers run without namespaces, seccomp or privilege separation");
        eprintln!("warning: the worker sandbox is DISABLED (sandbox.enabled = false): every connection runs unconfined");
    }

    let audit = match AuditLog::open(&cfg.audit.dir, cfg.audit.stdout).map(|mut a| {
        let started = a.start_shipping(&cfg.audit);
        (a, started)
    }) {
        Ok((a, Ok(()))) => a,
        Ok((_, Err(e))) => {
            print_error(&format!("cannot start the remote audit sinks: {e}"), None);
            return ExitCode::from(1);
        }
        Err(e) => {
            print_error(
                &format!("cannot write the audit trail: {e}"),
                Some("audit.dir must be a directory the bastion can create and write"),
            );
            return ExitCode::from(1);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bastion-monitor")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            print_error(&format!("cannot start the async runtime: {e}"), None);
            return ExitCode::from(1);
        }
    };
    let fingerprints = prepared.fingerprints.clone();
    let sources_desc = prepared.sources.describe();
    let cfg_ciphers = cfg
        .ciphers
        .clone()
        .unwrap_or_else(crate::config::default_ciphers);
    let shared = Arc::new(Shared::new(
        cfg,
        prepared.policy,
        prepared.sources,
        audit,
        ipc::HostIdentity {
            keys: prepared.host_keys,
            certificates: prepared.host_certificates,
            ciphers: cfg_ciphers,
        },
        log_filter,
        log_json,
    ));
    if shared.config.sandbox.enabled {
        if let Err(e) = shared.prepare_runtime_dir() {
            print_error(
                &e.to_string(),
                Some("sandbox.runtime_dir must be a directory the bastion can create"),
            );
            return ExitCode::from(1);
        }
        // Capabilities are not enough: a container runtime's seccomp or
        // AppArmor profile may still refuse a step (pivot_root, mount). One
        // real worker goes through every step before anything is accepted.
        let sb = &shared.config.sandbox;
        let root = sandbox::root_mount_point(&sb.runtime_dir);
        match trial_worker(
            shared.worker_exe(),
            &root,
            sb.uid_base,
            sb.memory_limit,
            false,
        ) {
            Ok((0, None)) => tracing::debug!("trial worker entered its sandbox"),
            outcome => {
                let why = match outcome {
                    Ok((code, None)) => format!("a trial worker could not enter its sandbox (exit status {code}; its error is above)"),
                    Ok((_, Some(sig))) => format!("a trial worker was killed by signal {sig} while entering its sandbox"),
                    Err(e) => e,
                };
                print_error(
                    &format!("cannot sandbox workers: {why}"),
                    Some(&sandbox_hint()),
                );
                return ExitCode::from(1);
            }
        }
    }
    runtime.block_on(async move {
        let listeners = match monitor::bind(&shared.config.listen).await {
            Ok(l) => l,
            Err(e) => {
                print_error(&e.to_string(), Some("is another process using the port? change `listen` or use --listen"));
                return ExitCode::from(1);
            }
        };
        let health = match shared.config.health_listen {
            None => None,
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    print_error(&format!("cannot listen on {addr} (health_listen): {e}"), Some("change health_listen"));
                    return ExitCode::from(1);
                }
            },
        };
        announce(&shared, &fingerprints, &sources_desc, dev.as_ref());
        let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Running);
        if let Some(l) = health {
            tokio::spawn(crate::obs::health::serve(l, shared.clone(), phase_rx.clone()));
        }
        let grace = shared.config.limits.shutdown_grace;
        let delay = shared.config.limits.drain_delay;
        let mut server = tokio::spawn(monitor::run(shared.clone(), listeners, phase_rx));
        // SIGINT means now: no wait for the audit sinks either.
        let interrupted = std::sync::atomic::AtomicBool::new(false);
        let signals = async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {
                    if !delay.is_zero() {
                        tracing::info!(delay = %humantime::format_duration(delay), "SIGTERM: /healthz now answers 503; still accepting connections until the load balancer has taken this instance out");
                        let _ = phase_tx.send(Phase::Leaving);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = int.recv() => {
                                interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
                                tracing::info!("SIGINT: closing every session now");
                                let _ = phase_tx.send(Phase::Closing);
                                return std::future::pending::<()>().await;
                            }
                        }
                    }
                    tracing::info!(grace = %humantime::format_duration(grace), "SIGTERM: draining; live sessions may run until the grace period ends");
                    let _ = phase_tx.send(Phase::Draining);
                    tokio::select! {
                        _ = tokio::time::sleep(grace) => tracing::info!("grace period over; closing the remaining sessions"),
                        _ = int.recv() => {
                            interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!("SIGINT: closing the remaining sessions now");
                        }
                        _ = phase_tx.closed() => {}
                    }
                }
                _ = int.recv() => {
                    interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("SIGINT: closing every session now");
                }
            }
            let _ = phase_tx.send(Phase::Closing);
            std::future::pending::<()>().await
        };
        let finished = tokio::select! {
            _ = &mut server => true,
            _ = signals => false,
        };
        if !finished {
            // The sessions got their Closing notice; give them a moment to say goodbye.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(6), &mut server).await;
        }
        if !interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::task::block_in_place(|| ship_before_exit(&shared));
        }
        tracing::info!("bastion stopped");
        ExitCode::SUCCESS
    })
}

/// At exit: the remote audit sinks get up to `audit.ship_grace` to ship what the spool
/// holds, and the log says what they could not.
fn ship_before_exit(shared: &Shared) {
    let shipping = shared.audit.shipping();
    if shipping.sinks.is_empty() {
        return;
    }
    let grace = shared.config.audit.ship_grace;
    tracing::info!(grace = %humantime::format_duration(grace), "shipping what the audit spool holds before exit");
    let started = std::time::Instant::now();
    let left = shipping.flush(grace);
    if left.is_empty() {
        tracing::info!(took = ?started.elapsed(), "audit spool shipped: every remote sink holds the whole trail");
    }
    for u in left {
        let trails: Vec<String> = u
            .trails
            .iter()
            .map(|(t, n)| format!("{t} ({n} bytes)"))
            .collect();
        tracing::error!(sink = u.sink, bytes = u.bytes, trails = ?trails, last_error = u.error.as_deref().unwrap_or("none: still shipping when the grace period ended"),
            dir = %shared.config.audit.dir.display(),
            "audit trail not shipped before exit: {} bytes stay in the local spool and ship at the next start on this disk; if this disk is deleted (an instance terminated) they are lost", u.bytes);
    }
}

fn announce(
    shared: &Shared,
    fingerprints: &[String],
    sources: &[String],
    dev: Option<&dev::DevInfo>,
) {
    let cfg = &shared.config;
    let listen: Vec<String> = cfg.listen.iter().map(|a| a.to_string()).collect();
    let rules: Vec<String> = cfg
        .allow
        .iter()
        .map(|r| format!("{} -> {}", r.principals.join(","), r.to.join(", ")))
        .collect();
    tracing::info!(listen = ?listen, host_keys = ?fingerprints, key_sources = ?sources, forwarding = ?rules,
        audit_dir = %cfg.audit.dir.display(), sandbox = cfg.sandbox.enabled, worker = %shared.worker_exe().describe,
        ciphers = ?shared.host.ciphers, ciphers_automatic = cfg.ciphers.is_none(), hardware_aes_gcm = crate::config::hardware_aes_gcm(),
        eic_push = cfg.eic.push, eic_os_users = ?cfg.eic.os_users, version = env!("CARGO_PKG_VERSION"), "bastion listening");
    if let Some(dev) = dev {
        eprintln!("bastion {} in development mode", env!("CARGO_PKG_VERSION"));
        eprintln!("  listening on      {}", listen.join(", "));
        for fp in fingerprints {
            eprintln!("  host key          {fp}   ({})", dev.host_key.display());
        }
        eprintln!(
            "  key source        {} (login: {})",
            dev.authorized_keys.display(),
            dev.login
        );
        eprintln!("  forwarding        loopback port 22 only (127.0.0.1:22, [::1]:22)");
        eprintln!(
            "  audit trail       {}/<login>.jsonl",
            cfg.audit.dir.display()
        );
        eprintln!(
            "  sandbox           {}",
            if cfg.sandbox.enabled { "on" } else { "OFF" }
        );
        eprintln!(
            "  try:              ssh -J {}@{} {}@127.0.0.1",
            dev.login,
            listen.first().map(String::as_str).unwrap_or(""),
            dev.login
        );
    }
}

/// `bastion sandbox-selftest`: a real worker, through the real spawn path and
/// sandbox, that makes one system call; its fate becomes ours.
fn selftest(forbidden: bool) -> ExitCode {
    let run = || -> Result<(i32, Option<i32>), String> {
        sandbox::preflight()?;
        let root = sandbox::root_mount_point(Path::new(config::DEFAULT_RUNTIME_DIR));
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        trial_worker(
            &sandbox::WorkerExe::locate(),
            &root,
            1_999_999_999,
            1 << 30,
            forbidden,
        )
    };
    match run() {
        Ok((_, Some(sig))) => {
            eprintln!(
                "sandboxed worker was killed by signal {sig}{}",
                if sig == libc::SIGSYS {
                    " (SIGSYS: seccomp)"
                } else {
                    ""
                }
            );
            sandbox::die_by_signal(sig)
        }
        Ok((code, None)) => {
            eprintln!("sandboxed worker exited with status {code}");
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            print_error(&format!("sandbox self-test could not run: {e}"), None);
            ExitCode::from(1)
        }
    }
}

/// What to do when the sandbox cannot be built, worded for where we run.
fn sandbox_hint() -> String {
    let unconfined = "or, knowing that every connection then runs unconfined, set sandbox.enabled = false (BASTION_SANDBOX__ENABLED=false or --no-sandbox)";
    if sandbox::in_container() {
        format!(
            "in a container, the bastion (not its workers, which keep nothing) needs: \
             --cap-add SYS_ADMIN --security-opt seccomp=unconfined (Docker's default seccomp profile refuses pivot_root) \
             and, where AppArmor is enabled, --security-opt apparmor=unconfined (docker-default refuses mount); \
             see \"Privileges\" in the README; {unconfined}"
        )
    } else {
        format!("run the bastion as root; {unconfined}")
    }
}

/// One real worker through the real spawn path and sandbox, at `root`, making
/// one system call (allowed or `forbidden`): its exit status, or the signal
/// that killed it.
fn trial_worker(
    exe: &sandbox::WorkerExe,
    root: &Path,
    uid: u32,
    memory_limit: u64,
    forbidden: bool,
) -> Result<(i32, Option<i32>), String> {
    let (ours, theirs) = ipc::pair().map_err(|e| e.to_string())?;
    let (client, _keep) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let client: std::os::fd::OwnedFd = client.into();
    let argv = [
        c"bastion-worker".to_owned(),
        c"worker".to_owned(),
        c"selftest".to_owned(),
    ];
    let spawned = sandbox::spawn_worker(&exe.path, &argv, &client, &theirs, true)
        .map_err(|e| e.to_string())?;
    drop(theirs);
    let init = WorkerInit {
        sid: "selftest".into(),
        peer: "-".into(),
        host: ipc::HostIdentity::default(),
        sandbox: Some(ipc::SandboxPlan {
            uid,
            memory_limit,
            root_dir: root.display().to_string(),
        }),
        // Its errors go to our stderr, formatted as ours are.
        log_json: !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        log_filter: "warn".into(),
        selftest_forbidden: Some(forbidden),
        refuse: None,
    };
    ipc::send_blocking(&ours, &ToWorker::Init(init)).map_err(|e| e.to_string())?;
    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => Ok((code, None)),
        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => Ok((0, Some(sig as i32))),
        other => Err(format!("unexpected wait status {other:?}")),
    }
}

/// `bastion serve --dev`: a working bastion with no config file and no AWS.
pub mod dev {
    use super::*;

    /// What dev mode chose, for the start-up message.
    pub struct DevInfo {
        pub login: String,
        pub authorized_keys: PathBuf,
        pub host_key: PathBuf,
    }

    fn problem(key: &str, message: String, hint: Option<&str>) -> Vec<ConfigError> {
        vec![ConfigError {
            key: key.into(),
            source: "dev mode".into(),
            message,
            hint: hint.map(str::to_string),
        }]
    }

    /// The invoking user (the one behind sudo, if any) and their home.
    fn invoking_user() -> Result<(String, PathBuf), Vec<ConfigError>> {
        let lookup = match std::env::var("SUDO_USER") {
            Ok(name) if nix::unistd::Uid::effective().is_root() && !name.is_empty() => {
                nix::unistd::User::from_name(&name)
            }
            _ => nix::unistd::User::from_uid(nix::unistd::Uid::effective()),
        };
        match lookup {
            Ok(Some(user)) => {
                let home = if std::env::var_os("SUDO_USER").is_none() {
                    std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or(user.dir)
                } else {
                    user.dir
                };
                Ok((user.name, home))
            }
            _ => Err(problem(
                "auth",
                "cannot tell which user is running the bastion".into(),
                None,
            )),
        }
    }

    /// Where dev mode keeps its host key and audit trail.
    fn state_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
            return PathBuf::from(x).join("bastion");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".local/state/bastion")
    }

    /// Loads or creates the dev host key so the fingerprint stays the same across runs.
    fn host_key(path: &Path) -> Result<(), Vec<ConfigError>> {
        if path.exists() {
            return Ok(());
        }
        let fail = |e: String| {
            problem(
                "host_keys",
                format!("cannot create {}: {e}", path.display()),
                None,
            )
        };
        let seed: [u8; 32] = rand::random();
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed),
        );
        let pem = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        f.write_all(pem.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// The development configuration, with environment and flags applied on top.
    pub(crate) fn config(
        args: &ServeArgs,
        overrides: Vec<Override>,
    ) -> Result<(Config, Option<DevInfo>), Vec<ConfigError>> {
        if args.config.is_some() {
            return Err(problem(
                "--dev",
                "--dev and --config exclude each other".into(),
                Some("drop one of them"),
            ));
        }
        let (login, home) = invoking_user()?;
        let authorized_keys = home.join(".ssh/authorized_keys");
        if !authorized_keys.is_file() {
            return Err(problem(
                "auth",
                format!("{} does not exist, so nobody could log in", authorized_keys.display()),
                Some("add your public key to it, e.g.: cat ~/.ssh/id_ed25519.pub >> ~/.ssh/authorized_keys"),
            ));
        }
        let state = state_dir();
        let key_path = state.join("dev_host_ed25519_key");
        host_key(&key_path)?;
        let text = format!(
            r#"
listen = ["127.0.0.1:2222"]
host_keys = [{key:?}]
[[auth]]
type = "file"
file = {ak:?}
logins = [{login:?}]
[[allow]]
principals = ["*"]
to = ["127.0.0.1:22", "[::1]:22"]
[audit]
dir = {audit:?}
stdout = false
"#,
            key = key_path.display().to_string(),
            ak = authorized_keys.display().to_string(),
            login = login,
            audit = state.join("audit").display().to_string(),
        );
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| problem("--dev", e.to_string(), None))?;
        let cfg = config::from_table(table, "dev mode defaults", std::env::vars(), overrides)?;
        Ok((
            cfg,
            Some(DevInfo {
                login,
                authorized_keys,
                host_key: key_path,
            }),
        ))
    }
}
