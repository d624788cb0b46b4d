//! What the suspicious-activity detectors look for, and what an automatic
//! block applies to.

use std::fmt;
use std::time::Duration;

use super::key;

/// What an automatic block applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockTarget {
    /// A client IP (an IPv6 /64 network).
    Ip(String),
    /// A destination country calling code.
    CountryCode(u16),
    /// A block of destination numbers (E.164 without the last three
    /// digits), named by its pseudonym so that events never hold a number.
    NumberBlock(String),
}

impl BlockTarget {
    /// The counter key of the block; `pseudonym` hides personal values
    /// (IPs, number blocks) from the store.
    pub(crate) fn key(&self, pseudonym: impl Fn(&str) -> String) -> String {
        match self {
            BlockTarget::Ip(ip) => key(&["block:ip:", &pseudonym(ip)]),
            BlockTarget::CountryCode(cc) => key(&["block:cc:", itoa::Buffer::new().format(*cc)]),
            BlockTarget::NumberBlock(pseudonym) => key(&["block:nb:", pseudonym]),
        }
    }
}

impl fmt::Display for BlockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockTarget::Ip(ip) => write!(f, "ip {ip}"),
            BlockTarget::CountryCode(cc) => write!(f, "country code +{cc}"),
            BlockTarget::NumberBlock(pseudonym) => write!(f, "number block {pseudonym}"),
        }
    }
}

/// Thresholds of the suspicious-activity detectors.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Detectors {
    /// Distinct identifiers one IP may ask for in `window` before it is
    /// suspicious (default 10 per hour).
    pub subjects_per_ip: u32,
    /// Codes into one country code (or number block) in `window` from which
    /// the verified share is judged (default 30 per country, 10 per block).
    pub pumping_min_sends_country: u32,
    /// As above, for a block of numbers.
    pub pumping_min_sends_block: u32,
    /// Below this share of verified codes, in percent, the sends look like
    /// SMS pumping (default 10).
    pub pumping_max_verified_percent: u32,
    /// Lockouts of one account within a week that are suspicious (default 3).
    pub lockouts_per_week: u32,
    /// The detectors' window (default 1 hour).
    pub window: Duration,
    /// Block an IP that asks for too many identifiers, and a number block
    /// that looks pumped, for this long (default: no automatic block,
    /// events only).
    pub auto_block: Option<Duration>,
    /// Also block a whole country code that looks pumped (default false: a
    /// country-wide block stops every user there, so it is a separate
    /// choice).
    pub auto_block_countries: bool,
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors {
            subjects_per_ip: 10,
            pumping_min_sends_country: 30,
            pumping_min_sends_block: 10,
            pumping_max_verified_percent: 10,
            lockouts_per_week: 3,
            window: Duration::from_secs(3600),
            auto_block: None,
            auto_block_countries: false,
        }
    }
}

impl Detectors {
    /// Sets [`Detectors::subjects_per_ip`].
    #[must_use]
    pub fn with_subjects_per_ip(mut self, subjects: u32) -> Self {
        self.subjects_per_ip = subjects;
        self
    }

    /// Sets the sends from which a country code and a number block are
    /// judged for pumping.
    #[must_use]
    pub fn with_pumping_min_sends(mut self, country: u32, block: u32) -> Self {
        self.pumping_min_sends_country = country;
        self.pumping_min_sends_block = block;
        self
    }

    /// Sets [`Detectors::pumping_max_verified_percent`].
    #[must_use]
    pub fn with_pumping_max_verified_percent(mut self, percent: u32) -> Self {
        self.pumping_max_verified_percent = percent;
        self
    }

    /// Sets [`Detectors::lockouts_per_week`].
    #[must_use]
    pub fn with_lockouts_per_week(mut self, lockouts: u32) -> Self {
        self.lockouts_per_week = lockouts;
        self
    }

    /// Sets the detectors' window.
    #[must_use]
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Blocks what the detectors find for `duration` (`None`: report only).
    #[must_use]
    pub fn with_auto_block(mut self, duration: Option<Duration>) -> Self {
        self.auto_block = duration;
        self
    }

    /// Lets automatic blocks cover whole country codes too.
    #[must_use]
    pub fn with_auto_block_countries(mut self, enabled: bool) -> Self {
        self.auto_block_countries = enabled;
        self
    }
}
