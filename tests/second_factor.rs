//! Recovery with a second factor after the SMS code: TOTP, saved recovery
//! codes and a second channel, each rule at its boundary, and the limits
//! raced by many concurrent tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use otp_recovery::events::{EventKind, RecordingSink};
use otp_recovery::factor::{
    ChannelAddress, FactorKind, FactorSet, Factors, RecordingChannel, RecoveryCodes, SecondFactor, Totp,
    TotpSecret,
};
use otp_recovery::record::FlowState;
use otp_recovery::sms::{RecordingSender, SendError, SendErrorKind};
use otp_recovery::store::MemoryStore;
use otp_recovery::{
    Account, AccountId, Error, FactorChallenge, FlowId, InputError, KeyRing, ManualClock, PhoneNumber,
    Policy, Progress, Recovery, RequestContext, ServerKey, Timestamp,
};

type Rec = Recovery<Arc<MemoryStore>, RecordingSender, ManualClock>;

/// The first instant of a 30-second TOTP step.
const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
const MS: Duration = Duration::from_millis(1);
const STEP: Duration = Duration::from_secs(30);

struct Harness {
    recovery: Rec,
    store: Arc<MemoryStore>,
    sender: RecordingSender,
    channel: RecordingChannel,
    clock: ManualClock,
    events: RecordingSink,
    totp: Totp,
    codes: RecoveryCodes,
    keys: KeyRing,
}

fn alice_id() -> AccountId {
    AccountId::new("alice").unwrap()
}

fn alice() -> Account {
    Account::new(alice_id(), PhoneNumber::parse("+14155550123").unwrap())
}

fn ctx() -> RequestContext {
    RequestContext::without_client_ip()
}

fn required() -> Policy {
    Policy::builder()
        .second_factor(SecondFactor::Required)
        .build()
        .unwrap()
}

/// A harness whose account "alice" has the factors `which` picks from an
/// authenticator, ten recovery codes and an email address.
fn harness(policy: Policy, which: &[FactorKind]) -> Harness {
    let keys = KeyRing::new(1, ServerKey::from_bytes(vec![1; 32]).unwrap());
    let totp = Totp::new(TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap());
    let codes = RecoveryCodes::issue(&keys, &alice_id(), 10).unwrap();
    let mut factors = Factors::none();
    if which.contains(&FactorKind::Totp) {
        factors = factors.with_totp(totp.clone());
    }
    if which.contains(&FactorKind::RecoveryCode) {
        factors = factors.with_recovery_codes(codes.set().clone());
    }
    if which.contains(&FactorKind::Channel) {
        factors = factors.with_channel(ChannelAddress::email("alice@example.com").unwrap());
    }
    let store = Arc::new(MemoryStore::new());
    let sender = RecordingSender::new();
    let channel = RecordingChannel::new();
    let clock = ManualClock::new(T0);
    let events = RecordingSink::new();
    let recovery = Recovery::new(store.clone(), sender.clone(), keys.clone())
        .with_policy(policy)
        .with_clock(clock.clone())
        .with_events(events.clone())
        .with_channel(channel.clone())
        .with_factors(HashMap::from([(alice_id(), factors)]));
    Harness {
        recovery,
        store,
        sender,
        channel,
        clock,
        events,
        totp,
        codes,
        keys,
    }
}

impl Harness {
    /// Requests recovery and types the right SMS code; returns the flow
    /// and what the SMS code led to.
    async fn past_sms(&self) -> (FlowId, Progress) {
        let requested = self
            .recovery
            .request("alice", Some(alice()), &ctx())
            .await
            .unwrap();
        let code = self.sender.last_code().unwrap();
        let progress = self
            .recovery
            .verify_code(&requested.flow_id, code.expose_secret(), &ctx())
            .await
            .unwrap();
        (requested.flow_id, progress)
    }

    async fn challenged(&self) -> (FlowId, FactorChallenge) {
        match self.past_sms().await {
            (flow, Progress::SecondFactor(challenge)) => (flow, challenge),
            (_, other) => panic!("expected a second factor, got {other:?}"),
        }
    }

    fn totp_now(&self) -> String {
        self.totp.code_at(self.clock_now()).expose_secret().to_owned()
    }

    fn clock_now(&self) -> Timestamp {
        use otp_recovery::Clock;
        self.clock.now()
    }

