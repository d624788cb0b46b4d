//! Abuse controls: send and failure limits at their boundaries, the country
//! rules, the detectors and automatic blocks, lockout and the support desk,
//! notifications, and limits raced by many tasks.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use otp_recovery::events::{EventKind, RecordingSink, SupportAction, Suspicion};
use otp_recovery::limits::{BlockTarget, DecoyDestination, Detectors, LimitScope, Limits, LimitsError, Rule};
use otp_recovery::record::{EffectiveState, FlowState, Subject};
use otp_recovery::sms::{MessageKind, RecordingSender, SendError, SendErrorKind};
use otp_recovery::store::{CodeStore, Counter, MemoryStore};
use otp_recovery::support::{Agent, SupportReference};
use otp_recovery::{
    Account, AccountId, Code, Error, FlowId, InputError, KeyRing, ManualClock, Messages, PhoneNumber, Policy,
    Recovery, RequestContext, Requested, ServerKey, Timestamp,
};

type Rec = Recovery<Arc<MemoryStore>, RecordingSender, ManualClock>;

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

struct Harness {
    recovery: Arc<Rec>,
    sender: RecordingSender,
    events: RecordingSink,
    clock: ManualClock,
}

fn harness_with(limits: Limits, policy: Policy) -> Harness {
    let sender = RecordingSender::new();
    let events = RecordingSink::new();
    let clock = ManualClock::new(T0);
    let messages = Messages::builder("Acme")
        .support_contact("help@acme.example")
        .build()
        .unwrap();
    let recovery = Recovery::new(
        Arc::new(MemoryStore::new()),
        sender.clone(),
        KeyRing::new(1, ServerKey::from_bytes(vec![3; 32]).unwrap()),
    )
    .with_policy(policy)
    .with_limits(limits)
    .with_messages(messages)
    .with_events(events.clone())
    .with_clock(clock.clone());
    Harness {
        recovery: Arc::new(recovery),
        sender,
        events,
        clock,
    }
}

fn harness(limits: Limits) -> Harness {
    harness_with(limits, Policy::default())
}

/// Limits with only `rule` (and no IP failure limit).
fn only(rule: Rule) -> Limits {
    Limits::builder()
        .clear_send_rules()
        .add_send_rule(rule)
        .ip_verifies(None)
        .build()
        .unwrap()
}

fn account(n: u32) -> Account {
    Account::new(
        AccountId::new(format!("user-{n}")).unwrap(),
        PhoneNumber::parse(&format!("+1415555{:04}", n % 10_000)).unwrap(),
    )
}

/// An account whose phone is in the United Kingdom (+44).
fn uk_account() -> Account {
    Account::new(
        AccountId::new("uk").unwrap(),
        PhoneNumber::parse("+447911123456").unwrap(),
    )
}

fn ip(s: &str) -> RequestContext {
    RequestContext::from_ip(s.parse::<IpAddr>().unwrap())
}

fn none() -> RequestContext {
    RequestContext::without_client_ip()
}

fn wrong(code: &Code) -> String {
    let n: u64 = code.expose_secret().parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

fn is_limited(err: &Error, scope: LimitScope, wait: Duration) -> bool {
    matches!(err, Error::RateLimited { scope: s, retry_after, .. } if *s == scope && *retry_after == wait)
}

impl Harness {
    async fn request(&self, n: u32, ctx: &RequestContext) -> Result<Requested, Error> {
        self.recovery
            .request(&format!("user{n}@example.com"), Some(account(n)), ctx)
            .await
    }
}

// ---- send limits, each at its boundary ----

#[tokio::test]
async fn the_phone_limit_allows_five_sends_then_refuses_until_its_window_ends() {
    let h = harness(only(Rule::new(LimitScope::Phone, 5, 10 * MINUTE)));
    for _ in 0..5 {
        h.request(1, &none()).await.unwrap();
    }
    h.clock.advance(Duration::from_secs(100));
    let err = h.request(1, &none()).await.unwrap_err();
    assert!(
        is_limited(&err, LimitScope::Phone, Duration::from_secs(500)),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(500)));
    assert_eq!(h.sender.count(), 5, "a refused request sends nothing");
    // Another phone is not limited.
    h.request(2, &none()).await.unwrap();
    // One millisecond before the window ends: still refused; at its end: sent.
    h.clock.set(Timestamp::from_unix_millis(
        T0.saturating_add(10 * MINUTE).as_unix_millis() - 1,
    ));
    assert!(h.request(1, &none()).await.is_err());
    h.clock.set(T0.saturating_add(10 * MINUTE));
    h.request(1, &none()).await.unwrap();
}

