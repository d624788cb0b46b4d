//! Store calls per operation. For stores where every method is one round
//! trip (the PostgreSQL and Redis stores), calls are round trips; the goal
//! is at most two per request and per verify, limits and detectors
//! included.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Observed;
use otp_recovery::sms::RecordingSender;
use otp_recovery::{
    Account, AccountId, KeyRing, ManualClock, PhoneNumber, Recovery, RequestContext, ServerKey, Timestamp,
};

#[tokio::test]
async fn request_and_verify_take_two_round_trips_each_with_every_limit_on() {
    let store = Arc::new(Observed::default());
    let sender = RecordingSender::new();
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    // Default policy, limits and detectors, and a client IP: every rule on.
    let recovery = Recovery::new(
        store.clone(),
        sender.clone(),
        KeyRing::new(1, ServerKey::generate().unwrap()),
    )
    .with_clock(clock.clone());
    let ctx = RequestContext::from_ip("198.51.100.4".parse().unwrap());
    let account = || {
        Account::new(
            AccountId::new("a").unwrap(),
            PhoneNumber::parse("+14155550123").unwrap(),
        )
    };

    let requested = recovery
        .request("a@example.com", Some(account()), &ctx)
        .await
        .unwrap();
    assert_eq!(store.take(), 2, "request: counters, create");
    recovery.request("nobody@example.com", None, &ctx).await.unwrap();
    assert_eq!(store.take(), 2, "request of an unknown identifier: the same two");

    let code = sender.last_code().unwrap();
    let wrong = format!(
        "{:06}",
        (code.expose_secret().parse::<u32>().unwrap() + 1) % 1_000_000
    );
    recovery
        .verify(&requested.flow_id, &wrong, &ctx)
        .await
        .unwrap_err();
    assert_eq!(store.take(), 2, "wrong code: load with counters, counting swap");
    let verified = recovery
        .verify(&requested.flow_id, code.expose_secret(), &ctx)
        .await
        .unwrap();
    assert_eq!(store.take(), 2, "right code: load with counters, counting swap");

    recovery
        .reset(&verified.token.expose_secret(), &ctx)
        .await
        .unwrap();
    assert_eq!(
        store.take(),
        3,
        "reset: load, counting swap, and the end of the wrong-code streak this flow began"
    );

    recovery
        .request("a@example.com", Some(account()), &ctx)
        .await
        .unwrap();
    assert_eq!(
        store.take(),
        2,
        "a later request: counters with the newest flow, create superseding it"
    );
    recovery.request("nobody@example.com", None, &ctx).await.unwrap();
    assert_eq!(
        store.take(),
        2,
        "a later request of an unknown identifier: the same two"
    );
    let requested = recovery
        .request("a@example.com", Some(account()), &ctx)
        .await
        .unwrap();
    store.take();
    clock.advance(Duration::from_secs(30));
    recovery.resend(&requested.flow_id, &ctx).await.unwrap();
    assert_eq!(store.take(), 3, "resend: load, counters, swap");

    let agent = otp_recovery::support::Agent::new("dana@support").unwrap();
    recovery
        .support()
        .cancel(&agent, "asked by phone", &requested.flow_id)
        .await
        .unwrap();
    assert_eq!(store.take(), 2, "support's cancel: load, swap");

    // A recovery without a wrong code: the reset's swap reads a streak of
    // zero and deletes nothing.
    let requested = recovery
        .request("a@example.com", Some(account()), &ctx)
        .await
        .unwrap();
    let code = sender.last_code().unwrap();
    let verified = recovery
        .verify(&requested.flow_id, code.expose_secret(), &ctx)
        .await
        .unwrap();
    store.take();
    recovery
        .reset(&verified.token.expose_secret(), &ctx)
        .await
        .unwrap();
    assert_eq!(store.take(), 2, "reset: load, counting swap");
}
