//! Checks of the flow records: what is stored reads back, a new flow
//! supersedes its subject's open one, swaps apply on their version only,
//! and purges and expiry fall on their millisecond.

use std::sync::Arc;
use std::time::Duration;

use super::harness::{recovery, requested_flow};
use super::{account, create, decoy, flow_at, get, now, of, unique};
use crate::case::{SupportCase, SupportReference};
use crate::clock::{Clock, Timestamp};
use crate::code::Mac;
use crate::error::Error;
use crate::id::{AccountId, FlowId};
use crate::record::FlowState;
use crate::recovery::RequestContext;
use crate::store::{CodeStore, Counter, Created, Newest, StoreError};

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
        create(&*store, &flow).await;
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
    create(&*store, &flow).await;
    let mut again = flow.clone();
    again.failed_attempts = 4;
    let err = store
        .create_flow(&again, Newest::None)
        .await
        .expect_err("a duplicate id must be refused");
    assert_eq!(err, StoreError::Duplicate);
    assert_eq!(
        get(&*store, &flow.id).await,
        flow,
        "a refused create must change nothing"
    );
}

/// `create_flow` inserts only while the subject's newest stored flow is
/// the one named (by id and version, or none), writes the replacement of
/// that flow in the same step, and otherwise writes nothing and answers
/// the newest flow: with the newest flow's version or id wrong, with a
/// flow named for a subject that has none, and with none named for one
/// that has one.
pub async fn create_compares_the_subjects_newest_flow<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let alice = account();
    let first = flow_at(t, of(&alice));
    let unwritten = |flow: &crate::record::FlowRecord| {
        let store = store.clone();
        let id = flow.id;
        async move {
            assert_eq!(
                store.get_flow(&id).await.expect("get_flow"),
                None,
                "a create that answered Stale must not write its flow"
            );
        }
    };
    // A flow named for a subject that has none.
    let ghost = flow_at(t, of(&alice));
    let answer = store
        .create_flow(&first, Newest::Kept(ghost.id, ghost.version))
        .await
        .expect("create_flow");
    assert_eq!(answer, Created::Stale(None), "the subject has no flow yet");
    unwritten(&first).await;
    assert_eq!(
        store
            .create_flow(&first, Newest::None)
            .await
            .expect("create_flow"),
        Created::Inserted
    );
    assert_eq!(get(&*store, &first.id).await, first);

    // None named, a wrong version, a wrong id: each is stale, and writes
    // neither the new flow nor the replacement.
    let second = flow_at(t, of(&alice));
    let mut replaced = first.clone();
    replaced.version += 1;
    replaced.state = FlowState::Superseded;
    for newest in [
        Newest::None,
        Newest::Kept(first.id, first.version + 1),
        Newest::Kept(ghost.id, first.version),
        Newest::Replaced(first.version + 1, &replaced),
    ] {
        let answer = store.create_flow(&second, newest).await.expect("create_flow");
        assert_eq!(
            answer,
            Created::Stale(Some(first.clone())),
            "{newest:?} is not the subject's newest flow: the answer is the newest flow"
        );
        unwritten(&second).await;
        assert_eq!(
            get(&*store, &first.id).await,
            first,
            "a stale create must change nothing"
        );
    }

    // The newest flow replaced, in the same step.
    assert_eq!(
        store
            .create_flow(&second, Newest::Replaced(first.version, &replaced))
            .await
            .expect("create_flow"),
        Created::Inserted
    );
    assert_eq!(
        get(&*store, &first.id).await,
        replaced,
        "the newest flow's replacement must be written in the same step"
    );
    assert_eq!(get(&*store, &second.id).await, second);

    // Kept: the newest flow stays as it is, and the new one becomes the
    // newest (the one the next create must name).
    let third = flow_at(t, of(&alice));
    assert_eq!(
        store
            .create_flow(&third, Newest::Kept(second.id, second.version))
            .await
            .expect("create_flow"),
        Created::Inserted
    );
    assert_eq!(
        get(&*store, &second.id).await,
        second,
        "a kept flow must not change"
    );
    let fourth = flow_at(t, of(&alice));
    let answer = store
        .create_flow(&fourth, Newest::Kept(second.id, second.version))
        .await
        .expect("create_flow");
    assert_eq!(
        answer,
        Created::Stale(Some(third.clone())),
        "the newest flow is the one created last"
    );
    unwritten(&fourth).await;

    // A swap of the newest flow makes a create that named its old version stale.
    let mut attempted = third.clone();
    attempted.version += 1;
    attempted.failed_attempts = 1;
    assert!(
        store
            .compare_and_swap(third.version, &attempted)
            .await
            .expect("cas")
    );
    let answer = store
        .create_flow(&fourth, Newest::Kept(third.id, third.version))
        .await
        .expect("create_flow");
    assert_eq!(answer, Created::Stale(Some(attempted.clone())));
    unwritten(&fourth).await;

    // Another subject's flows are not this subject's newest.
    let bobs = flow_at(t, of(&account()));
    assert_eq!(
        store.create_flow(&bobs, Newest::None).await.expect("create_flow"),
        Created::Inserted,
        "another subject has no flow"
    );
    let a_decoy = flow_at(t, decoy());
    assert_eq!(
        store
            .create_flow(&a_decoy, Newest::None)
            .await
            .expect("create_flow"),
        Created::Inserted,
        "a decoy subject has no flow"
    );
}

