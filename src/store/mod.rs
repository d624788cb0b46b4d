//! Storage of flows and counters: the [`CodeStore`] trait, the in-memory
//! store and the conformance suite every store must pass.
//!
//! A store keeps [`FlowRecord`]s and windowed counters. It decides nothing:
//! the [`machine`](crate::machine) computes each next record (the
//! superseded one too) and the store only has to apply it atomically,
//! comparing ids and versions. Every method that decides a limit is a
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
//! use otp_recovery::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result, StoreError};
//! use otp_recovery::support::{SupportCase, SupportReference};
//! use otp_recovery::{FlowId, Timestamp};
//! use otp_recovery::record::FlowRecord;
//!
//! #[derive(Default)]
//! struct MapStore {
//!     inner: Mutex<Inner>,
//! }
//!
//! #[derive(Default)]
//! struct Inner {
//!     flows: HashMap<FlowId, FlowRecord>,
//!     /// Per subject key, its flows, oldest first.
//!     subjects: HashMap<String, Vec<FlowId>>,
//!     counters: HashMap<String, CounterValue>,
//!     cases: HashMap<SupportReference, SupportCase>,
//! }
//!
//! impl Inner {
//!     /// One call's counters, applied (and undone) by the shared rules.
//!     fn count(&mut self, counters: &[Counter], now: Timestamp) -> Vec<CounterValue> {
//!         Counter::apply_all_in(counters, now, &mut self.counters)
//!     }
//!
//!     fn swap(&mut self, expected_version: u64, flow: &FlowRecord) -> bool {
//!         match self.flows.get_mut(&flow.id) {
//!             Some(current) if current.version == expected_version => {
//!                 *current = flow.clone();
//!                 true
//!             }
//!             _ => false,
//!         }
//!     }
//! }
//!
//! #[async_trait]
//! impl CodeStore for MapStore {
//!     async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
//!         let mut inner = self.inner.lock().unwrap();
//!         if inner.flows.contains_key(&flow.id) {
//!             return Err(StoreError::Duplicate);
//!         }
//!         let key = flow.subject.key();
//!         let head = inner.subjects.get(&key).and_then(|ids| ids.last());
//!         let stored = head.and_then(|id| inner.flows.get(id));
//!         if !newest.matches(stored.map(|f| (f.id, f.version))) {
//!             return Ok(Created::Stale(stored.cloned()));
//!         }
//!         if let Newest::Replaced(version, next) = newest {
//!             inner.swap(version, next);
//!         }
//!         inner.subjects.entry(key).or_default().push(flow.id);
//!         inner.flows.insert(flow.id, flow.clone());
//!         Ok(Created::Inserted)
//!     }
//!
//!     async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
//!         Ok(self.inner.lock().unwrap().flows.get(id).cloned())
//!     }
//!
//!     async fn load_counting(
//!         &self, load: Load<'_>, counters: &[Counter], now: Timestamp,
//!     ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
//!         let mut inner = self.inner.lock().unwrap();
//!         let id = match load {
//!             Load::Flow(id) => Some(*id),
//!             Load::Newest(subject) => inner.subjects.get(&subject.key()).and_then(|ids| ids.last().copied()),
//!         };
//!         let flow = id.and_then(|id| inner.flows.get(&id).cloned());
//!         Ok((flow, inner.count(counters, now)))
//!     }
//!
//!     async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
//!         Ok(self.inner.lock().unwrap().swap(expected_version, flow))
//!     }
//!
//!     async fn compare_and_swap_counting(
//!         &self, expected_version: u64, flow: &FlowRecord, counters: &[Counter], now: Timestamp,
//!     ) -> Result<Option<Vec<CounterValue>>> {
//!         let mut inner = self.inner.lock().unwrap();
//!         Ok(inner.swap(expected_version, flow).then(|| inner.count(counters, now)))
//!     }
//!
//!     async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
//!         Ok(self.inner.lock().unwrap().count(counters, now))
//!     }
//!
//!     async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
//!         let inner = self.inner.lock().unwrap();
//!         let ids = inner.subjects.get(subject_key).into_iter().flatten().rev();
//!         Ok(ids.filter_map(|id| inner.flows.get(id).cloned()).take(limit).collect())
//!     }
//!
//!     async fn put_case(&self, case: &SupportCase) -> Result<()> {
//!         self.inner.lock().unwrap().cases.insert(case.reference, case.clone());
//!         Ok(())
//!     }
//!
//!     async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
//!         Ok(self.inner.lock().unwrap().cases.get(reference).cloned())
//!     }
//!
//!     async fn delete_counters(&self, keys: &[String]) -> Result<()> {
//!         let mut inner = self.inner.lock().unwrap();
//!         keys.iter().for_each(|k| drop(inner.counters.remove(k)));
//!         Ok(())
//!     }
//!
//!     async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
//!         let mut inner = self.inner.lock().unwrap();
//!         let Inner { flows, subjects, counters, cases } = &mut *inner;
//!         let before = flows.len();
//!         flows.retain(|_, f| f.purge_after > now);
//!         subjects.values_mut().for_each(|ids| ids.retain(|id| flows.contains_key(id)));
//!         subjects.retain(|_, ids| !ids.is_empty());
//!         counters.retain(|_, v| v.resets_at.is_some_and(|end| end > now));
//!         cases.retain(|_, c| c.purge_after > now);
//!         Ok((before - flows.len()) as u64)
//!     }
//! }
//!
//! // The conformance suite passes against it:
//! # #[cfg(feature = "conformance")]
//! # let store = std::sync::Arc::new(MapStore::default());
//! # otp_recovery::conformance::block_on(otp_recovery::conformance::run(store.clone(), store));
//! ```
//!
//! With the `conformance` feature, one call checks a store against every
//! rule, races included; see [`crate::conformance`] (feature `conformance`).

