//! Persistence of the control plane: applications and processes in an embedded redb database in
//! the data folder, written through on every change, read back at start.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

use crate::model::{Application, ProcessRecord};

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

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
}

/// The control plane's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

fn process_key(app: &str, name: &str) -> String {
    format!("{app}/{name}")
}

impl Store {
    /// Opens (or creates) the database at `path`, owner-only (0600) whatever the umask: it holds
    /// every application's secret.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        crate::private_fs::open_file(path, false).map_err(|e| StoreError::File { path: e.path, source: e.source })?;
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(APPS)?;
            txn.open_table(PROCESSES)?;
            txn.open_table(SETTINGS)?;
        }
        txn.commit()?;
        Ok(Self { db })
    }

    fn put(&self, table: TableDefinition<&str, &[u8]>, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(table)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(table)?.remove(key)?;
        txn.commit()?;
        Ok(())
    }

    fn all<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            out.push(serde_json::from_slice(value.value())?);
        }
        Ok(out)
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
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SETTINGS)?;
        Ok(table.get(key)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
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
}
