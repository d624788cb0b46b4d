//! Rate limits, destination rules and automatic blocks: configuration, and
//! the pure decisions on counter values.
//!
//! Every rule is a windowed counter in the store. A request adds one to each
//! applicable send counter and reads the blocks and the account's failures,
//! all in one store call, however many rules apply; the decision is then
//! taken here, from the values the store returned.
//!
//! ```
//! use std::time::Duration;
//! use otp_recovery::limits::{LimitScope, Limits, Rule};
//!
//! let limits = Limits::builder()
//!     .send_rule(Rule::new(LimitScope::Ip, 50, Duration::from_secs(3600)))
//!     .allow_countries([1, 44])
//!     .build()
//!     .unwrap();
//! assert!(limits.country_allowed(44));
//! assert!(!limits.country_allowed(49));
//! ```

use std::time::Duration;

use crate::counter::Counter;
use crate::phone::{NON_GEOGRAPHIC_CODES, is_country_code};

mod detectors;
mod keys;
mod plan;

pub use detectors::{BlockTarget, Detectors};
pub(crate) use keys::{ip_key, ip_site_key, number_block};
pub(crate) use plan::{Plan, Refusal, Role};

/// What a send limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitScope {
    /// The destination phone number (for unknown identifiers, their stable
    /// stand-in, so they are limited alike).
    Phone,
    /// The account (or unknown identifier).
    Account,
    /// The client IP (IPv6 by its /64 network).
    Ip,
    /// The client's IPv6 site, its /48: one holder of many /64 networks
    /// (IPv4 clients are not counted by it). Not in the defaults: every
    /// network of a site shares it, so whoever holds enough /64s in a /48
    /// can spend its hour for the others there (unknown identifiers cost
    /// them no SMS). Worth it where one holder's many /64s are the threat
    /// (the memory store's counter cap, a flood of decoys).
    IpSite,
    /// The destination's country calling code.
    CountryCode,
    /// All sends together: the cost cap.
    Global,
    /// Codes checked for one client IP, right or wrong, over every flow:
    /// counted before the check, so the limit holds exactly under any
    /// concurrency.
    IpVerifies,
}

impl LimitScope {
    fn name(self) -> &'static str {
        match self {
            LimitScope::Phone => "phone",
            LimitScope::Account => "account",
            LimitScope::Ip => "ip",
            LimitScope::IpSite => "ipsite",
            LimitScope::CountryCode => "cc",
            LimitScope::Global => "global",
            LimitScope::IpVerifies => "ipverify",
        }
    }
}

/// At most `max` events per `window` for one value of `scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rule {
    /// What it counts by.
    pub scope: LimitScope,
    /// Most events allowed in a window.
    pub max: u32,
    /// The window, opened by the first event.
    pub window: Duration,
}

impl Rule {
    /// A rule of at most `max` per `window` by `scope`.
    pub fn new(scope: LimitScope, max: u32, window: Duration) -> Self {
        Rule { scope, max, window }
    }

    /// The counter of this rule for `value` (a phone, an IP...).
    pub(crate) fn counter(&self, value: &str, by: u32) -> Counter {
        // The maximum is part of the key: two rules of one scope and window
        // are two counters.
        let (mut window, mut max) = (itoa::Buffer::new(), itoa::Buffer::new());
        // As u64 where it fits (always, in practice): u128 digits cost more.
        let millis = self.window.as_millis();
        let window = match u64::try_from(millis) {
            Ok(millis) => window.format(millis),
            Err(_) => window.format(millis),
        };
        let key = key(&[
            "limit:",
            self.scope.name(),
            ":",
            window,
            ":",
            max.format(self.max),
            ":",
            value,
        ]);
        Counter::new(key, self.window, by)
    }
}

/// A counter key: `parts` joined, in one allocation (counter keys are built
/// on every call, and the formatting machinery cost more than the rest of
/// building the call's counters).
pub(crate) fn key(parts: &[&str]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        key.push_str(part);
    }
    key
}

/// Destination countries by calling code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CountryFilter {
    /// Every country but these.
    Deny(Vec<u16>),
    /// Only these countries.
    Allow(Vec<u16>),
}

/// One kind of made-up destination for unknown identifiers: a country, a
/// national number length, and how often it is drawn.
///
/// An unknown identifier's answer shows the mask of a made-up number; for
/// it to look like an account's, the made-up numbers must come from the
/// same countries and lengths as your users' phones, in about the same
/// shares (`SELECT country_code, length(national), count(*) ... GROUP BY`
/// gives them). Each identifier draws one, by a keyed hash, so its answer
/// is the same on every call and every instance for as long as the list
/// stays the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecoyDestination {
    /// The country calling code.
    pub country_code: u16,
    /// Digits after the country code (4 to 14; 15 in all at most).
    pub national_digits: u8,
    /// Its share, relative to the others' (at least 1).
    pub weight: u32,
}

