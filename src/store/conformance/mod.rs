//! The conformance suite every [`CodeStore`] must pass: the semantics of
//! each method, expiry, counter windows, and races of many concurrent tasks
//! on one flow.
//!
//! One macro call in a test file gives one `#[test]` per check:
//!
//! ```
//! use std::sync::Arc;
//! use otp_recovery::store::MemoryStore;
//!
//! otp_recovery::code_store_conformance! {
//!     store: async { MemoryStore::new() },
//!     // Two handles on the same data, as two host processes would have.
//!     two_instances: async {
//!         let shared = Arc::new(MemoryStore::new());
//!         (shared.clone(), shared)
//!     },
//! }
//! # fn main() {}
//! ```
//!
//! The `store` expression is evaluated once per check (it may connect to a
//! server).
//! Checks use fresh random ids, so they may share one database, and they
//! drive the store through [`Recovery`] where a rule spans
//! several calls. Each check is also a public async function, and [`run`]
//! runs them all in sequence against one store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Barrier;

mod limits;

pub use limits::*;

use super::{CodeStore, Counter, CounterValue, Result as StoreResult};
use crate::case::{SupportCase, SupportReference};
use crate::clock::{Clock, ManualClock, SystemClock, Timestamp};
use crate::code::{KeyRing, Mac};
use crate::error::Error;
use crate::id::{AccountId, FlowId};
use crate::limits::Limits;
use crate::machine::{self, Opening};
use crate::phone::PhoneNumber;
use crate::policy::Policy;
use crate::record::{DecoyId, FlowRecord, FlowState, Subject};
use crate::recovery::{Account, Recovery, RequestContext};
use crate::secret::ServerKey;
use crate::sms::RecordingSender;

/// Generates one `#[test]` per conformance check, each running on a
/// multi-threaded runtime.
///
/// - `store:` an expression of type `impl Future<Output = impl CodeStore +
///   'static>`, evaluated once per check (it may connect to a server);
/// - `two_instances:` an expression of type `impl Future<Output = (A, A)>`
///   where `A: CodeStore + 'static`: two stores on the *same* data, as two
///   processes of the host would open them (two pools, two connections,
///   or two handles of one in-memory store), for
///   [`two_instances_hold_every_limit`].
///
/// With `optional:` in front, both yield an `Option`, and `None` skips the
/// check (see [`server_url`] for stores that need a server).
#[macro_export]
macro_rules! code_store_conformance {
    (optional: store: $make:expr, two_instances: $pair:expr $(,)?) => {
        $crate::code_store_conformance!(@optional $make;
            create_then_get_returns_every_field,
            get_of_an_unknown_flow_is_none,
            create_refuses_a_duplicate_id,
            create_supersedes_the_accounts_open_flow,
            decoys_supersede_per_subject,
            compare_and_swap_applies_only_on_the_expected_version,
            compare_and_swap_counting_counts_only_when_it_writes,
            counters_count_per_key_and_per_window,
            counters_hold_windows_of_a_day_and_a_week,
            conditional_counters_count_only_when_their_condition_opened,
            a_refused_call_undoes_its_guarded_counts,
            load_counting_returns_the_flow_and_the_counts,
            find_flows_lists_a_subjects_recent_flows_newest_first,
            cases_are_stored_replaced_and_found_by_reference,
            deleted_counters_start_again_from_zero,
            purge_removes_exactly_the_expired,
            expiry_is_decided_to_the_millisecond,
            concurrent_counter_increments_are_all_counted,
            concurrent_compare_and_swaps_have_one_winner,
            concurrent_counting_swaps_count_once,
            counting_swaps_on_many_flows_lose_no_count,
            counters_raced_in_opposite_orders_all_succeed,
            a_max_holds_under_concurrent_calls,
            conditional_counters_hold_under_concurrent_calls,
            concurrent_creates_leave_one_open_flow_per_account,
            creates_raced_on_many_subjects_leave_one_open_flow_each,
            wrong_code_race_evaluates_exactly_the_attempt_limit,
            right_code_race_issues_exactly_one_token,
            reset_race_completes_exactly_once,
            resend_race_sends_exactly_once,
            request_races_hold_the_send_limits,
        );
        #[test]
        fn two_instances_hold_every_limit() {
            $crate::store::conformance::block_on(async {
                if let Some((a, b)) = $pair.await {
                    $crate::store::conformance::two_instances_hold_every_limit(
                        ::std::sync::Arc::new(a),
                        ::std::sync::Arc::new(b),
                    )
                    .await;
                }
            });
        }
    };
    (@optional $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::store::conformance::block_on(async {
                    if let Some(store) = $make.await {
                        $crate::store::conformance::$check(::std::sync::Arc::new(store)).await;
                    }
                });
            }
        )*
    };
    (store: $make:expr, two_instances: $pair:expr $(,)?) => {
        $crate::code_store_conformance!(
            optional: store: async { ::core::option::Option::Some($make.await) },
            two_instances: async { ::core::option::Option::Some($pair.await) },
        );
    };
}

/// The URL of a test server from the environment variable `var`.
///
/// - Set: returned; the caller must fail if the server is unreachable.
/// - Unset, and `CI` is set: panics, so that CI cannot pass with store
///   tests silently skipped.
/// - Unset otherwise: prints a notice to stderr and returns `None`, so a
///   plain `cargo test` on a machine without the server skips those tests.
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} must be set in CI: the store tests that need it would be skipped")
        }
        _ => {
            eprintln!("note: {var} is not set; skipping the tests that need that server");
            None
        }
    }
}

