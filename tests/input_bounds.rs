//! Input the crate bounds before doing any work for it (issue 18, point
//! 7): identifiers past their longest, and codes as people type them.

use std::sync::Arc;

use otp_recovery::sms::RecordingSender;
use otp_recovery::store::MemoryStore;
use otp_recovery::{
    Account, AccountId, Error, InputError, KeyRing, MAX_IDENTIFIER_BYTES, ManualClock, PhoneNumber, Recovery,
    RequestContext, ServerKey, Timestamp,
};

type Rec = Recovery<Arc<MemoryStore>, RecordingSender, ManualClock>;

fn setup() -> (Rec, Arc<MemoryStore>, RecordingSender) {
    let (store, sender) = (Arc::new(MemoryStore::new()), RecordingSender::new());
    let recovery = Recovery::new(
        store.clone(),
        sender.clone(),
        KeyRing::new(1, ServerKey::from_bytes(vec![9; 32]).unwrap()),
    )
    .with_clock(ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000)));
    (recovery, store, sender)
}

fn alice() -> Account {
    Account::new(
        AccountId::new("alice").unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

#[tokio::test]
async fn a_megabyte_identifier_is_refused_before_any_work_for_any_account() {
    let (recovery, store, sender) = setup();
    let ctx = RequestContext::from_ip("198.51.100.7".parse().unwrap());
    let huge = "a".repeat(1 << 20);
    for account in [None, Some(alice())] {
        let err = recovery
            .request(&huge, account, &ctx)
            .await
            .expect_err("past the bound");
        assert!(
            matches!(err, Error::Input(InputError::IdentifierTooLong)),
            "{err:?}"
        );
    }
    assert_eq!(sender.count(), 0, "nothing sent");
    assert_eq!(store.flow_count(), 0, "nothing stored");
    assert_eq!(store.counter_count(), 0, "nothing counted");
}

#[tokio::test]
async fn the_identifier_bound_is_exact() {
    let (recovery, _, _) = setup();
    let ctx = RequestContext::without_client_ip();
    let at = format!("{}@x.io", "a".repeat(MAX_IDENTIFIER_BYTES - 5));
    assert_eq!(at.len(), MAX_IDENTIFIER_BYTES);
    recovery
        .request(&at, None, &ctx)
        .await
        .expect("an identifier of exactly the bound is taken");
    let over = format!("a{at}");
    let err = recovery
        .request(&over, None, &ctx)
        .await
        .expect_err("one byte over");
    assert!(
        matches!(err, Error::Input(InputError::IdentifierTooLong)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_code_typed_with_spaces_or_in_another_script_verifies_and_garbage_costs_no_attempt() {
    let (recovery, _, sender) = setup();
    let ctx = RequestContext::without_client_ip();
    let flow = recovery
        .request("alice", Some(alice()), &ctx)
        .await
        .unwrap()
        .flow_id;
    let code = sender.last_code().unwrap().expose_secret().to_owned();
    // Input that was never a code: refused, and no attempt spent.
    for garbage in ["12345a", "+123456", &"1".repeat(100)] {
        let err = recovery
            .verify(&flow, garbage, &ctx)
            .await
            .expect_err("not a code");
        assert!(matches!(err, Error::Input(InputError::MalformedCode)), "{err:?}");
    }
    let wrong: String = code
        .chars()
        .map(|c| if c == '9' { '0' } else { char::from(c as u8 + 1) })
        .collect();
    let err = recovery.verify(&flow, &wrong, &ctx).await.expect_err("wrong");
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
        "malformed input must not have spent attempts: {err:?}"
    );
    // The right code, typed as "123 456" in Arabic-Indic digits.
    let arabic: String = code
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let digit = char::from_u32(0x0660 + u32::from(c as u8 - b'0')).unwrap();
            (i == 3).then_some(' ').into_iter().chain([digit])
        })
        .collect();
    recovery
        .verify(&flow, &arabic, &ctx)
        .await
        .expect("the right code in Arabic-Indic digits, with a space");
}

/// A call without a client IP turns every per-IP rule off for it: the
/// constructor says so, and the first such call of a recovery reports it,
/// once, whichever call it is.
#[tokio::test]
async fn calls_without_a_client_ip_are_reported_once_an_hour_when_per_ip_rules_exist() {
    use otp_recovery::events::{EventKind, RecordingSink};
    let missing = |sink: &RecordingSink| {
        sink.kinds()
            .iter()
            .filter(|k| matches!(k, EventKind::ClientIpMissing))
            .count()
    };
    let (recovery, _, _) = setup();
    let sink = RecordingSink::new();
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let recovery = recovery.with_events(sink.clone()).with_clock(clock.clone());
    let with_ip = RequestContext::from_ip("198.51.100.7".parse().unwrap());
    let flow = recovery
        .request("alice@example.com", Some(alice()), &with_ip)
        .await
        .unwrap()
        .flow_id;
    assert_eq!(missing(&sink), 0, "a call with an IP reports nothing");
    let _ = recovery
        .verify(&flow, "000000", &RequestContext::without_client_ip())
        .await;
    assert_eq!(missing(&sink), 1, "a verify without one reports it");
    for _ in 0..3 {
        let _ = recovery
            .request("bob@example.com", None, &RequestContext::without_client_ip())
            .await;
    }
    assert_eq!(missing(&sink), 1, "once an hour");
    // From review: once for the life of the instance hid a proxy that
    // started dropping client IPs later on. An hour on, it is told again.
    clock.advance(std::time::Duration::from_secs(3599));
    let _ = recovery
        .request("bob@example.com", None, &RequestContext::without_client_ip())
        .await;
    assert_eq!(missing(&sink), 1, "not before the hour is out");
    clock.advance(std::time::Duration::from_secs(1));
    let _ = recovery
        .request("bob@example.com", None, &RequestContext::without_client_ip())
        .await;
    assert_eq!(missing(&sink), 2, "again an hour later");
    // Without per-IP rules nothing is turned off, and nothing is told.
    let quiet = RecordingSink::new();
    let (recovery, _, _) = setup();
    let recovery = recovery
        .with_limits(otp_recovery::limits::Limits::none())
        .with_events(quiet.clone());
    let _ = recovery
        .request("bob@example.com", None, &RequestContext::without_client_ip())
        .await;
    assert_eq!(missing(&quiet), 0, "no per-IP rule, nothing missing");
}
