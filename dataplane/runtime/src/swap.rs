//! Swapping: a process's state, undelivered messages and state files written to a [`SwapStore`]
//! and read back, byte-exact, by the process that swaps in.
//!
//! The store is a directory (on a cluster: a shared filesystem), one folder per application and
//! process: `ROOT/APP/PROCESS/snapshot/`. A snapshot holds
//! - `state.bin`: the state store, records of `u32` key length, key, `u64` timestamp (ns),
//!   `u64` value length, zero padding so that the value starts at a file offset aligned to 64
//!   bytes (4096 for values of 64 KiB and more), value (all little-endian);
//! - `mailbox.bin`: the undelivered messages, as the mailbox encodes them;
//! - `files/...`: the process's state files;
//! - `manifest.json`: format version, app, process, and every file's size and CRC-32.
//!
//! A snapshot is written into a fresh temporary folder, every file synced, then exchanged with
//! the previous one in one atomic rename (`RENAME_EXCHANGE`): a crash at any point leaves either
//! the previous snapshot or the complete new one in place, never neither, and at most a temporary
//! folder, which swap-in ignores (and the next swap removes). Swap-in checks every size and
//! checksum before anything is restored. A snapshot carries the id of the swap-out that wrote it
//! ([`SnapshotManifest::swap_id`]): a control plane that restarted mid-swap tells by it whether
//! the snapshot in place is the one it asked for.
//!
//! Test hook: `PRAAS_TEST_PAUSE_SWAP=STEP:MS[,STEP:MS...]` pauses a swap for `MS` milliseconds at
//! the named step ([`test_pause`]); unset (always, outside tests), it does nothing.
//!
//! A process's state is its owner's alone, also on a shared machine: every folder the store
//! creates is `0700` and every file it writes `0600`, whatever the umask, and the folders of an
//! application and of a process are set to `0700` at every swap. Restored state files too.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::{StateEntry, StateStore, MAX_KEY_LEN};

/// Version of the snapshot layout.
pub const SNAPSHOT_VERSION: u32 = 1;
const SNAPSHOT_DIR: &str = "snapshot";
const MANIFEST: &str = "manifest.json";
const STATE_FILE: &str = "state.bin";
const MAILBOX_FILE: &str = "mailbox.bin";
const FILES_DIR: &str = "files";
const IO_CHUNK: usize = 1 << 20;
/// Mode of every folder the store creates: its owner's only.
const DIR_MODE: u32 = 0o700;
/// Mode of every file the store writes: its owner's only.
const FILE_MODE: u32 = 0o600;
/// Values start at file offsets aligned to this (small values) ...
const VALUE_ALIGN_SMALL: u64 = 64;
/// ... or this (values of 64 KiB and more): the kernel copies page-aligned data between the page
/// cache and user memory much faster than data at odd offsets (measured: 2x for 256 MiB).
const VALUE_ALIGN_LARGE: u64 = 4096;
// 4096 fits every usize.
#[allow(clippy::cast_possible_truncation)]
static ZEROS: [u8; VALUE_ALIGN_LARGE as usize] = [0; VALUE_ALIGN_LARGE as usize];

/// Zero bytes between a record's header (ending at file `offset`) and its value.
// The padding is less than `align`, at most 4096: it fits every usize.
#[allow(clippy::cast_possible_truncation)]
fn value_padding(offset: u64, value_len: u64) -> usize {
    let align = if value_len >= 64 << 10 { VALUE_ALIGN_LARGE } else { VALUE_ALIGN_SMALL };
    ((align - offset % align) % align) as usize
}

/// Why a swap failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SwapError {
    /// Reading or writing the store failed.
    #[error("swap store I/O on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No complete snapshot exists for the process.
    #[error("no complete snapshot at {0}")]
    Missing(PathBuf),
    /// The snapshot is damaged: a size or checksum does not match, or a record is malformed.
    #[error("snapshot at {path} is damaged: {reason}")]
    Damaged {
        /// The snapshot folder.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// The snapshot's manifest is not the JSON of a manifest.
    #[error("snapshot at {path} is damaged: manifest: {source}")]
    BadManifest {
        /// The snapshot folder.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// An application or process name that cannot name a folder.
    #[error("invalid name {0:?} for a swap folder")]
    InvalidName(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SwapError + '_ {
    move |source| SwapError::Io { path: path.to_path_buf(), source }
}

/// One file of a snapshot, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the snapshot folder.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the content.
    pub crc32: u32,
}

/// The manifest of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// The application.
    pub app: String,
    /// The process.
    pub process: String,
    /// When it was written, ns since the Unix epoch.
    pub created_ns: u64,
    /// Number of state keys.
    pub state_keys: u64,
    /// The id of the swap-out that wrote it (empty: written outside a control plane's swap).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub swap_id: String,
    /// Every file of the snapshot.
    pub entries: Vec<ManifestEntry>,
}

