//! The PostgreSQL store: pooled connections (sqlx), every step one
//! statement, limits that hold across any number of host instances.
//!
//! ```no_run
//! # async fn demo() -> Result<(), otp_recovery::store::StoreError> {
//! use otp_recovery_sqlx::postgres::PostgresStore;
//!
//! let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
//! store.migrate().await?; // or run PostgresStore::SCHEMA with your migrations
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Flows are kept as their [`FlowRecord::to_bytes`] form in `otp_flows.data`,
//! next to the columns the statements work on: `subject`, `version` (a
//! record whose own version differs is [`StoreError::Decode`]), `seq`
//! (insertion order) and `purge_after`. `state` and `updated_at` are
//! copies of the record's, for your own queries: the store never reads
//! them.
//! Counters are rows of `otp_counters`, support cases rows of `otp_cases`.
//! [`PostgresStore::SCHEMA`] creates everything idempotently, functions
//! included; [`PostgresStore::migrate`] runs it under an advisory lock so
//! several instances may start at once.
//!
//! # Round trips
//!
//! | method | statement |
//! |---|---|
//! | `create_flow` | `otp_insert_flow(...)`: a per-subject advisory lock, the newest flow compared (and replaced), insert |
//! | `get_flow` | `SELECT` |
//! | `compare_and_swap` | `UPDATE ... WHERE id = $1 AND version = $2` |
//! | `compare_and_swap_counting` | `otp_swap_counting(...)`: the update, then the counters if it wrote |
//! | `load_counting` | `SELECT` of the flow (by id, or the subject's newest) joined with `otp_counters(...)` |
//! | `increment_counters` | `otp_counters(...)`: `INSERT ... ON CONFLICT DO UPDATE` per counter |
//! | `find_flows`, `get_case`, `put_case`, `delete_counters` | one statement each |
//! | `purge_expired` | one statement with three `DELETE`s |
//!
//! So a request takes two round trips (counters with the newest flow,
//! create) and a verify two (load with counters, counting swap). No row
//! lock is held between round trips: every decision that spans a read and
//! a write is a version check.
//!
//! Connections to a server off the machine should use TLS: enable one of
//! sqlx's TLS features in your own `Cargo.toml` (features unify) and put
//! `sslmode=verify-full` in the URL.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};

use otp_recovery::FlowId;
use otp_recovery::Timestamp;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result, StoreError};
use otp_recovery::support::{SupportCase, SupportReference};

/// A [`CodeStore`] on PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// The schema: tables, indexes and functions, idempotent (`IF NOT
    /// EXISTS`, `CREATE OR REPLACE`). Run it with your own migrations, or
    /// call [`PostgresStore::migrate`].
    pub const SCHEMA: &'static str = include_str!("schema.sql");

    /// Connects a pool of up to 10 connections to `url`
    /// (`postgres://user@host/db`). Connections are not pinged before each
    /// use (sqlx's default), which would double every call's round trips: a
    /// connection that died since its last use fails that one call with a
    /// backend error.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(backend)?;
        Ok(PostgresStore { pool })
    }

    /// A store on a pool the host already has. Its connections must run
    /// at PostgreSQL's default isolation level, READ COMMITTED (a create
    /// relies on each statement seeing what committed before it): under a
    /// stricter default, creating a flow fails with a backend error.
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresStore { pool }
    }

    /// Creates the schema if it is not there ([`PostgresStore::SCHEMA`]),
    /// under an advisory lock so that instances starting together do not
    /// race on it.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7310589469571923)")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.execute(Self::SCHEMA).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }
}

/// Maps a sqlx error to a store error: the SQLSTATE and constraint only,
/// never the server's text (which may quote values) or a record's contents.
fn backend(error: sqlx::Error) -> StoreError {
    let retryable = match &error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Connection exceptions, serialization failure, deadlock, too many
            // connections, shutdown, cancelled, lock not available, read-only
            // after a failover.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "25006"
                )
        }),
        _ => false,
    };
    let message = match &error {
        sqlx::Error::Database(db) => match db.constraint() {
            Some(constraint) => format!("postgres {} on {constraint}", db.code().unwrap_or_default()),
            None => format!("postgres {}", db.code().unwrap_or_default()),
        },
        sqlx::Error::Io(_) => "postgres: connection i/o failed".to_owned(),
        sqlx::Error::PoolTimedOut => "postgres: no connection available in time".to_owned(),
        sqlx::Error::PoolClosed => "postgres: the pool is closed".to_owned(),
        sqlx::Error::Tls(_) => "postgres: TLS failed".to_owned(),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            "postgres: a column did not decode".to_owned()
        }
        _ => "postgres: request failed".to_owned(),
    };
    StoreError::backend(message, retryable)
}

