//! Small filesystems for full-disk tests: a tmpfs of a given size mounted on a folder (unmounted
//! when dropped) and a filler file that takes every byte left on it. Mounting needs root (the
//! tests run as root here); a test that cannot mount fails and says so.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a folder; unmounted (lazily, should a process still hold a file of it)
/// and the folder removed when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir` (created if missing).
    ///
    /// # Panics
    /// If it cannot be mounted (not root, no `mount`).
    pub fn mount(dir: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs on {} failed ({status}): the test needs root",
            dir.display()
        );
        Self { dir: dir.to_owned() }
    }

    /// The folder it is mounted on.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills it: writes `file` (inside it) until the filesystem has no byte left; returns the
    /// filler's path (delete it to free the space).
    pub fn fill(&self, file: &str) -> PathBuf {
        fill(&self.dir.join(file))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `path` until its filesystem answers ENOSPC; returns `path`.
///
/// # Panics
/// On any other failure.
pub fn fill(path: &Path) -> PathBuf {
    let mut file = std::fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut size = chunk.len();
    // Large writes first, then ever smaller ones for the last partial blocks.
    while size > 0 {
        match file.write(&chunk[..size]) {
            Ok(0) => size /= 2,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::StorageFull => size /= 2,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
    path.to_owned()
}