impl DecoyDestination {
    /// Numbers in `country_code` with `national_digits` digits after it,
    /// drawn `weight` times as often as a destination of weight 1.
    pub fn new(country_code: u16, national_digits: u8, weight: u32) -> Self {
        DecoyDestination {
            country_code,
            national_digits,
            weight,
        }
    }

    fn valid(&self) -> bool {
        let code_len = match self.country_code {
            0..=9 => 1,
            10..=99 => 2,
            _ => 3,
        };
        self.weight > 0
            && (4..=14).contains(&self.national_digits)
            && (7..=15).contains(&(code_len + usize::from(self.national_digits)))
    }
}

/// The limits a [`Recovery`](crate::Recovery) enforces besides the
/// per-flow rules of its [`Policy`](crate::Policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    sends: Vec<Rule>,
    ip_verifies: Option<Rule>,
    countries: CountryFilter,
    detectors: Detectors,
    decoys: Vec<DecoyDestination>,
    /// Whether the host chose `decoys` (otherwise an allow list without
    /// the default's country moves it to the list's first).
    decoys_chosen: bool,
}

/// The default made-up destination: a North American number.
const DEFAULT_DECOY: DecoyDestination = DecoyDestination {
    country_code: 1,
    national_digits: 10,
    weight: 1,
};

const MINUTE: Duration = Duration::from_secs(60);
/// The longest window or block a setting may have.
const YEAR: Duration = Duration::from_secs(366 * 86_400);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

impl Default for Limits {
    /// Sends: 5 per 10 minutes and 10 per day per phone, 5 per hour and 10
    /// per day per account, 20 per hour per IP, 300 per hour per country
    /// code, 1,000 per hour in all. Codes checked: 30 per hour per IP.
    /// Destinations: every country but the non-geographic codes.
    fn default() -> Self {
        Limits {
            sends: vec![
                Rule::new(LimitScope::Phone, 5, 10 * MINUTE),
                Rule::new(LimitScope::Phone, 10, DAY),
                Rule::new(LimitScope::Account, 5, HOUR),
                Rule::new(LimitScope::Account, 10, DAY),
                Rule::new(LimitScope::Ip, 20, HOUR),
                Rule::new(LimitScope::CountryCode, 300, HOUR),
                Rule::new(LimitScope::Global, 1_000, HOUR),
            ],
            ip_verifies: Some(Rule::new(LimitScope::IpVerifies, 30, HOUR)),
            countries: CountryFilter::Deny(NON_GEOGRAPHIC_CODES.to_vec()),
            detectors: Detectors::default(),
            decoys: vec![DEFAULT_DECOY],
            decoys_chosen: false,
        }
    }
}

impl Limits {
    /// A builder starting from the defaults.
    pub fn builder() -> LimitsBuilder {
        LimitsBuilder(Limits::default())
    }

    /// No send limits, no IP failure limit, every country, detectors on
    /// with no automatic block: for tests of other rules.
    pub fn none() -> Self {
        Limits {
            sends: Vec::new(),
            ip_verifies: None,
            countries: CountryFilter::Deny(Vec::new()),
            detectors: Detectors::default(),
            decoys: vec![DEFAULT_DECOY],
            decoys_chosen: false,
        }
    }

    /// The made-up destinations of unknown identifiers (default: +1 with
    /// 10 digits, or the allow list's first country if +1 is not on it).
    /// See [`DecoyDestination`].
    pub fn decoy_destinations(&self) -> &[DecoyDestination] {
        &self.decoys
    }

    /// The destination an unknown identifier whose decoy MAC begins with
    /// `draw` gets: by weight, the same for every call.
    pub(crate) fn decoy_destination(&self, draw: u64) -> DecoyDestination {
        let total: u64 = self.decoys.iter().map(|d| u64::from(d.weight)).sum();
        // Weights are at most 2^32 each, so the bias of the modulo is
        // negligible; every destination is scanned, whichever is drawn.
        let mut left = draw % total.max(1);
        let mut chosen = self.decoys.first().copied().unwrap_or(DEFAULT_DECOY);
        let mut found = false;
        for d in &self.decoys {
            let here = !found && left < u64::from(d.weight);
            chosen = if here { *d } else { chosen };
            found |= here;
            left = left.saturating_sub(u64::from(d.weight));
        }
        chosen
    }

    /// The send rules.
    pub fn send_rules(&self) -> &[Rule] {
        &self.sends
    }

    /// Whether a send rule counts by `scope`.
    pub(crate) fn has_send_rule(&self, scope: LimitScope) -> bool {
        self.sends.iter().any(|r| r.scope == scope)
    }

    /// The rule on codes checked per IP.
    pub fn ip_verify_rule(&self) -> Option<Rule> {
        self.ip_verifies
    }

