//! The function registry: one SQLite database in the data directory
//! (`registry.sqlite3`, mode 0600), holding each tenant's functions, their
//! reserved concurrency and the log tails of their recent invocations.
//!
//! Two connections: a writer (every change, `synchronous=FULL`) and a
//! reader. In WAL mode a read never waits for a commit's fsync, so a lookup
//! stays quick while a change commits. The methods block (SQLite, fsync);
//! async code calls them through [`Registry::blocking`], which runs them on
//! tokio's blocking pool, never on an executor thread.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::durable;
use crate::quotas::{QuotaExceeded, Quotas, Usage};

use crate::runtime::Runtime;

/// How many invocation records each function keeps (oldest dropped first).
pub const LOGS_PER_FUNCTION: i64 = 1000;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The function already exists.
    #[error("function already exists")]
    Conflict,
    /// No such function.
    #[error("function not found")]
    NotFound,
    /// The caller's `RevisionId` is not the current one.
    #[error("revision id does not match")]
    RevisionMismatch,
    /// SQLite failed.
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored row does not decode.
    #[error("registry database holds a bad row: {0}")]
    Corrupt(String),
    /// The change would break one of the tenant's quotas.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The blocking task running the operation failed.
    #[error("registry task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The database file could not be created or its mode set.
    #[error("registry file: {0}")]
    File(#[from] std::io::Error),
}

/// A function's stored definition (its `$LATEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRecord {
    /// Owning tenant.
    pub tenant: String,
    /// Name, unique per tenant.
    pub name: String,
    /// `provided.al2023`, `provided` or `exec`.
    pub runtime: Runtime,
    /// Handler string.
    pub handler: String,
    /// Role ARN as given (not used; kept for clients that expect it back).
    pub role: String,
    /// Description.
    pub description: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Timeout in seconds.
    pub timeout_s: u32,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// SHA-256 of the code zip, hex (code store key).
    pub code_sha256_hex: String,
    /// SHA-256 of the code zip, base64.
    pub code_sha256_base64: String,
    /// Code zip size in bytes.
    pub code_size: u64,
    /// Changes on every update.
    pub revision_id: String,
    /// Lambda-format timestamp of the last change.
    pub last_modified: String,
    /// Reserved concurrency, if set.
    pub reserved_concurrency: Option<u32>,
}

/// One invocation's record, for the logs route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationLog {
    /// Request id.
    pub request_id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Function name.
    pub function: String,
    /// Lambda-format timestamp.
    pub timestamp: String,
    /// `Success`, `Handled`, `Unhandled`, `Timeout`, ...
    pub outcome: String,
    /// The VM that ran it.
    pub slot_id: String,
    /// Whether it was a cold start.
    pub cold_start: bool,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// The last 4 KiB of output.
    pub log_tail: Vec<u8>,
}

/// The registry.
pub struct Registry {
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
}

