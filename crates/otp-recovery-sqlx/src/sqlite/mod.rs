//! The SQLite store: embedded and persistent, in one file (or in memory),
//! through `sqlx`. The default when an application needs its flows and
//! counters to survive a restart without running a database server.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use otp_recovery::sms::RecordingSender;
//! use otp_recovery_sqlx::sqlite::SqliteStore;
//! use otp_recovery::{Account, AccountId, KeyRing, PhoneNumber, Recovery, RequestContext, ServerKey};
//!
//! // A file keeps everything across restarts, e.g.
//! // SqliteStore::open("/var/lib/myapp/recovery.db").await?
//! let store = SqliteStore::open_in_memory().await?;
//! let sender = RecordingSender::new();
//! let recovery = Recovery::new(store, sender.clone(), KeyRing::new(1, ServerKey::generate()?));
//!
//! let alice = Account::new(AccountId::new("user-1001")?, PhoneNumber::parse("+14155550123")?);
//! let requested = recovery.request("alice@example.com", Some(alice), &RequestContext::without_client_ip()).await?;
//! let code = sender.last_code().expect("a code was sent");
//! recovery.verify(&requested.flow_id, code.expose_secret(), &RequestContext::without_client_ip()).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! [`SqliteStore::open`] creates the file if needed, puts it in WAL mode
//! (readers never block the writer) and creates the schema if it is not
//! there yet, so opening the same file again, or from several processes,
//! is safe. The store needs a tokio runtime with its timer enabled (as
//! `#[tokio::main]` gives).
//!
//! # Schema
//!
//! ```sql
//! CREATE TABLE flows (
//!     id          BLOB PRIMARY KEY,  -- the 16 bytes of the FlowId
//!     subject     TEXT NOT NULL,     -- Subject::key()
//!     version     INTEGER NOT NULL,
//!     state       INTEGER NOT NULL,  -- FlowState::code()
//!     created_at  INTEGER NOT NULL,  -- milliseconds since the Unix epoch
//!     seq         INTEGER NOT NULL,  -- creation order within the subject
//!     purge_after INTEGER NOT NULL,
//!     data        BLOB NOT NULL      -- FlowRecord::to_bytes()
//! );
//! CREATE INDEX flows_by_subject ON flows (subject, seq);
//! CREATE INDEX flows_by_purge_after ON flows (purge_after);
//! CREATE TABLE counters (
//!     key       TEXT PRIMARY KEY,
//!     count     INTEGER NOT NULL,
//!     resets_at INTEGER NOT NULL    -- end of the window, milliseconds
//! );
//! CREATE INDEX counters_by_resets_at ON counters (resets_at);
//! CREATE TABLE cases (
//!     reference   TEXT PRIMARY KEY,  -- SupportReference::as_compact()
//!     purge_after INTEGER NOT NULL,
//!     data        BLOB NOT NULL      -- SupportCase::to_bytes()
//! );
//! CREATE INDEX cases_by_purge_after ON cases (purge_after);
//! ```
//!
//! A record is kept whole in `data`; the other columns are the fields the
//! store queries on, written together with it by every statement. The
//! schema version is kept in `PRAGMA user_version` (1), and a database
//! with a newer one is refused. A record that cannot be decoded is
//! reported as [`StoreError::Decode`], never a panic.
//!
//! # Atomicity
//!
//! Every write runs on the store's single writing connection, in one
//! transaction begun with `BEGIN IMMEDIATE` (which takes SQLite's write
//! lock at once, so two writers never both read and then both write).
//! Writes of one process queue for that connection; processes sharing the
//! file wait for each other up to the busy timeout (5 s), after which the
//! call fails with a retryable [`StoreError::Backend`]. A transaction that
//! fails, or whose future is dropped, is rolled back: no half-written
//! change is ever left.
//!
//! - `create_flow`: in one write transaction, refuses a taken id
//!   ([`StoreError::Duplicate`]), compares the subject's latest flow with
//!   the one the caller names, writes its replacement and inserts the new
//!   one.
//! - `compare_and_swap`: one `UPDATE ... WHERE id = ? AND version = ?`.
//! - `compare_and_swap_counting`: that update, then, only if it wrote, the
//!   counters, in one transaction.
//! - `increment_counters`: reads each counter, applies
//!   [`Counter::apply_all`] (with the undo of a refused call) and writes
//!   back the ones that changed, in one transaction: no other call ever
//!   sees a refused call's increments. Pure reads (every increment zero)
//!   run in a read transaction and write nothing.
//! - `load_counting`: the flow (by id, or the subject's newest) and the
//!   counters in one transaction.
//! - `delete_counters`, `purge_expired`: one transaction each.
//! - `get_flow`, `find_flows`, `get_case`: one statement each, on the
//!   reading connections; `put_case`: one upsert.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, SqliteExecutor, Transaction};