/// The longest window stored: about 100 years, far beyond any rule, and
/// small enough that `now + window` fits a bigint.
const MAX_WINDOW_MS: i64 = 100 * 366 * 86_400_000;

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_unix_millis()).unwrap_or(i64::MAX)
}

fn version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Decodes a flow row's `id`, `version` and `data`.
fn flow_from_row(row: &PgRow) -> Result<FlowRecord> {
    let data: Vec<u8> = row.try_get("data").map_err(backend)?;
    let id: Vec<u8> = row.try_get("id").map_err(backend)?;
    let v: i64 = row.try_get("version").map_err(backend)?;
    flow_from_columns(&id, &data, v)
}

/// Decodes a flow row's columns `id`, `data` and `version`: the record,
/// checked against the columns the statements compare.
pub(crate) fn flow_from_columns(id: &[u8], data: &[u8], v: i64) -> Result<FlowRecord> {
    let flow = FlowRecord::from_bytes(data)?;
    if flow.id.as_bytes().as_slice() != id {
        return Err(StoreError::Decode(
            "a record stored under another flow's id".into(),
        ));
    }
    if u64::try_from(v).ok() != Some(flow.version) {
        return Err(StoreError::Decode("a record stored under another version".into()));
    }
    Ok(flow)
}

/// The arrays `otp_counters` takes.
struct CounterArgs {
    keys: Vec<String>,
    windows: Vec<i64>,
    bys: Vec<i64>,
    conds: Vec<i32>,
    maxes: Vec<i64>,
    guarded: Vec<bool>,
}

impl CounterArgs {
    fn of(counters: &[Counter]) -> Self {
        CounterArgs {
            keys: counters.iter().map(|c| c.key.clone()).collect(),
            // Clamped so that `now + window` never overflows a bigint.
            windows: counters
                .iter()
                .map(|c| {
                    i64::try_from(c.window.as_millis())
                        .unwrap_or(i64::MAX)
                        .clamp(1, MAX_WINDOW_MS)
                })
                .collect(),
            bys: counters.iter().map(|c| i64::from(c.by)).collect(),
            // 1-based index of the counter a conditional one names; 0: none.
            conds: counters
                .iter()
                .map(|c| {
                    c.only_if_opened
                        .map_or(0, |i| i32::try_from(i + 1).unwrap_or(i32::MAX))
                })
                .collect(),
            // -1: no maximum.
            maxes: counters
                .iter()
                .map(|c| c.max.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX)))
                .collect(),
            guarded: counters.iter().map(|c| c.guarded).collect(),
        }
    }
}

impl CounterArgs {
    /// Binds the arrays and `now`, in the order every counter function takes
    /// them, after the query's earlier parameters.
    fn bind<'q>(&'q self, query: PgQuery<'q>, now: Timestamp) -> PgQuery<'q> {
        query
            .bind(&self.keys)
            .bind(&self.windows)
            .bind(&self.bys)
            .bind(&self.conds)
            .bind(&self.maxes)
            .bind(&self.guarded)
            .bind(millis(now))
    }
}

/// Binds a swap's parameters: the id, the expected version, then the new
/// state, version, update time, purge time and record.
fn bind_swap<'q>(query: PgQuery<'q>, expected_version: u64, flow: &'q FlowRecord) -> PgQuery<'q> {
    query
        .bind(flow.id.as_bytes().as_slice())
        .bind(version(expected_version))
        .bind(i16::from(flow.state.code()))
        .bind(version(flow.version))
        .bind(millis(flow.updated_at))
        .bind(millis(flow.purge_after))
        .bind(flow.to_bytes())
}

