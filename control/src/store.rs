//! Persistence of the control plane: applications and processes in an embedded redb database in
//! the data folder, written through on every change, read back at start.
//!
//! redb refuses every operation of a handle after one I/O failure ("Previous I/O error
//! occurred"), a full data folder for instance. The store then closes that handle and opens the
//! file again (redb recovers it to its last commit), and retries the operation once: once space
//! is back the database works again without a restart. While it cannot, each operation fails at
//! once with an error that [`StoreError::is_unavailable`] recognises (the HTTP API answers 503).
//! A process record that states a fact ([`Store::put_process_later`]) is kept meanwhile and
//! written with the next write that succeeds, or by [`Store::flush_pending`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use thiserror::Error;

use crate::model::{Application, ProcessRecord};

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

/// How long after a failed reopening operations fail at once instead of trying again (a full
/// disk does not hold every request for the time of an open).
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);

/// A database failure: redb's own error, kept as the source.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be created or made owner-only.
    #[error("control plane database: {}: {source}", path.display())]
    File {
        /// The database file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("control plane database: {0}")]
    Open(#[from] redb::DatabaseError),
    /// A transaction could not begin.
    #[error("control plane database: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened.
    #[error("control plane database: {0}")]
    Table(#[from] redb::TableError),
    /// Reading or writing a table failed.
    #[error("control plane database: {0}")]
    Storage(#[from] redb::StorageError),
    /// A transaction could not commit.
    #[error("control plane database: {0}")]
    Commit(#[from] redb::CommitError),
    /// A record could not be encoded, or a stored one decoded.
    #[error("control plane database: {0}")]
    Record(#[from] serde_json::Error),
    /// The database was closed after an I/O failure and opening it again failed moments ago.
    #[error("control plane database: closed after an I/O failure, not reopened yet: {last}")]
    Closed {
        /// Why the last reopening failed.
        last: String,
    },
}

/// Whether a redb storage error means the file failed (the handle is then poisoned).
fn io_failure(e: &redb::StorageError) -> bool {
    matches!(e, redb::StorageError::Io(_) | redb::StorageError::PreviousIo)
}

impl StoreError {
    /// Whether the database is unavailable because its file failed (a full or failing disk):
    /// nothing was written, and the same request can succeed once the disk is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Closed { .. } => true,
            Self::File { source, .. } => {
                matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
            }
            Self::Open(redb::DatabaseError::Storage(e))
            | Self::Transaction(redb::TransactionError::Storage(e))
            | Self::Table(redb::TableError::Storage(e))
            | Self::Storage(e)
            | Self::Commit(redb::CommitError::Storage(e)) => io_failure(e),
            _ => false,
        }
    }

    /// The failure in redb's (or the system's) own words, without this error's prefix.
    pub fn reason(&self) -> String {
        match self {
            Self::File { path, source } => format!("{}: {source}", path.display()),
            Self::Open(e) => e.to_string(),
            Self::Transaction(e) => e.to_string(),
            Self::Table(e) => e.to_string(),
            Self::Storage(e) => e.to_string(),
            Self::Commit(e) => e.to_string(),
            Self::Record(e) => e.to_string(),
            Self::Closed { last } => format!("closed after an I/O failure, not reopened yet: {last}"),
        }
    }
}

/// The open handle, or why there is none.
#[derive(Debug)]
enum Handle {
    /// Open.
    Open(Database),
    /// Closed after an I/O failure; reopening failed at `at` for `reason`.
    Closed {
        /// When the last reopening failed.
        at: Instant,
        /// Why.
        reason: String,
    },
}

/// The control plane's database; shared by every thread (each operation is one redb
/// transaction; a reopening waits for the operations under way, which are short).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    handle: RwLock<Handle>,
    /// Counts reopenings: a failure seen on an older handle does not close a newer one.
    generation: Mutex<u64>,
    /// Process records the database could not take yet, by key ([`Store::put_process_later`]).
    /// Held by every write, so one that supersedes a pending record is never undone by it.
    pending: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn process_key(app: &str, name: &str) -> String {
    format!("{app}/{name}")
}

/// Opens the database file and makes sure its tables exist.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    crate::private_fs::open_file(path, false).map_err(|e| StoreError::File { path: e.path, source: e.source })?;
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    {
        txn.open_table(APPS)?;
        txn.open_table(PROCESSES)?;
        txn.open_table(SETTINGS)?;
    }
    txn.commit()?;
    Ok(db)
}

impl Store {
    /// Opens (or creates) the database at `path`, owner-only (0600) whatever the umask: it holds
    /// every application's secret.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_database(path)?;
        Ok(Self {
            path: path.to_owned(),
            handle: RwLock::new(Handle::Open(db)),
            generation: Mutex::new(0),
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    /// Runs `op` on the database; after an I/O failure (this one's or an earlier one's) closes
    /// the handle, opens the file again and runs `op` once more.
    fn with_db<T>(&self, op: impl Fn(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let (generation, first) = {
            let handle = self.handle.read().unwrap_or_else(|p| p.into_inner());
            // Read under the handle's lock: a reopening changes both under its write lock.
            let generation = *self.generation.lock().unwrap_or_else(|p| p.into_inner());
            let first = match &*handle {
                Handle::Open(db) => op(db),
                Handle::Closed { at, reason } if at.elapsed() < REOPEN_BACKOFF => {
                    return Err(StoreError::Closed { last: reason.clone() })
                }
                Handle::Closed { reason, .. } => Err(StoreError::Closed { last: reason.clone() }),
            };
            (generation, first)
        };
        match first {
            Err(e) if e.is_unavailable() => {
                self.reopen(generation, &e)?;
                let handle = self.handle.read().unwrap_or_else(|p| p.into_inner());
                match &*handle {
                    Handle::Open(db) => op(db),
                    Handle::Closed { reason, .. } => Err(StoreError::Closed { last: reason.clone() }),
                }
            }
            other => other,
        }
    }

    /// Closes a handle that failed (unless another thread reopened it since `generation`) and
    /// opens the file again.
    fn reopen(&self, generation: u64, failure: &StoreError) -> Result<(), StoreError> {
        let mut handle = self.handle.write().unwrap_or_else(|p| p.into_inner());
        let mut current = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        if *current != generation {
            // Another thread reopened it meanwhile: use its handle.
            return Ok(());
        }
        if let Handle::Closed { at, reason } = &*handle {
            if at.elapsed() < REOPEN_BACKOFF {
                return Err(StoreError::Closed { last: reason.clone() });
            }
        }
        tracing::warn!("control plane database failed ({}): reopening {}", failure.reason(), self.path.display());
        // redb allows one handle per file: the failed one goes first (no operation holds it,
        // this thread has the write lock).
        *handle = Handle::Closed { at: Instant::now(), reason: failure.reason() };
        // The tables exist since the first opening: no write is needed to open it again.
        match Database::create(&self.path) {
            Ok(db) => {
                *handle = Handle::Open(db);
                *current += 1;
                tracing::info!("control plane database reopened");
                Ok(())
            }
            Err(e) => {
                let e = StoreError::Open(e);
                *handle = Handle::Closed { at: Instant::now(), reason: e.reason() };
                Err(e)
            }
        }
    }

    /// Writes `value` under `key` in `table` (removes it: `None`) in one transaction with the
    /// pending process records (but the one it supersedes). With `later`, a process record the
    /// database is unavailable for becomes pending.
    fn commit(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: Option<&[u8]>,
        later: bool,
    ) -> Result<(), StoreError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let supersedes = |k: &str| table.name() == PROCESSES.name() && k == key;
        let result = self.with_db(|db| {
            let txn = db.begin_write()?;
            if !pending.is_empty() {
                let mut processes = txn.open_table(PROCESSES)?;
                for (k, v) in pending.iter().filter(|(k, _)| !supersedes(k)) {
                    processes.insert(k.as_str(), v.as_slice())?;
                }
            }
            {
                let mut table = txn.open_table(table)?;
                match value {
                    Some(value) => drop(table.insert(key, value)?),
                    None => drop(table.remove(key)?),
                }
            }
            txn.commit()?;
            Ok(())
        });
        match &result {
            Ok(()) => pending.clear(),
            Err(e) if later && e.is_unavailable() => {
                if let Some(value) = value {
                    pending.insert(key.to_owned(), value.to_vec());
                }
            }
            Err(_) => {}
        }
        result
    }

    fn put(&self, table: TableDefinition<&str, &[u8]>, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.commit(table, key, Some(value), false)
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StoreError> {
        self.commit(table, key, None, false)
    }

    /// Writes the pending process records; answers how many there were.
    pub fn flush_pending(&self) -> Result<usize, StoreError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_empty() {
            return Ok(0);
        }
        self.with_db(|db| {
            let txn = db.begin_write()?;
            {
                let mut processes = txn.open_table(PROCESSES)?;
                for (k, v) in pending.iter() {
                    processes.insert(k.as_str(), v.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })?;
        let written = pending.len();
        pending.clear();
        Ok(written)
    }

    /// Whether process records wait to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    fn all<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(table)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (_, value) = row?;
                out.push(serde_json::from_slice(value.value())?);
            }
            Ok(out)
        })
    }

    /// Saves an application.
    pub fn put_app(&self, app: &Application) -> Result<(), StoreError> {
        self.put(APPS, &app.name, &serde_json::to_vec(app)?)
    }

    /// Removes an application.
    pub fn remove_app(&self, name: &str) -> Result<(), StoreError> {
        self.remove(APPS, name)
    }

    /// Every application.
    pub fn apps(&self) -> Result<Vec<Application>, StoreError> {
        self.all(APPS)
    }

    /// Saves a process.
    pub fn put_process(&self, record: &ProcessRecord) -> Result<(), StoreError> {
        self.put(PROCESSES, &process_key(&record.app, &record.name), &serde_json::to_vec(record)?)
    }

    /// Saves a process; if the database is unavailable, keeps the record to be written with the
    /// next write that succeeds (or by [`Store::flush_pending`]) and answers the error.
    pub fn put_process_later(&self, record: &ProcessRecord) -> Result<(), StoreError> {
        self.commit(PROCESSES, &process_key(&record.app, &record.name), Some(&serde_json::to_vec(record)?), true)
    }

    /// Removes a process.
    pub fn remove_process(&self, app: &str, name: &str) -> Result<(), StoreError> {
        self.remove(PROCESSES, &process_key(app, name))
    }

    /// Every process.
    pub fn processes(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        self.all(PROCESSES)
    }

    /// Saves a setting.
    pub fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.put(SETTINGS, key, value.as_bytes())
    }

    /// Reads a setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SETTINGS)?;
            Ok(table.get(key)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProcessStatus, Resources};

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("praas-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.redb");
        {
            let store = Store::open(&path).unwrap();
            let app = Application {
                name: "a".into(),
                manifest: "".into(),
                resources: Resources::default(),
                secret: "s".into(),
                slurm: None,
            };
            store.put_app(&app).unwrap();
            let mut p = ProcessRecord::new("a", "p1", Resources::default());
            p.status = ProcessStatus::SwappedOut;
            store.put_process(&p).unwrap();
            store.put_process(&ProcessRecord::new("a", "p2", Resources::default())).unwrap();
            store.remove_process("a", "p2").unwrap();
            store.put_setting("control_addr", "127.0.0.1:5").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.apps().unwrap()[0].secret, "s");
        let processes = store.processes().unwrap();
        assert_eq!(processes.len(), 1);
        assert_eq!(processes[0].status, ProcessStatus::SwappedOut);
        assert_eq!(store.setting("control_addr").unwrap().as_deref(), Some("127.0.0.1:5"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn app(name: &str, manifest_bytes: usize) -> Application {
        Application {
            name: name.into(),
            manifest: "#".repeat(manifest_bytes),
            resources: Resources::default(),
            secret: "s".into(),
            slurm: None,
        }
    }

    fn names(store: &Store) -> Vec<String> {
        store.apps().unwrap().into_iter().map(|a| a.name).collect()
    }

    /// A database on a full filesystem fails its writes as unavailable, and once space is back
    /// works again through the same `Store` (redb's handle poisoned by the failure is reopened);
    /// the write that failed left nothing behind.
    #[test]
    fn a_full_disk_fails_writes_and_the_store_recovers_once_space_is_back() {
        let dir = std::env::temp_dir().join(format!("praas-store-full-{}", std::process::id()));
        let tmpfs = praas_testkit::disk::Tmpfs::mount(&dir, 4);
        let path = tmpfs.path().join("control.redb");
        let store = Store::open(&path).unwrap();
        store.put_app(&app("before", 100)).unwrap();
        store.put_process(&ProcessRecord::new("before", "p", Resources::default())).unwrap();
        let filler = tmpfs.fill("filler");

        // 1 MiB more than the disk has: the commit cannot be written.
        let failed = store.put_app(&app("failed", 1 << 20)).unwrap_err();
        assert!(failed.is_unavailable(), "{failed}");
        assert!(failed.to_string().contains("No space left on device"), "{failed}");
        // Later writes fail the same way while the disk is full (each one tries to reopen);
        // what was committed can still be read.
        for _ in 0..3 {
            let again = store.put_app(&app("failed-again", 1 << 20)).unwrap_err();
            assert!(again.is_unavailable(), "{again}");
        }
        assert_eq!(names(&store), ["before"]);

        // Space is back: the same store writes again, no restart.
        std::fs::remove_file(&filler).unwrap();
        store.put_app(&app("after", 1 << 20)).unwrap();
        store.put_process(&ProcessRecord::new("after", "q", Resources::default())).unwrap();
        assert_eq!(names(&store), ["after", "before"]);

        // And the file holds exactly that.
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(names(&store), ["after", "before"]);
        let processes: Vec<String> = store.processes().unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(processes, ["q", "p"]);
    }

    /// Threads that write while the disk fills and frees meet unavailable errors only, never a
    /// handle left closed: each write that succeeded is there afterwards.
    #[test]
    fn concurrent_writers_share_one_reopening() {
        let dir = std::env::temp_dir().join(format!("praas-store-threads-{}", std::process::id()));
        let tmpfs = praas_testkit::disk::Tmpfs::mount(&dir, 4);
        let path = tmpfs.path().join("control.redb");
        let store = std::sync::Arc::new(Store::open(&path).unwrap());
        let filler = tmpfs.fill("filler");
        // Poison the handle.
        assert!(store.put_app(&app("big", 1 << 20)).unwrap_err().is_unavailable());
        std::fs::remove_file(&filler).unwrap();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut written = Vec::new();
                    for i in 0..20 {
                        let name = format!("t{t}-{i}");
                        match store.put_app(&app(&name, 10)) {
                            Ok(()) => written.push(name),
                            Err(e) => assert!(e.is_unavailable(), "{e}"),
                        }
                    }
                    written
                })
            })
            .collect();
        let mut written: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        written.sort();
        assert_eq!(written.len(), 80, "with space back every write succeeds (after one reopening)");
        assert_eq!(names(&store), written);
    }

    /// A fact recorded while the disk is full is kept and written with the first write that
    /// succeeds afterwards; a later write of the same record supersedes it.
    #[test]
    fn records_kept_for_later_are_written_with_the_next_write_that_succeeds() {
        let dir = std::env::temp_dir().join(format!("praas-store-later-{}", std::process::id()));
        let tmpfs = praas_testkit::disk::Tmpfs::mount(&dir, 4);
        let path = tmpfs.path().join("control.redb");
        let store = Store::open(&path).unwrap();
        store.put_process(&ProcessRecord::new("a", "p", Resources::default())).unwrap();
        store.put_process(&ProcessRecord::new("a", "q", Resources::default())).unwrap();
        let filler = tmpfs.fill("filler");
        assert!(store.put_app(&app("big", 1 << 20)).unwrap_err().is_unavailable());
        let status = |name: &str| store.processes().unwrap().into_iter().find(|p| p.name == name).unwrap().status;

        let mut failed = ProcessRecord::new("a", "p", Resources::default());
        failed.status = ProcessStatus::Failure;
        assert!(store.put_process_later(&failed).unwrap_err().is_unavailable());
        let mut closed = ProcessRecord::new("a", "q", Resources::default());
        closed.status = ProcessStatus::Closed;
        assert!(store.put_process_later(&closed).unwrap_err().is_unavailable());
        assert!(store.has_pending());
        assert!(store.flush_pending().unwrap_err().is_unavailable(), "still full");
        assert_eq!(status("p"), ProcessStatus::Allocating, "not written yet");

        std::fs::remove_file(&filler).unwrap();
        // q's newer record supersedes its pending one; p's goes with it.
        let mut swapped = ProcessRecord::new("a", "q", Resources::default());
        swapped.status = ProcessStatus::SwappedOut;
        store.put_process(&swapped).unwrap();
        assert!(!store.has_pending());
        assert_eq!(store.flush_pending().unwrap(), 0);
        drop(store);
        let store = Store::open(&path).unwrap();
        let status = |name: &str| store.processes().unwrap().into_iter().find(|p| p.name == name).unwrap().status;
        assert_eq!(status("p"), ProcessStatus::Failure);
        assert_eq!(status("q"), ProcessStatus::SwappedOut);
    }
}
