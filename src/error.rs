//! Errors: what went wrong and what the caller can do, never the secret
//! involved.
//!
//! A host maps [`Error`] to its responses; a typical HTTP mapping:
//!
//! | variant | status | tell the user |
//! |---|---|---|
//! | [`Error::InvalidCode`] | 400 / 422 | wrong code, `attempts_left` left |
//! | [`Error::Expired`], [`Error::Superseded`], [`Error::Cancelled`], [`Error::AlreadyUsed`], [`Error::NotFound`], [`Error::InvalidToken`] | 400 / 410 | start again |
//! | [`Error::Locked`] | 423 / 429 | too many tries; start again later |
//! | [`Error::TooSoon`], [`Error::TooManySends`], [`Error::RateLimited`], [`Error::Blocked`] | 429 with `Retry-After` | wait |
//! | [`Error::Input`] | 400 | check what you typed |
//! | [`Error::Store`], [`Error::Send`], [`Error::Random`], [`Error::Busy`] | 503 | try again later |

use std::time::Duration;

pub use crate::input::InputError;

use crate::answer::FactorChallenge;
use crate::clock::Timestamp;
use crate::factor::{FactorKind, FactorSourceError, RecoveryCodeError};
use crate::limits::LimitScope;
use crate::machine::Refusal;
use crate::reference::SupportReference;
use crate::rng::RandomError;
use crate::sms::SendError;
use crate::store::StoreError;

