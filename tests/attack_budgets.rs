//! Issue 18, point 1: shared budgets under a flood of unknown identifiers.
//!
//! The attack: requests for identifiers that have no account, from a few
//! networks, each under its own IP limit. Unknown identifiers get a made-up
//! destination; if its sends counted against the per-country and global
//! budgets, or fed the country's pumping detector, anyone could switch
//! recovery off for a whole country. They must not, and yet an unknown
//! identifier must still be refused exactly where a real request would be
//! (the limits must not tell them apart).

use std::net::IpAddr;
use std::time::Duration;

use otp_recovery::events::{EventKind, RecordingSink, Suspicion};
use otp_recovery::limits::{Detectors, LimitScope, Limits, Rule};
use otp_recovery::sms::RecordingSender;
use otp_recovery::store::MemoryStore;
use otp_recovery::{
    Account, AccountId, Error, KeyRing, ManualClock, PhoneNumber, Recovery, RequestContext, Requested,
    ServerKey, Timestamp,
};

type Rec = Recovery<MemoryStore, RecordingSender, ManualClock>;

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
const HOUR: Duration = Duration::from_secs(3600);

fn recovery(limits: Limits) -> (Rec, RecordingSender, RecordingSink) {
    let (sender, events) = (RecordingSender::new(), RecordingSink::new());
    let recovery = Recovery::new(
        MemoryStore::new(),
        sender.clone(),
        KeyRing::new(1, ServerKey::from_bytes(vec![5; 32]).unwrap()),
    )
    .with_limits(limits)
    .with_events(events.clone())
    .with_clock(ManualClock::new(T0));
    (recovery, sender, events)
}

fn ip(s: &str) -> RequestContext {
    RequestContext::from_ip(s.parse::<IpAddr>().unwrap())
}

/// A US account, `n` picking its user and its number.
fn us(n: u32) -> Account {
    Account::new(
        AccountId::new(format!("us-{n}")).unwrap(),
        PhoneNumber::parse(&format!("+1415{:07}", 5_550_000 + n)).unwrap(),
    )
}

async fn real(r: &Rec, n: u32, ctx: &RequestContext) -> Result<Requested, Error> {
    r.request(&format!("us{n}@example.com"), Some(us(n)), ctx).await
}

async fn unknown(r: &Rec, n: u32, ctx: &RequestContext) -> Result<Requested, Error> {
    r.request(&format!("nobody{n}@example.com"), None, ctx).await
}

fn scope(err: &Error) -> Option<LimitScope> {
    match err {
        Error::RateLimited { scope, .. } => Some(*scope),
        _ => None,
    }
}

/// The reported attack with the default limits: 300 unknown identifiers
/// from 15 IPv4 addresses (20 each, the IP limit), then a real US user.
#[tokio::test]
async fn a_flood_of_unknown_identifiers_leaves_the_country_budget_to_real_users() {
    let (r, sender, _) = recovery(Limits::default());
    for net in 0..15u32 {
        let ctx = ip(&format!("198.51.100.{net}"));
        for i in 0..20 {
            unknown(&r, net * 100 + i, &ctx).await.unwrap();
        }
        // Each network is stopped by its own limit, as before.
        let err = unknown(&r, net * 100 + 99, &ctx).await.unwrap_err();
        assert_eq!(scope(&err), Some(LimitScope::Ip), "{err:?}");
    }
    // The victims: 300 real US users from their own networks, the whole
    // country budget, all served.
    for n in 0..300 {
        real(&r, n, &ip(&format!("10.{}.{}.1", n / 200, n % 200)))
            .await
            .unwrap_or_else(|e| panic!("real user {n}: {e:?}"));
    }
    assert_eq!(sender.count(), 300, "only real users were sent codes");
}

/// One IPv6 /60 holds sixteen /64 networks, each under its own IP limit:
/// 320 unknown identifiers from it spend nothing anyone else needs. And
/// with a site limit (`LimitScope::IpSite`, not in the defaults), the /48
/// is limited as a whole, so ever more /64s of one holder buy no more
/// requests (from review: 65,536 /64s of one /48 at 20 an hour each filled
/// the memory store's 4,000,000 counter windows in under an hour).
#[tokio::test]
async fn one_ipv6_60_cannot_spend_the_global_budget() {
    let limits = Limits::builder()
        .send_rule(Rule::new(LimitScope::Global, 10, HOUR))
        .send_rule(Rule::new(LimitScope::IpSite, 100, HOUR))
        .build()
        .unwrap();
    let (r, _, _) = recovery(limits);
    let mut served = 0;
    for net in 0..16u32 {
        let ctx = ip(&format!("2001:db8:0:{net:x}::1"));
        for i in 0..20 {
            match unknown(&r, net * 100 + i, &ctx).await {
                Ok(_) => served += 1,
                Err(e) => assert_eq!(scope(&e), Some(LimitScope::IpSite), "{e:?}"),
            }
        }
    }
    assert_eq!(served, 100, "the site's limit, exactly");
    // Another holder's /48 is not touched.
    unknown(&r, 9_999, &ip("2001:db8:1::1")).await.unwrap();
    for n in 0..10 {
        real(&r, n, &ip(&format!("192.0.2.{n}"))).await.unwrap();
    }
    // The cost cap still holds, and says so.
    let err = real(&r, 10, &ip("192.0.2.10")).await.unwrap_err();
    assert_eq!(scope(&err), Some(LimitScope::Global), "{err:?}");
}