#[tokio::test]
async fn resends_count_against_the_send_limits() {
    let h = harness(only(Rule::new(LimitScope::Account, 3, HOUR)));
    let flow = h.request(1, &none()).await.unwrap().flow_id;
    h.clock.advance(Duration::from_secs(30));
    h.recovery.resend(&flow, &none()).await.unwrap();
    h.clock.advance(Duration::from_secs(60));
    h.recovery.resend(&flow, &none()).await.unwrap();
    h.clock.advance(Duration::from_secs(120));
    let err = h.recovery.resend(&flow, &none()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                scope: LimitScope::Account,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(h.sender.count(), 3);
}

#[tokio::test]
async fn a_resend_refused_by_its_cooldown_does_not_count_as_a_send() {
    let h = harness(only(Rule::new(LimitScope::Account, 2, HOUR)));
    let flow = h.request(1, &none()).await.unwrap().flow_id;
    for _ in 0..10 {
        assert!(matches!(
            h.recovery.resend(&flow, &none()).await,
            Err(Error::TooSoon { .. })
        ));
    }
    h.clock.advance(Duration::from_secs(30));
    h.recovery.resend(&flow, &none()).await.unwrap();
}

#[tokio::test]
async fn the_ip_limit_counts_every_account_from_one_ip() {
    let h = harness(only(Rule::new(LimitScope::Ip, 20, HOUR)));
    for n in 0..20 {
        h.request(n, &ip("198.51.100.7")).await.unwrap();
    }
    let err = h.request(99, &ip("198.51.100.7")).await.unwrap_err();
    assert!(is_limited(&err, LimitScope::Ip, HOUR), "{err:?}");
    h.request(99, &ip("198.51.100.8")).await.unwrap();
    // IPv6 clients count by their /64.
    for n in 0..20 {
        h.request(n, &ip(&format!("2001:db8:0:1::{n:x}"))).await.unwrap();
    }
    assert!(h.request(98, &ip("2001:db8:0:1::ffff")).await.is_err());
    h.request(98, &ip("2001:db8:0:2::1")).await.unwrap();
}

#[tokio::test]
async fn the_country_and_global_budgets_cap_all_sends() {
    let h = harness(only(Rule::new(LimitScope::CountryCode, 3, HOUR)));
    for n in 0..3 {
        h.request(n, &none()).await.unwrap();
    }
    let err = h.request(3, &none()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                scope: LimitScope::CountryCode,
                ..
            }
        ),
        "{err:?}"
    );
    let uk = uk_account();
    h.recovery
        .request("uk@example.com", Some(uk), &none())
        .await
        .unwrap();

    let h = harness(only(Rule::new(LimitScope::Global, 4, HOUR)));
    for n in 0..3 {
        h.request(n, &none()).await.unwrap();
    }
    // Unknown identifiers spend none of it (tests/attack_budgets.rs), so
    // one more real send fits.
    h.recovery
        .request("nobody@example.com", None, &none())
        .await
        .unwrap();
    h.request(3, &none()).await.unwrap();
    let err = h.request(10, &none()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                scope: LimitScope::Global,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn denied_countries_get_no_sms_and_the_same_answer() {
    let h = harness(Limits::builder().deny_countries([44]).build().unwrap());
    let uk = uk_account();
    let requested = h
        .recovery
        .request("uk@example.com", Some(uk), &none())
        .await
        .unwrap();
    assert_eq!(h.sender.count(), 0, "nothing may be sent to a denied country");
    assert!(
        h.events
            .kinds()
            .contains(&EventKind::DestinationRefused { country_code: 44 })
    );
    // Its code was never sent, so it is voided: a verify answers as on an
    // unknown identifier's flow.
    let err = h
        .recovery
        .verify(&requested.flow_id, "123456", &none())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
        "{err:?}"
    );

    let allow = harness(Limits::builder().allow_countries([44]).build().unwrap());
    allow.request(1, &none()).await.unwrap();
    assert_eq!(allow.sender.count(), 0, "+1 is not on the allow list");
    let uk = uk_account();
    allow
        .recovery
        .request("uk@example.com", Some(uk), &none())
        .await
        .unwrap();
    assert_eq!(allow.sender.count(), 1);

    // A deny list of the decoy country is refused: unknown identifiers
    // would all appear to have phones there, where no real account's code
    // can go.
    assert_eq!(
        Limits::builder().deny_countries([1]).build(),
        Err(LimitsError::DecoyCountryDenied(1))
    );
    let strict = harness_with(
        Limits::builder()
            .deny_countries([1])
            .decoy_country(44)
            .build()
            .unwrap(),
        Policy::builder().reveal_send_failures(true).build().unwrap(),
    );
    // Revealed send failures tell a known account's user that their phone
    // cannot be sent a code (that is what the setting is for)...
    let err = strict.request(1, &none()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Send(e) if e.kind() == SendErrorKind::Rejected),
        "{err:?}"
    );
    // ...and an unknown identifier answers as an account in an allowed
    // country does: its made-up destination is there.
    let uk = uk_account();
    let known = strict
        .recovery
        .request("uk@example.com", Some(uk), &none())
        .await
        .unwrap();
    let unknown = strict
        .recovery
        .request("nobody@example.com", None, &none())
        .await
        .unwrap();
    assert!(known.masked_phone.to_string().starts_with("+44"));
    assert!(
        unknown.masked_phone.to_string().starts_with("+44"),
        "{}",
        unknown.masked_phone
    );
}

#[tokio::test]
async fn a_refused_destination_costs_the_store_calls_of_an_unknown_identifier() {
    // A code for a refused destination is stored void from the start: no
    // second write voids it, so a known account there makes the store
    // calls an unknown identifier makes (with a real store, a difference
    // of round trips would tell them apart).
    let store = Arc::new(common::Observed::default());
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let recovery = Recovery::new(
        store.clone(),
        sender.clone(),
        KeyRing::new(1, ServerKey::from_bytes(vec![3; 32]).unwrap()),
    )
    .with_limits(Limits::builder().deny_countries([44]).build().unwrap())
    .with_clock(clock.clone());
    let uk = uk_account();
    let known = recovery
        .request("uk@example.com", Some(uk), &none())
        .await
        .unwrap();
    let known_calls = store.take();
    let unknown = recovery
        .request("nobody@example.com", None, &none())
        .await
        .unwrap();
    assert_eq!((known_calls, store.take()), (2, 2), "request");
    // The stored code is void (all zero bits, which no code's MAC is).
    let stored_mac = || async {
        let flow = recovery.store().get_flow(&known.flow_id).await.unwrap().unwrap();
        store.take();
        *flow.code_mac.as_bytes()
    };
    assert_eq!(stored_mac().await, [0; 32], "request");
    clock.advance(Duration::from_secs(30));
    recovery.resend(&known.flow_id, &none()).await.unwrap();
    let known_calls = store.take();
    recovery.resend(&unknown.flow_id, &none()).await.unwrap();
    assert_eq!((known_calls, store.take()), (3, 3), "resend");
    assert_eq!(stored_mac().await, [0; 32], "resend");
    assert_eq!(sender.count(), 0);
    // Neither code works: the flow answers as an unknown identifier's.
    let err = recovery
        .verify(&known.flow_id, "123456", &none())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn non_geographic_destinations_are_denied_by_default() {
    let h = harness(Limits::default());
    let sat = Account::new(
        AccountId::new("sat").unwrap(),
        PhoneNumber::parse("+881612345678").unwrap(),
    );
    h.recovery
        .request("sat@example.com", Some(sat), &none())
        .await
        .unwrap();
    assert_eq!(h.sender.count(), 0);
}

// ---- anti-enumeration through limits ----

/// The outcome of a call, stripped of the values that differ by design
/// (flow ids, masked digits): what an attacker compares.
fn shape<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::RateLimited {
            scope, retry_after, ..
        }) => format!("limited {scope:?} {retry_after:?}"),
        Err(Error::InvalidCode { attempts_left, .. }) => format!("invalid {attempts_left}"),
        Err(Error::Locked { until, reference, .. }) => {
            format!("locked {until:?} {}", reference.is_some())
        }
        Err(e) => format!("{e:?}"),
    }
}

