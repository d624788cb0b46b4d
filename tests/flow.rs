//! The recovery rules, driven through `Recovery` over the in-memory store,
//! each at its exact boundary.

use std::sync::Arc;
use std::time::Duration;

use otp_recovery::record::FlowState;
use otp_recovery::sms::{RecordingSender, SendError, SendErrorKind};
use otp_recovery::store::MemoryStore;
use otp_recovery::{
    Account, AccountId, Code, Error, FlowId, InputError, KeyRing, ManualClock, PhoneNumber, Policy, Recovery,
    RequestContext, Requested, ServerKey, Timestamp,
};

type Rec = Recovery<Arc<MemoryStore>, RecordingSender, ManualClock>;

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
const MS: Duration = Duration::from_millis(1);

struct Harness {
    recovery: Rec,
    store: Arc<MemoryStore>,
    sender: RecordingSender,
    clock: ManualClock,
}

fn key(byte: u8) -> ServerKey {
    ServerKey::from_bytes(vec![byte; 32]).unwrap()
}

fn harness_with(policy: Policy) -> Harness {
    let store = Arc::new(MemoryStore::new());
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let recovery = Recovery::new(store.clone(), sender.clone(), KeyRing::new(1, key(1)))
        .with_policy(policy)
        .with_clock(clock.clone());
    Harness {
        recovery,
        store,
        sender,
        clock,
    }
}

fn harness() -> Harness {
    harness_with(Policy::default())
}

fn alice() -> Account {
    Account::new(
        AccountId::new("alice").unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

/// A code that is certainly not `code`.
fn wrong(code: &Code) -> String {
    let n: u64 = code.expose_secret().parse().unwrap();
    format!(
        "{:0width$}",
        (n + 1) % 10u64.pow(code.len() as u32),
        width = code.len()
    )
}

impl Harness {
    async fn request(&self) -> (Requested, Code) {
        let requested = self
            .recovery
            .request(
                "alice@example.com",
                Some(alice()),
                &RequestContext::without_client_ip(),
            )
            .await
            .unwrap();
        (requested, self.sender.last_code().unwrap())
    }

    async fn state(&self, flow: &FlowId) -> FlowState {
        use otp_recovery::store::CodeStore;
        self.store.get_flow(flow).await.unwrap().unwrap().state
    }
}

#[tokio::test]
async fn the_whole_flow_returns_the_account_once() {
    let h = harness();
    let (requested, code) = h.request().await;
    assert_eq!(requested.attempts_left, 5);
    assert_eq!(requested.masked_phone.to_string(), "+1 ***-***-0123");
    assert_eq!(
        requested.code_expires_at,
        T0.saturating_add(Duration::from_secs(600))
    );
    assert_eq!(
        requested.next_send_at,
        Some(T0.saturating_add(Duration::from_secs(30)))
    );
    let verified = h
        .recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    assert_eq!(
        verified.token_expires_at,
        T0.saturating_add(Duration::from_secs(600))
    );
    let done = h
        .recovery
        .reset(
            &verified.token.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    assert_eq!(done.account, alice().id);
    assert_eq!(done.flow_id, requested.flow_id);
    assert_eq!(h.state(&requested.flow_id).await, FlowState::Completed);
    assert!(matches!(
        h.recovery
            .reset(
                &verified.token.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await,
        Err(Error::AlreadyUsed)
    ));
}

#[tokio::test]
async fn code_verifies_at_its_last_valid_millisecond() {
    let h = harness();
    let (requested, code) = h.request().await;
    h.clock.set(Timestamp::from_unix_millis(
        requested.code_expires_at.as_unix_millis() - 1,
    ));
    assert!(
        h.recovery
            .verify(
                &requested.flow_id,
                code.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn code_is_rejected_at_the_millisecond_it_expires_without_costing_an_attempt() {
    let h = harness();
    let (requested, code) = h.request().await;
    h.clock.set(requested.code_expires_at);
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Expired), "{err:?}");
    // A resend gives a fresh code; the expired check consumed nothing.
    let again = h
        .recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert_eq!(again.attempts_left, 5);
}

#[tokio::test]
async fn fifth_wrong_code_locks_the_flow_and_sixth_is_refused() {
    let h = harness();
    let (requested, code) = h.request().await;
    for left in (0..5).rev() {
        let err = h
            .recovery
            .verify(
                &requested.flow_id,
                &wrong(&code),
                &RequestContext::without_client_ip(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidCode { attempts_left, .. } if attempts_left == left),
            "{err:?}"
        );
    }
    assert_eq!(h.state(&requested.flow_id).await, FlowState::Locked);
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            &wrong(&code),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked { until: None, .. }), "{err:?}");
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Locked { .. }),
        "the right code must not open a locked flow: {err:?}"
    );
    let err = h
        .recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Locked { .. }),
        "a locked flow sends no more codes: {err:?}"
    );
}