/// Runs `future` to completion on a fresh multi-threaded runtime (what the
/// macro's tests use).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Runs every check in sequence against one store (the two-instance check
/// with two host instances over this one store).
pub async fn run<S: CodeStore + 'static>(store: Arc<S>) {
    create_then_get_returns_every_field(store.clone()).await;
    get_of_an_unknown_flow_is_none(store.clone()).await;
    create_refuses_a_duplicate_id(store.clone()).await;
    create_supersedes_the_accounts_open_flow(store.clone()).await;
    decoys_supersede_per_subject(store.clone()).await;
    compare_and_swap_applies_only_on_the_expected_version(store.clone()).await;
    compare_and_swap_counting_counts_only_when_it_writes(store.clone()).await;
    counters_count_per_key_and_per_window(store.clone()).await;
    counters_hold_windows_of_a_day_and_a_week(store.clone()).await;
    conditional_counters_count_only_when_their_condition_opened(store.clone()).await;
    a_refused_call_undoes_its_guarded_counts(store.clone()).await;
    load_counting_returns_the_flow_and_the_counts(store.clone()).await;
    find_flows_lists_a_subjects_recent_flows_newest_first(store.clone()).await;
    cases_are_stored_replaced_and_found_by_reference(store.clone()).await;
    deleted_counters_start_again_from_zero(store.clone()).await;
    purge_removes_exactly_the_expired(store.clone()).await;
    expiry_is_decided_to_the_millisecond(store.clone()).await;
    concurrent_counter_increments_are_all_counted(store.clone()).await;
    concurrent_compare_and_swaps_have_one_winner(store.clone()).await;
    concurrent_counting_swaps_count_once(store.clone()).await;
    counting_swaps_on_many_flows_lose_no_count(store.clone()).await;
    counters_raced_in_opposite_orders_all_succeed(store.clone()).await;
    a_max_holds_under_concurrent_calls(store.clone()).await;
    conditional_counters_hold_under_concurrent_calls(store.clone()).await;
    concurrent_creates_leave_one_open_flow_per_account(store.clone()).await;
    creates_raced_on_many_subjects_leave_one_open_flow_each(store.clone()).await;
    wrong_code_race_evaluates_exactly_the_attempt_limit(store.clone()).await;
    right_code_race_issues_exactly_one_token(store.clone()).await;
    reset_race_completes_exactly_once(store.clone()).await;
    resend_race_sends_exactly_once(store.clone()).await;
    request_races_hold_the_send_limits(store.clone()).await;
    two_instances_hold_every_limit(store.clone(), store).await;
}

// ---- helpers ----

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", FlowId::generate().expect("randomness"))
}

fn account() -> AccountId {
    AccountId::new(unique("conformance")).expect("valid id")
}

fn phone() -> PhoneNumber {
    PhoneNumber::parse("+14155550123").expect("valid phone")
}

/// Now, with a fixed odd millisecond (537) so that a store that keeps
/// whole seconds fails on every run, not one run in a thousand: stores that
/// expire keys natively measure their TTLs against real time, so the checks
/// stay within a second of it.
fn now() -> Timestamp {
    let millis = SystemClock.now().as_unix_millis();
    Timestamp::from_unix_millis(millis - millis % 1000 + 537)
}

fn decoy() -> Subject {
    Subject::Unknown(DecoyId::from_bytes(
        *FlowId::generate().expect("randomness").as_bytes(),
    ))
}

fn flow_at(now: Timestamp, subject: Subject) -> FlowRecord {
    let phone = matches!(subject, Subject::Account(_)).then(phone);
    let opening = Opening {
        id: FlowId::generate().expect("randomness"),
        subject,
        phone,
        key_id: 1,
        code_mac: random_mac(),
        prior_failures: 0,
    };
    machine::open(&Policy::default(), now, opening)
}

fn of(account: &AccountId) -> Subject {
    Subject::Account(account.clone())
}

fn random_mac() -> Mac {
    let mut bytes = [0u8; 32];
    crate::rng::fill_random(&mut bytes).expect("randomness");
    Mac::from_bytes(bytes)
}

async fn get<S: CodeStore>(store: &S, id: &FlowId) -> FlowRecord {
    store
        .get_flow(id)
        .await
        .expect("get_flow")
        .expect("the flow is stored")
}

/// Wraps the store under test so every call yields to the scheduler before
/// and after it: racing tasks then interleave between a load and its
/// compare-and-swap even over a store that never waits (in memory), which
/// is where lost updates would hide.
struct Interleaved<S>(Arc<S>);

