//! Checks that a store holds limits, not only counts: windows of a day and
//! a week that neither shrink nor slide, a `max` and a condition decided in
//! the same atomic step as the increment, counts that no swap loses, and
//! supersedes that hold across many subjects at once.
//!
//! Each check is deterministic against the broken stores of
//! `tests/broken_stores.rs`: the races run enough tasks through a barrier
//! that a store with a round trip between its check and its write fails
//! on every run.

use std::sync::Arc;
use std::time::Duration;

use super::harness::{Interleaved, race};
use super::{account, create, flow_at, get, now, of, phone_with_random_line, unique};
use crate::clock::{ManualClock, Timestamp};
use crate::code::KeyRing;
use crate::limits::{LimitScope, Limits, Rule};
use crate::recovery::{Account, Recovery, RequestContext};
use crate::secret::ServerKey;
use crate::sms::RecordingSender;
use crate::store::{CodeStore, Counter, CounterValue};

const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn millis_before(t: Timestamp) -> Timestamp {
    Timestamp::from_unix_millis(t.as_unix_millis() - 1)
}

/// Windows of 24 hours and 7 days (the account's failure windows) keep
/// their full length: an increment half-way through does not move the end,
/// the last millisecond sees every count, and the end starts a new window.
pub async fn counters_hold_windows_of_a_day_and_a_week<S: CodeStore>(store: Arc<S>) {
    for window in [DAY, WEEK] {
        let key = unique("long-window");
        let start = now();
        let end = start.saturating_add(window);
        let opened = store
            .increment_counters(&[Counter::new(&key, window, 1)], start)
            .await
            .expect("increment");
        assert_eq!(
            opened,
            [CounterValue::new(1, Some(end))],
            "a {window:?} window must end exactly its length after its first increment"
        );
        let halfway = store
            .increment_counters(&[Counter::new(&key, window, 1)], start.saturating_add(window / 2))
            .await
            .expect("increment");
        assert_eq!(
            halfway,
            [CounterValue::new(2, Some(end))],
            "an increment inside a window must not move its end (a sliding window)"
        );
        let last = store
            .increment_counters(&[Counter::read(&key, window)], millis_before(end))
            .await
            .expect("read");
        assert_eq!(
            last,
            [CounterValue::new(2, Some(end))],
            "the last millisecond of a {window:?} window must see its counts"
        );
        let next = store
            .increment_counters(&[Counter::new(&key, window, 1)], end)
            .await
            .expect("increment");
        assert_eq!(
            next,
            [CounterValue::new(1, Some(end.saturating_add(window)))],
            "the window's end must start a new one"
        );
    }
}

/// 40 concurrent calls under a `max` of 5: exactly 5 are admitted, and
/// the refused ones leave no count behind on the limit or on a guarded
/// counter (the check and the increment are one atomic step per counter).
pub async fn a_max_holds_under_concurrent_calls<S: CodeStore + 'static>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let (limit, guarded) = (unique("race-max"), unique("race-guarded"));
    let call = move |limit: &str, guarded: &str| {
        vec![
            Counter::new(limit, hour, 1).with_max(5),
            Counter::new(guarded, hour, 1).guarded(),
        ]
    };
    let admitted = race(40, |_| {
        let (store, limit, guarded) = (store.clone(), limit.clone(), guarded.clone());
        async move {
            let counters = call(&limit, &guarded);
            let values = store.increment_counters(&counters, t).await.expect("increment");
            !Counter::refused(&counters, &values)
        }
    })
    .await;
    assert_eq!(
        admitted.iter().filter(|a| **a).count(),
        5,
        "a max of 5 admitted another number of concurrent calls"
    );
    let read = store
        .increment_counters(&[Counter::read(&limit, hour), Counter::read(&guarded, hour)], t)
        .await
        .expect("read");
    assert_eq!(
        (read[0].count, read[1].count),
        (5, 5),
        "refused calls must leave no count"
    );
}

/// A refused call undoes only its own increments: 20 calls refused by a
/// full limit, raced in turn with 20 admitted ones on the same guarded
/// counter, take none of the admitted counts with them (an undo that
/// restores what it read before would).
pub async fn refused_calls_undo_only_their_own_counts<S: CodeStore + 'static>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let (full, open, shared) = (unique("undo-full"), unique("undo-open"), unique("undo-shared"));
    store
        .increment_counters(&[Counter::new(&full, hour, 1)], t)
        .await
        .expect("increment");
    let refused = race(40, |i| {
        let store = store.clone();
        // Alternate within each of the race's groups, so that a refused
        // call and an admitted one are in flight at once.
        let limit = if (i / 4) % 2 == 0 {
            Counter::new(&full, hour, 1).with_max(1)
        } else {
            Counter::new(&open, hour, 1).with_max(1000)
        };
        let counters = vec![limit, Counter::new(&shared, hour, 1).guarded()];
        async move {
            let values = store.increment_counters(&counters, t).await.expect("increment");
            Counter::refused(&counters, &values)
        }
    })
    .await;
    assert_eq!(
        refused.iter().filter(|r| **r).count(),
        20,
        "exactly the calls over their max are refused"
    );
    let read = store
        .increment_counters(
            &[
                Counter::read(&full, hour),
                Counter::read(&open, hour),
                Counter::read(&shared, hour),
            ],
            t,
        )
        .await
        .expect("read");
    assert_eq!(
        (read[0].count, read[1].count, read[2].count),
        (1, 20, 20),
        "a refused call's undo took admitted counts with it (or kept its own)"
    );
}

