//! Fault injection: a whole recovery (request, wrong code, resend, wrong
//! code, right code, reset) is run once for every store operation N, with
//! the Nth operation failing, timing out, or applied with its answer lost,
//! and once for every send N, with the Nth send failing or delivered but
//! reported failed. The store operations are failed in turn on every
//! built-in store (memory, SQLite, and PostgreSQL and Redis at
//! `OTP_TEST_POSTGRES_URL` and `OTP_TEST_REDIS_URL`). Every call must end in
//! success or a typed error, and afterwards the store must hold:
//!
//! - every flow decodes, and only the account's newest flow may be open;
//! - every wrong code the caller was told about is counted on its flow and
//!   on the account, and no more wrong codes are counted than were tried;
//! - a token handed out belongs to a stored `Verified` (or, once reset,
//!   `Completed`) flow;
//! - no live flow holds a code that was never delivered (a failed send, or
//!   a write whose answer was lost, voids the code);
//! - a failed send consumes no attempt.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use otp_recovery::sms::{RecordingSender, SendErrorKind};
use otp_recovery::store::{
    CodeStore, Counter, CounterValue, Created, Load, MemoryStore, Newest, Result as StoreResult,
};
use otp_recovery::support::{Agent, SupportCase, SupportReference};
use otp_recovery::testing::{FaultySender, FaultyStore, SendFault, StoreFault};
mod common;

use otp_recovery::limits::{LimitScope, Limits};
use otp_recovery::record::{FlowRecord, FlowState, Mac, Subject};
use otp_recovery::{
    Account, AccountId, Code, Error, FlowId, KeyRing, ManualClock, PhoneNumber, Policy, Recovery,
    RequestContext, ServerKey, Timestamp,
};

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);

/// A memory store that remembers every code MAC a new flow or a resend
/// asked it to write (whether or not the write applied), so the checks can
/// tell a live code from a voided one.
struct Journal<S = MemoryStore> {
    inner: S,
    code_macs: Mutex<HashSet<[u8; 32]>>,
}

impl<S: CodeStore> Journal<S> {
    fn new(inner: S) -> Self {
        Journal {
            inner,
            code_macs: Mutex::default(),
        }
    }

    fn is_code_mac(&self, mac: &Mac) -> bool {
        self.code_macs.lock().unwrap().contains(mac.as_bytes())
    }

    async fn note(&self, flow: &FlowRecord) {
        // A resend writes a new code and counts a send; a voided code keeps
        // the count.
        let stored = self.inner.get_flow(&flow.id).await.unwrap();
        if stored.is_none_or(|s| flow.sends > s.sends) {
            self.code_macs.lock().unwrap().insert(*flow.code_mac.as_bytes());
        }
    }
}