#[tokio::test]
async fn an_unknown_identifier_meets_every_limit_exactly_when_an_account_does() {
    let limits = Limits::builder()
        .clear_send_rules()
        .add_send_rule(Rule::new(LimitScope::Phone, 3, 10 * MINUTE))
        .add_send_rule(Rule::new(LimitScope::Account, 4, HOUR))
        .build()
        .unwrap();
    let policy = Policy::builder()
        .account_failures(7, Duration::from_secs(86_400))
        .build()
        .unwrap();
    let known = harness_with(limits.clone(), policy.clone());
    let unknown = harness_with(limits, policy);
    let script = |h: &Harness, account: Option<Account>| {
        let r = h.recovery.clone();
        let clock = h.clock.clone();
        async move {
            let mut trace = Vec::new();
            let mut last = None;
            for step in 0..14 {
                let req = r.request("target@example.com", account.clone(), &none()).await;
                trace.push(shape(&req));
                if let Ok(req) = &req {
                    trace.push(format!(
                        "{:?} {:?} {}",
                        req.code_expires_at, req.next_send_at, req.attempts_left
                    ));
                    last = Some(req.flow_id);
                }
                if let Some(flow) = last {
                    for _ in 0..2 {
                        // "000000" is wrong for the decoy; for the account it
                        // is wrong but for a one-in-a-million draw.
                        let v = r.verify(&flow, "000000", &none()).await;
                        trace.push(shape(&v));
                    }
                    trace.push(shape(&r.resend(&flow, &none()).await));
                }
                clock.advance(Duration::from_secs(if step % 3 == 0 { 31 } else { 200 }));
            }
            trace
        }
    };
    let a = script(&known, Some(account(1))).await;
    let b = script(&unknown, None).await;
    assert_eq!(a, b, "known and unknown identifiers must answer alike");
    assert!(
        a.iter().any(|s| s.starts_with("limited")),
        "the script must reach a limit: {a:?}"
    );
    assert!(
        a.iter().any(|s| s.starts_with("locked")),
        "the script must reach the lock: {a:?}"
    );
    assert_eq!(unknown.sender.count(), 0);
}

// ---- wrong codes per IP ----

#[tokio::test]
async fn codes_from_one_ip_are_limited_across_flows_before_any_is_checked() {
    let h = harness(Limits::builder().ip_verifies(Some((6, HOUR))).build().unwrap());
    let attacker = ip("203.0.113.66");
    let mut flows = Vec::new();
    for n in 0..3 {
        flows.push(h.request(n, &none()).await.unwrap().flow_id);
    }
    for flow in &flows {
        for _ in 0..2 {
            h.recovery.verify(flow, "000000", &attacker).await.unwrap_err();
        }
    }
    // The 7th guess from that IP is refused without being evaluated.
    let err = h
        .recovery
        .verify(&flows[0], "000000", &attacker)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                scope: LimitScope::IpVerifies,
                ..
            }
        ),
        "{err:?}"
    );
    let code = h.sender.last_code().unwrap();
    let err = h
        .recovery
        .verify(&flows[2], code.expose_secret(), &attacker)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { .. }),
        "even a right code waits: {err:?}"
    );
    // The flow lost no attempt to the refused guesses; another IP proceeds.
    let ok = h
        .recovery
        .verify(&flows[2], code.expose_secret(), &ip("203.0.113.67"))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

// ---- detectors and automatic blocks ----

#[tokio::test]
async fn one_ip_asking_for_many_accounts_is_reported_once_and_blocked_when_configured() {
    // Only the IP detector: these test phones share one number block.
    let detectors = Detectors::default()
        .with_subjects_per_ip(5)
        .with_pumping_min_sends(1_000, 1_000);
    let h = harness(Limits::builder().detectors(detectors.clone()).build().unwrap());
    let crawler = ip("192.0.2.50");
    for n in 0..5 {
        h.request(n, &crawler).await.unwrap();
        h.request(n, &crawler).await.unwrap(); // the same account again is not a new one
    }
    assert!(
        !h.events
            .kinds()
            .iter()
            .any(|k| matches!(k, EventKind::Suspicious { .. }))
    );
    h.recovery
        .request("nobody@example.com", None, &crawler)
        .await
        .unwrap();
    h.request(7, &crawler).await.unwrap();
    let suspicious: Vec<_> = h
        .events
        .kinds()
        .into_iter()
        .filter(|k| matches!(k, EventKind::Suspicious { .. }))
        .collect();
    assert_eq!(
        suspicious,
        [EventKind::Suspicious {
            pattern: Suspicion::ManySubjectsFromOneIp { subjects: 6 }
        }],
        "reported once, as the threshold is crossed"
    );

    let blocking = harness(
        Limits::builder()
            .detectors(detectors.with_auto_block(Some(HOUR)))
            .build()
            .unwrap(),
    );
    for n in 0..5 {
        blocking.request(n, &crawler).await.unwrap();
    }
    let err = blocking.request(5, &crawler).await.unwrap_err();
    assert!(
        matches!(err, Error::Blocked { retry_after, .. } if retry_after == HOUR),
        "{err:?}"
    );
    blocking.clock.advance(MINUTE);
    let err = blocking.request(0, &crawler).await.unwrap_err();
    assert!(
        matches!(err, Error::Blocked { retry_after, .. } if retry_after == HOUR - MINUTE),
        "{err:?}"
    );
    let flow = blocking.request(0, &ip("192.0.2.51")).await.unwrap().flow_id;
    let err = blocking
        .recovery
        .verify(&flow, "000000", &crawler)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Blocked { .. }),
        "a blocked IP cannot verify either: {err:?}"
    );
    assert!(blocking.events.kinds().contains(&EventKind::AutoBlocked {
        target: BlockTarget::Ip("192.0.2.50".into()),
        until: T0.saturating_add(HOUR),
    }));
    // Support lifts the block under the key the detector wrote and
    // requests and verifies read.
    blocking
        .recovery
        .support()
        .unblock(
            &Agent::new("dana").unwrap(),
            "a shared office NAT",
            &BlockTarget::Ip("192.0.2.50".into()),
        )
        .await
        .unwrap();
    let err = blocking
        .recovery
        .verify(&flow, "000000", &crawler)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCode { .. }), "unblocked: {err:?}");
    blocking.request(0, &crawler).await.unwrap();
}

