//! Configuration: a TOML file, then `BASTION_…` environment variables
//! (nested keys joined by `__`), then command-line flags, lowest precedence
//! first. Unknown keys are errors. Every problem is collected and reported
//! together, each naming its key and where the value came from; nothing
//! binds before the configuration is valid.
//!
//! The merged TOML table is walked by hand (not serde-derived) so that one
//! bad value does not hide the next.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

/// Environment variables with the prefix that are not configuration keys.
pub const RESERVED_ENV: &[&str] = &["BASTION_LOG", "BASTION_CONFIG"];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to accept SSH connections on.
    pub listen: Vec<SocketAddr>,
    /// OpenSSH private host key files.
    pub host_keys: Vec<PathBuf>,
    /// Key sources, tried in order.
    pub auth: Vec<AuthSource>,
    /// Forwarding rules; none means no forwarding.
    pub allow: Vec<AllowRule>,
    pub audit: Audit,
    pub sandbox: Sandbox,
    pub limits: Limits,
    /// Where each value came from.
    pub origins: Origins,
}

/// One `[[auth]]` key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// authorized_keys files: `<dir>/<login>`, or one `file` for `logins`.
    File {
        dir: Option<PathBuf>,
        file: Option<PathBuf>,
        logins: Vec<String>,
    },
    /// An OpenSSH AuthorizedKeysCommand-compatible program.
    Command {
        command: String,
        run_as: String,
        timeout: Duration,
    },
}

/// One `[[allow]]` rule, parsed further by `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub principals: Vec<String>,
    pub to: Vec<String>,
    /// `allow[N]`, for error messages.
    pub key: String,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Per-user JSON-lines trails are written under this directory.
    pub dir: PathBuf,
    /// Also write every event as one JSON line on stdout.
    pub stdout: bool,
}

/// `[sandbox]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// false only by explicit choice, announced loudly.
    pub enabled: bool,
    /// Workers run as uids `uid_base .. uid_base + uid_count`.
    pub uid_base: u32,
    pub uid_count: u32,
    /// Address-space limit per worker, bytes.
    pub memory_limit: u64,
    /// Where the empty mount point for workers' roots is created.
    pub runtime_dir: PathBuf,
}

/// `[limits]`: admission control and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Unauthenticated connection deadline.
    pub login_grace: Duration,
    /// Concurrent unauthenticated connections.
    pub max_startups: usize,
    /// Concurrent unauthenticated connections per source address.
    pub per_source: usize,
    /// Concurrent connections in total.
    pub max_sessions: usize,
    /// Onward connection timeout.
    pub connect_timeout: Duration,
    /// How long SIGTERM lets live sessions run.
    pub shutdown_grace: Duration,
}

/// Where each key's value came from.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    map: HashMap<String, String>,
    default_source: String,
}

impl Origins {
    /// The source of `key` (a dotted path; array entries as `auth[1]`), or of
    /// its closest parent, or "default".
    pub fn of(&self, key: &str) -> String {
        let mut k = key.to_string();
        loop {
            if let Some(s) = self.map.get(&k) {
                return s.clone();
            }
            match k.rfind(['.', '[']) {
                Some(i) => k.truncate(i),
                None => return self.default_source.clone(),
            }
        }
    }

    fn record(&mut self, key: &str, source: &str) {
        self.map.insert(key.to_string(), source.to_string());
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub source: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.message)
    }
}

/// A value set on the command line.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key path.
    pub key: String,
    pub value: Value,
    /// e.g. "flag --listen".
    pub source: String,
}

const TOP: &[&str] = &[
    "listen",
    "host_keys",
    "auth",
    "allow",
    "audit",
    "sandbox",
    "limits",
];
const AUTH: &[&str] = &[
    "type", "dir", "file", "logins", "command", "run_as", "timeout",
];
const ALLOW: &[&str] = &["principals", "to"];
const AUDIT: &[&str] = &["dir", "stdout"];
const SANDBOX: &[&str] = &[
    "enabled",
    "uid_base",
    "uid_count",
    "memory_limit",
    "runtime_dir",
];
const LIMITS: &[&str] = &[
    "login_grace",
    "max_startups",
    "per_source",
    "max_sessions",
    "connect_timeout",
    "shutdown_grace",
];
/// Keys holding lists of strings, which env vars may give as `a,b`.
const STRING_LISTS: &[&str] = &["listen", "host_keys"];