#[async_trait]
impl<S: CodeStore> CodeStore for Journal<S> {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> StoreResult<Created> {
        self.note(flow).await;
        self.inner.create_flow(flow, newest).await
    }
    async fn get_flow(&self, id: &FlowId) -> StoreResult<Option<FlowRecord>> {
        self.inner.get_flow(id).await
    }
    async fn compare_and_swap(&self, expected: u64, flow: &FlowRecord) -> StoreResult<bool> {
        self.note(flow).await;
        self.inner.compare_and_swap(expected, flow).await
    }
    async fn compare_and_swap_counting(
        &self,
        expected: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<Option<Vec<CounterValue>>> {
        self.note(flow).await;
        self.inner
            .compare_and_swap_counting(expected, flow, counters, now)
            .await
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<(Option<FlowRecord>, Vec<CounterValue>)> {
        self.inner.load_counting(load, counters, now).await
    }
    async fn increment_counters(
        &self,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<Vec<CounterValue>> {
        self.inner.increment_counters(counters, now).await
    }
    async fn find_flows(&self, subject_key: &str, limit: usize) -> StoreResult<Vec<FlowRecord>> {
        self.inner.find_flows(subject_key, limit).await
    }
    async fn put_case(&self, case: &SupportCase) -> StoreResult<()> {
        self.inner.put_case(case).await
    }
    async fn get_case(&self, reference: &SupportReference) -> StoreResult<Option<SupportCase>> {
        self.inner.get_case(reference).await
    }
    async fn delete_counters(&self, keys: &[String]) -> StoreResult<()> {
        self.inner.delete_counters(keys).await
    }
    async fn purge_expired(&self, now: Timestamp) -> StoreResult<u64> {
        self.inner.purge_expired(now).await
    }
}

type Store<S> = Arc<FaultyStore<Journal<S>>>;
type Sender = Arc<FaultySender<RecordingSender>>;
type Rec<S> = Recovery<Store<S>, Sender, ManualClock>;

fn keys() -> KeyRing {
    KeyRing::new(1, ServerKey::from_bytes(vec![7; 32]).unwrap())
}

fn alice() -> Account {
    Account::new(
        AccountId::new("alice").unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

/// A code that is certainly not `code`.
fn wrong(code: &str) -> String {
    let n: u64 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

/// What the calls of one run told their caller.
#[derive(Default, Debug)]
struct Told {
    /// Per flow: wrong codes reported (`InvalidCode`, or `Locked` on the
    /// attempt that locked) and wrong codes tried.
    wrong: HashMap<FlowId, (u32, u32)>,
    /// Tokens handed out, by flow.
    tokens: Vec<FlowId>,
    /// Flows whose reset succeeded.
    completed: Vec<FlowId>,
    /// Every error seen, for the report of a failing run.
    errors: Vec<String>,
}

struct Run<S = MemoryStore> {
    recovery: Rec<S>,
    store: Store<S>,
    sender: Sender,
    clock: ManualClock,
    told: Told,
    /// The account the run recovers, the identifier it asks with, and the
    /// key ring: `alice()` and `keys()` on a store of its own, names and a
    /// key of the run's own on a shared server.
    account: Account,
    identifier: String,
    keys: KeyRing,
}

impl Run {
    fn new(reveal: bool) -> Self {
        Run::with_policy(Policy::builder().reveal_send_failures(reveal).build().unwrap())
    }

    fn with_policy(policy: Policy) -> Self {
        Run::on(MemoryStore::new(), policy, Limits::default(), alice(), keys())
    }
}

impl<S: CodeStore> Run<S> {
    /// A run on a store that other runs share: its own account and key.
    fn shared(store: S) -> Self {
        let name = FlowId::generate().unwrap();
        let account = Account::new(
            AccountId::new(format!("alice-{name}")).unwrap(),
            PhoneNumber::parse("+14155550123").unwrap(),
        );
        let keys = KeyRing::new(1, ServerKey::generate().unwrap());
        // The country and global budgets are keyed by plain values, the
        // same in every run: on a server that outlives the runs, they
        // would fill up at the fixed T0 and refuse later runs.
        let mut limits = Limits::builder().clear_send_rules();
        for rule in Limits::default().send_rules() {
            if !matches!(rule.scope, LimitScope::CountryCode | LimitScope::Global) {
                limits = limits.add_send_rule(*rule);
            }
        }
        Run::on(store, Policy::default(), limits.build().unwrap(), account, keys)
    }

    fn on(store: S, policy: Policy, limits: Limits, account: Account, keys: KeyRing) -> Self {
        let store = Arc::new(FaultyStore::new(Journal::new(store)));
        let sender = Arc::new(FaultySender::new(RecordingSender::new()));
        let clock = ManualClock::new(T0);
        let recovery = Recovery::new(store.clone(), sender.clone(), keys.clone())
            .with_policy(policy)
            .with_limits(limits)
            .with_clock(clock.clone());
        Run {
            recovery,
            store,
            sender,
            clock,
            told: Told::default(),
            identifier: format!("{}@example.com", account.id.as_str()),
            account,
            keys,
        }
    }

    /// An error must be typed and one this step can have; `Store` and
    /// `Send` only come from an injected fault.
    fn check_error(&mut self, step: &str, e: &Error) {
        let expected = matches!(
            e,
            Error::Store(_)
                | Error::Send(_)
                | Error::InvalidCode { .. }
                | Error::Locked { .. }
                | Error::NotFound
                | Error::InvalidToken
                | Error::AlreadyUsed
                | Error::Superseded
        );
        assert!(expected, "{step}: unexpected error {e:?}");
        self.told.errors.push(format!("{step}: {e}"));
    }

    fn last_code(&self) -> Option<Code> {
        self.sender.inner().last_code()
    }

    async fn request(&mut self, ctx: &RequestContext) -> Option<FlowId> {
        match self
            .recovery
            .request(&self.identifier, Some(self.account.clone()), ctx)
            .await
        {
            Ok(r) => Some(r.flow_id),
            Err(e) => {
                self.check_error("request", &e);
                None
            }
        }
    }

    async fn verify(&mut self, flow: FlowId, code: &str, ctx: &RequestContext) {
        let right = self.last_code().is_some_and(|c| c.expose_secret() == code);
        let entry = self.told.wrong.entry(flow).or_default();
        if !right {
            entry.1 += 1;
        }
        match self.recovery.verify(&flow, code, ctx).await {
            Ok(verified) => {
                assert!(right, "a wrong code verified");
                self.told.tokens.push(flow);
                let token = verified.token.expose_secret();
                match self.recovery.reset(&token, ctx).await {
                    Ok(done) => {
                        assert_eq!(done.flow_id, flow);
                        self.told.completed.push(flow);
                    }
                    Err(e) => self.check_error("reset", &e),
                }
            }
            Err(e) => {
                if matches!(e, Error::InvalidCode { .. } | Error::Locked { .. }) {
                    // Either a wrong code, or a right one whose send was
                    // reported failed (voided): wrong either way.
                    let entry = self.told.wrong.entry(flow).or_default();
                    entry.0 += 1;
                    if right {
                        entry.1 += 1;
                    }
                }
                self.check_error("verify", &e);
            }
        }
    }

    /// The whole flow a user goes through, continuing past failures the
    /// way a user would (asking again when a request failed).
    async fn script(&mut self) {
        let ctx = RequestContext::from_ip("203.0.113.7".parse().unwrap());
        let mut flow = self.request(&ctx).await;
        if flow.is_none() {
            self.clock.advance(Duration::from_secs(1));
            flow = self.request(&ctx).await;
        }
        let Some(flow) = flow else { return };
        let code = self.last_code().map(|c| c.expose_secret().to_owned());
        let guess = wrong(code.as_deref().unwrap_or("000000"));
        self.verify(flow, &guess, &ctx).await;
        self.clock.advance(Duration::from_secs(31));
        if let Err(e) = self.recovery.resend(&flow, &ctx).await {
            self.check_error("resend", &e);
        }
        let code = self.last_code().map(|c| c.expose_secret().to_owned());
        let guess = wrong(code.as_deref().unwrap_or("000000"));
        self.verify(flow, &guess, &ctx).await;
        self.clock.advance(Duration::from_secs(1));
        let code = self.last_code().map(|c| c.expose_secret().to_owned());
        self.verify(flow, code.as_deref().unwrap_or("000000"), &ctx).await;
    }

    /// Checks the store against what the calls told, with every fault
    /// disarmed.
    async fn check_invariants(&self, label: &str) {
        self.store.disarm();
        self.sender.disarm();
        let journal = self.store.inner();
        let now = T0.saturating_add(Duration::from_secs(60));
        let subject = Subject::Account(self.account.id.clone());
        // Newest first; every one decodes.
        let flows = journal.find_flows(&subject.key(), 100).await.unwrap();
        let open: Vec<_> = flows.iter().filter(|f| f.state.is_open()).collect();
        assert!(open.len() <= 1, "{label}: two open flows: {flows:#?}");
        if let Some(open) = open.first() {
            assert_eq!(open.id, flows[0].id, "{label}: an older flow is open");
        }
        let delivered: Vec<Code> = self
            .sender
            .inner()
            .messages()
            .iter()
            .filter_map(|m| {
                let body = m.body.expose_secret();
                body.split(|c: char| !c.is_ascii_digit())
                    .find(|run| run.len() == 6)
                    .and_then(|run| Code::parse(run).ok())
            })
            .collect();
        let mut counted = 0u64;
        for flow in &flows {
            let again = journal.get_flow(&flow.id).await.unwrap().unwrap();
            assert_eq!(&again, flow, "{label}: flow reads back differently");
            counted += u64::from(flow.failed_attempts);
            let (reported, tried) = self.told.wrong.get(&flow.id).copied().unwrap_or_default();
            assert!(
                flow.failed_attempts >= reported,
                "{label}: {reported} wrong codes reported, {} counted; {:?}",
                flow.failed_attempts,
                self.told
            );
            assert!(
                flow.failed_attempts <= tried,
                "{label}: {tried} wrong codes tried, {} counted (a failed send cost an attempt?); {:?}",
                flow.failed_attempts,
                self.told
            );
            if self.told.tokens.contains(&flow.id) {
                assert!(
                    matches!(flow.state, FlowState::Verified | FlowState::Completed)
                        && flow.token_mac.is_some(),
                    "{label}: a token was handed out for a flow in {:?}",
                    flow.state
                );
            }
            if self.told.completed.contains(&flow.id) {
                assert_eq!(flow.state, FlowState::Completed, "{label}");
            }
            if flow.state == FlowState::CodeSent && journal.is_code_mac(&flow.code_mac) {
                // A live code: it must be one the user received.
                let mut received = false;
                for code in &delivered {
                    received |= verifies(flow, code, now, &self.keys).await;
                }
                assert!(
                    received,
                    "{label}: a live code was never delivered; {:?}",
                    self.told
                );
            }
        }
        // The account's failures are exactly the flows' (each wrong code
        // is written with its flow in one store call).
        let agent = Agent::new("test").unwrap();
        let case = self
            .recovery
            .support()
            .lookup_account(&agent, "fault test", &self.account.id)
            .await
            .unwrap();
        assert_eq!(
            case.failures, counted,
            "{label}: account failures differ from the flows'"
        );
    }
}

/// Whether `code` is the live code of `flow`, checked on a copy of it so
/// the real one spends no attempt.
async fn verifies(flow: &FlowRecord, code: &Code, now: Timestamp, keys: &KeyRing) -> bool {
    let scratch = Recovery::new(MemoryStore::new(), RecordingSender::new(), keys.clone())
        .with_limits(otp_recovery::limits::Limits::none())
        .with_clock(ManualClock::new(now));
    let mut copy = flow.clone();
    copy.code_expires_at = now.saturating_add(Duration::from_secs(1));
    scratch.store().create_flow(&copy, Newest::None).await.unwrap();
    scratch
        .verify(
            &flow.id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .is_ok()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn a_clean_run_completes_and_passes_the_checks() {
    block_on(async {
        let mut run = Run::new(false);
        run.script().await;
        assert_eq!(run.told.completed.len(), 1, "{:?}", run.told);
        assert!(
            run.told
                .errors
                .iter()
                .all(|e| e.starts_with("verify: wrong code")),
            "{:?}",
            run.told
        );
        run.check_invariants("clean").await;
    });
}

#[test]
fn every_store_operation_may_fail_time_out_or_lose_its_answer() {
    block_on(each_store_operation_fails_in_turn(|| async { Run::new(false) }));
}

#[test]
fn every_sqlite_operation_may_fail_time_out_or_lose_its_answer() {
    block_on(each_store_operation_fails_in_turn(|| async {
        let store = otp_recovery_sqlx::sqlite::SqliteStore::open_in_memory()
            .await
            .unwrap();
        Run::shared(store)
    }));
}

#[test]
fn every_postgres_operation_may_fail_time_out_or_lose_its_answer() {
    let Some(url) = common::server("OTP_TEST_POSTGRES_URL") else {
        return;
    };
    block_on(async {
        let store = otp_recovery_sqlx::postgres::PostgresStore::connect(&url)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        each_store_operation_fails_in_turn(|| async { Run::shared(store.clone()) }).await;
    });
}

#[test]
fn every_redis_operation_may_fail_time_out_or_lose_its_answer() {
    let Some(url) = common::server("OTP_TEST_REDIS_URL") else {
        return;
    };
    block_on(async {
        let prefix = format!("faults-{}", FlowId::generate().unwrap());
        let store = otp_recovery_redis::RedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix(&prefix);
        each_store_operation_fails_in_turn(|| async { Run::shared(store.clone()) }).await;
    });
}

/// The whole recovery once clean, to count its store operations N, then
/// once per N with the Nth failing, timing out, or losing its answer; the
/// store must pass the checks after every run.
async fn each_store_operation_fails_in_turn<S, F, Fut>(fresh: F)
where
    S: CodeStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Run<S>>,
{
    let mut clean = fresh().await;
    clean.script().await;
    clean.check_invariants("clean").await;
    let total = clean.store.operations();
    assert!(total >= 10, "a full flow makes {total} store operations");
    eprintln!("a full flow makes {total} store operations");
    let mut runs = 0;
    for fault in [StoreFault::Fail, StoreFault::Timeout, StoreFault::LostAnswer] {
        for n in 1..=total + 1 {
            let mut run = fresh().await;
            run.store.fail_nth(n, fault);
            run.script().await;
            run.check_invariants(&format!("{fault:?} at store operation {n}"))
                .await;
            runs += 1;
        }
    }
    assert_eq!(runs, 3 * (total + 1));
}

#[test]
fn every_send_may_fail_or_be_delivered_but_reported_failed() {
    block_on(async {
        let mut clean = Run::new(false);
        clean.script().await;
        let total = clean.sender.sends();
        // Two codes and the "password changed" notice.
        assert_eq!(total, 3);
        for reveal in [false, true] {
            for fault in [
                SendFault::Fail(SendErrorKind::Unavailable),
                SendFault::Fail(SendErrorKind::InvalidNumber),
                SendFault::Delivered(SendErrorKind::Timeout),
            ] {
                for n in 1..=total {
                    let mut run = Run::new(reveal);
                    run.sender.fail_nth(n, fault);
                    run.script().await;
                    run.check_invariants(&format!("{fault:?} at send {n}, reveal {reveal}"))
                        .await;
                }
            }
        }
    });
}

#[test]
fn a_failed_send_voids_the_code_and_costs_no_attempt() {
    block_on(async {
        let run = Run::new(true);
        run.sender
            .fail_nth(1, SendFault::Delivered(SendErrorKind::Timeout));
        let ctx = RequestContext::without_client_ip();
        let e = run
            .recovery
            .request("alice@example.com", Some(alice()), &ctx)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Send(_)), "{e:?}");
        // The message did go out (the gateway lost its answer), but the code
        // in it no longer works, and the flow has all its attempts.
        let code = run.last_code().unwrap();
        let flows = run
            .store
            .inner()
            .find_flows(&Subject::Account(alice().id).key(), 10)
            .await
            .unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].failed_attempts, 0);
        assert_eq!(flows[0].state, FlowState::CodeSent);
        assert!(!run.store.inner().is_code_mac(&flows[0].code_mac));
        assert!(!verifies(&flows[0], &code, T0, &run.keys).await);
    });
}

#[test]
fn a_hanging_store_is_bounded_by_the_hosts_timeout() {
    block_on(async {
        let run = Run::new(false);
        run.store.fail_nth(1, StoreFault::Hang);
        let ctx = RequestContext::without_client_ip();
        let call = run.recovery.request("alice@example.com", Some(alice()), &ctx);
        let timed = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(timed.is_err(), "a hung store operation completed");
        // Nothing was applied, and the next call works.
        assert_eq!(run.store.inner().inner.flow_count(), 0);
        run.recovery
            .request(
                "alice@example.com",
                Some(alice()),
                &RequestContext::without_client_ip(),
            )
            .await
            .unwrap();
    });
}

#[test]
fn a_code_write_whose_answer_was_lost_leaves_no_unsent_code_valid() {
    block_on(async {
        let ctx = RequestContext::without_client_ip();
        let subject = Subject::Account(alice().id).key();
        // A request: counters (1), then the flow's creation (2) applies but
        // its answer is lost. The code is never sent, so it must not work.
        let run = Run::new(false);
        run.store.fail_nth(2, StoreFault::LostAnswer);
        let e = run
            .recovery
            .request("alice@example.com", Some(alice()), &ctx)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Store(_)), "{e:?}");
        let flows = run.store.inner().find_flows(&subject, 10).await.unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(run.sender.sends(), 0);
        assert!(
            !run.store.inner().is_code_mac(&flows[0].code_mac),
            "the unsent code is live"
        );
        run.check_invariants("lost creation").await;

        // A resend: load (1), counters (2), then the swap (3) applies but
        // its answer is lost.
        let run = Run::new(false);
        let flow = run
            .recovery
            .request("alice@example.com", Some(alice()), &ctx)
            .await
            .unwrap()
            .flow_id;
        run.clock.advance(Duration::from_secs(30));
        run.store.fail_nth(3, StoreFault::LostAnswer);
        let e = run.recovery.resend(&flow, &ctx).await.unwrap_err();
        assert!(matches!(e, Error::Store(_)), "{e:?}");
        let stored = run.store.inner().get_flow(&flow).await.unwrap().unwrap();
        assert_eq!(stored.sends, 2, "the resend applied");
        assert!(
            !run.store.inner().is_code_mac(&stored.code_mac),
            "the unsent code is live"
        );
        run.check_invariants("lost resend").await;
    });
}

#[test]
fn an_account_lock_is_stored_with_the_failure_that_reaches_the_limit() {
    // The account's limit (5 wrong codes an hour) is reached 55 minutes
    // into its failure window, so only the lock itself (1 hour from then)
    // keeps recovery locked once the window ends. Whatever store operation
    // after the counting one fails, and if the counting one applies with
    // its answer lost, the lock holds until its end.
    const MINUTE: Duration = Duration::from_secs(60);
    for (n, fault) in [(3, StoreFault::Fail), (2, StoreFault::LostAnswer)] {
        block_on(async {
            let policy = Policy::builder()
                .account_failures(5, 60 * MINUTE)
                .account_lockout(60 * MINUTE)
                .build()
                .unwrap();
            let run = Run::with_policy(policy);
            let ctx = RequestContext::without_client_ip();
            let request = || run.recovery.request("alice@example.com", Some(alice()), &ctx);
            let first = request().await.unwrap().flow_id;
            let code = run.last_code().unwrap();
            for _ in 0..4 {
                let e = run
                    .recovery
                    .verify(&first, &wrong(code.expose_secret()), &ctx)
                    .await;
                assert!(matches!(e, Err(Error::InvalidCode { .. })), "{e:?}");
            }
            run.clock.advance(55 * MINUTE);
            let locking_at = T0.saturating_add(55 * MINUTE);
            let second = request().await.unwrap().flow_id;
            let code = run.last_code().unwrap();
            // The verify's operations: the flow and the client's counters
            // (1), the wrong code with its counts (2), the support case (3).
            run.store.fail_nth(n, fault);
            let e = run
                .recovery
                .verify(&second, &wrong(code.expose_secret()), &ctx)
                .await
                .unwrap_err();
            let until = locking_at.saturating_add(60 * MINUTE);
            match fault {
                StoreFault::LostAnswer => assert!(matches!(e, Error::Store(_)), "{e:?}"),
                _ => assert!(
                    matches!(e, Error::Locked { until: Some(u), .. } if u == until),
                    "{fault:?} at {n}: {e:?}"
                ),
            }
            // Past the failure window, the lock alone holds, to its last
            // millisecond.
            run.clock
                .set(Timestamp::from_unix_millis(until.as_unix_millis() - 1));
            let e = request().await.unwrap_err();
            assert!(
                matches!(e, Error::Locked { until: Some(u), .. } if u == until),
                "{fault:?} at {n}: {e:?}"
            );
            run.clock.set(until);
            request().await.unwrap();
        });
    }
}

#[test]
fn a_recovery_code_whose_token_was_not_issued_can_be_used_again() {
    use std::collections::HashMap;

    use otp_recovery::Progress;
    use otp_recovery::factor::{FactorKind, Factors, RecoveryCodes, SecondFactor};

    // The code is claimed in the store before the write that issues the
    // token. When that write fails (or applies with its answer lost, so
    // the token reaches no one), the claim is given back: the saved code
    // is the user's way in, and no token was issued with it that anyone
    // holds.
    for fault in [StoreFault::Fail, StoreFault::LostAnswer] {
        block_on(async {
            let codes = RecoveryCodes::issue(&keys(), &alice().id, 2).unwrap();
            let policy = Policy::builder()
                .second_factor(SecondFactor::Required)
                .build()
                .unwrap();
            let mut run = Run::with_policy(policy);
            run.recovery = run.recovery.with_factors(HashMap::from([(
                alice().id,
                Factors::none().with_recovery_codes(codes.set().clone()),
            )]));
            let ctx = RequestContext::without_client_ip();
            let saved = codes.codes()[0].expose_secret().to_owned();
            let past_sms = async |run: &Run| {
                let requested = run
                    .recovery
                    .request("alice@example.com", Some(alice()), &ctx)
                    .await;
                let flow = requested.unwrap().flow_id;
                let sms = run.last_code().unwrap();
                let progress = run
                    .recovery
                    .verify_code(&flow, sms.expose_secret(), &ctx)
                    .await
                    .unwrap();
                assert!(matches!(progress, Progress::SecondFactor(_)), "{progress:?}");
                flow
            };
            let flow = past_sms(&run).await;
            // The factor check's operations: the flow with the client's
            // counters (1), the claim (2), the write that issues the token
            // (3).
            run.store.fail_nth(3, fault);
            let e = run
                .recovery
                .verify_factor(&flow, FactorKind::RecoveryCode, &saved, &ctx)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Store(_)), "{fault:?}: {e:?}");
            // Unless the write applied, the same flow takes the code; if
            // it did, the flow is used up and a new one takes it.
            let flow = match fault {
                StoreFault::LostAnswer => past_sms(&run).await,
                _ => flow,
            };
            let verified = run
                .recovery
                .verify_factor(&flow, FactorKind::RecoveryCode, &saved, &ctx)
                .await
                .unwrap();
            assert_eq!(verified.recovery_code_used, Some(0));
            // Used now: refused on the next flow.
            let flow = past_sms(&run).await;
            let e = run
                .recovery
                .verify_factor(&flow, FactorKind::RecoveryCode, &saved, &ctx)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::InvalidFactorCode { .. }), "{fault:?}: {e:?}");
        });
    }
}