#[async_trait]
impl<S: CodeStore> CodeStore for Interleaved<S> {
    async fn create_flow(&self, flow: &FlowRecord) -> StoreResult<()> {
        tokio::task::yield_now().await;
        let out = self.0.create_flow(flow).await;
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
        id: &FlowId,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<(Option<FlowRecord>, Vec<CounterValue>)> {
        tokio::task::yield_now().await;
        let out = self.0.load_counting(id, counters, now).await;
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

type TestRecovery<S> = Recovery<Interleaved<S>, RecordingSender, ManualClock>;

fn recovery<S: CodeStore>(store: Arc<S>) -> (Arc<TestRecovery<S>>, RecordingSender, ManualClock) {
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
async fn race<T, F, Fut>(n: usize, task: F) -> Vec<T>
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
                in_turn(group).await
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

async fn requested_flow<S: CodeStore>(recovery: &TestRecovery<S>) -> FlowId {
    let account = Account::new(account(), phone());
    recovery
        .request("someone@example.com", Some(account), &RequestContext::none())
        .await
        .expect("request")
        .flow_id
}

// ---- semantics ----

/// A created flow reads back equal, field for field, for real and decoy
/// flows, with and without a token.
pub async fn create_then_get_returns_every_field<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let mut real = flow_at(t, of(&account()));
    real.token_mac = Some(Mac::from_bytes([0xa5; 32]));
    real.token_expires_at = t.saturating_add(Duration::from_secs(600));
    real.failed_attempts = 3;
    real.prior_failures = 7;
    real.updated_at = t.saturating_add(Duration::from_secs(5));
    real.sends = 2;
    real.key_id = u32::MAX;
    let decoy = flow_at(t, decoy());
    for flow in [real, decoy] {
        store.create_flow(&flow).await.expect("create_flow");
        assert_eq!(
            get(&*store, &flow.id).await,
            flow,
            "a stored flow must read back unchanged"
        );
    }
}

/// `get_flow` of an id never stored is `None`, not an error.
pub async fn get_of_an_unknown_flow_is_none<S: CodeStore>(store: Arc<S>) {
    let id = FlowId::generate().expect("randomness");
    assert_eq!(store.get_flow(&id).await.expect("get_flow"), None);
}

/// Creating a second flow with an existing id fails and changes nothing.
pub async fn create_refuses_a_duplicate_id<S: CodeStore>(store: Arc<S>) {
    let flow = flow_at(now(), of(&account()));
    store.create_flow(&flow).await.expect("create_flow");
    let mut again = flow.clone();
    again.failed_attempts = 4;
    let err = store
        .create_flow(&again)
        .await
        .expect_err("a duplicate id must be refused");
    assert_eq!(err, super::StoreError::Duplicate);
    assert_eq!(
        get(&*store, &flow.id).await,
        flow,
        "a refused create must change nothing"
    );
}

/// A new flow supersedes its subject's open flow (code sent or verified),
/// bumping its version, and leaves closed flows and other subjects alone.
pub async fn create_supersedes_the_accounts_open_flow<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let alice = account();
    let first = flow_at(t, of(&alice));
    let bobs = flow_at(t, of(&account()));
    store.create_flow(&first).await.expect("create");
    store.create_flow(&bobs).await.expect("create");

    let later = t.saturating_add(Duration::from_secs(1));
    let second = flow_at(later, of(&alice));
    store.create_flow(&second).await.expect("create");
    let old = get(&*store, &first.id).await;
    assert_eq!(
        old.state,
        FlowState::Superseded,
        "the earlier open flow must be superseded"
    );
    assert_eq!(
        old.version,
        first.version + 1,
        "superseding must bump the version"
    );
    assert_eq!(old.updated_at, later);
    assert_eq!(get(&*store, &second.id).await, second);
    assert_eq!(
        get(&*store, &bobs.id).await,
        bobs,
        "another account's flow must not change"
    );

    // A verified flow is open too.
    let mut verified = second.clone();
    verified.state = FlowState::Verified;
    verified.version += 1;
    assert!(
        store
            .compare_and_swap(second.version, &verified)
            .await
            .expect("cas")
    );
    let third = flow_at(later, of(&alice));
    store.create_flow(&third).await.expect("create");
    assert_eq!(get(&*store, &second.id).await.state, FlowState::Superseded);

    // So is a flow awaiting a second factor.
    let mut pending = third.clone();
    pending.state = FlowState::FactorPending;
    pending.factor = Some(crate::record::FactorProgress::new(
        crate::factor::FactorSet::ALL,
        later.saturating_add(Duration::from_secs(600)),
    ));
    pending.version += 1;
    assert!(
        store
            .compare_and_swap(third.version, &pending)
            .await
            .expect("cas")
    );
    let after_pending = flow_at(later, of(&alice));
    store.create_flow(&after_pending).await.expect("create");
    let superseded = get(&*store, &third.id).await;
    assert_eq!(
        superseded.state,
        FlowState::Superseded,
        "a flow awaiting a second factor must be superseded"
    );
    assert_eq!(superseded.factor, pending.factor, "its factor step must be kept");

    // A completed flow is closed: it stays as it is.
    let mut completed = after_pending.clone();
    completed.state = FlowState::Completed;
    completed.version += 1;
    assert!(
        store
            .compare_and_swap(after_pending.version, &completed)
            .await
            .expect("cas")
    );
    let fourth = flow_at(later, of(&alice));
    store.create_flow(&fourth).await.expect("create");
    assert_eq!(
        get(&*store, &after_pending.id).await,
        completed,
        "a closed flow must not be touched"
    );
    assert_eq!(
        get(&*store, &first.id).await,
        old,
        "an already superseded flow must not change again"
    );
}

/// Decoy flows supersede the open flow of the same decoy subject, exactly
/// like accounts, and nothing else.
pub async fn decoys_supersede_per_subject<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let real = flow_at(t, of(&account()));
    store.create_flow(&real).await.expect("create");
    let nobody = decoy();
    let first = flow_at(t, nobody.clone());
    let other = flow_at(t, decoy());
    store.create_flow(&first).await.expect("create");
    store.create_flow(&other).await.expect("create");
    let second = flow_at(t, nobody);
    store.create_flow(&second).await.expect("create");
    assert_eq!(get(&*store, &first.id).await.state, FlowState::Superseded);
    assert_eq!(get(&*store, &second.id).await, second);
    assert_eq!(
        get(&*store, &other.id).await,
        other,
        "another decoy must not change"
    );
    assert_eq!(
        get(&*store, &real.id).await,
        real,
        "an account's flow must not change"
    );
}

/// Compare-and-swap writes only when the stored version is the expected
/// one, and reports `false` for a stale version or a missing flow.
pub async fn compare_and_swap_applies_only_on_the_expected_version<S: CodeStore>(store: Arc<S>) {
    let flow = flow_at(now(), of(&account()));
    store.create_flow(&flow).await.expect("create");
    let mut next = flow.clone();
    next.version += 1;
    next.failed_attempts = 1;
    assert!(store.compare_and_swap(flow.version, &next).await.expect("cas"));
    assert_eq!(get(&*store, &flow.id).await, next);

    let mut stale = next.clone();
    stale.failed_attempts = 5;
    stale.version += 1;
    assert!(
        !store.compare_and_swap(flow.version, &stale).await.expect("cas"),
        "a stale expected version must not write"
    );
    assert_eq!(
        get(&*store, &flow.id).await,
        next,
        "a failed swap must change nothing"
    );

    let missing = flow_at(now(), decoy());
    assert!(
        !store
            .compare_and_swap(missing.version, &missing)
            .await
            .expect("cas")
    );
    assert_eq!(
        store.get_flow(&missing.id).await.expect("get"),
        None,
        "a swap must not create"
    );
}

/// A counting swap increments its counters when, and only when, it writes.
pub async fn compare_and_swap_counting_counts_only_when_it_writes<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let flow = flow_at(t, of(&account()));
    store.create_flow(&flow).await.expect("create");
    let key = unique("counting");
    let counter = [Counter::new(&key, hour, 1)];
    let mut next = flow.clone();
    next.version += 1;
    next.failed_attempts = 1;
    let counts = store
        .compare_and_swap_counting(flow.version, &next, &counter, t)
        .await
        .expect("cas");
    let opened = CounterValue::new(1, Some(t.saturating_add(hour)));
    assert_eq!(counts, Some(vec![opened]), "a winning swap must count");
    assert_eq!(get(&*store, &flow.id).await, next);
    let lost = store
        .compare_and_swap_counting(flow.version, &next, &counter, t)
        .await
        .expect("cas");
    assert_eq!(lost, None, "a losing swap must report that it did not write");
    let read = store
        .increment_counters(&[Counter::read(&key, hour)], t)
        .await
        .expect("read");
    assert_eq!(read, [opened], "a losing swap must not count");
}