/// Loads and validates the configuration.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    let Some(path) = file else {
        return build(Table::new(), "default", None, env, overrides);
    };
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            key: "-".into(),
            source: source.clone(),
            message: format!("cannot read the configuration file: {e}"),
            hint: None,
        }]
    })?;
    let table: Table = toml::from_str(&text).map_err(|e| {
        vec![ConfigError {
            key: "-".into(),
            source: source.clone(),
            message: format!("not valid TOML: {}", e.to_string().trim()),
            hint: None,
        }]
    })?;
    let base = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p.to_path_buf()
        }
    });
    build(table, &source, base, env, overrides)
}

/// Like [`load`], from a table standing for a file named `source`.
pub fn from_table(
    table: Table,
    source: &str,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    build(table, source, None, env, overrides)
}

fn record_all(origins: &mut Origins, prefix: &str, v: &Value, source: &str) {
    origins.record(prefix, source);
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                record_all(origins, &format!("{prefix}.{k}"), v, source);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if v.is_table() {
                    record_all(origins, &format!("{prefix}[{i}]"), v, source);
                }
            }
        }
        _ => {}
    }
}

/// Sets `path` (dotted) in `table`, creating tables on the way.
fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

fn env_value(key: &str, raw: &str) -> Value {
    let parsed = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v) if !v.is_str() => v,
        _ if STRING_LISTS.contains(&key) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(raw.to_string()),
    }
}

fn build(
    mut table: Table,
    source: &str,
    base: Option<PathBuf>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    let mut origins = Origins {
        map: HashMap::new(),
        default_source: "default".into(),
    };
    for (k, v) in &table {
        record_all(&mut origins, k, v, source);
    }
    let mut errors = Vec::new();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("BASTION_") && !RESERVED_ENV.contains(&k.as_str()))
        .collect();
    env.sort();
    for (name, raw) in env {
        let path: Vec<String> = name["BASTION_".len()..]
            .to_ascii_lowercase()
            .split("__")
            .map(str::to_string)
            .collect();
        let key = path.join(".");
        let src = format!("environment variable {name}");
        let value = env_value(&key, &raw);
        record_all(&mut origins, &key, &value, &src);
        if let Err(e) = set_path(&mut table, &path, value) {
            errors.push(ConfigError {
                key,
                source: src,
                message: e,
                hint: None,
            });
        }
    }
    for o in overrides {
        let path: Vec<String> = o.key.split('.').map(str::to_string).collect();
        record_all(&mut origins, &o.key, &o.value, &o.source);
        if let Err(e) = set_path(&mut table, &path, o.value) {
            errors.push(ConfigError {
                key: o.key,
                source: o.source,
                message: e,
                hint: None,
            });
        }
    }
    let mut r = Reader {
        origins: &origins,
        errors,
        base,
        file_source: source.to_string(),
    };
    let cfg = r.config(&table);
    if r.errors.is_empty() {
        Ok(Config { origins, ..cfg })
    } else {
        Err(r.errors)
    }
}