#[tokio::test]
async fn right_code_on_the_last_allowed_attempt_verifies() {
    let h = harness();
    let (requested, code) = h.request().await;
    for _ in 0..4 {
        h.recovery
            .verify(
                &requested.flow_id,
                &wrong(&code),
                &RequestContext::without_client_ip(),
            )
            .await
            .unwrap_err();
    }
    assert!(
        h.recovery
            .verify(
                &requested.flow_id,
                code.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_verified_code_can_never_be_used_again() {
    let h = harness();
    let (requested, code) = h.request().await;
    h.recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyUsed), "{err:?}");
}

#[tokio::test]
async fn token_resets_at_its_last_valid_millisecond_and_not_at_expiry() {
    let h = harness();
    let (requested, code) = h.request().await;
    let verified = h
        .recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    h.clock.set(Timestamp::from_unix_millis(
        verified.token_expires_at.as_unix_millis() - 1,
    ));
    assert!(
        h.recovery
            .reset(
                &verified.token.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );

    h.clock.set(T0);
    let (requested, code) = h.request().await;
    let verified = h
        .recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    h.clock.set(verified.token_expires_at);
    let err = h
        .recovery
        .reset(
            &verified.token.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Expired), "{err:?}");
}

#[tokio::test]
async fn a_wrong_or_garbage_token_is_refused_and_the_right_one_still_works() {
    let h = harness();
    let (requested, code) = h.request().await;
    let verified = h
        .recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    let token = verified.token.expose_secret();
    let mut tampered = token.to_string();
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(95.., last);
    assert!(matches!(
        h.recovery
            .reset(&tampered, &RequestContext::without_client_ip())
            .await,
        Err(Error::InvalidToken)
    ));
    for garbage in ["", "not a token", &token[..95], &token.to_uppercase()] {
        let err = h
            .recovery
            .reset(garbage, &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Input(InputError::MalformedToken)), "{err:?}");
    }
    let unknown_flow = format!("{}{}", FlowId::generate().unwrap(), &token[32..]);
    assert!(matches!(
        h.recovery
            .reset(&unknown_flow, &RequestContext::without_client_ip())
            .await,
        Err(Error::InvalidToken)
    ));
    assert!(
        h.recovery
            .reset(&token, &RequestContext::without_client_ip())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn resend_waits_out_a_cooldown_that_doubles_then_stops_at_five_sends() {
    let h = harness();
    let (requested, _) = h.request().await;
    let flow = requested.flow_id;
    let mut last_send = T0;
    for (sends, wait) in [(1, 30), (2, 60), (3, 120), (4, 240)] {
        let open_at = last_send.saturating_add(Duration::from_secs(wait));
        h.clock
            .set(Timestamp::from_unix_millis(open_at.as_unix_millis() - 1));
        let err = h
            .recovery
            .resend(&flow, &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::TooSoon { retry_after, .. } if retry_after == MS),
            "after {sends}: {err:?}"
        );
        h.clock.set(open_at);
        let again = h
            .recovery
            .resend(&flow, &RequestContext::without_client_ip())
            .await
            .unwrap();
        assert_eq!(h.sender.count(), sends + 1);
        last_send = open_at;
        let next = (sends < 4).then(|| open_at.saturating_add(Duration::from_secs(2 * wait)));
        assert_eq!(again.next_send_at, next);
    }
    h.clock.advance(Duration::from_secs(3600));
    assert!(matches!(
        h.recovery
            .resend(&flow, &RequestContext::without_client_ip())
            .await,
        Err(Error::TooManySends)
    ));
    assert_eq!(h.sender.count(), 5);
}

#[tokio::test]
async fn resend_makes_the_earlier_code_invalid() {
    let h = harness();
    let (requested, old) = h.request().await;
    h.clock.advance(Duration::from_secs(30));
    h.recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap();
    let new = h.sender.last_code().unwrap();
    assert_ne!(
        old.expose_secret(),
        new.expose_secret(),
        "codes are random; equal is a 1e-6 fluke"
    );
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            old.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
        "{err:?}"
    );
    assert!(
        h.recovery
            .verify(
                &requested.flow_id,
                new.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn resend_keeps_the_failed_attempts() {
    let h = harness();
    let (requested, code) = h.request().await;
    for _ in 0..3 {
        h.recovery
            .verify(
                &requested.flow_id,
                &wrong(&code),
                &RequestContext::without_client_ip(),
            )
            .await
            .unwrap_err();
    }
    h.clock.advance(Duration::from_secs(30));
    let again = h
        .recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert_eq!(again.attempts_left, 2);
    let code = h.sender.last_code().unwrap();
    h.recovery
        .verify(
            &requested.flow_id,
            &wrong(&code),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            &wrong(&code),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 0, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_new_request_supersedes_every_earlier_code_and_token() {
    let h = harness();
    let (first, first_code) = h.request().await;
    let (second, second_code) = h.request().await;
    let verified = h
        .recovery
        .verify(
            &second.flow_id,
            second_code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    let (third, _) = h.request().await;
    let err = h
        .recovery
        .verify(
            &first.flow_id,
            first_code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Superseded), "{err:?}");
    let err = h
        .recovery
        .reset(
            &verified.token.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Superseded),
        "an outstanding token dies with its flow: {err:?}"
    );
    assert_eq!(h.state(&third.flow_id).await, FlowState::CodeSent);
}

#[tokio::test]
async fn account_failures_carry_across_requests_until_the_window_ends() {
    let day = Duration::from_secs(86_400);
    let h = harness_with(Policy::builder().account_failures(7, day).build().unwrap());
    let (first, code) = h.request().await;
    for _ in 0..5 {
        h.recovery
            .verify(
                &first.flow_id,
                &wrong(&code),
                &RequestContext::without_client_ip(),
            )
            .await
            .unwrap_err();
    }
    // A new request gives a new flow, but not new account failures: 7 - 5
    // leaves 2 attempts, whatever the flow's own 5.
    let (second, code) = h.request().await;
    assert_eq!(second.attempts_left, 2);
    let err = h
        .recovery
        .verify(
            &second.flow_id,
            &wrong(&code),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 1, .. }),
        "{err:?}"
    );
    // The failure window opened with the first wrong code, at T0.
    let window_end = T0.saturating_add(day);
    let err = h
        .recovery
        .verify(
            &second.flow_id,
            &wrong(&code),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Locked { until: Some(t), .. } if t == window_end),
        "the 7th failure locks: {err:?}"
    );
    assert_eq!(h.state(&second.flow_id).await, FlowState::Locked);
    let err = h
        .recovery
        .verify(
            &second.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    let err = h
        .recovery
        .request(
            "alice@example.com",
            Some(alice()),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Locked { until: Some(t), .. } if t == window_end),
        "{err:?}"
    );
    // Two codes, then the lockout notice with its reference; no code after.
    let Error::Locked {
        reference: Some(reference),
        ..
    } = err
    else {
        panic!("a locked request carries the support reference: {err:?}")
    };
    let messages = h.sender.messages();
    assert_eq!(messages.len(), 3, "a locked account gets no more codes");
    let notice = &messages[2];
    assert_eq!(notice.kind, otp_recovery::sms::MessageKind::Notice);
    assert!(
        notice.body.expose_secret().contains(&reference.to_string()),
        "{:?}",
        notice.body.expose_secret()
    );
    assert!(!notice.body.expose_secret().contains(code.expose_secret()));

    h.clock
        .set(Timestamp::from_unix_millis(window_end.as_unix_millis() - 1));
    assert!(
        h.recovery
            .request(
                "alice@example.com",
                Some(alice()),
                &RequestContext::without_client_ip()
            )
            .await
            .is_err()
    );
    h.clock.set(window_end);
    assert!(
        h.recovery
            .request(
                "alice@example.com",
                Some(alice()),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unknown_identifier_gets_answers_of_the_same_shape_and_no_sms() {
    let h = harness();
    let (known, _) = h.request().await;
    let unknown = h
        .recovery
        .request("nobody@example.com", None, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert_eq!(
        h.sender.count(),
        1,
        "nothing may be sent for an unknown identifier"
    );
    assert_ne!(unknown.flow_id, known.flow_id);
    assert_eq!(unknown.code_expires_at, known.code_expires_at);
    assert_eq!(unknown.next_send_at, known.next_send_at);
    assert_eq!(unknown.attempts_left, known.attempts_left);
    assert_eq!(
        unknown.masked_phone.to_string().len(),
        known.masked_phone.to_string().len()
    );
    let again = h
        .recovery
        .request("nobody@example.com", None, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert_eq!(
        again.masked_phone, unknown.masked_phone,
        "the made-up phone must be stable"
    );

    // Verify and resend behave as for a real flow.
    for left in (0..5).rev() {
        let err = h
            .recovery
            .verify(&again.flow_id, "000000", &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidCode { attempts_left, .. } if attempts_left == left),
            "{err:?}"
        );
    }
    assert!(matches!(
        h.recovery
            .verify(&again.flow_id, "000000", &RequestContext::without_client_ip())
            .await,
        Err(Error::Locked { until: None, .. })
    ));
    let fresh = h
        .recovery
        .request("nobody@example.com", None, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert!(matches!(
        h.recovery
            .resend(&fresh.flow_id, &RequestContext::without_client_ip())
            .await,
        Err(Error::TooSoon { .. })
    ));
    h.clock.advance(Duration::from_secs(30));
    let resent = h
        .recovery
        .resend(&fresh.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert_eq!(resent.masked_phone, unknown.masked_phone);
    assert_eq!(h.sender.count(), 1);
}

#[tokio::test]
async fn an_unknown_identifier_locks_like_an_account() {
    let day = Duration::from_secs(86_400);
    let h = harness_with(Policy::builder().account_failures(5, day).build().unwrap());
    let flow = h
        .recovery
        .request("nobody@example.com", None, &RequestContext::without_client_ip())
        .await
        .unwrap();
    for _ in 0..4 {
        h.recovery
            .verify(&flow.flow_id, "000000", &RequestContext::without_client_ip())
            .await
            .unwrap_err();
    }
    let err = h
        .recovery
        .verify(&flow.flow_id, "000000", &RequestContext::without_client_ip())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked { until: Some(_), .. }), "{err:?}");
    let err = h
        .recovery
        .request("nobody@example.com", None, &RequestContext::without_client_ip())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked { until: Some(_), .. }), "{err:?}");
    assert!(
        h.recovery
            .request(
                "someone-else@example.com",
                None,
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn malformed_codes_are_refused_without_costing_an_attempt() {
    let h = harness();
    let (requested, code) = h.request().await;
    // Spaces and other scripts' digits are read (`Code::parse_typed`), so
    // these are malformed by length or by a character that is no digit.
    for bad in [
        "",
        "12345",
        "1234567",
        "12345a",
        " 12 34 5",
        "１２３４５",
        "12_3456",
    ] {
        let err = h
            .recovery
            .verify(&requested.flow_id, bad, &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Input(InputError::MalformedCode)),
            "{bad:?}: {err:?}"
        );
    }
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            &wrong(&code),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_flows_are_not_found() {
    let h = harness();
    let id = FlowId::generate().unwrap();
    assert!(matches!(
        h.recovery
            .verify(&id, "123456", &RequestContext::without_client_ip())
            .await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        h.recovery.resend(&id, &RequestContext::without_client_ip()).await,
        Err(Error::NotFound)
    ));
    assert!(FlowId::parse("../../etc/passwd").is_err());
}

#[tokio::test]
async fn a_failed_send_answers_like_a_sent_one_but_leaves_no_valid_code() {
    let h = harness();
    let (requested, first) = h.request().await;
    h.clock.advance(Duration::from_secs(30));
    h.sender
        .fail_next(SendError::new(SendErrorKind::Unavailable, "503 from gateway"));
    // By default the caller cannot tell (an unknown identifier never fails).
    let resent = h
        .recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert_eq!(resent.attempts_left, 5);
    // The earlier code was replaced and the unsent one voided: it answers
    // like any wrong code (as an unknown identifier's flow would).
    let err = h
        .recovery
        .verify(
            &requested.flow_id,
            first.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
        "{err:?}"
    );
    // The failed send still counts toward the cooldown; then a resend works.
    h.clock.advance(Duration::from_secs(60));
    let again = h
        .recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap();
    assert_eq!(
        again.attempts_left, 4,
        "the failed send cost no attempt; only the guess did"
    );
    let code = h.sender.last_code().unwrap();
    assert!(
        h.recovery
            .verify(
                &requested.flow_id,
                code.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_failed_send_is_reported_when_the_policy_reveals_it() {
    let h = harness_with(Policy::builder().reveal_send_failures(true).build().unwrap());
    h.sender
        .fail_next(SendError::new(SendErrorKind::InvalidNumber, "21211"));
    let err = h
        .recovery
        .request(
            "alice@example.com",
            Some(alice()),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Send(e) if e.kind() == SendErrorKind::InvalidNumber),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(h.sender.count(), 0);

    let (requested, _) = h.request().await;
    h.clock.advance(Duration::from_secs(30));
    h.sender
        .fail_next(SendError::new(SendErrorKind::Unavailable, "503 from gateway"));
    let err = h
        .recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Send(e) if e.is_retryable()), "{err:?}");
    assert!(err.is_retryable());
    let (requested, code) = h.request().await;
    assert!(
        h.recovery
            .verify(
                &requested.flow_id,
                code.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_code_from_one_flow_is_refused_on_another() {
    let h = harness();
    let (alices, alice_code) = h.request().await;
    let bob = Account::new(
        AccountId::new("bob").unwrap(),
        PhoneNumber::parse("+14155550199").unwrap(),
    );
    let bobs = h
        .recovery
        .request("bob@example.com", Some(bob), &RequestContext::without_client_ip())
        .await
        .unwrap();
    let bob_code = h.sender.last_code().unwrap();
    if alice_code.expose_secret() != bob_code.expose_secret() {
        let err = h
            .recovery
            .verify(
                &bobs.flow_id,
                alice_code.expose_secret(),
                &RequestContext::without_client_ip(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
            "{err:?}"
        );
    }
    assert!(
        h.recovery
            .verify(
                &alices.flow_id,
                alice_code.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unknown_identifier_is_superseded_like_an_account() {
    let h = harness();
    let (first_known, _) = h.request().await;
    h.request().await;
    let first_unknown = h
        .recovery
        .request("nobody@example.com", None, &RequestContext::without_client_ip())
        .await
        .unwrap();
    h.recovery
        .request("nobody@example.com", None, &RequestContext::without_client_ip())
        .await
        .unwrap();
    for flow in [first_known.flow_id, first_unknown.flow_id] {
        let err = h
            .recovery
            .verify(&flow, "000000", &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Superseded), "{err:?}");
        let err = h
            .recovery
            .resend(&flow, &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Superseded), "{err:?}");
    }
}

#[tokio::test]
async fn flows_opened_before_a_key_rotation_still_verify() {
    let h = harness();
    let (requested, code) = h.request().await;
    let rotated = KeyRing::new(2, key(2)).with_previous(1, key(1)).unwrap();
    let after = Recovery::new(h.store.clone(), h.sender.clone(), rotated).with_clock(h.clock.clone());
    let verified = after
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    assert!(
        after
            .reset(
                &verified.token.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );

    // A ring that lost the key cannot check the flow, and says why.
    let (requested, code) = h.request().await;
    let lost = Recovery::new(h.store.clone(), h.sender.clone(), KeyRing::new(2, key(2)));
    let lost = lost.with_clock(h.clock.clone());
    let err = lost
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownKey(1)), "{err:?}");
}

#[tokio::test]
async fn longer_codes_follow_the_policy() {
    let h = harness_with(Policy::builder().code_digits(10).build().unwrap());
    let (requested, code) = h.request().await;
    assert_eq!(code.len(), 10);
    let err = h
        .recovery
        .verify(&requested.flow_id, "123456", &RequestContext::without_client_ip())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Input(InputError::MalformedCode)), "{err:?}");
    assert!(
        h.recovery
            .verify(
                &requested.flow_id,
                code.expose_secret(),
                &RequestContext::without_client_ip()
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn expired_records_are_purged_after_their_retention() {
    let h = harness();
    let (requested, _) = h.request().await;
    let purge_at = requested
        .code_expires_at
        .saturating_add(h.recovery.policy().record_retention());
    h.clock
        .set(Timestamp::from_unix_millis(purge_at.as_unix_millis() - 1));
    assert_eq!(h.recovery.purge_expired().await.unwrap(), 0);
    h.clock.set(purge_at);
    assert_eq!(h.recovery.purge_expired().await.unwrap(), 1);
    assert!(matches!(
        h.recovery
            .verify(&requested.flow_id, "123456", &RequestContext::without_client_ip())
            .await,
        Err(Error::NotFound)
    ));
}

/// A clock that moves on a millisecond at each reading.
struct Ticking(std::sync::atomic::AtomicU64);

impl otp_recovery::Clock for Ticking {
    fn now(&self) -> Timestamp {
        let ms = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Timestamp::from_unix_millis(ms)
    }
}

/// `CodeSent` carries the time of the send, read after the flow was
/// stored, not the time the request began.
#[tokio::test]
async fn code_sent_carries_the_time_of_the_send() {
    let events = otp_recovery::events::RecordingSink::new();
    let recovery = Recovery::new(
        MemoryStore::new(),
        RecordingSender::new(),
        KeyRing::new(1, key(1)),
    )
    .with_events(events.clone())
    .with_clock(Ticking(std::sync::atomic::AtomicU64::new(T0.as_unix_millis())));
    recovery
        .request(
            "alice@example.com",
            Some(alice()),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    let at = |wanted: fn(&otp_recovery::events::EventKind) -> bool| {
        events
            .events()
            .into_iter()
            .find(|e| wanted(&e.kind))
            .map(|e| e.at)
            .unwrap()
    };
    let requested = at(|k| matches!(k, otp_recovery::events::EventKind::Requested { .. }));
    let sent = at(|k| matches!(k, otp_recovery::events::EventKind::CodeSent));
    assert!(sent > requested, "{sent:?} after {requested:?}");
}