/// A query being built.
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The counter values of a row's `o_counts` and `o_resets` columns, one
/// per counter asked for (`n`); null arrays read as empty.
fn counter_row(row: &PgRow, n: usize) -> Result<Vec<CounterValue>> {
    let counts: Option<Vec<Option<i64>>> = row.try_get("o_counts").map_err(backend)?;
    let resets: Option<Vec<Option<i64>>> = row.try_get("o_resets").map_err(backend)?;
    counter_values(counts.unwrap_or_default(), resets.unwrap_or_default(), n)
}

/// Decodes the `o_counts` and `o_resets` arrays of `n` counters. Arrays of
/// another length are a decode error, never fewer values than counters
/// (the caller reads one value per counter).
pub(crate) fn counter_values(
    counts: Vec<Option<i64>>,
    resets: Vec<Option<i64>>,
    n: usize,
) -> Result<Vec<CounterValue>> {
    if counts.len() != n || resets.len() != n {
        return Err(StoreError::Decode(format!(
            "{} counts and {} window ends for {n} counters",
            counts.len(),
            resets.len()
        )));
    }
    counts
        .into_iter()
        .zip(resets)
        .map(|(count, reset)| {
            let count =
                u64::try_from(count.unwrap_or(0)).map_err(|_| StoreError::Decode("negative count".into()))?;
            let resets_at = reset
                .map(|r| u64::try_from(r).map(Timestamp::from_unix_millis))
                .transpose()
                .map_err(|_| StoreError::Decode("negative window end".into()))?;
            Ok(CounterValue::new(count, resets_at))
        })
        .collect()
}

