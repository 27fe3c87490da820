//! `bastion serve --dev`: a working bastion with no config file and no AWS.

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
