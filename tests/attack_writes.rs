//! Issue 18, point 5: refused requests must not write without bound.
//!
//! The attack: one network floods requests for ever new identifiers past
//! its own send limit. Each refused call used to count and undo its limits
//! and keep its (network, identifier) detector counter: 50,000 refused
//! requests left 50,106 counters for an hour (on PostgreSQL, each a durable
//! write). Now a refused call leaves no counter behind, and once this
//! instance has seen the network refused by its own limit, its calls are
//! answered without a store call until the refusal ends.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Observed;
use otp_recovery::limits::{BlockTarget, Detectors, LimitScope, Limits};
use otp_recovery::sms::RecordingSender;
use otp_recovery::support::Agent;
use otp_recovery::{
    Account, AccountId, Error, KeyRing, ManualClock, PhoneNumber, Recovery, RequestContext, Requested,
    ServerKey, Timestamp,
};

type Rec = Recovery<Arc<Observed>, RecordingSender, ManualClock>;

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
const HOUR: Duration = Duration::from_secs(3600);

fn instance(store: &Arc<Observed>, clock: &ManualClock, limits: Limits) -> Rec {
    Recovery::new(
        store.clone(),
        RecordingSender::new(),
        KeyRing::new(1, ServerKey::from_bytes(vec![8; 32]).unwrap()),
    )
    .with_limits(limits)
    .with_clock(clock.clone())
}

fn ip(s: &str) -> RequestContext {
    RequestContext::from_ip(s.parse::<IpAddr>().unwrap())
}

async fn ask(r: &Rec, n: u32, known: bool, ctx: &RequestContext) -> Result<Requested, Error> {
    let account = known.then(|| {
        Account::new(
            AccountId::new(format!("acct-{n}")).unwrap(),
            PhoneNumber::parse(&format!("+1415{:07}", 1_000_000 + n)).unwrap(),
        )
    });
    r.request(&format!("id{n}@example.com"), account, ctx).await
}

fn ip_wait(err: &Error) -> Option<Duration> {
    match err {
        Error::RateLimited {
            scope: LimitScope::Ip,
            retry_after,
            ..
        } => Some(*retry_after),
        _ => None,
    }
}

#[tokio::test]
async fn a_flood_past_the_ip_limit_costs_one_store_call_per_instance_and_window() {
    let (store, clock) = (Arc::new(Observed::default()), ManualClock::new(T0));
    let (a, b) = (
        instance(&store, &clock, Limits::default()),
        instance(&store, &clock, Limits::default()),
    );
    let attacker = ip("203.0.113.7");
    for n in 0..20 {
        ask(&a, n, n % 2 == 0, &attacker).await.unwrap();
    }
    let admitted_counters = store.inner().counter_count();
    store.take();
    // The first refusal on each instance asks the store; no later one does.
    for n in 20..10_020u32 {
        let r = if n % 2 == 0 { &a } else { &b };
        let err = ask(r, n, n % 3 == 0, &attacker).await.unwrap_err();
        assert_eq!(ip_wait(&err), Some(HOUR), "{n}: {err:?}");
    }
    // (Each: its counting call, and the check that the many-identifiers
    // finding was reported once this window.)
    assert_eq!(store.take(), 4, "two calls per instance, then none");
    assert_eq!(
        store.inner().counter_count(),
        admitted_counters,
        "refused calls left no counter"
    );
    // Known and unknown identifiers get the same answer, the store's.
    clock.advance(Duration::from_secs(600));
    for known in [true, false] {
        let err = ask(&a, 99_999, known, &attacker).await.unwrap_err();
        assert_eq!(ip_wait(&err), Some(HOUR - Duration::from_secs(600)));
    }
    // Other networks are untouched, and the refusal ends exactly when the
    // network's window does.
    ask(&a, 50_000, true, &ip("198.51.100.1")).await.unwrap();
    clock.advance(HOUR - Duration::from_secs(600) - Duration::from_millis(1));
    let err = ask(&a, 50_001, false, &attacker).await.unwrap_err();
    assert_eq!(ip_wait(&err), Some(Duration::from_millis(1)));
    clock.advance(Duration::from_millis(1));
    ask(&a, 50_002, false, &attacker).await.unwrap();
    ask(&b, 50_003, true, &attacker).await.unwrap();
}

#[tokio::test]
async fn a_blocked_network_leaves_no_counter_per_identifier() {
    let (store, clock) = (Arc::new(Observed::default()), ManualClock::new(T0));
    let detectors = Detectors::default().with_auto_block(Some(HOUR));
    let r = instance(
        &store,
        &clock,
        Limits::builder().detectors(detectors).build().unwrap(),
    );
    let crawler = ip("192.0.2.50");
    // Asking for more than 10 identifiers in an hour blocks the network.
    let mut n = 0;
    while !matches!(ask(&r, n, false, &crawler).await, Err(Error::Blocked { .. })) {
        n += 1;
        assert!(n < 20, "the detector never blocked");
    }
    let before = store.inner().counter_count();
    for n in 100..5_100 {
        let err = ask(&r, n, n % 2 == 0, &crawler).await.unwrap_err();
        assert!(matches!(err, Error::Blocked { .. }), "{err:?}");
    }
    assert_eq!(
        store.inner().counter_count(),
        before,
        "no counter per refused identifier"
    );
    // Support's unblock takes effect at once (blocks are never answered
    // from memory).
    r.support()
        .unblock(
            &Agent::new("dana").unwrap(),
            "false positive",
            &BlockTarget::Ip("192.0.2.50".into()),
        )
        .await
        .unwrap();
    ask(&r, 9_999, true, &crawler).await.unwrap();
}

/// Near the memory store's counter cap, a known and an unknown identifier
/// need the same room: a known account's request counts the shared budgets
/// that an unknown one only reads, so counting only increments as new
/// windows let an unknown identifier through where an account got a store
/// error (from review: with 8 to 10 windows free).
#[tokio::test]
async fn near_the_counter_cap_known_and_unknown_identifiers_fare_alike() {
    for free in 0..=24 {
        let outcome = |known: bool| async move {
            let store = Arc::new(otp_recovery::store::MemoryStore::new().with_counter_capacity(free));
            let r = Recovery::new(
                store,
                RecordingSender::new(),
                KeyRing::new(1, ServerKey::from_bytes(vec![8; 32]).unwrap()),
            )
            .with_clock(ManualClock::new(T0));
            let account = known.then(|| {
                Account::new(
                    AccountId::new("acct-1").unwrap(),
                    PhoneNumber::parse("+14155550101").unwrap(),
                )
            });
            let answer = r.request("id1@example.com", account, &ip("203.0.113.9")).await;
            answer.map(|_| ()).map_err(|e| format!("{e:?}"))
        };
        assert_eq!(outcome(true).await, outcome(false).await, "{free} windows free");
    }
}
