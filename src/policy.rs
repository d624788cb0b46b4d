//! Configuration of the rules, with safe defaults.
//!
//! ```
//! use std::time::Duration;
//! use otp_recovery::Policy;
//!
//! let policy = Policy::builder()
//!     .code_digits(8)
//!     .code_ttl(Duration::from_secs(5 * 60))
//!     .build()
//!     .unwrap();
//! assert_eq!(policy.max_attempts(), 5);
//!
//! // NIST SP 800-63B allows an SMS code to live 10 minutes at most.
//! assert!(Policy::builder().code_ttl(Duration::from_secs(601)).build().is_err());
//! ```

use std::time::Duration;

use crate::factor::{FactorSet, SecondFactor};
use crate::secret::{MAX_CODE_DIGITS, MIN_CODE_DIGITS};

/// Longest code lifetime NIST SP 800-63B allows for an out-of-band (SMS)
/// secret: 10 minutes.
pub const NIST_MAX_CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Most wrong codes a single flow may allow.
pub const MAX_ATTEMPTS_CAP: u32 = 10;
/// Most failed attempts NIST SP 800-63B allows on one account.
pub const NIST_MAX_ACCOUNT_FAILURES: u32 = 100;
/// Most wrong codes per account per failure window the crate accepts: half
/// of NIST's 100, because a window that starts again right after filling
/// can admit twice its limit in a short burst.
pub const MAX_ACCOUNT_FAILURES_CAP: u32 = NIST_MAX_ACCOUNT_FAILURES / 2;
/// Most wrong codes in a row the crate accepts: under NIST's 100.
const MAX_CONSECUTIVE_FAILURES_CAP: u32 = NIST_MAX_ACCOUNT_FAILURES - 1;
/// Longest reset-token lifetime the crate accepts.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// The rules a [`Recovery`](crate::Recovery) enforces. Build one with
/// [`Policy::builder`]; [`Policy::default`] is the recommended setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    code_digits: u8,
    code_ttl: Duration,
    max_attempts: u32,
    token_ttl: Duration,
    resend_cooldown: Duration,
    max_resend_cooldown: Duration,
    max_sends_per_flow: u32,
    record_retention: Duration,
    max_account_failures: u32,
    account_failure_window: Duration,
    account_lockout: Duration,
    max_consecutive_failures: u32,
    reveal_send_failures: bool,
    second_factor: SecondFactor,
    accepted_factors: FactorSet,
    factor_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            code_digits: 6,
            code_ttl: NIST_MAX_CODE_TTL,
            max_attempts: 5,
            token_ttl: Duration::from_secs(10 * 60),
            resend_cooldown: Duration::from_secs(30),
            max_resend_cooldown: Duration::from_secs(5 * 60),
            max_sends_per_flow: 5,
            record_retention: Duration::from_secs(24 * 60 * 60),
            max_account_failures: 20,
            account_failure_window: Duration::from_secs(24 * 60 * 60),
            account_lockout: Duration::from_secs(60 * 60),
            max_consecutive_failures: 50,
            reveal_send_failures: false,
            second_factor: SecondFactor::Off,
            accepted_factors: FactorSet::ALL,
            factor_attempts: 5,
        }
    }
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder(Policy::default())
    }

    /// Digits per code (default 6).
    pub fn code_digits(&self) -> u8 {
        self.code_digits
    }
    /// How long a code stays valid (default 10 minutes).
    pub fn code_ttl(&self) -> Duration {
        self.code_ttl
    }
    /// Wrong codes a flow allows before it locks (default 5).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// How long a reset token stays valid (default 10 minutes).
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }
    /// Wait before the first resend (default 30 s); it doubles with every
    /// further send, up to [`Policy::max_resend_cooldown`].
    pub fn resend_cooldown(&self) -> Duration {
        self.resend_cooldown
    }
    /// The longest the resend wait grows to (default 5 minutes).
    pub fn max_resend_cooldown(&self) -> Duration {
        self.max_resend_cooldown
    }
    /// Codes one flow may send, the first included (default 5).
    pub fn max_sends_per_flow(&self) -> u32 {
        self.max_sends_per_flow
    }
    /// How long a flow record is kept after its last code or token expired,
    /// for support look-ups, before it may be purged (default 24 hours).
    pub fn record_retention(&self) -> Duration {
        self.record_retention
    }

    /// Wrong codes an account may accumulate over all its flows within
    /// [`Policy::account_failure_window`] before recovery by SMS is locked
    /// for it until the window ends (default 20, at most 50 so that even a
    /// burst across two windows stays within NIST SP 800-63B's 100). New
    /// requests and resends never reset this count.
    ///
    /// A lock's end is read from the stored counts under the policy in
    /// force, so raising this limit shortens running locks whose failures
    /// are now under it (to [`Policy::account_lockout`] from their locking
    /// code), and their support reference changes with their end; support
    /// still finds their case by account.
    pub fn max_account_failures(&self) -> u32 {
        self.max_account_failures
    }
    /// The window over which account failures are counted (default 24
    /// hours from the first wrong code); reaching the limit locks recovery
    /// by SMS until the window ends.
    pub fn account_failure_window(&self) -> Duration {
        self.account_failure_window
    }

    /// The shortest an account lock lasts (default 1 hour): a lock ends at
    /// the later of this long after the locking code and the end of the
    /// failure window, so a limit reached late in a window still locks for
    /// a real while. (If the window that holds the failures ends before
    /// the locking code, as when a flow opened late in one window locks
    /// in the next, the lock lasts this long.)
    pub fn account_lockout(&self) -> Duration {
        self.account_lockout
    }

    /// Wrong codes in a row, over every flow and window, after which
    /// recovery by SMS is locked for the account until support unlocks it
    /// (default 50, at most 99: NIST SP 800-63B rev. 4, 3.2.2, caps
    /// consecutive failures at 100). Unlike the windowed
    /// [`Policy::max_account_failures`], time does not clear this count:
    /// only a completed reset or a support unlock does, so guessing stays
    /// capped over the account's whole life (a 6-digit code: 50 guesses
    /// in all, a 1 in 20,000 chance).
    pub fn max_consecutive_failures(&self) -> u32 {
        self.max_consecutive_failures
    }

    /// Whether `request` and `resend` report a failed SMS as
    /// [`Error::Send`](crate::Error::Send) (default false). By default a
    /// failed send answers like a successful one, because an unknown
    /// identifier never fails to send and the difference would reveal which
    /// identifiers have accounts; the code is expired at once either way,
    /// and the failure is reported as an event.
    pub fn reveal_send_failures(&self) -> bool {
        self.reveal_send_failures
    }

    /// When a second factor is required after the SMS code (default
    /// [`SecondFactor::Off`]).
    pub fn second_factor(&self) -> SecondFactor {
        self.second_factor
    }

    /// The kinds of second factor the policy accepts (default: all).
    pub fn accepted_factors(&self) -> FactorSet {
        self.accepted_factors
    }

    /// Wrong codes allowed per second-factor kind in one flow (default 5).
    /// Each also counts toward the account's failure limit.
    pub fn factor_attempts(&self) -> u32 {
        self.factor_attempts
    }

    /// The wait required before the send that follows `sends` sends.
    pub(crate) fn cooldown_after(&self, sends: u32) -> Duration {
        let doublings = sends.saturating_sub(1).min(31);
        self.resend_cooldown
            .saturating_mul(1u32 << doublings)
            .min(self.max_resend_cooldown)
    }
}

