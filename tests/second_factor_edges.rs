//! The second factor's edges, from a second reader: boundaries the first
//! tests left open (each kills a mutant that survived them), and a
//! deterministic replay of a right code raced by copies of itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use otp_recovery::factor::{FactorKind, Factors, RecoveryCodes, SecondFactor, Totp, TotpSecret};
use otp_recovery::record::{FlowRecord, FlowState};
use otp_recovery::sms::RecordingSender;
use otp_recovery::store::{
    CodeStore, Counter, CounterValue, Created, Load, MemoryStore, Newest, Result as StoreResult,
};
use otp_recovery::support::{SupportCase, SupportReference};
use otp_recovery::{
    Account, AccountId, Clock, Error, FlowId, KeyRing, ManualClock, PhoneNumber, Policy, Progress, Recovery,
    RequestContext, ServerKey, Timestamp,
};
use tokio::sync::Notify;

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);

fn keys() -> KeyRing {
    KeyRing::new(1, ServerKey::from_bytes(vec![1; 32]).unwrap())
}

fn id(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

fn account(name: &str, phone: &str) -> Account {
    Account::new(id(name), PhoneNumber::parse(phone).unwrap())
}

fn totp(seed: u8) -> Totp {
    Totp::new(TotpSecret::from_bytes(vec![seed; 20]).unwrap())
}

fn required() -> Policy {
    Policy::builder()
        .second_factor(SecondFactor::Required)
        .build()
        .unwrap()
}

/// Requests recovery for `who` and types the right SMS code; the flow must
/// now await a second factor.
async fn past_sms<S: CodeStore>(
    recovery: &Recovery<S, RecordingSender, ManualClock>,
    sender: &RecordingSender,
    who: &Account,
) -> FlowId {
    let ctx = RequestContext::without_client_ip();
    let flow = recovery
        .request(who.id.as_str(), Some(who.clone()), &ctx)
        .await
        .unwrap()
        .flow_id;
    let sms = sender.last_code().unwrap();
    match recovery
        .verify_code(&flow, sms.expose_secret(), &ctx)
        .await
        .unwrap()
    {
        Progress::SecondFactor(_) => flow,
        other => panic!("expected a second factor, got {other:?}"),
    }
}

#[tokio::test]
async fn two_accounts_use_their_authenticators_in_the_same_step() {
    // The once-per-step claim is per account: alice using her code must
    // not refuse bob's code of the same time step.
    let (alice, bob) = (account("alice", "+14155550123"), account("bob", "+14155550124"));
    let (alice_totp, bob_totp) = (totp(1), totp(2));
    let factors = HashMap::from([
        (alice.id.clone(), Factors::none().with_totp(alice_totp.clone())),
        (bob.id.clone(), Factors::none().with_totp(bob_totp.clone())),
    ]);
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys())
        .with_policy(required())
        .with_clock(clock.clone())
        .with_factors(factors);
    let ctx = RequestContext::without_client_ip();
    for (who, authenticator) in [(&alice, &alice_totp), (&bob, &bob_totp)] {
        let flow = past_sms(&recovery, &sender, who).await;
        let code = authenticator.code_at(clock.now());
        let verified = recovery
            .verify_factor(&flow, FactorKind::Totp, code.expose_secret(), &ctx)
            .await;
        assert!(verified.is_ok(), "{}: {verified:?}", who.id);
    }
}