use otp_recovery::FlowId;
use otp_recovery::Timestamp;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result, StoreError};
use otp_recovery::support::{SupportCase, SupportReference};

mod counters;
mod rows;

use counters::{apply_counters, writes_any};
use rows::{column, db, flow_from_row, millis};
#[cfg(fuzzing)]
pub(crate) use rows::{counter_from_columns, flow_from_columns};

/// The schema version this store writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flows (
    id          BLOB PRIMARY KEY,
    subject     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    purge_after INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_by_subject ON flows (subject, seq);
CREATE INDEX IF NOT EXISTS flows_by_purge_after ON flows (purge_after);
CREATE TABLE IF NOT EXISTS counters (
    key       TEXT PRIMARY KEY,
    count     INTEGER NOT NULL,
    resets_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS counters_by_resets_at ON counters (resets_at);
CREATE TABLE IF NOT EXISTS cases (
    reference   TEXT PRIMARY KEY,
    purge_after INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_by_purge_after ON cases (purge_after);
";

/// How long a call waits for another process's write lock on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reading connections of a file store.
const READERS: u32 = 4;

/// A [`CodeStore`] in a SQLite database; see the [module docs](self).
///
/// Cheap to share behind an `Arc`; every method may be called from any
/// number of tasks at once.
pub struct SqliteStore {
    /// Connections for reads, in parallel: in WAL mode readers and the
    /// writer do not block each other.
    reads: SqlitePool,
    /// One connection, for every write: writers of this process queue here
    /// instead of contending for SQLite's lock.
    writes: SqlitePool,
    /// The database file; `None` in memory.
    path: Option<PathBuf>,
}

/// Where the database is; never its contents.
impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location: &dyn fmt::Debug = match &self.path {
            Some(path) => path,
            None => &":memory:",
        };
        f.debug_struct("SqliteStore")
            .field("database", location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file and the schema if
    /// they do not exist yet, in WAL mode.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the file cannot be opened or created,
    /// is not a SQLite database, or has a newer schema version.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(db("open the database"))?;
        create_schema(&writes).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_lazy_with(options);
        Ok(SqliteStore {
            reads,
            writes,
            path: Some(path),
        })
    }

    /// An empty database in memory, private to this store and gone when it
    /// is dropped: for tests, and for trying things out.
    ///
    /// Every in-memory connection is a database of its own, so the store
    /// keeps a single connection open for its whole life.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if SQLite cannot be started.
    pub async fn open_in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(":memory:")
            .in_memory(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(db("open an in-memory database"))?;
        create_schema(&pool).await?;
        Ok(SqliteStore {
            reads: pool.clone(),
            writes: pool,
            path: None,
        })
    }

    /// Closes the connections, after the calls in progress. Later calls
    /// fail. Dropping the store closes them too, in the background; close
    /// first when another process is to use the file right after.
    pub async fn close(&self) {
        self.reads.close().await;
        self.writes.close().await;
    }

    /// A write transaction (`BEGIN IMMEDIATE`) on the writing connection,
    /// or a read transaction on a reading one.
    async fn begin(&self, write: bool) -> Result<Transaction<'static, Sqlite>> {
        let tx = if write {
            self.writes.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.reads.begin().await
        };
        tx.map_err(db("begin a transaction"))
    }
}