#[tokio::test]
async fn many_unverified_sends_into_one_country_look_like_pumping_and_can_block_it() {
    let detectors = Detectors::default()
        .with_pumping_min_sends(20, 1_000)
        .with_auto_block_countries(true)
        .with_auto_block(Some(HOUR));
    let h = harness(
        Limits::builder()
            .clear_send_rules()
            .detectors(detectors)
            .build()
            .unwrap(),
    );
    let premium = |n: u32| {
        Account::new(
            AccountId::new(format!("p{n}")).unwrap(),
            PhoneNumber::parse(&format!("+37477{:06}", n)).unwrap(),
        )
    };
    for n in 0..19 {
        h.recovery
            .request("x@example.com", Some(premium(n)), &none())
            .await
            .unwrap();
    }
    let err = h
        .recovery
        .request("x@example.com", Some(premium(19)), &none())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Blocked { .. }), "{err:?}");
    assert!(h.events.kinds().iter().any(|k| matches!(
        k,
        EventKind::Suspicious {
            pattern: Suspicion::SmsPumpingCountry {
                country_code: 374,
                sends: 20,
                verified: 0
            }
        }
    )));
    assert!(
        h.recovery
            .request("x@example.com", Some(premium(50)), &none())
            .await
            .is_err()
    );
    // Other countries are unaffected.
    h.request(1, &none()).await.unwrap();
    // Support lifts the country's block.
    h.recovery
        .support()
        .unblock(
            &Agent::new("dana").unwrap(),
            "a carrier confirmed the traffic",
            &BlockTarget::CountryCode(374),
        )
        .await
        .unwrap();
    h.recovery
        .request("x@example.com", Some(premium(51)), &none())
        .await
        .unwrap();
}

#[tokio::test]
async fn sends_that_get_verified_are_not_pumping() {
    let detectors = Detectors::default()
        .with_pumping_min_sends(10, 1_000)
        .with_auto_block(Some(HOUR));
    let h = harness(
        Limits::builder()
            .clear_send_rules()
            .detectors(detectors)
            .build()
            .unwrap(),
    );
    for n in 0..30 {
        let flow = h.request(n, &none()).await.unwrap().flow_id;
        if n % 5 == 0 {
            let code = h.sender.last_code().unwrap();
            h.recovery
                .verify(&flow, code.expose_secret(), &none())
                .await
                .unwrap();
        }
    }
    assert!(
        !h.events
            .kinds()
            .iter()
            .any(|k| matches!(k, EventKind::Suspicious { .. }))
    );
}

#[tokio::test]
async fn repeated_lockouts_of_one_account_are_suspicious() {
    let policy = Policy::builder()
        .max_attempts(5)
        .account_failures(5, HOUR)
        .build()
        .unwrap();
    let h = harness_with(Limits::none(), policy);
    let agent = Agent::new("dana").unwrap();
    for round in 1..=3u64 {
        let requested = h.request(1, &none()).await.unwrap();
        let code = h.sender.last_code().unwrap();
        for _ in 0..5 {
            let _ = h
                .recovery
                .verify(&requested.flow_id, &wrong(&code), &none())
                .await;
        }
        let found = h.events.kinds().into_iter().any(|k| {
            matches!(
                k,
                EventKind::Suspicious {
                    pattern: Suspicion::RepeatedLockouts { lockouts: 3 }
                }
            )
        });
        assert_eq!(found, round == 3, "round {round}");
        let subject = Subject::Account(account(1).id);
        h.recovery
            .support()
            .unlock(&agent, "caller verified", &subject)
            .await
            .unwrap();
    }
}

// ---- lockout and the support desk ----