mod memory;

use std::sync::Arc;

use async_trait::async_trait;

pub use memory::MemoryStore;

pub use crate::counter::{Counter, CounterCells, CounterValue};

use crate::case::{SupportCase, SupportReference};
use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::record::{DecodeError, FlowRecord, Subject};

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

/// Where flows and counters live. Implement it for your database, then run
/// the `conformance` suite (feature `conformance`) against it.
///
/// Every method is one atomic step in the store: no read-modify-write across
/// two round trips without a version check.
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Inserts `flow` as its subject's newest flow (subjects are keyed by
    /// [`Subject::key`](crate::record::Subject::key)), if and only if the
    /// subject's newest stored flow is still `newest`; with
    /// [`Newest::Replaced`], that flow is swapped for the given record in
    /// the same atomic step. Otherwise nothing is written and the answer is
    /// [`Created::Stale`] with the subject's newest stored flow. The store
    /// compares ids and versions only: which record replaces the newest
    /// (a superseded one, when it was open) is the caller's decision.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] if a flow with this id exists.
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created>;

    /// The flow with this id, if stored (whether or not it has expired, as
    /// long as it was not purged).
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>>;

    /// The flow `load` names ([`get_flow`](CodeStore::get_flow) of an id,
    /// or a subject's newest stored flow, the one
    /// [`create_flow`](CodeStore::create_flow) compares) and
    /// [`increment_counters`](CodeStore::increment_counters), in one atomic
    /// step: a verify reads the client's blocks and limits along with the
    /// flow, a request its subject's newest flow along with its limits. It
    /// has no default: two calls would let a failure between them lose the
    /// counts after the flow was read.
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)>;

    /// The subject's most recent flows, newest first, at most `limit` (for
    /// support look-ups). `subject_key` is [`Subject::key`](crate::record::Subject::key).
    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>>;

    /// Stores a support case under its reference, replacing any case with
    /// the same reference.
    async fn put_case(&self, case: &SupportCase) -> Result<()>;

    /// The support case with this reference, if stored.
    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>>;

    /// Deletes these counters (a support unlock clears an account's
    /// failures). Keys that do not exist are ignored.
    async fn delete_counters(&self, keys: &[String]) -> Result<()>;

    /// Replaces the stored flow with `flow` (same id) if and only if the
    /// stored `version` equals `expected_version`. Returns whether it did;
    /// `false` also when no such flow is stored.
    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool>;

    /// [`compare_and_swap`](CodeStore::compare_and_swap) and, only if it
    /// wrote, [`increment_counters`](CodeStore::increment_counters), in one
    /// atomic step. Returns `None` when the swap did not write (no counter
    /// changed), or the counts after the increments. A verify that records
    /// a wrong code counts the account's failure with the flow's here. It
    /// has no default: with two calls, a failure between them would record
    /// the flow's attempt and lose the account's failure.
    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>>;

    /// Atomically applies each counter (see [`Counter::apply`]) and returns
    /// the values after it, in order. Each counter's step is atomic; a key
    /// may appear more than once.
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>>;

    /// Deletes flows and support cases whose `purge_after` is at or before
    /// `now` and counters whose window ended by `now` (stores may delete
    /// ended counters sooner, or leave them to the backend's own expiry,
    /// as the Redis store does). Returns how many flows were deleted
    /// (stores whose backend expires keys by itself may return 0).
    async fn purge_expired(&self, now: Timestamp) -> Result<u64>;
}

