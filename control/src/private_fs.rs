//! Owner-only files and folders: everything the control plane keeps holds state or secrets
//! (the data folder, the database, the API token, logs, manifests, uploaded libraries), so it is
//! created 0700 (folders) and 0600 (files) whatever the umask, and an existing folder or file of
//! this user is tightened to that.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A file or folder that could not be made, tightened or written owner-only.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct PrivateFileError {
    /// The file or folder.
    pub path: PathBuf,
    /// The failure.
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> PrivateFileError + '_ {
    move |source| PrivateFileError { path: path.to_owned(), source }
}

/// Creates `path` (and missing parents) owner-only (0700), or tightens an existing folder of this
/// user to 0700.
pub fn create_dir(path: &Path) -> Result<(), PrivateFileError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(at(path))?;
    let mode = fs::metadata(path).map_err(at(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::info!("{}: mode {:o} tightened to 0700", path.display(), mode & 0o777);
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(at(path))?;
    }
    Ok(())
}

/// Tightens an existing file to owner-only (0600).
pub fn tighten_file(path: &Path) -> Result<(), PrivateFileError> {
    let mode = fs::metadata(path).map_err(at(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(at(path))?;
    }
    Ok(())
}

/// Opens (creating it if missing) an owner-only file (0600): for appending with `append`, else
/// for reading and writing without truncating.
pub fn open_file(path: &Path, append: bool) -> Result<fs::File, PrivateFileError> {
    let mut options = fs::OpenOptions::new();
    if append {
        options.append(true);
    } else {
        options.read(true).write(true).truncate(false);
    }
    let file = options.create(true).mode(0o600).open(path).map_err(at(path))?;
    file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(at(path))?;
    Ok(file)
}

/// Whether `path` is a folder (not a link to one) of this user that nobody else may enter: what a
/// folder someone else could have made first must be before it is trusted.
pub fn owned_private_dir(path: &Path) -> Result<bool, PrivateFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).map_err(at(path))?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    Ok(meta.is_dir() && meta.uid() == me && meta.mode() & 0o077 == 0)
}

/// Writes `bytes` to `path` as a new owner-only file (0600), replacing it atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_files_are_made_and_tightened_owner_only() {
        let dir = std::env::temp_dir().join(format!("praas-private-fs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir.join("a/b")).unwrap();
        create_dir(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "an existing folder is tightened");
        assert_eq!(mode(&dir.join("a/b")), 0o700);
        write_file(&dir.join("f"), b"x").unwrap();
        assert_eq!(mode(&dir.join("f")), 0o600);
        fs::set_permissions(dir.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
        tighten_file(&dir.join("f")).unwrap();
        assert_eq!(mode(&dir.join("f")), 0o600);
        drop(open_file(&dir.join("log"), true).unwrap());
        assert_eq!(mode(&dir.join("log")), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