struct Reader<'a> {
    origins: &'a Origins,
    errors: Vec<ConfigError>,
    base: Option<PathBuf>,
    file_source: String,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Reader<'_> {
    fn err(&mut self, key: &str, message: String, hint: Option<String>) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            source: self.origins.of(key),
            message,
            hint,
        });
    }

    fn unknown_keys(&mut self, t: &Table, prefix: &str, known: &[&str]) {
        for k in t.keys() {
            if !known.contains(&k.as_str()) {
                let hint = known
                    .iter()
                    .filter(|c| distance(k, c) <= 2)
                    .min_by_key(|c| distance(k, c))
                    .map(|c| format!("did you mean {c}?"));
                self.err(&join(prefix, k), format!("unknown key {k:?}"), hint);
            }
        }
    }

    fn get<'t>(
        &mut self,
        t: &'t Table,
        prefix: &str,
        key: &str,
        want: &'static str,
        ok: fn(&Value) -> bool,
    ) -> Option<&'t Value> {
        let v = t.get(key)?;
        if ok(v) {
            Some(v)
        } else {
            self.err(
                &join(prefix, key),
                format!("expected {want}, found {}", type_name(v)),
                None,
            );
            None
        }
    }

    fn string(&mut self, t: &Table, prefix: &str, key: &str) -> Option<String> {
        self.get(t, prefix, key, "a string", Value::is_str)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    fn boolean(&mut self, t: &Table, prefix: &str, key: &str, default: bool) -> bool {
        self.get(t, prefix, key, "a boolean (true or false)", Value::is_bool)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    fn int(&mut self, t: &Table, prefix: &str, key: &str, lo: i64, hi: i64, default: i64) -> i64 {
        let full = join(prefix, key);
        match t.get(key) {
            None => default,
            Some(Value::Integer(n)) if (lo..=hi).contains(n) => *n,
            Some(v) => {
                let found = match v {
                    Value::Integer(n) => n.to_string(),
                    Value::String(s) => format!("{s:?}"),
                    other => type_name(other).to_string(),
                };
                self.err(
                    &full,
                    format!("expected an integer between {lo} and {hi}, found {found}"),
                    None,
                );
                default
            }
        }
    }

    fn duration(&mut self, t: &Table, prefix: &str, key: &str, default: &str) -> Duration {
        let fallback = humantime::parse_duration(default).unwrap_or(Duration::from_secs(1));
        let Some(s) = self
            .get(
                t,
                prefix,
                key,
                "a duration like \"20s\" or \"1m 30s\"",
                Value::is_str,
            )
            .and_then(|v| v.as_str())
            .map(str::to_string)
        else {
            return fallback;
        };
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(&join(prefix, key), "must be longer than zero".into(), None);
                fallback
            }
            Err(e) => {
                self.err(
                    &join(prefix, key),
                    format!("{s:?} is not a duration: {e}"),
                    Some("write durations like \"20s\", \"5m\" or \"1h 30m\"".into()),
                );
                fallback
            }
        }
    }

    fn strings(&mut self, t: &Table, prefix: &str, key: &str) -> Option<Vec<String>> {
        let full = join(prefix, key);
        let v = self.get(t, prefix, key, "a list of strings", Value::is_array)?;
        let mut out = Vec::new();
        for (i, item) in v.as_array().into_iter().flatten().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_string()),
                None => self.err(
                    &format!("{full}[{i}]"),
                    format!("expected a string, found {}", type_name(item)),
                    None,
                ),
            }
        }
        Some(out)
    }

    fn path(&mut self, key: &str, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        match &self.base {
            Some(base) if p.is_relative() && self.origins.of(key) == self.file_source => {
                base.join(p)
            }
            _ => p,
        }
    }

    fn size(&mut self, t: &Table, prefix: &str, key: &str, default: u64, min: u64) -> u64 {
        let full = join(prefix, key);
        let parsed = match t.get(key) {
            None => return default,
            Some(Value::Integer(n)) if *n >= 0 => Ok(*n as u64),
            Some(Value::String(s)) => parse_size(s)
                .ok_or_else(|| format!("{s:?} is not a size like \"512MiB\" or \"1GiB\"")),
            Some(v) => Err(format!(
                "expected a size like \"1GiB\", found {}",
                type_name(v)
            )),
        };
        match parsed {
            Ok(n) if n >= min => n,
            Ok(n) => {
                self.err(
                    &full,
                    format!("{n} bytes is too small; at least {min} bytes"),
                    None,
                );
                default
            }
            Err(m) => {
                self.err(&full, m, None);
                default
            }
        }
    }

    fn section<'t>(&mut self, t: &'t Table, key: &str, known: &[&str]) -> Option<&'t Table> {
        let v = self.get(t, "", key, "a table", Value::is_table)?;
        let table = v.as_table()?;
        self.unknown_keys(table, key, known);
        Some(table)
    }

    fn config(&mut self, t: &Table) -> Config {
        self.unknown_keys(t, "", TOP);
        let empty = Table::new();

        let mut listen = Vec::new();
        let raw_listen = self.strings(t, "", "listen").unwrap_or_else(|| {
            if t.contains_key("listen") {
                vec![]
            } else {
                vec!["0.0.0.0:22".into()]
            }
        });
        for (i, s) in raw_listen.iter().enumerate() {
            match s.parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => self.err(
                    &format!("listen[{i}]"),
                    format!("{s:?} is not an address like 0.0.0.0:22 or [::]:22"),
                    None,
                ),
            }
        }
        if listen.is_empty() && !raw_listen.is_empty() {
            // errors already reported
        } else if raw_listen.is_empty() {
            self.err(
                "listen",
                "at least one listen address is required".into(),
                None,
            );
        }

        let mut host_keys = Vec::new();
        match self.strings(t, "", "host_keys") {
            Some(keys) if !keys.is_empty() => {
                for (i, k) in keys.iter().enumerate() {
                    let p = self.path("host_keys", k);
                    if !p.is_file() {
                        self.err(&format!("host_keys[{i}]"), format!("{} does not exist or is not a file", p.display()), Some(format!("create one with: ssh-keygen -t ed25519 -N '' -f {}", p.display())));
                    }
                    host_keys.push(p);
                }
            }
            Some(_) | None if !t.get("host_keys").is_some_and(|v| !v.is_array()) => self.err(
                "host_keys",
                "at least one host key is required".into(),
                Some("create one with: ssh-keygen -t ed25519 -N '' -f /etc/bastion/ssh_host_ed25519_key".into()),
            ),
            _ => {}
        }

        let auth = self.auth(t);
        let allow = self.allow(t);

        let a = self.section(t, "audit", AUDIT).unwrap_or(&empty);
        let audit = Audit {
            dir: self
                .string(a, "audit", "dir")
                .map(|s| self.path("audit.dir", &s))
                .unwrap_or_else(|| PathBuf::from("/var/log/bastion")),
            stdout: self.boolean(a, "audit", "stdout", false),
        };

        let s = self.section(t, "sandbox", SANDBOX).unwrap_or(&empty);
        let uid_base =
            self.int(s, "sandbox", "uid_base", 1000, 4_294_967_294, 2_000_000_000) as u32;
        let uid_count = self.int(s, "sandbox", "uid_count", 1, 4_294_967_294, 65536) as u32;
        if u64::from(uid_base) + u64::from(uid_count) > 4_294_967_294 {
            self.err(
                "sandbox.uid_count",
                format!(
                    "uid_base + uid_count ({}) goes past the largest uid, 4294967294",
                    u64::from(uid_base) + u64::from(uid_count)
                ),
                None,
            );
        }
        let runtime_dir = self
            .string(s, "sandbox", "runtime_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/bastion"));
        if !runtime_dir.is_absolute() {
            self.err(
                "sandbox.runtime_dir",
                format!("{} must be an absolute path", runtime_dir.display()),
                None,
            );
        }
        let sandbox = Sandbox {
            enabled: self.boolean(s, "sandbox", "enabled", true),
            uid_base,
            uid_count,
            memory_limit: self.size(s, "sandbox", "memory_limit", 1 << 30, 64 << 20),
            runtime_dir,
        };

        let l = self.section(t, "limits", LIMITS).unwrap_or(&empty);
        let max_startups = self.int(l, "limits", "max_startups", 1, 1_000_000, 64) as usize;
        let per_source = self.int(l, "limits", "per_source", 1, 1_000_000, 10) as usize;
        if per_source > max_startups {
            self.err(
                "limits.per_source",
                format!("per_source ({per_source}) is larger than max_startups ({max_startups})"),
                Some("per_source must be at most max_startups".into()),
            );
        }
        let limits = Limits {
            login_grace: self.duration(l, "limits", "login_grace", "20s"),
            max_startups,
            per_source,
            max_sessions: self.int(l, "limits", "max_sessions", 1, 10_000_000, 1000) as usize,
            connect_timeout: self.duration(l, "limits", "connect_timeout", "10s"),
            shutdown_grace: self.duration(l, "limits", "shutdown_grace", "30s"),
        };
        Config {
            listen,
            host_keys,
            auth,
            allow,
            audit,
            sandbox,
            limits,
            origins: Origins::default(),
        }
    }

    fn tables<'t>(&mut self, t: &'t Table, key: &str) -> Vec<(String, &'t Table)> {
        let mut out = Vec::new();
        let Some(v) = self.get(
            t,
            "",
            key,
            "a list of tables ([[…]] entries)",
            Value::is_array,
        ) else {
            return out;
        };
        for (i, item) in v.as_array().into_iter().flatten().enumerate() {
            let k = format!("{key}[{i}]");
            match item.as_table() {
                Some(tab) => out.push((k, tab)),
                None => self.err(
                    &k,
                    format!("expected a table, found {}", type_name(item)),
                    None,
                ),
            }
        }
        out
    }

    fn auth(&mut self, t: &Table) -> Vec<AuthSource> {
        let mut out = Vec::new();
        let entries = self.tables(t, "auth");
        if entries.is_empty() && !t.contains_key("auth") {
            self.err(
                "auth",
                "at least one [[auth]] key source is required".into(),
                Some("add [[auth]] type = \"file\" dir = \"/etc/bastion/users\"".into()),
            );
        }
        for (k, a) in entries {
            self.unknown_keys(a, &k, AUTH);
            let Some(kind) = self.string(a, &k, "type") else {
                if !a.contains_key("type") {
                    self.err(
                        &format!("{k}.type"),
                        "missing; one of \"file\", \"command\"".into(),
                        None,
                    );
                }
                continue;
            };
            match kind.as_str() {
                "file" => {
                    for bad in ["command", "run_as", "timeout"] {
                        if a.contains_key(bad) {
                            self.err(
                                &format!("{k}.{bad}"),
                                format!("{bad} belongs to type = \"command\""),
                                None,
                            );
                        }
                    }
                    let dir = self
                        .string(a, &k, "dir")
                        .map(|s| self.path(&format!("{k}.dir"), &s));
                    let file = self
                        .string(a, &k, "file")
                        .map(|s| self.path(&format!("{k}.file"), &s));
                    let logins = self.strings(a, &k, "logins");
                    match (&dir, &file) {
                        (Some(_), Some(_)) => {
                            self.err(&k, "set either dir or file, not both".into(), None)
                        }
                        (None, None) => self.err(
                            &k,
                            "a file source needs dir (one file per login) or file (with logins)"
                                .into(),
                            None,
                        ),
                        (Some(d), None) => {
                            if logins.is_some() {
                                self.err(
                                    &format!("{k}.logins"),
                                    "logins goes with file, not dir".into(),
                                    None,
                                );
                            }
                            if !d.is_dir() {
                                self.err(
                                    &format!("{k}.dir"),
                                    format!("{} is not a directory", d.display()),
                                    None,
                                );
                            }
                        }
                        (None, Some(f)) => {
                            if logins.as_ref().is_none_or(|l| l.is_empty()) {
                                self.err(&format!("{k}.logins"), "required with file: which logins this file is for (\"*\" for any)".into(), None);
                            }
                            if !f.is_file() {
                                self.err(
                                    &format!("{k}.file"),
                                    format!("{} does not exist or is not a file", f.display()),
                                    None,
                                );
                            }
                        }
                    }
                    out.push(AuthSource::File {
                        dir,
                        file,
                        logins: logins.unwrap_or_default(),
                    });
                }
                "command" => {
                    for bad in ["dir", "file", "logins"] {
                        if a.contains_key(bad) {
                            self.err(
                                &format!("{k}.{bad}"),
                                format!("{bad} belongs to type = \"file\""),
                                None,
                            );
                        }
                    }
                    let command = self.string(a, &k, "command").unwrap_or_default();
                    match command.split_whitespace().next() {
                        None => self.err(
                            &format!("{k}.command"),
                            "required: the program to run, with arguments".into(),
                            None,
                        ),
                        Some(p) if !p.starts_with('/') => self.err(
                            &format!("{k}.command"),
                            format!("the program {p:?} must be an absolute path"),
                            None,
                        ),
                        Some(_) => {}
                    }
                    let run_as = self
                        .string(a, &k, "run_as")
                        .unwrap_or_else(|| "nobody".into());
                    if run_as.is_empty() {
                        self.err(&format!("{k}.run_as"), "must name a user".into(), None);
                    }
                    let timeout = self.duration(a, &k, "timeout", "10s");
                    out.push(AuthSource::Command {
                        command,
                        run_as,
                        timeout,
                    });
                }
                "iam" | "eic" => self.err(
                    &format!("{k}.type"),
                    format!("type {kind:?} is not supported by this build yet"),
                    None,
                ),
                other => self.err(
                    &format!("{k}.type"),
                    format!(
                        "unknown key source type {other:?}; known types: \"file\", \"command\""
                    ),
                    None,
                ),
            }
        }
        out
    }

    fn allow(&mut self, t: &Table) -> Vec<AllowRule> {
        let mut out = Vec::new();
        for (k, a) in self.tables(t, "allow") {
            self.unknown_keys(a, &k, ALLOW);
            let principals = self.strings(a, &k, "principals").unwrap_or_default();
            let to = self.strings(a, &k, "to").unwrap_or_default();
            if principals.is_empty() {
                self.err(
                    &format!("{k}.principals"),
                    "required: a non-empty list (\"*\" for anyone authenticated)".into(),
                    None,
                );
            }
            if to.is_empty() {
                self.err(
                    &format!("{k}.to"),
                    "required: a non-empty list of host[:port] targets".into(),
                    None,
                );
            }
            out.push(AllowRule {
                principals,
                to,
                key: k,
            });
        }
        out
    }
}

