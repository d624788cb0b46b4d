//! What the checks drive a store with: a wrapper that yields around every
//! call, deterministic races, and a `Recovery` without rate limits.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Barrier;

use super::{account, now, phone};
use crate::case::{SupportCase, SupportReference};
use crate::clock::{ManualClock, Timestamp};
use crate::code::KeyRing;
use crate::id::FlowId;
use crate::limits::Limits;
use crate::record::FlowRecord;
use crate::recovery::{Account, Recovery, RequestContext};
use crate::secret::ServerKey;
use crate::sms::RecordingSender;
use crate::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result as StoreResult};

/// Wraps the store under test so every call yields to the scheduler before
/// and after it: racing tasks then interleave between a load and its
/// compare-and-swap even over a store that never waits (in memory), which
/// is where lost updates would hide.
pub(super) struct Interleaved<S>(pub(super) Arc<S>);

#[async_trait]
impl<S: CodeStore> CodeStore for Interleaved<S> {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> StoreResult<Created> {
        tokio::task::yield_now().await;
        let out = self.0.create_flow(flow, newest).await;
        tokio::task::yield_now().await;
        out
    }
    async fn get_flow(&self, id: &FlowId) -> StoreResult<Option<FlowRecord>> {
        tokio::task::yield_now().await;
        let out = self.0.get_flow(id).await;
        tokio::task::yield_now().await;
        out
    }
    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> StoreResult<bool> {
        tokio::task::yield_now().await;
        let out = self.0.compare_and_swap(expected_version, flow).await;
        tokio::task::yield_now().await;
        out
    }
    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<Option<Vec<CounterValue>>> {
        tokio::task::yield_now().await;
        let out = self
            .0
            .compare_and_swap_counting(expected_version, flow, counters, now)
            .await;
        tokio::task::yield_now().await;
        out
    }
    async fn increment_counters(
        &self,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<Vec<CounterValue>> {
        tokio::task::yield_now().await;
        let out = self.0.increment_counters(counters, now).await;
        tokio::task::yield_now().await;
        out
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<(Option<FlowRecord>, Vec<CounterValue>)> {
        tokio::task::yield_now().await;
        let out = self.0.load_counting(load, counters, now).await;
        tokio::task::yield_now().await;
        out
    }
    async fn find_flows(&self, subject_key: &str, limit: usize) -> StoreResult<Vec<FlowRecord>> {
        self.0.find_flows(subject_key, limit).await
    }
    async fn put_case(&self, case: &SupportCase) -> StoreResult<()> {
        self.0.put_case(case).await
    }
    async fn get_case(&self, reference: &SupportReference) -> StoreResult<Option<SupportCase>> {
        self.0.get_case(reference).await
    }
    async fn delete_counters(&self, keys: &[String]) -> StoreResult<()> {
        self.0.delete_counters(keys).await
    }
    async fn purge_expired(&self, now: Timestamp) -> StoreResult<u64> {
        self.0.purge_expired(now).await
    }
}

pub(super) type TestRecovery<S> = Recovery<Interleaved<S>, RecordingSender, ManualClock>;

pub(super) fn recovery<S: CodeStore>(store: Arc<S>) -> (Arc<TestRecovery<S>>, RecordingSender, ManualClock) {
    let sender = RecordingSender::new();
    let clock = ManualClock::new(now());
    let keys = KeyRing::new(1, ServerKey::generate().expect("randomness"));
    // No rate limits: counters a shared database keeps across runs must not
    // change what these checks see.
    let recovery = Recovery::new(Interleaved(store), sender.clone(), keys)
        .with_limits(Limits::none())
        .with_clock(clock.clone());
    (Arc::new(recovery), sender, clock)
}

/// Runs `n` copies of `task` at once and returns their outputs in order.
///
/// The copies are dealt into four groups, one spawned task each, released
/// together by a barrier: the groups run in parallel, and within a group
/// the copies are polled in turn, so each copy reaches its first await (a
/// round trip to the store) before any copy goes past it. A store that
/// checks in one round trip and writes in another therefore fails these
/// races on every run, not only when the scheduler happens to interleave.
pub(super) async fn race<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    const GROUPS: usize = 4;
    let mut groups: Vec<Vec<Fut>> = (0..GROUPS.min(n)).map(|_| Vec::new()).collect();
    for i in 0..n {
        groups[i % GROUPS].push(task(i));
    }
    let barrier = Arc::new(Barrier::new(groups.len()));
    let handles: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                // Out of tokio's cooperative budget, which would otherwise
                // make a resource return early and break the turn order.
                tokio::task::unconstrained(in_turn(group)).await
            })
        })
        .collect();
    let mut grouped = Vec::with_capacity(handles.len());
    for handle in handles {
        grouped.push(handle.await.expect("a racing task panicked").into_iter());
    }
    // Back to the order of `i`: copy i is the (i / GROUPS)th of group i % GROUPS.
    let width = grouped.len();
    (0..n)
        .map(|i| grouped[i % width].next().expect("one output per copy"))
        .collect()
}

/// Polls every future in turn until all are done (a `join_all` that
/// gives each future one poll per round, in order).
async fn in_turn<T, Fut: Future<Output = T>>(futures: Vec<Fut>) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future is done"))
        .collect()
}

pub(super) async fn requested_flow<S: CodeStore>(recovery: &TestRecovery<S>) -> FlowId {
    let account = Account::new(account(), phone());
    recovery
        .request(
            "someone@example.com",
            Some(account),
            &RequestContext::without_client_ip(),
        )
        .await
        .expect("request")
        .flow_id
}