/// A counter's window opens at its first increment and lasts its length to
/// the millisecond; counts add per key; reads never open a window.
pub async fn counters_count_per_key_and_per_window<S: CodeStore>(store: Arc<S>) {
    let minute = Duration::from_secs(60);
    let start = now();
    let end = start.saturating_add(minute);
    let last = Timestamp::from_unix_millis(end.as_unix_millis() - 1);
    let (a, b, c) = (unique("counter-a"), unique("counter-b"), unique("counter-c"));

    let none = store
        .increment_counters(&[Counter::read(&a, minute)], start)
        .await
        .expect("read");
    assert_eq!(
        none,
        [CounterValue::default()],
        "a counter never incremented reads as zero, no window"
    );
    let counts = store
        .increment_counters(
            &[
                Counter::new(&a, minute, 1),
                Counter::new(&b, minute, 3),
                Counter::new(&a, minute, 2),
            ],
            start,
        )
        .await
        .expect("increment");
    let window = Some(end);
    assert_eq!(
        counts,
        [
            CounterValue::new(1, window),
            CounterValue::new(3, window),
            CounterValue::new(3, window)
        ],
        "values after each increment, a key repeated in one call included"
    );
    let read = store
        .increment_counters(&[Counter::read(&a, minute)], last)
        .await
        .expect("read");
    assert_eq!(
        read,
        [CounterValue::new(3, window)],
        "the last millisecond of the window sees its count"
    );
    let fresh = store
        .increment_counters(&[Counter::new(&a, minute, 1), Counter::read(&b, minute)], end)
        .await
        .expect("increment");
    let next = Some(end.saturating_add(minute));
    assert_eq!(
        fresh,
        [CounterValue::new(1, next), CounterValue::default()],
        "at the window's end the count starts again, and a read sees no window"
    );
    // A read does not open a window: an increment inside the window a read
    // would have opened opens a window of its own.
    let later = start.saturating_add(Duration::from_secs(30));
    store
        .increment_counters(&[Counter::read(&c, minute)], start)
        .await
        .expect("read");
    let opened = store
        .increment_counters(&[Counter::new(&c, minute, 1)], later)
        .await
        .expect("increment");
    assert_eq!(opened, [CounterValue::new(1, Some(later.saturating_add(minute)))]);
    assert_eq!(
        store.increment_counters(&[], start).await.expect("empty"),
        Vec::<CounterValue>::new()
    );
}

/// A conditional counter increments only when the counter it names was
/// opened by the same call: it counts distinct pairs.
pub async fn conditional_counters_count_only_when_their_condition_opened<S: CodeStore>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let distinct = unique("distinct");
    let call = |pair: &str| {
        vec![
            Counter::new(pair, hour, 1),
            Counter::new(&distinct, hour, 1).only_if_opened(0),
        ]
    };
    let (a, b) = (unique("pair-a"), unique("pair-b"));
    let first = store.increment_counters(&call(&a), t).await.expect("increment");
    assert_eq!(first[1].count, 1, "a new pair counts");
    let again = store.increment_counters(&call(&a), t).await.expect("increment");
    assert_eq!(
        (again[0].count, again[1].count),
        (2, 1),
        "a repeated pair does not count again"
    );
    let other = store.increment_counters(&call(&b), t).await.expect("increment");
    assert_eq!(other[1].count, 2, "another new pair counts");
    assert!(first[0].opened(&Counter::new(&a, hour, 1), t));
    assert!(!again[0].opened(&Counter::new(&a, hour, 1), t));
}

