//! Checks of the counters: windows, conditions, refusals and their undo,
//! and the counts that swaps and loads apply with them.

use std::sync::Arc;
use std::time::Duration;

use super::{account, create, flow_at, get, now, of, unique};
use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::record::Subject;
use crate::store::{CodeStore, Counter, CounterValue, Load};

/// A counting swap increments its counters when, and only when, it writes.
pub async fn compare_and_swap_counting_counts_only_when_it_writes<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let flow = flow_at(t, of(&account()));
    create(&*store, &flow).await;
    let key = unique("counting");
    let counter = [Counter::new(&key, hour, 1)];
    let mut next = flow.clone();
    next.version += 1;
    next.failed_attempts = 1;
    let counts = store
        .compare_and_swap_counting(flow.version, &next, &counter, t)
        .await
        .expect("cas");
    let opened = CounterValue::new(1, Some(t.saturating_add(hour)));
    assert_eq!(counts, Some(vec![opened]), "a winning swap must count");
    assert_eq!(get(&*store, &flow.id).await, next);
    let lost = store
        .compare_and_swap_counting(flow.version, &next, &counter, t)
        .await
        .expect("cas");
    assert_eq!(lost, None, "a losing swap must report that it did not write");
    let read = store
        .increment_counters(&[Counter::read(&key, hour)], t)
        .await
        .expect("read");
    assert_eq!(read, [opened], "a losing swap must not count");
}

/// A counter's window opens at its first increment and lasts its length to
/// the millisecond; counts add per key; reads never open a window.
pub async fn counters_count_per_key_and_per_window<S: CodeStore>(store: Arc<S>) {
    let minute = Duration::from_secs(60);
    let start = now();
    let end = start.saturating_add(minute);
    let last = Timestamp::from_unix_millis(end.as_unix_millis() - 1);
    let (a, b, c) = (unique("counter-a"), unique("counter-b"), unique("counter-c"));

    let none = store
        .increment_counters(&[Counter::read(&a, minute)], start)
        .await
        .expect("read");
    assert_eq!(
        none,
        [CounterValue::default()],
        "a counter never incremented reads as zero, no window"
    );
    let counts = store
        .increment_counters(
            &[
                Counter::new(&a, minute, 1),
                Counter::new(&b, minute, 3),
                Counter::new(&a, minute, 2),
            ],
            start,
        )
        .await
        .expect("increment");
    let window = Some(end);
    assert_eq!(
        counts,
        [
            CounterValue::new(1, window),
            CounterValue::new(3, window),
            CounterValue::new(3, window)
        ],
        "values after each increment, a key repeated in one call included"
    );
    let read = store
        .increment_counters(&[Counter::read(&a, minute)], last)
        .await
        .expect("read");
    assert_eq!(
        read,
        [CounterValue::new(3, window)],
        "the last millisecond of the window sees its count"
    );
    let fresh = store
        .increment_counters(&[Counter::new(&a, minute, 1), Counter::read(&b, minute)], end)
        .await
        .expect("increment");
    let next = Some(end.saturating_add(minute));
    assert_eq!(
        fresh,
        [CounterValue::new(1, next), CounterValue::default()],
        "at the window's end the count starts again, and a read sees no window"
    );
    // A read does not open a window: an increment inside the window a read
    // would have opened opens a window of its own.
    let later = start.saturating_add(Duration::from_secs(30));
    store
        .increment_counters(&[Counter::read(&c, minute)], start)
        .await
        .expect("read");
    let opened = store
        .increment_counters(&[Counter::new(&c, minute, 1)], later)
        .await
        .expect("increment");
    assert_eq!(opened, [CounterValue::new(1, Some(later.saturating_add(minute)))]);
    assert_eq!(
        store.increment_counters(&[], start).await.expect("empty"),
        Vec::<CounterValue>::new()
    );
}

/// A conditional counter increments only when the counter it names was
/// opened by the same call: it counts distinct pairs.
pub async fn conditional_counters_count_only_when_their_condition_opened<S: CodeStore>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let distinct = unique("distinct");
    let call = |pair: &str| {
        vec![
            Counter::new(pair, hour, 1),
            Counter::new(&distinct, hour, 1).only_if_opened(0),
        ]
    };
    let (a, b) = (unique("pair-a"), unique("pair-b"));
    let first = store.increment_counters(&call(&a), t).await.expect("increment");
    assert_eq!(first[1].count, 1, "a new pair counts");
    let again = store.increment_counters(&call(&a), t).await.expect("increment");
    assert_eq!(
        (again[0].count, again[1].count),
        (2, 1),
        "a repeated pair does not count again"
    );
    let other = store.increment_counters(&call(&b), t).await.expect("increment");
    assert_eq!(other[1].count, 2, "another new pair counts");
    assert!(first[0].opened(&Counter::new(&a, hour, 1), t));
    assert!(!again[0].opened(&Counter::new(&a, hour, 1), t));
}

