//! Fault injection for testing an integration: a [`CodeStore`] wrapper
//! that fails, loses the answer of, or hangs its Nth operation, and an
//! [`SmsSender`] wrapper that fails its Nth send.
//!
//! Both count the operations they pass on, so a test can first run a whole
//! flow once to learn how many operations it makes, then run it again once
//! for every N, failing the Nth, and check that each run ends in success or
//! a typed error and leaves the store consistent.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use otp_recovery::sms::RecordingSender;
//! use otp_recovery::store::MemoryStore;
//! use otp_recovery::testing::{FaultyStore, StoreFault};
//! use otp_recovery::{Account, AccountId, Error, KeyRing, PhoneNumber, Recovery, RequestContext, ServerKey};
//!
//! let store = Arc::new(FaultyStore::new(MemoryStore::new()));
//! let keys = KeyRing::new(1, ServerKey::generate().unwrap());
//! let recovery = Recovery::new(store.clone(), RecordingSender::new(), keys);
//! let alice = Account::new(AccountId::new("42").unwrap(), PhoneNumber::parse("+14155550123").unwrap());
//!
//! // The second store operation from now (the flow's creation, after the
//! // counters) fails: the request fails with a typed error, nothing is stored.
//! store.fail_nth(2, StoreFault::Fail);
//! let result = recovery.request("alice", Some(alice), &RequestContext::without_client_ip()).await;
//! assert!(matches!(result, Err(Error::Store(_))));
//! assert_eq!(store.inner().flow_count(), 0);
//! assert!(store.operations() >= 2);
//! # });
//! ```
//!
//! A store that never answers is the host's to bound with a timeout
//! (`tokio::time::timeout` around the call, or a timeout in the database
//! driver): [`StoreFault::Hang`] lets a test check that it does. The case
//! the driver must survive by itself is the timeout that comes back as an
//! error, after the backend did or did not apply the operation:
//! [`StoreFault::Timeout`] and [`StoreFault::LostAnswer`].

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::case::{SupportCase, SupportReference};
use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::record::FlowRecord;
use crate::sms::{SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};
use crate::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result, StoreError};

/// What happens to the store operation a [`FaultyStore`] was told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreFault {
    /// Not applied; a non-retryable [`StoreError::Backend`] (a broken
    /// connection, a full disk).
    Fail,
    /// Not applied; a retryable [`StoreError::Backend`] saying it timed out.
    Timeout,
    /// Applied by the inner store, but its answer is lost: a retryable
    /// [`StoreError::Backend`] saying it timed out. The hardest case: the
    /// caller cannot know that the write happened.
    LostAnswer,
    /// Never completes (and is not applied): for testing the host's own
    /// timeouts.
    Hang,
}

/// A [`CodeStore`] that passes every operation to `S`, counts them, and
/// injects one [`StoreFault`] into the Nth operation when told to.
///
/// Each method of [`CodeStore`] called on it is one operation, the combined
/// ones ([`load_counting`](CodeStore::load_counting),
/// [`compare_and_swap_counting`](CodeStore::compare_and_swap_counting))
/// included: they are passed on as one call, so the inner store's own
/// atomicity is kept. Share it with `Arc` to keep a handle while a
/// [`Recovery`](crate::Recovery) owns the other.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    operations: AtomicU64,
    armed: Mutex<Option<(u64, StoreFault)>>,
}

