//! Bounded retries with backoff, and a per-send timeout, around any sender.
//!
//! [`Retrying`] sends through the sender it wraps, each try bounded by a
//! timeout. When a try fails retryably ([`SendError::is_retryable`]: rate
//! limited, unavailable, timed out) it waits and tries again, up to a total
//! number of tries; any other failure is returned at once. After the last
//! try it returns the last error.
//!
//! | setting | default | rule |
//! |---|---|---|
//! | [`attempts`](Retrying::with_attempts) | 3 tries in all | at least 1 |
//! | [`backoff`](Retrying::with_backoff) | 200 ms, doubling, at most 2 s | first ≤ cap |
//! | [`timeout`](Retrying::with_timeout) per try | [`DEFAULT_TIMEOUT`] (10 s) | above zero |
//!
//! The wait before try `n + 1` is `first × 2^(n − 1)`, capped; when the
//! failed try's error carries a [`retry_after`](SendError::retry_after)
//! (a gateway's `Retry-After`) longer than that, the wait is the
//! `retry_after`, still capped, so a gateway cannot hold a send for long.
//! A try that outruns the timeout fails with [`SendErrorKind::Timeout`],
//! which is retryable.
//!
//! The waits and timeouts run on tokio's timer: use it inside a tokio
//! runtime with time enabled. Each try is a fresh send: a gateway that
//! received a request but answered too late may deliver twice, the usual
//! price of retrying a send that has no idempotency key.
//!
//! It composes with [`Failover`](otp_recovery::sms::Failover): retry each gateway, then
//! fail over, with `Failover::new(Retrying::new(primary), Retrying::new(secondary))`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::time::Duration;
//!
//! use otp_recovery_gateways::retry::Retrying;
//! use otp_recovery::sms::{MessageKind, RecordingSender, SendError, SendErrorKind, SmsMessage, SmsSender};
//! use otp_recovery::{PhoneNumber, SecretString};
//!
//! let gateway = RecordingSender::new();
//! let sender = Retrying::new(gateway.clone())
//!     .with_attempts(3)
//!     .with_backoff(Duration::from_millis(1), Duration::from_millis(4))
//!     .with_timeout(Duration::from_secs(5));
//!
//! // Two 503s, then delivered on the third try.
//! gateway.fail_next(SendError::new(SendErrorKind::Unavailable, "HTTP 503"));
//! gateway.fail_next(SendError::new(SendErrorKind::Unavailable, "HTTP 503"));
//! let to = PhoneNumber::parse("+14155550123").unwrap();
//! let message = SmsMessage::new(to, SecretString::new("123456 is your code".into()), MessageKind::Code);
//! sender.send(&message).await.unwrap();
//! assert_eq!(gateway.count(), 1);
//!
//! // An invalid number is not tried again.
//! gateway.fail_next(SendError::new(SendErrorKind::InvalidNumber, "invalid number"));
//! gateway.fail_next(SendError::new(SendErrorKind::Unavailable, "HTTP 503"));
//! let err = sender.send(&message).await.unwrap_err();
//! assert_eq!(err.kind(), SendErrorKind::InvalidNumber);
//! # });
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::http::DEFAULT_TIMEOUT;
use otp_recovery::sms::{SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};

/// Tries in all, by default (the first and two retries).
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The wait before the first retry, by default.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two tries, by default.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A sender that retries the sender it wraps. See the
/// [module documentation](self).
#[derive(Clone)]
pub struct Retrying<S> {
    inner: S,
    attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    timeout: Duration,
}

impl<S> Retrying<S> {
    /// Wraps `inner` with the defaults: 3 tries, 200 ms doubling up to
    /// 2 s between them, [`DEFAULT_TIMEOUT`] per try.
    pub fn new(inner: S) -> Self {
        Retrying {
            inner,
            attempts: DEFAULT_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how many tries a send makes in all; 1 means no retry.
    ///
    /// # Panics
    /// If `attempts` is 0: a send makes at least one try.
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        assert!(attempts >= 1, "Retrying needs at least 1 attempt, got 0");
        self.attempts = attempts;
        self
    }

    /// Sets the wait before the first retry (`first`, doubled before each
    /// later one) and the longest wait (`max`), which also bounds a
    /// gateway's `retry_after`. `Duration::ZERO` for both retries at once.
    ///
    /// # Panics
    /// If `first` is longer than `max`.
    #[must_use]
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        assert!(
            first <= max,
            "Retrying backoff: the first wait ({first:?}) is longer than the cap ({max:?})"
        );
        self.initial_backoff = first;
        self.max_backoff = max;
        self
    }

