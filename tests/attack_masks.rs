//! Issue 18, point 2: the masked phone of an unknown identifier must not
//! tell it from an account.
//!
//! The attack: ask for recovery and read the answer's mask. A decoy's
//! number used to be always in one country with 10 digits, so for a host
//! with users in several countries the mask's country and shape told
//! unknown identifiers apart. Now decoys draw their destination from the
//! host's configured shares of countries and lengths
//! (`LimitsBuilder::decoy_destinations`); an observer of the masks of
//! accounts from seven countries, with national lengths from 7 to 11
//! digits, does no better than chance.

use std::collections::HashMap;

use otp_recovery::limits::{DecoyDestination, Limits, LimitsError};
use otp_recovery::sms::RecordingSender;
use otp_recovery::store::MemoryStore;
use otp_recovery::{Account, AccountId, KeyRing, PhoneNumber, Recovery, RequestContext, ServerKey};

/// The host's users: country, national digits, share.
const USERS: [(u16, u8, u32); 7] = [
    (1, 10, 30),
    (44, 10, 20),
    (33, 9, 15),
    (49, 11, 10),
    (354, 7, 5),
    (372, 8, 10),
    (86, 11, 10),
];
const PER_CLASS: u32 = 3_000;

/// A small deterministic generator (xorshift64*), for reproducible draws.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A phone of a user drawn by the shares of `USERS`.
    fn phone(&mut self) -> PhoneNumber {
        let total: u64 = USERS.iter().map(|u| u64::from(u.2)).sum();
        let mut left = self.next() % total;
        let &(cc, national, _) = USERS
            .iter()
            .find(|u| {
                let here = left < u64::from(u.2);
                left = left.saturating_sub(u64::from(u.2));
                here
            })
            .unwrap();
        let mut digits = format!("+{cc}{}", 2 + self.next() % 8);
        for _ in 1..national {
            digits.push(char::from(b'0' + (self.next() % 10) as u8));
        }
        PhoneNumber::parse(&digits).unwrap()
    }
}

/// The masks a recovery answers with for `PER_CLASS` accounts and as many
/// unknown identifiers; each asked twice, to check that it is stable.
async fn masks(limits: Limits) -> (Vec<String>, Vec<String>) {
    let recovery = Recovery::new(
        MemoryStore::new(),
        RecordingSender::new(),
        KeyRing::new(1, ServerKey::from_bytes(vec![9; 32]).unwrap()),
    )
    .with_limits(limits);
    let ctx = RequestContext::without_client_ip();
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for n in 0..PER_CLASS {
        let account = Account::new(AccountId::new(format!("u{n}")).unwrap(), draw.phone());
        let identifier = format!("user{n}@example.com");
        let first = recovery
            .request(&identifier, Some(account.clone()), &ctx)
            .await
            .unwrap();
        let again = recovery.request(&identifier, Some(account), &ctx).await.unwrap();
        assert_eq!(first.masked_phone, again.masked_phone);
        known.push(first.masked_phone.to_string());
        let identifier = format!("nobody{n}@example.com");
        let first = recovery.request(&identifier, None, &ctx).await.unwrap();
        let again = recovery.request(&identifier, None, &ctx).await.unwrap();
        assert_eq!(first.masked_phone, again.masked_phone, "a decoy's mask is stable");
        unknown.push(first.masked_phone.to_string());
    }
    (known, unknown)
}

/// What an observer sees of a mask: everything but the digits it shows,
/// and the last of those.
fn features(mask: &str) -> String {
    let shape: String = mask.trim_end_matches(|c: char| c.is_ascii_digit()).to_owned();
    format!("{shape}|{}", mask.chars().last().unwrap())
}

