//! The sandbox table in SQLite, shared by every smolvm process on a host.
//!
//! The database runs in WAL mode with a busy timeout, so the CLI, the
//! server and each sandbox's supervisor can read and write it at once.
//! The schema evolves through numbered migrations tracked in
//! `PRAGMA user_version`.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::accel::Accel;
use crate::id::SandboxId;
use crate::spec::SandboxSpec;
use crate::state::SandboxState;

/// Schema migrations; entry N moves the schema from version N to N + 1.
const MIGRATIONS: &[&str] = &[
    // 1: the sandbox table.
    "CREATE TABLE sandboxes (
        id             TEXT PRIMARY KEY,
        state          TEXT NOT NULL,
        spec           TEXT NOT NULL,
        image          TEXT NOT NULL,
        accel          TEXT NOT NULL,
        created_at_ms  INTEGER NOT NULL,
        updated_at_ms  INTEGER NOT NULL,
        supervisor_pid INTEGER,
        vmm_pid        INTEGER,
        boot_ms        INTEGER,
        error          TEXT
    ) STRICT;",
];

/// How long opening the database retries while another process has it locked.
const OPEN_RETRY_LIMIT: Duration = Duration::from_secs(10);

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Errors from the sandbox store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open the database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database query failed")]
    Query(#[from] rusqlite::Error),
    #[error(
        "database schema version {found} is newer than this smolvm understands ({known}); upgrade smolvm"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("database row for sandbox {id} is corrupt: {problem}")]
    Corrupt { id: String, problem: String },
}

/// One sandbox as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub state: SandboxState,
    pub spec: SandboxSpec,
    /// Name of the image the sandbox booted from.
    pub image: String,
    pub accel: Accel,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub supervisor_pid: Option<u32>,
    pub vmm_pid: Option<u32>,
    /// Milliseconds from spawning the VMM to a ready agent, for the last boot.
    pub boot_ms: Option<u64>,
    /// The reason the sandbox is in `error` or its last boot failed.
    pub error: Option<String>,
}

/// Handle on the database; cheap operations, safe to share between threads.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Switching a new database to WAL takes a lock without waiting in
        // the busy handler, so processes opening it at once retry here.
        let deadline = std::time::Instant::now() + OPEN_RETRY_LIMIT;
        loop {
            match Self::open_once(path) {
                Err(StoreError::Open { source, .. } | StoreError::Query(source))
                    if is_busy(&source) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable:
        // every statement is its own transaction.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&record.spec).expect("spec always serializes");
        self.conn().execute(
            "INSERT INTO sandboxes (id, state, spec, image, accel, created_at_ms, updated_at_ms,
                                    supervisor_pid, vmm_pid, boot_ms, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                record.id.as_str(),
                record.state.as_str(),
                spec,
                record.image,
                record.accel.to_string(),
                to_ms(record.created_at),
                to_ms(record.updated_at),
                record.supervisor_pid,
                record.vmm_pid,
                record.boot_ms,
                record.error,
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT * FROM sandboxes WHERE id = ?1")?;
        let row = stmt.query_row([id.as_str()], RawRow::from_row).optional()?;
        row.map(RawRow::into_record).transpose()
    }

    /// Lists every sandbox, oldest first.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT * FROM sandboxes ORDER BY created_at_ms, id")?;
        let rows = stmt
            .query_map([], RawRow::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(RawRow::into_record).collect()
    }

    /// Moves a sandbox to `to` if it is currently in one of `from`.
    /// Returns false when the sandbox is missing or in another state, so
    /// two processes racing on one sandbox cannot both win.
    pub fn transition(
        &self,
        id: &SandboxId,
        from: &[SandboxState],
        to: SandboxState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let from_list: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let from_json = serde_json::to_string(&from_list).expect("strings serialize");
        let changed = self.conn().execute(
            "UPDATE sandboxes SET state = ?2, error = ?3, updated_at_ms = ?4
             WHERE id = ?1 AND state IN (SELECT value FROM json_each(?5))",
            params![
                id.as_str(),
                to.as_str(),
                error,
                to_ms(SystemTime::now()),
                from_json
            ],
        )?;
        Ok(changed == 1)
    }

    /// Records the processes of a booting sandbox.
    pub fn set_processes(
        &self,
        id: &SandboxId,
        supervisor_pid: Option<u32>,
        vmm_pid: Option<u32>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET supervisor_pid = ?2, vmm_pid = ?3, updated_at_ms = ?4 WHERE id = ?1",
            params![id.as_str(), supervisor_pid, vmm_pid, to_ms(SystemTime::now())],
        )?;
        Ok(())
    }

    /// Marks a booting sandbox running; false if it left `creating` meanwhile.
    pub fn set_running(
        &self,
        id: &SandboxId,
        vmm_pid: u32,
        boot_ms: u64,
    ) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE sandboxes SET state = 'running', vmm_pid = ?2, boot_ms = ?3, error = NULL,
                                  updated_at_ms = ?4
             WHERE id = ?1 AND state = 'creating'",
            params![id.as_str(), vmm_pid, boot_ms, to_ms(SystemTime::now())],
        )?;
        Ok(changed == 1)
    }

    /// Removes the sandbox's row; false when there was none.
    pub fn delete(&self, id: &SandboxId) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", [id.as_str()])?;
        Ok(changed == 1)
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    // Read the version under the write lock: two processes opening a new
    // database at once would otherwise both apply the first migration.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = apply_migrations(conn);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute_batch(end)?;
    result
}