impl SnapshotManifest {
    /// Total bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }
}

/// What a swap-out wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapReport {
    /// Bytes written.
    pub bytes: u64,
    /// Seconds it took.
    pub secs: f64,
    /// Files written (state, mailbox and state files).
    pub files: usize,
}

/// What swap-in read back, ready to restore.
#[derive(Debug)]
pub struct Snapshot {
    /// The manifest.
    pub manifest: SnapshotManifest,
    /// The state records.
    pub state: Vec<(String, StateEntry)>,
    /// The encoded undelivered messages.
    pub mailbox: Vec<u8>,
    /// The folder holding the state files (copy them with [`Snapshot::restore_files`]).
    pub files_dir: PathBuf,
}

impl Snapshot {
    /// Restores the state records into `store`.
    pub fn restore_state(&self, store: &StateStore) {
        for (key, entry) in &self.state {
            store.restore(key, entry.clone());
        }
    }

    /// Copies the state files into `dest`.
    pub fn restore_files(&self, dest: &Path) -> Result<u64, SwapError> {
        let mut bytes = 0;
        for entry in self.manifest.entries.iter().filter(|e| e.path.starts_with("files/")) {
            let rel = &entry.path["files/".len()..];
            let target = dest.join(rel);
            if let Some(parent) = target.parent() {
                create_private_dirs(parent)?;
            }
            let source = self.files_dir.join(rel);
            let mut input = File::open(&source).map_err(io_at(&source))?;
            let mut output = open_private(&target, false)?;
            bytes += io::copy(&mut input, &mut output).map_err(io_at(&target))?;
        }
        Ok(bytes)
    }
}

/// A writer that counts bytes and computes a CRC-32 of everything written.
struct Checked<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A filesystem swap store.
#[derive(Debug, Clone)]
pub struct SwapStore {
    root: PathBuf,
}

fn check_name(name: &str) -> Result<&str, SwapError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(SwapError::InvalidName(name.to_owned()))
    }
}