/// With country auto-blocks on, 30 unknown identifiers from 3 IPs made the
/// country look pumped (decoys never verify) and blocked it.
#[tokio::test]
async fn unknown_identifiers_cannot_make_a_country_look_pumped() {
    let detectors = Detectors::default()
        .with_auto_block(Some(HOUR))
        .with_auto_block_countries(true);
    let limits = Limits::builder().detectors(detectors).build().unwrap();
    let (r, sender, events) = recovery(limits);
    for net in 0..3u32 {
        let ctx = ip(&format!("203.0.113.{net}"));
        for i in 0..10 {
            unknown(&r, net * 100 + i, &ctx).await.unwrap();
        }
    }
    real(&r, 1, &ip("192.0.2.1")).await.unwrap();
    assert_eq!(sender.count(), 1);
    assert!(
        !events.kinds().iter().any(|k| matches!(
            k,
            EventKind::AutoBlocked { .. }
                | EventKind::Suspicious {
                    pattern: Suspicion::SmsPumpingCountry { .. } | Suspicion::SmsPumpingNumberBlock { .. }
                }
        )),
        "{:?}",
        events.kinds()
    );
}

/// No enumeration through the budgets: at the exact boundary, an unknown
/// identifier is admitted and refused where a real request is.
#[tokio::test]
async fn an_unknown_identifier_is_refused_exactly_where_a_real_request_is() {
    for (rule, last) in [
        (
            Rule::new(LimitScope::CountryCode, 5, HOUR),
            LimitScope::CountryCode,
        ),
        (Rule::new(LimitScope::Global, 5, HOUR), LimitScope::Global),
    ] {
        let limits = Limits::builder()
            .clear_send_rules()
            .add_send_rule(rule)
            .build()
            .unwrap();
        for probe_is_real in [false, true] {
            let (r, _, _) = recovery(limits.clone());
            for n in 0..4 {
                real(&r, n, &ip("192.0.2.1")).await.unwrap();
            }
            // One left: the probe is admitted, whichever it is.
            let probe = async |n| {
                if probe_is_real {
                    real(&r, n, &ip("198.51.100.1")).await
                } else {
                    unknown(&r, n, &ip("198.51.100.1")).await
                }
            };
            probe(50).await.unwrap();
            if !probe_is_real {
                // The unknown one spent nothing: the last send is a real user's.
                real(&r, 4, &ip("192.0.2.1")).await.unwrap();
            }
            // None left: refused alike, with the same scope.
            let err = probe(51).await.unwrap_err();
            assert_eq!(scope(&err), Some(last), "real probe {probe_is_real}: {err:?}");
            let err = real(&r, 6, &ip("192.0.2.1")).await.unwrap_err();
            assert_eq!(scope(&err), Some(last), "{err:?}");
        }
    }
}

/// Where real traffic into a country already looks pumped, an unknown
/// identifier's request is judged as a real one would be at that count:
/// both find it, and both are blocked.
#[tokio::test]
async fn at_the_pumping_threshold_an_unknown_identifier_is_judged_as_a_real_request() {
    let detectors = Detectors::default()
        .with_pumping_min_sends(10, 1_000)
        .with_auto_block(Some(HOUR))
        .with_auto_block_countries(true);
    let limits = Limits::builder()
        .clear_send_rules()
        .detectors(detectors)
        .build()
        .unwrap();
    for probe_is_real in [false, true] {
        let (r, sender, events) = recovery(limits.clone());
        for n in 0..9 {
            real(&r, n, &ip("192.0.2.1")).await.unwrap();
        }
        let err = if probe_is_real {
            real(&r, 9, &ip("198.51.100.1")).await
        } else {
            unknown(&r, 9, &ip("198.51.100.1")).await
        }
        .unwrap_err();
        assert!(matches!(err, Error::Blocked { .. }), "{err:?}");
        assert!(events.kinds().iter().any(|k| matches!(
            k,
            EventKind::Suspicious {
                pattern: Suspicion::SmsPumpingCountry {
                    country_code: 1,
                    sends: 10,
                    verified: 0
                }
            }
        )));
        assert_eq!(sender.count(), 9, "the probe sent nothing");
    }
}

/// Below the threshold a decoy adds nothing, and where the next real send
/// would be judged it reports nothing it would not block: only real sends
/// make the report.
#[tokio::test]
async fn decoys_do_not_repeat_the_countrys_pumping_report() {
    let detectors = Detectors::default().with_pumping_min_sends(10, 1_000);
    let limits = Limits::builder()
        .clear_send_rules()
        .detectors(detectors)
        .build()
        .unwrap();
    let (r, _, events) = recovery(limits);
    for n in 0..9 {
        real(&r, n, &ip("192.0.2.1")).await.unwrap();
    }
    for n in 0..5 {
        unknown(&r, n, &ip("198.51.100.1")).await.unwrap();
    }
    let reports = || {
        events
            .kinds()
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    EventKind::Suspicious {
                        pattern: Suspicion::SmsPumpingCountry { .. }
                    }
                )
            })
            .count()
    };
    assert_eq!(reports(), 0);
    real(&r, 9, &ip("192.0.2.1")).await.unwrap();
    assert_eq!(reports(), 1, "the tenth real send reports it");
}
