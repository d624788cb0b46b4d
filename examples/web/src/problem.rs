//! Recovery errors as HTTP answers: a status, a `Retry-After` where waiting
//! helps, and words for the user.
//!
//! | error | status | the user reads |
//! |---|---|---|
//! | `InvalidCode` | 422 | wrong code, N attempts left |
//! | `Input` | 400 | what the input should look like |
//! | `TooSoon`, `RateLimited`, `Blocked` | 429 + `Retry-After` | when to try again |
//! | `Locked` | 423 (+ `Retry-After` when the lock ends) | locked, until when, the support reference |
//! | `Expired`, `Superseded`, `Cancelled`, `AlreadyUsed`, `NotFound`, `InvalidToken`, `TooManySends` | 410 | start again |
//! | store, gateway, random, contention | 503 | try again in a moment |
//!
//! Nothing here depends on whether an account exists: the recovery gives
//! an unknown identifier the same answers (a flow id, a masked phone, the
//! same limits) as a known one, and this mapping keeps it that way. The
//! internal details of a 503 go to the log, never to the user.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use otp_recovery::{Clock, Error, InputError, SystemClock};
use serde::Serialize;

/// A failed step, ready for a page or a JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The HTTP status.
    #[serde(skip)]
    pub status: StatusCode,
    /// A stable machine-readable name (`invalid_code`, `locked`...).
    pub error: &'static str,
    /// What the user reads.
    pub message: String,
    /// Attempts left on this code, after a wrong one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_left: Option<u32>,
    /// Seconds to wait before trying again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// The reference to quote to support, for an account lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support_reference: Option<String>,
    /// How to reach support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support_contact: Option<String>,
    /// The flow cannot continue: the user has to start a new recovery.
    pub start_again: bool,
}

impl Problem {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Problem {
            status,
            error,
            message: message.into(),
            attempts_left: None,
            retry_after_secs: None,
            support_reference: None,
            support_contact: None,
            start_again: false,
        }
    }

    fn wait(mut self, wait: Duration) -> Self {
        self.retry_after_secs = Some(whole_seconds(wait));
        self
    }

    fn start_again(mut self) -> Self {
        self.start_again = true;
        self
    }

    /// A form that failed its CSRF check (stale page or forged request).
    pub fn csrf() -> Self {
        Problem::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "This form has expired. Go back, reload the page and try again.",
        )
    }

    /// Something failed on the server; details go to the log.
    pub fn unavailable() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Something went wrong on our side. Please try again in a moment.",
        )
    }

    /// A bad request with a message for the user.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// Maps a recovery error.
    pub fn from_error(error: &Error) -> Self {
        use StatusCode as S;
        let gone = |message: &str| Problem::new(S::GONE, "start_again", message).start_again();
        match error {
            Error::InvalidCode { attempts_left: 0, .. } => Problem::new(
                S::LOCKED,
                "locked",
                "That code was wrong, and it was the last attempt. Start again to get a new code.",
            )
            .start_again(),
            Error::InvalidCode { attempts_left, .. } => {
                let plural = if *attempts_left == 1 { "" } else { "s" };
                let mut p = Problem::new(
                    S::UNPROCESSABLE_ENTITY,
                    "invalid_code",
                    format!("That code is not right. {attempts_left} attempt{plural} left."),
                );
                p.attempts_left = Some(*attempts_left);
                p
            }
            Error::Locked {
                until,
                reference,
                support,
                ..
            } => {
                let wait = until.map(|until| until.saturating_duration_since(SystemClock.now()));
                let mut message = String::from("Too many wrong codes: recovery by SMS is locked");
                match wait {
                    Some(wait) => message.push_str(&format!(" for {}.", in_words(wait))),
                    None => message.push_str(" for this request. Start again to get a new code."),
                }
                if let Some(reference) = reference {
                    message.push_str(&format!(" If you need help, quote reference {reference}"));
                    if let Some(support) = support {
                        message.push_str(&format!(" to {support}"));
                    }
                    message.push('.');
                }
                let mut p = Problem::new(S::LOCKED, "locked", message).start_again();
                p.retry_after_secs = wait.map(whole_seconds);
                p.support_reference = reference.as_ref().map(ToString::to_string);
                p.support_contact = reference.as_ref().and(support.clone());
                p
            }
            Error::TooSoon { retry_after, .. } => Problem::new(
                S::TOO_MANY_REQUESTS,
                "too_soon",
                format!("A new code can be sent in {}.", in_words(*retry_after)),
            )
            .wait(*retry_after),
            Error::RateLimited { retry_after, .. } | Error::Blocked { retry_after, .. } => Problem::new(
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "Too many requests. Please try again in {}.",
                    in_words(*retry_after)
                ),
            )
            .wait(*retry_after),
            Error::TooManySends => gone("No more codes can be sent for this request. Start again."),
            Error::Expired => gone("This code has expired. Start again to get a new one."),
            Error::Superseded => gone("A newer code was sent: use the latest one, or start again."),
            Error::AlreadyUsed => {
                gone("This code or link was already used. Start again if you need a new code.")
            }
            Error::Cancelled | Error::NotFound | Error::InvalidToken => {
                gone("This recovery link is no longer valid. Start again.")
            }
            Error::Input(InputError::MalformedCode) => {
                Problem::bad_request("Enter the 6-digit code from the SMS.")
            }
            Error::Input(_) => {
                gone("This recovery link is not valid. Start again.").with_status(S::BAD_REQUEST)
            }
            other => {
                // Store, gateway, randomness, contention, configuration: the
                // user can only retry; the log gets the detail (no secrets
                // are ever in an Error).
                tracing::error!(error = %other, "recovery step failed");
                Problem::unavailable()
            }
        }
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The `Retry-After` header value, if any.
    pub fn retry_after_header(&self) -> Option<HeaderValue> {
        self.retry_after_secs.map(HeaderValue::from)
    }
}

/// A JSON answer for the API.
impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after_header();
        let mut response = (self.status, axum::Json(&self)).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Whole seconds, rounded up (never tell a user "0 seconds").
pub fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// "30 seconds", "4 minutes", "2 hours".
pub fn in_words(wait: Duration) -> String {
    let secs = whole_seconds(wait).max(1);
    let (n, unit) = match secs {
        0..=90 => (secs, "second"),
        91..=5_400 => (secs.div_ceil(60), "minute"),
        _ => (secs.div_ceil(3600), "hour"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_in_the_largest_sensible_unit_rounded_up() {
        assert_eq!(in_words(Duration::from_millis(200)), "1 second");
        assert_eq!(in_words(Duration::from_secs(30)), "30 seconds");
        assert_eq!(in_words(Duration::from_secs(90)), "90 seconds");
        assert_eq!(in_words(Duration::from_secs(91)), "2 minutes");
        assert_eq!(in_words(Duration::from_secs(5_400)), "90 minutes");
        assert_eq!(in_words(Duration::from_secs(5_401)), "2 hours");
    }

    #[test]
    fn a_spent_flow_says_to_start_again() {
        for error in [
            Error::Expired,
            Error::Superseded,
            Error::AlreadyUsed,
            Error::NotFound,
            Error::TooManySends,
        ] {
            let p = Problem::from_error(&error);
            assert_eq!(p.status, StatusCode::GONE, "{error:?}");
            assert!(p.start_again, "{error:?}");
        }
    }

    #[test]
    fn internal_failures_are_503_without_details() {
        let p = Problem::from_error(&Error::Busy);
        assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!p.message.to_lowercase().contains("busy"), "{}", p.message);
    }
}