#[test]
fn a_support_action_whose_read_fails_is_audited() {
    use otp_recovery::events::{EventKind, RecordingSink, SupportAction};
    use otp_recovery::support::SupportReference;

    // Support actions are audited before they act; a store that fails the
    // action's first read must not take the audit event with it.
    block_on(async {
        let mut run = Run::new(false);
        let sink = RecordingSink::new();
        run.recovery = run.recovery.with_events(sink.clone());
        let ctx = RequestContext::without_client_ip();
        let requested = run
            .recovery
            .request("alice@example.com", Some(alice()), &ctx)
            .await;
        let flow = requested.unwrap().flow_id;
        let agent = Agent::new("dana@support").unwrap();
        let subject = Subject::Account(alice().id);
        let reference = SupportReference::parse("ABCD-1234").unwrap();
        let support = run.recovery.support();
        for action in [
            SupportAction::Lookup,
            SupportAction::Unlock,
            SupportAction::Cancel,
        ] {
            run.store.fail_nth(1, StoreFault::Fail);
            let answer = match action {
                SupportAction::Lookup => support.lookup_reference(&agent, "caller", &reference).await.err(),
                SupportAction::Unlock => support.unlock(&agent, "caller", &subject).await.err(),
                _ => support.cancel(&agent, "caller", &flow).await.err(),
            };
            assert!(matches!(answer, Some(Error::Store(_))), "{action:?}: {answer:?}");
            let audited = sink.events().into_iter().any(|e| {
                matches!(&e.kind, EventKind::Support { action: a, agent, .. }
                    if *a == action && agent == "dana@support")
            });
            assert!(audited, "{action:?} left no audit event");
        }
    });
}

#[test]
fn a_store_that_answers_too_few_counter_values_gets_a_typed_error() {
    use otp_recovery::store::StoreError;

    // A broken store (one value short for the counters it was given) is
    // an error, never a panic or a limit read off the wrong counter.
    block_on(async {
        let store = Arc::new(common::Observed::default());
        let sender = RecordingSender::new();
        let recovery = Recovery::new(store.clone(), sender.clone(), keys());
        let ctx = RequestContext::without_client_ip();
        let flow = recovery
            .request("alice@example.com", Some(alice()), &ctx)
            .await
            .unwrap()
            .flow_id;
        store
            .short_answers
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let e = recovery
            .request("alice@example.com", Some(alice()), &ctx)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Store(StoreError::Decode(_))), "{e:?}");
        let e = recovery.verify(&flow, "000000", &ctx).await.unwrap_err();
        assert!(matches!(e, Error::Store(StoreError::Decode(_))), "{e:?}");
    });
}
