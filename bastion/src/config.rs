// TEMPORARY STUB
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub host_keys: Vec<PathBuf>,
    pub auth: Vec<AuthSource>,
    pub allow: Vec<AllowRule>,
    pub audit: Audit,
    pub sandbox: Sandbox,
    pub limits: Limits,
    pub origins: Origins,
}
pub enum AuthSource {
    File {
        dir: Option<PathBuf>,
        file: Option<PathBuf>,
        logins: Vec<String>,
    },
    Command {
        command: String,
        run_as: String,
        timeout: Duration,
    },
}
pub struct AllowRule {
    pub principals: Vec<String>,
    pub to: Vec<String>,
    pub key: String,
}
pub struct Audit {
    pub dir: PathBuf,
    pub stdout: bool,
}
pub struct Sandbox {
    pub enabled: bool,
    pub uid_base: u32,
    pub uid_count: u32,
    pub memory_limit: u64,
    pub runtime_dir: PathBuf,
}
pub struct Limits {
    pub login_grace: Duration,
    pub max_startups: usize,
    pub per_source: usize,
    pub max_sessions: usize,
    pub connect_timeout: Duration,
    pub shutdown_grace: Duration,
}
pub struct Origins {}
impl Origins {
    pub fn of(&self, _key: &str) -> String {
        "stub".into()
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub source: String,
    pub message: String,
    pub hint: Option<String>,
}
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.message)
    }
}
pub struct Override {
    pub key: String,
    pub value: toml::Value,
    pub source: String,
}
pub fn load(
    _file: Option<&Path>,
    _env: impl IntoIterator<Item = (String, String)>,
    _o: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    let e = |k: &str| std::env::var(k).unwrap();
    Ok(Config {
        listen: vec![e("T_LISTEN").parse().unwrap()],
        host_keys: vec![e("T_HOSTKEY").into()],
        auth: vec![AuthSource::File {
            dir: Some(e("T_USERS").into()),
            file: None,
            logins: vec![],
        }],
        allow: vec![],
        audit: Audit {
            dir: e("T_AUDIT").into(),
            stdout: false,
        },
        sandbox: Sandbox {
            enabled: true,
            uid_base: 2000000000,
            uid_count: 100,
            memory_limit: 1 << 30,
            runtime_dir: "/run/bastion".into(),
        },
        limits: Limits {
            login_grace: Duration::from_secs(20),
            max_startups: 64,
            per_source: 10,
            max_sessions: 100,
            connect_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        },
        origins: Origins {},
    })
}
pub fn from_table(
    _t: toml::Table,
    _s: &str,
    _env: impl IntoIterator<Item = (String, String)>,
    _o: Vec<Override>,
) -> Result<Config, Vec<ConfigError>> {
    todo!()
}
