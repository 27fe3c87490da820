//! The `command` key source: a program compatible with OpenSSH's `AuthorizedKeysCommand`,
//! run as `run_as` with the tokens `%u %f %k %t %%` expanded; what it prints is read as an
//! `authorized_keys` file.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio::io::AsyncReadExt;

use crate::keys::authorized_keys::PublicKeyBlob;
use crate::keys::{Answer, BuildError, KeySource, Query, MAX_COMMAND_OUTPUT};

/// A configured command: its argv as written, and who it runs as.
struct CommandSource {
    argv: Vec<String>,
    uid: u32,
    gid: u32,
    timeout: Duration,
}

/// Builds the source of a `type = "command"` entry: `run_as` must be a user of this system.
pub(super) fn from_config(
    command: &str,
    run_as: &str,
    timeout: Duration,
) -> Result<Arc<dyn KeySource>, BuildError> {
    let argv: Vec<String> = command.split_whitespace().map(str::to_string).collect();
    match nix::unistd::User::from_name(run_as) {
        Ok(Some(user)) => Ok(Arc::new(CommandSource {
            argv,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            timeout,
        })),
        Ok(None) => Err(("run_as", format!("no such user {run_as:?} on this system"))),
        Err(e) => Err(("run_as", format!("looking up user {run_as:?}: {e}"))),
    }
}

impl KeySource for CommandSource {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn describe(&self) -> String {
        format!("command: {}", self.argv.join(" "))
    }

    fn answer<'a>(&'a self, q: Query<'a>) -> BoxFuture<'a, Answer> {
        self.run(q).boxed()
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

impl CommandSource {
    /// Runs the command for one (login, key): a clean environment, no stdin, `timeout` for
    /// all of it, at most [`MAX_COMMAND_OUTPUT`] bytes read.
    async fn run(&self, q: Query<'_>) -> Answer {
        let Some((program, args)) = self.argv.split_first() else {
            return Answer::Failed("empty command".into());
        };
        let origin = format!("command:{program}");
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(
            args.iter()
                .map(|a| expand_tokens(a, q.login, q.key, q.fingerprint)),
        )
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .uid(self.uid)
        .gid(self.gid)
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
        let timeout = self.timeout;
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
}