impl SwapStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of one process.
    pub fn folder(&self, app: &str, process: &str) -> Result<PathBuf, SwapError> {
        Ok(self.root.join(check_name(app)?).join(check_name(process)?))
    }

    /// Writes a snapshot of `state`, the encoded `mailbox` and the files under `files` (if any).
    pub fn write(
        &self,
        app: &str,
        process: &str,
        state: &StateStore,
        mailbox: &[u8],
        files: Option<&Path>,
    ) -> Result<SwapReport, SwapError> {
        self.write_swap("", app, process, state, mailbox, files)
    }

    /// [`SwapStore::write`] for the swap-out `swap_id`, which the manifest records.
    pub fn write_swap(
        &self,
        swap_id: &str,
        app: &str,
        process: &str,
        state: &StateStore,
        mailbox: &[u8],
        files: Option<&Path>,
    ) -> Result<SwapReport, SwapError> {
        let started = Instant::now();
        let folder = self.folder(app, process)?;
        create_private_dirs(&folder)?;
        // The application's and the process's folders are the store's own: owner-only even if
        // they were made before (by an older build, or by hand).
        for own in [folder.parent().unwrap_or(&folder), &folder] {
            fs::set_permissions(own, Permissions::from_mode(DIR_MODE)).map_err(io_at(own))?;
        }
        let tmp = folder.join(format!(".tmp-{}-{}", std::process::id(), crate::state::now_ns()));
        create_private_dir(&tmp)?;
        let result = write_snapshot(&tmp, swap_id, app, process, state, mailbox, files);
        let manifest = match result {
            Ok(manifest) => manifest,
            Err(err) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(err);
            }
        };
        // Replace the previous snapshot: exchange it with the new one in one rename, then move it
        // aside. Deleting the old one (hundreds of MiB) would double the swap's time:
        // `collect_garbage` does it afterwards, off the swap's path.
        let target = folder.join(SNAPSHOT_DIR);
        if target.exists() {
            let old = folder.join(format!(".old-{}", crate::state::now_ns()));
            if exchange(&tmp, &target).map_err(io_at(&target))? {
                // `tmp` now holds the previous snapshot.
                fs::rename(&tmp, &old).map_err(io_at(&tmp))?;
            } else {
                // A filesystem without RENAME_EXCHANGE: two renames, with a moment between them
                // when only the folder's `.old-` and `.tmp-` ones hold the snapshots.
                fs::rename(&target, &old).map_err(io_at(&target))?;
                fs::rename(&tmp, &target).map_err(io_at(&tmp))?;
            }
        } else {
            fs::rename(&tmp, &target).map_err(io_at(&tmp))?;
        }
        sync_dir(&folder)?;
        Ok(SwapReport { bytes: manifest.bytes(), secs: started.elapsed().as_secs_f64(), files: manifest.entries.len() })
    }

    /// Whether a complete snapshot exists (its manifest is readable).
    pub fn exists(&self, app: &str, process: &str) -> bool {
        self.folder(app, process).map(|f| read_manifest(&f.join(SNAPSHOT_DIR)).is_ok()).unwrap_or(false)
    }

    /// The manifest of the snapshot in place, unverified ([`SwapError::Missing`] if none).
    pub fn manifest(&self, app: &str, process: &str) -> Result<SnapshotManifest, SwapError> {
        read_manifest(&self.folder(app, process)?.join(SNAPSHOT_DIR))
    }

    /// Checks every size and checksum of the snapshot in place, reading each file once and
    /// keeping none of it in memory; returns its manifest.
    pub fn verify(&self, app: &str, process: &str) -> Result<SnapshotManifest, SwapError> {
        let dir = self.folder(app, process)?.join(SNAPSHOT_DIR);
        let manifest = read_manifest(&dir)?;
        check_manifest(&dir, &manifest, app, process)?;
        for entry in &manifest.entries {
            let (bytes, crc) = checksum_file(&dir.join(&entry.path))?;
            check_entry(&dir, entry, bytes, crc)?;
        }
        Ok(manifest)
    }

    /// Reads and verifies the snapshot of a process.
    pub fn read(&self, app: &str, process: &str) -> Result<Snapshot, SwapError> {
        let dir = self.folder(app, process)?.join(SNAPSHOT_DIR);
        let manifest = read_manifest(&dir)?;
        let damaged = |reason: String| SwapError::Damaged { path: dir.clone(), reason };
        check_manifest(&dir, &manifest, app, process)?;
        let mut state = Vec::new();
        let mut mailbox = Vec::new();
        for entry in &manifest.entries {
            let path = dir.join(&entry.path);
            let (bytes, crc) = match entry.path.as_str() {
                STATE_FILE => read_state(&path, &mut state).map_err(|e| match e {
                    ReadError::Io(source) => SwapError::Io { path: path.clone(), source },
                    ReadError::Malformed(reason) => damaged(reason),
                })?,
                MAILBOX_FILE => {
                    let mut file = File::open(&path).map_err(io_at(&path))?;
                    file.read_to_end(&mut mailbox).map_err(io_at(&path))?;
                    (mailbox.len() as u64, crc32fast::hash(&mailbox))
                }
                _ => checksum_file(&path)?,
            };
            check_entry(&dir, entry, bytes, crc)?;
        }
        Ok(Snapshot { manifest, state, mailbox, files_dir: dir.join(FILES_DIR) })
    }

    /// Deletes everything stored for a process; returns whether anything was there.
    pub fn delete(&self, app: &str, process: &str) -> Result<bool, SwapError> {
        let folder = self.folder(app, process)?;
        match fs::remove_dir_all(&folder) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(SwapError::Io { path: folder, source: e }),
        }
    }
}

impl SwapStore {
    /// Deletes what earlier swaps of a process left beside its snapshot: replaced snapshots, and
    /// temporary folders of swaps that crashed. Never touches the current snapshot.
    pub fn collect_garbage(&self, app: &str, process: &str) -> Result<(), SwapError> {
        remove_leftovers(&self.folder(app, process)?);
        Ok(())
    }
}

