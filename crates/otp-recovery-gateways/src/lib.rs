//! HTTPS SMS gateways for [`otp_recovery`]: each implements
//! [`otp_recovery::sms::SmsSender`] over TLS (reqwest with rustls) and
//! never logs a secret.
//!
//! - `twilio`: Twilio Programmable Messaging (feature `twilio`);
//! - `vonage`: the Vonage SMS API (feature `vonage`);
//! - `webhook`: a generic HTTPS webhook signed with HMAC-SHA256 (feature
//!   `webhook`);
//! - [`retry`]: a sender that retries another within a deadline.
//!
//! reqwest's types are private to this crate.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The gateways' shared HTTPS plumbing; each gateway uses part of it.
#[cfg_attr(
    not(all(feature = "twilio", feature = "vonage", feature = "webhook")),
    allow(dead_code)
)]
mod http;

pub mod retry;

#[cfg(feature = "twilio")]
#[cfg_attr(docsrs, doc(cfg(feature = "twilio")))]
pub mod twilio;

#[cfg(feature = "vonage")]
#[cfg_attr(docsrs, doc(cfg(feature = "vonage")))]
pub mod vonage;

#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub mod webhook;

/// How long one gateway request may take unless configured otherwise.
pub use http::DEFAULT_TIMEOUT;