/// A call in which a counter ends above its `max` is refused: the guarded
/// counters' increments are undone (a window the call opened leaves
/// nothing behind), unguarded ones stay, and the values returned are those
/// before the undo.
pub async fn a_refused_call_undoes_its_guarded_counts<S: CodeStore>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let (limit, guarded, fresh, plain) = (unique("lim"), unique("grd"), unique("fresh"), unique("plain"));
    let call = |fresh: &str| {
        vec![
            Counter::new(&limit, hour, 1).with_max(1),
            Counter::new(&guarded, hour, 1).guarded(),
            Counter::new(fresh, hour, 1).guarded(),
            Counter::new(&plain, hour, 1),
        ]
    };
    let first = store
        .increment_counters(&call(&unique("f1")), t)
        .await
        .expect("increment");
    assert_eq!(first[0].count, 1, "at its maximum the call is admitted");
    let refused = store
        .increment_counters(&call(&fresh), t)
        .await
        .expect("increment");
    assert_eq!(refused[0].count, 2, "the values are those before the undo");
    assert!(Counter::refused(&call(&fresh), &refused));
    let read = |k: &str| Counter::read(k, hour);
    let after = store
        .increment_counters(&[read(&limit), read(&guarded), read(&fresh), read(&plain)], t)
        .await
        .expect("read");
    assert_eq!(after[0].count, 1, "the limit's own increment was undone");
    assert_eq!(after[1].count, 1, "a guarded increment was undone");
    assert_eq!(
        after[2],
        CounterValue::default(),
        "a window the refused call opened is gone"
    );
    assert_eq!(after[3].count, 2, "an unguarded counter keeps its count");
}

/// `load_counting` returns the flow (or `None`) and applies its counters.
pub async fn load_counting_returns_the_flow_and_the_counts<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let flow = flow_at(t, of(&account()));
    store.create_flow(&flow).await.expect("create");
    let key = unique("load");
    let (got, values) = store
        .load_counting(&flow.id, &[Counter::new(&key, hour, 2)], t)
        .await
        .expect("load");
    assert_eq!(got, Some(flow));
    assert_eq!(
        values,
        [CounterValue::new(2, Some(t.saturating_add(hour)))],
        "load_counting must apply its counters"
    );
    let missing = FlowId::generate().expect("randomness");
    let (none, values) = store
        .load_counting(&missing, &[Counter::read(&key, hour)], t)
        .await
        .expect("load");
    assert_eq!(none, None);
    assert_eq!(values[0].count, 2);
    let (_, empty) = store.load_counting(&missing, &[], t).await.expect("load");
    assert!(empty.is_empty());
}

/// `find_flows` lists a subject's flows, newest first, up to the limit,
/// and nobody else's.
pub async fn find_flows_lists_a_subjects_recent_flows_newest_first<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let alice = account();
    let mut ids = Vec::new();
    for i in 0..3u64 {
        let flow = flow_at(t.saturating_add(Duration::from_secs(i)), of(&alice));
        store.create_flow(&flow).await.expect("create");
        ids.push(flow.id);
    }
    store
        .create_flow(&flow_at(t, of(&account())))
        .await
        .expect("create");
    let found = store.find_flows(&of(&alice).key(), 10).await.expect("find");
    let found_ids: Vec<FlowId> = found.iter().map(|f| f.id).collect();
    assert_eq!(
        found_ids,
        [ids[2], ids[1], ids[0]],
        "newest first, only this subject's"
    );
    assert_eq!(found[0].state, FlowState::CodeSent);
    assert_eq!(
        found[1].state,
        FlowState::Superseded,
        "find_flows returns the stored records"
    );
    assert_eq!(
        store.find_flows(&of(&alice).key(), 2).await.expect("find").len(),
        2
    );
    assert!(
        store
            .find_flows(&of(&account()).key(), 10)
            .await
            .expect("find")
            .is_empty()
    );
}

/// Cases are stored under their reference, replaced by a newer one with
/// the same reference, and purged after `purge_after`.
pub async fn cases_are_stored_replaced_and_found_by_reference<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let mut bytes = [0u8; 5];
    crate::rng::fill_random(&mut bytes).expect("randomness");
    let reference = SupportReference::from_bits(bytes);
    let mut case = SupportCase {
        reference,
        subject: of(&account()),
        flow: FlowId::generate().expect("randomness"),
        opened_at: t,
        locked_until: t.saturating_add(Duration::from_secs(5)),
        unlocked_at: None,
        // Soon: purging at it also deletes the counters that end by then,
        // and checks that share a database must not lose theirs.
        purge_after: t.saturating_add(PURGE_HORIZON),
    };
    assert_eq!(store.get_case(&reference).await.expect("get"), None);
    store.put_case(&case).await.expect("put");
    assert_eq!(store.get_case(&reference).await.expect("get"), Some(case.clone()));
    case.unlocked_at = Some(t.saturating_add(Duration::from_secs(1)));
    store.put_case(&case).await.expect("put");
    assert_eq!(store.get_case(&reference).await.expect("get"), Some(case.clone()));
    store.purge_expired(case.purge_after).await.expect("purge");
    assert_eq!(
        store.get_case(&reference).await.expect("get"),
        None,
        "purged at purge_after"
    );
}

