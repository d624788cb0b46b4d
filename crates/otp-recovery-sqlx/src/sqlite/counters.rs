//! A call's counters, applied inside the caller's transaction by the rules
//! of [`Counter::apply_all`], so no other call sees a refused call's counts.

use std::collections::HashMap;

use sqlx::sqlite::SqliteConnection;

use otp_recovery::Timestamp;
use otp_recovery::store::{Counter, CounterCells, CounterValue, Result};

use super::rows::{column, counter_from_columns, db, millis};

/// Whether applying `counters` may write: only increments do (a condition
/// can only turn an increment into a read).
pub(super) fn writes_any(counters: &[Counter]) -> bool {
    counters.iter().any(|c| c.by > 0)
}

/// Applies a call's counters inside the caller's transaction: reads each
/// key once, runs [`Counter::apply_all_in`] (increments, and the undo of a
/// refused call) over those values in memory, and writes back the counters
/// that changed. Reads never create a row. Since the whole call is one
/// transaction, no other call sees a refused call's increments.
pub(super) async fn apply_counters(
    conn: &mut SqliteConnection,
    counters: &[Counter],
    now: Timestamp,
) -> Result<Vec<CounterValue>> {
    let mut batch = Batch::default();
    for counter in counters {
        if !batch.values.contains_key(&counter.key) {
            let value = read_counter(&mut *conn, &counter.key).await?;
            batch.values.insert(counter.key.clone(), value);
        }
    }
    let values = Counter::apply_all_in(counters, now, &mut batch);
    let Batch {
        values: stored,
        changed,
    } = batch;
    for key in changed {
        let query = match stored.get(&key).copied().flatten() {
            Some(CounterValue {
                count,
                resets_at: Some(end),
                ..
            }) => sqlx::query(
                "INSERT INTO counters (key, count, resets_at) VALUES (?, ?, ?) \
                 ON CONFLICT (key) DO UPDATE SET count = excluded.count, resets_at = excluded.resets_at",
            )
            .bind(key)
            .bind(i64::try_from(count).unwrap_or(i64::MAX))
            .bind(millis(end)),
            // Nothing left: the counter goes.
            _ => sqlx::query("DELETE FROM counters WHERE key = ?").bind(key),
        };
        query
            .execute(&mut *conn)
            .await
            .map_err(db("increment_counters"))?;
    }
    Ok(values)
}

/// The counters of one call, as read in its transaction and changed since.
#[derive(Default)]
pub(super) struct Batch {
    /// Per key, its value (`None`: no counter).
    values: HashMap<String, Option<CounterValue>>,
    /// The keys to write back, in the order they first changed.
    changed: Vec<String>,
}

impl CounterCells for Batch {
    fn get(&self, key: &str) -> Option<CounterValue> {
        self.values.get(key).copied().flatten()
    }

    fn set(&mut self, key: &str, value: Option<CounterValue>) {
        if self.get(key) == value {
            return;
        }
        self.values.insert(key.to_owned(), value);
        if !self.changed.iter().any(|k| k == key) {
            self.changed.push(key.to_owned());
        }
    }
}

pub(super) async fn read_counter(conn: &mut SqliteConnection, key: &str) -> Result<Option<CounterValue>> {
    let row = sqlx::query("SELECT count, resets_at FROM counters WHERE key = ?")
        .bind(key)
        .fetch_optional(conn)
        .await
        .map_err(db("increment_counters"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    counter_from_columns(column(&row, "count")?, column(&row, "resets_at")?).map(Some)
}