/// Result of the recovery operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a recovery operation did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The code was wrong. `attempts_left == 0` means this attempt locked
    /// the flow.
    #[error("wrong code: {attempts_left} attempts left")]
    #[non_exhaustive]
    InvalidCode {
        /// Attempts this flow still allows.
        attempts_left: u32,
    },
    /// The code (or reset token) is past its lifetime.
    #[error("the code or token has expired; start a new recovery")]
    Expired,
    /// Too many wrong codes: this flow, or recovery by SMS for the whole
    /// account, accepts no more attempts.
    #[error("too many wrong codes: recovery is locked{}", match reference {
        Some(r) => format!(" (support reference {r})"),
        None => String::new(),
    })]
    #[non_exhaustive]
    Locked {
        /// When recovery may be tried again. `None` without a reference:
        /// only a new recovery request can continue (the flow alone is
        /// locked); `None` with a reference: the account's wrong codes in a
        /// row reached
        /// [`Policy::max_consecutive_failures`](crate::Policy::max_consecutive_failures),
        /// and only support can unlock it.
        until: Option<Timestamp>,
        /// The account lock's reference, to quote to support.
        reference: Option<SupportReference>,
        /// The host's support contact, as configured in
        /// [`Messages`](crate::Messages).
        support: Option<String>,
    },
    /// A rate limit was reached.
    #[error("too many requests: try again in {} s", retry_after.as_secs().max(1))]
    #[non_exhaustive]
    RateLimited {
        /// Which limit (for the host's logs; a user need not see it).
        scope: LimitScope,
        /// Time to wait before asking again.
        retry_after: Duration,
    },
    /// The client or destination is blocked for suspicious activity.
    #[error("temporarily blocked: try again in {} s", retry_after.as_secs().max(1))]
    #[non_exhaustive]
    Blocked {
        /// Time to wait before asking again.
        retry_after: Duration,
    },
    /// A resend came before the cooldown ended.
    #[error("a new code can be sent in {} s", retry_after.as_secs().max(1))]
    #[non_exhaustive]
    TooSoon {
        /// Time to wait before asking again.
        retry_after: Duration,
    },
    /// This flow has sent as many codes as it may; start a new recovery.
    #[error("no more codes can be sent for this recovery; start a new one")]
    TooManySends,
    /// No such flow (never existed, or purged).
    #[error("no such recovery")]
    NotFound,
    /// A newer request or resend replaced this code.
    #[error("this code was replaced by a newer one")]
    Superseded,
    /// The flow was cancelled.
    #[error("this recovery was cancelled")]
    Cancelled,
    /// The code or token was already used.
    #[error("this code or token was already used")]
    AlreadyUsed,
    /// The reset token does not match.
    #[error("invalid reset token")]
    InvalidToken,
    /// The right SMS code, on a flow that needs a second factor: returned
    /// by [`Recovery::verify`](crate::Recovery::verify), which issues tokens
    /// only; the code is used up, and [`Recovery::verify_factor`](crate::Recovery::verify_factor)
    /// continues. ([`Recovery::verify_code`](crate::Recovery::verify_code)
    /// answers this as a success.)
    #[error("a second factor is required")]
    SecondFactorRequired(FactorChallenge),
    /// The policy requires a second factor and the account has none it
    /// accepts: recovery by SMS alone is not possible; the flow is
    /// cancelled. Send the user to support.
    #[error("this account needs a second factor it does not have; contact support")]
    #[non_exhaustive]
    NoSecondFactor {
        /// The host's support contact, as configured in
        /// [`Messages`](crate::Messages).
        support: Option<String>,
    },
    /// A wrong second-factor code (or one already used). `attempts_left
    /// == 0` means this kind can no longer be used on this flow.
    #[error("wrong {kind} code: {attempts_left} attempts left")]
    #[non_exhaustive]
    InvalidFactorCode {
        /// Which factor.
        kind: FactorKind,
        /// Attempts of that kind the flow still allows.
        attempts_left: u32,
    },
    /// This kind of second factor cannot be used on this flow: not offered
    /// to it, out of attempts, or removed from the account meanwhile.
    #[error("{kind} cannot be used for this recovery")]
    #[non_exhaustive]
    FactorUnavailable {
        /// Which factor.
        kind: FactorKind,
    },
    /// A second factor was given on a flow whose SMS code has not been
    /// verified yet: verify the SMS code first.
    #[error("enter the code sent by SMS first")]
    CodeNotVerified,
    /// The host's [`FactorSource`](crate::factor::FactorSource) failed;
    /// nothing was counted for the code.
    #[error(transparent)]
    Factors(#[from] FactorSourceError),
    /// The input is malformed (a code with letters, a garbage token...).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The store failed; nothing was half-written.
    #[error("store failure: {0}")]
    Store(#[from] StoreError),
    /// The SMS could not be sent; the code it carried is not valid.
    #[error("sms failure: {0}")]
    Send(#[from] SendError),
    /// The random number generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The flow was made under a key the key ring no longer holds (it was
    /// removed before the flow expired): a configuration error.
    #[error("no key with id {0} in the key ring")]
    UnknownKey(u32),
    /// Too many concurrent changes to one flow; retry.
    #[error("the recovery is busy; try again")]
    Busy,
}

impl From<RecoveryCodeError> for Error {
    fn from(e: RecoveryCodeError) -> Self {
        match e {
            RecoveryCodeError::Input(e) => Error::Input(e),
            RecoveryCodeError::Random(e) => Error::Random(e),
            RecoveryCodeError::UnknownKey(id) => Error::UnknownKey(id),
        }
    }
}

impl Error {
    /// The flow alone is locked: a new request may continue.
    pub(crate) fn flow_locked() -> Self {
        Error::Locked {
            until: None,
            reference: None,
            support: None,
        }
    }

    /// Whether retrying the same call later may succeed without user action
    /// (a store or gateway outage, contention).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retryable(),
            Error::Send(e) => e.is_retryable(),
            Error::Busy | Error::Random(_) => true,
            Error::TooSoon { .. } | Error::RateLimited { .. } | Error::Blocked { .. } => true,
            _ => false,
        }
    }

    /// How long to wait before retrying, where the error knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::TooSoon { retry_after }
            | Error::RateLimited { retry_after, .. }
            | Error::Blocked { retry_after } => Some(*retry_after),
            Error::Locked { until: Some(_), .. } => None,
            Error::Send(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Locked => Error::flow_locked(),
            Refusal::Expired => Error::Expired,
            Refusal::TooSoon { retry_after } => Error::TooSoon { retry_after },
            Refusal::TooManySends => Error::TooManySends,
            Refusal::Superseded => Error::Superseded,
            Refusal::Cancelled => Error::Cancelled,
            Refusal::AlreadyUsed => Error::AlreadyUsed,
            Refusal::InvalidToken => Error::InvalidToken,
            Refusal::FactorUnavailable { kind } => Error::FactorUnavailable { kind },
            Refusal::CodeNotVerified => Error::CodeNotVerified,
            Refusal::Busy => Error::Busy,
        }
    }
}