#[tokio::test]
async fn factor_attempts_left_is_capped_by_what_the_account_has_left() {
    // Account limit 7; three wrong SMS codes leave 4 for the factor step,
    // below the 5 TOTP attempts: the answer must report the account's.
    let policy = Policy::builder()
        .second_factor(SecondFactor::Required)
        .max_attempts(5)
        .account_failures(7, Duration::from_secs(86_400))
        .build()
        .unwrap();
    let alice = account("alice", "+14155550123");
    let authenticator = totp(1);
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys())
        .with_policy(policy)
        .with_clock(clock.clone())
        .with_factors(HashMap::from([(
            alice.id.clone(),
            Factors::none().with_totp(authenticator.clone()),
        )]));
    let ctx = RequestContext::without_client_ip();
    let flow = recovery
        .request("alice", Some(alice.clone()), &ctx)
        .await
        .unwrap()
        .flow_id;
    let sms = sender.last_code().unwrap();
    let n: u32 = sms.expose_secret().parse().unwrap();
    for _ in 0..3 {
        let wrong = format!("{:06}", (n + 1) % 1_000_000);
        assert!(matches!(
            recovery.verify_code(&flow, &wrong, &ctx).await,
            Err(Error::InvalidCode { .. })
        ));
    }
    let Progress::SecondFactor(challenge) = recovery
        .verify_code(&flow, sms.expose_secret(), &ctx)
        .await
        .unwrap()
    else {
        panic!("a second factor is required")
    };
    assert_eq!(challenge.kinds, vec![FactorKind::Totp]);
    let right: u32 = authenticator
        .code_at(clock.now())
        .expose_secret()
        .parse()
        .unwrap();
    let wrong = format!("{:06}", (right + 500_000) % 1_000_000);
    let err = recovery
        .verify_factor(&flow, FactorKind::Totp, &wrong, &ctx)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidFactorCode { attempts_left: 3, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_used_recovery_code_stays_refused_years_later() {
    // The host may never strike the code: the crate's claim must outlive
    // any plausible life of the set.
    let alice = account("alice", "+14155550123");
    let codes = RecoveryCodes::issue(&keys(), &alice.id, 3).unwrap();
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys())
        .with_policy(required())
        .with_clock(clock.clone())
        .with_factors(HashMap::from([(
            alice.id.clone(),
            Factors::none().with_recovery_codes(codes.set().clone()),
        )]));
    let ctx = RequestContext::without_client_ip();
    let code = codes.codes()[0].expose_secret().to_owned();
    let flow = past_sms(&recovery, &sender, &alice).await;
    recovery
        .verify_factor(&flow, FactorKind::RecoveryCode, &code, &ctx)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5 * 365 * 86_400));
    let flow = past_sms(&recovery, &sender, &alice).await;
    assert!(matches!(
        recovery
            .verify_factor(&flow, FactorKind::RecoveryCode, &code, &ctx)
            .await,
        Err(Error::InvalidFactorCode { .. })
    ));
}

#[tokio::test]
async fn an_emptied_recovery_code_set_is_no_factor() {
    // Every code struck: the account has no recovery codes any more, and
    // under `Required` it cannot recover by SMS alone.
    let alice = account("alice", "+14155550123");
    let codes = RecoveryCodes::issue(&keys(), &alice.id, 1).unwrap();
    let empty = codes.set().without(0);
    assert!(empty.is_empty());
    let sender = RecordingSender::new();
    let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys())
        .with_policy(required())
        .with_clock(ManualClock::new(T0))
        .with_factors(HashMap::from([(
            alice.id.clone(),
            Factors::none().with_recovery_codes(empty),
        )]));
    let ctx = RequestContext::without_client_ip();
    let flow = recovery
        .request("alice", Some(alice), &ctx)
        .await
        .unwrap()
        .flow_id;
    let sms = sender.last_code().unwrap();
    assert!(matches!(
        recovery.verify_code(&flow, sms.expose_secret(), &ctx).await,
        Err(Error::NoSecondFactor { .. })
    ));
}

/// A memory store that, once armed, holds the first compare-and-swap that
/// would issue a reset token until the test releases it.
#[derive(Default)]
struct Gated {
    inner: MemoryStore,
    armed: AtomicBool,
    reached: Notify,
    release: Notify,
}