/// Parses "1GiB", "512MiB", "64KiB", "1000B" or a bare number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn base(dir: &Path) -> String {
        write(dir, "hostkey", "x");
        std::fs::create_dir_all(dir.join("users")).unwrap();
        "host_keys = [\"hostkey\"]\n[[auth]]\ntype = \"file\"\ndir = \"users\"\n".to_string()
    }

    fn errors(r: Result<Config, Vec<ConfigError>>) -> Vec<ConfigError> {
        match r {
            Ok(_) => panic!("expected errors"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_and_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "c.toml", &base(d.path()));
        let c = load(Some(&f), Vec::new(), Vec::new()).unwrap();
        assert_eq!(c.listen, vec!["0.0.0.0:22".parse().unwrap()]);
        assert_eq!(c.host_keys, vec![d.path().join("hostkey")]);
        assert_eq!(c.limits.login_grace, Duration::from_secs(20));
        assert_eq!((c.limits.max_startups, c.limits.per_source), (64, 10));
        assert!(c.sandbox.enabled && !c.audit.stdout);
        assert_eq!(c.sandbox.memory_limit, 1 << 30);
        assert!(c.allow.is_empty());
    }

    #[test]
    fn precedence_file_env_flag() {
        let d = tempfile::tempdir().unwrap();
        let text = format!("listen = [\"127.0.0.1:1\"]\n{}[limits]\nmax_startups = 5\nper_source = 2\n[audit]\nstdout = true\n", base(d.path()));
        let f = write(d.path(), "c.toml", &text);
        let env = vec![
            (
                "BASTION_LISTEN".to_string(),
                "127.0.0.1:2,[::1]:3".to_string(),
            ),
            ("BASTION_LIMITS__MAX_STARTUPS".to_string(), "7".to_string()),
            ("BASTION_AUDIT__DIR".to_string(), "/tmp/x".to_string()),
            ("BASTION_LOG".to_string(), "debug".to_string()),
        ];
        let flags = vec![Override {
            key: "limits.max_startups".into(),
            value: Value::Integer(9),
            source: "flag --x".into(),
        }];
        let c = load(Some(&f), env, flags).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.limits.max_startups, 9);
        assert_eq!(c.limits.per_source, 2);
        assert_eq!(c.audit.dir, PathBuf::from("/tmp/x"));
        assert!(
            c.audit.stdout,
            "the file's audit.stdout survives an env override of audit.dir"
        );
        assert_eq!(
            c.origins.of("listen"),
            "environment variable BASTION_LISTEN"
        );
        assert_eq!(c.origins.of("limits.max_startups"), "flag --x");
        assert_eq!(c.origins.of("limits.per_source"), f.display().to_string());
    }

    #[test]
    fn env_arrays_of_tables() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "c.toml", &base(d.path()));
        let env = vec![(
            "BASTION_ALLOW".to_string(),
            "[{principals=[\"*\"], to=[\"10.0.0.0/8:22\"]}]".to_string(),
        )];
        let c = load(Some(&f), env, Vec::new()).unwrap();
        assert_eq!(c.allow.len(), 1);
        assert_eq!(c.allow[0].key, "allow[0]");
    }

    #[test]
    fn every_problem_is_reported_with_key_and_source() {
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "lisen = [\"x\"]\n{}[limits]\nmax_startups = 2\nper_source = 5\nlogin_grace = \"soon\"\n[sandbox]\nenabled = \"yes\"\n[[auth]]\ntype = \"iam\"\n[[auth]]\ntype = \"ldap\"\n[[allow]]\nprincipals = []\nto = [\"a:22\"]\nbogus = 1\n",
            base(d.path())
        );
        let f = write(d.path(), "c.toml", &text);
        let env = vec![
            (
                "BASTION_LIMITS__MAX_SESSIONS".to_string(),
                "abc".to_string(),
            ),
            ("BASTION_NOPE".to_string(), "1".to_string()),
        ];
        let errs = errors(load(Some(&f), env, Vec::new()));
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "lisen",
            "limits.per_source",
            "limits.login_grace",
            "sandbox.enabled",
            "auth[1].type",
            "auth[2].type",
            "allow[0].principals",
            "allow[0].bogus",
            "limits.max_sessions",
            "nope",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
        let lisen = errs.iter().find(|e| e.key == "lisen").unwrap();
        assert_eq!(lisen.hint.as_deref(), Some("did you mean listen?"));
        assert_eq!(lisen.source, f.display().to_string());
        let env_err = errs
            .iter()
            .find(|e| e.key == "limits.max_sessions")
            .unwrap();
        assert_eq!(
            env_err.source,
            "environment variable BASTION_LIMITS__MAX_SESSIONS"
        );
        assert!(errs
            .iter()
            .find(|e| e.key == "auth[1].type")
            .unwrap()
            .message
            .contains("not supported by this build yet"));
        assert!(errs.iter().any(|e| e
            .to_string()
            .starts_with(&format!("{}: limits.login_grace: ", f.display()))));
    }

    #[test]
    fn missing_things_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "c.toml",
            "[[auth]]\ntype = \"file\"\ndir = \"nowhere\"\nfile = \"x\"\n",
        );
        let errs = errors(load(Some(&f), Vec::new(), Vec::new()));
        let hk = errs.iter().find(|e| e.key == "host_keys").unwrap();
        assert!(hk.hint.as_deref().unwrap().contains("ssh-keygen"));
        assert!(errs
            .iter()
            .any(|e| e.key == "auth[0]" && e.message.contains("not both")));
        let f = write(
            d.path(),
            "c2.toml",
            "host_keys = [\"/no/such/key\"]\n[[auth]]\ntype=\"file\"\ndir=\"/no/such/dir\"\n",
        );
        let errs = errors(load(Some(&f), Vec::new(), Vec::new()));
        assert!(errs.iter().any(|e| e.key == "host_keys[0]"));
        assert!(errs.iter().any(|e| e.key == "auth[0].dir"));
        let f = write(d.path(), "c3.toml", "listen = [\n");
        let errs = errors(load(Some(&f), Vec::new(), Vec::new()));
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("not valid TOML") && errs[0].message.contains("line"),
            "{}",
            errs[0].message
        );
        assert_eq!(errs[0].source, f.display().to_string());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1TB"), None);
        assert_eq!(distance("lisen", "listen"), 1);
    }
}