/// Checks what a manifest says of itself: its version, whose it is, and that no entry's path
/// leaves the snapshot.
fn check_manifest(dir: &Path, manifest: &SnapshotManifest, app: &str, process: &str) -> Result<(), SwapError> {
    let damaged = |reason: String| Err(SwapError::Damaged { path: dir.to_path_buf(), reason });
    if manifest.version != SNAPSHOT_VERSION {
        return damaged(format!("version {} (this build reads {SNAPSHOT_VERSION})", manifest.version));
    }
    if manifest.app != app || manifest.process != process {
        return damaged(format!("it belongs to {}/{}", manifest.app, manifest.process));
    }
    match manifest.entries.iter().find(|e| e.path.contains("..") || e.path.starts_with('/')) {
        Some(entry) => damaged(format!("entry path {:?} leaves the snapshot", entry.path)),
        None => Ok(()),
    }
}

/// Checks the size and CRC a file was read with against its manifest entry.
fn check_entry(dir: &Path, entry: &ManifestEntry, bytes: u64, crc: u32) -> Result<(), SwapError> {
    if bytes == entry.bytes && crc == entry.crc32 {
        return Ok(());
    }
    Err(SwapError::Damaged {
        path: dir.to_path_buf(),
        reason: format!(
            "{}: {bytes} bytes with CRC {crc:08x}, the manifest says {} bytes with CRC {:08x}",
            entry.path, entry.bytes, entry.crc32
        ),
    })
}

/// Exchanges the folders `a` and `b` atomically (`renameat2` with `RENAME_EXCHANGE`); `Ok(false)`
/// where the filesystem cannot (nothing changed then).
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are NUL-terminated C strings that live until the call returns; the call
    // reads them only and touches no memory of ours otherwise.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(error),
    }
}

