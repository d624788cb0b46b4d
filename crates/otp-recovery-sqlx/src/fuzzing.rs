//! Entry points for the fuzz targets in `fuzz/`: each store's own decoding
//! of a raw row, private to the store. Compiled only with `--cfg fuzzing`
//! (what `cargo fuzz` passes); no part of the public API.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use otp_recovery::record::FlowRecord;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use otp_recovery::store::{CounterValue, StoreError};

/// The SQLite store's decoding of a `flows` row's `id` and `data` columns.
#[cfg(feature = "sqlite")]
pub fn sqlite_flow(id: &[u8], data: &[u8]) -> Result<FlowRecord, StoreError> {
    crate::sqlite::flow_from_columns(id, data)
}

/// The SQLite store's decoding of a `counters` row's `count` and
/// `resets_at` columns.
#[cfg(feature = "sqlite")]
pub fn sqlite_counter(count: i64, resets_at: i64) -> Result<CounterValue, StoreError> {
    crate::sqlite::counter_from_columns(count, resets_at)
}

/// The PostgreSQL store's decoding of an `otp_flows` row's `id`, `data`
/// and `version` columns.
#[cfg(feature = "postgres")]
pub fn postgres_flow(id: &[u8], data: &[u8], version: i64) -> Result<FlowRecord, StoreError> {
    crate::postgres::flow_from_columns(id, data, version)
}

/// The PostgreSQL store's decoding of the `o_counts` and `o_resets` arrays
/// the counter function returns for `n` counters.
#[cfg(feature = "postgres")]
pub fn postgres_counters(
    counts: Vec<Option<i64>>,
    resets: Vec<Option<i64>>,
    n: usize,
) -> Result<Vec<CounterValue>, StoreError> {
    crate::postgres::counter_values(counts, resets, n)
}