/// The accuracy, on the second half of each class, of the best observer
/// trained on the first half: it guesses the class whose training masks
/// had the features more often (a tie is half right).
fn observer_accuracy(known: &[String], unknown: &[String]) -> f64 {
    let half = known.len() / 2;
    let mut seen: HashMap<String, [u32; 2]> = HashMap::new();
    for (class, masks) in [known, unknown].into_iter().enumerate() {
        for m in &masks[..half] {
            seen.entry(features(m)).or_default()[class] += 1;
        }
    }
    let mut right = 0.0;
    for (class, masks) in [known, unknown].into_iter().enumerate() {
        for m in &masks[half..] {
            let [k, u] = seen.get(&features(m)).copied().unwrap_or_default();
            let guess = match k.cmp(&u) {
                std::cmp::Ordering::Greater => Some(0),
                std::cmp::Ordering::Less => Some(1),
                std::cmp::Ordering::Equal => None,
            };
            right += match guess {
                Some(g) if g == class => 1.0,
                Some(_) => 0.0,
                None => 0.5,
            };
        }
    }
    right / (2 * (known.len() - half)) as f64
}

fn spread() -> Limits {
    Limits::builder()
        .clear_send_rules()
        .decoy_destinations(USERS.iter().map(|&(cc, n, w)| DecoyDestination::new(cc, n, w)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn with_the_users_shares_an_observer_of_masks_does_no_better_than_chance() {
    let (known, unknown) = masks(spread()).await;
    let accuracy = observer_accuracy(&known, &unknown);
    println!("observer accuracy with the users' shares: {accuracy:.3}");
    // Chance is 0.5; with 1,500 masks per class tested, 0.55 is more than
    // five standard errors away.
    assert!(accuracy < 0.55, "observer accuracy {accuracy:.3}");
    // Every country and length of the users appears among decoys.
    for (cc, _, _) in USERS {
        let prefix = format!("+{cc} ");
        assert!(unknown.iter().any(|m| m.starts_with(&prefix)), "+{cc}");
    }
}

#[tokio::test]
async fn one_decoy_country_for_users_of_many_is_what_gave_them_away() {
    // The test can fail: with the single default destination (+1, 10
    // digits), the same observer tells them apart.
    let limits = Limits::builder().clear_send_rules().build().unwrap();
    let (known, unknown) = masks(limits).await;
    let accuracy = observer_accuracy(&known, &unknown);
    println!("observer accuracy with one decoy country: {accuracy:.3}");
    assert!(accuracy > 0.8, "observer accuracy {accuracy:.3}");
}

#[test]
fn decoy_destinations_must_be_sendable_and_valid_e164() {
    let build = |d: Vec<DecoyDestination>| Limits::builder().decoy_destinations(d).build();
    assert!(build(vec![DecoyDestination::new(354, 7, 1)]).is_ok());
    assert_eq!(
        build(vec![DecoyDestination::new(354, 3, 1)]),
        Err(LimitsError::DecoyDestination),
        "too short"
    );
    assert_eq!(
        build(vec![DecoyDestination::new(354, 13, 1)]),
        Err(LimitsError::DecoyDestination),
        "16 digits in all"
    );
    assert!(build(vec![DecoyDestination::new(1, 14, 1)]).is_ok(), "15 in all");
    assert_eq!(
        build(vec![DecoyDestination::new(44, 10, 0)]),
        Err(LimitsError::DecoyDestination)
    );
    assert_eq!(build(vec![]), Err(LimitsError::DecoyDestination));
    assert_eq!(
        build(vec![DecoyDestination::new(881, 9, 1)]),
        Err(LimitsError::CountryCode(881))
    );
    assert_eq!(
        Limits::builder()
            .allow_countries([44, 33])
            .decoy_destinations([DecoyDestination::new(1, 10, 1)])
            .build(),
        Err(LimitsError::DecoyCountryDenied(1))
    );
    // Without a choice, an allow list moves the default to its first country.
    let limits = Limits::builder().allow_countries([44, 33]).build().unwrap();
    assert_eq!(limits.decoy_destinations(), [DecoyDestination::new(44, 10, 1)]);
}