/// The flow [`CodeStore::load_counting`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load<'a> {
    /// The flow with this id.
    Flow(&'a FlowId),
    /// The newest stored flow of this subject.
    Newest(&'a Subject),
}

/// The subject's newest stored flow as the caller read it: what
/// [`CodeStore::create_flow`] checks before it inserts.
#[derive(Debug, Clone, Copy)]
pub enum Newest<'a> {
    /// The subject has no stored flow.
    None,
    /// The flow with this id, at this version, stays as it is.
    Kept(FlowId, u64),
    /// The flow at this version (the first field) is replaced by this
    /// record, of the same id, as by [`CodeStore::compare_and_swap`].
    Replaced(u64, &'a FlowRecord),
}

impl Newest<'_> {
    /// The id and version the subject's newest stored flow must have.
    pub fn expected(&self) -> Option<(FlowId, u64)> {
        match self {
            Newest::None => None,
            Newest::Kept(id, version) => Some((*id, *version)),
            Newest::Replaced(version, flow) => Some((flow.id, *version)),
        }
    }

    /// Whether the subject's newest stored flow, `stored` (its id and
    /// version), is the expected one.
    pub fn matches(&self, stored: Option<(FlowId, u64)>) -> bool {
        self.expected() == stored
    }

    /// The record that replaces the newest flow, if any.
    pub fn replacement(&self) -> Option<&FlowRecord> {
        match self {
            Newest::Replaced(_, flow) => Some(flow),
            _ => None,
        }
    }
}

/// What [`CodeStore::create_flow`] did.
// Returned, never kept: boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The flow is stored as its subject's newest.
    Inserted,
    /// Nothing was written: the subject's newest stored flow is not the
    /// expected one. Here it is (`None`: the subject has none).
    Stale(Option<FlowRecord>),
}

/// Checks that a store answered one value per counter it was given, so
/// that a store that answers more or fewer gets a typed error
/// ([`StoreError::Decode`]) rather than a wrong count or a panic further on.
pub(crate) fn one_per_counter(counters: &[Counter], values: Vec<CounterValue>) -> Result<Vec<CounterValue>> {
    if values.len() == counters.len() {
        Ok(values)
    } else {
        Err(StoreError::Decode(format!(
            "{} counter values for {} counters",
            values.len(),
            counters.len()
        )))
    }
}

#[async_trait]
impl<S: CodeStore + ?Sized> CodeStore for Arc<S> {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        (**self).create_flow(flow, newest).await
    }
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        (**self).get_flow(id).await
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        (**self).load_counting(load, counters, now).await
    }
    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        (**self).find_flows(subject_key, limit).await
    }
    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        (**self).put_case(case).await
    }
    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        (**self).get_case(reference).await
    }
    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        (**self).delete_counters(keys).await
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
    ) -> Result<Option<Vec<CounterValue>>> {
        (**self)
            .compare_and_swap_counting(expected_version, flow, counters, now)
            .await
    }
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        (**self).increment_counters(counters, now).await
    }
    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        (**self).purge_expired(now).await
    }
}
