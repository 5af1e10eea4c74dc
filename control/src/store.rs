//! Persistence of the control plane: applications and processes in an embedded redb database in
//! the data folder, written through on every change, read back at start.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

use crate::model::{Application, ProcessRecord};

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

/// A database failure.
#[derive(Debug, Error)]
#[error("control plane database: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
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
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path);
        file.and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(APPS).map_err(err)?;
            txn.open_table(PROCESSES).map_err(err)?;
            txn.open_table(SETTINGS).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self { db })
    }

    fn put(&self, table: TableDefinition<&str, &[u8]>, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(table).map_err(err)?.insert(key, value).map_err(err)?;
        txn.commit().map_err(err)
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(table).map_err(err)?.remove(key).map_err(err)?;
        txn.commit().map_err(err)
    }

    fn all<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(table).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (_, value) = row.map_err(err)?;
            out.push(serde_json::from_slice(value.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// Saves an application.
    pub fn put_app(&self, app: &Application) -> Result<(), StoreError> {
        self.put(APPS, &app.name, &serde_json::to_vec(app).map_err(err)?)
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
        self.put(PROCESSES, &process_key(&record.app, &record.name), &serde_json::to_vec(record).map_err(err)?)
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
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SETTINGS).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
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