async fn create_schema(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("begin creating the schema"))?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db("read the schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::backend(
            format!("the database has schema version {version}; this store knows {SCHEMA_VERSION}"),
            false,
        ));
    }
    sqlx::raw_sql(SCHEMA)
        .execute(&mut *tx)
        .await
        .map_err(db("create the schema"))?;
    if version < SCHEMA_VERSION {
        sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&mut *tx)
            .await
            .map_err(db("set the schema version"))?;
    }
    tx.commit().await.map_err(db("commit the schema"))
}

#[async_trait]
impl CodeStore for SqliteStore {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        let subject = flow.subject.key();
        let mut tx = self.begin(true).await?;
        let taken = sqlx::query("SELECT 1 FROM flows WHERE id = ?")
            .bind(flow.id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("create_flow"))?;
        if taken.is_some() {
            return Err(StoreError::Duplicate);
        }
        let latest =
            sqlx::query("SELECT id, seq, data FROM flows WHERE subject = ? ORDER BY seq DESC LIMIT 1")
                .bind(&subject)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("create_flow"))?;
        let (seq, stored) = match &latest {
            Some(row) => (
                column::<i64>(row, "seq")?.saturating_add(1),
                Some(flow_from_row(row)?),
            ),
            None => (1, None),
        };
        if !newest.matches(stored.as_ref().map(|f| (f.id, f.version))) {
            // The transaction rolls back: nothing was written.
            return Ok(Created::Stale(stored));
        }
        // The write transaction holds the database: the version just read
        // is still the stored one.
        if let Newest::Replaced(version, next) = newest
            && !swap(&mut *tx, version, next).await?
        {
            return Err(StoreError::backend(
                "create_flow: the newest flow changed in its transaction",
                true,
            ));
        }
        sqlx::query(
            "INSERT INTO flows (id, subject, version, state, created_at, seq, purge_after, data) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(flow.id.as_bytes().as_slice())
        .bind(&subject)
        .bind(flow.version.cast_signed())
        .bind(i64::from(flow.state.code()))
        .bind(millis(flow.created_at))
        .bind(seq)
        .bind(millis(flow.purge_after))
        .bind(flow.to_bytes())
        .execute(&mut *tx)
        .await
        .map_err(db("create_flow"))?;
        tx.commit().await.map_err(db("create_flow"))?;
        Ok(Created::Inserted)
    }

    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        fetch_flow(&self.reads, id).await
    }

    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        if counters.is_empty() {
            return Ok((fetch_loaded(&self.reads, load).await?, Vec::new()));
        }
        let mut tx = self.begin(writes_any(counters)).await?;
        let flow = fetch_loaded(&mut *tx, load).await?;
        let values = apply_counters(&mut tx, counters, now).await?;
        tx.commit().await.map_err(db("load_counting"))?;
        Ok((flow, values))
    }

    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        let rows = sqlx::query("SELECT id, data FROM flows WHERE subject = ? ORDER BY seq DESC LIMIT ?")
            .bind(subject_key)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reads)
            .await
            .map_err(db("find_flows"))?;
        rows.iter().map(flow_from_row).collect()
    }

    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        sqlx::query(
            "INSERT INTO cases (reference, purge_after, data) VALUES (?, ?, ?) \
             ON CONFLICT (reference) DO UPDATE SET purge_after = excluded.purge_after, data = excluded.data",
        )
        .bind(case.reference.as_compact())
        .bind(millis(case.purge_after))
        .bind(case.to_bytes())
        .execute(&self.writes)
        .await
        .map_err(db("put_case"))?;
        Ok(())
    }

    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        let row = sqlx::query("SELECT data FROM cases WHERE reference = ?")
            .bind(reference.as_compact())
            .fetch_optional(&self.reads)
            .await
            .map_err(db("get_case"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let case = SupportCase::from_bytes(column::<&[u8]>(&row, "data")?)?;
        if case.reference != *reference {
            return Err(StoreError::Decode(
                "a support case is stored under another reference".into(),
            ));
        }
        Ok(Some(case))
    }

    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin(true).await?;
        for key in keys {
            sqlx::query("DELETE FROM counters WHERE key = ?")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(db("delete_counters"))?;
        }
        tx.commit().await.map_err(db("delete_counters"))
    }

    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        swap(&self.writes, expected_version, flow).await
    }

    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        if counters.is_empty() {
            return Ok(self
                .compare_and_swap(expected_version, flow)
                .await?
                .then(Vec::new));
        }
        let mut tx = self.begin(true).await?;
        if !swap(&mut *tx, expected_version, flow).await? {
            tx.rollback().await.map_err(db("compare_and_swap_counting"))?;
            return Ok(None);
        }
        let values = apply_counters(&mut tx, counters, now).await?;
        tx.commit().await.map_err(db("compare_and_swap_counting"))?;
        Ok(Some(values))
    }

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        if counters.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin(writes_any(counters)).await?;
        let values = apply_counters(&mut tx, counters, now).await?;
        tx.commit().await.map_err(db("increment_counters"))?;
        Ok(values)
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let now = millis(now);
        let mut tx = self.begin(true).await?;
        let flows = sqlx::query("DELETE FROM flows WHERE purge_after <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("purge_expired"))?
            .rows_affected();
        for statement in [
            "DELETE FROM counters WHERE resets_at <= ?",
            "DELETE FROM cases WHERE purge_after <= ?",
        ] {
            sqlx::query(statement)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db("purge_expired"))?;
        }
        tx.commit().await.map_err(db("purge_expired"))?;
        Ok(flows)
    }
}

