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
//! drive the store through [`Recovery`](crate::Recovery) where a rule spans
//! several calls. Each check is also a public async function, and [`run`]
//! runs them all in sequence against one store.

use std::future::Future;
use std::sync::Arc;

mod counters;
mod flows;
mod harness;
mod instances;
mod limits;
mod races;

pub use counters::*;
pub use flows::*;
pub use instances::*;
pub use limits::*;
pub use races::*;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::code::Mac;
use crate::id::{AccountId, FlowId};
use crate::machine::{self, Opening};
use crate::phone::PhoneNumber;
use crate::policy::Policy;
use crate::record::{DecoyId, FlowRecord, Subject};
use crate::store::CodeStore;

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
            create_compares_the_subjects_newest_flow,
            create_supersedes_the_accounts_open_flow,
            decoys_supersede_per_subject,
            a_new_flow_supersedes_one_stamped_later,
            keys_are_compared_byte_for_byte,
            compare_and_swap_applies_only_on_the_expected_version,
            compare_and_swap_counting_counts_only_when_it_writes,
            counters_count_per_key_and_per_window,
            counters_hold_windows_of_a_day_and_a_week,
            conditional_counters_count_only_when_their_condition_opened,
            a_refused_call_undoes_its_guarded_counts,
            refused_calls_undo_only_their_own_counts,
            load_counting_returns_the_flow_and_the_counts,
            find_flows_lists_a_subjects_recent_flows_newest_first,
            cases_are_stored_replaced_and_found_by_reference,
            deleted_counters_start_again_from_zero,
            purge_removes_exactly_the_expired,
            expiry_is_decided_to_the_millisecond,
            concurrent_counter_increments_are_all_counted,
            concurrent_compare_and_swaps_have_one_winner,
            swaps_and_superseding_creates_of_one_flow_have_one_winner,
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
            $crate::conformance::block_on(async {
                if let Some((a, b)) = $pair.await {
                    $crate::conformance::two_instances_hold_every_limit(
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
                $crate::conformance::block_on(async {
                    if let Some(store) = $make.await {
                        $crate::conformance::$check(::std::sync::Arc::new(store)).await;
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

/// Runs every check in sequence against `store`, and the two-instance
/// check against `store` and `other`, a second handle on the same data
/// (a second pool or connection; for an in-memory store, a clone of the
/// same `Arc`).
pub async fn run<S: CodeStore + 'static>(store: Arc<S>, other: Arc<S>) {
    create_then_get_returns_every_field(store.clone()).await;
    get_of_an_unknown_flow_is_none(store.clone()).await;
    create_refuses_a_duplicate_id(store.clone()).await;
    create_compares_the_subjects_newest_flow(store.clone()).await;
    create_supersedes_the_accounts_open_flow(store.clone()).await;
    decoys_supersede_per_subject(store.clone()).await;
    a_new_flow_supersedes_one_stamped_later(store.clone()).await;
    keys_are_compared_byte_for_byte(store.clone()).await;
    compare_and_swap_applies_only_on_the_expected_version(store.clone()).await;
    compare_and_swap_counting_counts_only_when_it_writes(store.clone()).await;
    counters_count_per_key_and_per_window(store.clone()).await;
    counters_hold_windows_of_a_day_and_a_week(store.clone()).await;
    conditional_counters_count_only_when_their_condition_opened(store.clone()).await;
    a_refused_call_undoes_its_guarded_counts(store.clone()).await;
    refused_calls_undo_only_their_own_counts(store.clone()).await;
    load_counting_returns_the_flow_and_the_counts(store.clone()).await;
    find_flows_lists_a_subjects_recent_flows_newest_first(store.clone()).await;
    cases_are_stored_replaced_and_found_by_reference(store.clone()).await;
    deleted_counters_start_again_from_zero(store.clone()).await;
    purge_removes_exactly_the_expired(store.clone()).await;
    expiry_is_decided_to_the_millisecond(store.clone()).await;
    concurrent_counter_increments_are_all_counted(store.clone()).await;
    concurrent_compare_and_swaps_have_one_winner(store.clone()).await;
    swaps_and_superseding_creates_of_one_flow_have_one_winner(store.clone()).await;
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
    two_instances_hold_every_limit(store, other).await;
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

/// Creates `flow` as the driver does: its subject's open flow superseded.
async fn create<S: CodeStore + ?Sized>(store: &S, flow: &FlowRecord) {
    let settled = crate::recovery::insert_newest(store, flow, None)
        .await
        .expect("create_flow");
    assert!(
        settled,
        "create_flow answered Stale with the newest flow it was given, again and again"
    );
}

async fn get<S: CodeStore>(store: &S, id: &FlowId) -> FlowRecord {
    store
        .get_flow(id)
        .await
        .expect("get_flow")
        .expect("the flow is stored")
}

/// A phone number of its own, so send limits start from zero.
fn phone_with_random_line() -> PhoneNumber {
    let mut b = [0u8; 4];
    crate::rng::fill_random(&mut b).expect("randomness");
    let line = u32::from_be_bytes(b) % 10_000_000;
    PhoneNumber::parse(&format!("+1415{line:07}")).expect("valid phone")
}