/// A new flow supersedes its subject's open flow (code sent or verified),
/// bumping its version, and leaves closed flows and other subjects alone.
pub async fn create_supersedes_the_accounts_open_flow<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let alice = account();
    let first = flow_at(t, of(&alice));
    let bobs = flow_at(t, of(&account()));
    create(&*store, &first).await;
    create(&*store, &bobs).await;

    let later = t.saturating_add(Duration::from_secs(1));
    let second = flow_at(later, of(&alice));
    create(&*store, &second).await;
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
    create(&*store, &third).await;
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
    create(&*store, &after_pending).await;
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
    create(&*store, &fourth).await;
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
    create(&*store, &real).await;
    let nobody = decoy();
    let first = flow_at(t, nobody.clone());
    let other = flow_at(t, decoy());
    create(&*store, &first).await;
    create(&*store, &other).await;
    let second = flow_at(t, nobody);
    create(&*store, &second).await;
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

/// The flow created last supersedes the open one even when its
/// `created_at` is earlier: another instance's clock may be behind, and a
/// store that supersedes only older flows would leave two open.
pub async fn a_new_flow_supersedes_one_stamped_later<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let alice = account();
    let ahead = flow_at(t.saturating_add(Duration::from_secs(5)), of(&alice));
    create(&*store, &ahead).await;
    let behind = flow_at(t, of(&alice));
    create(&*store, &behind).await;
    assert_eq!(
        get(&*store, &ahead.id).await.state,
        FlowState::Superseded,
        "a flow stamped by a clock ahead must still be superseded"
    );
    assert_eq!(
        get(&*store, &behind.id).await,
        behind,
        "the flow created last stays open"
    );
    // And the next one supersedes it, not the flow with the latest stamp.
    let next = flow_at(t.saturating_add(Duration::from_secs(1)), of(&alice));
    create(&*store, &next).await;
    assert_eq!(
        get(&*store, &behind.id).await.state,
        FlowState::Superseded,
        "the open flow must be superseded, whatever its stamp"
    );
    assert!(get(&*store, &next.id).await.state.is_open());
}

/// Keys are compared byte for byte: accounts whose ids differ only in
/// case are two subjects (a case-insensitive collation would let one
/// supersede the other's flow, or list it), and two counters.
pub async fn keys_are_compared_byte_for_byte<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let base = unique("Case");
    let upper = AccountId::new(base.to_uppercase()).expect("valid id");
    let lower = AccountId::new(base.to_lowercase()).expect("valid id");
    let first = flow_at(t, of(&upper));
    let second = flow_at(t, of(&lower));
    create(&*store, &first).await;
    create(&*store, &second).await;
    assert_eq!(
        get(&*store, &first.id).await,
        first,
        "an account whose id differs only in case superseded this one"
    );
    let listed: Vec<FlowId> = store
        .find_flows(&of(&upper).key(), 10)
        .await
        .expect("find")
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(listed, [first.id], "find_flows listed another case's flow");

    let hour = Duration::from_secs(3600);
    let key = unique("Counter");
    let counts = store
        .increment_counters(
            &[
                Counter::new(key.to_uppercase(), hour, 1),
                Counter::new(key.to_lowercase(), hour, 1),
            ],
            t,
        )
        .await
        .expect("increment");
    assert_eq!(
        (counts[0].count, counts[1].count),
        (1, 1),
        "counter keys that differ only in case must count apart"
    );
}