    /// Sets the time one try may take before it fails with
    /// [`SendErrorKind::Timeout`].
    ///
    /// # Panics
    /// If `timeout` is zero: every try would fail.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "Retrying timeout must be above zero");
        self.timeout = timeout;
        self
    }

    /// How many tries a send makes at most.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The first wait and the longest wait between tries.
    pub fn backoff(&self) -> (Duration, Duration) {
        (self.initial_backoff, self.max_backoff)
    }

    /// The time one try may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The wrapped sender.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The wrapped sender, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The wait after the `failed`-th try (1-based) failed with `error`, or
    /// `None` when the gateway asked for a longer wait than the cap: it is
    /// honoured by not retrying early (the error, with its `retry_after`,
    /// goes back to the caller).
    fn wait_after(&self, failed: u32, error: &SendError) -> Option<Duration> {
        let doubled = 1u32
            .checked_shl(failed.saturating_sub(1))
            .and_then(|factor| self.initial_backoff.checked_mul(factor))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        match error.retry_after() {
            Some(asked) if asked > self.max_backoff => None,
            Some(asked) if asked > doubled => Some(asked),
            _ => Some(doubled),
        }
    }
}

/// Prints the settings, not the wrapped sender.
impl<S> fmt::Debug for Retrying<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrying")
            .field("attempts", &self.attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: SmsSender> SmsSender for Retrying<S> {
    /// The first success, or the first non-retryable error, or the last
    /// error once every try is spent.
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let mut tried = 1;
        loop {
            let result = match tokio::time::timeout(self.timeout, self.inner.send(message)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(SendError::new(
                    SendErrorKind::Timeout,
                    format!("no answer within {} ms", self.timeout.as_millis()),
                )),
            };
            match result {
                Err(error) if error.is_retryable() && tried < self.attempts => {
                    let Some(wait) = self.wait_after(tried, &error) else {
                        return Err(error);
                    };
                    // The error's kind and text carry no body and no credential.
                    tracing::debug!(
                        tried,
                        attempts = self.attempts,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        error = %error,
                        "SMS send failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    tried += 1;
                }
                done => return done,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> SendError {
        SendError::new(SendErrorKind::Unavailable, "HTTP 503")
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let r = Retrying::new(()).with_backoff(Duration::from_millis(200), Duration::from_secs(2));
        let waits: Vec<_> = (1..=6)
            .map(|n| r.wait_after(n, &unavailable()).unwrap().as_millis())
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(
            r.wait_after(u32::MAX, &unavailable()),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_longer_retry_after_wins_up_to_the_cap() {
        let r = Retrying::new(());
        let asked = |s| unavailable().with_retry_after(Duration::from_millis(s));
        assert_eq!(r.wait_after(1, &asked(50)), Some(Duration::from_millis(200)));
        assert_eq!(r.wait_after(1, &asked(700)), Some(Duration::from_millis(700)));
        assert_eq!(
            r.wait_after(1, &asked(60_000)),
            None,
            "a longer wait than the cap is not cut short"
        );
    }

    #[test]
    fn defaults_and_debug() {
        let r = Retrying::new(());
        assert_eq!(r.attempts(), 3);
        assert_eq!(r.backoff(), (Duration::from_millis(200), Duration::from_secs(2)));
        assert_eq!(r.timeout(), DEFAULT_TIMEOUT);
        assert!(format!("{r:?}").starts_with("Retrying { attempts: 3"));
    }

    #[test]
    #[should_panic(expected = "at least 1 attempt")]
    fn zero_attempts_panic() {
        let _ = Retrying::new(()).with_attempts(0);
    }

    #[test]
    #[should_panic(expected = "longer than the cap")]
    fn a_first_wait_above_the_cap_panics() {
        let _ = Retrying::new(()).with_backoff(Duration::from_secs(3), Duration::from_secs(2));
    }

    #[test]
    #[should_panic(expected = "above zero")]
    fn a_zero_timeout_panics() {
        let _ = Retrying::new(()).with_timeout(Duration::ZERO);
    }
}