/// A call in which a counter ends above its `max` is refused: the guarded
/// counters' increments are undone (a window the call opened leaves
/// nothing behind), unguarded ones stay, and the values returned are those
/// before the undo.
pub async fn a_refused_call_undoes_its_guarded_counts<S: CodeStore>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let (limit, guarded, fresh, plain) = (unique("lim"), unique("grd"), unique("fresh"), unique("plain"));
    let call = |fresh: &str| {
        vec![
            Counter::new(&limit, hour, 1).with_max(1),
            Counter::new(&guarded, hour, 1).guarded(),
            Counter::new(fresh, hour, 1).guarded(),
            Counter::new(&plain, hour, 1),
        ]
    };
    let first = store
        .increment_counters(&call(&unique("f1")), t)
        .await
        .expect("increment");
    assert_eq!(first[0].count, 1, "at its maximum the call is admitted");
    let refused = store
        .increment_counters(&call(&fresh), t)
        .await
        .expect("increment");
    assert_eq!(refused[0].count, 2, "the values are those before the undo");
    assert!(Counter::refused(&call(&fresh), &refused));
    let read = |k: &str| Counter::read(k, hour);
    let after = store
        .increment_counters(&[read(&limit), read(&guarded), read(&fresh), read(&plain)], t)
        .await
        .expect("read");
    assert_eq!(after[0].count, 1, "the limit's own increment was undone");
    assert_eq!(after[1].count, 1, "a guarded increment was undone");
    assert_eq!(
        after[2],
        CounterValue::default(),
        "a window the refused call opened is gone"
    );
    assert_eq!(after[3].count, 2, "an unguarded counter keeps its count");
}

/// `load_counting` returns the flow (or `None`) and applies its counters,
/// by id and as a subject's newest flow.
pub async fn load_counting_returns_the_flow_and_the_counts<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let alice = of(&account());
    let flow = flow_at(t, alice.clone());
    create(&*store, &flow).await;
    let key = unique("load");
    let (got, values) = store
        .load_counting(Load::Flow(&flow.id), &[Counter::new(&key, hour, 2)], t)
        .await
        .expect("load");
    assert_eq!(got, Some(flow.clone()));
    assert_eq!(
        values,
        [CounterValue::new(2, Some(t.saturating_add(hour)))],
        "load_counting must apply its counters"
    );
    let missing = FlowId::generate().expect("randomness");
    let (none, values) = store
        .load_counting(Load::Flow(&missing), &[Counter::read(&key, hour)], t)
        .await
        .expect("load");
    assert_eq!(none, None);
    assert_eq!(values[0].count, 2);
    let (_, empty) = store
        .load_counting(Load::Flow(&missing), &[], t)
        .await
        .expect("load");
    assert!(empty.is_empty());

    // A subject's newest flow: the one created last, superseding included,
    // with or without counters; none for a subject without flows.
    let newest = |subject: Subject, counters: Vec<Counter>| {
        let store = store.clone();
        async move {
            store
                .load_counting(Load::Newest(&subject), &counters, t)
                .await
                .expect("load")
        }
    };
    let (got, values) = newest(alice.clone(), vec![Counter::new(&key, hour, 1)]).await;
    assert_eq!(got, Some(flow.clone()), "the subject's only flow is its newest");
    assert_eq!(
        values[0].count, 3,
        "load_counting of a subject must apply its counters"
    );
    let second = flow_at(t, alice.clone());
    create(&*store, &second).await;
    let (got, _) = newest(alice, Vec::new()).await;
    assert_eq!(got, Some(second), "the newest flow is the one created last");
    let (got, _) = newest(of(&account()), vec![Counter::read(&key, hour)]).await;
    assert_eq!(got, None, "a subject without flows has no newest flow");
}

/// Deleted counters read as zero and open a new window on the next count.
pub async fn deleted_counters_start_again_from_zero<S: CodeStore>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let (a, b) = (unique("delete-a"), unique("delete-b"));
    store
        .increment_counters(&[Counter::new(&a, hour, 3), Counter::new(&b, hour, 1)], t)
        .await
        .expect("increment");
    store
        .delete_counters(&[a.clone(), unique("never-existed")])
        .await
        .expect("delete");
    let later = t.saturating_add(Duration::from_secs(5));
    let values = store
        .increment_counters(
            &[
                Counter::read(&a, hour),
                Counter::read(&b, hour),
                Counter::new(&a, hour, 1),
            ],
            later,
        )
        .await
        .expect("read");
    assert_eq!(
        values[0],
        CounterValue::default(),
        "a deleted counter reads as zero"
    );
    assert_eq!(values[1].count, 1, "other counters stay");
    assert_eq!(values[2], CounterValue::new(1, Some(later.saturating_add(hour))));
}