/// Deleted counters read as zero and open a new window on the next count.
pub async fn deleted_counters_start_again_from_zero<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let (a, b) = (unique("delete-a"), unique("delete-b"));
    store
        .increment_counters(&[Counter::new(&a, hour, 3), Counter::new(&b, hour, 1)], t)
        .await
        .expect("increment");
    store
        .delete_counters(&[a.clone(), unique("never-existed")])
        .await
        .expect("delete");
    let later = t.saturating_add(Duration::from_secs(5));
    let values = store
        .increment_counters(
            &[
                Counter::read(&a, hour),
                Counter::read(&b, hour),
                Counter::new(&a, hour, 1),
            ],
            later,
        )
        .await
        .expect("read");
    assert_eq!(
        values[0],
        CounterValue::default(),
        "a deleted counter reads as zero"
    );
    assert_eq!(values[1].count, 1, "other counters stay");
    assert_eq!(values[2], CounterValue::new(1, Some(later.saturating_add(hour))));
}

/// How far ahead of real time the checks ever purge. Checks share one
/// database, so every counter a check relies on ends later than this.
const PURGE_HORIZON: Duration = Duration::from_secs(10);

/// Purging deletes flows whose `purge_after` is at or before `now`, keeps
/// later ones, and a purged subject can open a new flow.
pub async fn purge_removes_exactly_the_expired<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let alice = account();
    let mut expiring = flow_at(t, of(&alice));
    expiring.purge_after = t.saturating_add(PURGE_HORIZON);
    let mut staying = flow_at(t, of(&account()));
    staying.purge_after = t.saturating_add(PURGE_HORIZON + Duration::from_millis(1));
    store.create_flow(&expiring).await.expect("create");
    store.create_flow(&staying).await.expect("create");

    let just_before = Timestamp::from_unix_millis(expiring.purge_after.as_unix_millis() - 1);
    store.purge_expired(just_before).await.expect("purge");
    assert!(
        store.get_flow(&expiring.id).await.expect("get").is_some(),
        "purged a millisecond early"
    );
    store.purge_expired(expiring.purge_after).await.expect("purge");
    assert_eq!(
        store.get_flow(&expiring.id).await.expect("get"),
        None,
        "not purged at purge_after"
    );
    assert_eq!(get(&*store, &staying.id).await, staying, "a live flow was purged");

    let fresh = flow_at(expiring.purge_after, of(&alice));
    store.create_flow(&fresh).await.expect("create after purge");
    assert_eq!(get(&*store, &fresh.id).await, fresh);
}

/// Through the store, a code verifies at the last millisecond of its life
/// and is expired at the first millisecond after (timestamps keep their
/// milliseconds).
pub async fn expiry_is_decided_to_the_millisecond<S: CodeStore>(store: Arc<S>) {
    let (recovery, sender, clock) = recovery(store);
    let ttl = recovery.policy().code_ttl();
    let start = clock.now();

    let flow = requested_flow(&recovery).await;
    clock.set(Timestamp::from_unix_millis(
        start.saturating_add(ttl).as_unix_millis() - 1,
    ));
    let code = sender.last_code().expect("a code was sent");
    recovery
        .verify(&flow, code.expose_secret(), &RequestContext::none())
        .await
        .expect("the code must verify at its last valid millisecond");

    clock.set(start);
    let flow = requested_flow(&recovery).await;
    let code = sender.last_code().expect("a code was sent");
    clock.set(start.saturating_add(ttl));
    let err = recovery
        .verify(&flow, code.expose_secret(), &RequestContext::none())
        .await
        .expect_err("expired");
    assert!(
        matches!(err, Error::Expired),
        "expected Expired at the TTL, got {err:?}"
    );
}

// ---- races ----

const RACERS: usize = 100;

/// Many tasks incrementing one counter lose no increment.
pub async fn concurrent_counter_increments_are_all_counted<S: CodeStore + 'static>(store: Arc<S>) {
    let key = unique("race-counter");
    let hour = Duration::from_secs(3600);
    let t = now();
    race(RACERS, |_| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            for _ in 0..10 {
                store
                    .increment_counters(&[Counter::new(&key, hour, 1)], t)
                    .await
                    .expect("increment");
            }
        }
    })
    .await;
    let read = store
        .increment_counters(&[Counter::read(&key, hour)], t)
        .await
        .expect("read");
    assert_eq!(
        read[0].count,
        (RACERS * 10) as u64,
        "concurrent increments were lost"
    );
    assert_eq!(
        read[0].resets_at,
        Some(t.saturating_add(hour)),
        "one window, opened once"
    );
}

/// Of many tasks swapping from the same version, exactly one wins.
pub async fn concurrent_compare_and_swaps_have_one_winner<S: CodeStore + 'static>(store: Arc<S>) {
    let flow = flow_at(now(), of(&account()));
    store.create_flow(&flow).await.expect("create");
    let wins = race(RACERS, |i| {
        let (store, flow) = (store.clone(), flow.clone());
        async move {
            let mut next = flow.clone();
            next.version += 1;
            next.failed_attempts = i as u32;
            store.compare_and_swap(flow.version, &next).await.expect("cas")
        }
    })
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "one version, one winner");
    assert_eq!(get(&*store, &flow.id).await.version, flow.version + 1);
}

/// Of many counting swaps from one version, one writes and counts once.
pub async fn concurrent_counting_swaps_count_once<S: CodeStore + 'static>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let flow = flow_at(t, of(&account()));
    store.create_flow(&flow).await.expect("create");
    let key = unique("race-counting");
    let wins = race(RACERS, |_| {
        let (store, flow, key) = (store.clone(), flow.clone(), key.clone());
        async move {
            let mut next = flow.clone();
            next.version += 1;
            let counter = [Counter::new(&key, hour, 1)];
            store
                .compare_and_swap_counting(flow.version, &next, &counter, t)
                .await
                .expect("cas")
        }
    })
    .await;
    assert_eq!(wins.iter().filter(|w| w.is_some()).count(), 1);
    let read = store
        .increment_counters(&[Counter::read(&key, hour)], t)
        .await
        .expect("read");
    assert_eq!(read[0].count, 1);
}

