//! Test helpers shared by several test files.

#![allow(dead_code)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{
    CodeStore, Counter, CounterValue, Created, Load, MemoryStore, Newest, Result, StoreError,
};
use otp_recovery::support::{SupportCase, SupportReference};
use otp_recovery::{FlowId, Timestamp};

/// A memory store that counts every call made to it and records every
/// counter key it is given. A test that holds `create_gate` holds every
/// `create_flow` at its start (to run other calls in between); while
/// `fail_swaps` is set, every plain `compare_and_swap` fails (the counting
/// one still works); while `short_answers` is set, every call that counts
/// answers one value too few (a broken store).
#[derive(Default)]
pub struct Observed {
    inner: MemoryStore,
    calls: AtomicUsize,
    keys: Mutex<Vec<String>>,
    pub create_gate: tokio::sync::Mutex<()>,
    pub fail_swaps: AtomicBool,
    pub short_answers: AtomicBool,
}

impl Observed {
    /// Calls since the last `take`.
    pub fn take(&self) -> usize {
        self.calls.swap(0, Ordering::SeqCst)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &MemoryStore {
        &self.inner
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
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        self.tick(&[]);
        let _held = self.create_gate.lock().await;
        self.inner.create_flow(flow, newest).await
    }
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        self.tick(&[]);
        self.inner.get_flow(id).await
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        self.tick(counters);
        let (flow, mut values) = self.inner.load_counting(load, counters, now).await?;
        if self.short_answers.load(Ordering::SeqCst) {
            values.pop();
        }
        Ok((flow, values))
    }
    async fn compare_and_swap(&self, expected: u64, flow: &FlowRecord) -> Result<bool> {
        self.tick(&[]);
        if self.fail_swaps.load(Ordering::SeqCst) {
            return Err(StoreError::backend("injected failure", false));
        }
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
        let mut values = self
            .inner
            .compare_and_swap_counting(expected, flow, counters, now)
            .await?;
        if self.short_answers.load(Ordering::SeqCst) {
            values.as_mut().map(Vec::pop);
        }
        Ok(values)
    }
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        self.tick(counters);
        let mut values = self.inner.increment_counters(counters, now).await?;
        if self.short_answers.load(Ordering::SeqCst) {
            values.pop();
        }
        Ok(values)
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

/// The URL of a test server in `var`: `None` (with a notice) when it is
/// unset outside CI, so that a plain `cargo test` skips the servers it does
/// not have; in CI it must be set.
pub fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!("{var} must be set in CI"),
        _ => {
            eprintln!("note: {var} is not set; skipping the tests on that server");
            None
        }
    }
}
