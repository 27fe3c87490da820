//! Bastion configuration.
//!
//! The configuration is assembled from three layers, lowest precedence first:
//!
//! 1. a TOML file (or an in-memory table standing for one, see [`from_table`]);
//! 2. environment variables `BASTION_…`: the rest of the name, lowercased and split on `__`,
//!    is the key path (`BASTION_LIMITS__MAX_STARTUPS=5` sets `limits.max_startups`);
//! 3. command-line flags, passed in as [`Override`]s.
//!
//! Later layers replace earlier ones key by key: setting `BASTION_AUDIT__DIR` keeps the file's
//! `audit.stdout`. Lists and the `[[auth]]` / `[[allow]]` arrays are replaced as a whole.
//!
//! Everything is validated before the bastion binds a socket, and every problem is reported at
//! once, each with the key it concerns and where that key's value came from.
//!
//! The file format, with the defaults:
//!
//! ```toml
//! listen    = ["0.0.0.0:22"]                         # "IP:PORT" or "[IPv6]:PORT"
//! health_listen = "0.0.0.0:8080"                     # optional: HTTP /healthz and /metrics
//! proxy_protocol = false                             # true: PROXY v2 header first (behind an NLB)
//! host_keys = ["/etc/bastion/ssh_host_ed25519_key"]  # required
//!
//! [[auth]]                       # where public keys come from, tried in order; at least one
//! type = "file"
//! dir  = "/etc/bastion/users"    # <dir>/<login> is that login's authorized_keys
//!
//! [[auth]]
//! type   = "file"
//! file   = "/home/alice/.ssh/authorized_keys"
//! logins = ["alice"]             # "*" = any login
//!
//! [[auth]]
//! type    = "command"            # like OpenSSH's AuthorizedKeysCommand
//! command = "/usr/local/bin/keys %u %f"
//! run_as  = "nobody"
//! timeout = "10s"
//!
//! [[auth]]
//! type            = "iam"        # IAM users' SSH keys (crate::keys::iam)
//! groups          = []           # IAM groups whose members may log in; empty: any IAM user
//! assume_role_arn = "arn:aws:iam::123456789012:role/bastion-key-reader"   # optional
//! cache_ttl       = "60s"
//! stale_ttl       = "1h"         # at least cache_ttl
//! negative_ttl    = "10s"
//! timeout         = "10s"
//! cache_dir       = "/var/cache/bastion"   # optional
//!
//! [[allow]]                      # forwarding policy; without any rule nothing may be forwarded
//! principals = ["*"]
//! to         = ["10.0.0.0/8:22"]
//!
//! [audit]
//! dir        = "/var/log/bastion"
//! stdout     = false
//! ship_grace = "30s"             # at exit, how long to wait for the remote sinks to ship the spool
//!
//! [sandbox]
//! enabled      = true
//! uid_base     = 2000000000
//! uid_count    = 65536
//! memory_limit = "1GiB"
//! runtime_dir  = "/run/bastion"
//!
//! [limits]
//! login_grace     = "20s"
//! max_startups    = 64
//! per_source      = 10
//! max_sessions    = 1000
//! connect_timeout = "10s"
//! shutdown_grace  = "30s"
//! drain_delay     = "0s"
//! ```
//!
//! Relative paths in the file are resolved against the file's directory; relative paths from
//! the environment, from flags or from an in-memory table are resolved against the current
//! directory.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "BASTION_";

/// Environment variables with the [`ENV_PREFIX`] that are not configuration keys and are ignored
/// by [`load`] (`BASTION_LOG` sets the log filter, `BASTION_CONFIG` names the configuration file).
pub const RESERVED_ENV: &[&str] = &["BASTION_LOG", "BASTION_CONFIG"];

/// Where the packaged host key lives; used in hints.
pub const DEFAULT_HOST_KEY: &str = "/etc/bastion/ssh_host_ed25519_key";

const DEFAULT_LISTEN: &str = "0.0.0.0:22";
const DEFAULT_AUDIT_DIR: &str = "/var/log/bastion";
/// Default `sandbox.runtime_dir`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/bastion";
const DEFAULT_UID_BASE: u32 = 2_000_000_000;
const DEFAULT_UID_COUNT: u32 = 65_536;
const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;
const DEFAULT_RUN_AS: &str = "nobody";
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LOGIN_GRACE: Duration = Duration::from_secs(20);
const DEFAULT_MAX_STARTUPS: usize = 64;
const DEFAULT_PER_SOURCE: usize = 10;
const DEFAULT_MAX_SESSIONS: usize = 1000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_SHIP_GRACE: Duration = Duration::from_secs(30);

/// Highest uid a worker may run under: 4294967295 is `(uid_t)-1`, which means "no change".
const MAX_UID: u64 = 4_294_967_294;
/// Lowest `sandbox.uid_base`, to stay clear of system accounts.
const MIN_UID_BASE: i64 = 1000;
/// Upper bound for the connection counters in `[limits]`.
const MAX_COUNT: i64 = 1_000_000;
/// Smallest `sandbox.memory_limit`: below this a worker cannot even start.
const MIN_MEMORY_LIMIT: u64 = 64 << 20;

const HOST_KEY_HINT: &str =
    "create one with: ssh-keygen -t ed25519 -N '' -f /etc/bastion/ssh_host_ed25519_key";
const AUTH_HINT: &str =
    "add a key source, e.g.:\n[[auth]]\ntype = \"file\"\ndir = \"/etc/bastion/users\"";
const DURATION_HINT: &str = "write a duration such as \"20s\", \"1m 30s\" or \"500ms\"";
const FILE_OR_DIR_HINT: &str =
    "use dir for one authorized_keys file per login (<dir>/<login>), or file with logins for one shared file";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept SSH connections on (`listen`, default `["0.0.0.0:22"]`).
    pub listen: Vec<SocketAddr>,
    /// Host private keys (`host_keys`, required): files (each was a readable file when loaded)
    /// or SSM Parameter Store SecureStrings (`ssm:/bastion/host_ed25519_key`), fetched at start.
    pub host_keys: Vec<HostKey>,
    /// OpenSSH host certificates for those keys (`host_certificates`, default none), so
    /// users can trust a CA (`@cert-authority`) instead of one key.
    pub host_certificates: Vec<HostKey>,
    /// Where `/healthz` and `/metrics` are served over HTTP (`health_listen`, default: nowhere).
    /// They never call AWS.
    pub health_listen: Option<SocketAddr>,
    /// Every connection starts with a PROXY protocol v2 header naming the real client
    /// (`proxy_protocol`, default false); for use behind a Network Load Balancer only.
    pub proxy_protocol: bool,
    /// The SSH ciphers offered (`ciphers`), or `None` for [`default_ciphers`].
    pub ciphers: Option<Vec<String>>,
    /// Where users' public keys come from (`[[auth]]`), tried in order; never empty.
    pub auth: Vec<AuthSource>,
    /// Forwarding rules (`[[allow]]`), in file order; empty means nothing may be forwarded.
    pub allow: Vec<AllowRule>,
    /// EC2 Instance Connect for onward connections (`[eic]`).
    pub eic: Eic,
    /// The audit trail (`[audit]`).
    pub audit: Audit,
    /// How workers are sandboxed (`[sandbox]`).
    pub sandbox: Sandbox,
    /// Connection limits and timeouts (`[limits]`).
    pub limits: Limits,
    /// Where each key's value came from, for reporting problems found after loading.
    pub origins: Origins,
}

/// Where one host private key (or host certificate) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// A file: an OpenSSH private key (or certificate).
    File(PathBuf),
    /// `ssm:NAME`: an SSM Parameter Store parameter (SecureString), read with decryption,
    /// so that every instance behind one load balancer presents the same key.
    Ssm(String),
    /// `secretsmanager:NAME-OR-ARN`: a Secrets Manager secret's `SecretString`.
    SecretsManager(String),
}

impl HostKey {
    /// Kept in AWS (fetched by `serve`, only checked by `check-config`)?
    pub fn is_remote(&self) -> bool {
        !matches!(self, HostKey::File(_))
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKey::File(p) => write!(f, "{}", p.display()),
            HostKey::Ssm(name) => write!(f, "ssm:{name}"),
            HostKey::SecretsManager(id) => write!(f, "secretsmanager:{id}"),
        }
    }
}

/// Ciphers `ciphers` may name.
pub const SUPPORTED_CIPHERS: &[&str] = &[
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];

/// Whether this CPU does AES-GCM in hardware (AES-NI and carry-less multiply on x86-64,
/// the AES and PMULL extensions on aarch64).
pub fn hardware_aes_gcm() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The ciphers offered when `ciphers` is not set. A client takes the first of ITS list that
/// the server offers, and OpenSSH clients list chacha20-poly1305 and the CTR modes before
/// AES-GCM: so where the CPU does AES-GCM in hardware (several times faster than
/// ChaCha20-Poly1305 there), only AES-GCM is offered, which every OpenSSH since 6.2, PuTTY
/// since 0.76 and Go's x/crypto speak. Elsewhere ChaCha20-Poly1305 comes first.
pub fn default_ciphers() -> Vec<String> {
    let list: &[&str] = if hardware_aes_gcm() {
        &["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    } else {
        &[
            "chacha20-poly1305@openssh.com",
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
            "aes256-ctr",
            "aes128-ctr",
        ]
    };
    list.iter().map(|c| c.to_string()).collect()
}

// The key sources' settings are declared beside their sources (keys/), which read them
// without knowing this module; the reader below fills them.
pub use crate::keys::eic::{EicAuth, EIC_TIMEOUT};
pub use crate::keys::iam::{IamAuth, IAM_CACHE_TTL, IAM_NEGATIVE_TTL, IAM_STALE_TTL, IAM_TIMEOUT};
pub use crate::keys::AuthSource;

/// Where the system's CA bundle is looked for (Debian/Ubuntu, Amazon Linux/RHEL, SUSE, Alpine).
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The first of [`SYSTEM_CA_BUNDLES`] that exists, or why there is none.
pub fn system_ca_bundle() -> Result<PathBuf, String> {
    SYSTEM_CA_BUNDLES
        .iter()
        .find(|b| Path::new(b).is_file())
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "no system CA bundle found (looked for {})",
                SYSTEM_CA_BUNDLES.join(", ")
            )
        })
}

/// The `[eic]` section: EC2 Instance Connect for onward connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eic {
    /// `push`: before a forward to an instance id, push the user's key to the instance with
    /// `SendSSHPublicKey` (default false: instance ids are still resolved, nothing is pushed).
    pub push: bool,
    /// `os_users`: the OS users the key is pushed for (default `["ec2-user"]`); an
    /// `[[allow]]` rule's own `os_users` replaces it for the forwards it allows.
    pub os_users: Vec<String>,
    /// `timeout`: the longest one EC2 call (DescribeInstances, SendSSHPublicKey) may take,
    /// retries included (default 10s).
    pub timeout: Duration,
}

/// Default `[eic] os_users`.
pub const EIC_OS_USERS: &[&str] = &["ec2-user"];
/// Default `[eic] timeout`.
pub const EIC_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[allow]]` forwarding rule, not yet parsed (the policy module parses and reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// `principals`: who the rule applies to; never empty.
    pub principals: Vec<String>,
    /// `to`: where they may connect; never empty.
    pub to: Vec<String>,
    /// `os_users`: the OS users an EC2 Instance Connect push is made for when this rule allows
    /// a forward to an instance; `None` means `[eic] os_users`.
    pub os_users: Option<Vec<String>>,
    /// The rule's key for error messages, e.g. `allow[0]`; pass it to [`Origins::of`].
    pub key: String,
}

/// The `[audit]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// `dir`: directory the audit trail is written to (default `/var/log/bastion`); it is
    /// also the spool the remote sinks are fed from.
    pub dir: PathBuf,
    /// `stdout`: also write audit records to standard output (default false).
    pub stdout: bool,
    /// `spool_max`: bytes written but not yet shipped to every remote sink above which new
    /// sessions are refused (default 1GiB, at least 64KiB).
    pub spool_max: u64,
    /// `ship_grace` (default 30s): on SIGTERM, once the sessions have ended, how long the
    /// bastion waits for the remote sinks to ship what the spool holds before it exits.
    pub ship_grace: Duration,
    /// `cloudwatch_log_group`: ship to this CloudWatch Logs group, one stream per user.
    pub cloudwatch_log_group: Option<String>,
    /// `s3_bucket` (with `s3_prefix`, `s3_sse`, `s3_kms_key_id`, `s3_interval`): ship
    /// per-user, per-session objects to S3.
    pub s3: Option<S3Sink>,
}

/// Where and how the S3 audit sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Sink {
    /// `s3_bucket`.
    pub bucket: String,
    /// `s3_prefix` (default `""`): objects are `<prefix><user>/<YYYY>/<MM>/<DD>/<sid>.jsonl`.
    pub prefix: String,
    /// `s3_sse` (default `"AES256"`, or `"aws:kms"`) and `s3_kms_key_id` (only with `aws:kms`).
    pub kms: Option<Option<String>>,
    /// `s3_interval` (default 5m): a live session's object is rewritten this often.
    pub interval: Duration,
}