#[tokio::test]
async fn a_locked_user_gets_a_reference_that_support_can_look_up_and_clear() {
    let policy = Policy::builder()
        .account_failures(5, Duration::from_secs(86_400))
        .build()
        .unwrap();
    let h = harness_with(Limits::none(), policy);
    let requested = h.request(1, &none()).await.unwrap();
    let code = h.sender.last_code().unwrap();
    for _ in 0..4 {
        h.recovery
            .verify(&requested.flow_id, &wrong(&code), &none())
            .await
            .unwrap_err();
    }
    let err = h
        .recovery
        .verify(&requested.flow_id, &wrong(&code), &none())
        .await
        .unwrap_err();
    let Error::Locked {
        until: Some(until),
        reference: Some(reference),
        support,
        ..
    } = &err
    else {
        panic!("the fifth wrong code locks the account: {err:?}")
    };
    assert_eq!(*until, T0.saturating_add(Duration::from_secs(86_400)));
    assert_eq!(support.as_deref(), Some("help@acme.example"));
    assert!(err.to_string().contains(&reference.to_string()));
    let again = h.request(1, &none()).await.unwrap_err();
    assert!(
        h.events
            .kinds()
            .iter()
            .any(|k| matches!(k, EventKind::LockedOut { until: Some(_) })),
        "a request refused by the lock is reported"
    );
    assert!(
        matches!(&again, Error::Locked { reference: Some(r), .. } if r == reference),
        "{again:?}"
    );

    // The user reads the reference out; the agent types it their own way.
    let agent = Agent::new("dana@support").unwrap();
    let typed = SupportReference::parse(&reference.to_string().to_lowercase().replace('-', "")).unwrap();
    let case = h
        .recovery
        .support()
        .lookup_reference(&agent, "user called", &typed)
        .await
        .unwrap();
    assert_eq!(case.subject, Subject::Account(account(1).id));
    assert_eq!(case.failures, 5);
    assert_eq!(case.locked_until, Some(*until));
    assert_eq!(case.reference, Some(*reference));
    assert_eq!(case.flows.len(), 1);
    assert_eq!(case.flows[0].state, EffectiveState::Stored(FlowState::Locked));
    assert_eq!(case.flows[0].failed_attempts, 5);
    assert_eq!(case.flows[0].masked_phone.unwrap().to_string(), "+1 ***-***-0001");
    let shown = format!("{case:?}");
    assert!(
        !shown.contains(code.expose_secret()) && !shown.contains("+14155550001"),
        "{shown}"
    );

    h.recovery
        .support()
        .unlock(&agent, "identity checked by video call", &case.subject)
        .await
        .unwrap();
    let fresh = h.request(1, &none()).await.unwrap();
    assert_eq!(fresh.attempts_left, 5, "an unlock clears the account's failures");
    let by_account = h
        .recovery
        .support()
        .lookup_account(&agent, "follow-up", &account(1).id)
        .await
        .unwrap();
    assert_eq!(by_account.locked_until, None);
    assert_eq!(by_account.failures, 0);
    assert!(by_account.has_open_flow());

    h.recovery
        .support()
        .cancel(&agent, "user asked to stop", &fresh.flow_id)
        .await
        .unwrap();
    let code = h.sender.last_code().unwrap();
    let err = h
        .recovery
        .verify(&fresh.flow_id, code.expose_secret(), &none())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    let err = h
        .recovery
        .support()
        .cancel(&agent, "twice", &fresh.flow_id)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");

    let audit: Vec<(SupportAction, String, String)> = h
        .events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Support {
                action,
                agent,
                reason,
                ..
            } => Some((action, agent, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        audit.iter().map(|(a, _, _)| *a).collect::<Vec<_>>(),
        [
            SupportAction::Lookup,
            SupportAction::Unlock,
            SupportAction::Lookup,
            SupportAction::Cancel,
            SupportAction::Cancel
        ],
        "every action is audited before it acts, the refused second cancel included"
    );
    let with_reference = h.events.kinds().into_iter().any(|k| {
        matches!(k, EventKind::Support { action: SupportAction::Lookup, reference: Some(r), .. } if r == *reference)
    });
    assert!(with_reference, "a look-up by reference records the reference");
    assert!(audit.iter().all(|(_, agent, _)| agent == "dana@support"));
    assert_eq!(audit[1].2, "identity checked by video call");
}

#[tokio::test]
async fn support_refuses_actions_without_a_reason_and_unknown_references() {
    let h = harness(Limits::none());
    let agent = Agent::new("dana").unwrap();
    let err = h
        .recovery
        .support()
        .lookup_account(&agent, "  ", &account(1).id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Input(InputError::MalformedReason)),
        "{err:?}"
    );
    let unknown = SupportReference::parse("ABCD-1234").unwrap();
    let err = h
        .recovery
        .support()
        .lookup_reference(&agent, "user called", &unknown)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound), "{err:?}");
    let err = h
        .recovery
        .support()
        .cancel(&agent, "x", &FlowId::generate().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound), "{err:?}");
    assert!(SupportReference::parse("not a reference").is_err());
    // An action without a reason is refused before anything; the others are
    // audited even though they found nothing (a guessed reference leaves a
    // trace).
    let audited: Vec<SupportAction> = h
        .events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Support { action, .. } => Some(action),
            _ => None,
        })
        .collect();
    assert_eq!(audited, [SupportAction::Lookup, SupportAction::Cancel]);
}

#[tokio::test]
async fn unknown_identifiers_lock_with_a_reference_support_can_find() {
    let policy = Policy::builder()
        .account_failures(5, Duration::from_secs(86_400))
        .build()
        .unwrap();
    let h = harness_with(Limits::none(), policy);
    let requested = h
        .recovery
        .request("nobody@example.com", None, &none())
        .await
        .unwrap();
    for _ in 0..4 {
        h.recovery
            .verify(&requested.flow_id, "000000", &none())
            .await
            .unwrap_err();
    }
    let err = h
        .recovery
        .verify(&requested.flow_id, "000000", &none())
        .await
        .unwrap_err();
    let Error::Locked {
        reference: Some(reference),
        ..
    } = err
    else {
        panic!("a decoy locks like an account: {err:?}")
    };
    let agent = Agent::new("dana").unwrap();
    let case = h
        .recovery
        .support()
        .lookup_reference(&agent, "user called", &reference)
        .await
        .unwrap();
    assert!(
        matches!(case.subject, Subject::Unknown(_)),
        "support sees it is no account"
    );
    assert_eq!(
        h.sender.count(),
        0,
        "no notice goes to a phone that does not exist"
    );
}

// ---- notifications ----

#[tokio::test]
async fn a_completed_reset_notifies_the_phone_without_any_secret() {
    let h = harness(Limits::none());
    let requested = h.request(1, &none()).await.unwrap();
    let code = h.sender.last_code().unwrap();
    let verified = h
        .recovery
        .verify(&requested.flow_id, code.expose_secret(), &none())
        .await
        .unwrap();
    let token = verified.token.expose_secret();
    h.recovery.reset(&token, &none()).await.unwrap();
    let messages = h.sender.messages();
    let notice = messages.last().unwrap();
    assert_eq!(notice.kind, MessageKind::Notice);
    assert_eq!(notice.to, account(1).phone);
    let body = notice.body.expose_secret();
    assert!(
        body.contains("password") && body.contains("help@acme.example"),
        "{body}"
    );
    assert!(
        !body.contains(code.expose_secret()) && !body.contains(&token[32..]),
        "{body}"
    );
    assert!(h.events.kinds().contains(&EventKind::NotificationSent));
}

#[tokio::test]
async fn a_failed_notice_is_an_event_and_the_reset_still_stands() {
    let h = harness(Limits::none());
    let requested = h.request(1, &none()).await.unwrap();
    let code = h.sender.last_code().unwrap();
    let verified = h
        .recovery
        .verify(&requested.flow_id, code.expose_secret(), &none())
        .await
        .unwrap();
    h.sender
        .fail_next(SendError::new(SendErrorKind::Unavailable, "503"));
    let done = h
        .recovery
        .reset(&verified.token.expose_secret(), &none())
        .await
        .unwrap();
    assert_eq!(done.account, account(1).id);
    assert!(h.events.kinds().contains(&EventKind::NotificationFailed {
        kind: SendErrorKind::Unavailable
    }));
}