fn apply_migrations(conn: &Connection) -> Result<(), StoreError> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as u32;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        conn.execute_batch(sql)?;
    }
    conn.pragma_update(None, "user_version", known)?;
    Ok(())
}

/// Column values as read, before conversion into domain types.
struct RawRow {
    id: String,
    state: String,
    spec: String,
    image: String,
    accel: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    supervisor_pid: Option<u32>,
    vmm_pid: Option<u32>,
    boot_ms: Option<u64>,
    error: Option<String>,
}

impl RawRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get("id")?,
            state: row.get("state")?,
            spec: row.get("spec")?,
            image: row.get("image")?,
            accel: row.get("accel")?,
            created_at_ms: row.get("created_at_ms")?,
            updated_at_ms: row.get("updated_at_ms")?,
            supervisor_pid: row.get("supervisor_pid")?,
            vmm_pid: row.get("vmm_pid")?,
            boot_ms: row.get("boot_ms")?,
            error: row.get("error")?,
        })
    }

    fn into_record(self) -> Result<SandboxRecord, StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt {
            id: self.id.clone(),
            problem,
        };
        Ok(SandboxRecord {
            id: self.id.parse().map_err(|e| corrupt(format!("{e}")))?,
            state: self.state.parse().map_err(|e| corrupt(format!("{e}")))?,
            spec: serde_json::from_str(&self.spec).map_err(|e| corrupt(format!("spec: {e}")))?,
            accel: self
                .accel
                .parse()
                .map_err(|e| corrupt(format!("accel: {e}")))?,
            image: self.image.clone(),
            created_at: from_ms(self.created_at_ms),
            updated_at: from_ms(self.updated_at_ms),
            supervisor_pid: self.supervisor_pid,
            vmm_pid: self.vmm_pid,
            boot_ms: self.boot_ms,
            error: self.error.clone(),
        })
    }
}

fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CreateRequest;

    fn record(state: SandboxState) -> SandboxRecord {
        let now = from_ms(to_ms(SystemTime::now()));
        SandboxRecord {
            id: SandboxId::generate(),
            state,
            spec: CreateRequest::default().validate(2).unwrap(),
            image: "default".into(),
            accel: Accel::Tcg,
            created_at: now,
            updated_at: now,
            supervisor_pid: None,
            vmm_pid: None,
            boot_ms: None,
            error: None,
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("smolvm.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn insert_get_list_delete() {
        let (_dir, store) = open();
        let a = record(SandboxState::Creating);
        store.insert(&a).unwrap();

        assert_eq!(store.get(&a.id).unwrap(), Some(a.clone()));
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&a));
        assert!(store.delete(&a.id).unwrap());
        assert!(!store.delete(&a.id).unwrap());
        assert_eq!(store.get(&a.id).unwrap(), None);
    }

    #[test]
    fn transition_checks_current_state() {
        let (_dir, store) = open();
        let a = record(SandboxState::Running);
        store.insert(&a).unwrap();

        let moved = store
            .transition(
                &a.id,
                &[SandboxState::Creating],
                SandboxState::Error,
                Some("x"),
            )
            .unwrap();
        assert!(!moved);
        assert_eq!(
            store.get(&a.id).unwrap().unwrap().state,
            SandboxState::Running
        );

        let moved = store
            .transition(
                &a.id,
                &[SandboxState::Running],
                SandboxState::Error,
                Some("vmm died"),
            )
            .unwrap();
        assert!(moved);
        let got = store.get(&a.id).unwrap().unwrap();
        assert_eq!(got.state, SandboxState::Error);
        assert_eq!(got.error.as_deref(), Some("vmm died"));
    }

    #[test]
    fn set_running_only_from_creating() {
        let (_dir, store) = open();
        let a = record(SandboxState::Creating);
        store.insert(&a).unwrap();
        assert!(store.set_running(&a.id, 42, 1500).unwrap());
        assert!(!store.set_running(&a.id, 43, 1500).unwrap());

        let got = store.get(&a.id).unwrap().unwrap();
        assert_eq!(got.state, SandboxState::Running);
        assert_eq!(got.vmm_pid, Some(42));
        assert_eq!(got.boot_ms, Some(1500));
    }

    #[test]
    fn reopen_keeps_rows_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smolvm.db");
        let a = record(SandboxState::Stopped);
        Store::open(&path).unwrap().insert(&a).unwrap();

        let store = Store::open(&path).unwrap();
        assert_eq!(store.get(&a.id).unwrap(), Some(a));
    }

    #[test]
    fn concurrent_opens_migrate_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smolvm.db");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Store::open(&path).map(|_| ()))
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
    }

    #[test]
    fn newer_schema_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smolvm.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