/// The `[sandbox]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// `enabled`: run each connection in a sandboxed worker (default true).
    pub enabled: bool,
    /// `uid_base`: first uid of the range workers run under (default 2000000000, at least 1000).
    pub uid_base: u32,
    /// `uid_count`: number of uids in the range (default 65536, at least 1);
    /// `uid_base + uid_count` is at most 4294967294.
    pub uid_count: u32,
    /// `memory_limit`: address-space limit per worker in bytes (default 1GiB, at least 64MiB).
    /// Written as a size such as `"512MiB"` (units B, KiB, MiB, GiB) or a number of bytes.
    pub memory_limit: u64,
    /// `runtime_dir`: absolute path of the directory for runtime state (default `/run/bastion`).
    pub runtime_dir: PathBuf,
}

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `login_grace`: how long a connection may stay unauthenticated (default 20s, > 0).
    pub login_grace: Duration,
    /// `max_startups`: concurrent unauthenticated connections (default 64, 1 to 1000000).
    pub max_startups: usize,
    /// `per_source`: concurrent unauthenticated connections per source address
    /// (default 10, at least 1 and at most `max_startups`).
    pub per_source: usize,
    /// `max_sessions`: concurrent connections in total (default 1000, 1 to 1000000).
    pub max_sessions: usize,
    /// `connect_timeout`: timeout for onward connections (default 10s, > 0).
    pub connect_timeout: Duration,
    /// `shutdown_grace`: how long live sessions may continue after SIGTERM (default 30s).
    pub shutdown_grace: Duration,
    /// `drain_delay`: after SIGTERM, how long `/healthz` says 503 while new connections are
    /// still accepted, so a load balancer takes the instance out first (default 0s).
    pub drain_delay: Duration,
}

/// Where each key's value came from, so that problems found later (e.g. while parsing
/// `allow[1].to[2]`) can name the file, environment variable or flag responsible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    map: BTreeMap<String, Origin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    source: String,
    from_file: bool,
}

impl Origins {
    /// The source of `key` (dotted, with indices: `limits.per_source`, `allow[1].to[2]`): the
    /// file path (e.g. `/etc/bastion.toml`), `environment variable BASTION_LISTEN`, the flag
    /// (e.g. `flag --listen`), or `default` when nothing set it. A key inside a list or array of
    /// tables has the source of the whole list.
    #[must_use]
    pub fn of(&self, key: &str) -> String {
        self.find(key)
            .map_or_else(|| "default".to_string(), |o| o.source.clone())
    }

    /// Whether `key` (or the list or table it belongs to) was set explicitly rather than left
    /// at its default.
    #[must_use]
    pub fn is_set(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    fn find(&self, key: &str) -> Option<&Origin> {
        let mut k = key;
        loop {
            if let Some(o) = self.map.get(k) {
                return Some(o);
            }
            k = &k[..k.rfind(['.', '['])?];
        }
    }

    fn is_from_file(&self, key: &str) -> bool {
        self.find(key).is_some_and(|o| o.from_file)
    }

    fn set(&mut self, key: String, source: &str, from_file: bool) {
        let dotted = format!("{key}.");
        let indexed = format!("{key}[");
        self.map
            .retain(|k, _| !k.starts_with(&dotted) && !k.starts_with(&indexed));
        self.map.insert(
            key,
            Origin {
                source: source.to_string(),
                from_file,
            },
        );
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key concerned, dotted with indices (`auth[1].command`); empty for problems with the
    /// file as a whole (unreadable, invalid TOML).
    pub key: String,
    /// Where the offending value came from: the file path, `environment variable BASTION_…`,
    /// the flag, or `default`/`configuration` for values nobody set.
    pub source: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, if there is something useful to say; not part of `Display`.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A value set on the command line, applied after the file and the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Dotted key path, e.g. `listen` or `audit.dir`.
    pub key: String,
    /// The value, as it would appear in the file; for a list of strings a single string is
    /// split on commas.
    pub value: Value,
    /// Names the flag in error messages, e.g. `flag --listen`.
    pub source: String,
}

/// Loads and validates the configuration.
///
/// `file` `None` means no file: defaults, then `env`, then `overrides`. `env` is typically
/// `std::env::vars()`; variables without the [`ENV_PREFIX`] and those in [`RESERVED_ENV`] are
/// ignored. A file that cannot be read or is not valid TOML yields a single error naming the
/// file (with the line and column); otherwise every problem is collected and returned together.
///
/// # Errors
///
/// Every configuration problem found, each naming its key and where the value came from.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    let Some(path) = file else {
        return build(Table::new(), None, "configuration", None, env, overrides);
    };
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            key: String::new(),
            source: source.clone(),
            message: format!("cannot read the configuration file: {e}"),
            hint: None,
        }]
    })?;
    let table = parse_file(&text).map_err(|message| {
        vec![ConfigError {
            key: String::new(),
            source: source.clone(),
            message,
            hint: None,
        }]
    })?;
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    build(table, Some(&source), &source, Some(dir), env, overrides)
}

/// Like [`load`], but from an in-memory table standing for the file, for callers that build a
/// configuration themselves (e.g. a development mode). `source` names the table in error
/// messages; relative paths in it are resolved against the current directory.
///
/// # Errors
///
/// Every configuration problem found, as for [`load`].
pub fn from_table(
    table: Table,
    source: &str,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    build(table, Some(source), source, None, env, overrides)
}

impl Config {
    /// The built-in defaults as a table in the file's format. `host_keys` and `auth` have no
    /// default and are absent.
    #[must_use]
    pub fn defaults_table() -> Table {
        fn table(entries: Vec<(&str, Value)>) -> Value {
            Value::Table(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        }
        fn text(s: &str) -> Value {
            Value::String(s.to_string())
        }
        fn duration(d: Duration) -> Value {
            Value::String(humantime::format_duration(d).to_string())
        }
        fn int(n: impl Into<i64>) -> Value {
            Value::Integer(n.into())
        }
        let count = |n: usize| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let mut t = Table::new();
        t.insert("listen".into(), Value::Array(vec![text(DEFAULT_LISTEN)]));
        t.insert(
            "audit".into(),
            table(vec![
                ("dir", text(DEFAULT_AUDIT_DIR)),
                ("stdout", Value::Boolean(false)),
            ]),
        );
        t.insert(
            "sandbox".into(),
            table(vec![
                ("enabled", Value::Boolean(true)),
                ("uid_base", int(DEFAULT_UID_BASE)),
                ("uid_count", int(DEFAULT_UID_COUNT)),
                ("memory_limit", text(&format_size(DEFAULT_MEMORY_LIMIT))),
                ("runtime_dir", text(DEFAULT_RUNTIME_DIR)),
            ]),
        );
        t.insert(
            "limits".into(),
            table(vec![
                ("login_grace", duration(DEFAULT_LOGIN_GRACE)),
                ("max_startups", count(DEFAULT_MAX_STARTUPS)),
                ("per_source", count(DEFAULT_PER_SOURCE)),
                ("max_sessions", count(DEFAULT_MAX_SESSIONS)),
                ("connect_timeout", duration(DEFAULT_CONNECT_TIMEOUT)),
                ("shutdown_grace", duration(DEFAULT_SHUTDOWN_GRACE)),
                ("drain_delay", duration(Duration::ZERO)),
            ]),
        );
        t.insert(
            "eic".into(),
            table(vec![
                ("push", Value::Boolean(false)),
                (
                    "os_users",
                    Value::Array(EIC_OS_USERS.iter().map(|u| text(u)).collect()),
                ),
                ("timeout", duration(EIC_PUSH_TIMEOUT)),
            ]),
        );
        t
    }
}

// ---------------------------------------------------------------------------------------------
// Schema

/// What a key holds, as far as merging layers is concerned.
#[derive(Clone, Copy)]
enum Kind {
    /// A list of strings; a plain string from the environment or a flag is split on commas.
    List,
    /// A string (also paths, durations).
    Text,
    /// A boolean.
    Bool,
    /// An integer.
    Int,
    /// A size: a string with a unit, or an integer number of bytes.
    Size,
    /// An array of tables, replaced as a whole.
    Tables,
    /// A table whose keys are set one by one.
    Section(&'static [(&'static str, Kind)]),
}

const AUDIT_KEYS: &[(&str, Kind)] = &[
    ("dir", Kind::Text),
    ("stdout", Kind::Bool),
    ("spool_max", Kind::Size),
    ("ship_grace", Kind::Text),
    ("cloudwatch_log_group", Kind::Text),
    ("s3_bucket", Kind::Text),
    ("s3_prefix", Kind::Text),
    ("s3_sse", Kind::Text),
    ("s3_kms_key_id", Kind::Text),
    ("s3_interval", Kind::Text),
];
const SANDBOX_KEYS: &[(&str, Kind)] = &[
    ("enabled", Kind::Bool),
    ("uid_base", Kind::Int),
    ("uid_count", Kind::Int),
    ("memory_limit", Kind::Size),
    ("runtime_dir", Kind::Text),
];
const LIMITS_KEYS: &[(&str, Kind)] = &[
    ("login_grace", Kind::Text),
    ("max_startups", Kind::Int),
    ("per_source", Kind::Int),
    ("max_sessions", Kind::Int),
    ("connect_timeout", Kind::Text),
    ("shutdown_grace", Kind::Text),
    ("drain_delay", Kind::Text),
];
const EIC_KEYS: &[(&str, Kind)] = &[
    ("push", Kind::Bool),
    ("os_users", Kind::List),
    ("timeout", Kind::Text),
];
const ROOT_KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::List),
    ("host_keys", Kind::List),
    ("host_certificates", Kind::List),
    ("health_listen", Kind::Text),
    ("proxy_protocol", Kind::Bool),
    ("ciphers", Kind::List),
    ("auth", Kind::Tables),
    ("allow", Kind::Tables),
    ("audit", Kind::Section(AUDIT_KEYS)),
    ("sandbox", Kind::Section(SANDBOX_KEYS)),
    ("limits", Kind::Section(LIMITS_KEYS)),
    ("eic", Kind::Section(EIC_KEYS)),
];
const AUTH_FILE_KEYS: &[&str] = &["dir", "file", "logins"];
const AUTH_COMMAND_KEYS: &[&str] = &["command", "run_as", "timeout"];
const AUTH_IAM_KEYS: &[&str] = &[
    "groups",
    "assume_role_arn",
    "cache_ttl",
    "stale_ttl",
    "negative_ttl",
    "timeout",
    "cache_dir",
];
const AUTH_EIC_KEYS: &[&str] = &["ca_bundle", "timeout"];
const AUTH_KEYS: &[&str] = &[
    "type",
    "dir",
    "file",
    "logins",
    "command",
    "run_as",
    "timeout",
    "groups",
    "assume_role_arn",
    "cache_ttl",
    "stale_ttl",
    "negative_ttl",
    "cache_dir",
    "ca_bundle",
];
const ALLOW_KEYS: &[&str] = &["principals", "to", "os_users"];

