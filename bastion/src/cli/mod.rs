//! The command line: one file per subcommand (`serve`, `check_config`, `healthcheck`,
//! `authorized_keys`, `audit`, `selftest`; `dev` for `serve --dev`); this one holds the
//! argument types and the dispatch.
//!
//! Errors are printed as `error: …` with their cause chain and a `hint: …`
//! where the next step is obvious. Exit 64 for usage and configuration
//! errors, 1 for everything else.

mod audit;
pub mod authorized_keys;
mod check_config;
pub mod dev;
mod healthcheck;
mod selftest;
mod serve;

use audit::AuditCommand;
use selftest::{sandbox_hint, trial_worker};
use serve::prepare;

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
        Command::Serve(args) => serve::serve(args),
        Command::CheckConfig { config } => check_config::check_config(&config),
        Command::Healthcheck { config, ready } => {
            healthcheck::healthcheck(config.as_deref(), ready)
        }
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
        } => audit::audit_verify(path.as_deref(), &from),
        Command::Audit {
            command:
                AuditCommand::Show {
                    user,
                    since,
                    json,
                    from,
                },
        } => audit::audit_show(user.as_deref(), since.as_deref(), json, &from),
        Command::SandboxSelftest { syscall } => {
            selftest::selftest(matches!(syscall, SyscallKind::Forbidden))
        }
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