/// Calls naming the same counters in opposite orders, raced, all succeed
/// and lose no count (no deadlock between them).
pub async fn counters_raced_in_opposite_orders_all_succeed<S: CodeStore + 'static>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let (a, b) = (unique("order-a"), unique("order-b"));
    race(16, |i| {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        async move {
            for _ in 0..20 {
                let (x, y) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let call = [Counter::new(x, hour, 1), Counter::new(y, hour, 1)];
                store
                    .increment_counters(&call, t)
                    .await
                    .expect("no call may fail");
            }
        }
    })
    .await;
    let read = store
        .increment_counters(&[Counter::read(&a, hour), Counter::read(&b, hour)], t)
        .await
        .expect("read");
    assert_eq!((read[0].count, read[1].count), (320, 320), "counts were lost");
}

/// Many concurrent creates for one subject leave exactly one open flow.
pub async fn concurrent_creates_leave_one_open_flow_per_account<S: CodeStore + 'static>(store: Arc<S>) {
    let alice = account();
    let t = now();
    let ids = race(RACERS / 2, |_| {
        let (store, alice) = (store.clone(), alice.clone());
        async move {
            let flow = flow_at(t, of(&alice));
            store.create_flow(&flow).await.expect("create");
            flow.id
        }
    })
    .await;
    let mut open = 0;
    for id in &ids {
        open += usize::from(get(&*store, id).await.state.is_open());
    }
    assert_eq!(open, 1, "exactly one flow of the account may stay open");
}

/// 1,000 concurrent wrong codes on one flow with 5 attempts: exactly 5 are
/// evaluated (4 with attempts left, the 5th locks), every other call is
/// refused as locked, and the stored flow counts exactly 5 failures.
pub async fn wrong_code_race_evaluates_exactly_the_attempt_limit<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, _) = recovery(store.clone());
    let flow = requested_flow(&recovery).await;
    let right = sender.last_code().expect("a code was sent");
    let wrong = format!(
        "{:06}",
        (right.expose_secret().parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let outcomes = race(1000, |_| {
        let (recovery, wrong) = (recovery.clone(), wrong.clone());
        async move { recovery.verify(&flow, &wrong, &RequestContext::none()).await }
    })
    .await;
    let mut left: Vec<u32> = Vec::new();
    for outcome in outcomes {
        match outcome {
            Err(Error::InvalidCode { attempts_left }) => left.push(attempts_left),
            Err(Error::Locked { .. }) => {}
            other => panic!("unexpected outcome of a wrong code: {other:?}"),
        }
    }
    left.sort_unstable();
    assert_eq!(
        left,
        [0, 1, 2, 3, 4],
        "exactly max_attempts codes may be evaluated, each once"
    );
    let stored = get(&*store, &flow).await;
    assert_eq!(stored.failed_attempts, 5);
    assert_eq!(stored.state, FlowState::Locked);
    let err = recovery
        .verify(&flow, right.expose_secret(), &RequestContext::none())
        .await
        .expect_err("locked");
    assert!(
        matches!(err, Error::Locked { .. }),
        "the right code must not pass a locked flow: {err:?}"
    );
}

/// 100 concurrent right codes on one flow yield exactly one token.
pub async fn right_code_race_issues_exactly_one_token<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, _) = recovery(store);
    let flow = requested_flow(&recovery).await;
    let code = sender.last_code().expect("a code was sent");
    let outcomes = race(RACERS, |_| {
        let (recovery, code) = (recovery.clone(), code.clone());
        async move {
            recovery
                .verify(&flow, code.expose_secret(), &RequestContext::none())
                .await
                .map(|_| ())
        }
    })
    .await;
    let mut tokens = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => tokens += 1,
            Err(Error::AlreadyUsed) => {}
            Err(other) => panic!("unexpected outcome of a used code: {other:?}"),
        }
    }
    assert_eq!(tokens, 1, "a code must yield exactly one token");
}

/// 100 concurrent resets with one token succeed exactly once.
pub async fn reset_race_completes_exactly_once<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, _) = recovery(store);
    let flow = requested_flow(&recovery).await;
    let code = sender.last_code().expect("a code was sent");
    let verified = recovery
        .verify(&flow, code.expose_secret(), &RequestContext::none())
        .await
        .expect("verify");
    let token = verified.token.expose_secret();
    let outcomes = race(RACERS, |_| {
        let (recovery, token) = (recovery.clone(), token.clone());
        async move { recovery.reset(&token, &RequestContext::none()).await.map(|_| ()) }
    })
    .await;
    let mut completed = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => completed += 1,
            Err(Error::AlreadyUsed) => {}
            Err(other) => panic!("unexpected outcome of a used token: {other:?}"),
        }
    }
    assert_eq!(completed, 1, "a token must reset exactly once");
}

/// 100 concurrent resends once the cooldown has passed: exactly one sends.
pub async fn resend_race_sends_exactly_once<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, clock) = recovery(store);
    let flow = requested_flow(&recovery).await;
    clock.advance(recovery.policy().cooldown_after(1));
    let before = sender.count();
    let outcomes = race(RACERS, |_| {
        let recovery = recovery.clone();
        async move { recovery.resend(&flow, &RequestContext::none()).await.map(|_| ()) }
    })
    .await;
    let mut sent = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => sent += 1,
            Err(Error::TooSoon { .. }) => {}
            Err(other) => panic!("unexpected outcome of a resend: {other:?}"),
        }
    }
    assert_eq!(sent, 1, "one cooldown must allow exactly one resend");
    assert_eq!(sender.count(), before + 1, "exactly one SMS must go out");
}

