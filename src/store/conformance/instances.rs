//! Several host instances on one backend, and a store reopened on its
//! data.

use std::sync::Arc;
use std::time::Duration;

use super::harness::{Interleaved, race, requested_flow};
use super::{account, now, phone, phone_with_random_line};
use crate::clock::ManualClock;
use crate::code::KeyRing;
use crate::error::Error;
use crate::limits::Limits;
use crate::recovery::{Account, Recovery, RequestContext};
use crate::secret::ServerKey;
use crate::sms::RecordingSender;
use crate::store::CodeStore;

/// Two host instances, each with its own connection to the same backend
/// (`a` and `b`), race on the same flows: wrong codes, right codes,
/// resets, resends and a send limit hold exactly as with one instance.
pub async fn two_instances_hold_every_limit<S: CodeStore + 'static>(a: Arc<S>, b: Arc<S>) {
    use crate::limits::{LimitScope, Rule};

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
    let pick = |i: usize| {
        if i.is_multiple_of(2) {
            one.clone()
        } else {
            two.clone()
        }
    };
    let ctx = RequestContext::none();

    // Wrong codes: exactly the attempt limit is evaluated.
    let flow = requested_flow(&one).await;
    let right = sender.last_code().expect("a code was sent");
    let wrong = format!(
        "{:06}",
        (right.expose_secret().parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    let outcomes = race(200, |i| {
        let (r, wrong, ctx) = (pick(i), wrong.clone(), ctx.clone());
        async move { r.verify(&flow, &wrong, &ctx).await }
    })
    .await;
    let evaluated = outcomes
        .iter()
        .filter(|o| matches!(o, Err(Error::InvalidCode { .. })))
        .count();
    assert_eq!(evaluated, 5, "two instances evaluated more codes than the limit");

    // Right codes and resets: one token, one reset.
    let flow = requested_flow(&two).await;
    let code = sender.last_code().expect("a code was sent");
    let tokens = race(50, |i| {
        let (r, code, ctx) = (pick(i), code.clone(), ctx.clone());
        async move {
            r.verify(&flow, code.expose_secret(), &ctx)
                .await
                .ok()
                .map(|v| v.token.expose_secret())
        }
    })
    .await;
    let tokens: Vec<_> = tokens.into_iter().flatten().collect();
    assert_eq!(tokens.len(), 1, "two instances issued more than one token");
    let resets = race(50, |i| {
        let (r, token, ctx) = (pick(i), tokens[0].clone(), ctx.clone());
        async move { r.reset(&token, &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(resets.iter().filter(|ok| **ok).count(), 1, "a token reset twice");

    // Resends after one cooldown: one.
    let flow = requested_flow(&one).await;
    clock.advance(Duration::from_secs(30));
    let resent = race(50, |i| {
        let (r, ctx) = (pick(i), ctx.clone());
        async move { r.resend(&flow, &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(
        resent.iter().filter(|ok| **ok).count(),
        1,
        "one cooldown allowed two resends"
    );

    // A send limit: 5 per phone, 40 requests across both instances.
    let target = Account::new(account(), phone_with_random_line());
    let sent = race(40, |i| {
        let (r, target, ctx) = (pick(i), target.clone(), ctx.clone());
        async move { r.request("target@example.com", Some(target), &ctx).await.is_ok() }
    })
    .await;
    assert_eq!(
        sent.iter().filter(|ok| **ok).count(),
        5,
        "the phone limit did not hold across instances"
    );
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
    let ctx = RequestContext::none();
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
