use std::time::Duration;

use super::*;
use crate::code::Mac;
use crate::id::AccountId;
use crate::machine::{self, Opening};
use crate::phone::PhoneNumber;
use crate::policy::Policy;
use crate::record::{DecoyId, FlowState, Subject};

/// Creates `flow` as the driver does: its subject's open flow superseded.
async fn create(store: &MemoryStore, flow: &FlowRecord) -> Result<()> {
    assert!(
        crate::recovery::insert_newest(store, flow, None).await?,
        "create never settled"
    );
    Ok(())
}

fn flow(now: Timestamp, account: Option<&str>) -> FlowRecord {
    let (subject, phone) = match account {
        Some(a) => (
            Subject::Account(AccountId::new(a).unwrap()),
            Some(PhoneNumber::parse("+14155550123").unwrap()),
        ),
        None => (
            Subject::Unknown(DecoyId::from_bytes(*FlowId::generate().unwrap().as_bytes())),
            None,
        ),
    };
    let opening = Opening {
        id: FlowId::generate().unwrap(),
        subject,
        phone,
        key_id: 1,
        code_mac: Mac::from_bytes([0; 32]),
        prior_failures: 0,
    };
    machine::open(&Policy::default(), now, opening)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the memory store never waits"),
    }
}

#[test]
fn memory_stays_bounded_when_expired_flows_pile_up() {
    let store = MemoryStore::new();
    let day = Duration::from_secs(86_400);
    let mut now = Timestamp::from_unix_millis(1_800_000_000_000);
    // 40 rounds of 10,000 flows; each round the previous ones expire.
    for round in 0..40 {
        for i in 0..10_000 {
            let account = format!("user-{}", i % 500);
            run(create(
                &store,
                &flow(now, (i % 2 == 0).then_some(account.as_str())),
            ))
            .unwrap();
        }
        now = now.saturating_add(2 * day);
        assert!(
            store.flow_count() <= 2 * 10_000 + SHARDS * MIN_SWEEP_LEN,
            "round {round}: {}",
            store.flow_count()
        );
    }
    // Index entries of swept flows went with them (500 accounts, and
    // the decoys of the last two rounds at most).
    let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
    assert!(indexed <= 500 + 2 * 5_000 + SHARDS * MIN_SWEEP_LEN, "{indexed}");
    let counted: usize = store.flows.iter().map(|s| lock(s).table.len()).sum();
    assert_eq!(store.flow_count(), counted, "the flow count must match the maps");
}

#[test]
fn counters_of_ended_windows_are_swept_as_new_ones_arrive() {
    let store = MemoryStore::new();
    let mut now = Timestamp::from_unix_millis(1_800_000_000_000);
    for round in 0..20 {
        let counters: Vec<Counter> = (0..5_000)
            .map(|i| Counter::new(format!("k{i}"), Duration::from_secs(60), 1))
            .collect();
        run(store.increment_counters(&counters, now)).unwrap();
        now = now.saturating_add(Duration::from_secs(120));
        assert!(
            store.counter_count() <= 2 * 5_000 + SHARDS * MIN_SWEEP_LEN,
            "round {round}"
        );
    }
    run(store.purge_expired(now)).unwrap();
    assert_eq!(store.counter_count(), 0);
}

