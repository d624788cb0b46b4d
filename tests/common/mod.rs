//! Test helpers shared by several test files.

#![allow(dead_code)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use otp_recovery::store::{CodeStore, Counter, CounterValue, MemoryStore, Result};
use otp_recovery::support::{SupportCase, SupportReference};
use otp_recovery::{FlowId, FlowRecord, Timestamp};

/// A memory store that counts every call made to it and records every
/// counter key it is given. A test that holds `create_gate` holds every
/// `create_flow` at its start (to run other calls in between).
#[derive(Default)]
pub struct Observed {
    inner: MemoryStore,
    calls: AtomicUsize,
    keys: Mutex<Vec<String>>,
    pub create_gate: tokio::sync::Mutex<()>,
}

impl Observed {
    /// Calls since the last `take`.
    pub fn take(&self) -> usize {
        self.calls.swap(0, Ordering::SeqCst)
    }

    /// Every counter key seen.
    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }

    fn tick(&self, counters: &[Counter]) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.keys
            .lock()
            .unwrap()
            .extend(counters.iter().map(|c| c.key.clone()));
    }
}

impl std::fmt::Debug for Observed {
    /// The wrapped store's own `Debug`, which a host might log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl CodeStore for Observed {
    async fn create_flow(&self, flow: &FlowRecord) -> Result<()> {
        self.tick(&[]);
        let _held = self.create_gate.lock().await;
        self.inner.create_flow(flow).await
    }
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        self.tick(&[]);
        self.inner.get_flow(id).await
    }
    async fn load_counting(
        &self,
        id: &FlowId,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        self.tick(counters);
        self.inner.load_counting(id, counters, now).await
    }
    async fn compare_and_swap(&self, expected: u64, flow: &FlowRecord) -> Result<bool> {
        self.tick(&[]);
        self.inner.compare_and_swap(expected, flow).await
    }
    async fn compare_and_swap_counting(
        &self,
        expected: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        self.tick(counters);
        self.inner
            .compare_and_swap_counting(expected, flow, counters, now)
            .await
    }
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        self.tick(counters);
        self.inner.increment_counters(counters, now).await
    }
    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        self.tick(&[]);
        self.inner.find_flows(subject_key, limit).await
    }
    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        self.tick(&[]);
        self.inner.put_case(case).await
    }
    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        self.tick(&[]);
        self.inner.get_case(reference).await
    }
    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        self.tick(&[]);
        self.keys.lock().unwrap().extend(keys.iter().cloned());
        self.inner.delete_counters(keys).await
    }
    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        self.tick(&[]);
        self.inner.purge_expired(now).await
    }
}
