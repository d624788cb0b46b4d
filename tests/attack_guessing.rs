//! Issue 18, point 3: guessing capped over the account's whole life.
//!
//! The attack: wrong codes day after day. The account's failure window (20
//! per 24 hours by default) resets by itself, so before the cap on wrong
//! codes in a row an attacker got 140 guesses in 7 days, about 7,300 a
//! year. Now the wrong codes in a row are counted apart from any window:
//! at [`Policy::max_consecutive_failures`] (50) the account locks until
//! support unlocks it, and only a completed reset or that unlock clears
//! the count.

use std::time::Duration;

use otp_recovery::events::{EventKind, RecordingSink};
use otp_recovery::record::Subject;
use otp_recovery::sms::{MessageKind, RecordingSender};
use otp_recovery::store::MemoryStore;
use otp_recovery::support::Agent;
use otp_recovery::{
    Account, AccountId, Clock, Code, Error, KeyRing, ManualClock, Messages, PhoneNumber, Policy, Recovery,
    RequestContext, ServerKey, Timestamp,
};

type Rec = Recovery<MemoryStore, RecordingSender, ManualClock>;

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
const DAY: Duration = Duration::from_secs(86_400);

struct World {
    r: Rec,
    sender: RecordingSender,
    events: RecordingSink,
    clock: ManualClock,
}

fn world() -> World {
    let (sender, events, clock) = (RecordingSender::new(), RecordingSink::new(), ManualClock::new(T0));
    let r = Recovery::new(
        MemoryStore::new(),
        sender.clone(),
        KeyRing::new(1, ServerKey::from_bytes(vec![6; 32]).unwrap()),
    )
    .with_messages(
        Messages::builder("Acme")
            .support_contact("help@acme.example")
            .build()
            .unwrap(),
    )
    .with_events(events.clone())
    .with_clock(clock.clone());
    World {
        r,
        sender,
        events,
        clock,
    }
}

