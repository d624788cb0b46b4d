//! Races of many tasks on one flow or one counter: nothing is lost, and
//! every limit admits exactly its number.

use std::sync::Arc;
use std::time::Duration;

use super::harness::{race, recovery, requested_flow};
use super::{account, create, flow_at, get, now, of, unique};
use crate::error::Error;
use crate::record::FlowState;
use crate::recovery::RequestContext;
use crate::store::{CodeStore, Counter, Created, Load, Newest};

const RACERS: usize = 100;

/// Many tasks incrementing one counter lose no increment.
pub async fn concurrent_counter_increments_are_all_counted<S: CodeStore + 'static>(store: Arc<S>) {
    let key = unique("race-counter");
    let hour = Duration::from_secs(3600);
    let t = now();
    race(RACERS, |_| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            for _ in 0..10 {
                store
                    .increment_counters(&[Counter::new(&key, hour, 1)], t)
                    .await
                    .expect("increment");
            }
        }
    })
    .await;
    let read = store
        .increment_counters(&[Counter::read(&key, hour)], t)
        .await
        .expect("read");
    assert_eq!(
        read[0].count,
        (RACERS * 10) as u64,
        "concurrent increments were lost"
    );
    assert_eq!(
        read[0].resets_at,
        Some(t.saturating_add(hour)),
        "one window, opened once"
    );
}

/// Of many tasks swapping from the same version, exactly one wins.
pub async fn concurrent_compare_and_swaps_have_one_winner<S: CodeStore + 'static>(store: Arc<S>) {
    let flow = flow_at(now(), of(&account()));
    create(&*store, &flow).await;
    let wins = race(RACERS, |i| {
        let (store, flow) = (store.clone(), flow.clone());
        async move {
            let mut next = flow.clone();
            next.version += 1;
            next.failed_attempts = i as u32;
            store.compare_and_swap(flow.version, &next).await.expect("cas")
        }
    })
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "one version, one winner");
    assert_eq!(get(&*store, &flow.id).await.version, flow.version + 1);
}

/// Swaps of a subject's newest flow raced against creates that replace
/// it (as a request's supersede does) from the same version: exactly one
/// call wins, and the stored flow is the winner's record (a store that
/// writes the replacement apart from its compare would let both win, and
/// could leave the flow open beside the new one).
pub async fn swaps_and_superseding_creates_of_one_flow_have_one_winner<S: CodeStore + 'static>(
    store: Arc<S>,
) {
    let alice = of(&account());
    let flow = flow_at(now(), alice.clone());
    create(&*store, &flow).await;
    let mut superseded = flow.clone();
    superseded.version += 1;
    superseded.state = crate::record::FlowState::Superseded;
    let outcomes = race(RACERS, |i| {
        let (store, flow, superseded, alice) =
            (store.clone(), flow.clone(), superseded.clone(), alice.clone());
        async move {
            // In each of `race`'s four groups a create comes first, then a
            // swap: polled in turn, the swap runs while the create is at its
            // first round trip.
            if (i / 4) % 2 == 0 {
                let new = flow_at(now(), alice);
                let created = store
                    .create_flow(&new, Newest::Replaced(flow.version, &superseded))
                    .await
                    .expect("create_flow");
                (created == Created::Inserted).then_some((superseded, Some(new)))
            } else {
                let mut next = flow.clone();
                next.version += 1;
                next.failed_attempts = 1;
                let won = store.compare_and_swap(flow.version, &next).await.expect("cas");
                won.then_some((next, None))
            }
        }
    })
    .await;
    let winners: Vec<_> = outcomes.into_iter().flatten().collect();
    assert_eq!(
        winners.len(),
        1,
        "swaps and superseding creates from one version: one winner"
    );
    let (record, inserted) = &winners[0];
    assert_eq!(
        &get(&*store, &flow.id).await,
        record,
        "the stored flow must be the winner's record"
    );
    // The subject's newest flow: the winning create's, or still the first.
    let (newest, _) = store
        .load_counting(Load::Newest(&alice), &[], now())
        .await
        .expect("load_counting");
    assert_eq!(
        newest.map(|f| f.id),
        Some(inserted.as_ref().map_or(flow.id, |new| new.id)),
        "the newest flow must be the winning create's, or the first when a swap won"
    );
}

/// Of many counting swaps from one version, one writes and counts once.
pub async fn concurrent_counting_swaps_count_once<S: CodeStore + 'static>(store: Arc<S>) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let flow = flow_at(t, of(&account()));
    create(&*store, &flow).await;
    let key = unique("race-counting");
    let wins = race(RACERS, |_| {
        let (store, flow, key) = (store.clone(), flow.clone(), key.clone());
        async move {
            let mut next = flow.clone();
            next.version += 1;
            let counter = [Counter::new(&key, hour, 1)];
            store
                .compare_and_swap_counting(flow.version, &next, &counter, t)
                .await
                .expect("cas")
        }
    })
    .await;
    assert_eq!(wins.iter().filter(|w| w.is_some()).count(), 1);
    let read = store
        .increment_counters(&[Counter::read(&key, hour)], t)
        .await
        .expect("read");
    assert_eq!(read[0].count, 1);
}