impl<S: CodeStore> FaultyStore<S> {
    /// Wraps `inner`, with no fault armed.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            operations: AtomicU64::new(0),
            armed: Mutex::new(None),
        }
    }

    /// The wrapped store, for inspecting what was applied.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Operations passed on (or failed) so far.
    pub fn operations(&self) -> u64 {
        self.operations.load(Ordering::SeqCst)
    }

    /// Makes the `n`th operation from now (1: the next one) suffer `fault`;
    /// replaces any fault armed before. `n == 0` disarms.
    pub fn fail_nth(&self, n: u64, fault: StoreFault) {
        let at = (n > 0).then(|| (self.operations() + n, fault));
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Disarms the fault, if one is armed and has not struck yet.
    pub fn disarm(&self) {
        self.fail_nth(0, StoreFault::Fail);
    }

    /// Counts one operation; the fault it must suffer, if any.
    fn next(&self) -> Option<StoreFault> {
        let n = self.operations.fetch_add(1, Ordering::SeqCst) + 1;
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        match *armed {
            Some((at, fault)) if at == n => {
                *armed = None;
                Some(fault)
            }
            _ => None,
        }
    }

    /// Runs `op` on the inner store, or injects this operation's fault.
    async fn run<R: Send>(&self, op: impl std::future::Future<Output = Result<R>> + Send) -> Result<R> {
        match self.next() {
            None => op.await,
            Some(StoreFault::Fail) => Err(StoreError::backend("injected failure", false)),
            Some(StoreFault::Timeout) => Err(StoreError::backend("injected timeout", true)),
            Some(StoreFault::LostAnswer) => {
                // Whether it applied or failed, the caller learns neither.
                let _ = op.await;
                Err(StoreError::backend(
                    "injected timeout after the operation applied",
                    true,
                ))
            }
            Some(StoreFault::Hang) => std::future::pending().await,
        }
    }
}

#[async_trait]
impl<S: CodeStore> CodeStore for FaultyStore<S> {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        self.run(self.inner.create_flow(flow, newest)).await
    }
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        self.run(self.inner.get_flow(id)).await
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        self.run(self.inner.load_counting(load, counters, now)).await
    }
    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        self.run(self.inner.find_flows(subject_key, limit)).await
    }
    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        self.run(self.inner.put_case(case)).await
    }
    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        self.run(self.inner.get_case(reference)).await
    }
    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        self.run(self.inner.delete_counters(keys)).await
    }
    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        self.run(self.inner.compare_and_swap(expected_version, flow))
            .await
    }
    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        self.run(
            self.inner
                .compare_and_swap_counting(expected_version, flow, counters, now),
        )
        .await
    }
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        self.run(self.inner.increment_counters(counters, now)).await
    }
    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        self.run(self.inner.purge_expired(now)).await
    }
}

/// What happens to the send a [`FaultySender`] was told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendFault {
    /// Not delivered; fails with this kind.
    Fail(SendErrorKind),
    /// Delivered by the inner sender, but reported as failed with this kind
    /// (a gateway that timed out after accepting the message).
    Delivered(SendErrorKind),
}

/// An [`SmsSender`] that passes every message to `T`, counts the sends, and
/// fails the Nth one when told to.
#[derive(Debug)]
pub struct FaultySender<T> {
    inner: T,
    sends: AtomicU64,
    armed: Mutex<Option<(u64, SendFault)>>,
}

impl<T: SmsSender> FaultySender<T> {
    /// Wraps `inner`, with no fault armed.
    pub fn new(inner: T) -> Self {
        FaultySender {
            inner,
            sends: AtomicU64::new(0),
            armed: Mutex::new(None),
        }
    }

    /// The wrapped sender.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Sends attempted so far, failed ones included.
    pub fn sends(&self) -> u64 {
        self.sends.load(Ordering::SeqCst)
    }

    /// Makes the `n`th send from now (1: the next one) suffer `fault`;
    /// replaces any fault armed before. `n == 0` disarms.
    pub fn fail_nth(&self, n: u64, fault: SendFault) {
        let at = (n > 0).then(|| (self.sends() + n, fault));
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Disarms the fault, if one is armed and has not struck yet.
    pub fn disarm(&self) {
        self.fail_nth(0, SendFault::Fail(SendErrorKind::Unavailable));
    }
}

#[async_trait]
impl<T: SmsSender> SmsSender for FaultySender<T> {
    async fn send(&self, message: &SmsMessage) -> std::result::Result<SendReceipt, SendError> {
        let n = self.sends.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = {
            let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
            match *armed {
                Some((at, _)) if at == n => armed.take().map(|(_, f)| f),
                _ => None,
            }
        };
        match fault {
            None => self.inner.send(message).await,
            Some(SendFault::Fail(kind)) => Err(SendError::new(kind, "injected failure")),
            Some(SendFault::Delivered(kind)) => {
                let _ = self.inner.send(message).await;
                Err(SendError::new(kind, "injected failure after delivery"))
            }
        }
    }
}
