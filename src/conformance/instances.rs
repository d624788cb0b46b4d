//! Several host instances on one backend, and a store reopened on its
//! data.

use std::sync::Arc;
use std::time::Duration;

use super::flows::live_case;
use super::harness::{Interleaved, race, requested_flow};
use super::{account, create, flow_at, get, now, of, phone, phone_with_random_line, unique};
use crate::clock::ManualClock;
use crate::code::KeyRing;
use crate::error::Error;
use crate::limits::Limits;
use crate::recovery::{Account, Recovery, RequestContext};
use crate::secret::ServerKey;
use crate::sms::RecordingSender;
use crate::store::{CodeStore, Counter};

/// Two host instances, each with its own connection to the same backend
/// (`a` and `b`), race on the same flows: wrong codes, right codes,
/// resets, resends and a send limit hold exactly as with one instance, and
/// every call that loses is refused with the error of its rule.
pub async fn two_instances_hold_every_limit<S: CodeStore + 'static>(a: Arc<S>, b: Arc<S>) {
    use crate::limits::{LimitScope, Rule};

    writes_through_one_instance_are_read_through_the_other(&a, &b).await;
    let clock = ManualClock::new(now());
    let sender = RecordingSender::new();
    let keys = KeyRing::new(1, ServerKey::generate().expect("randomness"));
    let phone_limit = Limits::builder()
        .clear_send_rules()
        .add_send_rule(Rule::new(LimitScope::Phone, 5, Duration::from_secs(600)))
        .ip_verifies(None)
        .build()
        .expect("limits");
    let instance = |store: Arc<S>| {
        Arc::new(
            Recovery::new(Interleaved(store), sender.clone(), keys.clone())
                .with_limits(phone_limit.clone())
                .with_clock(clock.clone()),
        )
    };
    let (one, two) = (instance(a), instance(b));
    // The race deals copy i to group i % 4: alternate on i / 4, so that
    // each group's copies, polled in turn, alternate between instances.
    let pick = |i: usize| {
        if (i / 4).is_multiple_of(2) {
            one.clone()
        } else {
            two.clone()
        }
    };
    let ctx = RequestContext::without_client_ip();

    // Wrong codes: exactly the attempt limit is evaluated.
    let flow = requested_flow(&one).await;
    let right = sender.last_code().expect("a code was sent");
    let wrong = format!(
        "{:06}",
        (right.expose_secret().parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let outcomes = race(200, |i| {
        let (r, wrong, ctx) = (pick(i), wrong.clone(), ctx.clone());
        async move { r.verify(&flow, &wrong, &ctx).await.map(|_| ()) }
    })
    .await;
    let evaluated = outcomes
        .iter()
        .filter(|o| matches!(o, Err(Error::InvalidCode { .. })))
        .count();
    assert_eq!(evaluated, 5, "two instances evaluated more codes than the limit");
    only_refused_as(&outcomes, |e| {
        matches!(e, Error::InvalidCode { .. } | Error::Locked { .. })
    });

    // Right codes and resets: one token, one reset.
    let flow = requested_flow(&two).await;
    let code = sender.last_code().expect("a code was sent");
    let verified = race(50, |i| {
        let (r, code, ctx) = (pick(i), code.clone(), ctx.clone());
        async move {
            r.verify(&flow, code.expose_secret(), &ctx)
                .await
                .map(|v| v.token.expose_secret())
        }
    })
    .await;
    only_refused_as(&verified, |e| matches!(e, Error::AlreadyUsed));
    let tokens: Vec<_> = verified.into_iter().filter_map(Result::ok).collect();
    assert_eq!(tokens.len(), 1, "two instances issued more than one token");
    let resets = race(50, |i| {
        let (r, token, ctx) = (pick(i), tokens[0].clone(), ctx.clone());
        async move { r.reset(&token, &ctx).await.map(|_| ()) }
    })
    .await;
    assert_eq!(
        resets.iter().filter(|o| o.is_ok()).count(),
        1,
        "a token reset twice"
    );
    only_refused_as(&resets, |e| matches!(e, Error::AlreadyUsed));

    // Resends after one cooldown: one.
    let flow = requested_flow(&one).await;
    clock.advance(Duration::from_secs(30));
    let resent = race(50, |i| {
        let (r, ctx) = (pick(i), ctx.clone());
        async move { r.resend(&flow, &ctx).await.map(|_| ()) }
    })
    .await;
    assert_eq!(
        resent.iter().filter(|o| o.is_ok()).count(),
        1,
        "one cooldown allowed two resends"
    );
    // Losers count their sends before their swap fails (a known gap: the
    // counts do not yet go in the swap), so the phone limit may refuse some.
    only_refused_as(&resent, |e| {
        matches!(e, Error::TooSoon { .. } | Error::RateLimited { .. })
    });

    // A send limit: 5 per phone, 40 requests across both instances.
    let target = Account::new(account(), phone_with_random_line());
    let sent = race(40, |i| {
        let (r, target, ctx) = (pick(i), target.clone(), ctx.clone());
        async move {
            r.request("target@example.com", Some(target), &ctx)
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_eq!(
        sent.iter().filter(|o| o.is_ok()).count(),
        5,
        "the phone limit did not hold across instances"
    );
    only_refused_as(&sent, |e| matches!(e, Error::RateLimited { .. }));
}

/// Every `Err` in `outcomes` is one `expected` accepts (a store error or
/// `Busy` would mean the store, not the rule, decided).
fn only_refused_as<T: std::fmt::Debug>(outcomes: &[Result<T, Error>], expected: impl Fn(&Error) -> bool) {
    for outcome in outcomes {
        if let Err(e) = outcome {
            assert!(expected(e), "a call that lost a race failed with {e:?}");
        }
    }
}

/// A write through one instance is seen by the next read through the
/// other: flows (created, swapped, listed), cases and counters; and creates
/// raced on both leave one open flow. A read cache in front of one
/// instance, or a replica it reads from, or a lock that only one process
/// holds, would break every limit the other instance counts.
async fn writes_through_one_instance_are_read_through_the_other<S: CodeStore + 'static>(
    a: &Arc<S>,
    b: &Arc<S>,
) {
    let t = now();
    let hour = Duration::from_secs(3600);
    let flow = flow_at(t, of(&account()));
    create(a, &flow).await;
    assert_eq!(get(b, &flow.id).await, flow, "a flow created on one instance");
    let mut next = flow.clone();
    next.version += 1;
    next.failed_attempts = 1;
    assert!(a.compare_and_swap(flow.version, &next).await.expect("cas"));
    assert_eq!(
        get(b, &flow.id).await,
        next,
        "a flow swapped on the other instance was read stale"
    );
    let mut last = next.clone();
    last.version += 1;
    last.failed_attempts = 2;
    assert!(
        b.compare_and_swap(next.version, &last).await.expect("cas"),
        "a swap from the version the other instance wrote must apply"
    );
    assert_eq!(get(a, &flow.id).await, last);

    let listed = b.find_flows(&flow.subject.key(), 10).await.expect("find");
    assert_eq!(listed, [last], "a flow written on one instance was listed stale");
    let case = live_case(t.saturating_add(hour));
    a.put_case(&case).await.expect("put");
    assert_eq!(
        b.get_case(&case.reference).await.expect("get"),
        Some(case),
        "a case stored on one instance was not found on the other"
    );

    let key = unique("instances");
    a.increment_counters(&[Counter::new(&key, hour, 1)], t)
        .await
        .expect("increment");
    let counted = b
        .increment_counters(&[Counter::new(&key, hour, 1)], t)
        .await
        .expect("increment");
    assert_eq!(
        counted[0].count, 2,
        "a count made on one instance was not seen on the other"
    );

    // Creates for one account, raced in turn on both: one open flow.
    let alice = account();
    let ids = race(20, |i| {
        let store = if (i / 4).is_multiple_of(2) {
            a.clone()
        } else {
            b.clone()
        };
        let flow = flow_at(t, of(&alice));
        async move {
            create(&*store, &flow).await;
            flow.id
        }
    })
    .await;
    let mut open = 0;
    for id in &ids {
        open += usize::from(get(&**a, id).await.state.is_open());
    }
    assert_eq!(open, 1, "two instances left {open} flows of one account open");
}

/// A flow and its counts survive the store being dropped and opened again
/// (`open` makes a new store on the same data): the code still verifies
/// and a wrong code counted before still counts.
pub async fn a_reopened_store_keeps_flows_and_counts<S, F, Fut>(open: F)
where
    S: CodeStore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let clock = ManualClock::new(now());
    let sender = RecordingSender::new();
    let keys = KeyRing::new(1, ServerKey::generate().expect("randomness"));
    let make = |store: S| {
        Recovery::new(Arc::new(store), sender.clone(), keys.clone())
            .with_limits(Limits::none())
            .with_clock(clock.clone())
    };
    let ctx = RequestContext::without_client_ip();
    let first = make(open().await);
    let account = Account::new(account(), phone());
    let flow = first
        .request("someone@example.com", Some(account), &ctx)
        .await
        .expect("request")
        .flow_id;
    let code = sender.last_code().expect("a code was sent");
    let wrong = format!(
        "{:06}",
        (code.expose_secret().parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let err = first.verify(&flow, &wrong, &ctx).await.expect_err("wrong");
    assert!(matches!(err, Error::InvalidCode { attempts_left: 4 }), "{err:?}");
    drop(first);

    let second = make(open().await);
    let err = second.verify(&flow, &wrong, &ctx).await.expect_err("wrong");
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 3 }),
        "a count made before the restart was lost: {err:?}"
    );
    let verified = second
        .verify(&flow, code.expose_secret(), &ctx)
        .await
        .expect("the code must verify after a restart");
    second
        .reset(&verified.token.expose_secret(), &ctx)
        .await
        .expect("reset");
}