/// Test hook: pauses for `MS` milliseconds when `PRAAS_TEST_PAUSE_SWAP` names `step` (a list of
/// `STEP:MS`, comma-separated), logging that it does so; does nothing when it is unset. The fault
/// tests (`control/tests/swap_faults.rs`) kill the control plane or the process while a swap
/// waits here. Steps of a process: `drained` (nothing written yet), `state-written` (the
/// temporary folder holds `state.bin`, no manifest), `renamed` (the snapshot is in place, not yet
/// confirmed), `restore` (a swap-in, before the snapshot is read); of the control plane:
/// `request` (SWAPPING_OUT recorded, the request not sent), `confirmed` (the confirmation read,
/// SWAPPED_OUT not recorded), `recorded` (SWAPPED_OUT recorded, the commit not sent).
pub fn test_pause(step: &str) {
    let Some(spec) = std::env::var_os("PRAAS_TEST_PAUSE_SWAP") else { return };
    let spec = spec.to_string_lossy();
    let pause = spec.split(',').find_map(|item| {
        let (name, ms) = item.split_once(':')?;
        (name.trim() == step).then(|| ms.trim().parse::<u64>().ok()).flatten()
    });
    if let Some(ms) = pause {
        tracing::warn!("test hook PRAAS_TEST_PAUSE_SWAP: paused at swap step {step} for {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

fn remove_leftovers(folder: &Path) {
    if let Ok(entries) = fs::read_dir(folder) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") || name.starts_with(".old-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), SwapError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

/// Creates the folder `path`, owner-only ([`DIR_MODE`] whatever the umask); its parent exists.
fn create_private_dir(path: &Path) -> Result<(), SwapError> {
    DirBuilder::new().mode(DIR_MODE).create(path).map_err(io_at(path))?;
    // The umask may have taken bits off the owner's: set the mode itself.
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE)).map_err(io_at(path))
}

/// Creates the folder `path` and those above it that are missing, each owner-only; folders that
/// exist are left as they are.
fn create_private_dirs(path: &Path) -> Result<(), SwapError> {
    if path.as_os_str().is_empty() || path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_private_dirs(parent)?;
    }
    match create_private_dir(path) {
        // Created meanwhile by someone else (another swap of the same application).
        Err(SwapError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Opens `path` for writing, owner-only ([`FILE_MODE`] whatever the umask), without following a
/// symbolic link there: a new file (`new`), or one replaced from its first byte.
fn open_private(path: &Path, new: bool) -> Result<File, SwapError> {
    let mut options = OpenOptions::new();
    options.write(true).mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let file = options.open(path).map_err(io_at(path))?;
    file.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(io_at(path))?;
    Ok(file)
}

fn create_checked(path: &Path) -> Result<Checked<BufWriter<File>>, SwapError> {
    let file = open_private(path, true)?;
    Ok(Checked { inner: BufWriter::with_capacity(IO_CHUNK, file), crc: crc32fast::Hasher::new(), bytes: 0 })
}

fn finish_checked(path: &Path, rel: &str, writer: Checked<BufWriter<File>>) -> Result<ManifestEntry, SwapError> {
    let Checked { inner, crc, bytes } = writer;
    let file = inner.into_inner().map_err(|e| SwapError::Io { path: path.to_path_buf(), source: e.into_error() })?;
    file.sync_all().map_err(io_at(path))?;
    Ok(ManifestEntry { path: rel.to_owned(), bytes, crc32: crc.finalize() })
}

fn write_snapshot(
    dir: &Path,
    swap_id: &str,
    app: &str,
    process: &str,
    state: &StateStore,
    mailbox: &[u8],
    files: Option<&Path>,
) -> Result<SnapshotManifest, SwapError> {
    let mut entries = Vec::new();
    // State: records streamed through one buffered, checksummed writer.
    let path = dir.join(STATE_FILE);
    let mut writer = create_checked(&path)?;
    let mut keys = 0u64;
    let mut failure = None;
    state.for_each(|key, entry| {
        if failure.is_some() {
            return;
        }
        let result = (|| {
            // The store refuses keys longer than MAX_KEY_LEN (u16::MAX) bytes.
            #[allow(clippy::cast_possible_truncation)]
            let key_len = key.len() as u32;
            writer.write_all(&key_len.to_le_bytes())?;
            writer.write_all(key.as_bytes())?;
            writer.write_all(&entry.timestamp_ns.to_le_bytes())?;
            writer.write_all(&(entry.value.len() as u64).to_le_bytes())?;
            let padding = value_padding(writer.bytes, entry.value.len() as u64);
            writer.write_all(&ZEROS[..padding])?;
            writer.write_all(&entry.value)
        })();
        match result {
            Ok(()) => keys += 1,
            Err(e) => failure = Some(e),
        }
    });
    if let Some(source) = failure {
        return Err(SwapError::Io { path, source });
    }
    entries.push(finish_checked(&path, STATE_FILE, writer)?);
    test_pause("state-written");
    // Undelivered messages.
    let path = dir.join(MAILBOX_FILE);
    let mut writer = create_checked(&path)?;
    writer.write_all(mailbox).map_err(io_at(&path))?;
    entries.push(finish_checked(&path, MAILBOX_FILE, writer)?);
    // State files.
    if let Some(files) = files.filter(|f| f.exists()) {
        copy_tree(files, &dir.join(FILES_DIR), FILES_DIR, &mut entries)?;
    }
    let manifest = SnapshotManifest {
        version: SNAPSHOT_VERSION,
        app: app.to_owned(),
        process: process.to_owned(),
        created_ns: crate::state::now_ns(),
        state_keys: keys,
        swap_id: swap_id.to_owned(),
        entries,
    };
    let path = dir.join(MANIFEST);
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| SwapError::Io { path: path.clone(), source: e.into() })?;
    let mut file = open_private(&path, true)?;
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(io_at(&path))?;
    sync_dir(dir)?;
    Ok(manifest)
}

fn copy_tree(from: &Path, to: &Path, rel: &str, entries: &mut Vec<ManifestEntry>) -> Result<(), SwapError> {
    // `to` is new: in the snapshot's fresh temporary folder.
    create_private_dir(to)?;
    let mut children: Vec<_> =
        fs::read_dir(from).map_err(io_at(from))?.collect::<Result<_, _>>().map_err(io_at(from))?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let name = child.file_name();
        let name = name.to_string_lossy();
        let source = child.path();
        let target = to.join(&*name);
        let rel = format!("{rel}/{name}");
        let kind = child.file_type().map_err(io_at(&source))?;
        if kind.is_dir() {
            copy_tree(&source, &target, &rel, entries)?;
        } else if kind.is_file() {
            let mut input = BufReader::with_capacity(IO_CHUNK, File::open(&source).map_err(io_at(&source))?);
            let mut writer = create_checked(&target)?;
            io::copy(&mut input, &mut writer).map_err(io_at(&source))?;
            entries.push(finish_checked(&target, &rel, writer)?);
        }
        // Symlinks and special files are not state: skipped.
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<SnapshotManifest, SwapError> {
    let path = dir.join(MANIFEST);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SwapError::Missing(dir.to_path_buf())),
        Err(e) => return Err(SwapError::Io { path, source: e }),
    };
    serde_json::from_slice(&text).map_err(|source| SwapError::BadManifest { path: dir.to_path_buf(), source })
}

fn checksum_file(path: &Path) -> Result<(u64, u32), SwapError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            return Ok((bytes, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
}

enum ReadError {
    Io(io::Error),
    Malformed(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Malformed("state.bin ends inside a record".into())
        } else {
            ReadError::Io(e)
        }
    }
}

/// A reader that computes a CRC-32 of everything read.
struct CheckedReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Decodes `state.bin`, checking every length against what is left of the file before
/// allocating: a damaged file is an error, never a huge allocation or a panic.
fn read_state(path: &Path, out: &mut Vec<(String, StateEntry)>) -> Result<(u64, u32), ReadError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader =
        CheckedReader { inner: BufReader::with_capacity(IO_CHUNK, file), crc: crc32fast::Hasher::new(), bytes: 0 };
    let mut word = [0u8; 8];
    loop {
        let mut len = [0u8; 4];
        match reader.read(&mut len[..1])? {
            0 => break,
            _ => reader.read_exact(&mut len[1..])?,
        }
        let key_len = u32::from_le_bytes(len) as usize;
        if key_len > MAX_KEY_LEN {
            return Err(ReadError::Malformed(format!("a key of {key_len} bytes")));
        }
        let mut key = vec![0u8; key_len];
        reader.read_exact(&mut key)?;
        let key = String::from_utf8(key).map_err(|_| ReadError::Malformed("a key that is not UTF-8".into()))?;
        reader.read_exact(&mut word)?;
        let timestamp_ns = u64::from_le_bytes(word);
        reader.read_exact(&mut word)?;
        let value_len = u64::from_le_bytes(word);
        let padding = value_padding(reader.bytes, value_len);
        if value_len.saturating_add(padding as u64) > size - reader.bytes {
            return Err(ReadError::Malformed(format!("value of {key:?} claims {value_len} bytes past the end")));
        }
        // 4096 fits every usize.
        #[allow(clippy::cast_possible_truncation)]
        let mut pad = [0u8; VALUE_ALIGN_LARGE as usize];
        reader.read_exact(&mut pad[..padding])?;
        // Only past the address space (32-bit targets): more than this process could hold.
        let value_len = usize::try_from(value_len)
            .map_err(|_| ReadError::Malformed(format!("value of {key:?} claims {value_len} bytes")))?;
        let mut value = vec![0u8; value_len];
        reader.read_exact(&mut value)?;
        out.push((key, StateEntry { value: std::sync::Arc::new(value), timestamp_ns }));
    }
    Ok((reader.bytes, reader.crc.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("praas-swap-{name}-{}-{}", std::process::id(), crate::state::now_ns()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn snapshot_round_trips_byte_exact() {
        let root = temp("roundtrip");
        let store = SwapStore::new(&root);
        let state = StateStore::default();
        state.put("small", b"v".to_vec()).unwrap();
        state.put("empty", Vec::new()).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        state.put("big", big.clone()).unwrap();
        let files = root.join("files-src");
        fs::create_dir_all(files.join("sub")).unwrap();
        fs::write(files.join("a.txt"), b"alpha").unwrap();
        fs::write(files.join("sub/b.bin"), vec![7u8; 10_000]).unwrap();
        let report = store.write("app", "p1", &state, b"mailbox-bytes", Some(&files)).unwrap();
        assert!(report.bytes > 3_000_000);
        assert!(store.exists("app", "p1"));

        let snapshot = store.read("app", "p1").unwrap();
        let restored = StateStore::default();
        snapshot.restore_state(&restored);
        assert_eq!(&**restored.get("big").unwrap().value, &big);
        assert_eq!(restored.get("small").unwrap().timestamp_ns, state.get("small").unwrap().timestamp_ns);
        assert_eq!(restored.len(), 3);
        assert_eq!(snapshot.mailbox, b"mailbox-bytes");
        let dest = root.join("files-dest");
        snapshot.restore_files(&dest).unwrap();
        assert_eq!(fs::read(dest.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(fs::read(dest.join("sub/b.bin")).unwrap(), vec![7u8; 10_000]);

        // A second swap replaces the first; delete removes everything.
        state.put("small", b"w".to_vec()).unwrap();
        store.write("app", "p1", &state, b"", None).unwrap();
        let again = store.read("app", "p1").unwrap();
        assert!(again.state.iter().any(|(k, e)| k == "small" && &**e.value == b"w"));
        let leftovers = || fs::read_dir(root.join("app/p1")).unwrap().count();
        assert_eq!(leftovers(), 2, "the replaced snapshot waits beside the new one");
        store.collect_garbage("app", "p1").unwrap();
        assert_eq!(leftovers(), 1, "collect_garbage removes it");
        assert!(store.exists("app", "p1"));
        assert!(store.delete("app", "p1").unwrap());
        assert!(!store.exists("app", "p1"));
        assert!(matches!(store.read("app", "p1"), Err(SwapError::Missing(_))));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn damage_is_detected_and_half_written_snapshots_are_ignored() {
        let root = temp("damage");
        let store = SwapStore::new(&root);
        let state = StateStore::default();
        state.put("k", vec![1u8; 1000]).unwrap();
        store.write("app", "p", &state, b"", None).unwrap();
        let file = root.join("app/p/snapshot/state.bin");
        let mut bytes = fs::read(&file).unwrap();
        bytes[500] ^= 0xff;
        fs::write(&file, &bytes).unwrap();
        assert!(matches!(store.read("app", "p"), Err(SwapError::Damaged { .. })));
        // Truncated: the record says more than the file holds.
        fs::write(&file, &bytes[..100]).unwrap();
        assert!(matches!(store.read("app", "p"), Err(SwapError::Damaged { .. })));
        // A crash before the rename leaves a temporary folder only: no snapshot to accept.
        fs::remove_dir_all(root.join("app/p/snapshot")).unwrap();
        fs::create_dir_all(root.join("app/p/.tmp-1-2")).unwrap();
        fs::write(root.join("app/p/.tmp-1-2/state.bin"), b"partial").unwrap();
        assert!(!store.exists("app", "p"));
        assert!(matches!(store.read("app", "p"), Err(SwapError::Missing(_))));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_snapshot_carries_its_swap_id_and_verify_checks_every_file() {
        let root = temp("verify");
        let store = SwapStore::new(&root);
        let state = StateStore::default();
        state.put("k", vec![3u8; 100_000]).unwrap();
        store.write_swap("swap-1", "app", "p", &state, b"mail", None).unwrap();
        assert_eq!(store.verify("app", "p").unwrap().swap_id, "swap-1");
        assert_eq!(store.manifest("app", "p").unwrap().swap_id, "swap-1");
        // The second replaces the first in one exchange: the first waits beside it, whole.
        state.put("k", vec![4u8; 100_000]).unwrap();
        store.write_swap("swap-2", "app", "p", &state, b"", None).unwrap();
        assert_eq!(store.verify("app", "p").unwrap().swap_id, "swap-2");
        let old: Vec<PathBuf> = fs::read_dir(root.join("app/p"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".old-"))
            .collect();
        assert_eq!(old.len(), 1, "{old:?}");
        let manifest: SnapshotManifest = serde_json::from_slice(&fs::read(old[0].join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest.swap_id, "swap-1");
        // One flipped byte anywhere, and the mailbox file too: damaged, with the file named.
        let file = root.join("app/p/snapshot/mailbox.bin");
        fs::write(&file, b"x").unwrap();
        let error = store.verify("app", "p").unwrap_err().to_string();
        assert!(error.contains("mailbox.bin: 1 bytes with CRC"), "{error}");
        fs::write(&file, b"").unwrap();
        store.verify("app", "p").unwrap();
        let file = root.join("app/p/snapshot/state.bin");
        let mut bytes = fs::read(&file).unwrap();
        bytes[50_000] ^= 1;
        fs::write(&file, &bytes).unwrap();
        assert!(matches!(store.verify("app", "p"), Err(SwapError::Damaged { .. })));
        // Manifests written before swap ids parse, with none.
        let text = r#"{"version":1,"app":"a","process":"p","created_ns":1,"state_keys":0,"entries":[]}"#;
        assert_eq!(serde_json::from_str::<SnapshotManifest>(text).unwrap().swap_id, "");
        fs::remove_dir_all(&root).unwrap();
        assert!(matches!(store.verify("app", "p"), Err(SwapError::Missing(_))));
    }

    /// Sets the process's umask to `mask` until dropped, then puts the previous one back.
    struct Umask(libc::mode_t);

    impl Umask {
        fn set(mask: libc::mode_t) -> Self {
            // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
            Self(unsafe { libc::umask(mask) })
        }
    }

    impl Drop for Umask {
        fn drop(&mut self) {
            // SAFETY: as in `Umask::set`.
            unsafe { libc::umask(self.0) };
        }
    }

    /// Every folder and file under `dir` (and `dir` itself) with its permission bits.
    fn modes(dir: &Path, out: &mut Vec<(PathBuf, bool, u32)>) {
        let meta = fs::symlink_metadata(dir).unwrap();
        out.push((dir.to_path_buf(), meta.is_dir(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            for entry in fs::read_dir(dir).unwrap() {
                modes(&entry.unwrap().path(), out);
            }
        }
    }

    #[test]
    fn snapshot_folders_and_files_are_owner_only_whatever_the_umask() {
        let base = temp("modes");
        let files = base.join("files-src");
        fs::create_dir_all(files.join("sub/deeper")).unwrap();
        fs::write(files.join("a.txt"), b"alpha").unwrap();
        fs::write(files.join("sub/deeper/b.bin"), b"beta").unwrap();
        fs::set_permissions(files.join("a.txt"), Permissions::from_mode(0o666)).unwrap();
        // A store whose root the store makes, and one whose application folder exists already,
        // open to everyone (made by an older build, or by hand).
        let fresh = SwapStore::new(base.join("fresh/root"));
        let older = SwapStore::new(base.join("older"));
        fs::create_dir_all(base.join("older/app")).unwrap();
        fs::set_permissions(base.join("older/app"), Permissions::from_mode(0o777)).unwrap();
        let state = StateStore::default();
        state.put("k", b"v".to_vec()).unwrap();
        let dest = base.join("restored/files");
        {
            // Nothing masked: a folder or file the store did not make owner-only itself would be
            // readable and writable by everyone.
            let _umask = Umask::set(0);
            fresh.write("app", "p", &state, b"mail", Some(&files)).unwrap();
            // Again: the second snapshot replaces the first, through a new temporary folder.
            fresh.write("app", "p", &state, b"mail", Some(&files)).unwrap();
            fresh.read("app", "p").unwrap().restore_files(&dest).unwrap();
            older.write("app", "q", &state, b"", None).unwrap();
        }
        let (mut written, mut restored) = (Vec::new(), Vec::new());
        modes(&base.join("fresh"), &mut written);
        modes(&base.join("older/app"), &mut written);
        modes(&base.join("restored"), &mut restored);
        let count = |list: &[(PathBuf, bool, u32)]| list.iter().filter(|(_, dir, _)| !dir).count();
        // Two snapshots of p (state, mailbox, manifest, two state files), one of q (three files).
        assert_eq!(count(&written), 2 * 5 + 3, "{written:?}");
        assert_eq!(count(&restored), 2, "{restored:?}");
        for (path, dir, mode) in written.iter().chain(&restored) {
            let want = if *dir { DIR_MODE } else { FILE_MODE };
            assert_eq!(*mode, want, "{} is {mode:o}, not {want:o}", path.display());
        }
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn names_cannot_escape_the_store() {
        let store = SwapStore::new("/tmp/x");
        assert!(matches!(store.folder("..", "p"), Err(SwapError::InvalidName(_))));
        assert!(matches!(store.folder("a", "b/c"), Err(SwapError::InvalidName(_))));
        assert!(store.folder("app-1", "proc_2").is_ok());
    }
}
