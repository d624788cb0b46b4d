//! Rows to records and values, and SQLite's errors to typed store errors.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite};

use otp_recovery::Timestamp;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{CounterValue, Result, StoreError};

/// Decodes a counter row's columns `count` and `resets_at`.
pub(crate) fn counter_from_columns(count: i64, resets_at: i64) -> Result<CounterValue> {
    let count = unsigned(count, "a negative count")?;
    let resets_at = unsigned(resets_at, "a negative window end")?;
    Ok(CounterValue::new(
        count,
        Some(Timestamp::from_unix_millis(resets_at)),
    ))
}

/// Decodes a flow row (columns `id` and `data`), checking that the record
/// is the row's.
pub(super) fn flow_from_row(row: &SqliteRow) -> Result<FlowRecord> {
    flow_from_columns(column(row, "id")?, column(row, "data")?)
}

/// Decodes a flow row's columns `id` and `data`.
pub(crate) fn flow_from_columns(id: &[u8], data: &[u8]) -> Result<FlowRecord> {
    let flow = FlowRecord::from_bytes(data)?;
    if flow.id.as_bytes().as_slice() != id {
        return Err(StoreError::Decode(
            "a flow record is stored under another flow's id".into(),
        ));
    }
    Ok(flow)
}

pub(super) fn column<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(
    row: &'r SqliteRow,
    name: &str,
) -> Result<T> {
    row.try_get(name).map_err(db("read a row"))
}

/// A timestamp as SQLite's signed 64-bit integer; instants past the year
/// 292 million are stored as `i64::MAX` (read back as "never").
pub(super) fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_unix_millis()).unwrap_or(i64::MAX)
}

/// The inverse of [`millis`] (and of the saturating count conversion).
pub(super) fn unsigned(value: i64, what: &'static str) -> Result<u64> {
    if value == i64::MAX {
        return Ok(u64::MAX);
    }
    u64::try_from(value).map_err(|_| StoreError::Decode(format!("a counter has {what}")))
}

/// SQLite's primary result codes that may clear by themselves.
pub(super) const SQLITE_BUSY: i32 = 5;
pub(super) const SQLITE_LOCKED: i32 = 6;
pub(super) const SQLITE_IOERR: i32 = 10;
pub(super) const SQLITE_PROTOCOL: i32 = 15;

/// Maps a sqlx error to a store error, naming what was being done. The
/// messages come from SQLite and sqlx and name tables and columns, never
/// values.
pub(super) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match e {
        sqlx::Error::Database(e) => {
            let code = e.code().and_then(|c| c.parse::<i32>().ok());
            let retryable = code.is_some_and(|c| {
                matches!(
                    c & 0xff,
                    SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_PROTOCOL
                )
            });
            let code = code.map_or_else(|| "?".to_owned(), |c| c.to_string());
            StoreError::backend(
                format!("sqlite, {operation}: {} (code {code})", e.message()),
                retryable,
            )
        }
        sqlx::Error::ColumnDecode { index, .. } => StoreError::Decode(format!(
            "sqlite, {operation}: column {index} has an unexpected type"
        )),
        sqlx::Error::ColumnNotFound(name) => {
            StoreError::Decode(format!("sqlite, {operation}: no column {name}"))
        }
        sqlx::Error::Decode(_) => StoreError::Decode(format!("sqlite, {operation}: undecodable value")),
        sqlx::Error::Io(e) => StoreError::backend(format!("sqlite, {operation}: i/o: {e}"), true),
        sqlx::Error::PoolTimedOut => StoreError::backend(
            format!("sqlite, {operation}: timed out waiting for a connection"),
            true,
        ),
        sqlx::Error::PoolClosed => {
            StoreError::backend(format!("sqlite, {operation}: the store is closed"), false)
        }
        sqlx::Error::WorkerCrashed => StoreError::backend(
            format!("sqlite, {operation}: a connection's worker thread stopped"),
            true,
        ),
        other => StoreError::backend(format!("sqlite, {operation}: {other}"), false),
    }
}