#[tokio::test]
async fn messages_follow_the_requests_locale() {
    let h = harness(Limits::none());
    let ctx = RequestContext::without_client_ip().with_locale(otp_recovery::Locale::DE);
    h.recovery
        .request("x@example.com", Some(account(1)), &ctx)
        .await
        .unwrap();
    let body = h.sender.messages()[0].body.expose_secret().to_owned();
    assert!(body.contains("Wiederherstellungscode"), "{body}");
}

// ---- limits raced by many tasks ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_for_one_phone_send_exactly_the_limit() {
    let h = harness(only(Rule::new(LimitScope::Phone, 5, 10 * MINUTE)));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let r = h.recovery.clone();
            tokio::spawn(async move { r.request("x@example.com", Some(account(1)), &none()).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::RateLimited {
                scope: LimitScope::Phone,
                ..
            }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(h.sender.count(), 5, "exactly the limit's SMS go out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_codes_from_one_ip_are_evaluated_exactly_up_to_its_limit() {
    let h = harness(
        Limits::builder()
            .clear_send_rules()
            .ip_verifies(Some((12, HOUR)))
            .build()
            .unwrap(),
    );
    let mut flows = Vec::new();
    for n in 0..20 {
        flows.push(h.request(n, &none()).await.unwrap().flow_id);
    }
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let r = h.recovery.clone();
            let flow = flows[i % flows.len()];
            tokio::spawn(async move { r.verify(&flow, "000000", &ip("203.0.113.1")).await })
        })
        .collect();
    let mut evaluated = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(Error::InvalidCode { .. }) => evaluated += 1,
            Err(Error::RateLimited {
                scope: LimitScope::IpVerifies,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(evaluated, 12, "the IP's limit holds exactly under racing guesses");
}

mod enumeration_property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Request,
        Wrong,
        Resend,
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Request),
            4 => Just(Op::Wrong),
            2 => Just(Op::Resend),
            2 => prop_oneof![Just(1u64), Just(29), Just(31), Just(59), Just(61), 0u64..4_000].prop_map(Op::Wait),
        ]
    }

    async fn run(h: &Harness, account: Option<Account>, ops: &[Op]) -> Vec<String> {
        let mut trace = Vec::new();
        let mut flow = None;
        for op in ops {
            match op {
                Op::Request => {
                    let r = h
                        .recovery
                        .request("target@example.com", account.clone(), &none())
                        .await;
                    if let Ok(r) = &r {
                        flow = Some(r.flow_id);
                        trace.push(format!(
                            "{:?} {:?} {}",
                            r.code_expires_at, r.next_send_at, r.attempts_left
                        ));
                    }
                    trace.push(shape(&r));
                }
                Op::Wrong => {
                    if let Some(f) = flow {
                        trace.push(shape(&h.recovery.verify(&f, "000000", &none()).await));
                    }
                }
                Op::Resend => {
                    if let Some(f) = flow {
                        let r = h.recovery.resend(&f, &none()).await;
                        if let Ok(r) = &r {
                            trace.push(format!(
                                "{:?} {:?} {}",
                                r.code_expires_at, r.next_send_at, r.attempts_left
                            ));
                        }
                        trace.push(shape(&r));
                    }
                }
                Op::Wait(secs) => h.clock.advance(Duration::from_secs(*secs)),
            }
        }
        trace
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a client does, a known and an unknown identifier get the
        /// same answers, limits and locks included.
        #[test]
        fn known_and_unknown_identifiers_answer_alike(ops in proptest::collection::vec(op(), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let limits = Limits::builder()
                .clear_send_rules()
                .add_send_rule(Rule::new(LimitScope::Phone, 4, 10 * MINUTE))
                .add_send_rule(Rule::new(LimitScope::Account, 6, HOUR))
                .build()
                .unwrap();
            let policy = Policy::builder().account_failures(8, HOUR).build().unwrap();
            let known = harness_with(limits.clone(), policy.clone());
            let unknown = harness_with(limits, policy);
            let a = rt.block_on(run(&known, Some(account(1)), &ops));
            let b = rt.block_on(run(&unknown, None, &ops));
            // (A one-in-a-million draw of "000000" as the account's code
            // would verify and differ by design.)
            prop_assert_eq!(a, b);
            prop_assert_eq!(unknown.sender.count(), 0);
        }

        /// The same over an account in any of seven countries (national
        /// numbers of 7 to 11 digits) and clients on three networks, one
        /// without an IP: every answer, its error scope and the mask's
        /// shape, and what a reader of the store sees (calls and counters
        /// per operation), are the same for an unknown identifier whose
        /// made-up destinations are the host's users'. (Timing is
        /// tests/timing.rs's.)
        #[test]
        fn known_and_unknown_identifiers_look_alike_to_the_client_and_the_store(
            user in 0..USERS.len(),
            seed in any::<u64>(),
            ops in proptest::collection::vec(observed_op(), 1..50),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (cc, national) = USERS[user];
            let limits = Limits::builder()
                .clear_send_rules()
                .add_send_rule(Rule::new(LimitScope::Phone, 4, 10 * MINUTE))
                .add_send_rule(Rule::new(LimitScope::Account, 6, HOUR))
                .add_send_rule(Rule::new(LimitScope::Ip, 7, HOUR))
                .decoy_destinations([DecoyDestination::new(cc, national, 1)])
                .build()
                .unwrap();
            let policy = Policy::builder().account_failures(8, HOUR).build().unwrap();
            let known = Observing::new(limits.clone(), policy.clone());
            let unknown = Observing::new(limits, policy);
            let mut digits = format!("+{cc}{}", 2 + seed % 8);
            for i in 1..u32::from(national) {
                digits.push(char::from(b'0' + ((seed >> (i % 60)) % 10) as u8));
            }
            let account = Account::new(AccountId::new("u").unwrap(), PhoneNumber::parse(&digits).unwrap());
            let a = rt.block_on(known.run(Some(account), &ops));
            let b = rt.block_on(unknown.run(None, &ops));
            prop_assert_eq!(a, b);
            prop_assert_eq!(unknown.sender.count(), 0);
        }
    }

    /// The host's users: country and national digits.
    const USERS: [(u16, u8); 7] = [(1, 10), (44, 10), (33, 9), (49, 11), (354, 7), (372, 8), (86, 11)];

    /// An operation from one of three networks (0: no client IP).
    #[derive(Debug, Clone)]
    enum Observed {
        Request(u8),
        Wrong(u8),
        Resend(u8),
        Wait(u64),
    }

    fn observed_op() -> impl Strategy<Value = Observed> {
        prop_oneof![
            3 => (0u8..3).prop_map(Observed::Request),
            4 => (0u8..3).prop_map(Observed::Wrong),
            2 => (0u8..3).prop_map(Observed::Resend),
            2 => prop_oneof![Just(1u64), Just(31), Just(61), 0u64..4_000].prop_map(Observed::Wait),
        ]
    }

    fn network(n: u8) -> RequestContext {
        match n {
            0 => none(),
            1 => ip("203.0.113.7"),
            _ => ip("2001:db8:5::1"),
        }
    }

    /// The mask with its digits hidden: country, length and format.
    fn mask_shape(mask: &otp_recovery::MaskedPhone) -> String {
        mask.to_string()
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect()
    }

    /// An answer as a client compares it.
    fn answer(r: &Result<Requested, Error>) -> String {
        match r {
            Ok(ok) => format!(
                "ok {} {:?} {:?} {}",
                mask_shape(&ok.masked_phone),
                ok.code_expires_at,
                ok.next_send_at,
                ok.attempts_left
            ),
            Err(_) => shape(r),
        }
    }

    struct Observing {
        recovery: Recovery<Arc<common::Observed>, RecordingSender, ManualClock>,
        store: Arc<common::Observed>,
        sender: RecordingSender,
        clock: ManualClock,
    }

    impl Observing {
        fn new(limits: Limits, policy: Policy) -> Self {
            let store = Arc::new(common::Observed::default());
            let sender = RecordingSender::new();
            let clock = ManualClock::new(T0);
            let recovery = Recovery::new(
                store.clone(),
                sender.clone(),
                KeyRing::new(1, ServerKey::from_bytes(vec![3; 32]).unwrap()),
            )
            .with_policy(policy)
            .with_limits(limits)
            .with_clock(clock.clone());
            Observing {
                recovery,
                store,
                sender,
                clock,
            }
        }

        /// What the client and a reader of the store see of each operation.
        async fn run(&self, account: Option<Account>, ops: &[Observed]) -> Vec<String> {
            let mut trace = Vec::new();
            let mut flow = None;
            let mut keys = 0;
            for op in ops {
                let seen = match op {
                    Observed::Request(n) => {
                        let r = self
                            .recovery
                            .request("target@example.com", account.clone(), &network(*n))
                            .await;
                        if let Ok(r) = &r {
                            flow = Some(r.flow_id);
                        }
                        answer(&r)
                    }
                    Observed::Wrong(n) => match flow {
                        Some(f) => shape(&self.recovery.verify(&f, "000000", &network(*n)).await),
                        None => continue,
                    },
                    Observed::Resend(n) => match flow {
                        Some(f) => answer(&self.recovery.resend(&f, &network(*n)).await),
                        None => continue,
                    },
                    Observed::Wait(secs) => {
                        self.clock.advance(Duration::from_secs(*secs));
                        continue;
                    }
                };
                let counted = self.store.keys().len();
                trace.push(format!(
                    "{op:?}: {seen}; {} calls, {} counters",
                    self.store.take(),
                    counted - keys
                ));
                keys = counted;
            }
            trace
        }
    }
}