    /// The detector thresholds.
    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }

    /// Whether codes may be sent to this country calling code.
    pub fn country_allowed(&self, country_code: u16) -> bool {
        match &self.countries {
            CountryFilter::Deny(codes) => !codes.contains(&country_code),
            CountryFilter::Allow(codes) => codes.contains(&country_code),
        }
    }
}

/// Builds [`Limits`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LimitsBuilder(Limits);

impl LimitsBuilder {
    /// Replaces every send rule of `rule.scope` by `rule`.
    pub fn send_rule(mut self, rule: Rule) -> Self {
        self.0.sends.retain(|r| r.scope != rule.scope);
        self.0.sends.push(rule);
        self
    }

    /// Removes every send rule.
    pub fn clear_send_rules(mut self) -> Self {
        self.0.sends.clear();
        self
    }

    /// Adds a send rule, keeping the others of its scope.
    pub fn add_send_rule(mut self, rule: Rule) -> Self {
        self.0.sends.push(rule);
        self
    }

    /// Codes checked per IP per window (right or wrong), or no such limit.
    pub fn ip_verifies(mut self, rule: Option<(u32, Duration)>) -> Self {
        self.0.ip_verifies = rule.map(|(max, window)| Rule::new(LimitScope::IpVerifies, max, window));
        self
    }

    /// Only these destination country calling codes.
    pub fn allow_countries(mut self, codes: impl IntoIterator<Item = u16>) -> Self {
        self.0.countries = CountryFilter::Allow(codes.into_iter().collect());
        self
    }

    /// Every destination but these country calling codes (the default
    /// denies the non-geographic ones; this replaces that list).
    pub fn deny_countries(mut self, codes: impl IntoIterator<Item = u16>) -> Self {
        self.0.countries = CountryFilter::Deny(codes.into_iter().collect());
        self
    }

    /// Unknown identifiers appear to have numbers in this country, with 10
    /// digits after its code: [`LimitsBuilder::decoy_destinations`] with
    /// one destination.
    pub fn decoy_country(self, country_code: u16) -> Self {
        self.decoy_destinations([DecoyDestination::new(country_code, 10, 1)])
    }

    /// The made-up destinations of unknown identifiers, in the shares of
    /// your users' phones (see [`DecoyDestination`]). Each must be a valid
    /// length for E.164 in an allowed country: `build` refuses the rest,
    /// since unknown identifiers would stand out.
    pub fn decoy_destinations(mut self, destinations: impl IntoIterator<Item = DecoyDestination>) -> Self {
        self.0.decoys = destinations.into_iter().collect();
        self.0.decoys_chosen = true;
        self
    }

    /// Replaces the detector thresholds.
    pub fn detectors(mut self, detectors: Detectors) -> Self {
        self.0.detectors = detectors;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`LimitsError`] for a rule with a zero maximum or window, an unknown
    /// country calling code, or a detector threshold of zero.
    pub fn build(self) -> Result<Limits, LimitsError> {
        let mut l = self.0;
        if let Some(bad) = l.sends.iter().find(|r| r.scope == LimitScope::IpVerifies) {
            return Err(LimitsError::Rule(bad.scope));
        }
        for rule in l.sends.iter().chain(l.ip_verifies.iter()) {
            if rule.max == 0 || rule.window < Duration::from_secs(1) || rule.window > YEAR {
                return Err(LimitsError::Rule(rule.scope));
            }
        }
        let codes = match &l.countries {
            CountryFilter::Deny(c) | CountryFilter::Allow(c) => c,
        };
        if let Some(&bad) = codes.iter().find(|&&c| !is_country_code(c)) {
            return Err(LimitsError::CountryCode(bad));
        }
        if let CountryFilter::Allow(codes) = &l.countries
            && !l.decoys_chosen
            && !codes.is_empty()
            && !codes.contains(&DEFAULT_DECOY.country_code)
        {
            l.decoys = vec![DecoyDestination::new(codes[0], 10, 1)];
        }
        if l.decoys.is_empty() || l.decoys.len() > 1_000 {
            return Err(LimitsError::DecoyDestination);
        }
        for d in &l.decoys {
            let cc = d.country_code;
            if !is_country_code(cc) || NON_GEOGRAPHIC_CODES.contains(&cc) {
                return Err(LimitsError::CountryCode(cc));
            }
            if !l.country_allowed(cc) {
                return Err(LimitsError::DecoyCountryDenied(cc));
            }
            if !d.valid() {
                return Err(LimitsError::DecoyDestination);
            }
        }
        let d = &l.detectors;
        if d.subjects_per_ip == 0
            || d.pumping_min_sends_country == 0
            || d.pumping_min_sends_block == 0
            || d.lockouts_per_week == 0
            || d.pumping_max_verified_percent > 100
            || d.window < Duration::from_secs(60)
            || d.window > YEAR
            || d.auto_block.is_some_and(|b| b.is_zero() || b > YEAR)
        {
            return Err(LimitsError::Detectors);
        }
        Ok(l)
    }
}

