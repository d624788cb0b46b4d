//! What the driver does with a store's answer about a subject's newest
//! flow that cannot be right: another subject's flow (a store whose keys
//! collide). One account's request must never supersede another's flow,
//! and it must not insert beside its own open flow: a typed error, and
//! nothing written.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use otp_recovery::record::{FlowRecord, FlowState};
use otp_recovery::sms::RecordingSender;
use otp_recovery::store::{
    CodeStore, Counter, CounterValue, Created, Load, MemoryStore, Newest, Result, StoreError,
};
use otp_recovery::support::{SupportCase, SupportReference};
use otp_recovery::{
    Account, AccountId, Error, FlowId, KeyRing, PhoneNumber, Recovery, RequestContext, ServerKey, Timestamp,
};

/// A memory store that answers `decoy` as every subject's newest flow,
/// in the counting load or in a stale create.
struct Colliding {
    inner: MemoryStore,
    decoy: std::sync::Mutex<Option<FlowRecord>>,
    in_load: AtomicBool,
}

impl Colliding {
    fn decoy(&self) -> Option<FlowRecord> {
        self.decoy.lock().unwrap().clone()
    }
}

#[async_trait]
impl CodeStore for Colliding {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        match (self.in_load.load(Ordering::SeqCst), self.decoy()) {
            (false, Some(decoy)) => Ok(Created::Stale(Some(decoy))),
            _ => self.inner.create_flow(flow, newest).await,
        }
    }
    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        self.inner.get_flow(id).await
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        let (flow, values) = self.inner.load_counting(load, counters, now).await?;
        match (load, self.in_load.load(Ordering::SeqCst), self.decoy()) {
            (Load::Newest(_), true, Some(decoy)) => Ok((Some(decoy), values)),
            _ => Ok((flow, values)),
        }
    }
    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        self.inner.find_flows(subject_key, limit).await
    }
    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        self.inner.put_case(case).await
    }
    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        self.inner.get_case(reference).await
    }
    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_counters(keys).await
    }
    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        self.inner.compare_and_swap(expected_version, flow).await
    }
    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        self.inner
            .compare_and_swap_counting(expected_version, flow, counters, now)
            .await
    }
    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        self.inner.increment_counters(counters, now).await
    }
    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        self.inner.purge_expired(now).await
    }
}

fn account(name: &str) -> Account {
    Account::new(
        AccountId::new(name).unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

#[tokio::test]
async fn another_subjects_flow_answered_as_the_newest_is_a_typed_error_and_writes_nothing() {
    for in_load in [true, false] {
        let store = std::sync::Arc::new(Colliding {
            inner: MemoryStore::new(),
            decoy: std::sync::Mutex::new(None),
            in_load: AtomicBool::new(in_load),
        });
        let keys = KeyRing::new(1, ServerKey::from_bytes(vec![3; 32]).unwrap());
        let recovery = Recovery::new(store.clone(), RecordingSender::new(), keys);
        let ctx = RequestContext::without_client_ip();
        let bobs = recovery
            .request("bob@example.com", Some(account("bob")), &ctx)
            .await
            .unwrap();
        let bob_flow = store.get_flow(&bobs.flow_id).await.unwrap().unwrap();
        *store.decoy.lock().unwrap() = Some(bob_flow.clone());
        let flows = store.inner.flow_count();

        let err = recovery
            .request("alice@example.com", Some(account("alice")), &ctx)
            .await
            .expect_err("another subject's flow as alice's newest");
        assert!(
            matches!(err, Error::Store(StoreError::Decode(_))),
            "in load {in_load}: {err:?}"
        );
        assert_eq!(
            store.inner.flow_count(),
            flows,
            "in load {in_load}: nothing inserted"
        );
        let stored = store.get_flow(&bob_flow.id).await.unwrap().unwrap();
        assert_eq!(
            stored.state,
            FlowState::CodeSent,
            "in load {in_load}: bob's flow untouched"
        );
        assert_eq!(stored, bob_flow);
    }
}