fn lookup(schema: &[(&'static str, Kind)], name: &str) -> Option<Kind> {
    schema.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

fn names(schema: &[(&'static str, Kind)]) -> Vec<&'static str> {
    schema.iter().map(|(n, _)| *n).collect()
}

// ---------------------------------------------------------------------------------------------
// Merging the layers

/// How an override arrived, for error messages and hints.
enum Via<'a> {
    Env(&'a str),
    Flag(&'a str),
}

impl Via<'_> {
    fn source(&self) -> String {
        match self {
            Via::Env(name) => format!("environment variable {name}"),
            Via::Flag(source) => (*source).to_string(),
        }
    }

    /// How the user would spell `path` through this channel.
    fn spell(&self, path: &[&str]) -> String {
        match self {
            Via::Env(_) => format!("{ENV_PREFIX}{}", path.join("__").to_uppercase()),
            Via::Flag(_) => path.join("."),
        }
    }
}

struct Merger {
    root: Table,
    origins: Origins,
    errors: Vec<ConfigError>,
}

impl Merger {
    fn error(&mut self, key: String, via: &Via, message: String, hint: Option<String>) {
        self.errors.push(ConfigError {
            key,
            source: via.source(),
            message,
            hint,
        });
    }

    fn env(&mut self, env: impl IntoIterator<Item = (String, String)>) {
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX) && !RESERVED_ENV.contains(&name.as_str())
            })
            .collect();
        // Sorted, so that BASTION_LIMITS (a whole table) comes before BASTION_LIMITS__….
        vars.sort();
        for (name, raw) in vars {
            let via = Via::Env(&name);
            let rest = name[ENV_PREFIX.len()..].to_lowercase();
            let path: Vec<&str> = rest.split("__").collect();
            if path.iter().any(|p| p.is_empty()) {
                self.error(
                    path.join("."),
                    &via,
                    "not a valid configuration variable name".into(),
                    Some(format!(
                        "nested keys are joined with __, e.g. {ENV_PREFIX}LIMITS__MAX_STARTUPS"
                    )),
                );
                continue;
            }
            let value = raw
                .parse::<Value>()
                .unwrap_or_else(|_| Value::String(raw.clone()));
            self.apply(&path, value, Some(&raw), &via);
        }
    }

    fn flags(&mut self, overrides: Vec<Override>) {
        for o in overrides {
            let via = Via::Flag(&o.source);
            let path: Vec<&str> = o.key.split('.').collect();
            if path.iter().any(|p| p.is_empty()) {
                self.error(
                    o.key.clone(),
                    &via,
                    "not a valid configuration key".into(),
                    None,
                );
                continue;
            }
            self.apply(&path, o.value, None, &via);
        }
    }

    /// Sets `path` to `value`. `raw` is the environment variable's text, if the value came from one.
    fn apply(&mut self, path: &[&str], value: Value, raw: Option<&str>, via: &Via) {
        let key = path.join(".");
        let Some((&first, rest)) = path.split_first() else {
            return;
        };
        let Some(kind) = lookup(ROOT_KEYS, first) else {
            let hint = suggest(first, &names(ROOT_KEYS))
                .map(|c| format!("did you mean {}?", via.spell(&[c])));
            self.error(key, via, format!("unknown key {first:?}"), hint);
            return;
        };
        match (kind, rest) {
            (Kind::Section(_), []) => match value {
                Value::Table(t) => {
                    for (k, v) in t {
                        self.apply(&[first, &k], v, None, via);
                    }
                }
                other => {
                    let hint =
                        format!("set its keys one by one, e.g. {}", via.spell(&[first, "…"]));
                    self.error(
                        key,
                        via,
                        format!("expected a table, found {}", describe(&other)),
                        Some(hint),
                    );
                }
            },
            (Kind::Section(fields), [name, deeper @ ..]) => {
                let Some(leaf) = lookup(fields, name) else {
                    let hint = suggest(name, &names(fields))
                        .map(|c| format!("did you mean {}?", via.spell(&[first, c])));
                    self.error(key, via, format!("unknown key {name:?}"), hint);
                    return;
                };
                if !deeper.is_empty() {
                    self.error(key, via, format!("{first}.{name} has no sub-keys"), None);
                    return;
                }
                let value = normalize(leaf, value, raw);
                let section = self
                    .root
                    .entry(first)
                    .or_insert_with(|| Value::Table(Table::new()));
                // If the lower layer holds something else than a table here, the reader reports it.
                if let Value::Table(t) = section {
                    t.insert((*name).to_string(), value);
                    self.origins
                        .set(format!("{first}.{name}"), &via.source(), false);
                }
            }
            (Kind::Tables, [_, ..]) => {
                let hint = match via {
                    Via::Env(_) => format!(
                        "set the whole list as a TOML array of tables, e.g. {}='[{{type = \"file\", dir = \"/etc/bastion/users\"}}]'",
                        via.spell(&[first])
                    ),
                    Via::Flag(_) => format!("set {first} to an array of tables"),
                };
                self.error(
                    key,
                    via,
                    format!("{first} is a list of tables and can only be replaced as a whole"),
                    Some(hint),
                );
            }
            (_, [_, ..]) => {
                self.error(
                    key,
                    via,
                    format!("{first} has no sub-keys"),
                    Some(format!("set {}", via.spell(&[first]))),
                );
            }
            (leaf, []) => {
                self.root
                    .insert(first.to_string(), normalize(leaf, value, raw));
                self.origins.set(first.to_string(), &via.source(), false);
            }
        }
    }
}

/// Adapts a value from the environment or a flag to what `kind` expects: a plain string for a
/// list is split on commas; text that merely looks like another TOML type stays text.
fn normalize(kind: Kind, value: Value, raw: Option<&str>) -> Value {
    let split = |s: &str| {
        Value::Array(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        )
    };
    match (kind, value, raw) {
        (Kind::List, Value::String(s), _) => split(&s),
        (Kind::List, Value::Array(a), _) => Value::Array(a),
        (Kind::List, _, Some(raw)) => split(raw),
        (Kind::Text, v @ Value::String(_), _)
        | (Kind::Size, v @ (Value::String(_) | Value::Integer(_)), _) => v,
        (Kind::Text | Kind::Size, _, Some(raw)) => Value::String(raw.to_string()),
        (_, v, _) => v,
    }
}

fn build(
    file: Table,
    file_source: Option<&str>,
    base_source: &str,
    base_dir: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    let mut origins = Origins::default();
    if let Some(source) = file_source {
        for (k, v) in &file {
            match (lookup(ROOT_KEYS, k), v) {
                (Some(Kind::Section(_)), Value::Table(t)) => {
                    for sub in t.keys() {
                        origins.set(format!("{k}.{sub}"), source, true);
                    }
                }
                _ => origins.set(k.clone(), source, true),
            }
        }
    }
    let mut merger = Merger {
        root: file,
        origins,
        errors: Vec::new(),
    };
    merger.env(env);
    merger.flags(overrides);
    let Merger {
        root,
        origins,
        errors,
    } = merger;
    let mut reader = Reader {
        origins: &origins,
        base_dir,
        base_source,
        errors,
    };
    let config = reader.config(root);
    let errors = reader.errors;
    match config {
        Some(body) if errors.is_empty() => Ok(Config {
            listen: body.listen,
            host_keys: body.host_keys,
            host_certificates: body.host_certificates,
            health_listen: body.health_listen,
            proxy_protocol: body.proxy_protocol,
            ciphers: body.ciphers,
            auth: body.auth,
            allow: body.allow,
            eic: body.eic,
            audit: body.audit,
            sandbox: body.sandbox,
            limits: body.limits,
            origins,
        }),
        _ if !errors.is_empty() => Err(errors),
        _ => Err(vec![ConfigError {
            key: String::new(),
            source: base_source.to_string(),
            message: "the configuration is invalid".into(),
            hint: None,
        }]),
    }
}

fn parse_file(text: &str) -> Result<Table, String> {
    toml::from_str::<Table>(text).map_err(|e| {
        let what = e.message().trim();
        match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("invalid TOML at line {line}, column {column}: {what}")
            }
            None => format!("invalid TOML: {what}"),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Reading the merged table

/// Everything but the origins, which the reader borrows.
struct Body {
    listen: Vec<SocketAddr>,
    host_keys: Vec<HostKey>,
    host_certificates: Vec<HostKey>,
    health_listen: Option<SocketAddr>,
    proxy_protocol: bool,
    ciphers: Option<Vec<String>>,
    auth: Vec<AuthSource>,
    allow: Vec<AllowRule>,
    eic: Eic,
    audit: Audit,
    sandbox: Sandbox,
    limits: Limits,
}

/// Walks the merged table, converting values and collecting every problem.
///
/// Each reading method returns `None` after recording an error; keys are removed from their
/// table as they are read, so whatever remains afterwards is unknown.
struct Reader<'a> {
    origins: &'a Origins,
    base_dir: Option<&'a Path>,
    /// Blamed for required keys nobody set.
    base_source: &'a str,
    errors: Vec<ConfigError>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Reader<'_> {
    fn push(&mut self, key: &str, message: impl Into<String>, hint: Option<String>) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            source: self.origins.of(key),
            message: message.into(),
            hint,
        });
    }

    fn missing(&mut self, key: &str, message: impl Into<String>, hint: Option<String>) {
        let source = if self.origins.is_set(key) {
            self.origins.of(key)
        } else {
            self.base_source.to_string()
        };
        self.errors.push(ConfigError {
            key: key.to_string(),
            source,
            message: message.into(),
            hint,
        });
    }

    fn wrong_type(&mut self, key: &str, expected: &str, found: &Value) {
        self.push(
            key,
            format!("expected {expected}, found {}", describe(found)),
            None,
        );
    }

    /// Reports the keys left in `t` as unknown.
    fn leftovers(&mut self, t: Table, prefix: &str, known: &[&str]) {
        for (name, _) in t {
            let hint = suggest(&name, known).map(|c| format!("did you mean {c}?"));
            self.push(&join(prefix, &name), format!("unknown key {name:?}"), hint);
        }
    }

    /// Reads `prefix.name` from `t` with `read`, or `default` when absent.
    fn field<T>(
        &mut self,
        t: &mut Table,
        prefix: &str,
        name: &str,
        default: T,
        read: impl FnOnce(&mut Self, &str, Value) -> Option<T>,
    ) -> Option<T> {
        match t.remove(name) {
            Some(v) => read(self, &join(prefix, name), v),
            None => Some(default),
        }
    }

    fn string(&mut self, key: &str, v: Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.wrong_type(key, "a string", &other);
                None
            }
        }
    }

    fn non_empty_string(&mut self, key: &str, v: Value) -> Option<String> {
        let s = self.string(key, v)?;
        if s.trim().is_empty() {
            self.push(key, "must not be empty", None);
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, key: &str, v: Value) -> Option<bool> {
        match v {
            Value::Boolean(b) => Some(b),
            other => {
                self.wrong_type(key, "a boolean (true or false)", &other);
                None
            }
        }
    }

    fn integer<T: TryFrom<i64>>(&mut self, key: &str, v: Value, min: i64, max: i64) -> Option<T> {
        let expected = format!("an integer between {min} and {max}");
        match v {
            Value::Integer(n) => match T::try_from(n) {
                Ok(t) if (min..=max).contains(&n) => Some(t),
                _ => {
                    self.push(key, format!("expected {expected}, found {n}"), None);
                    None
                }
            },
            other => {
                self.wrong_type(key, &expected, &other);
                None
            }
        }
    }

    fn duration(&mut self, key: &str, v: Value, positive: bool) -> Option<Duration> {
        let s = match v {
            Value::String(s) => s,
            other => {
                self.push(
                    key,
                    format!(
                        "expected a duration such as \"20s\", found {}",
                        describe(&other)
                    ),
                    Some(DURATION_HINT.into()),
                );
                return None;
            }
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) if positive && d.is_zero() => {
                self.push(key, "must be longer than zero", None);
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(
                    key,
                    format!("invalid duration {s:?}: {e}"),
                    Some(DURATION_HINT.into()),
                );
                None
            }
        }
    }

    fn size(&mut self, key: &str, v: Value, min: u64) -> Option<u64> {
        let parsed = match v {
            Value::Integer(n) => {
                u64::try_from(n).map_err(|_| format!("must not be negative, found {n}"))
            }
            Value::String(s) => parse_size(&s).map_err(|e| format!("invalid size {s:?}: {e}")),
            other => {
                self.push(
                    key,
                    format!(
                        "expected a size such as \"1GiB\" or a number of bytes, found {}",
                        describe(&other)
                    ),
                    None,
                );
                return None;
            }
        };
        match parsed {
            Ok(n) if n < min => {
                self.push(
                    key,
                    format!(
                        "must be at least {}, found {}",
                        format_size(min),
                        format_size(n)
                    ),
                    None,
                );
                None
            }
            Ok(n) => Some(n),
            Err(message) => {
                self.push(
                    key,
                    message,
                    Some(
                        "write a size such as \"512MiB\" or \"1GiB\" (units B, KiB, MiB, GiB)"
                            .into(),
                    ),
                );
                None
            }
        }
    }

    /// A list of strings; each element is checked, so all bad elements are reported.
    fn strings(&mut self, key: &str, v: Value) -> Option<Vec<String>> {
        let items = match v {
            Value::Array(items) => items,
            other => {
                self.wrong_type(key, "a list of strings", &other);
                return None;
            }
        };
        all(items
            .into_iter()
            .enumerate()
            .map(|(i, item)| self.string(&format!("{key}[{i}]"), item)))
    }

    fn non_empty_strings(&mut self, key: &str, v: Value) -> Option<Vec<String>> {
        let list = self.strings(key, v)?;
        if list.is_empty() {
            self.push(key, "must not be empty", None);
            return None;
        }
        Some(list)
    }

    /// A path; relative paths are resolved against the file's directory if `key` came from the
    /// file, against the current directory otherwise.
    fn path(&mut self, key: &str, v: Value) -> Option<PathBuf> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            self.push(key, "must not be empty", None);
            return None;
        }
        let p = PathBuf::from(&s);
        let joined = match self.base_dir {
            Some(dir) if p.is_relative() && self.origins.is_from_file(key) => dir.join(&p),
            _ => p,
        };
        Some(std::path::absolute(&joined).unwrap_or(joined))
    }

    /// An array of tables, as `[[name]]` writes it.
    fn tables(&mut self, key: &str, v: Value) -> Option<Vec<Table>> {
        let items = match v {
            Value::Array(items) => items,
            Value::Table(_) => {
                self.push(
                    key,
                    "expected an array of tables, found a table",
                    Some(format!("write [[{key}]] (double brackets) for each entry")),
                );
                return None;
            }
            other => {
                self.wrong_type(key, "an array of tables", &other);
                return None;
            }
        };
        all(items.into_iter().enumerate().map(|(i, item)| match item {
            Value::Table(t) => Some(t),
            other => {
                self.wrong_type(&format!("{key}[{i}]"), "a table", &other);
                None
            }
        }))
    }

    /// A `[section]`: absent means all defaults.
    fn section(&mut self, root: &mut Table, name: &str) -> Option<Table> {
        match root.remove(name) {
            None => Some(Table::new()),
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.wrong_type(name, "a table", &other);
                None
            }
        }
    }

    /// The key to blame for a conflict between two keys: `preferred` unless only `other` was set.
    fn blame<'k>(&self, preferred: &'k str, other: &'k str) -> &'k str {
        if !self.origins.is_set(preferred) && self.origins.is_set(other) {
            other
        } else {
            preferred
        }
    }

    fn check_readable_file(&mut self, key: &str, path: &Path) -> bool {
        let problem = match std::fs::metadata(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Some((
                format!("{} does not exist", path.display()),
                Some(format!(
                    "create one with: ssh-keygen -t ed25519 -N '' -f {}",
                    path.display()
                )),
            )),
            Err(e) => Some((format!("cannot access {}: {e}", path.display()), None)),
            Ok(m) if !m.is_file() => {
                Some((format!("{} is not a regular file", path.display()), None))
            }
            Ok(_) => std::fs::File::open(path)
                .err()
                .map(|e| (format!("cannot read {}: {e}", path.display()), None)),
        };
        match problem {
            Some((message, hint)) => {
                self.push(key, message, hint);
                false
            }
            None => true,
        }
    }

    fn check_dir(&mut self, key: &str, path: &Path) -> bool {
        let message = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return true,
            Ok(_) => format!("{} is not a directory", path.display()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                format!("{} does not exist", path.display())
            }
            Err(e) => format!("cannot access {}: {e}", path.display()),
        };
        self.push(key, message, None);
        false
    }

    fn config(&mut self, mut root: Table) -> Option<Body> {
        let listen = self.listen(&mut root);
        let host_keys = self.host_keys(&mut root);
        let health_listen = match root.remove("health_listen") {
            None => Some(None),
            Some(v) => {
                self.string("health_listen", v)
                    .and_then(|s| match s.trim().parse::<SocketAddr>() {
                        Ok(a) => Some(Some(a)),
                        Err(_) => {
                            self.push(
                                "health_listen",
                                format!("invalid socket address {s:?}"),
                                Some("write IP:PORT, e.g. \"0.0.0.0:8080\"".into()),
                            );
                            None
                        }
                    })
            }
        };
        let proxy_protocol = self.field(&mut root, "", "proxy_protocol", false, Self::boolean);
        let ciphers = match root.remove("ciphers") {
            None => Some(None),
            Some(v) => self.non_empty_strings("ciphers", v).and_then(|list| {
                let mut ok = true;
                for (i, c) in list.iter().enumerate() {
                    if !SUPPORTED_CIPHERS.contains(&c.as_str()) {
                        self.push(
                            &format!("ciphers[{i}]"),
                            format!("unknown or unsupported cipher {c:?}"),
                            Some(format!("choose from {}", SUPPORTED_CIPHERS.join(", "))),
                        );
                        ok = false;
                    }
                }
                ok.then_some(Some(list))
            }),
        };
        let host_certificates = match root.remove("host_certificates") {
            None => Some(Vec::new()),
            Some(v) => self.strings("host_certificates", v).and_then(|list| {
                all(list
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| self.key_ref(&format!("host_certificates[{i}]"), s)))
            }),
        };
        let auth = self.auth(&mut root);
        let allow = self.allow(&mut root);
        let audit = self.audit(&mut root);
        let sandbox = self.sandbox(&mut root);
        let limits = self.limits(&mut root);
        let eic = self.eic(&mut root);
        self.leftovers(root, "", &names(ROOT_KEYS));
        Some(Body {
            listen: listen?,
            host_keys: host_keys?,
            host_certificates: host_certificates?,
            health_listen: health_listen?,
            proxy_protocol: proxy_protocol?,
            ciphers: ciphers?,
            auth: auth?,
            allow: allow?,
            eic: eic?,
            audit: audit?,
            sandbox: sandbox?,
            limits: limits?,
        })
    }

    fn listen(&mut self, root: &mut Table) -> Option<Vec<SocketAddr>> {
        let Some(v) = root.remove("listen") else {
            return DEFAULT_LISTEN.parse().ok().map(|a| vec![a]);
        };
        let list = self.strings("listen", v)?;
        if list.is_empty() {
            self.push(
                "listen",
                "must list at least one address",
                Some(format!("e.g. listen = [\"{DEFAULT_LISTEN}\"]")),
            );
            return None;
        }
        all(list
            .iter()
            .enumerate()
            .map(|(i, s)| match s.trim().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.push(
                        &format!("listen[{i}]"),
                        format!("invalid socket address {s:?}"),
                        Some(
                            "write IP:PORT or [IPv6]:PORT, e.g. \"0.0.0.0:22\" or \"[::]:22\""
                                .into(),
                        ),
                    );
                    None
                }
            }))
    }

    fn host_keys(&mut self, root: &mut Table) -> Option<Vec<HostKey>> {
        let Some(v) = root.remove("host_keys") else {
            self.missing(
                "host_keys",
                "no host key configured; at least one is required",
                Some(HOST_KEY_HINT.into()),
            );
            return None;
        };
        let list = self.strings("host_keys", v)?;
        if list.is_empty() {
            self.push(
                "host_keys",
                "no host key configured; at least one is required",
                Some(HOST_KEY_HINT.into()),
            );
            return None;
        }
        all(list
            .into_iter()
            .enumerate()
            .map(|(i, s)| self.key_ref(&format!("host_keys[{i}]"), s)))
    }

    /// One `host_keys` or `host_certificates` entry: a file, `ssm:NAME` or `secretsmanager:ID`.
    fn key_ref(&mut self, key: &str, s: String) -> Option<HostKey> {
        // prefix, punctuation allowed besides ASCII letters and digits (the service's
        // naming rule; Secrets Manager also takes an ARN), what it is, an example.
        type Make = fn(String) -> HostKey;
        let remote: [(&str, &str, &str, &str, Make); 2] = [
            (
                "ssm:",
                "_.-/",
                "SSM parameter",
                "ssm:/bastion/host_ed25519_key",
                HostKey::Ssm,
            ),
            (
                "secretsmanager:",
                "/_+=.@-:",
                "Secrets Manager secret",
                "secretsmanager:bastion/host_ed25519_key (a name or an ARN)",
                HostKey::SecretsManager,
            ),
        ];
        for (prefix, punctuation, what, example, make) in remote {
            if let Some(name) = s.strip_prefix(prefix) {
                let valid = !name.is_empty()
                    && name.len() <= 2048
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || punctuation.contains(c));
                if valid {
                    return Some(make(name.to_string()));
                }
                self.push(
                    key,
                    format!("{s:?} is not a valid {what} reference"),
                    Some(format!("write {prefix}NAME, e.g. {example}")),
                );
                return None;
            }
        }
        let path = self.path(key, Value::String(s))?;
        self.check_readable_file(key, &path)
            .then_some(HostKey::File(path))
    }

    fn auth(&mut self, root: &mut Table) -> Option<Vec<AuthSource>> {
        let Some(v) = root.remove("auth") else {
            self.missing(
                "auth",
                "no key source configured; at least one [[auth]] entry is required",
                Some(AUTH_HINT.into()),
            );
            return None;
        };
        let entries = self.tables("auth", v)?;
        if entries.is_empty() {
            self.push(
                "auth",
                "no key source configured; at least one [[auth]] entry is required",
                Some(AUTH_HINT.into()),
            );
            return None;
        }
        all(entries
            .into_iter()
            .enumerate()
            .map(|(i, t)| self.auth_entry(i, t)))
    }

    fn auth_entry(&mut self, i: usize, mut t: Table) -> Option<AuthSource> {
        let p = format!("auth[{i}]");
        let type_key = format!("{p}.type");
        let kind = match t.remove("type") {
            Some(v) => self.string(&type_key, v),
            None => {
                self.push(
                    &type_key,
                    "missing",
                    Some("set type = \"file\", \"command\", \"iam\" or \"eic\"".into()),
                );
                None
            }
        };
        let source = match kind.as_deref() {
            Some("file") => self.auth_file(&p, &mut t),
            Some("command") => self.auth_command(&p, &mut t),
            Some("iam") => self.auth_iam(&p, &mut t),
            Some("eic") => self.auth_eic(&p, &mut t),
            Some(other) => {
                self.push(
                    &type_key,
                    format!(
                        "unknown type {other:?}; known types are \"file\", \"command\", \"iam\" and \"eic\""
                    ),
                    None,
                );
                None
            }
            None => None,
        };
        if source.is_none() {
            // Keys of either type are fine when the type itself is the problem.
            t.retain(|k, _| !AUTH_KEYS.contains(&k));
        }
        self.leftovers(t, &p, AUTH_KEYS);
        source
    }

    /// Reports keys in `t` that belong to another auth type (`own`: the keys of `kind`).
    fn foreign_auth_keys(&mut self, t: &mut Table, p: &str, kind: &str, own: &[&str]) {
        for name in AUTH_KEYS
            .iter()
            .filter(|k| **k != "type" && !own.contains(k))
        {
            if t.remove(*name).is_some() {
                self.push(
                    &format!("{p}.{name}"),
                    format!("{name} does not apply to type = {kind:?}"),
                    None,
                );
            }
        }
    }

    fn auth_file(&mut self, p: &str, t: &mut Table) -> Option<AuthSource> {
        let dir = t.remove("dir").map(|v| self.path(&format!("{p}.dir"), v));
        let file = t.remove("file").map(|v| self.path(&format!("{p}.file"), v));
        let logins_key = format!("{p}.logins");
        let logins = t.remove("logins").map(|v| self.strings(&logins_key, v));
        self.foreign_auth_keys(t, p, "file", AUTH_FILE_KEYS);
        match (dir, file) {
            (Some(_), Some(_)) => {
                self.push(
                    p,
                    "dir and file exclude each other; set exactly one",
                    Some(FILE_OR_DIR_HINT.into()),
                );
                None
            }
            (None, None) => {
                self.push(
                    p,
                    "type = \"file\" needs dir or file",
                    Some(FILE_OR_DIR_HINT.into()),
                );
                None
            }
            (Some(dir), None) => {
                if logins.is_some() {
                    self.push(
                        &logins_key,
                        "logins only applies with file; with dir, <dir>/<login> holds each login's keys",
                        None,
                    );
                }
                let dir = dir?;
                let exists = self.check_dir(&format!("{p}.dir"), &dir);
                (exists && logins.is_none()).then_some(AuthSource::File {
                    dir: Some(dir),
                    file: None,
                    logins: Vec::new(),
                })
            }
            (None, Some(file)) => {
                let logins = match logins {
                    None => {
                        self.push(
                            &logins_key,
                            "required with file: list the logins that may use this file",
                            Some("e.g. logins = [\"alice\"], or [\"*\"] for any login".into()),
                        );
                        None
                    }
                    Some(None) => None,
                    Some(Some(list)) if list.is_empty() => {
                        self.push(
                            &logins_key,
                            "must not be empty",
                            Some("use [\"*\"] for any login".into()),
                        );
                        None
                    }
                    Some(Some(list)) => {
                        let empty: Vec<usize> = list
                            .iter()
                            .enumerate()
                            .filter(|(_, l)| l.trim().is_empty())
                            .map(|(i, _)| i)
                            .collect();
                        for i in &empty {
                            self.push(&format!("{logins_key}[{i}]"), "must not be empty", None);
                        }
                        empty.is_empty().then_some(list)
                    }
                };
                Some(AuthSource::File {
                    dir: None,
                    file: Some(file?),
                    logins: logins?,
                })
            }
        }
    }

    fn auth_command(&mut self, p: &str, t: &mut Table) -> Option<AuthSource> {
        let command_key = format!("{p}.command");
        let command = match t.remove("command") {
            None => {
                self.push(
                    &command_key,
                    "required with type = \"command\"",
                    Some("e.g. command = \"/usr/local/bin/keys %u %f\"".into()),
                );
                None
            }
            Some(v) => self.non_empty_string(&command_key, v).and_then(|c| {
                let program = c.split_whitespace().next().unwrap_or_default();
                if Path::new(program).is_absolute() {
                    Some(c)
                } else {
                    self.push(
                        &command_key,
                        format!("the program must be an absolute path, found {program:?}"),
                        Some(format!(
                            "write the full path, e.g. /usr/local/bin/{program}"
                        )),
                    );
                    None
                }
            }),
        };
        let run_as = self.field(
            t,
            p,
            "run_as",
            DEFAULT_RUN_AS.to_string(),
            Self::non_empty_string,
        );
        let timeout = self.field(t, p, "timeout", DEFAULT_COMMAND_TIMEOUT, |r, k, v| {
            r.duration(k, v, true)
        });
        self.foreign_auth_keys(t, p, "command", AUTH_COMMAND_KEYS);
        Some(AuthSource::Command {
            command: command?,
            run_as: run_as?,
            timeout: timeout?,
        })
    }

    fn auth_iam(&mut self, p: &str, t: &mut Table) -> Option<AuthSource> {
        let groups_key = format!("{p}.groups");
        let groups = self.field(t, p, "groups", Vec::new(), Self::strings);
        let groups = groups.and_then(|list| {
            let mut ok = true;
            for (i, g) in list.iter().enumerate() {
                if let Err(why) = crate::keys::iam::validate_group_name(g) {
                    self.push(&format!("{groups_key}[{i}]"), why, None);
                    ok = false;
                }
            }
            ok.then_some(list)
        });
        let arn_key = format!("{p}.assume_role_arn");
        let assume_role_arn = match t.remove("assume_role_arn") {
            None => Some(None),
            Some(v) => self.string(&arn_key, v).and_then(|arn| {
                match crate::keys::iam::validate_role_arn(&arn) {
                    Ok(()) => Some(Some(arn)),
                    Err(why) => {
                        self.push(
                            &arn_key,
                            why,
                            Some("e.g. arn:aws:iam::123456789012:role/bastion-key-reader".into()),
                        );
                        None
                    }
                }
            }),
        };
        let mut ttl = |r: &mut Self, name: &str, default: Duration| {
            r.field(t, p, name, default, |r, k, v| r.duration(k, v, true))
        };
        let cache_ttl = ttl(self, "cache_ttl", IAM_CACHE_TTL);
        let stale_ttl = ttl(self, "stale_ttl", IAM_STALE_TTL);
        let negative_ttl = ttl(self, "negative_ttl", IAM_NEGATIVE_TTL);
        let timeout = ttl(self, "timeout", IAM_TIMEOUT);
        let cache_dir = match t.remove("cache_dir") {
            None => Some(None),
            Some(v) => {
                let key = format!("{p}.cache_dir");
                self.path(&key, v)
                    .filter(|dir| self.check_dir(&key, dir))
                    .map(Some)
            }
        };
        if let (Some(fresh), Some(stale)) = (cache_ttl, stale_ttl) {
            if stale < fresh {
                self.push(
                    &format!("{p}.stale_ttl"),
                    format!(
                        "must be at least cache_ttl ({}), found {}",
                        humantime::format_duration(fresh),
                        humantime::format_duration(stale)
                    ),
                    None,
                );
                return None;
            }
        }
        self.foreign_auth_keys(t, p, "iam", AUTH_IAM_KEYS);
        Some(AuthSource::Iam(IamAuth {
            groups: groups?,
            assume_role_arn: assume_role_arn?,
            cache_ttl: cache_ttl?,
            stale_ttl: stale_ttl?,
            negative_ttl: negative_ttl?,
            timeout: timeout?,
            cache_dir: cache_dir?,
        }))
    }

    fn auth_eic(&mut self, p: &str, t: &mut Table) -> Option<AuthSource> {
        let key = format!("{p}.ca_bundle");
        let ca_bundle = match t.remove("ca_bundle") {
            Some(v) => self
                .path(&key, v)
                .filter(|path| self.check_ca_bundle(&key, path)),
            None => match system_ca_bundle() {
                Ok(b) => Some(b),
                Err(e) => {
                    self.push(
                        &key,
                        e,
                        Some("install ca-certificates, or set ca_bundle to a PEM file of trust anchors".into()),
                    );
                    None
                }
            },
        };
        let timeout = self.field(t, p, "timeout", EIC_TIMEOUT, |r, k, v| {
            r.duration(k, v, true)
        });
        self.foreign_auth_keys(t, p, "eic", AUTH_EIC_KEYS);
        Some(AuthSource::Eic(EicAuth {
            ca_bundle: ca_bundle?,
            timeout: timeout?,
        }))
    }

    /// A readable PEM file with at least one certificate.
    fn check_ca_bundle(&mut self, key: &str, path: &Path) -> bool {
        match crate::keys::eic::read_anchors(path) {
            Ok(_) => true,
            Err(e) => {
                self.push(key, e, None);
                false
            }
        }
    }

    fn eic(&mut self, root: &mut Table) -> Option<Eic> {
        let mut t = self.section(root, "eic")?;
        let e = "eic";
        let push = self.field(&mut t, e, "push", false, Self::boolean);
        let default_users: Vec<String> = EIC_OS_USERS.iter().map(|u| u.to_string()).collect();
        let os_users = self.field(&mut t, e, "os_users", default_users, |r, k, v| {
            r.os_users(k, v)
        });
        let timeout = self.field(&mut t, e, "timeout", EIC_PUSH_TIMEOUT, |r, k, v| {
            r.duration(k, v, true)
        });
        self.leftovers(t, e, &names(EIC_KEYS));
        Some(Eic {
            push: push?,
            os_users: os_users?,
            timeout: timeout?,
        })
    }

    /// A non-empty list of OS user names as EC2 Instance Connect accepts them.
    fn os_users(&mut self, key: &str, v: Value) -> Option<Vec<String>> {
        let list = self.non_empty_strings(key, v)?;
        let mut ok = true;
        for (i, u) in list.iter().enumerate() {
            if let Err(why) = crate::keys::eic::validate_os_user(u) {
                self.push(&format!("{key}[{i}]"), why, None);
                ok = false;
            }
        }
        ok.then_some(list)
    }

    fn allow(&mut self, root: &mut Table) -> Option<Vec<AllowRule>> {
        let Some(v) = root.remove("allow") else {
            return Some(Vec::new());
        };
        let entries = self.tables("allow", v)?;
        all(entries.into_iter().enumerate().map(|(i, mut t)| {
            let key = format!("allow[{i}]");
            let mut required = |r: &mut Self, name: &str| match t.remove(name) {
                Some(v) => r.non_empty_strings(&format!("{key}.{name}"), v),
                None => {
                    r.push(
                        &format!("{key}.{name}"),
                        "missing",
                        Some(format!("every [[allow]] rule needs {name}")),
                    );
                    None
                }
            };
            let principals = required(self, "principals");
            let to = required(self, "to");
            let os_users = match t.remove("os_users") {
                None => Some(None),
                Some(v) => self.os_users(&format!("{key}.os_users"), v).map(Some),
            };
            self.leftovers(t, &key, ALLOW_KEYS);
            Some(AllowRule {
                principals: principals?,
                to: to?,
                os_users: os_users?,
                key,
            })
        }))
    }

    fn audit(&mut self, root: &mut Table) -> Option<Audit> {
        let mut t = self.section(root, "audit")?;
        let dir = self.field(
            &mut t,
            "audit",
            "dir",
            PathBuf::from(DEFAULT_AUDIT_DIR),
            Self::path,
        );
        let stdout = self.field(&mut t, "audit", "stdout", false, Self::boolean);
        let spool_max = self.field(&mut t, "audit", "spool_max", 1 << 30, |r, k, v| {
            r.size(k, v, 64 << 10)
        });
        let ship_grace = self.field(
            &mut t,
            "audit",
            "ship_grace",
            DEFAULT_SHIP_GRACE,
            |r, k, v| r.duration(k, v, false),
        );
        let mut text = |r: &mut Self, name: &str, valid: fn(&str) -> bool, rule: &str| {
            let v = t.remove(name)?;
            let key = format!("audit.{name}");
            let s = r.non_empty_string(&key, v)?;
            if valid(&s) {
                Some(s)
            } else {
                r.push(&key, format!("{s:?} is not valid: {rule}"), None);
                None
            }
        };
        // CloudWatch Logs group names: 1-512 of [A-Za-z0-9_-/.#].
        let log_group = text(
            self,
            "cloudwatch_log_group",
            |s| {
                s.len() <= 512
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c))
            },
            "1 to 512 letters, digits and _-/.#",
        );
        // S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
        let bucket = text(
            self,
            "s3_bucket",
            |s| {
                (3..=63).contains(&s.len())
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
            },
            "3 to 63 lowercase letters, digits, dots and hyphens",
        );
        let prefix = text(
            self,
            "s3_prefix",
            |s| !s.starts_with('/') && s.len() <= 512,
            "no leading /, at most 512 bytes",
        );
        let sse = text(
            self,
            "s3_sse",
            |s| s == "AES256" || s == "aws:kms",
            "\"AES256\" or \"aws:kms\"",
        );
        let kms_key = text(
            self,
            "s3_kms_key_id",
            |s| s.len() <= 2048,
            "a KMS key id, alias or ARN",
        );
        let interval = self.field(
            &mut t,
            "audit",
            "s3_interval",
            Duration::from_secs(300),
            |r, k, v| r.duration(k, v, true),
        );
        let s3_keys_set = prefix.is_some() || sse.is_some() || kms_key.is_some();
        let s3 = match bucket {
            Some(bucket) => {
                if kms_key.is_some() && sse.as_deref() != Some("aws:kms") {
                    self.push(
                        "audit.s3_kms_key_id",
                        "s3_kms_key_id needs s3_sse = \"aws:kms\"",
                        None,
                    );
                }
                Some(S3Sink {
                    bucket,
                    prefix: prefix.unwrap_or_default(),
                    kms: (sse.as_deref() == Some("aws:kms")).then_some(kms_key),
                    interval: interval.unwrap_or(Duration::from_secs(300)),
                })
            }
            None => {
                if s3_keys_set && !self.origins.is_set("audit.s3_bucket") {
                    self.push(
                        "audit.s3_bucket",
                        "s3_prefix, s3_sse and s3_kms_key_id need s3_bucket",
                        None,
                    );
                }
                None
            }
        };
        self.leftovers(t, "audit", &names(AUDIT_KEYS));
        Some(Audit {
            dir: dir?,
            stdout: stdout?,
            spool_max: spool_max?,
            ship_grace: ship_grace?,
            cloudwatch_log_group: log_group,
            s3,
        })
    }

    fn sandbox(&mut self, root: &mut Table) -> Option<Sandbox> {
        let mut t = self.section(root, "sandbox")?;
        let s = "sandbox";
        let max = i64::try_from(MAX_UID).unwrap_or(i64::MAX);
        let enabled = self.field(&mut t, s, "enabled", true, Self::boolean);
        let uid_base = self.field(&mut t, s, "uid_base", DEFAULT_UID_BASE, |r, k, v| {
            r.integer(k, v, MIN_UID_BASE, max)
        });
        let uid_count = self.field(&mut t, s, "uid_count", DEFAULT_UID_COUNT, |r, k, v| {
            r.integer(k, v, 1, max)
        });
        let memory_limit = self.field(
            &mut t,
            s,
            "memory_limit",
            DEFAULT_MEMORY_LIMIT,
            |r, k, v| r.size(k, v, MIN_MEMORY_LIMIT),
        );
        let runtime_dir = self.field(
            &mut t,
            s,
            "runtime_dir",
            PathBuf::from(DEFAULT_RUNTIME_DIR),
            |r, k, v| {
                let dir = r.string(k, v)?;
                if Path::new(&dir).is_absolute() {
                    Some(PathBuf::from(dir))
                } else {
                    r.push(k, format!("must be an absolute path, found {dir:?}"), None);
                    None
                }
            },
        );
        self.leftovers(t, s, &names(SANDBOX_KEYS));
        let (uid_base, uid_count) = (uid_base?, uid_count?);
        let end = u64::from(uid_base) + u64::from(uid_count);
        if end > MAX_UID {
            let key = self.blame("sandbox.uid_count", "sandbox.uid_base");
            self.push(
                key,
                format!("uid_base + uid_count must not exceed {MAX_UID}, found {uid_base} + {uid_count} = {end}"),
                None,
            );
            return None;
        }
        Some(Sandbox {
            enabled: enabled?,
            uid_base,
            uid_count,
            memory_limit: memory_limit?,
            runtime_dir: runtime_dir?,
        })
    }

    fn limits(&mut self, root: &mut Table) -> Option<Limits> {
        let mut t = self.section(root, "limits")?;
        let l = "limits";
        let login_grace = self.field(&mut t, l, "login_grace", DEFAULT_LOGIN_GRACE, |r, k, v| {
            r.duration(k, v, true)
        });
        let max_startups = self.field(
            &mut t,
            l,
            "max_startups",
            DEFAULT_MAX_STARTUPS,
            |r, k, v| r.integer(k, v, 1, MAX_COUNT),
        );
        let per_source = self.field(&mut t, l, "per_source", DEFAULT_PER_SOURCE, |r, k, v| {
            r.integer(k, v, 1, MAX_COUNT)
        });
        let max_sessions = self.field(
            &mut t,
            l,
            "max_sessions",
            DEFAULT_MAX_SESSIONS,
            |r, k, v| r.integer(k, v, 1, MAX_COUNT),
        );
        let connect_timeout = self.field(
            &mut t,
            l,
            "connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
            |r, k, v| r.duration(k, v, true),
        );
        let shutdown_grace = self.field(
            &mut t,
            l,
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            |r, k, v| r.duration(k, v, false),
        );
        let drain_delay = self.field(&mut t, l, "drain_delay", Duration::ZERO, |r, k, v| {
            r.duration(k, v, false)
        });
        self.leftovers(t, l, &names(LIMITS_KEYS));
        let (max_startups, per_source) = (max_startups?, per_source?);
        if per_source > max_startups {
            let key = self.blame("limits.per_source", "limits.max_startups");
            self.push(
                key,
                format!("per_source ({per_source}) must not exceed max_startups ({max_startups})"),
                None,
            );
            return None;
        }
        Some(Limits {
            login_grace: login_grace?,
            max_startups,
            per_source,
            max_sessions: max_sessions?,
            connect_timeout: connect_timeout?,
            shutdown_grace: shutdown_grace?,
            drain_delay: drain_delay?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Collects results that were all computed (so every problem was reported); `None` if any failed.
fn all<T>(results: impl IntoIterator<Item = Option<T>>) -> Option<Vec<T>> {
    let results: Vec<Option<T>> = results.into_iter().collect();
    results.into_iter().collect()
}

/// A value's type for error messages, with the value itself when it is short.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() <= 40 => format!("a string ({s:?})"),
        Value::String(_) => "a string".into(),
        Value::Integer(n) => format!("an integer ({n})"),
        Value::Float(x) => format!("a float ({x})"),
        Value::Boolean(b) => format!("a boolean ({b})"),
        Value::Datetime(d) => format!("a date-time ({d})"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}

/// Parses `"1GiB"`, `"512 MiB"`, `"4096"`: a number and an optional unit B, KiB, MiB or GiB
/// (any case).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    if number.is_empty() {
        return Err("expected a number followed by B, KiB, MiB or GiB".into());
    }
    let n: u64 = number.parse().map_err(|_| "number too large".to_string())?;
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        _ => return Err(format!("unknown unit {unit:?}; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "size too large".to_string())
}

/// Formats a byte count with the largest unit that divides it.
fn format_size(n: u64) -> String {
    const UNITS: &[(u32, &str)] = &[(30, "GiB"), (20, "MiB"), (10, "KiB")];
    UNITS
        .iter()
        .find(|(shift, _)| n != 0 && n.is_multiple_of(1u64 << shift))
        .map_or_else(
            || format!("{n}B"),
            |(shift, unit)| format!("{}{unit}", n >> shift),
        )
}

/// The closest of `candidates` to `name`, if within an edit distance of 2.
fn suggest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, by characters, ignoring ASCII case.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A temporary directory with a host key and a users directory.
    struct Fixture {
        dir: tempfile::TempDir,
        key: PathBuf,
        users: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hostkey");
        fs::write(&key, "not really a key\n").unwrap();
        let users = dir.path().join("users");
        fs::create_dir(&users).unwrap();
        Fixture { dir, key, users }
    }

    impl Fixture {
        /// The smallest valid file.
        fn minimal(&self) -> String {
            format!(
                "host_keys = [{:?}]\n[[auth]]\ntype = \"file\"\ndir = {:?}\n",
                self.key, self.users
            )
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            fs::write(&path, text).unwrap();
            path
        }

        fn load(
            &self,
            text: &str,
            env: &[(&str, &str)],
            flags: Vec<Override>,
        ) -> Result<Config, Vec<ConfigError>> {
            let path = self.write("bastion.toml", text);
            load(Some(&path), vars(env), flags)
        }

        fn path(&self) -> String {
            self.dir.path().join("bastion.toml").display().to_string()
        }
    }

    fn vars(env: &[(&str, &str)]) -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ok(r: Result<Config, Vec<ConfigError>>) -> Config {
        match r {
            Ok(c) => c,
            Err(e) => panic!("unexpected errors: {e:#?}"),
        }
    }

    fn errs(r: Result<Config, Vec<ConfigError>>) -> Vec<ConfigError> {
        match r {
            Ok(c) => panic!("expected errors, got {c:#?}"),
            Err(e) => e,
        }
    }

    fn one(r: Result<Config, Vec<ConfigError>>) -> ConfigError {
        let e = errs(r);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap()
    }

    fn flag(key: &str, value: Value, source: &str) -> Override {
        Override {
            key: key.into(),
            value,
            source: source.into(),
        }
    }

    #[test]
    fn defaults() {
        let f = fixture();
        let cfg = ok(f.load(&f.minimal(), &[], vec![]));
        assert_eq!(
            cfg.listen,
            vec!["0.0.0.0:22".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(cfg.host_keys, vec![HostKey::File(f.key.clone())]);
        assert_eq!(
            cfg.auth,
            vec![AuthSource::File {
                dir: Some(f.users.clone()),
                file: None,
                logins: vec![]
            }]
        );
        assert!(cfg.allow.is_empty());
        assert_eq!(
            cfg.audit,
            Audit {
                dir: "/var/log/bastion".into(),
                stdout: false,
                spool_max: 1 << 30,
                ship_grace: Duration::from_secs(30),
                cloudwatch_log_group: None,
                s3: None,
            }
        );
        assert_eq!(
            cfg.sandbox,
            Sandbox {
                enabled: true,
                uid_base: 2_000_000_000,
                uid_count: 65536,
                memory_limit: 1 << 30,
                runtime_dir: "/run/bastion".into()
            }
        );
        assert_eq!(
            cfg.limits,
            Limits {
                login_grace: Duration::from_secs(20),
                max_startups: 64,
                per_source: 10,
                max_sessions: 1000,
                connect_timeout: Duration::from_secs(10),
                shutdown_grace: Duration::from_secs(30),
                drain_delay: Duration::ZERO,
            }
        );
        assert_eq!(cfg.origins.of("host_keys"), f.path());
        assert_eq!(cfg.origins.of("auth[0].dir"), f.path());
        assert_eq!(cfg.origins.of("limits.max_startups"), "default");
        assert_eq!(cfg.origins.of("listen"), "default");
    }

    #[test]
    fn defaults_table_matches_the_defaults() {
        let f = fixture();
        let plain = ok(f.load(&f.minimal(), &[], vec![]));
        let mut table = Config::defaults_table();
        table.extend(toml::from_str::<Table>(&f.minimal()).unwrap());
        let from_defaults = ok(from_table(table, "defaults", vec![], vec![]));
        assert_eq!(plain.listen, from_defaults.listen);
        assert_eq!(plain.audit, from_defaults.audit);
        assert_eq!(plain.sandbox, from_defaults.sandbox);
        assert_eq!(plain.limits, from_defaults.limits);
    }

    #[test]
    fn no_file_defaults_env_and_flags() {
        let f = fixture();
        let auth = format!("[{{type = \"file\", dir = {:?}}}]", f.users);
        let key = f.key.display().to_string();
        let cfg = ok(load(
            None,
            vars(&[("BASTION_HOST_KEYS", &key), ("BASTION_AUTH", &auth)]),
            vec![],
        ));
        assert_eq!(cfg.host_keys, vec![HostKey::File(f.key.clone())]);
        assert_eq!(
            cfg.origins.of("host_keys[0]"),
            "environment variable BASTION_HOST_KEYS"
        );

        let e = errs(load(None, vec![], vec![]));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert_eq!(
            (e[0].key.as_str(), e[0].source.as_str()),
            ("host_keys", "configuration")
        );
        assert_eq!(
            (e[1].key.as_str(), e[1].source.as_str()),
            ("auth", "configuration")
        );
    }

    #[test]
    fn full_valid_file() {
        let f = fixture();
        let ak = f.write("alice_keys", "");
        let text = format!(
            r#"
listen = ["127.0.0.1:2222", "[::1]:2222"]
host_keys = [{key:?}]

[[auth]]
type = "file"
dir = {users:?}

[[auth]]
type = "file"
file = {ak:?}
logins = ["alice", "*"]

[[auth]]
type = "command"
command = "/usr/local/bin/keys %u %f"
run_as = "keys"
timeout = "1m 30s"

[[allow]]
principals = ["*"]
to = ["10.0.0.0/8:22"]

[[allow]]
principals = ["alice", "group:ops"]
to = ["db.internal:5432", "10.1.0.0/16:*", "[::1]:22"]

[audit]
dir = "/srv/audit"
stdout = true

[sandbox]
enabled = false
uid_base = 100000
uid_count = 1000
memory_limit = "256MiB"
runtime_dir = "/run/b2"

[limits]
login_grace = "5s"
max_startups = 32
per_source = 4
max_sessions = 200
connect_timeout = "3s"
shutdown_grace = "0s"
drain_delay = "15s"
"#,
            key = f.key,
            users = f.users,
            ak = ak,
        );
        let cfg = ok(f.load(&text, &[], vec![]));
        assert_eq!(
            cfg.listen,
            vec![
                "127.0.0.1:2222".parse::<SocketAddr>().unwrap(),
                "[::1]:2222".parse().unwrap()
            ]
        );
        assert_eq!(
            cfg.auth,
            vec![
                AuthSource::File {
                    dir: Some(f.users.clone()),
                    file: None,
                    logins: vec![]
                },
                AuthSource::File {
                    dir: None,
                    file: Some(ak.clone()),
                    logins: vec!["alice".into(), "*".into()]
                },
                AuthSource::Command {
                    command: "/usr/local/bin/keys %u %f".into(),
                    run_as: "keys".into(),
                    timeout: Duration::from_secs(90)
                },
            ]
        );
        assert_eq!(cfg.allow.len(), 2);
        assert_eq!(cfg.allow[1].key, "allow[1]");
        assert_eq!(cfg.allow[1].principals, vec!["alice", "group:ops"]);
        assert_eq!(
            cfg.allow[1].to,
            vec!["db.internal:5432", "10.1.0.0/16:*", "[::1]:22"]
        );
        assert_eq!(
            cfg.audit,
            Audit {
                dir: "/srv/audit".into(),
                stdout: true,
                spool_max: 1 << 30,
                ship_grace: Duration::from_secs(30),
                cloudwatch_log_group: None,
                s3: None,
            }
        );
        assert_eq!(
            cfg.sandbox,
            Sandbox {
                enabled: false,
                uid_base: 100_000,
                uid_count: 1000,
                memory_limit: 256 << 20,
                runtime_dir: "/run/b2".into()
            }
        );
        assert_eq!(
            cfg.limits,
            Limits {
                login_grace: Duration::from_secs(5),
                max_startups: 32,
                per_source: 4,
                max_sessions: 200,
                connect_timeout: Duration::from_secs(3),
                shutdown_grace: Duration::ZERO,
                drain_delay: Duration::from_secs(15),
            }
        );
        assert_eq!(cfg.origins.of("allow[1].to[2]"), f.path());
        assert_eq!(cfg.origins.of("limits.per_source"), f.path());
    }

    #[test]
    fn precedence_file_env_flag_per_leaf() {
        let f = fixture();
        let text = format!(
            "listen = [\"127.0.0.1:1\"]\n{}[audit]\ndir = \"/file/audit\"\nstdout = true\n[limits]\nmax_startups = 30\nper_source = 3\n",
            f.minimal()
        );
        let env = [
            ("BASTION_AUDIT__DIR", "/env/audit"),
            ("BASTION_LIMITS__MAX_STARTUPS", "20"),
            ("BASTION_LISTEN", "127.0.0.1:2"),
            ("BASTION_LOG", "debug"),
            ("BASTION_CONFIG", "/elsewhere.toml"),
            ("HOME", "/root"),
        ];
        let flags = vec![flag(
            "limits.max_startups",
            Value::Integer(10),
            "flag --max-startups",
        )];
        let cfg = ok(f.load(&text, &env, flags));
        assert_eq!(cfg.audit.dir, PathBuf::from("/env/audit"));
        assert!(
            cfg.audit.stdout,
            "the file's audit.stdout survives BASTION_AUDIT__DIR"
        );
        assert_eq!(cfg.limits.max_startups, 10);
        assert_eq!(cfg.limits.per_source, 3);
        assert_eq!(
            cfg.listen,
            vec!["127.0.0.1:2".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            cfg.origins.of("audit.dir"),
            "environment variable BASTION_AUDIT__DIR"
        );
        assert_eq!(cfg.origins.of("audit.stdout"), f.path());
        assert_eq!(cfg.origins.of("limits.max_startups"), "flag --max-startups");
        assert_eq!(cfg.origins.of("limits.per_source"), f.path());
        assert_eq!(
            cfg.origins.of("listen[0]"),
            "environment variable BASTION_LISTEN"
        );
        assert_eq!(cfg.origins.of("limits.login_grace"), "default");
    }

    #[test]
    fn env_lists_are_split_on_commas() {
        let f = fixture();
        let env = [("BASTION_LISTEN", "127.0.0.1:2222, [::1]:2222")];
        let cfg = ok(f.load(&f.minimal(), &env, vec![]));
        assert_eq!(
            cfg.listen,
            vec![
                "127.0.0.1:2222".parse::<SocketAddr>().unwrap(),
                "[::1]:2222".parse().unwrap()
            ]
        );

        // A TOML array works too, and so does a comma-separated flag value.
        let cfg = ok(f.load(
            &f.minimal(),
            &[("BASTION_LISTEN", r#"["127.0.0.1:1", "127.0.0.1:2"]"#)],
            vec![],
        ));
        assert_eq!(cfg.listen.len(), 2);
        let flags = vec![flag(
            "listen",
            Value::String("127.0.0.1:3,127.0.0.1:4".into()),
            "flag --listen",
        )];
        let cfg = ok(f.load(&f.minimal(), &[], flags));
        assert_eq!(cfg.listen.len(), 2);
        assert_eq!(cfg.listen[1].port(), 4);
    }

    #[test]
    fn env_scalars_are_typed() {
        let f = fixture();
        let env = [
            ("BASTION_SANDBOX__ENABLED", "false"),
            ("BASTION_SANDBOX__MEMORY_LIMIT", "128MiB"),
            ("BASTION_SANDBOX__UID_COUNT", "10"),
            ("BASTION_LIMITS__LOGIN_GRACE", "1m"),
            ("BASTION_AUDIT__STDOUT", "true"),
        ];
        let cfg = ok(f.load(&f.minimal(), &env, vec![]));
        assert!(!cfg.sandbox.enabled);
        assert_eq!(cfg.sandbox.memory_limit, 128 << 20);
        assert_eq!(cfg.sandbox.uid_count, 10);
        assert_eq!(cfg.limits.login_grace, Duration::from_secs(60));
        assert!(cfg.audit.stdout);

        let e = one(f.load(
            &f.minimal(),
            &[("BASTION_LIMITS__MAX_SESSIONS", "many")],
            vec![],
        ));
        assert_eq!(e.key, "limits.max_sessions");
        assert_eq!(
            e.source,
            "environment variable BASTION_LIMITS__MAX_SESSIONS"
        );
        assert!(
            e.message.contains("expected an integer") && e.message.contains("found a string"),
            "{e}"
        );
    }

    #[test]
    fn env_array_of_tables_replaces_the_whole_array() {
        let f = fixture();
        let text = format!(
            "{}[[allow]]\nprincipals = [\"*\"]\nto = [\"a:1\"]\n",
            f.minimal()
        );
        let env = [
            (
                "BASTION_AUTH",
                r#"[{type = "command", command = "/bin/keys %u", timeout = "5s"}]"#,
            ),
            (
                "BASTION_ALLOW",
                r#"[{principals = ["bob"], to = ["b:2"]}, {principals = ["carol"], to = ["c:3"]}]"#,
            ),
        ];
        let cfg = ok(f.load(&text, &env, vec![]));
        assert_eq!(
            cfg.auth,
            vec![AuthSource::Command {
                command: "/bin/keys %u".into(),
                run_as: "nobody".into(),
                timeout: Duration::from_secs(5)
            }]
        );
        assert_eq!(cfg.allow.len(), 2);
        assert_eq!(cfg.allow[1].principals, vec!["carol"]);
        assert_eq!(
            cfg.origins.of("auth[0].command"),
            "environment variable BASTION_AUTH"
        );
        assert_eq!(
            cfg.origins.of(&cfg.allow[1].key),
            "environment variable BASTION_ALLOW"
        );

        // Problems inside it name the variable.
        let e = errs(f.load(
            &f.minimal(),
            &[("BASTION_AUTH", r#"[{type = "file", dirr = "/x"}]"#)],
            vec![],
        ));
        let keys: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.key.as_str(), e.source.as_str()))
            .collect();
        let var = "environment variable BASTION_AUTH";
        assert_eq!(keys, vec![("auth[0]", var), ("auth[0].dirr", var)]);

        // A single entry cannot be patched through the environment.
        let e = one(f.load(&f.minimal(), &[("BASTION_AUTH__DIR", "/x")], vec![]));
        assert_eq!(e.key, "auth.dir");
        assert_eq!(e.source, "environment variable BASTION_AUTH__DIR");
        assert!(e.hint.unwrap().contains("BASTION_AUTH='[{"));
    }

    #[test]
    fn unknown_key_in_file() {
        let f = fixture();
        let e = one(f.load(
            &format!("lisen = [\"0.0.0.0:22\"]\n{}", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "lisen");
        assert_eq!(e.source, f.path());
        assert_eq!(e.message, "unknown key \"lisen\"");
        assert_eq!(e.hint.as_deref(), Some("did you mean listen?"));
        assert_eq!(
            e.to_string(),
            format!("{}: lisen: unknown key \"lisen\"", f.path())
        );

        let e = one(f.load(&format!("frobnicate = 1\n{}", f.minimal()), &[], vec![]));
        assert_eq!(e.hint, None);
    }

    #[test]
    fn unknown_key_in_nested_table() {
        let f = fixture();
        let e = one(f.load(
            &format!("{}[limits]\nmax_startup = 5\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "limits.max_startup");
        assert_eq!(e.source, f.path());
        assert_eq!(e.message, "unknown key \"max_startup\"");
        assert_eq!(e.hint.as_deref(), Some("did you mean max_startups?"));
    }

    #[test]
    fn unknown_key_in_auth_entry() {
        let f = fixture();
        let text = format!(
            "{}[[auth]]\ntype = \"file\"\ndirr = {:?}\n",
            f.minimal(),
            f.users
        );
        let e = errs(f.load(&text, &[], vec![]));
        let unknown = e.iter().find(|e| e.key == "auth[1].dirr").unwrap();
        assert_eq!(unknown.source, f.path());
        assert_eq!(unknown.hint.as_deref(), Some("did you mean dir?"));
        // Without dirr being a dir, the entry has neither dir nor file.
        assert!(
            e.iter()
                .any(|e| e.key == "auth[1]" && e.message.contains("needs dir or file")),
            "{e:#?}"
        );
        assert_eq!(e.len(), 2);

        // A key of the other type is named as such.
        let text = format!("{}timeout = \"5s\"\n", f.minimal());
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "auth[0].timeout");
        assert!(
            e.message.contains("does not apply to type = \"file\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_as_env_var_and_flag() {
        let f = fixture();
        let e = one(f.load(&f.minimal(), &[("BASTION_LISEN", "0.0.0.0:22")], vec![]));
        assert_eq!(e.key, "lisen");
        assert_eq!(e.source, "environment variable BASTION_LISEN");
        assert_eq!(e.message, "unknown key \"lisen\"");
        assert_eq!(e.hint.as_deref(), Some("did you mean BASTION_LISTEN?"));

        let e = one(f.load(
            &f.minimal(),
            &[("BASTION_LIMITS__MAX_STARTUP", "5")],
            vec![],
        ));
        assert_eq!(e.key, "limits.max_startup");
        assert_eq!(e.source, "environment variable BASTION_LIMITS__MAX_STARTUP");
        assert_eq!(
            e.hint.as_deref(),
            Some("did you mean BASTION_LIMITS__MAX_STARTUPS?")
        );

        let e = one(f.load(
            &f.minimal(),
            &[],
            vec![flag(
                "audit.dri",
                Value::String("/x".into()),
                "flag --audit-dri",
            )],
        ));
        assert_eq!(e.key, "audit.dri");
        assert_eq!(e.source, "flag --audit-dri");
        assert_eq!(e.hint.as_deref(), Some("did you mean audit.dir?"));

        let e = one(f.load(&f.minimal(), &[("BASTION_LIMITS____X", "5")], vec![]));
        assert_eq!(e.source, "environment variable BASTION_LIMITS____X");
    }

    #[test]
    fn several_errors_are_collected() {
        let f = fixture();
        let text = format!(
            "lisen = []\n{}[audit]\nstdout = \"yes\"\n[sandbox]\nmemory_limit = \"1MiB\"\n[limits]\nmax_startups = -3\nlogin_grace = \"soon\"\n",
            f.minimal()
        );
        let env = [("BASTION_SANDBOX__UID_BASE", "5"), ("BASTION_NOPE", "1")];
        let e = errs(f.load(&text, &env, vec![]));
        let mut keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            vec![
                "audit.stdout",
                "limits.login_grace",
                "limits.max_startups",
                "lisen",
                "nope",
                "sandbox.memory_limit",
                "sandbox.uid_base"
            ],
            "{e:#?}"
        );
        let source = |key: &str| e.iter().find(|e| e.key == key).unwrap().source.clone();
        assert_eq!(
            source("sandbox.uid_base"),
            "environment variable BASTION_SANDBOX__UID_BASE"
        );
        assert_eq!(source("nope"), "environment variable BASTION_NOPE");
        assert_eq!(source("limits.max_startups"), f.path());
    }

    #[test]
    fn wrong_types() {
        let f = fixture();
        let text = format!(
            "listen = \"0.0.0.0:22\"\n{}[audit]\nstdout = \"yes\"\n[sandbox]\nuid_count = \"5\"\n[limits]\nlogin_grace = 20\n",
            f.minimal()
        );
        let e = errs(f.load(&text, &[], vec![]));
        assert_eq!(e.len(), 4, "{e:#?}");
        let msg = |key: &str| e.iter().find(|e| e.key == key).unwrap().message.clone();
        assert_eq!(
            msg("listen"),
            "expected a list of strings, found a string (\"0.0.0.0:22\")"
        );
        assert_eq!(
            msg("audit.stdout"),
            "expected a boolean (true or false), found a string (\"yes\")"
        );
        assert_eq!(
            msg("sandbox.uid_count"),
            "expected an integer between 1 and 4294967294, found a string (\"5\")"
        );
        assert_eq!(
            msg("limits.login_grace"),
            "expected a duration such as \"20s\", found an integer (20)"
        );

        let e = one(f.load(&format!("audit = 5\n{}", f.minimal()), &[], vec![]));
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("audit", "expected a table, found an integer (5)")
        );

        let e = one(f.load(
            &format!("listen = [\"0.0.0.0:22\", 7]\n{}", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "listen[1]");

        let text = format!(
            "host_keys = [{:?}]\n[auth]\ntype = \"file\"\ndir = {:?}\n",
            f.key, f.users
        );
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "auth");
        assert_eq!(e.message, "expected an array of tables, found a table");
        assert!(e.hint.unwrap().contains("[[auth]]"));
    }

    #[test]
    fn out_of_range_integers() {
        let f = fixture();
        let e = one(f.load(
            &format!("{}[limits]\nmax_startups = -3\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "limits.max_startups");
        assert_eq!(
            e.message,
            "expected an integer between 1 and 1000000, found -3"
        );

        let e = one(f.load(
            &format!("{}[sandbox]\nuid_base = 999\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(
            e.message,
            "expected an integer between 1000 and 4294967294, found 999"
        );

        let e = one(f.load(
            &format!("{}[sandbox]\nuid_base = 4294967000\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(
            e.key, "sandbox.uid_base",
            "only uid_base was set, so it is blamed"
        );
        assert!(e.message.contains("must not exceed 4294967294"), "{e}");

        let e = one(f.load(
            &format!(
                "{}[sandbox]\nuid_base = 4294967000\nuid_count = 10000\n",
                f.minimal()
            ),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "sandbox.uid_count");

        let e = one(f.load(
            &format!("{}[sandbox]\nmemory_limit = \"63MiB\"\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(e.message, "must be at least 64MiB, found 63MiB");
    }

    #[test]
    fn per_source_above_max_startups() {
        let f = fixture();
        let e = one(f.load(
            &format!(
                "{}[limits]\nmax_startups = 8\nper_source = 9\n",
                f.minimal()
            ),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "limits.per_source");
        assert_eq!(e.message, "per_source (9) must not exceed max_startups (8)");

        // Only max_startups was set (from the environment): it is the one to blame.
        let e = one(f.load(
            &f.minimal(),
            &[("BASTION_LIMITS__MAX_STARTUPS", "5")],
            vec![],
        ));
        assert_eq!(e.key, "limits.max_startups");
        assert_eq!(
            e.source,
            "environment variable BASTION_LIMITS__MAX_STARTUPS"
        );
    }

    #[test]
    fn bad_durations() {
        let f = fixture();
        let e = one(f.load(
            &format!("{}[limits]\nlogin_grace = \"soon\"\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "limits.login_grace");
        assert!(e.message.starts_with("invalid duration \"soon\""), "{e}");
        assert!(e.hint.is_some());

        let e = one(f.load(
            &format!("{}[limits]\nlogin_grace = \"0s\"\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(e.message, "must be longer than zero");

        let text = format!(
            "{}[[auth]]\ntype = \"command\"\ncommand = \"/bin/k\"\ntimeout = \"10 parsecs\"\n",
            f.minimal()
        );
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "auth[1].timeout");
    }

    #[test]
    fn missing_host_keys_has_a_hint() {
        let f = fixture();
        let text = format!("[[auth]]\ntype = \"file\"\ndir = {:?}\n", f.users);
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "host_keys");
        assert_eq!(e.source, f.path());
        assert_eq!(
            e.hint.as_deref(),
            Some(
                "create one with: ssh-keygen -t ed25519 -N '' -f /etc/bastion/ssh_host_ed25519_key"
            )
        );

        let e = one(f.load(&format!("host_keys = []\n{text}"), &[], vec![]));
        assert_eq!(e.key, "host_keys");
        assert!(e.hint.unwrap().starts_with("create one with: ssh-keygen"));
    }

    #[test]
    fn nonexistent_host_key() {
        let f = fixture();
        let missing = f.dir.path().join("nope");
        let text = format!(
            "host_keys = [{:?}, {:?}]\n[[auth]]\ntype = \"file\"\ndir = {:?}\n",
            f.key, missing, f.users
        );
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "host_keys[1]");
        assert_eq!(e.message, format!("{} does not exist", missing.display()));

        let text = format!(
            "host_keys = [{:?}]\n[[auth]]\ntype = \"file\"\ndir = {:?}\n",
            f.users, f.users
        );
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "host_keys[0]");
        assert!(e.message.ends_with("is not a regular file"), "{e}");
    }

    #[test]
    fn auth_dir_must_be_a_directory() {
        let f = fixture();
        let text = format!(
            "host_keys = [{:?}]\n[[auth]]\ntype = \"file\"\ndir = {:?}\n",
            f.key, f.key
        );
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "auth[0].dir");
        assert_eq!(e.message, format!("{} is not a directory", f.key.display()));

        let text = format!(
            "host_keys = [{:?}]\n[[auth]]\ntype = \"file\"\ndir = \"/does/not/exist\"\n",
            f.key
        );
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.message, "/does/not/exist does not exist");
    }

    #[test]
    fn auth_file_rules() {
        let f = fixture();
        let both = format!("{}file = \"/x\"\nlogins = [\"a\"]\n", f.minimal());
        let e = errs(f.load(&both, &[], vec![]));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].key, "auth[0]");
        assert_eq!(
            e[0].message,
            "dir and file exclude each other; set exactly one"
        );

        let base = format!("host_keys = [{:?}]\n[[auth]]\ntype = \"file\"\n", f.key);
        let e = one(f.load(&format!("{base}file = \"/x\"\n"), &[], vec![]));
        assert_eq!(e.key, "auth[0].logins");
        assert!(e.message.starts_with("required with file"));

        let e = one(f.load(
            &format!("{base}dir = {:?}\nlogins = [\"a\"]\n", f.users),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "auth[0].logins");

        let e = one(f.load(&format!("{base}file = \"/x\"\nlogins = []\n"), &[], vec![]));
        assert_eq!(e.key, "auth[0].logins");
        assert_eq!(e.message, "must not be empty");
    }

    #[test]
    fn command_rules() {
        let f = fixture();
        let base = format!("host_keys = [{:?}]\n[[auth]]\ntype = \"command\"\n", f.key);
        let e = one(f.load(&format!("{base}command = \"keys %u\"\n"), &[], vec![]));
        assert_eq!(e.key, "auth[0].command");
        assert_eq!(
            e.message,
            "the program must be an absolute path, found \"keys\""
        );

        let e = one(f.load(&format!("{base}command = \"  \"\n"), &[], vec![]));
        assert_eq!(e.message, "must not be empty");

        let e = errs(f.load(&format!("{base}run_as = \"\"\n"), &[], vec![]));
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["auth[0].command", "auth[0].run_as"]);
    }

    #[test]
    fn unknown_auth_type() {
        let f = fixture();
        let text = format!(
            "host_keys = [{:?}]\n[[auth]]\ntype = \"ldap\"\ndir = \"/x\"\n",
            f.key
        );
        let e = one(f.load(&text, &[], vec![]));
        assert_eq!(e.key, "auth[0].type");
        assert_eq!(
            e.message,
            "unknown type \"ldap\"; known types are \"file\", \"command\", \"iam\" and \"eic\""
        );

        let e = one(f.load(
            &format!("host_keys = [{:?}]\n[[auth]]\ndir = \"/x\"\n", f.key),
            &[],
            vec![],
        ));
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("auth[0].type", "missing")
        );
    }

    #[test]
    fn iam_source_defaults_and_settings() {
        let f = fixture();
        let base = format!("host_keys = [{:?}]\n[[auth]]\ntype = \"iam\"\n", f.key);
        let cfg = ok(f.load(&base, &[], vec![]));
        assert_eq!(
            cfg.auth,
            vec![AuthSource::Iam(IamAuth {
                groups: vec![],
                assume_role_arn: None,
                cache_ttl: IAM_CACHE_TTL,
                stale_ttl: IAM_STALE_TTL,
                negative_ttl: IAM_NEGATIVE_TTL,
                timeout: IAM_TIMEOUT,
                cache_dir: None,
            })]
        );
        let text = format!(
            "{base}groups = [\"bastion-users\", \"ops\"]\nassume_role_arn = \"arn:aws:iam::111111111111:role/keys\"\ncache_ttl = \"5s\"\nstale_ttl = \"2m\"\nnegative_ttl = \"1s\"\ntimeout = \"3s\"\ncache_dir = {:?}\n",
            f.users
        );
        let cfg = ok(f.load(&text, &[], vec![]));
        let AuthSource::Iam(iam) = &cfg.auth[0] else {
            panic!("{:?}", cfg.auth)
        };
        assert_eq!(iam.groups, vec!["bastion-users", "ops"]);
        assert_eq!(
            iam.assume_role_arn.as_deref(),
            Some("arn:aws:iam::111111111111:role/keys")
        );
        assert_eq!(iam.cache_ttl, Duration::from_secs(5));
        assert_eq!(iam.stale_ttl, Duration::from_secs(120));
        assert_eq!(iam.cache_dir.as_deref(), Some(f.users.as_path()));
        let e = one(f.load(
            &format!("{base}cache_dir = \"/nonexistent/bastion-cache\"\n"),
            &[],
            vec![],
        ));
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "auth[0].cache_dir",
                "/nonexistent/bastion-cache does not exist"
            )
        );
    }

    #[test]
    fn iam_source_errors_name_their_keys() {
        let f = fixture();
        let base = format!("host_keys = [{:?}]\n[[auth]]\ntype = \"iam\"\n", f.key);
        let e = errs(f.load(
            &format!("{base}groups = [\"ok\", \"no/slash\"]\nassume_role_arn = \"arn:aws:iam::1:role/x\"\ncache_ttl = \"0s\"\ndir = \"/x\"\n"),
            &[],
            vec![],
        ));
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "auth[0].groups[1]",
                "auth[0].assume_role_arn",
                "auth[0].cache_ttl",
                "auth[0].dir"
            ],
            "{e:?}"
        );
        assert!(e[1]
            .hint
            .as_deref()
            .unwrap()
            .contains("arn:aws:iam::123456789012:role/"));
        assert_eq!(e[3].message, "dir does not apply to type = \"iam\"");
        let e = one(f.load(
            &format!("{base}cache_ttl = \"10m\"\nstale_ttl = \"1m\"\n"),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "auth[0].stale_ttl");
        assert!(
            e.message.contains("at least cache_ttl (10m)"),
            "{}",
            e.message
        );
        // Command keys are foreign to iam, and iam keys to command (timeout is shared).
        let e = one(f.load(&format!("{base}run_as = \"nobody\"\n"), &[], vec![]));
        assert_eq!(e.key, "auth[0].run_as");
    }

    #[test]
    fn audit_sinks() {
        let f = fixture();
        let base = format!(
            "host_keys = [{:?}]\n[[auth]]\ntype = \"file\"\ndir = {:?}\n[audit]\n",
            f.key, f.users
        );
        let cfg = ok(f.load(
            &format!("{base}cloudwatch_log_group = \"/bastion/audit\"\ns3_bucket = \"audit-trails\"\ns3_prefix = \"bastion/\"\ns3_sse = \"aws:kms\"\ns3_kms_key_id = \"alias/audit\"\ns3_interval = \"1m\"\nspool_max = \"256MiB\"\nship_grace = \"2m\"\n"),
            &[],
            vec![],
        ));
        assert_eq!(
            cfg.audit.cloudwatch_log_group.as_deref(),
            Some("/bastion/audit")
        );
        assert_eq!(cfg.audit.spool_max, 256 << 20);
        assert_eq!(cfg.audit.ship_grace, Duration::from_secs(120));
        assert_eq!(
            cfg.audit.s3,
            Some(S3Sink {
                bucket: "audit-trails".into(),
                prefix: "bastion/".into(),
                kms: Some(Some("alias/audit".into())),
                interval: Duration::from_secs(60),
            })
        );
        // From the environment too, and AES256 by default.
        let cfg = ok(f.load(
            &base,
            &[("BASTION_AUDIT__S3_BUCKET", "audit-trails")],
            vec![],
        ));
        assert_eq!(cfg.audit.s3.map(|s| s.kms), Some(None));
        // ship_grace: 30 s by default, zero allowed (do not wait), from the environment too.
        assert_eq!(
            ok(f.load(&base, &[], vec![])).audit.ship_grace,
            Duration::from_secs(30)
        );
        let cfg = ok(f.load(&base, &[("BASTION_AUDIT__SHIP_GRACE", "0s")], vec![]));
        assert_eq!(cfg.audit.ship_grace, Duration::ZERO);
        // Every bad value names its key.
        for (line, key, says) in [
            (
                "s3_bucket = \"Audit_Trails\"",
                "audit.s3_bucket",
                "lowercase",
            ),
            (
                "cloudwatch_log_group = \"a b\"",
                "audit.cloudwatch_log_group",
                "letters",
            ),
            (
                "s3_bucket = \"ab-c\"\ns3_sse = \"aws:kms:dsse\"",
                "audit.s3_sse",
                "AES256",
            ),
            (
                "s3_bucket = \"ab-c\"\ns3_kms_key_id = \"k\"",
                "audit.s3_kms_key_id",
                "aws:kms",
            ),
            ("s3_prefix = \"p/\"", "audit.s3_bucket", "need s3_bucket"),
            ("spool_max = \"1KiB\"", "audit.spool_max", ""),
            ("ship_grace = \"soon\"", "audit.ship_grace", ""),
            ("ship_grace = 30", "audit.ship_grace", "duration"),
        ] {
            let e = errs(f.load(&format!("{base}{line}\n"), &[], vec![]));
            assert!(
                e.iter().any(|e| e.key == key && e.message.contains(says)),
                "{line}: {e:?}"
            );
        }
    }

    #[test]
    fn ciphers() {
        let f = fixture();
        assert_eq!(ok(f.load(&f.minimal(), &[], vec![])).ciphers, None);
        let cfg = ok(f.load(
            &format!(
                "ciphers = [\"chacha20-poly1305@openssh.com\"]\n{}",
                f.minimal()
            ),
            &[],
            vec![],
        ));
        assert_eq!(
            cfg.ciphers,
            Some(vec!["chacha20-poly1305@openssh.com".to_string()])
        );
        let e = errs(f.load(
            &format!(
                "ciphers = [\"aes128-gcm@openssh.com\", \"3des-cbc\"]\n{}",
                f.minimal()
            ),
            &[],
            vec![],
        ));
        assert!(
            e.iter()
                .any(|e| e.key == "ciphers[1]" && e.message.contains("3des-cbc")),
            "{e:?}"
        );
        let e = errs(f.load(&format!("ciphers = []\n{}", f.minimal()), &[], vec![]));
        assert!(e.iter().any(|e| e.key == "ciphers"), "{e:?}");
        // Whatever the hardware, the default is a non-empty list of supported ciphers,
        // with AES-GCM first exactly where the CPU does it in hardware.
        let d = default_ciphers();
        assert!(d.iter().all(|c| SUPPORTED_CIPHERS.contains(&c.as_str())));
        assert_eq!(d[0] == "aes128-gcm@openssh.com", hardware_aes_gcm());
    }

    #[test]
    fn eic_source_and_push() {
        let f = fixture();
        let bundle = f.write(
            "anchors.pem",
            include_str!("../keys/testdata/eic/bundle.pem"),
        );
        let base = format!("host_keys = [{:?}]\n", f.key);
        let cfg = ok(f.load(
            &format!(
                "{base}[[auth]]\ntype = \"eic\"\nca_bundle = {bundle:?}\ntimeout = \"2s\"\n\
                 [[allow]]\nprincipals = [\"*\"]\nto = [\"tag:env=dev:22\"]\nos_users = [\"ubuntu\"]\n\
                 [eic]\npush = true\nos_users = [\"ec2-user\", \"admin\"]\n"
            ),
            &[],
            vec![],
        ));
        assert_eq!(
            cfg.auth,
            vec![AuthSource::Eic(EicAuth {
                ca_bundle: bundle.clone(),
                timeout: Duration::from_secs(2),
            })]
        );
        assert_eq!(
            cfg.eic,
            Eic {
                push: true,
                os_users: vec!["ec2-user".into(), "admin".into()],
                timeout: EIC_PUSH_TIMEOUT,
            }
        );
        assert_eq!(cfg.allow[0].os_users, Some(vec!["ubuntu".to_string()]));
        // Off by default, and from the environment too.
        let file_auth = format!("{base}[[auth]]\ntype = \"file\"\ndir = {:?}\n", f.users);
        let cfg = ok(f.load(&file_auth, &[("BASTION_EIC__PUSH", "true")], vec![]));
        assert!(cfg.eic.push);
        assert_eq!(cfg.eic.os_users, vec!["ec2-user".to_string()]);
        assert!(!ok(f.load(&file_auth, &[], vec![])).eic.push);
        // Every bad value names its key.
        let not_pem = f.write("not.pem", "hello\n");
        for (text, key, says) in [
            (
                format!("{base}[[auth]]\ntype = \"eic\"\nca_bundle = {not_pem:?}\n"),
                "auth[0].ca_bundle",
                "no certificate",
            ),
            (
                format!("{base}[[auth]]\ntype = \"eic\"\nca_bundle = \"/nonexistent.pem\"\n"),
                "auth[0].ca_bundle",
                "cannot read",
            ),
            (
                format!("{base}[[auth]]\ntype = \"eic\"\ngroups = [\"x\"]\n"),
                "auth[0].groups",
                "does not apply",
            ),
            (
                format!("{file_auth}[eic]\nos_users = [\"bad user\"]\n"),
                "eic.os_users[0]",
                "not a user name",
            ),
            (
                format!("{file_auth}[eic]\nos_users = []\n"),
                "eic.os_users",
                "must not be empty",
            ),
            (
                format!("{file_auth}[eic]\npushh = true\n"),
                "eic.pushh",
                "",
            ),
            (
                format!("{file_auth}[[allow]]\nprincipals = [\"*\"]\nto = [\"i-*:22\"]\nos_users = [\"-x\"]\n"),
                "allow[0].os_users[0]",
                "not a user name",
            ),
        ] {
            let e = errs(f.load(&text, &[], vec![]));
            assert!(
                e.iter().any(|e| e.key == key && e.message.contains(says)),
                "{text}: {e:?}"
            );
        }
    }

    #[test]
    fn host_keys_from_ssm() {
        let f = fixture();
        let text = format!(
            "host_keys = [\"ssm:/bastion/host_ed25519_key\", {:?}]\n[[auth]]\ntype = \"file\"\ndir = {:?}\n",
            f.key, f.users
        );
        let cfg = ok(f.load(&text, &[], vec![]));
        assert_eq!(
            cfg.host_keys,
            vec![
                HostKey::Ssm("/bastion/host_ed25519_key".into()),
                HostKey::File(f.key.clone())
            ]
        );
        assert_eq!(
            cfg.host_keys[0].to_string(),
            "ssm:/bastion/host_ed25519_key"
        );
        let text = "host_keys = [\"ssm:\", \"ssm:/a b\", \"secretsmanager:\", \"secretsmanager:a b\", \"secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:bastion/key-AbCdEf\"]\nhost_certificates = [\"ssm:/x y\"]\n[[auth]]\ntype = \"command\"\ncommand = \"/bin/k\"\n";
        let e = errs(f.load(text, &[], vec![]));
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "host_keys[0]",
                "host_keys[1]",
                "host_keys[2]",
                "host_keys[3]",
                "host_certificates[0]"
            ],
            "{e:?}"
        );
        assert!(e[2]
            .message
            .contains("not a valid Secrets Manager secret reference"));
        assert!(e[4].message.contains("not a valid SSM parameter reference"));
    }

    #[test]
    fn empty_auth_and_allow_rules() {
        let f = fixture();
        let e = one(f.load(
            &format!("host_keys = [{:?}]\nauth = []\n", f.key),
            &[],
            vec![],
        ));
        assert_eq!(e.key, "auth");
        assert_eq!(e.source, f.path());

        let text = format!(
            "{}[[allow]]\nprincipals = []\nto = [\"x\", 1]\nwho = 1\n",
            f.minimal()
        );
        let e = errs(f.load(&text, &[], vec![]));
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["allow[0].principals", "allow[0].to[1]", "allow[0].who"]
        );

        let e = one(f.load(
            &format!("{}[[allow]]\nprincipals = [\"*\"]\n", f.minimal()),
            &[],
            vec![],
        ));
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("allow[0].to", "missing")
        );
    }

    #[test]
    fn relative_paths() {
        let f = fixture();
        fs::create_dir(f.dir.path().join("etc")).unwrap();
        fs::rename(&f.key, f.dir.path().join("etc/hostkey")).unwrap();
        fs::create_dir(f.dir.path().join("etc/users")).unwrap();
        let path = f.dir.path().join("etc/bastion.toml");
        fs::write(
            &path,
            "host_keys = [\"hostkey\"]\n[[auth]]\ntype = \"file\"\ndir = \"users\"\n[audit]\ndir = \"../audit\"\n",
        )
        .unwrap();
        let env = vars(&[("BASTION_SANDBOX__RUNTIME_DIR", "/run/x")]);
        let flags = vec![flag(
            "audit.dir",
            Value::String("rel/audit".into()),
            "flag --audit-dir",
        )];
        let cfg = ok(load(Some(&path), env.clone(), vec![]));
        let etc = f.dir.path().join("etc");
        assert_eq!(cfg.host_keys, vec![HostKey::File(etc.join("hostkey"))]);
        assert_eq!(
            cfg.auth,
            vec![AuthSource::File {
                dir: Some(etc.join("users")),
                file: None,
                logins: vec![]
            }]
        );
        assert_eq!(cfg.audit.dir, etc.join("../audit"));
        // From a flag (or the environment), relative to the current directory.
        let cfg = ok(load(Some(&path), env, flags));
        assert_eq!(
            cfg.audit.dir,
            std::env::current_dir().unwrap().join("rel/audit")
        );

        let e = one(load(
            Some(&path),
            vars(&[("BASTION_SANDBOX__RUNTIME_DIR", "run")]),
            vec![],
        ));
        assert_eq!(e.key, "sandbox.runtime_dir");
        assert_eq!(e.message, "must be an absolute path, found \"run\"");
    }

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let f = fixture();
        let e = one(f.load(
            "listen = [\"0.0.0.0:22\"]\n\nhost_keys = /etc/key\n",
            &[("BASTION_NOPE", "1")],
            vec![],
        ));
        assert_eq!(e.source, f.path());
        assert_eq!(e.key, "");
        assert!(
            e.message.starts_with("invalid TOML at line 3, column 13"),
            "{e}"
        );
        assert_eq!(e.to_string(), format!("{}: {}", f.path(), e.message));
    }

    #[test]
    fn unreadable_file() {
        let f = fixture();
        let path = f.dir.path().join("missing.toml");
        let e = one(load(Some(&path), vec![], vec![]));
        assert_eq!(e.source, path.display().to_string());
        assert!(
            e.message.starts_with("cannot read the configuration file"),
            "{e}"
        );
    }

    #[test]
    fn from_table_names_its_source() {
        let f = fixture();
        let table: Table =
            toml::from_str(&format!("{}[limits]\nper_source = 0\n", f.minimal())).unwrap();
        let e = one(from_table(table, "dev mode defaults", vec![], vec![]));
        assert_eq!(e.key, "limits.per_source");
        assert_eq!(e.source, "dev mode defaults");
        assert_eq!(
            e.to_string(),
            "dev mode defaults: limits.per_source: expected an integer between 1 and 1000000, found 0"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 mib"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10B"), Ok(10));
        assert!(parse_size("1GB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("17179869184GiB").is_err());
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(3 << 19), "1536KiB");
        assert_eq!(format_size(7), "7B");
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            suggest("max_startup", &names(LIMITS_KEYS)),
            Some("max_startups")
        );
        assert_eq!(suggest("zzz", &names(ROOT_KEYS)), None);
    }
}