#[tokio::test]
async fn a_pumped_country_is_reported_but_not_blocked_unless_country_blocks_are_enabled() {
    let detectors = Detectors::default()
        .with_pumping_min_sends(20, 1_000)
        .with_auto_block(Some(HOUR));
    let h = harness(
        Limits::builder()
            .clear_send_rules()
            .detectors(detectors)
            .build()
            .unwrap(),
    );
    for n in 0..40u32 {
        let target = Account::new(
            AccountId::new(format!("p{n}")).unwrap(),
            PhoneNumber::parse(&format!("+37477{:06}", n)).unwrap(),
        );
        h.recovery
            .request("x@example.com", Some(target), &none())
            .await
            .unwrap();
    }
    assert!(h.events.kinds().iter().any(|k| matches!(
        k,
        EventKind::Suspicious {
            pattern: Suspicion::SmsPumpingCountry {
                country_code: 374,
                ..
            }
        }
    )));
    assert!(
        !h.events
            .kinds()
            .iter()
            .any(|k| matches!(k, EventKind::AutoBlocked { .. }))
    );
}

#[tokio::test]
async fn a_refused_request_spends_no_budget() {
    // One noisy IP is refused by its own limit; the global budget it would
    // have spent is still there for everyone else.
    let limits = Limits::builder()
        .clear_send_rules()
        .add_send_rule(Rule::new(LimitScope::Ip, 3, HOUR))
        .add_send_rule(Rule::new(LimitScope::Global, 10, HOUR))
        .build()
        .unwrap();
    let h = harness(limits);
    let noisy = ip("203.0.113.200");
    for n in 0..200 {
        let _ = h.request(1_000 + n, &noisy).await;
    }
    for n in 0..7 {
        h.request(n, &ip(&format!("198.51.100.{n}"))).await.unwrap();
    }
    let err = h.request(99, &ip("198.51.100.99")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                scope: LimitScope::Global,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn two_accounts_sharing_one_phone_share_its_limit() {
    let h = harness(only(Rule::new(LimitScope::Phone, 5, 10 * MINUTE)));
    let shared = PhoneNumber::parse("+14155550100").unwrap();
    for n in 0..6u32 {
        let a = Account::new(AccountId::new(format!("member-{n}")).unwrap(), shared.clone());
        let r = h
            .recovery
            .request(&format!("m{n}@example.com"), Some(a), &none())
            .await;
        if n < 5 {
            r.unwrap();
        } else {
            assert!(
                matches!(
                    r,
                    Err(Error::RateLimited {
                        scope: LimitScope::Phone,
                        ..
                    })
                ),
                "{r:?}"
            );
        }
    }
}

#[tokio::test]
async fn identifiers_differing_only_in_case_or_spaces_are_one_identifier() {
    let h = harness(Limits::none());
    let a = h
        .recovery
        .request("Nobody@Example.com ", None, &none())
        .await
        .unwrap();
    let b = h
        .recovery
        .request("nobody@example.com", None, &none())
        .await
        .unwrap();
    assert_eq!(a.masked_phone, b.masked_phone);
    let err = h
        .recovery
        .verify(&a.flow_id, "000000", &none())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Superseded),
        "the second request superseded the first: {err:?}"
    );
}