fn victim() -> Account {
    Account::new(
        AccountId::new("victim").unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

fn subject() -> Subject {
    Subject::Account(AccountId::new("victim").unwrap())
}

fn ctx() -> RequestContext {
    RequestContext::without_client_ip()
}

fn wrong(code: &Code) -> String {
    let n: u64 = code.expose_secret().parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

/// What the attacker's campaign got: wrong codes the crate counted (each
/// answered `InvalidCode`, or `Locked` when it locked the account), and
/// the answer that stopped it.
struct Campaign {
    counted: u32,
    stopped_by: Option<Error>,
}

/// Guesses wrong up to `budget` times, opening a new flow when one locks
/// and waiting out every lock that has an end, for at most `days`.
async fn campaign(w: &World, budget: u32, days: u32) -> Campaign {
    let start = w.clock.now();
    let mut counted = 0;
    while counted < budget {
        if w.clock.now().saturating_duration_since(start) > DAY * days {
            return Campaign {
                counted,
                stopped_by: None,
            };
        }
        let flow = match w.r.request("victim@example.com", Some(victim()), &ctx()).await {
            Ok(requested) => requested.flow_id,
            Err(Error::Locked {
                until: Some(until), ..
            }) => {
                let wait = until.saturating_duration_since(w.clock.now());
                w.clock.advance(wait + Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                return Campaign {
                    counted,
                    stopped_by: Some(e),
                };
            }
        };
        let code = w.sender.last_code().unwrap();
        while counted < budget {
            match w.r.verify(&flow, &wrong(&code), &ctx()).await {
                // The flow's last attempt locks it: the next answer would
                // be a refusal that counts nothing.
                Err(Error::InvalidCode { attempts_left: 0, .. }) => {
                    counted += 1;
                    break;
                }
                Err(Error::InvalidCode { .. }) => counted += 1,
                Err(Error::Locked { .. }) => {
                    counted += 1;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    Campaign {
        counted,
        stopped_by: None,
    }
}

#[tokio::test]
async fn a_week_of_guessing_stops_at_fifty_wrong_codes_in_a_row() {
    let w = world();
    let c = campaign(&w, 1_000, 7).await;
    assert_eq!(c.counted, 50, "guesses before the cap");
    // What the victim's phone got: the attacker's codes (each counted
    // against the send limits) and one notice per lock, not per guess.
    let notices = w
        .sender
        .messages()
        .iter()
        .filter(|m| m.kind == MessageKind::Notice)
        .count();
    let days = w
        .clock
        .now()
        .saturating_duration_since(T0)
        .as_secs()
        .div_ceil(86_400);
    println!(
        "victim's phone over {days} days: {} SMS, {notices} of them notices",
        w.sender.count()
    );
    assert_eq!(notices, 3, "two window locks and the hard lock");
    assert!(
        w.sender.count() as u64 <= 10 * days,
        "the phone's daily limit holds"
    );
    match c.stopped_by {
        Some(Error::Locked {
            until: None,
            reference: Some(_),
            support: Some(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Time alone never lifts it.
    w.clock.advance(365 * DAY);
    let err =
        w.r.request("victim@example.com", Some(victim()), &ctx())
            .await
            .unwrap_err();
    assert!(matches!(err, Error::Locked { until: None, .. }), "{err:?}");
}

#[tokio::test]
async fn the_fiftieth_wrong_code_locks_until_support_and_says_so() {
    let w = world();
    let c = campaign(&w, 49, 30).await;
    assert_eq!(c.counted, 49);
    assert!(c.stopped_by.is_none());
    // One short of the cap: the account may still ask for a code.
    let view =
        w.r.support()
            .lookup_account(
                &Agent::new("dana").unwrap(),
                "ticket 1",
                &AccountId::new("victim").unwrap(),
            )
            .await
            .unwrap();
    assert_eq!((view.failures_in_a_row, view.hard_locked), (49, false));
    let c = campaign(&w, 1, 30).await;
    assert_eq!(c.counted, 1);
    let reference = match w
        .r
        .request("victim@example.com", Some(victim()), &ctx())
        .await
        .unwrap_err()
    {
        Error::Locked {
            until: None,
            reference: Some(reference),
            ..
        } => reference,
        other => panic!("{other:?}"),
    };
    assert!(w.events.kinds().iter().any(|k| matches!(
        k,
        EventKind::AccountHardLocked { failures: 50, reference: r } if *r == reference
    )));
    let notice = w
        .sender
        .messages()
        .last()
        .unwrap()
        .body
        .expose_secret()
        .to_owned();
    assert!(
        notice.contains(&reference.to_string()) && notice.contains("To unlock"),
        "{notice}"
    );
    // Support finds the case by the reference the user quotes, and sees it.
    let agent = Agent::new("dana").unwrap();
    let view =
        w.r.support()
            .lookup_reference(&agent, "caller quoted it", &reference)
            .await
            .unwrap();
    assert_eq!((view.failures_in_a_row, view.hard_locked), (50, true));
    assert_eq!(view.reference, Some(reference));
    // Only support lifts it; then the count starts again from zero.
    w.r.support()
        .unlock(&agent, "identity checked", &subject())
        .await
        .unwrap();
    w.r.request("victim@example.com", Some(victim()), &ctx())
        .await
        .unwrap();
    let view =
        w.r.support()
            .lookup_account(&agent, "after unlock", &AccountId::new("victim").unwrap())
            .await
            .unwrap();
    assert_eq!((view.failures_in_a_row, view.hard_locked), (0, false));
}

#[tokio::test]
async fn a_completed_reset_ends_the_streak_and_a_right_code_alone_does_not() {
    let w = world();
    assert_eq!(campaign(&w, 45, 30).await.counted, 45);
    // The owner verifies and sets a new password.
    w.clock.advance(2 * DAY);
    let flow =
        w.r.request("victim@example.com", Some(victim()), &ctx())
            .await
            .unwrap()
            .flow_id;
    let code = w.sender.last_code().unwrap();
    let verified = w.r.verify(&flow, code.expose_secret(), &ctx()).await.unwrap();
    // Verified but not yet reset: the streak still stands.
    let view =
        w.r.support()
            .lookup_account(
                &Agent::new("dana").unwrap(),
                "check",
                &AccountId::new("victim").unwrap(),
            )
            .await
            .unwrap();
    assert_eq!(view.failures_in_a_row, 45);
    w.r.reset(&verified.token.expose_secret(), &ctx()).await.unwrap();
    // A fresh allowance: 49 more wrong codes leave it one short.
    let c = campaign(&w, 49, 30).await;
    assert_eq!((c.counted, c.stopped_by.is_none()), (49, true));
    w.r.request("victim@example.com", Some(victim()), &ctx())
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_identifiers_hit_the_same_cap() {
    let w = world();
    let mut counted = 0;
    let stopped = loop {
        let flow = match w.r.request("ghost@example.com", None, &ctx()).await {
            Ok(requested) => requested.flow_id,
            Err(Error::Locked {
                until: Some(until), ..
            }) => {
                w.clock
                    .advance(until.saturating_duration_since(w.clock.now()) + Duration::from_secs(1));
                continue;
            }
            Err(e) => break e,
        };
        loop {
            match w.r.verify(&flow, "000000", &ctx()).await {
                Err(Error::InvalidCode { attempts_left: 0, .. }) => {
                    counted += 1;
                    break;
                }
                Err(Error::InvalidCode { .. }) => counted += 1,
                Err(Error::Locked { .. }) => {
                    counted += 1;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(counted, 50);
    assert!(
        matches!(
            stopped,
            Error::Locked {
                until: None,
                reference: Some(_),
                ..
            }
        ),
        "{stopped:?}"
    );
}

#[test]
fn the_cap_is_a_policy_setting_under_nists_hundred() {
    assert_eq!(Policy::default().max_consecutive_failures(), 50);
    assert!(Policy::builder().consecutive_failures(99).build().is_ok());
    assert!(Policy::builder().consecutive_failures(100).build().is_err());
}

/// Racing guesses at the cap: the flow's snapshot of the streak locks it
/// in the write that counts the 50th wrong code, so no racing guess is
/// counted or checked after it, and the right code is refused after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_guesses_at_the_cap_count_exactly_to_fifty() {
    let w = world();
    assert_eq!(campaign(&w, 48, 30).await.counted, 48);
    let flow =
        w.r.request("victim@example.com", Some(victim()), &ctx())
            .await
            .unwrap()
            .flow_id;
    let code = w.sender.last_code().unwrap();
    // The flow knows how near the cap it opened: one attempt is left.
    let err = w.r.verify(&flow, &wrong(&code), &ctx()).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 1, .. }),
        "{err:?}"
    );
    let r = std::sync::Arc::new(w.r);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (r, guess) = (r.clone(), wrong(&code));
            tokio::spawn(async move { r.verify(&flow, &guess, &ctx()).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    let err = r.verify(&flow, code.expose_secret(), &ctx()).await.unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    let view = r
        .support()
        .lookup_account(
            &Agent::new("dana").unwrap(),
            "race",
            &AccountId::new("victim").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!((view.failures_in_a_row, view.hard_locked), (50, true));
    let locked = w
        .events
        .kinds()
        .into_iter()
        .filter(|k| matches!(k, EventKind::AccountHardLocked { .. }))
        .count();
    assert_eq!(locked, 1, "one case, one event, one notice");
}