#[test]
fn counter_windows_are_capped_and_a_refused_call_changes_nothing() {
    let store = MemoryStore::new().with_counter_capacity(10);
    let t = Timestamp::from_unix_millis(1_800_000_000_000);
    let minute = Duration::from_secs(60);
    let c = |k: &str| Counter::new(k, minute, 1);
    let ten: Vec<Counter> = (0..10).map(|i| c(&format!("k{i}"))).collect();
    run(store.increment_counters(&ten, t)).unwrap();
    assert_eq!(store.counter_count(), 10);
    let err = run(store.increment_counters(&[c("k0"), c("new")], t)).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    // Every counter of a call that increments needs room, a read too, so
    // that calls of the same shape fare alike whatever they increment; a
    // call of reads only opens nothing and passes (support reads a lock
    // before it lifts it).
    assert!(run(store.increment_counters(&[c("k0"), Counter::read("new", minute)], t)).is_err());
    assert_eq!(
        run(store.increment_counters(&[Counter::read("k0", minute)], t)).unwrap()[0].count,
        1,
        "a read when full"
    );
    // A counting swap is refused before its swap.
    let f = flow(t, Some("a"));
    run(create(&store, &f)).unwrap();
    let next = FlowRecord {
        version: f.version + 1,
        ..f.clone()
    };
    assert!(run(store.compare_and_swap_counting(f.version, &next, &[c("new")], t)).is_err());
    assert_eq!(run(store.get_flow(&f.id)).unwrap().unwrap().version, f.version);
    run(store.delete_counters(&["k9".to_owned()])).unwrap();
    assert_eq!(
        run(store.increment_counters(&[Counter::read("k0", minute)], t)).unwrap()[0].count,
        1,
        "the refused call counted nothing"
    );
    // Windows that ended make room; deletes and undos give it back.
    let later = t.saturating_add(2 * minute);
    run(store.increment_counters(&[c("new"), c("new2")], later)).unwrap();
    assert_eq!(store.counter_count(), 2);
    run(store.delete_counters(&["new".to_owned(), "new2".to_owned()])).unwrap();
    assert_eq!(store.counter_count(), 0);
    let refused = [c("x"), Counter::new("y", minute, 2).with_max(1)];
    run(store.increment_counters(&refused, later)).unwrap();
    assert_eq!(
        store.counter_count(),
        1,
        "the refused call's guarded window is gone, x stays"
    );
}

#[test]
fn a_full_counter_table_sweeps_again_only_once_a_window_can_have_ended() {
    let store = MemoryStore::new().with_counter_capacity(10);
    let t = Timestamp::from_unix_millis(1_800_000_000_000);
    let (minute, hour) = (Duration::from_secs(60), Duration::from_secs(3600));
    let long: Vec<Counter> = (0..10).map(|i| Counter::new(format!("k{i}"), hour, 1)).collect();
    run(store.increment_counters(&long, t)).unwrap();
    assert!(run(store.increment_counters(&[Counter::new("x", minute, 1)], t)).is_err());
    // Room given back takes a window that ends before every other: the
    // table is swept again once it has ended, not only after the hour.
    run(store.delete_counters(&["k9".to_owned()])).unwrap();
    run(store.increment_counters(&[Counter::new("short", minute, 1)], t)).unwrap();
    let later = t.saturating_add(2 * minute);
    run(store.increment_counters(&[Counter::new("y", minute, 1)], later)).unwrap();
    assert_eq!(store.counter_count(), 10);
    // Nothing has ended since: refused without a sweep, until the hour ends.
    assert!(run(store.increment_counters(&[Counter::new("z", minute, 1)], later)).is_err());
    let after = t.saturating_add(hour);
    run(store.increment_counters(&[Counter::new("z", minute, 1)], after)).unwrap();
}

#[test]
fn reads_store_nothing() {
    let store = MemoryStore::new();
    let t = Timestamp::from_unix_millis(1_000);
    for i in 0..1_000 {
        let read = Counter::read(format!("k{i}"), Duration::from_secs(60));
        assert_eq!(
            run(store.increment_counters(&[read], t)).unwrap(),
            [CounterValue::default()]
        );
    }
    assert_eq!(store.counter_count(), 0);
}

#[test]
fn new_flows_are_refused_past_the_capacity_and_accepted_after_a_purge() {
    let store = MemoryStore::with_capacity(3);
    let t = Timestamp::from_unix_millis(1_000);
    for _ in 0..3 {
        run(create(&store, &flow(t, None))).unwrap();
    }
    let err = run(create(&store, &flow(t, None))).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(store.flow_count(), 3);
    let later = flow(t, None).purge_after;
    assert_eq!(run(store.purge_expired(later)).unwrap(), 3);
    run(create(&store, &flow(later, None))).unwrap();
    assert_eq!(store.flow_count(), 1);
}