async fn fetch_flow<'c>(conn: impl SqliteExecutor<'c>, id: &FlowId) -> Result<Option<FlowRecord>> {
    let row = sqlx::query("SELECT id, data FROM flows WHERE id = ?")
        .bind(id.as_bytes().as_slice())
        .fetch_optional(conn)
        .await
        .map_err(db("get_flow"))?;
    row.as_ref().map(flow_from_row).transpose()
}

/// The flow `load` names.
async fn fetch_loaded<'c>(conn: impl SqliteExecutor<'c>, load: Load<'_>) -> Result<Option<FlowRecord>> {
    match load {
        Load::Flow(id) => fetch_flow(conn, id).await,
        Load::Newest(subject) => {
            let row = sqlx::query("SELECT id, data FROM flows WHERE subject = ? ORDER BY seq DESC LIMIT 1")
                .bind(subject.key())
                .fetch_optional(conn)
                .await
                .map_err(db("load_counting"))?;
            row.as_ref().map(flow_from_row).transpose()
        }
    }
}

/// The single statement of a compare-and-swap; whether it wrote.
async fn swap<'c>(conn: impl SqliteExecutor<'c>, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE flows SET subject = ?, version = ?, state = ?, created_at = ?, purge_after = ?, data = ? \
         WHERE id = ? AND version = ?",
    )
    .bind(flow.subject.key())
    .bind(flow.version.cast_signed())
    .bind(i64::from(flow.state.code()))
    .bind(millis(flow.created_at))
    .bind(millis(flow.purge_after))
    .bind(flow.to_bytes())
    .bind(flow.id.as_bytes().as_slice())
    .bind(expected_version.cast_signed())
    .execute(conn)
    .await
    .map_err(db("compare_and_swap"))?;
    Ok(done.rows_affected() == 1)
}
