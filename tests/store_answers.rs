//! What the driver does with a store's answers about a subject's newest
//! flow: another subject's flow (a store whose keys collide) is a typed
//! error with nothing written, so one account's request never supersedes
//! another's flow; and stale answers are retried up to the driver's bound
//! of rounds, exactly, then `Error::Busy`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
/// in the counting load or in a stale create; and that answers its first
/// `stale_left` creates `Stale` with the subject's true newest flow,
/// writing nothing (as if another create won each round).
#[derive(Default)]
struct Colliding {
    inner: MemoryStore,
    decoy: std::sync::Mutex<Option<FlowRecord>>,
    in_load: AtomicBool,
    stale_left: AtomicUsize,
    creates: AtomicUsize,
}

impl Colliding {
    fn decoy(&self) -> Option<FlowRecord> {
        self.decoy.lock().unwrap().clone()
    }
}

#[async_trait]
impl CodeStore for Colliding {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let stale = self
            .stale_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if stale.is_ok() {
            let key = flow.subject.key();
            return Ok(Created::Stale(self.inner.find_flows(&key, 1).await?.pop()));
        }
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
            in_load: AtomicBool::new(in_load),
            ..Colliding::default()
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

#[tokio::test]
async fn stale_answers_are_retried_for_exactly_the_driver_s_rounds_then_busy() {
    // The driver's bound: 64 creates per request.
    for (stale, settles) in [(63, true), (64, false)] {
        let store = std::sync::Arc::new(Colliding::default());
        let keys = KeyRing::new(1, ServerKey::from_bytes(vec![4; 32]).unwrap());
        let sender = RecordingSender::new();
        let recovery = Recovery::new(store.clone(), sender.clone(), keys);
        let ctx = RequestContext::without_client_ip();
        let first = recovery
            .request("carol@example.com", Some(account("carol")), &ctx)
            .await
            .unwrap();
        let flows = store.inner.flow_count();
        store.creates.store(0, Ordering::SeqCst);
        store.stale_left.store(stale, Ordering::SeqCst);
        let again = recovery
            .request("carol@example.com", Some(account("carol")), &ctx)
            .await;
        assert_eq!(store.creates.load(Ordering::SeqCst), 64, "{stale} stale answers");
        let first_now = store.get_flow(&first.flow_id).await.unwrap().unwrap();
        if settles {
            let again = again.expect("the 64th create inserts");
            assert_ne!(again.flow_id, first.flow_id);
            assert_eq!(first_now.state, FlowState::Superseded);
            assert_eq!(store.inner.flow_count(), flows + 1);
        } else {
            assert!(matches!(again, Err(Error::Busy)), "{again:?}");
            assert_eq!(
                first_now.state,
                FlowState::CodeSent,
                "a request that gave up supersedes nothing"
            );
            assert_eq!(store.inner.flow_count(), flows, "and inserts nothing");
            assert_eq!(sender.count(), 1, "and sends nothing");
        }
    }
}