#[test]
fn purge_forgets_the_account_index_of_purged_flows() {
    let store = MemoryStore::new();
    let t = Timestamp::from_unix_millis(1_000);
    let f = flow(t, Some("alice"));
    run(create(&store, &f)).unwrap();
    assert_eq!(run(store.purge_expired(f.purge_after)).unwrap(), 1);
    assert_eq!(store.flow_count(), 0);
    let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
    assert_eq!(indexed, 0);
}
/// A store whose subject index puts every subject under one hash.
fn colliding() -> MemoryStore {
    MemoryStore::with_subject_hasher(MemoryStore::DEFAULT_CAPACITY, SubjectHasher::Constant(7))
}

fn ids(flows: &[FlowRecord]) -> Vec<FlowId> {
    flows.iter().map(|f| f.id).collect()
}

#[test]
fn colliding_subjects_keep_their_own_flows_and_supersede_only_their_own() {
    let store = colliding();
    let t = Timestamp::from_unix_millis(1_000);
    let alice = flow(t, Some("alice"));
    let bob = flow(t, Some("bob"));
    let decoy = flow(t, None);
    for f in [&alice, &bob, &decoy] {
        run(create(&store, f)).unwrap();
    }
    // Another subject's flow under the same hash is not superseded.
    for f in [&alice, &bob, &decoy] {
        let stored = run(store.get_flow(&f.id)).unwrap().unwrap();
        assert_eq!(stored.state, FlowState::CodeSent, "{:?}", f.subject);
    }
    let alice2 = flow(t, Some("alice"));
    run(create(&store, &alice2)).unwrap();
    assert_eq!(
        run(store.get_flow(&alice.id)).unwrap().unwrap().state,
        FlowState::Superseded
    );
    assert_eq!(
        run(store.get_flow(&bob.id)).unwrap().unwrap().state,
        FlowState::CodeSent
    );
    let key = |f: &FlowRecord| f.subject.key();
    assert_eq!(
        ids(&run(store.find_flows(&key(&alice), 10)).unwrap()),
        [alice2.id, alice.id]
    );
    assert_eq!(ids(&run(store.find_flows(&key(&bob), 10)).unwrap()), [bob.id]);
    assert_eq!(ids(&run(store.find_flows(&key(&decoy), 10)).unwrap()), [decoy.id]);
    assert!(run(store.find_flows("account:carol", 10)).unwrap().is_empty());
    // A key that is a prefix of another's is another subject.
    assert!(run(store.find_flows("account:alic", 10)).unwrap().is_empty());
}

#[test]
fn each_of_colliding_subjects_keeps_its_newest_flows_up_to_the_limit() {
    let store = colliding();
    let t = Timestamp::from_unix_millis(1_000);
    let (mut alice, mut bob) = (Vec::new(), Vec::new());
    // Same instant throughout: the order is the creation order.
    for _ in 0..RECENT_PER_SUBJECT + 3 {
        for (account, mine) in [("alice", &mut alice), ("bob", &mut bob)] {
            let f = flow(t, Some(account));
            run(create(&store, &f)).unwrap();
            mine.insert(0, f.id);
        }
    }
    for (key, mine) in [("account:alice", &alice), ("account:bob", &bob)] {
        let found = run(store.find_flows(key, 100)).unwrap();
        assert_eq!(ids(&found), mine[..RECENT_PER_SUBJECT], "{key}");
        assert_eq!(found[0].state, FlowState::CodeSent);
        assert!(found[1..].iter().all(|f| f.state == FlowState::Superseded));
        assert_eq!(ids(&run(store.find_flows(key, 3)).unwrap()), mine[..3]);
    }
    let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
    assert_eq!(indexed, 2 * RECENT_PER_SUBJECT);
}