#[async_trait]
impl CodeStore for PostgresStore {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        let expected = newest.expected();
        let next = newest.replacement();
        let result = sqlx::query(
            "SELECT * FROM otp_insert_flow($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(flow.id.as_bytes().as_slice())
        .bind(flow.subject.key())
        .bind(i16::from(flow.state.code()))
        .bind(version(flow.version))
        .bind(millis(flow.updated_at))
        .bind(millis(flow.purge_after))
        .bind(flow.to_bytes())
        .bind(expected.map(|(id, _)| id.as_bytes().to_vec()))
        .bind(expected.map(|(_, v)| version(v)))
        .bind(next.map(|n| i16::from(n.state.code())))
        .bind(next.map(|n| version(n.version)))
        .bind(next.map(|n| millis(n.updated_at)))
        .bind(next.map(|n| millis(n.purge_after)))
        .bind(next.map(FlowRecord::to_bytes))
        .fetch_one(&self.pool)
        .await;
        let row = match result {
            Ok(row) => row,
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
                return Err(StoreError::Duplicate);
            }
            Err(e) => return Err(backend(e)),
        };
        let inserted: Option<bool> = row.try_get("o_inserted").map_err(backend)?;
        match inserted {
            None => Err(StoreError::Duplicate),
            Some(true) => Ok(Created::Inserted),
            Some(false) => {
                let id: Option<Vec<u8>> = row.try_get("o_id").map_err(backend)?;
                let Some(id) = id else {
                    return Ok(Created::Stale(None));
                };
                let data: Vec<u8> = row.try_get("o_data").map_err(backend)?;
                let v: i64 = row.try_get("o_version").map_err(backend)?;
                Ok(Created::Stale(Some(flow_from_columns(&id, &data, v)?)))
            }
        }
    }

    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        let row = sqlx::query("SELECT id, version, data FROM otp_flows WHERE id = $1")
            .bind(id.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(flow_from_row).transpose()
    }

    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        let args = CounterArgs::of(counters);
        let query = match load {
            Load::Flow(id) => sqlx::query(
                "SELECT f.id, f.version, f.data, c.o_counts, c.o_resets \
                 FROM otp_counters($2, $3, $4, $5, $6, $7, $8) c LEFT JOIN otp_flows f ON f.id = $1",
            )
            .bind(id.as_bytes().as_slice()),
            Load::Newest(subject) => sqlx::query(
                "SELECT f.id, f.version, f.data, c.o_counts, c.o_resets \
                 FROM otp_counters($2, $3, $4, $5, $6, $7, $8) c LEFT JOIN LATERAL \
                 (SELECT id, version, data FROM otp_flows WHERE subject = $1 ORDER BY seq DESC LIMIT 1) f ON true",
            )
            .bind(subject.key()),
        };
        let row = args
            .bind(query, now)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let data: Option<Vec<u8>> = row.try_get("data").map_err(backend)?;
        let flow = match data {
            Some(_) => Some(flow_from_row(&row)?),
            None => None,
        };
        Ok((flow, counter_row(&row, counters.len())?))
    }

    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        let query = sqlx::query(
            "UPDATE otp_flows SET state = $3, version = $4, updated_at = $5, purge_after = $6, data = $7 \
             WHERE id = $1 AND version = $2",
        );
        let done = bind_swap(query, expected_version, flow)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        let args = CounterArgs::of(counters);
        let query = sqlx::query(
            "SELECT o_swapped, o_counts, o_resets \
             FROM otp_swap_counting($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        );
        let query = args.bind(bind_swap(query, expected_version, flow), now);
        let row = query.fetch_one(&self.pool).await.map_err(backend)?;
        let swapped: bool = row.try_get("o_swapped").map_err(backend)?;
        if !swapped {
            return Ok(None);
        }
        Ok(Some(counter_row(&row, counters.len())?))
    }

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        if counters.is_empty() {
            return Ok(Vec::new());
        }
        let args = CounterArgs::of(counters);
        let query = sqlx::query("SELECT o_counts, o_resets FROM otp_counters($1, $2, $3, $4, $5, $6, $7)");
        let row = args
            .bind(query, now)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        counter_row(&row, counters.len())
    }

    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        let rows = sqlx::query(
            "SELECT id, version, data FROM otp_flows WHERE subject = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(subject_key)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(flow_from_row).collect()
    }

    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        sqlx::query(
            "INSERT INTO otp_cases (reference, purge_after, data) VALUES ($1, $2, $3) \
             ON CONFLICT (reference) DO UPDATE SET purge_after = EXCLUDED.purge_after, data = EXCLUDED.data",
        )
        .bind(case.reference.as_compact())
        .bind(millis(case.purge_after))
        .bind(case.to_bytes())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        let data: Option<Vec<u8>> = sqlx::query_scalar("SELECT data FROM otp_cases WHERE reference = $1")
            .bind(reference.as_compact())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        let case = data.map(|d| SupportCase::from_bytes(&d)).transpose()?;
        if case.as_ref().is_some_and(|c| c.reference != *reference) {
            return Err(StoreError::Decode("a case stored under another reference".into()));
        }
        Ok(case)
    }

    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        sqlx::query("DELETE FROM otp_counters WHERE key = ANY($1)")
            .bind(keys)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let purged: i64 = sqlx::query_scalar(
            "WITH f AS (DELETE FROM otp_flows WHERE purge_after <= $1 RETURNING 1), \
                  c AS (DELETE FROM otp_cases WHERE purge_after <= $1 RETURNING 1), \
                  k AS (DELETE FROM otp_counters WHERE resets_at <= $1 RETURNING 1) \
             SELECT count(*) FROM f",
        )
        .bind(millis(now))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(u64::try_from(purged).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_replies_of_the_wrong_length_are_decode_errors() {
        let one = || vec![Some(3)];
        let ends = || vec![Some(1_000)];
        assert_eq!(
            counter_values(one(), ends(), 1),
            Ok(vec![CounterValue::new(
                3,
                Some(Timestamp::from_unix_millis(1_000))
            )])
        );
        assert_eq!(counter_values(vec![], vec![], 0), Ok(vec![]));
        // Fewer values than counters would make the caller index past the end.
        for (counts, resets, n) in [
            (one(), ends(), 2),
            (one(), vec![], 1),
            (vec![], ends(), 1),
            (vec![], vec![], 1),
            (vec![Some(1), Some(2)], ends(), 2),
            (one(), ends(), 0),
        ] {
            assert!(
                matches!(counter_values(counts, resets, n), Err(StoreError::Decode(_))),
                "{n}"
            );
        }
        assert!(matches!(
            counter_values(vec![Some(-1)], vec![None], 1),
            Err(StoreError::Decode(_))
        ));
        assert!(matches!(
            counter_values(vec![None], vec![Some(-1)], 1),
            Err(StoreError::Decode(_))
        ));
    }
}
