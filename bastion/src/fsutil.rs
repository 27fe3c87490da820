//! Small file-system helpers shared by the modules that keep state on disk.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `contents` so that a reader (or a crash) sees the old file or the
/// new one, never a part: written to `tmp` (mode 0600), synced, renamed over `path`. `tmp`
/// is removed when a step fails.
pub fn replace_file(path: &Path, tmp: &Path, contents: &[u8]) -> std::io::Result<()> {
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        f.write_all(contents)?;
        f.sync_data()?;
        fs::rename(tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_with_owner_only_mode_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tmp) = (dir.path().join("cursor"), dir.path().join(".cursor.tmp"));
        fs::write(&path, "old, and longer\n").unwrap();
        replace_file(&path, &tmp, b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!tmp.exists());
        // A failed rename (the target is a directory) leaves the tmp file behind: no.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("x"), "").unwrap();
        assert!(replace_file(&sub, &tmp, b"y").is_err());
        assert!(!tmp.exists());
    }
}