/// Compare-and-swap writes only when the stored version is the expected
/// one, and reports `false` for a stale version or a missing flow.
pub async fn compare_and_swap_applies_only_on_the_expected_version<S: CodeStore>(store: Arc<S>) {
    let flow = flow_at(now(), of(&account()));
    create(&*store, &flow).await;
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

/// `find_flows` lists a subject's flows, newest first, up to the limit,
/// and nobody else's.
pub async fn find_flows_lists_a_subjects_recent_flows_newest_first<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let alice = account();
    let mut ids = Vec::new();
    for i in 0..3u64 {
        let flow = flow_at(t.saturating_add(Duration::from_secs(i)), of(&alice));
        create(&*store, &flow).await;
        ids.push(flow.id);
    }
    create(&*store, &flow_at(t, of(&account()))).await;
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
    let newest_two: Vec<FlowId> = store
        .find_flows(&of(&alice).key(), 2)
        .await
        .expect("find")
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(
        newest_two,
        [ids[2], ids[1]],
        "the limit keeps the newest flows, not the oldest"
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
    let _alone = PURGES.lock().await;
    let t = now();
    // Soon: purging at it also deletes the counters that end by then, and
    // checks that share a database must not lose theirs.
    let mut case = live_case(t.saturating_add(PURGE_HORIZON));
    let reference = case.reference;
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

/// How far ahead of real time the checks ever purge. Checks share one
/// database, so every counter a check relies on ends later than this.
const PURGE_HORIZON: Duration = Duration::from_secs(10);

/// One purging check at a time: each keeps a record that ends just after
/// its own purge, which another check's purge a moment later would delete.
/// This holds within one process (as `cargo test` runs a test file); two
/// processes running the suite on one database at once may see it.
static PURGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Purging deletes flows whose `purge_after` is at or before `now` and
/// keeps everything live (later flows, counters in their window, cases),
/// and a purged subject can open a new flow.
pub async fn purge_removes_exactly_the_expired<S: CodeStore>(store: Arc<S>) {
    let _alone = PURGES.lock().await;
    let t = now();
    let hour = Duration::from_secs(3600);
    let counter = unique("live-counter");
    store
        .increment_counters(&[Counter::new(&counter, hour, 2)], t)
        .await
        .expect("increment");
    let case = live_case(t.saturating_add(hour));
    store.put_case(&case).await.expect("put");
    let alice = account();
    let mut expiring = flow_at(t, of(&alice));
    expiring.purge_after = t.saturating_add(PURGE_HORIZON);
    let mut staying = flow_at(t, of(&account()));
    staying.purge_after = t.saturating_add(PURGE_HORIZON + Duration::from_millis(1));
    create(&*store, &expiring).await;
    create(&*store, &staying).await;

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
    let counted = store
        .increment_counters(&[Counter::read(&counter, hour)], t)
        .await
        .expect("read");
    assert_eq!(counted[0].count, 2, "a purge deleted a counter in its window");
    assert_eq!(
        store.get_case(&case.reference).await.expect("get"),
        Some(case),
        "a purge deleted a live case"
    );

    let fresh = flow_at(expiring.purge_after, of(&alice));
    create(&*store, &fresh).await;
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
        .verify(&flow, code.expose_secret(), &RequestContext::without_client_ip())
        .await
        .expect("the code must verify at its last valid millisecond");

    clock.set(start);
    let flow = requested_flow(&recovery).await;
    let code = sender.last_code().expect("a code was sent");
    clock.set(start.saturating_add(ttl));
    let err = recovery
        .verify(&flow, code.expose_secret(), &RequestContext::without_client_ip())
        .await
        .expect_err("expired");
    assert!(
        matches!(err, Error::Expired),
        "expected Expired at the TTL, got {err:?}"
    );
}

/// A case of a fresh reference, opened now, kept until `purge_after`.
pub(super) fn live_case(purge_after: Timestamp) -> SupportCase {
    let mut bytes = [0u8; 5];
    crate::rng::fill_random(&mut bytes).expect("randomness");
    let t = now();
    SupportCase {
        reference: SupportReference::from_bits(bytes),
        subject: of(&account()),
        flow: FlowId::generate().expect("randomness"),
        opened_at: t,
        locked_until: t.saturating_add(Duration::from_secs(5)),
        unlocked_at: None,
        purge_after,
    }
}