#[tokio::test]
async fn unknown_identifiers_appear_in_the_allowed_country() {
    let h = harness(Limits::builder().allow_countries([44]).build().unwrap());
    let r = h
        .recovery
        .request("nobody@example.com", None, &none())
        .await
        .unwrap();
    assert_eq!(r.masked_phone.country_code(), 44);
    assert!(
        r.masked_phone.to_string().starts_with("+44 "),
        "{}",
        r.masked_phone
    );
}

/// A request that reads the account's failures, then, before it stores its
/// flow, sees `wrong_meanwhile` wrong codes land on the account's open
/// flow: the new flow's snapshot of the failures is behind. The account
/// allows `limit` failures, 5 per flow; 5 were spent on each of
/// `spent_flows` earlier flows. Returns the answer to the last of `wrong_here`
/// wrong codes on the new flow, and the events of that last one.
async fn wrong_code_on_a_flow_opened_behind(
    limit: u32,
    spent_flows: u32,
    wrong_meanwhile: u32,
    wrong_here: u32,
    fail_flow_write: bool,
) -> (Error, Vec<EventKind>, Rec2) {
    let store = Arc::new(common::Observed::default());
    let sender = RecordingSender::new();
    let events = RecordingSink::new();
    let recovery = Arc::new(
        Recovery::new(
            store.clone(),
            sender.clone(),
            KeyRing::new(1, ServerKey::from_bytes(vec![3; 32]).unwrap()),
        )
        .with_policy(
            Policy::builder()
                .account_failures(limit, 24 * HOUR)
                .build()
                .unwrap(),
        )
        .with_events(events.clone())
        .with_clock(ManualClock::new(T0)),
    );
    let ctx = ip("198.51.100.7");
    let spend = async |n: u32| {
        let flow = recovery
            .request("a", Some(account(1)), &ctx)
            .await
            .unwrap()
            .flow_id;
        let code = sender.last_code().unwrap();
        for _ in 0..n {
            recovery.verify(&flow, &wrong(&code), &ctx).await.unwrap_err();
        }
    };
    for _ in 0..spent_flows {
        spend(5).await;
    }
    let open = recovery
        .request("a", Some(account(1)), &ctx)
        .await
        .unwrap()
        .flow_id;
    let open_code = sender.last_code().unwrap();
    let held = store.create_gate.lock().await;
    let behind = tokio::spawn({
        let (recovery, ctx) = (recovery.clone(), ctx.clone());
        async move { recovery.request("a", Some(account(1)), &ctx).await.unwrap() }
    });
    // The request runs until its flow's creation waits for the gate.
    tokio::task::yield_now().await;
    assert!(!behind.is_finished());
    for _ in 0..wrong_meanwhile {
        recovery
            .verify(&open, &wrong(&open_code), &ctx)
            .await
            .unwrap_err();
    }
    drop(held);
    let flow = behind.await.unwrap().flow_id;
    let code = sender.last_code().unwrap();
    for _ in 1..wrong_here {
        let err = recovery.verify(&flow, &wrong(&code), &ctx).await.unwrap_err();
        assert!(matches!(err, Error::InvalidCode { .. }), "{err:?}");
    }
    let before = events.kinds().len();
    store
        .fail_swaps
        .store(fail_flow_write, std::sync::atomic::Ordering::SeqCst);
    let err = recovery.verify(&flow, &wrong(&code), &ctx).await.unwrap_err();
    let kinds = events.kinds().split_off(before);
    (err, kinds, recovery)
}

type Rec2 = Arc<Recovery<Arc<common::Observed>, RecordingSender, ManualClock>>;

#[tokio::test]
async fn a_flow_opened_while_other_wrong_codes_landed_allows_none_past_the_account_limit() {
    // The answer and events of a wrong code that locked the account.
    let locked_the_account = |err: &Error, kinds: &[EventKind]| {
        assert!(
            matches!(
                err,
                Error::Locked {
                    until: Some(_),
                    reference: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            kinds.iter().any(|k| matches!(k, EventKind::AccountLocked { .. })),
            "{kinds:?}"
        );
    };
    // Its wrong code is the account's 10th: the account locks here.
    let (err, kinds, recovery) = wrong_code_on_a_flow_opened_behind(10, 1, 4, 1, false).await;
    locked_the_account(&err, &kinds);
    assert!(kinds.contains(&EventKind::FlowLocked), "{kinds:?}");
    let again = recovery
        .request("a", Some(account(1)), &ip("198.51.100.7"))
        .await
        .unwrap_err();
    assert!(matches!(again, Error::Locked { .. }), "{again:?}");

    // The 10th landed on the other flow, which locked the account: this
    // flow locks and answers with that lock, and locks nothing again.
    let (err, kinds, _) = wrong_code_on_a_flow_opened_behind(10, 1, 5, 1, false).await;
    assert!(matches!(err, Error::Locked { until: Some(_), .. }), "{err:?}");
    assert!(kinds.contains(&EventKind::FlowLocked), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| matches!(k, EventKind::AccountLocked { .. })),
        "{kinds:?}"
    );

    // The account's 20th wrong code is also the flow's own 5th, which
    // locks the flow by itself: the account still locks.
    let (err, kinds, _) = wrong_code_on_a_flow_opened_behind(20, 2, 5, 5, false).await;
    locked_the_account(&err, &kinds);

    // The account's 10th again, and the flow's write after it fails: the
    // account's lock was stored before it.
    let (err, _, recovery) = wrong_code_on_a_flow_opened_behind(10, 1, 4, 1, true).await;
    assert!(matches!(err, Error::Store(_)), "{err:?}");
    let store = recovery.store();
    let lock_key = store.keys().into_iter().find(|k| k.starts_with("lock:")).unwrap();
    let lock = Counter::new(lock_key, Duration::from_secs(1), 0);
    let read = store.increment_counters(&[lock], T0).await.unwrap();
    assert_eq!(read[0].count, 1, "the lock was not stored");
}
