//! Storage of flows and counters: the [`CodeStore`] trait, the in-memory
//! store and the conformance suite every store must pass.
//!
//! A store keeps [`FlowRecord`]s and windowed counters. It decides nothing:
//! the [`machine`](crate::machine) computes each next record and the store
//! only has to apply it atomically. Every method that decides a limit is a
//! single atomic step in the store itself (a compare-and-swap on the record
//! version, an atomic counter increment), so limits hold when many instances
//! of the host share one store.
//!
//! Here is a complete store over a `HashMap` behind one mutex; the built-in
//! [`MemoryStore`] is the same idea, sharded:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use async_trait::async_trait;
//! use otp_recovery::store::{CodeStore, Counter, Result};
//! use otp_recovery::{AccountId, FlowId, FlowRecord, FlowState, Timestamp};
//!
//! #[derive(Default)]
//! struct MapStore {
//!     inner: Mutex<Inner>,
//! }
//!
//! #[derive(Default)]
//! struct Inner {
//!     flows: HashMap<FlowId, FlowRecord>,
//!     open: HashMap<AccountId, FlowId>,
//!     counters: HashMap<(String, u64), u64>,
//! }
//!
//! #[async_trait]
//! impl CodeStore for MapStore {
//!     async fn create_flow(&self, flow: &FlowRecord) -> Result<()> {
//!         let mut inner = self.inner.lock().unwrap();
//!         if let Some(account) = &flow.account {
//!             if let Some(old) = inner.open.insert(account.clone(), flow.id) {
//!                 if let Some(old) = inner.flows.get_mut(&old) {
//!                     if old.state.is_open() {
//!                         old.state = FlowState::Superseded;
//!                         old.version += 1;
//!                         old.updated_at = flow.created_at;
//!                     }
//!                 }
//!             }
//!         }
//!         inner.flows.insert(flow.id, flow.clone());
//!         Ok(())
//!     }
//!
//!     async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
//!         Ok(self.inner.lock().unwrap().flows.get(id).cloned())
//!     }
//!
//!     async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
//!         let mut inner = self.inner.lock().unwrap();
//!         match inner.flows.get_mut(&flow.id) {
//!             Some(current) if current.version == expected_version => {
//!                 *current = flow.clone();
//!                 Ok(true)
//!             }
//!             _ => Ok(false),
//!         }
//!     }
//!
//!     async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<u64>> {
//!         let mut inner = self.inner.lock().unwrap();
//!         Ok(counters
//!             .iter()
//!             .map(|c| {
//!                 let count = inner.counters.entry((c.key.clone(), c.window_start(now))).or_default();
//!                 *count += u64::from(c.by);
//!                 *count
//!             })
//!             .collect())
//!     }
//!
//!     async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
//!         let mut inner = self.inner.lock().unwrap();
//!         let before = inner.flows.len();
//!         inner.flows.retain(|_, f| f.purge_after > now);
//!         let Inner { flows, open, counters } = &mut *inner;
//!         open.retain(|_, id| flows.contains_key(id));
//!         counters.retain(|(_, start), _| *start + 366 * 86_400_000 > now.as_unix_millis());
//!         Ok((before - flows.len()) as u64)
//!     }
//! }
//! ```
//!
//! With the `conformance` feature, one call checks a store against every
//! rule, races included; see the `conformance` module.

mod memory;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryStore;

use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::record::{DecodeError, FlowRecord};

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A store failure. Messages describe the failure, never a record's
/// contents or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend (connection, server, disk) failed.
    #[error("store backend: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// Whether the same call may succeed later (timeouts, lost
        /// connections, serialization failures).
        retryable: bool,
    },
    /// A record could not be encoded for the backend.
    #[error("could not encode a record: {0}")]
    Encode(String),
    /// A stored record could not be decoded: corrupt or foreign data.
    #[error("corrupt or foreign record: {0}")]
    Decode(String),
    /// A flow with this id already exists.
    #[error("a flow with this id already exists")]
    Duplicate,
}

