//! Entry points for the fuzz targets in `fuzz/`: each store's own decoding
//! of a raw row or hash, which is private to the store.
//!
//! Compiled only with `--cfg fuzzing`, which `cargo fuzz` passes to every
//! crate it builds: no part of the public API, of the docs or of an
//! ordinary build. Each function is a thin call of the store's private
//! decoder, the same code `get_flow` and the counters run on what the
//! database returns.

#[cfg(feature = "redis")]
pub use redis::Value as RedisValue;

#[cfg(feature = "redis")]
use crate::id::FlowId;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
use crate::record::FlowRecord;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
use crate::store::{CounterValue, StoreError};

/// The SQLite store's decoding of a `flows` row's `id` and `data` columns.
#[cfg(feature = "sqlite")]
pub fn sqlite_flow(id: &[u8], data: &[u8]) -> Result<FlowRecord, StoreError> {
    crate::store::sqlite::flow_from_columns(id, data)
}

/// The SQLite store's decoding of a `counters` row's `count` and
/// `resets_at` columns.
#[cfg(feature = "sqlite")]
pub fn sqlite_counter(count: i64, resets_at: i64) -> Result<CounterValue, StoreError> {
    crate::store::sqlite::counter_from_columns(count, resets_at)
}

/// The PostgreSQL store's decoding of an `otp_flows` row's `id`, `data`,
/// `state`, `version` and `updated_at` columns.
#[cfg(feature = "postgres")]
pub fn postgres_flow(
    id: &[u8],
    data: &[u8],
    state: i16,
    version: i64,
    updated_at: i64,
) -> Result<FlowRecord, StoreError> {
    crate::store::postgres::flow_from_columns(id, data, state, version, updated_at)
}

/// The PostgreSQL store's decoding of the `o_counts` and `o_resets` arrays
/// the counter function returns for `n` counters.
#[cfg(feature = "postgres")]
pub fn postgres_counters(
    counts: Vec<Option<i64>>,
    resets: Vec<Option<i64>>,
    n: usize,
) -> Result<Vec<CounterValue>, StoreError> {
    crate::store::postgres::counter_values(counts, resets, n)
}

/// The Redis store's decoding of a flow hash read with `HMGET d v s u`.
#[cfg(feature = "redis")]
pub fn redis_flow(id: &FlowId, fields: RedisValue) -> Result<Option<FlowRecord>, StoreError> {
    crate::store::redis::flow_from_fields("fuzz", id, fields)
}

/// The Redis store's decoding of the `count, window end` pairs of `n`
/// counters that its scripts return.
#[cfg(feature = "redis")]
pub fn redis_counters(value: &RedisValue, n: usize) -> Result<Vec<CounterValue>, StoreError> {
    crate::store::redis::counter_values("fuzz", value, n)
}