/// Builds a [`Policy`], refusing unsafe settings.
#[derive(Debug, Clone)]
#[must_use]
pub struct PolicyBuilder(Policy);

impl PolicyBuilder {
    /// Digits per code, 6 to 10.
    pub fn code_digits(mut self, digits: u8) -> Self {
        self.0.code_digits = digits;
        self
    }
    /// Code lifetime, at most 10 minutes (NIST SP 800-63B).
    pub fn code_ttl(mut self, ttl: Duration) -> Self {
        self.0.code_ttl = ttl;
        self
    }
    /// Wrong codes a flow allows, 1 to 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.0.max_attempts = attempts;
        self
    }
    /// Reset-token lifetime, at most one hour.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.0.token_ttl = ttl;
        self
    }
    /// First resend wait and its cap; the wait doubles with each send.
    pub fn resend_cooldown(mut self, first: Duration, max: Duration) -> Self {
        self.0.resend_cooldown = first;
        self.0.max_resend_cooldown = max;
        self
    }
    /// Codes one flow may send, the first included, 1 to 10.
    pub fn max_sends_per_flow(mut self, sends: u32) -> Self {
        self.0.max_sends_per_flow = sends;
        self
    }
    /// How long records are kept after they expire, for support.
    pub fn record_retention(mut self, retention: Duration) -> Self {
        self.0.record_retention = retention;
        self
    }

    /// Wrong codes an account may accumulate per window, from
    /// `max_attempts` to 50, and the window (1 hour to 7 days).
    pub fn account_failures(mut self, max: u32, window: Duration) -> Self {
        self.0.max_account_failures = max;
        self.0.account_failure_window = window;
        self
    }

    /// The shortest account lock, 1 minute to 7 days.
    pub fn account_lockout(mut self, lockout: Duration) -> Self {
        self.0.account_lockout = lockout;
        self
    }

    /// Wrong codes in a row before only support can unlock the account,
    /// from the account failures per window to 99 (see
    /// [`Policy::max_consecutive_failures`]).
    pub fn consecutive_failures(mut self, max: u32) -> Self {
        self.0.max_consecutive_failures = max;
        self
    }

    /// Report failed sends to the caller (see
    /// [`Policy::reveal_send_failures`]).
    pub fn reveal_send_failures(mut self, reveal: bool) -> Self {
        self.0.reveal_send_failures = reveal;
        self
    }

    /// Requires a second factor after the SMS code (see [`SecondFactor`]).
    pub fn second_factor(mut self, requirement: SecondFactor) -> Self {
        self.0.second_factor = requirement;
        self
    }

    /// The kinds of second factor accepted (at least one).
    pub fn accepted_factors(mut self, kinds: FactorSet) -> Self {
        self.0.accepted_factors = kinds;
        self
    }

    /// Wrong codes allowed per second-factor kind in one flow, 1 to 10.
    pub fn factor_attempts(mut self, attempts: u32) -> Self {
        self.0.factor_attempts = attempts;
        self
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the first setting out of its range.
    pub fn build(self) -> Result<Policy, PolicyError> {
        let p = self.0;
        if !(MIN_CODE_DIGITS..=MAX_CODE_DIGITS).contains(&p.code_digits) {
            return Err(PolicyError::CodeDigits(p.code_digits));
        }
        if p.code_ttl > NIST_MAX_CODE_TTL || p.code_ttl < Duration::from_secs(60) {
            return Err(PolicyError::CodeTtl(p.code_ttl));
        }
        if !(1..=MAX_ATTEMPTS_CAP).contains(&p.max_attempts) {
            return Err(PolicyError::MaxAttempts(p.max_attempts));
        }
        if p.token_ttl > MAX_TOKEN_TTL || p.token_ttl < Duration::from_secs(60) {
            return Err(PolicyError::TokenTtl(p.token_ttl));
        }
        if p.resend_cooldown > p.max_resend_cooldown {
            return Err(PolicyError::ResendCooldown);
        }
        if !(1..=10).contains(&p.max_sends_per_flow) {
            return Err(PolicyError::MaxSends(p.max_sends_per_flow));
        }
        if !(p.max_attempts..=MAX_ACCOUNT_FAILURES_CAP).contains(&p.max_account_failures) {
            return Err(PolicyError::AccountFailures(p.max_account_failures));
        }
        let hour = Duration::from_secs(3600);
        if !(hour..=168 * hour).contains(&p.account_failure_window) {
            return Err(PolicyError::AccountFailureWindow(p.account_failure_window));
        }
        if !(Duration::from_secs(60)..=168 * hour).contains(&p.account_lockout) {
            return Err(PolicyError::AccountLockout(p.account_lockout));
        }
        if !(p.max_account_failures..=MAX_CONSECUTIVE_FAILURES_CAP).contains(&p.max_consecutive_failures) {
            return Err(PolicyError::ConsecutiveFailures(p.max_consecutive_failures));
        }
        if !(1..=MAX_ATTEMPTS_CAP).contains(&p.factor_attempts) {
            return Err(PolicyError::FactorAttempts(p.factor_attempts));
        }
        if p.accepted_factors.is_empty() {
            return Err(PolicyError::NoFactorAccepted);
        }
        Ok(p)
    }
}