#[test]
fn sweeping_forgets_exactly_the_swept_flows_of_colliding_subjects() {
    let store = colliding();
    let t = Timestamp::from_unix_millis(1_000);
    let old = flow(t, Some("alice"));
    run(create(&store, &old)).unwrap();
    let later = old.purge_after;
    let kept = flow(later, Some("bob"));
    run(create(&store, &kept)).unwrap();
    assert_eq!(run(store.purge_expired(later)).unwrap(), 1);
    assert!(run(store.find_flows("account:alice", 10)).unwrap().is_empty());
    assert_eq!(ids(&run(store.find_flows("account:bob", 10)).unwrap()), [kept.id]);
    let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
    assert_eq!(indexed, 1);
    // A new flow of the swept subject supersedes nothing of the other's.
    run(create(&store, &flow(later, Some("alice")))).unwrap();
    assert_eq!(
        run(store.get_flow(&kept.id)).unwrap().unwrap().state,
        FlowState::CodeSent
    );
}

#[test]
fn shard_and_slot_use_different_bits_of_one_hash() {
    // Flow ids are uniformly random (the crate makes them): they reach
    // every shard, and the ids of one shard still differ in the slot's
    // low bits. (Ids that differ only in a few bytes are no fair test:
    // for about one seed in thirty, foldhash leaves a shard empty.)
    let store = MemoryStore::new();
    let mut shards = std::collections::HashSet::new();
    let mut slots_of_one_shard = std::collections::HashSet::new();
    for _ in 0..4_000 {
        let hash = store.flow_hash(&FlowId::generate().unwrap());
        shards.insert(shard_of(hash));
        if shard_of(hash) == 0 {
            slots_of_one_shard.insert(hash % 64);
        }
    }
    assert_eq!(shards.len(), SHARDS);
    // About 62 hashes in shard 0 take about 40 of 64 low-bit values;
    // were the shard taken from the low bits, they would take one.
    assert!(slots_of_one_shard.len() >= 16, "{}", slots_of_one_shard.len());
}

#[test]
fn a_refused_call_undoes_only_the_window_it_counted_in() {
    // A limit of 5, full in a window ending at `end`. A call at the
    // window's last millisecond counts a sixth and is refused; before
    // it takes that back, a racing call at `end` opens the next window
    // and is admitted. The undo must leave the new window's count.
    let store = MemoryStore::new();
    let start = Timestamp::from_unix_millis(1_800_000_000_000);
    let limit = Counter::new("limit:x", Duration::from_secs(60), 1)
        .with_max(5)
        .guarded();
    for _ in 0..5 {
        store.counters.step(&limit, start);
    }
    let end = start.saturating_add(Duration::from_secs(60));
    let last = Timestamp::from_unix_millis(end.as_unix_millis() - 1);
    let refused = store.counters.step(&limit, last);
    assert!(limit.refuses(&refused));
    let admitted = store.counters.step(&limit, end);
    assert_eq!(admitted.count, 1);
    store.counters.undo(&limit, refused);
    let read =
        run(store.increment_counters(&[Counter::read("limit:x", Duration::from_secs(60))], end)).unwrap();
    assert_eq!(read[0], admitted, "the next window keeps its count");
    // Its own window's increment is taken back.
    store.counters.undo(&limit, admitted);
    let read =
        run(store.increment_counters(&[Counter::read("limit:x", Duration::from_secs(60))], end)).unwrap();
    assert_eq!(read[0].count, 0);
}

/// The whole conformance suite with every subject colliding in the
/// index.
#[cfg(feature = "conformance")]
#[test]
fn the_conformance_suite_passes_with_every_subject_colliding() {
    let store = std::sync::Arc::new(colliding());
    crate::conformance::block_on(crate::conformance::run(store.clone(), store));
}