/// Calls naming the same counters in opposite orders, raced, all succeed
/// and lose no count (no deadlock between them).
pub async fn counters_raced_in_opposite_orders_all_succeed<S: CodeStore + 'static>(store: Arc<S>) {
    let hour = Duration::from_secs(3600);
    let t = now();
    let (a, b) = (unique("order-a"), unique("order-b"));
    race(16, |i| {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        async move {
            for _ in 0..20 {
                let (x, y) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let call = [Counter::new(x, hour, 1), Counter::new(y, hour, 1)];
                store
                    .increment_counters(&call, t)
                    .await
                    .expect("no call may fail");
            }
        }
    })
    .await;
    let read = store
        .increment_counters(&[Counter::read(&a, hour), Counter::read(&b, hour)], t)
        .await
        .expect("read");
    assert_eq!((read[0].count, read[1].count), (320, 320), "counts were lost");
}

/// Many concurrent creates for one subject leave exactly one open flow.
pub async fn concurrent_creates_leave_one_open_flow_per_account<S: CodeStore + 'static>(store: Arc<S>) {
    let alice = account();
    let t = now();
    let ids = race(RACERS / 2, |_| {
        let (store, alice) = (store.clone(), alice.clone());
        async move {
            let flow = flow_at(t, of(&alice));
            create(&*store, &flow).await;
            flow.id
        }
    })
    .await;
    let mut open = 0;
    for id in &ids {
        open += usize::from(get(&*store, id).await.state.is_open());
    }
    assert_eq!(open, 1, "exactly one flow of the account may stay open");
}

/// 1,000 concurrent wrong codes on one flow with 5 attempts: exactly 5 are
/// evaluated (4 with attempts left, the 5th locks), every other call is
/// refused as locked, and the stored flow counts exactly 5 failures.
pub async fn wrong_code_race_evaluates_exactly_the_attempt_limit<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, _) = recovery(store.clone());
    let flow = requested_flow(&recovery).await;
    let right = sender.last_code().expect("a code was sent");
    let wrong = format!(
        "{:06}",
        (right.expose_secret().parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let outcomes = race(1000, |_| {
        let (recovery, wrong) = (recovery.clone(), wrong.clone());
        async move {
            recovery
                .verify(&flow, &wrong, &RequestContext::without_client_ip())
                .await
        }
    })
    .await;
    let mut left: Vec<u32> = Vec::new();
    for outcome in outcomes {
        match outcome {
            Err(Error::InvalidCode { attempts_left }) => left.push(attempts_left),
            Err(Error::Locked { .. }) => {}
            other => panic!("unexpected outcome of a wrong code: {other:?}"),
        }
    }
    left.sort_unstable();
    assert_eq!(
        left,
        [0, 1, 2, 3, 4],
        "exactly max_attempts codes may be evaluated, each once"
    );
    let stored = get(&*store, &flow).await;
    assert_eq!(stored.failed_attempts, 5);
    assert_eq!(stored.state, FlowState::Locked);
    let err = recovery
        .verify(&flow, right.expose_secret(), &RequestContext::without_client_ip())
        .await
        .expect_err("locked");
    assert!(
        matches!(err, Error::Locked { .. }),
        "the right code must not pass a locked flow: {err:?}"
    );
}

/// 100 concurrent right codes on one flow yield exactly one token.
pub async fn right_code_race_issues_exactly_one_token<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, _) = recovery(store);
    let flow = requested_flow(&recovery).await;
    let code = sender.last_code().expect("a code was sent");
    let outcomes = race(RACERS, |_| {
        let (recovery, code) = (recovery.clone(), code.clone());
        async move {
            recovery
                .verify(&flow, code.expose_secret(), &RequestContext::without_client_ip())
                .await
                .map(|_| ())
        }
    })
    .await;
    let mut tokens = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => tokens += 1,
            Err(Error::AlreadyUsed) => {}
            Err(other) => panic!("unexpected outcome of a used code: {other:?}"),
        }
    }
    assert_eq!(tokens, 1, "a code must yield exactly one token");
}

/// 100 concurrent resets with one token succeed exactly once.
pub async fn reset_race_completes_exactly_once<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, _) = recovery(store);
    let flow = requested_flow(&recovery).await;
    let code = sender.last_code().expect("a code was sent");
    let verified = recovery
        .verify(&flow, code.expose_secret(), &RequestContext::without_client_ip())
        .await
        .expect("verify");
    let token = verified.token.expose_secret();
    let outcomes = race(RACERS, |_| {
        let (recovery, token) = (recovery.clone(), token.clone());
        async move {
            recovery
                .reset(&token, &RequestContext::without_client_ip())
                .await
                .map(|_| ())
        }
    })
    .await;
    let mut completed = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => completed += 1,
            Err(Error::AlreadyUsed) => {}
            Err(other) => panic!("unexpected outcome of a used token: {other:?}"),
        }
    }
    assert_eq!(completed, 1, "a token must reset exactly once");
}

/// 100 concurrent resends once the cooldown has passed: exactly one sends.
pub async fn resend_race_sends_exactly_once<S: CodeStore + 'static>(store: Arc<S>) {
    let (recovery, sender, clock) = recovery(store);
    let flow = requested_flow(&recovery).await;
    clock.advance(recovery.policy().cooldown_after(1));
    let before = sender.count();
    let outcomes = race(RACERS, |_| {
        let recovery = recovery.clone();
        async move {
            recovery
                .resend(&flow, &RequestContext::without_client_ip())
                .await
                .map(|_| ())
        }
    })
    .await;
    let mut sent = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => sent += 1,
            Err(Error::TooSoon { .. }) => {}
            Err(other) => panic!("unexpected outcome of a resend: {other:?}"),
        }
    }
    assert_eq!(sent, 1, "one cooldown must allow exactly one resend");
    assert_eq!(sender.count(), before + 1, "exactly one SMS must go out");
}