    async fn state(&self, flow: &FlowId) -> FlowState {
        use otp_recovery::store::CodeStore;
        self.store.get_flow(flow).await.unwrap().unwrap().state
    }

    async fn factor(
        &self,
        flow: &FlowId,
        kind: FactorKind,
        code: &str,
    ) -> Result<otp_recovery::Verified, Error> {
        self.recovery.verify_factor(flow, kind, code, &ctx()).await
    }
}

fn wrong_totp(right: &str) -> String {
    let n: u32 = right.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test]
async fn sms_and_totp_issue_the_token_and_only_then() {
    let h = harness(required(), &[FactorKind::Totp]);
    let (flow, challenge) = h.challenged().await;
    assert_eq!(challenge.kinds, vec![FactorKind::Totp]);
    assert_eq!(challenge.channel, None);
    assert_eq!(challenge.expires_at, T0.saturating_add(Duration::from_secs(600)));
    assert_eq!(h.state(&flow).await, FlowState::FactorPending);

    // The SMS code is used up: no path to a token but the factor.
    let sms = h.sender.last_code().unwrap();
    assert!(matches!(
        h.recovery.verify(&flow, sms.expose_secret(), &ctx()).await,
        Err(Error::AlreadyUsed)
    ));
    assert!(matches!(
        h.recovery.resend(&flow, &ctx()).await,
        Err(Error::AlreadyUsed)
    ));

    let verified = h.factor(&flow, FactorKind::Totp, &h.totp_now()).await.unwrap();
    assert_eq!(verified.factor, Some(FactorKind::Totp));
    assert_eq!(verified.recovery_code_used, None);
    let done = h
        .recovery
        .reset(&verified.token.expose_secret(), &ctx())
        .await
        .unwrap();
    assert_eq!(done.account, alice_id());
    let kinds: Vec<EventKind> = h.events.events().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::FactorRequired));
    assert!(kinds.contains(&EventKind::FactorVerified {
        kind: FactorKind::Totp
    }));
}