// ---- several instances, restarts ----

/// Two host instances, each with its own connection to the same backend
/// (`a` and `b`), race on the same flows: wrong codes, right codes,
/// resets, resends and a send limit hold exactly as with one instance.
pub async fn two_instances_hold_every_limit<S: CodeStore + 'static>(a: Arc<S>, b: Arc<S>) {
    use crate::limits::{LimitScope, Rule};

    let clock = ManualClock::new(now());
    let sender = RecordingSender::new();
    let keys = KeyRing::new(1, ServerKey::generate().expect("randomness"));
    let phone_limit = Limits::builder()
        .clear_send_rules()
        .add_send_rule(Rule::new(LimitScope::Phone, 5, Duration::from_secs(600)))
        .ip_verifies(None)
        .build()
        .expect("limits");
    let instance = |store: Arc<S>| {
        Arc::new(
            Recovery::new(Interleaved(store), sender.clone(), keys.clone())
                .with_limits(phone_limit.clone())
                .with_clock(clock.clone()),
        )
    };
    let (one, two) = (instance(a), instance(b));
    let pick = |i: usize| {
        if i.is_multiple_of(2) {
            one.clone()
        } else {
            two.clone()
        }
    };
    let ctx = RequestContext::none();

    // Wrong codes: exactly the attempt limit is evaluated.
    let flow = requested_flow(&one).await;
    let right = sender.last_code().expect("a code was sent");
    let wrong = format!(
        "{:06}",
        (right.expose_secret().parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let outcomes = race(200, |i| {
        let (r, wrong, ctx) = (pick(i), wrong.clone(), ctx.clone());
        async move { r.verify(&flow, &wrong, &ctx).await }
    })
    .await;
    let evaluated = outcomes
        .iter()
        .filter(|o| matches!(o, Err(Error::InvalidCode { .. })))
        .count();
    assert_eq!(evaluated, 5, "two instances evaluated more codes than the limit");

    // Right codes and resets: one token, one reset.
    let flow = requested_flow(&two).await;
    let code = sender.last_code().expect("a code was sent");
    let tokens = race(50, |i| {
        let (r, code, ctx) = (pick(i), code.clone(), ctx.clone());
        async move {
            r.verify(&flow, code.expose_secret(), &ctx)
                .await
                .ok()
                .map(|v| v.token.expose_secret())
        }
    })
    .await;
    let tokens: Vec<_> = tokens.into_iter().flatten().collect();
    assert_eq!(tokens.len(), 1, "two instances issued more than one token");
    let resets = race(50, |i| {
        let (r, token, ctx) = (pick(i), tokens[0].clone(), ctx.clone());
        async move { r.reset(&token, &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(resets.iter().filter(|ok| **ok).count(), 1, "a token reset twice");

    // Resends after one cooldown: one.
    let flow = requested_flow(&one).await;
    clock.advance(Duration::from_secs(30));
    let resent = race(50, |i| {
        let (r, ctx) = (pick(i), ctx.clone());
        async move { r.resend(&flow, &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(
        resent.iter().filter(|ok| **ok).count(),
        1,
        "one cooldown allowed two resends"
    );

    // A send limit: 5 per phone, 40 requests across both instances.
    let target = Account::new(account(), phone_with_random_line());
    let sent = race(40, |i| {
        let (r, target, ctx) = (pick(i), target.clone(), ctx.clone());
        async move { r.request("target@example.com", Some(target), &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(
        sent.iter().filter(|ok| **ok).count(),
        5,
        "the phone limit did not hold across instances"
    );
}

/// A phone number of its own, so send limits start from zero.
fn phone_with_random_line() -> PhoneNumber {
    let mut b = [0u8; 4];
    crate::rng::fill_random(&mut b).expect("randomness");
    let line = u32::from_be_bytes(b) % 10_000_000;
    PhoneNumber::parse(&format!("+1415{line:07}")).expect("valid phone")
}

/// A flow and its counts survive the store being dropped and opened again
/// (`open` makes a new store on the same data): the code still verifies
/// and a wrong code counted before still counts.
pub async fn a_reopened_store_keeps_flows_and_counts<S, F, Fut>(open: F)
where
    S: CodeStore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let clock = ManualClock::new(now());
    let sender = RecordingSender::new();
    let keys = KeyRing::new(1, ServerKey::generate().expect("randomness"));
    let make = |store: S| {
        Recovery::new(Arc::new(store), sender.clone(), keys.clone())
            .with_limits(Limits::none())
            .with_clock(clock.clone())
    };
    let ctx = RequestContext::none();
    let first = make(open().await);
    let account = Account::new(account(), phone());
    let flow = first
        .request("someone@example.com", Some(account), &ctx)
        .await
        .expect("request")
        .flow_id;
    let code = sender.last_code().expect("a code was sent");
    let wrong = format!(
        "{:06}",
        (code.expose_secret().parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let err = first.verify(&flow, &wrong, &ctx).await.expect_err("wrong");
    assert!(matches!(err, Error::InvalidCode { attempts_left: 4 }), "{err:?}");
    drop(first);

    let second = make(open().await);
    let err = second.verify(&flow, &wrong, &ctx).await.expect_err("wrong");
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 3 }),
        "a count made before the restart was lost: {err:?}"
    );
    let verified = second
        .verify(&flow, code.expose_secret(), &ctx)
        .await
        .expect("the code must verify after a restart");
    second
        .reset(&verified.token.expose_secret(), &ctx)
        .await
        .expect("reset");
}