/// The database file and SQLite's companions of it.
const FILES: [&str; 3] = [
    "registry.sqlite3",
    "registry.sqlite3-wal",
    "registry.sqlite3-shm",
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS functions (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    runtime TEXT NOT NULL,
    handler TEXT NOT NULL,
    role TEXT NOT NULL,
    description TEXT NOT NULL,
    memory_mib INTEGER NOT NULL,
    timeout_s INTEGER NOT NULL,
    env TEXT NOT NULL,
    code_sha256_hex TEXT NOT NULL,
    code_sha256_base64 TEXT NOT NULL,
    code_size INTEGER NOT NULL,
    revision_id TEXT NOT NULL,
    last_modified TEXT NOT NULL,
    reserved_concurrency INTEGER,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS invocation_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    outcome TEXT NOT NULL,
    slot_id TEXT NOT NULL,
    cold_start INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    log_tail BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS invocation_logs_by_request ON invocation_logs (tenant, function, request_id);
";

const COLUMNS: &str = "tenant, name, runtime, handler, role, description, memory_mib, timeout_s, env, \
     code_sha256_hex, code_sha256_base64, code_size, revision_id, last_modified, reserved_concurrency";

fn from_row(row: &Row<'_>) -> rusqlite::Result<(FunctionRecord, String)> {
    Ok((
        FunctionRecord {
            tenant: row.get(0)?,
            name: row.get(1)?,
            runtime: row.get(2)?,
            handler: row.get(3)?,
            role: row.get(4)?,
            description: row.get(5)?,
            memory_mib: row.get(6)?,
            timeout_s: row.get(7)?,
            env: BTreeMap::new(),
            code_sha256_hex: row.get(9)?,
            code_sha256_base64: row.get(10)?,
            code_size: row.get::<_, i64>(11)?.max(0) as u64,
            revision_id: row.get(12)?,
            last_modified: row.get(13)?,
            reserved_concurrency: row.get(14)?,
        },
        row.get(8)?,
    ))
}

fn decode((mut rec, env): (FunctionRecord, String)) -> Result<FunctionRecord, RegistryError> {
    rec.env = serde_json::from_str(&env)
        .map_err(|e| RegistryError::Corrupt(format!("env of {}/{}: {e}", rec.tenant, rec.name)))?;
    Ok(rec)
}

fn env_json(rec: &FunctionRecord) -> String {
    serde_json::to_string(&rec.env).unwrap_or_else(|_| "{}".into())
}

impl Registry {
    /// Opens (creating) `data_dir/registry.sqlite3`. The file is created
    /// 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files
    /// the database's mode), and existing files are set to 0600.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        let path = data_dir.join(FILES[0]);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        for f in FILES {
            durable::set_mode_if_exists(&data_dir.join(f), durable::FILE_MODE)?;
        }
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let reader = Connection::open(&path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        reader.pragma_update(None, "query_only", true)?;
        Ok(Self {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    /// Runs `f` on tokio's blocking pool (SQLite and its fsyncs block).
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me)).await?
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| RegistryError::Corrupt("registry lock poisoned".into()))?;
        f(&mut conn)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let conn = self
            .reader
            .lock()
            .map_err(|_| RegistryError::Corrupt("registry lock poisoned".into()))?;
        f(&conn)
    }

    /// Adds a function; `Conflict` if the name is taken.
    pub fn create(&self, rec: &FunctionRecord) -> Result<(), RegistryError> {
        self.create_within(rec, &Quotas::UNLIMITED)
    }

    /// [`Registry::create`] if the tenant stays within `quotas` (checked in
    /// the same transaction); `Quota` if not.
    pub fn create_within(
        &self,
        rec: &FunctionRecord,
        quotas: &Quotas,
    ) -> Result<(), RegistryError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let usage = Self::usage_in(&tx, &rec.tenant, None)?;
            if Self::exists_in(&tx, &rec.tenant, &rec.name)? {
                return Err(RegistryError::Conflict);
            }
            quotas.check_create(usage, rec.code_size)?;
            let sql = format!(
                "INSERT INTO functions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
            );
            let r = tx.execute(
                &sql,
                params![
                    rec.tenant, rec.name, rec.runtime, rec.handler, rec.role, rec.description,
                    rec.memory_mib, rec.timeout_s, env_json(rec), rec.code_sha256_hex,
                    rec.code_sha256_base64, rec.code_size as i64, rec.revision_id, rec.last_modified,
                    rec.reserved_concurrency
                ],
            );
            match r {
                Ok(_) => Ok(tx.commit()?),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(RegistryError::Conflict)
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn exists_in(c: &Connection, tenant: &str, name: &str) -> Result<bool, RegistryError> {
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM functions WHERE tenant = ?1 AND name = ?2",
            params![tenant, name],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// A tenant's functions and code bytes, leaving out `except`.
    fn usage_in(
        c: &Connection,
        tenant: &str,
        except: Option<&str>,
    ) -> Result<Usage, RegistryError> {
        let (functions, bytes): (i64, i64) = c.query_row(
            "SELECT COUNT(*), COALESCE(SUM(code_size), 0) FROM functions \
             WHERE tenant = ?1 AND name IS NOT ?2",
            params![tenant, except],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Usage {
            functions: u64::try_from(functions).unwrap_or(0),
            code_bytes: u64::try_from(bytes).unwrap_or(0),
        })
    }

    /// What a tenant stores: its functions and their code bytes.
    pub fn usage(&self, tenant: &str) -> Result<Usage, RegistryError> {
        self.read(|c| Self::usage_in(c, tenant, None))
    }

    /// The code bytes of a tenant's functions but one.
    pub fn usage_except(&self, tenant: &str, except: &str) -> Result<u64, RegistryError> {
        self.read(|c| Ok(Self::usage_in(c, tenant, Some(except))?.code_bytes))
    }

    /// One function.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Option<FunctionRecord>, RegistryError> {
        self.read(|c| {
            let sql = format!("SELECT {COLUMNS} FROM functions WHERE tenant = ?1 AND name = ?2");
            c.query_row(&sql, params![tenant, name], from_row)
                .optional()?
                .map(decode)
                .transpose()
        })
    }

    /// A tenant's functions by name, those after `after`, at most `limit`.
    pub fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FunctionRecord>, RegistryError> {
        self.read(|c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM functions WHERE tenant = ?1 AND name > ?2 ORDER BY name LIMIT ?3"
            );
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(
                params![tenant, after.unwrap_or(""), i64::try_from(limit).unwrap_or(i64::MAX)],
                from_row,
            )?;
            rows.map(|r| decode(r?)).collect()
        })
    }

    /// Replaces a function's definition. With `expected_revision`, only if
    /// it is still the current one.
    pub fn update(
        &self,
        rec: &FunctionRecord,
        expected_revision: Option<&str>,
    ) -> Result<(), RegistryError> {
        self.update_within(rec, expected_revision, &Quotas::UNLIMITED)
    }

    /// [`Registry::update`] if the tenant's code stays within `quotas`
    /// (checked in the same transaction); `Quota` if not.
    pub fn update_within(
        &self,
        rec: &FunctionRecord,
        expected_revision: Option<&str>,
        quotas: &Quotas,
    ) -> Result<(), RegistryError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<String> = tx
                .query_row(
                    "SELECT revision_id FROM functions WHERE tenant = ?1 AND name = ?2",
                    params![rec.tenant, rec.name],
                    |r| r.get(0),
                )
                .optional()?;
            let current = current.ok_or(RegistryError::NotFound)?;
            if expected_revision.is_some_and(|e| e != current) {
                return Err(RegistryError::RevisionMismatch);
            }
            let others = Self::usage_in(&tx, &rec.tenant, Some(&rec.name))?;
            quotas.check_code(others.code_bytes, rec.code_size)?;
            tx.execute(
                "UPDATE functions SET runtime = ?3, handler = ?4, role = ?5, description = ?6, \
                 memory_mib = ?7, timeout_s = ?8, env = ?9, code_sha256_hex = ?10, \
                 code_sha256_base64 = ?11, code_size = ?12, revision_id = ?13, last_modified = ?14, \
                 reserved_concurrency = ?15 WHERE tenant = ?1 AND name = ?2",
                params![
                    rec.tenant, rec.name, rec.runtime, rec.handler, rec.role, rec.description,
                    rec.memory_mib, rec.timeout_s, env_json(rec), rec.code_sha256_hex,
                    rec.code_sha256_base64, rec.code_size as i64, rec.revision_id, rec.last_modified,
                    rec.reserved_concurrency
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Removes a function and its invocation records; returns what it was.
    pub fn delete(&self, tenant: &str, name: &str) -> Result<FunctionRecord, RegistryError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let sql = format!("SELECT {COLUMNS} FROM functions WHERE tenant = ?1 AND name = ?2");
            let rec = tx
                .query_row(&sql, params![tenant, name], from_row)
                .optional()?
                .ok_or(RegistryError::NotFound)?;
            tx.execute(
                "DELETE FROM functions WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
            )?;
            tx.execute(
                "DELETE FROM invocation_logs WHERE tenant = ?1 AND function = ?2",
                params![tenant, name],
            )?;
            tx.commit()?;
            decode(rec)
        })
    }

    /// Sets or clears reserved concurrency.
    pub fn set_reserved_concurrency(
        &self,
        tenant: &str,
        name: &str,
        value: Option<u32>,
    ) -> Result<(), RegistryError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE functions SET reserved_concurrency = ?3 WHERE tenant = ?1 AND name = ?2",
                params![tenant, name, value],
            )?;
            if n == 0 {
                Err(RegistryError::NotFound)
            } else {
                Ok(())
            }
        })
    }

    /// The sum of reserved concurrency over a tenant's functions but one.
    pub fn reserved_total_except(&self, tenant: &str, except: &str) -> Result<u64, RegistryError> {
        self.read(|c| {
            let n: i64 = c.query_row(
                "SELECT COALESCE(SUM(reserved_concurrency), 0) FROM functions WHERE tenant = ?1 AND name != ?2",
                params![tenant, except],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// Whether any function (any tenant) uses this code. Asked on the
    /// writer, so it sees every committed change.
    pub fn code_in_use(&self, sha256_hex: &str) -> Result<bool, RegistryError> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM functions WHERE code_sha256_hex = ?1",
                params![sha256_hex],
                |r| r.get(0),
            )?;
            Ok(n > 0)
        })
    }

    /// Every code version some function uses (for the start-up sweep).
    pub fn code_hashes(&self) -> Result<HashSet<String>, RegistryError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT code_sha256_hex FROM functions")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Records an invocation, dropping the function's oldest beyond
    /// [`LOGS_PER_FUNCTION`]. This runs on every invocation, so it commits
    /// without waiting for the disk (`synchronous=NORMAL`; in WAL mode the
    /// database stays consistent, and the next fully synced commit of a
    /// function change carries the log records along). A power loss may cost
    /// the newest log records, never a function.
    pub fn record_invocation(&self, log: &InvocationLog) -> Result<(), RegistryError> {
        self.with(|c| {
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let written = Self::insert_log(c, log);
            c.pragma_update(None, "synchronous", "FULL")?;
            written
        })
    }

    fn insert_log(c: &mut Connection, log: &InvocationLog) -> Result<(), RegistryError> {
        {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO invocation_logs (tenant, function, request_id, timestamp, outcome, \
                 slot_id, cold_start, duration_us, log_tail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    log.tenant, log.function, log.request_id, log.timestamp, log.outcome,
                    log.slot_id, log.cold_start, log.duration_us as i64, log.log_tail
                ],
            )?;
            let seq = tx.last_insert_rowid();
            tx.execute(
                "DELETE FROM invocation_logs WHERE tenant = ?1 AND function = ?2 AND seq <= ?3 - ?4",
                params![log.tenant, log.function, seq, LOGS_PER_FUNCTION],
            )?;
            tx.commit()?;
            Ok(())
        }
    }

    /// The record of one invocation.
    pub fn invocation(
        &self,
        tenant: &str,
        function: &str,
        request_id: &str,
    ) -> Result<Option<InvocationLog>, RegistryError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT request_id, tenant, function, timestamp, outcome, slot_id, cold_start, \
                 duration_us, log_tail FROM invocation_logs \
                 WHERE tenant = ?1 AND function = ?2 AND request_id = ?3 ORDER BY seq DESC LIMIT 1",
                params![tenant, function, request_id],
                |r| {
                    Ok(InvocationLog {
                        request_id: r.get(0)?,
                        tenant: r.get(1)?,
                        function: r.get(2)?,
                        timestamp: r.get(3)?,
                        outcome: r.get(4)?,
                        slot_id: r.get(5)?,
                        cold_start: r.get(6)?,
                        duration_us: r.get::<_, i64>(7)?.max(0) as u64,
                        log_tail: r.get(8)?,
                    })
                },
            )
            .optional()?)
        })
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