#[tokio::test]
async fn verify_shorthand_reports_that_a_factor_is_required() {
    let h = harness(required(), &[FactorKind::Totp]);
    let requested = h.recovery.request("alice", Some(alice()), &ctx()).await.unwrap();
    let sms = h.sender.last_code().unwrap();
    let err = h
        .recovery
        .verify(&requested.flow_id, sms.expose_secret(), &ctx())
        .await
        .unwrap_err();
    let Error::SecondFactorRequired(challenge) = err else {
        panic!("expected SecondFactorRequired, got {err:?}")
    };
    assert_eq!(challenge.flow_id, requested.flow_id);
    assert!(
        h.factor(&requested.flow_id, FactorKind::Totp, &h.totp_now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn policy_off_and_if_enrolled_without_factors_issue_the_token_at_once() {
    let h = harness(Policy::default(), &[FactorKind::Totp]);
    assert!(matches!(h.past_sms().await.1, Progress::Reset(_)));
    let enrolled = Policy::builder()
        .second_factor(SecondFactor::IfEnrolled)
        .build()
        .unwrap();
    let h = harness(enrolled.clone(), &[]);
    assert!(matches!(h.past_sms().await.1, Progress::Reset(_)));
    let h = harness(enrolled, &[FactorKind::RecoveryCode]);
    assert!(matches!(h.past_sms().await.1, Progress::SecondFactor(_)));
}

#[tokio::test]
async fn required_without_any_factor_cancels_and_sends_to_support() {
    let h = harness(required(), &[]);
    let requested = h.recovery.request("alice", Some(alice()), &ctx()).await.unwrap();
    let sms = h.sender.last_code().unwrap();
    let err = h
        .recovery
        .verify_code(&requested.flow_id, sms.expose_secret(), &ctx())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSecondFactor { .. }), "{err:?}");
    assert_eq!(h.state(&requested.flow_id).await, FlowState::Cancelled);
    // A channel the host cannot send on is not a factor.
    let h = harness(required(), &[FactorKind::Channel]);
    let no_channel = Recovery::new(h.store.clone(), h.sender.clone(), h.keys.clone())
        .with_policy(required())
        .with_clock(h.clock.clone())
        .with_factors(HashMap::from([(
            alice_id(),
            Factors::none().with_channel(ChannelAddress::email("a@example.com").unwrap()),
        )]));
    let requested = no_channel.request("alice", Some(alice()), &ctx()).await.unwrap();
    let sms = h.sender.last_code().unwrap();
    assert!(matches!(
        no_channel
            .verify_code(&requested.flow_id, sms.expose_secret(), &ctx())
            .await,
        Err(Error::NoSecondFactor { .. })
    ));
}

#[tokio::test]
async fn only_accepted_kinds_are_offered() {
    let policy = Policy::builder()
        .second_factor(SecondFactor::Required)
        .accepted_factors(FactorSet::EMPTY.with(FactorKind::RecoveryCode))
        .build()
        .unwrap();
    let h = harness(policy, &[FactorKind::Totp, FactorKind::RecoveryCode]);
    let (flow, challenge) = h.challenged().await;
    assert_eq!(challenge.kinds, vec![FactorKind::RecoveryCode]);
    assert!(matches!(
        h.factor(&flow, FactorKind::Totp, &h.totp_now()).await,
        Err(Error::FactorUnavailable {
            kind: FactorKind::Totp,
            ..
        })
    ));
    assert!(
        Policy::builder()
            .accepted_factors(FactorSet::EMPTY)
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn totp_skew_window_holds_to_the_millisecond() {
    // The code of the step before T0 is accepted until the last instant of
    // the step after T0's, and not one millisecond later.
    let h = harness(required(), &[FactorKind::Totp]);
    let earlier = h
        .totp
        .code_at(Timestamp::from_unix_millis(T0.as_unix_millis() - 30_000));
    let (flow, _) = h.challenged().await;
    h.clock.set(T0.saturating_add(STEP * 2 - MS));
    // Two steps on: the code of step T0-1 is now outside the window.
    let err = h
        .factor(&flow, FactorKind::Totp, earlier.expose_secret())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidFactorCode { attempts_left: 4, .. }),
        "{err:?}"
    );
    // The code of T0's step, at the last instant of the next step: accepted.
    let at_t0 = h.totp.code_at(T0);
    assert!(
        h.factor(&flow, FactorKind::Totp, at_t0.expose_secret())
            .await
            .is_ok()
    );

    let h = harness(required(), &[FactorKind::Totp]);
    let (flow, _) = h.challenged().await;
    h.clock.set(T0.saturating_add(STEP * 2));
    let err = h
        .factor(&flow, FactorKind::Totp, at_t0.expose_secret())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidFactorCode { attempts_left: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_totp_code_is_accepted_once_per_step_across_flows() {
    let h = harness(required(), &[FactorKind::Totp]);
    let code = h.totp_now();
    let (first, _) = h.challenged().await;
    h.factor(&first, FactorKind::Totp, &code).await.unwrap();

    // A new recovery in the same step: the same code is a replay, refused
    // even though it is still in its window. It costs no attempt: only a
    // code that matched can be a replay, so that helps no guesser, and
    // copies of a right code racing it cannot lock its flow.
    let (second, _) = h.challenged().await;
    let err = h.factor(&second, FactorKind::Totp, &code).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidFactorCode { attempts_left: 5, .. }),
        "{err:?}"
    );
    assert!(h.events.events().iter().any(|e| e.kind
        == EventKind::FactorReplayed {
            kind: FactorKind::Totp
        }));
    // Still refused at the last instant of the step...
    h.clock.set(T0.saturating_add(STEP - MS));
    assert!(matches!(
        h.factor(&second, FactorKind::Totp, &code).await,
        Err(Error::InvalidFactorCode { attempts_left: 5, .. })
    ));
    // A wrong code still costs one.
    assert!(matches!(
        h.factor(&second, FactorKind::Totp, &wrong_totp(&code)).await,
        Err(Error::InvalidFactorCode { attempts_left: 4, .. })
    ));
    // ...and the next step's code is accepted.
    h.clock.set(T0.saturating_add(STEP));
    assert!(h.factor(&second, FactorKind::Totp, &h.totp_now()).await.is_ok());
}

#[tokio::test]
async fn each_factor_has_its_own_attempt_limit_and_the_flow_locks_when_all_are_spent() {
    let h = harness(required(), &[FactorKind::Totp, FactorKind::RecoveryCode]);
    let (flow, challenge) = h.challenged().await;
    assert_eq!(challenge.kinds, vec![FactorKind::Totp, FactorKind::RecoveryCode]);
    let bad = wrong_totp(&h.totp_now());
    for left in (0..5).rev() {
        let err = h.factor(&flow, FactorKind::Totp, &bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidFactorCode { kind: FactorKind::Totp, attempts_left, .. } if attempts_left == left),
            "{err:?}"
        );
    }
    // The last allowed attempt was the fifth; TOTP is spent, even right.
    assert!(matches!(
        h.factor(&flow, FactorKind::Totp, &h.totp_now()).await,
        Err(Error::FactorUnavailable {
            kind: FactorKind::Totp,
            ..
        })
    ));
    assert_eq!(h.state(&flow).await, FlowState::FactorPending);
    // Recovery codes still have theirs.
    for left in (1..5).rev() {
        let err = h
            .factor(&flow, FactorKind::RecoveryCode, "AAAA-AAAA-AAAA-AAAA")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidFactorCode { attempts_left, .. } if attempts_left == left),
            "{err:?}"
        );
    }
    // The last one locks the flow: no factor is left.
    let err = h
        .factor(&flow, FactorKind::RecoveryCode, "AAAA-AAAA-AAAA-AAAA")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidFactorCode { attempts_left: 0, .. }),
        "{err:?}"
    );
    assert_eq!(h.state(&flow).await, FlowState::Locked);
    let right = h.codes.codes()[0].expose_secret().to_owned();
    assert!(matches!(
        h.factor(&flow, FactorKind::RecoveryCode, &right).await,
        Err(Error::Locked { until: None, .. })
    ));
}