/// A [`Limits`] setting that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A rule needs a maximum of at least 1 and a window of at least 1 s;
    /// `IpVerifies` is not a send rule (see `LimitsBuilder::ip_verifies`).
    #[error(
        "a {0:?} rule needs a maximum of at least 1 and a window of 1 s to a year, and must be a send rule"
    )]
    Rule(LimitScope),
    /// Not a country calling code ITU-T assigned.
    #[error("+{0} is not an assigned country calling code")]
    CountryCode(u16),
    /// The decoy country (see [`LimitsBuilder::decoy_country`]) is on the
    /// deny list: unknown identifiers would appear to have phones that no
    /// real account can be sent a code at, and would stand out.
    #[error("the decoy country +{0} is denied: choose allowed countries with decoy_destinations")]
    DecoyCountryDenied(u16),
    /// Decoy destinations need 1 to 1,000 entries, each of weight at least
    /// 1 and a length valid for E.164 (4 to 14 digits after the code, 15
    /// in all at most).
    #[error("decoy destinations need 1 to 1,000 entries of weight 1 or more, each a valid E.164 length")]
    DecoyDestination,
    /// Detector thresholds must be at least 1 (a percentage at most 100,
    /// a window at least a minute).
    #[error("detector thresholds must be positive, the percentage at most 100, the window at least a minute")]
    Detectors,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::counter::CounterValue;

    #[test]
    fn rule_and_block_keys_keep_their_shape() {
        let rule = Rule::new(LimitScope::IpVerifies, 30, Duration::from_millis(3_600_001));
        assert_eq!(rule.counter("p", 1).key, "limit:ipverify:3600001:30:p");
        assert_eq!(key(&[]), "");
        assert_eq!(
            BlockTarget::CountryCode(44).key(|_| unreachable!()),
            "block:cc:44"
        );
        assert_eq!(
            BlockTarget::Ip("1.2.3.4".into()).key(|v| format!("<{v}>")),
            "block:ip:<1.2.3.4>"
        );
        assert_eq!(
            BlockTarget::NumberBlock("nb".into()).key(|_| unreachable!()),
            "block:nb:nb"
        );
    }

    #[test]
    fn a_limit_refuses_one_past_its_maximum_with_the_longest_wait() {
        let t = Timestamp::from_unix_millis(1_000_000);
        let mut plan = Plan::default();
        let a = Rule::new(LimitScope::Phone, 5, MINUTE);
        let b = Rule::new(LimitScope::Ip, 2, HOUR);
        plan.limit(&a, "x", 1);
        plan.limit(&b, "y", 1);
        let at = |count, secs| CounterValue::new(count, Some(t.saturating_add(Duration::from_secs(secs))));
        assert_eq!(
            plan.refusal(&[at(5, 10), at(2, 100)], t),
            None,
            "the maximum itself is allowed"
        );
        assert_eq!(
            plan.refusal(&[at(6, 10), at(2, 100)], t),
            Some(Refusal::Limited(LimitScope::Phone, Duration::from_secs(10)))
        );
        assert_eq!(
            plan.refusal(&[at(6, 10), at(3, 100)], t),
            Some(Refusal::Limited(LimitScope::Ip, Duration::from_secs(100)))
        );
        let mut blocked = Plan::default();
        blocked.block(BlockTarget::CountryCode(44), "block:cc:44".into());
        let until = t.saturating_add(HOUR);
        assert_eq!(
            blocked.refusal(&[CounterValue::new(1, Some(until))], t),
            Some(Refusal::Blocked(BlockTarget::CountryCode(44), until))
        );
        assert_eq!(blocked.refusal(&[CounterValue::default()], t), None);
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(
            Limits::builder()
                .send_rule(Rule::new(LimitScope::Ip, 0, HOUR))
                .build()
                .is_err()
        );
        assert!(Limits::builder().deny_countries([210]).build().is_err());
        assert_eq!(
            Limits::builder().deny_countries([1]).build(),
            Err(LimitsError::DecoyCountryDenied(1))
        );
        assert!(
            Limits::builder()
                .deny_countries([1])
                .decoy_country(44)
                .build()
                .is_ok()
        );
        assert!(Limits::builder().allow_countries([1, 44]).build().is_ok());
        let d = Detectors::default().with_subjects_per_ip(0);
        assert_eq!(
            Limits::builder().detectors(d).build(),
            Err(LimitsError::Detectors)
        );
        assert!(Limits::default().country_allowed(44));
        assert!(
            !Limits::default().country_allowed(881),
            "satellite codes are denied by default"
        );
    }
}