/// A [`Policy`] setting out of its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Codes have 6 to 10 digits.
    #[error("a code has 6 to 10 digits, not {0}")]
    CodeDigits(u8),
    /// NIST SP 800-63B caps an SMS code's life at 10 minutes; below one
    /// minute users cannot type it in time.
    #[error("code lifetime {0:?} is outside 1 to 10 minutes (NIST SP 800-63B caps SMS codes at 10 minutes)")]
    CodeTtl(Duration),
    /// One to ten wrong codes per flow.
    #[error("attempts per code must be 1 to 10, not {0}")]
    MaxAttempts(u32),
    /// Reset tokens live one minute to one hour.
    #[error("reset token lifetime {0:?} is outside 1 minute to 1 hour")]
    TokenTtl(Duration),
    /// The first resend wait exceeds its cap.
    #[error("the first resend wait is longer than its cap")]
    ResendCooldown,
    /// One to ten sends per flow.
    #[error("sends per flow must be 1 to 10, not {0}")]
    MaxSends(u32),
    /// Account failures must be at least the attempts per code and at most
    /// 50 (half of NIST SP 800-63B's 100).
    #[error("account failures must be from the attempts per code to 50, not {0}")]
    AccountFailures(u32),
    /// The shortest account lock must be 1 minute to 7 days.
    #[error("account lockout {0:?} is outside 1 minute to 7 days")]
    AccountLockout(Duration),
    /// Consecutive failures must be at least the account failures per
    /// window and under NIST SP 800-63B's 100.
    #[error("consecutive failures must be from the account failures per window to 99, not {0}")]
    ConsecutiveFailures(u32),
    /// The account failure window must be 1 hour to 7 days.
    #[error("account failure window {0:?} is outside 1 hour to 7 days")]
    AccountFailureWindow(Duration),
    /// One to ten wrong codes per second-factor kind.
    #[error("attempts per second factor must be 1 to 10, not {0}")]
    FactorAttempts(u32),
    /// The accepted second factors must name at least one kind.
    #[error("no kind of second factor is accepted")]
    NoFactorAccepted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_ttl_of_exactly_ten_minutes_is_allowed_one_millisecond_more_is_not() {
        assert!(Policy::builder().code_ttl(NIST_MAX_CODE_TTL).build().is_ok());
        let over = NIST_MAX_CODE_TTL + Duration::from_millis(1);
        assert_eq!(
            Policy::builder().code_ttl(over).build(),
            Err(PolicyError::CodeTtl(over))
        );
    }

    #[test]
    fn digits_outside_six_to_ten_are_refused() {
        for d in 0..=12u8 {
            assert_eq!(
                Policy::builder().code_digits(d).build().is_ok(),
                (6..=10).contains(&d)
            );
        }
    }

    #[test]
    fn attempts_and_sends_bounds() {
        assert!(Policy::builder().max_attempts(0).build().is_err());
        assert!(Policy::builder().max_attempts(10).build().is_ok());
        assert!(Policy::builder().max_attempts(11).build().is_err());
        assert!(Policy::builder().max_sends_per_flow(0).build().is_err());
        let day = Duration::from_secs(86_400);
        assert!(Policy::builder().account_failures(50, day).build().is_ok());
        assert!(Policy::builder().account_failures(51, day).build().is_err());
        assert!(Policy::builder().account_failures(4, day).build().is_err());
        assert!(
            Policy::builder()
                .max_attempts(3)
                .account_failures(3, day)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn consecutive_failures_run_from_the_window_limit_to_99() {
        let built = |n| Policy::builder().consecutive_failures(n).build();
        assert_eq!(Policy::default().max_consecutive_failures(), 50);
        assert!(built(20).is_ok(), "the account failures per window");
        assert_eq!(built(19), Err(PolicyError::ConsecutiveFailures(19)));
        assert!(built(99).is_ok());
        assert_eq!(built(100), Err(PolicyError::ConsecutiveFailures(100)));
    }

    #[test]
    fn resend_cooldown_doubles_up_to_its_cap() {
        let p = Policy::default();
        let waits: Vec<u64> = (1..=6).map(|s| p.cooldown_after(s).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 300, 300]);
        assert_eq!(p.cooldown_after(u32::MAX).as_secs(), 300);
    }
}