#[tokio::test]
async fn factor_failures_count_toward_the_account_lockout() {
    let policy = Policy::builder()
        .second_factor(SecondFactor::Required)
        .max_attempts(5)
        .account_failures(7, Duration::from_secs(86_400))
        .build()
        .unwrap();
    let h = harness(policy, &[FactorKind::Totp, FactorKind::RecoveryCode]);
    // Two wrong SMS codes, then the right one.
    let requested = h.recovery.request("alice", Some(alice()), &ctx()).await.unwrap();
    let sms = h.sender.last_code().unwrap();
    let n: u32 = sms.expose_secret().parse().unwrap();
    for _ in 0..2 {
        let wrong = format!("{:06}", (n + 1) % 1_000_000);
        let _ = h.recovery.verify_code(&requested.flow_id, &wrong, &ctx()).await;
    }
    let flow = requested.flow_id;
    h.recovery
        .verify_code(&flow, sms.expose_secret(), &ctx())
        .await
        .unwrap();
    // Five account failures are left, shared by the factors.
    let bad = wrong_totp(&h.totp_now());
    for left in [4, 3, 2, 1] {
        let err = h.factor(&flow, FactorKind::Totp, &bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidFactorCode { attempts_left, .. } if attempts_left == left),
            "{err:?}"
        );
    }
    // The fifth is the account's seventh failure: the account locks.
    let err = h
        .factor(&flow, FactorKind::RecoveryCode, "AAAA-AAAA-AAAA-AAAA")
        .await
        .unwrap_err();
    let Error::Locked {
        until: Some(_),
        reference: Some(_),
        ..
    } = err
    else {
        panic!("expected an account lock, got {err:?}")
    };
    assert!(matches!(
        h.recovery.request("alice", Some(alice()), &ctx()).await,
        Err(Error::Locked { .. })
    ));
}

#[tokio::test]
async fn a_recovery_code_is_single_use_and_its_index_is_reported() {
    let h = harness(required(), &[FactorKind::RecoveryCode]);
    let code = h.codes.codes()[7].expose_secret().to_lowercase();
    let (flow, _) = h.challenged().await;
    let verified = h.factor(&flow, FactorKind::RecoveryCode, &code).await.unwrap();
    assert_eq!(verified.recovery_code_used, Some(7));
    assert_eq!(verified.factor, Some(FactorKind::RecoveryCode));
    // The host has not struck it yet: the crate refuses it anyway.
    let (second, _) = h.challenged().await;
    assert!(matches!(
        h.factor(&second, FactorKind::RecoveryCode, &code).await,
        Err(Error::InvalidFactorCode { attempts_left: 5, .. })
    ));
    let other = h.codes.codes()[2].expose_secret().to_owned();
    assert_eq!(
        h.factor(&second, FactorKind::RecoveryCode, &other)
            .await
            .unwrap()
            .recovery_code_used,
        Some(2)
    );
}

