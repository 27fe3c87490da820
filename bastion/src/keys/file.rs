//! The `file` key source: OpenSSH `authorized_keys` files, either one per login in a
//! directory (`dir`) or one file for a list of logins (`file`).

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;

use crate::keys::{Answer, BuildError, KeySource, Query};

/// `dir`: a directory holding one `authorized_keys` file per login, named after the login.
struct DirSource {
    dir: PathBuf,
}

/// `file`: one `authorized_keys` file, used for the logins in `logins` (`"*"`: any login).
struct FileSource {
    path: PathBuf,
    logins: Vec<String>,
}

/// Builds the source of a `type = "file"` entry: `dir` wins when both are set.
pub(super) fn from_config(
    dir: &Option<PathBuf>,
    file: &Option<PathBuf>,
    logins: &[String],
) -> Result<Arc<dyn KeySource>, BuildError> {
    match (dir, file) {
        (Some(dir), _) => Ok(Arc::new(DirSource { dir: dir.clone() })),
        (None, Some(path)) => Ok(Arc::new(FileSource {
            path: path.clone(),
            logins: logins.to_vec(),
        })),
        (None, None) => Err(("dir", "a file source needs `dir` or `file`".to_string())),
    }
}

impl KeySource for DirSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        format!("file: {}/<login>", self.dir.display())
    }

    fn answer<'a>(&'a self, q: Query<'a>) -> BoxFuture<'a, Answer> {
        read_keys_file(self.dir.join(q.login)).boxed()
    }
}

impl KeySource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        format!(
            "file: {} for {}",
            self.path.display(),
            self.logins.join(", ")
        )
    }

    fn answer<'a>(&'a self, q: Query<'a>) -> BoxFuture<'a, Answer> {
        async move {
            if self.logins.iter().any(|l| l == "*" || l == q.login) {
                read_keys_file(self.path.clone()).await
            } else {
                Answer::Unknown
            }
        }
        .boxed()
    }
}

/// The file's text, [`Answer::Unknown`] when it does not exist.
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