#[async_trait]
impl CodeStore for Gated {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> StoreResult<Created> {
        self.inner.create_flow(flow, newest).await
    }
    async fn get_flow(&self, id: &FlowId) -> StoreResult<Option<FlowRecord>> {
        self.inner.get_flow(id).await
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<(Option<FlowRecord>, Vec<CounterValue>)> {
        self.inner.load_counting(load, counters, now).await
    }
    async fn compare_and_swap(&self, expected: u64, flow: &FlowRecord) -> StoreResult<bool> {
        if flow.state == FlowState::Verified && self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
        self.inner.compare_and_swap(expected, flow).await
    }
    async fn compare_and_swap_counting(
        &self,
        expected: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<Option<Vec<CounterValue>>> {
        self.inner
            .compare_and_swap_counting(expected, flow, counters, now)
            .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_code_that_lost_its_store_race_to_a_copy_still_issues_the_token() {
    // One copy lands its (wrong) verdict between the first call's claim and
    // its compare-and-swap: the first call must retry without claiming again.
    assert!(race_the_right_code_with_copies(1).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_the_right_code_racing_it_cannot_lock_its_flow() {
    // The user's client submits the right authenticator code, then (say, on
    // a slow answer) submits it again several times. The first call claims
    // the time step; before it stores the token, the copies find the step
    // claimed, are counted as wrong, and spend the flow's attempts: the
    // flow locks and the holder of the right code gets no token. (The same
    // race makes `racing_right_factor_codes_issue_exactly_one_token` fail
    // about once in a hundred runs.) A copy of a right code proves
    // knowledge of the code; it must not cost the flow its attempts.
    let first = race_the_right_code_with_copies(5).await;
    assert!(first.is_ok(), "the right code lost to its own copies: {first:?}");
}

/// Submits the right TOTP code, holds that call just before it stores the
/// token, submits `copies` copies of the code meanwhile, then lets the
/// first call finish and returns its answer.
async fn race_the_right_code_with_copies(copies: usize) -> Result<otp_recovery::Verified, Error> {
    let alice = account("alice", "+14155550123");
    let authenticator = totp(1);
    let store = Arc::new(Gated::default());
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let recovery = Arc::new(
        Recovery::new(store.clone(), sender.clone(), keys())
            .with_policy(required())
            .with_clock(clock.clone())
            .with_factors(HashMap::from([(
                alice.id.clone(),
                Factors::none().with_totp(authenticator.clone()),
            )])),
    );
    let flow = past_sms(&recovery, &sender, &alice).await;
    let code = authenticator.code_at(clock.now()).expose_secret().to_owned();

    store.armed.store(true, Ordering::SeqCst);
    let first = {
        let (recovery, code) = (recovery.clone(), code.clone());
        tokio::spawn(async move {
            recovery
                .verify_factor(
                    &flow,
                    FactorKind::Totp,
                    &code,
                    &RequestContext::without_client_ip(),
                )
                .await
        })
    };
    // The first call has claimed the step and is about to store its token.
    store.reached.notified().await;
    for _ in 0..copies {
        let copy = recovery
            .verify_factor(
                &flow,
                FactorKind::Totp,
                &code,
                &RequestContext::without_client_ip(),
            )
            .await;
        assert!(copy.is_err(), "only one token");
    }
    store.release.notify_one();
    first.await.unwrap()
}

/// A factor source the test can change between calls, as a host's account
/// database changes.
#[derive(Default)]
struct Live(std::sync::Mutex<HashMap<AccountId, Factors>>);

#[async_trait]
impl otp_recovery::factor::FactorSource for Live {
    async fn factors(&self, account: &AccountId) -> Result<Factors, otp_recovery::factor::FactorSourceError> {
        Ok(self.0.lock().unwrap().get(account).cloned().unwrap_or_default())
    }
}

#[tokio::test]
async fn a_factor_removed_after_the_sms_code_is_unavailable_and_costs_nothing() {
    let alice = account("alice", "+14155550123");
    let authenticator = totp(1);
    let email = otp_recovery::factor::ChannelAddress::email("alice@example.com").unwrap();
    let codes = RecoveryCodes::issue(&keys(), &alice.id, 1).unwrap();
    let all = Factors::none()
        .with_totp(authenticator.clone())
        .with_channel(email)
        .with_recovery_codes(codes.set().clone());
    let source = Arc::new(Live::default());
    source.0.lock().unwrap().insert(alice.id.clone(), all.clone());
    let sender = RecordingSender::new();
    let mailer = otp_recovery::factor::RecordingChannel::new();
    let clock = ManualClock::new(T0);
    let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys())
        .with_policy(required())
        .with_clock(clock.clone())
        .with_channel(mailer.clone())
        .with_factors(source.clone());
    let ctx = RequestContext::without_client_ip();
    let flow = past_sms(&recovery, &sender, &alice).await;
    recovery.send_factor_code(&flow, &ctx).await.unwrap();
    let emailed = mailer.last_code().unwrap();

    // The host removes every factor (the user reset their security settings
    // from a logged-in session meanwhile, say).
    source.0.lock().unwrap().insert(alice.id.clone(), Factors::none());
    let totp_now = authenticator.code_at(clock.now());
    let rc = codes.codes()[0].expose_secret().to_owned();
    for (kind, code) in [
        (FactorKind::Channel, emailed.expose_secret()),
        (FactorKind::Totp, totp_now.expose_secret()),
        (FactorKind::RecoveryCode, rc.as_str()),
    ] {
        let answer = recovery.verify_factor(&flow, kind, code, &ctx).await;
        assert!(
            matches!(answer, Err(Error::FactorUnavailable { kind: k, .. }) if k == kind),
            "{kind}: {answer:?}"
        );
    }
    // A set with every code struck is as good as none.
    source.0.lock().unwrap().insert(
        alice.id.clone(),
        Factors::none().with_recovery_codes(codes.set().without(0)),
    );
    let answer = recovery
        .verify_factor(&flow, FactorKind::RecoveryCode, &rc, &ctx)
        .await;
    assert!(
        matches!(answer, Err(Error::FactorUnavailable { .. })),
        "{answer:?}"
    );
    // None of that cost an attempt.
    source.0.lock().unwrap().insert(alice.id.clone(), all);
    let right: u32 = totp_now.expose_secret().parse().unwrap();
    let wrong = format!("{:06}", (right + 500_000) % 1_000_000);
    let err = recovery
        .verify_factor(&flow, FactorKind::Totp, &wrong, &ctx)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidFactorCode { attempts_left: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_second_channel_sends_at_most_the_flows_allowance_and_never_outlives_the_step() {
    let policy = Policy::builder()
        .second_factor(SecondFactor::Required)
        .build()
        .unwrap();
    let alice = account("alice", "+14155550123");
    let sender = RecordingSender::new();
    let mailer = otp_recovery::factor::RecordingChannel::new();
    let clock = ManualClock::new(T0);
    let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys())
        .with_policy(policy.clone())
        .with_clock(clock.clone())
        .with_channel(mailer.clone())
        .with_factors(HashMap::from([(
            alice.id.clone(),
            Factors::none()
                .with_channel(otp_recovery::factor::ChannelAddress::email("alice@example.com").unwrap()),
        )]));
    let ctx = RequestContext::without_client_ip();
    let flow = past_sms(&recovery, &sender, &alice).await;
    let step_ends = T0.saturating_add(policy.code_ttl());
    clock.advance(Duration::from_secs(60));
    let mut sends = 0;
    loop {
        match recovery.send_factor_code(&flow, &ctx).await {
            Ok(sent) => {
                sends += 1;
                // Sent after the step began, the code still dies with it.
                assert_eq!(sent.code_expires_at, step_ends);
                if sent.next_send_at.is_none() {
                    break;
                }
                clock.set(sent.next_send_at.unwrap());
            }
            Err(e) => panic!("send {}: {e:?}", sends + 1),
        }
    }
    assert_eq!(sends, policy.max_sends_per_flow());
    // The allowance is spent, whatever the wait, up to the step's last instant.
    clock.set(Timestamp::from_unix_millis(step_ends.as_unix_millis() - 1));
    let answer = recovery.send_factor_code(&flow, &ctx).await;
    assert!(matches!(answer, Err(Error::TooManySends)), "{answer:?}");
    assert_eq!(mailer.count() as u32, policy.max_sends_per_flow());
}

#[test]
fn authenticator_settings_hold_at_their_bounds() {
    let t = totp(1);
    assert!(t.clone().with_step(Duration::from_secs(600)).is_ok());
    assert!(t.clone().with_step(Duration::from_secs(601)).is_err());
    assert!(t.clone().with_step(Duration::from_secs(1)).is_ok());
    assert!(t.clone().with_skew(2).is_ok());
    assert!(t.clone().with_digits(6).is_ok());
    assert!(t.clone().with_digits(8).is_ok());
    assert!(TotpSecret::from_bytes(vec![1; 16]).is_ok());
}

#[tokio::test]
async fn an_sms_code_never_passes_for_a_second_channel_code() {
    // Domain separation of the two MACs: plant the SMS code's own MAC as
    // the outstanding channel code; the SMS code must not match it.
    let alice = account("alice", "+14155550123");
    let sender = RecordingSender::new();
    let store = Arc::new(MemoryStore::new());
    let recovery = Recovery::new(store.clone(), sender.clone(), keys())
        .with_policy(required())
        .with_clock(ManualClock::new(T0))
        .with_channel(otp_recovery::factor::RecordingChannel::new())
        .with_factors(HashMap::from([(
            alice.id.clone(),
            Factors::none()
                .with_channel(otp_recovery::factor::ChannelAddress::email("alice@example.com").unwrap()),
        )]));
    let ctx = RequestContext::without_client_ip();
    let flow = past_sms(&recovery, &sender, &alice).await;
    let sms = sender.last_code().unwrap();
    recovery.send_factor_code(&flow, &ctx).await.unwrap();
    let mut record = store.get_flow(&flow).await.unwrap().unwrap();
    let step = record.factor.as_mut().unwrap();
    step.channel_mac = Some(record.code_mac);
    let expected = record.version;
    record.version += 1;
    assert!(store.compare_and_swap(expected, &record).await.unwrap());
    let answer = recovery
        .verify_factor(&flow, FactorKind::Channel, sms.expose_secret(), &ctx)
        .await;
    assert!(
        matches!(answer, Err(Error::InvalidFactorCode { .. })),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_second_channel_code_survives_a_key_rotation_between_send_and_check() {
    // Instance A (key 1) sends the code; instance B, already rotated to
    // key 2 with key 1 kept, checks it.
    let alice = account("alice", "+14155550123");
    let sender = RecordingSender::new();
    let mailer = otp_recovery::factor::RecordingChannel::new();
    let store = Arc::new(MemoryStore::new());
    let factors = HashMap::from([(
        alice.id.clone(),
        Factors::none()
            .with_channel(otp_recovery::factor::ChannelAddress::email("alice@example.com").unwrap()),
    )]);
    let a = Recovery::new(store.clone(), sender.clone(), keys())
        .with_policy(required())
        .with_clock(ManualClock::new(T0))
        .with_channel(mailer.clone())
        .with_factors(factors.clone());
    let rotated = KeyRing::new(2, ServerKey::from_bytes(vec![2; 32]).unwrap())
        .with_previous(1, ServerKey::from_bytes(vec![1; 32]).unwrap())
        .unwrap();
    let b = Recovery::new(store.clone(), sender.clone(), rotated)
        .with_policy(required())
        .with_clock(ManualClock::new(T0))
        .with_factors(factors);
    let ctx = RequestContext::without_client_ip();
    let flow = past_sms(&a, &sender, &alice).await;
    a.send_factor_code(&flow, &ctx).await.unwrap();
    let code = mailer.last_code().unwrap();
    let answer = b
        .verify_factor(&flow, FactorKind::Channel, code.expose_secret(), &ctx)
        .await;
    assert!(answer.is_ok(), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_codes_raced_through_two_instances_are_evaluated_exactly_up_to_the_limit() {
    // Two instances of the host over one store, each with its own factor
    // source, race 100 wrong TOTP codes on one flow: exactly the kind's
    // limit of them is evaluated, however they interleave.
    let alice = account("alice", "+14155550123");
    let authenticator = totp(1);
    let factors = HashMap::from([(
        alice.id.clone(),
        Factors::none()
            .with_totp(authenticator.clone())
            .with_recovery_codes(RecoveryCodes::issue(&keys(), &alice.id, 1).unwrap().into_set()),
    )]);
    let store = Arc::new(MemoryStore::new());
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let instance = || {
        Arc::new(
            Recovery::new(store.clone(), sender.clone(), keys())
                .with_policy(required())
                .with_clock(clock.clone())
                .with_factors(factors.clone()),
        )
    };
    let (a, b) = (instance(), instance());
    let flow = past_sms(&a, &sender, &alice).await;
    let right: u32 = authenticator
        .code_at(clock.now())
        .expose_secret()
        .parse()
        .unwrap();
    let wrong = format!("{:06}", (right + 500_000) % 1_000_000);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let recovery = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (wrong, barrier) = (wrong.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                recovery
                    .verify_factor(
                        &flow,
                        FactorKind::Totp,
                        &wrong,
                        &RequestContext::without_client_ip(),
                    )
                    .await
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
    assert_eq!(evaluated, 5);
    let record = store.get_flow(&flow).await.unwrap().unwrap();
    assert_eq!(record.factor.unwrap().failed(FactorKind::Totp), 5);
    assert_eq!(record.state, FlowState::FactorPending);
}