#[tokio::test]
async fn malformed_factor_input_is_refused_without_an_attempt() {
    let h = harness(
        required(),
        &[FactorKind::Totp, FactorKind::RecoveryCode, FactorKind::Channel],
    );
    let (flow, _) = h.challenged().await;
    for (kind, bad) in [
        (FactorKind::Totp, "12a456"),
        (FactorKind::Totp, "12345"),
        (FactorKind::Totp, "123456789"),
        (FactorKind::Channel, "12345"),
        (FactorKind::Channel, "abcdef"),
    ] {
        assert!(
            matches!(
                h.factor(&flow, kind, bad).await,
                Err(Error::Input(InputError::MalformedCode))
            ),
            "{kind} {bad:?}"
        );
    }
    for bad in ["", "ABCD", "AAAA-AAAA-AAAA-AAAU", "AAAA-AAAA-AAAA-AAAA-A"] {
        assert!(matches!(
            h.factor(&flow, FactorKind::RecoveryCode, bad).await,
            Err(Error::Input(InputError::MalformedRecoveryCode))
        ));
    }
    // Not one attempt was spent.
    let err = h
        .factor(&flow, FactorKind::Totp, &wrong_totp(&h.totp_now()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidFactorCode { attempts_left: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_factor_step_expires_at_its_exact_end() {
    let h = harness(required(), &[FactorKind::RecoveryCode]);
    let code = h.codes.codes()[0].expose_secret().to_owned();
    let (flow, challenge) = h.challenged().await;
    h.clock.set(challenge.expires_at);
    assert!(matches!(
        h.factor(&flow, FactorKind::RecoveryCode, &code).await,
        Err(Error::Expired)
    ));
    let (flow, challenge) = h.challenged().await;
    h.clock.set(Timestamp::from_unix_millis(
        challenge.expires_at.as_unix_millis() - 1,
    ));
    assert!(h.factor(&flow, FactorKind::RecoveryCode, &code).await.is_ok());
}

#[tokio::test]
async fn a_second_channel_code_is_sent_checked_once_and_expires() {
    let h = harness(required(), &[FactorKind::Channel]);
    let (flow, challenge) = h.challenged().await;
    assert_eq!(challenge.kinds, vec![FactorKind::Channel]);
    assert_eq!(challenge.channel.as_deref(), Some("a***@example.com"));
    // No code sent yet: nothing to check, nothing counted.
    assert!(matches!(
        h.factor(&flow, FactorKind::Channel, "123456").await,
        Err(Error::Expired)
    ));

    let sent = h.recovery.send_factor_code(&flow, &ctx()).await.unwrap();
    assert_eq!(sent.masked_address, "a***@example.com");
    assert_eq!(
        sent.next_send_at,
        Some(T0.saturating_add(Duration::from_secs(30)))
    );
    let message = h.channel.messages().pop().unwrap();
    assert_eq!(message.to.as_str(), "alice@example.com");
    assert!(
        !message.body.expose_secret().contains('@'),
        "no WebOTP line in email"
    );
    let code = h.channel.last_code().unwrap();
    // The SMS code's MAC label differs: the SMS code is not the email code.
    let sms = h.sender.last_code().unwrap();
    if sms.expose_secret() != code.expose_secret() {
        assert!(matches!(
            h.factor(&flow, FactorKind::Channel, sms.expose_secret()).await,
            Err(Error::InvalidFactorCode { attempts_left: 4, .. })
        ));
    }
    // Cooldown: refused 1 ms before it ends.
    h.clock
        .set(Timestamp::from_unix_millis(T0.as_unix_millis() + 30_000 - 1));
    assert!(matches!(
        h.recovery.send_factor_code(&flow, &ctx()).await,
        Err(Error::TooSoon { retry_after, .. }) if retry_after == MS
    ));
    // Valid until the last millisecond of its life.
    h.clock.set(Timestamp::from_unix_millis(
        sent.code_expires_at.as_unix_millis() - 1,
    ));
    let verified = h
        .factor(&flow, FactorKind::Channel, code.expose_secret())
        .await
        .unwrap();
    assert_eq!(verified.factor, Some(FactorKind::Channel));
    assert!(matches!(
        h.factor(&flow, FactorKind::Channel, code.expose_secret()).await,
        Err(Error::AlreadyUsed)
    ));

    let (flow, _) = h.challenged().await;
    let sent = h.recovery.send_factor_code(&flow, &ctx()).await.unwrap();
    let code = h.channel.last_code().unwrap();
    h.clock.set(sent.code_expires_at);
    assert!(matches!(
        h.factor(&flow, FactorKind::Channel, code.expose_secret()).await,
        Err(Error::Expired)
    ));
}

#[tokio::test]
async fn a_failed_channel_send_withdraws_its_code_and_costs_no_attempt() {
    let h = harness(required(), &[FactorKind::Channel]);
    let (flow, _) = h.challenged().await;
    h.channel
        .fail_next(SendError::new(SendErrorKind::Unavailable, "mailer down"));
    assert!(matches!(
        h.recovery.send_factor_code(&flow, &ctx()).await,
        Err(Error::Send(_))
    ));
    assert_eq!(h.channel.count(), 0);
    assert!(matches!(
        h.factor(&flow, FactorKind::Channel, "123456").await,
        Err(Error::Expired)
    ));
    h.clock.advance(STEP);
    h.recovery.send_factor_code(&flow, &ctx()).await.unwrap();
    let code = h.channel.last_code().unwrap();
    assert!(
        h.factor(&flow, FactorKind::Channel, code.expose_secret())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_wrong_factor_codes_are_evaluated_exactly_up_to_the_limit() {
    let h = Arc::new(harness(required(), &[FactorKind::Totp, FactorKind::RecoveryCode]));
    let (flow, _) = h.challenged().await;
    let bad = wrong_totp(&h.totp_now());
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (h, bad, barrier) = (h.clone(), bad.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                h.factor(&flow, FactorKind::Totp, &bad).await
            })
        })
        .collect();
    let mut evaluated = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(Error::InvalidFactorCode { .. }) => evaluated += 1,
            Err(Error::FactorUnavailable {
                kind: FactorKind::Totp,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(evaluated, 5, "exactly the TOTP attempt limit is evaluated");
    let failed = h
        .events
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::FactorFailed { .. }))
        .count();
    assert_eq!(failed, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_right_factor_codes_issue_exactly_one_token() {
    for kind in [FactorKind::Totp, FactorKind::RecoveryCode] {
        let h = Arc::new(harness(required(), &[kind]));
        let (flow, _) = h.challenged().await;
        let code = match kind {
            FactorKind::Totp => h.totp_now(),
            _ => h.codes.codes()[4].expose_secret().to_owned(),
        };
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (h, code, barrier) = (h.clone(), code.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    h.factor(&flow, kind, &code).await
                })
            })
            .collect();
        let mut tokens = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => tokens += 1,
                // A copy that found the code claimed, before or after the
                // token was stored.
                Err(Error::AlreadyUsed | Error::InvalidFactorCode { attempts_left: 5, .. }) => {}
                other => panic!("{kind}: unexpected {other:?}"),
            }
        }
        assert_eq!(tokens, 1, "{kind}: exactly one token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_recovery_code_raced_on_two_hosts_passes_once() {
    // Two instances of the host over one store, each with its own factor
    // source, race the same code on the flow.
    let h = harness(required(), &[FactorKind::RecoveryCode]);
    let (flow, _) = h.challenged().await;
    let other = Recovery::new(h.store.clone(), h.sender.clone(), h.keys.clone())
        .with_policy(required())
        .with_clock(h.clock.clone())
        .with_factors(HashMap::from([(
            alice_id(),
            Factors::none().with_recovery_codes(h.codes.set().clone()),
        )]));
    let code = h.codes.codes()[1].expose_secret().to_owned();
    let ctx = ctx();
    let (a, b) = tokio::join!(
        h.recovery
            .verify_factor(&flow, FactorKind::RecoveryCode, &code, &ctx),
        other.verify_factor(&flow, FactorKind::RecoveryCode, &code, &ctx),
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
}

#[tokio::test]
async fn no_secret_reaches_debug_errors_or_events() {
    let h = harness(
        required(),
        &[FactorKind::Totp, FactorKind::RecoveryCode, FactorKind::Channel],
    );
    let (flow, challenge) = h.challenged().await;
    h.recovery.send_factor_code(&flow, &ctx()).await.unwrap();
    let email_code = h.channel.last_code().unwrap();
    let totp = h.totp_now();
    let err = h
        .factor(&flow, FactorKind::Totp, &wrong_totp(&totp))
        .await
        .unwrap_err();
    let verified = h.factor(&flow, FactorKind::Totp, &totp).await.unwrap();
    let shown = format!(
        "{challenge:?} {err:?} {err} {verified:?} {:?} {:?} {:?} {:?}",
        h.events.events(),
        h.codes,
        h.totp,
        h.channel.messages()
    );
    for secret in [
        totp.as_str(),
        email_code.expose_secret(),
        "12345678901234567890",
        h.codes.codes()[0].expose_secret(),
        &verified.token.expose_secret(),
        "alice@example.com",
    ] {
        assert!(!shown.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn if_enrolled_does_not_fall_back_to_sms_alone_for_a_channel_it_cannot_send_on() {
    let policy = Policy::builder()
        .second_factor(SecondFactor::IfEnrolled)
        .build()
        .unwrap();
    let h = harness(policy.clone(), &[FactorKind::Channel]);
    let without_sender = Recovery::new(h.store.clone(), h.sender.clone(), h.keys.clone())
        .with_policy(policy)
        .with_clock(h.clock.clone())
        .with_factors(HashMap::from([(
            alice_id(),
            Factors::none().with_channel(ChannelAddress::email("a@example.com").unwrap()),
        )]));
    let requested = without_sender
        .request("alice", Some(alice()), &ctx())
        .await
        .unwrap();
    let sms = h.sender.last_code().unwrap();
    assert!(matches!(
        without_sender
            .verify_code(&requested.flow_id, sms.expose_secret(), &ctx())
            .await,
        Err(Error::NoSecondFactor { .. })
    ));
}

#[tokio::test]
async fn a_factor_before_the_sms_code_is_refused_as_such() {
    let h = harness(required(), &[FactorKind::Totp, FactorKind::Channel]);
    let requested = h.recovery.request("alice", Some(alice()), &ctx()).await.unwrap();
    assert!(matches!(
        h.factor(&requested.flow_id, FactorKind::Totp, &h.totp_now())
            .await,
        Err(Error::CodeNotVerified)
    ));
    assert!(matches!(
        h.recovery.send_factor_code(&requested.flow_id, &ctx()).await,
        Err(Error::CodeNotVerified)
    ));
    assert_eq!(h.channel.count(), 0);
}

#[tokio::test]
async fn a_used_recovery_code_stays_used_when_the_oldest_key_is_retired() {
    // Key 1 (the oldest, which derives pseudonyms by default) is retired
    // after a code of a set made under key 2 was used: the claim must hold.
    let (k1, k2) = (
        ServerKey::from_bytes(vec![1; 32]).unwrap(),
        ServerKey::from_bytes(vec![2; 32]).unwrap(),
    );
    let before = KeyRing::new(2, k2.clone()).with_previous(1, k1).unwrap();
    let after = KeyRing::new(2, k2);
    let codes = RecoveryCodes::issue(&before, &alice_id(), 3).unwrap();
    let store = Arc::new(MemoryStore::new());
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let build = |keys: KeyRing| {
        Recovery::new(store.clone(), sender.clone(), keys)
            .with_policy(required())
            .with_clock(clock.clone())
            .with_factors(HashMap::from([(
                alice_id(),
                Factors::none().with_recovery_codes(codes.set().clone()),
            )]))
    };
    let code = codes.codes()[0].expose_secret();
    for (keys, accepted) in [(before.clone(), true), (after, false)] {
        let recovery = build(keys);
        let requested = recovery.request("alice", Some(alice()), &ctx()).await.unwrap();
        let sms = sender.last_code().unwrap();
        recovery
            .verify_code(&requested.flow_id, sms.expose_secret(), &ctx())
            .await
            .unwrap();
        let answer = recovery
            .verify_factor(&requested.flow_id, FactorKind::RecoveryCode, code, &ctx())
            .await;
        assert_eq!(answer.is_ok(), accepted, "{answer:?}");
    }
}
