//! An injected generator (`Recovery::with_rng`): codes and flow ids come
//! from it, and its failures are typed errors that write nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use otp_recovery::rand_core::{TryCryptoRng, TryRng};
use otp_recovery::record::Subject;
use otp_recovery::sms::RecordingSender;
use otp_recovery::store::{CodeStore, MemoryStore};
use otp_recovery::{
    Account, AccountId, Error, KeyRing, ManualClock, PhoneNumber, Recovery, RequestContext, ServerKey,
    Timestamp,
};

/// splitmix64, seeded: reproducible, and for tests only. `fail` makes
/// every draw fail while it is set.
struct Seeded {
    state: u64,
    fail: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the test generator was told to fail")]
struct Told;

impl TryRng for Seeded {
    type Error = Told;
    fn try_next_u32(&mut self) -> Result<u32, Told> {
        self.try_next_u64().map(|v| v as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Told> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(Told);
        }
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Told> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl TryCryptoRng for Seeded {}

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);

fn alice() -> Account {
    Account::new(
        AccountId::new("alice").unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

type Rec = Recovery<Arc<MemoryStore>, RecordingSender, ManualClock>;

fn recovery(seed: u64) -> (Rec, Arc<MemoryStore>, RecordingSender, Arc<AtomicBool>) {
    let (store, sender, fail) = (
        Arc::new(MemoryStore::new()),
        RecordingSender::new(),
        Arc::default(),
    );
    let rng = Seeded {
        state: seed,
        fail: Arc::clone(&fail),
    };
    let recovery = Recovery::new(
        store.clone(),
        sender.clone(),
        KeyRing::new(1, ServerKey::from_bytes(vec![7; 32]).unwrap()),
    )
    .with_clock(ManualClock::new(T0))
    .with_rng(rng);
    (recovery, store, sender, fail)
}

#[tokio::test]
async fn a_seeded_generator_makes_flow_ids_and_codes_reproducible() {
    let ctx = RequestContext::without_client_ip();
    let mut seen = Vec::new();
    for seed in [1, 1, 2] {
        let (recovery, _, sender, _) = recovery(seed);
        let requested = recovery.request("alice", Some(alice()), &ctx).await.unwrap();
        let code = sender.last_code().unwrap();
        seen.push((requested.flow_id, code.expose_secret().to_owned()));
    }
    assert_eq!(seen[0], seen[1], "one seed, one flow id and code");
    assert_ne!(seen[0].0, seen[2].0, "another seed, another flow id");
}

#[tokio::test]
async fn a_failing_generator_is_a_typed_error_and_writes_nothing() {
    let ctx = RequestContext::without_client_ip();
    let (recovery, store, sender, fail) = recovery(3);
    fail.store(true, Ordering::SeqCst);
    let err = recovery
        .request("alice", Some(alice()), &ctx)
        .await
        .expect_err("no randomness, no flow");
    assert!(matches!(err, Error::Random(_)), "{err:?}");
    assert_eq!(sender.count(), 0, "nothing may be sent");
    let subject = Subject::Account(AccountId::new("alice").unwrap());
    assert!(
        store.find_flows(&subject.key(), 10).await.unwrap().is_empty(),
        "nothing may be stored"
    );
}

#[tokio::test]
async fn a_generator_failing_at_the_token_leaves_the_code_usable() {
    let ctx = RequestContext::without_client_ip();
    let (recovery, _, sender, fail) = recovery(4);
    let flow = recovery
        .request("alice", Some(alice()), &ctx)
        .await
        .unwrap()
        .flow_id;
    let code = sender.last_code().unwrap();
    fail.store(true, Ordering::SeqCst);
    let err = recovery
        .verify(&flow, code.expose_secret(), &ctx)
        .await
        .expect_err("no randomness, no token");
    assert!(matches!(err, Error::Random(_)), "{err:?}");
    fail.store(false, Ordering::SeqCst);
    let verified = recovery
        .verify(&flow, code.expose_secret(), &ctx)
        .await
        .expect("the code was neither used nor charged an attempt");
    recovery
        .reset(&verified.token.expose_secret(), &ctx)
        .await
        .expect("reset");
}

#[tokio::test]
async fn a_resend_the_generator_fails_spends_no_send_limit() {
    use otp_recovery::limits::{LimitScope, Limits, Rule};
    use std::time::Duration;

    let ctx = RequestContext::without_client_ip();
    let fail = Arc::new(AtomicBool::new(false));
    let clock = ManualClock::new(T0);
    let sender = RecordingSender::new();
    // Two sends per phone: the request, and one resend.
    let limits = Limits::builder()
        .clear_send_rules()
        .add_send_rule(Rule::new(LimitScope::Phone, 2, Duration::from_secs(3600)))
        .build()
        .unwrap();
    let recovery = Recovery::new(
        Arc::new(MemoryStore::new()),
        sender.clone(),
        KeyRing::new(1, ServerKey::from_bytes(vec![7; 32]).unwrap()),
    )
    .with_clock(clock.clone())
    .with_limits(limits)
    .with_rng(Seeded {
        state: 5,
        fail: Arc::clone(&fail),
    });
    let flow = recovery
        .request("alice", Some(alice()), &ctx)
        .await
        .unwrap()
        .flow_id;
    clock.advance(Duration::from_secs(3600 - 1));
    fail.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let err = recovery.resend(&flow, &ctx).await.expect_err("no randomness");
        assert!(matches!(err, Error::Random(_)), "{err:?}");
    }
    fail.store(false, Ordering::SeqCst);
    recovery
        .resend(&flow, &ctx)
        .await
        .expect("the failed resends spent none of the phone's two sends");
    assert_eq!(sender.count(), 2);
}
