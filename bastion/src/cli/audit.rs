//! `bastion audit verify` and `bastion audit show`: a trail read back from the local
//! directory, CloudWatch Logs or S3.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
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
pub(super) struct TrailSource {
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
pub(super) enum SourceKind {
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

pub(super) fn audit_verify(path: Option<&Path>, from: &TrailSource) -> ExitCode {
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

pub(super) fn audit_show(
    user: Option<&str>,
    since: Option<&str>,
    json: bool,
    from: &TrailSource,
) -> ExitCode {
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
pub(super) fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("--since {s:?} is neither a time nor a duration"))?;
    std::time::SystemTime::now()
        .checked_sub(d)
        .ok_or_else(|| format!("--since {s:?} is too long ago"))
}