impl StoreError {
    /// A backend failure.
    pub fn backend(message: impl Into<String>, retryable: bool) -> Self {
        StoreError::Backend {
            message: message.into(),
            retryable,
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend { retryable: true, .. })
    }
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        StoreError::Decode(e.0.to_owned())
    }
}

/// One increment of a fixed-window counter.
///
/// Windows are aligned to the Unix epoch: the window of `now` starts at
/// `now - now % window`. The count of a key starts again at zero in each
/// window. An increment `by: 0` reads the count without changing it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Counter {
    /// What is counted, e.g. `send:phone:+14155550123`. Opaque to the store.
    pub key: String,
    /// Window length; at least one millisecond.
    pub window: Duration,
    /// How much to add.
    pub by: u32,
}

impl Counter {
    /// An increment of `by` on `key` within windows of `window`.
    pub fn new(key: impl Into<String>, window: Duration, by: u32) -> Self {
        Counter {
            key: key.into(),
            window,
            by,
        }
    }

    /// Window length in milliseconds, at least 1.
    pub fn window_millis(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// Start (Unix milliseconds) of the window that holds `now`.
    pub fn window_start(&self, now: Timestamp) -> u64 {
        let now = now.as_unix_millis();
        now - now % self.window_millis()
    }

    /// End (exclusive, Unix milliseconds) of the window that holds `now`;
    /// the count may be forgotten from then on.
    pub fn window_end(&self, now: Timestamp) -> u64 {
        self.window_start(now).saturating_add(self.window_millis())
    }
}

/// Where flows and counters live. Implement it for your database, then run
/// the `conformance` suite (feature `conformance`) against it.
///
/// Every method is one atomic step in the store: no read-modify-write across
/// two round trips without a version check.
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Inserts a new flow. If `flow.account` is set and that account has an
    /// open flow ([`FlowState::is_open`](crate::FlowState::is_open)), that
    /// flow becomes `Superseded` (its `version` grows by one and its
    /// `updated_at` becomes `flow.created_at`) in the same atomic step, and
    /// the new flow becomes the account's open one. Decoy flows (no account)
    /// supersede nothing.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] if a flow with this id exists.
    async fn create_flow(&self, flow: &FlowRecord) -> Result<()>;

    /// The flow with this id, if stored (whether or not it has expired, as
    /// long as it was not purged).
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>>;

    /// Replaces the stored flow with `flow` (same id) if and only if the
    /// stored `version` equals `expected_version`. Returns whether it did;
    /// `false` also when no such flow is stored.
    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool>;

    /// [`compare_and_swap`](CodeStore::compare_and_swap), then, only if it
    /// wrote, [`increment_counters`](CodeStore::increment_counters).
    /// Returns `None` when the swap did not write (no counter changed), or
    /// the counts after the increments.
    ///
    /// The default makes two calls; a store that can do both in one round
    /// trip (a Lua script, one SQL statement) should override it. A verify
    /// that records a wrong code uses it to count the account's failure
    /// together with the flow's.
    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<u64>>> {
        if !self.compare_and_swap(expected_version, flow).await? {
            return Ok(None);
        }
        Ok(Some(self.increment_counters(counters, now).await?))
    }

    /// Atomically adds each counter's `by` to its count in the window of
    /// `now` and returns the counts after the addition, in order. Each
    /// counter's increment is atomic; a key may appear more than once.
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<u64>>;

    /// Deletes flows whose `purge_after` is at or before `now` and counters
    /// whose window ended by `now`. Returns how many flows were deleted
    /// (stores whose backend expires keys by itself may return 0).
    async fn purge_expired(&self, now: Timestamp) -> Result<u64>;
}

#[async_trait]
impl<S: CodeStore + ?Sized> CodeStore for Arc<S> {
    async fn create_flow(&self, flow: &FlowRecord) -> Result<()> {
        (**self).create_flow(flow).await
    }
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        (**self).get_flow(id).await
    }
    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        (**self).compare_and_swap(expected_version, flow).await
    }
    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<u64>>> {
        (**self)
            .compare_and_swap_counting(expected_version, flow, counters, now)
            .await
    }
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<u64>> {
        (**self).increment_counters(counters, now).await
    }
    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        (**self).purge_expired(now).await
    }
}