/// A condition is decided in the same step as its increment: 40 calls
/// raced on one new pair count it once, on 40 new pairs count 40.
pub async fn conditional_counters_hold_under_concurrent_calls<S: CodeStore + 'static>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    for distinct_pairs in [false, true] {
        let (pair, distinct) = (unique("race-pair"), unique("race-distinct"));
        race(40, |i| {
            let (store, distinct) = (store.clone(), distinct.clone());
            let pair = if distinct_pairs {
                format!("{pair}-{i}")
            } else {
                pair.clone()
            };
            async move {
                let counters = [
                    Counter::new(&pair, hour, 1),
                    Counter::new(&distinct, hour, 1).only_if_opened(0),
                ];
                store.increment_counters(&counters, t).await.expect("increment");
            }
        })
        .await;
        let read = store
            .increment_counters(&[Counter::read(&distinct, hour)], t)
            .await
            .expect("read");
        let expected = if distinct_pairs { 40 } else { 1 };
        assert_eq!(
            read[0].count, expected,
            "concurrent calls counted {} distinct pairs instead of {expected}",
            read[0].count
        );
    }
}

/// 50 counting swaps on 50 flows, raced, that count one shared counter
/// (an account's failures over its flows): every swap writes and counts.
pub async fn counting_swaps_on_many_flows_lose_no_count<S: CodeStore + 'static>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let key = unique("race-shared");
    let mut flows = Vec::new();
    for _ in 0..50 {
        let flow = flow_at(t, of(&account()));
        create(&*store, &flow).await;
        flows.push(flow);
    }
    let flows = Arc::new(flows);
    let wrote = race(50, |i| {
        let (store, flows, key) = (store.clone(), flows.clone(), key.clone());
        async move {
            let mut next = flows[i].clone();
            next.version += 1;
            next.failed_attempts = 1;
            store
                .compare_and_swap_counting(flows[i].version, &next, &[Counter::new(&key, hour, 1)], t)
                .await
                .expect("cas")
                .is_some()
        }
    })
    .await;
    assert!(
        wrote.iter().all(|w| *w),
        "a swap from the stored version must write"
    );
    for flow in flows.iter() {
        assert_eq!(get(&*store, &flow.id).await.failed_attempts, 1);
    }
    let read = store
        .increment_counters(&[Counter::read(&key, hour)], t)
        .await
        .expect("read");
    assert_eq!(read[0].count, 50, "counting swaps lost counts");
}

/// Creates raced on ten subjects at once, ten each: every subject is left
/// with exactly one open flow.
pub async fn creates_raced_on_many_subjects_leave_one_open_flow_each<S: CodeStore + 'static>(store: Arc<S>) {
    let t = now();
    let subjects: Arc<Vec<_>> = Arc::new((0..10).map(|_| account()).collect());
    let ids = race(100, |i| {
        let (store, subjects) = (store.clone(), subjects.clone());
        async move {
            let flow = flow_at(t, of(&subjects[i % 10]));
            create(&*store, &flow).await;
            (i % 10, flow.id)
        }
    })
    .await;
    let mut open = [0usize; 10];
    for (subject, id) in &ids {
        open[*subject] += usize::from(get(&*store, id).await.state.is_open());
    }
    assert_eq!(open, [1; 10], "a subject was left with other than one open flow");
}

/// Through [`Recovery`] with real send limits (5 per phone, 3 per account
/// and per hour): 40 requests raced for one account send exactly 3 codes,
/// and 40 raced for 40 accounts sharing one phone send exactly 5.
pub async fn request_races_hold_the_send_limits<S: CodeStore + 'static>(store: Arc<S>) {
    let limits = Limits::builder()
        .clear_send_rules()
        .add_send_rule(Rule::new(LimitScope::Phone, 5, Duration::from_secs(600)))
        .add_send_rule(Rule::new(LimitScope::Account, 3, Duration::from_secs(3600)))
        .ip_verifies(None)
        .build()
        .expect("limits");
    let sender = RecordingSender::new();
    let recovery = Arc::new(
        Recovery::new(
            Interleaved(store),
            sender.clone(),
            KeyRing::new(1, ServerKey::generate().expect("randomness")),
        )
        .with_limits(limits)
        .with_clock(ManualClock::new(now())),
    );
    let ctx = RequestContext::without_client_ip();

    let one = Account::new(account(), phone_with_random_line());
    let sent = race(40, |_| {
        let (r, one, ctx) = (recovery.clone(), one.clone(), ctx.clone());
        async move { r.request("one@example.com", Some(one), &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(
        sent.iter().filter(|ok| **ok).count(),
        3,
        "the account limit of 3 did not hold under concurrent requests"
    );

    let shared = phone_with_random_line();
    let before = sender.count();
    let sent = race(40, |_| {
        let (r, ctx) = (recovery.clone(), ctx.clone());
        let target = Account::new(account(), shared.clone());
        async move { r.request("many@example.com", Some(target), &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(
        sent.iter().filter(|ok| **ok).count(),
        5,
        "the phone limit of 5 did not hold under concurrent requests"
    );
    assert_eq!(sender.count(), before + 5, "exactly 5 SMS must go out");
}
