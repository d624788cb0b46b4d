//! The Vonage (formerly Nexmo) SMS API: [`VonageSender`] sends each SMS
//! with one call to `POST https://rest.nexmo.com/sms/json`.
//!
//! The request is form-encoded: `api_key`, `api_secret`, `from` (a Vonage
//! number or an alphanumeric sender id), `to` (the E.164 digits without
//! `+`), `text`, and `type=unicode` when the text is not GSM-7. The
//! credentials travel in the body, never in the URL. The answer lists one
//! entry per SMS part, each with a `status`: `"0"` is accepted (its
//! `message-id` becomes the receipt id), any other status is mapped to a
//! [`SendErrorKind`] by [`STATUS_CODES`].
//!
//! The API secret is a [`SecretString`] (zeroized, `[redacted]` in
//! `Debug`). Errors name the Vonage status and the HTTP status only: never
//! the answer's `error-text`, a credential or the message body. The sender
//! does not retry; wrap it in the retrying sender for that.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use otp_recovery::SecretString;
//! use otp_recovery_gateways::vonage::{VonageFrom, VonageSender};
//!
//! let sender = VonageSender::new(
//!     std::env::var("VONAGE_API_KEY")?,
//!     SecretString::new(std::env::var("VONAGE_API_SECRET")?),
//!     VonageFrom::alphanumeric("Acme")?,
//! )?;
//! # let _ = sender;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::http::{self, Endpoint};
use otp_recovery::PhoneNumber;
use otp_recovery::SecretString;
use otp_recovery::sms::{SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::{Encoding, Segments};

/// The Vonage SMS API.
pub const DEFAULT_BASE_URL: &str = "https://rest.nexmo.com";

/// The gateway's name in error messages.
const GATEWAY: &str = "vonage";
/// The longest secret accepted (Vonage's are 16 characters).
const MAX_SECRET: usize = 256;
/// The longest alphanumeric sender id.
const MAX_ALPHANUMERIC: usize = 11;

/// Vonage SMS API statuses (other than `0`, accepted) and the kind of send
/// error each one is. An unlisted status is [`SendErrorKind::Rejected`].
pub const STATUS_CODES: &[(u16, SendErrorKind)] = &[
    (1, SendErrorKind::RateLimited),   // throttled: faster than the account's limit
    (2, SendErrorKind::Configuration), // missing parameters
    (3, SendErrorKind::Rejected),      // invalid parameters
    (4, SendErrorKind::Configuration), // invalid credentials
    (5, SendErrorKind::Unavailable),   // internal error
    (6, SendErrorKind::InvalidNumber), // invalid message: unrecognized number prefix
    (7, SendErrorKind::Unreachable),   // number barred
    (8, SendErrorKind::Configuration), // partner account barred (suspended)
    (9, SendErrorKind::Configuration), // partner quota violation: insufficient credit
    (10, SendErrorKind::RateLimited),  // too many existing binds
    (11, SendErrorKind::Configuration), // account not enabled for HTTP
    (12, SendErrorKind::Rejected),     // message too long
    (13, SendErrorKind::Unavailable),  // communication failure
    (14, SendErrorKind::Configuration), // invalid signature
    (15, SendErrorKind::Configuration), // invalid sender address
    (16, SendErrorKind::Configuration), // invalid TTL
    (17, SendErrorKind::Unreachable),  // number unreachable
    (18, SendErrorKind::Rejected),     // too many destinations
    (19, SendErrorKind::Configuration), // facility not allowed
    (20, SendErrorKind::Configuration), // invalid message class
    (22, SendErrorKind::Configuration), // invalid network code
    (23, SendErrorKind::Configuration), // invalid callback URL
    (29, SendErrorKind::Configuration), // non-whitelisted destination (trial account)
    (32, SendErrorKind::Configuration), // signature and API secret disallowed
    (33, SendErrorKind::Unreachable),  // number de-activated
];

/// The kind of send error a Vonage status is, if it is one of
/// [`STATUS_CODES`].
pub fn status_kind(status: u16) -> Option<SendErrorKind> {
    STATUS_CODES
        .iter()
        .find(|(s, _)| *s == status)
        .map(|&(_, kind)| kind)
}

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VonageFrom {
    /// A Vonage virtual number of the account (sent as its digits, without
    /// `+`).
    Number(PhoneNumber),
    /// An alphanumeric sender id, where the destination country allows it;
    /// build it with [`VonageFrom::alphanumeric`].
    Alphanumeric(String),
}

impl VonageFrom {
    /// An alphanumeric sender id: 1 to 11 ASCII letters, digits and spaces,
    /// with at least one letter.
    ///
    /// # Errors
    /// [`VonageConfigError::From`] otherwise.
    pub fn alphanumeric(id: impl Into<String>) -> Result<Self, VonageConfigError> {
        let id = id.into();
        if is_alphanumeric_sender(&id) {
            Ok(VonageFrom::Alphanumeric(id))
        } else {
            Err(VonageConfigError::From)
        }
    }

    fn as_field(&self) -> &str {
        match self {
            VonageFrom::Number(number) => digits(number),
            VonageFrom::Alphanumeric(id) => id,
        }
    }
}

/// A Vonage setting that was refused. No variant carries the refused value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VonageConfigError {
    /// The API key is not 4 to 32 ASCII letters and digits.
    #[error("the Vonage API key must be 4 to 32 ASCII letters and digits")]
    ApiKey,
    /// The API secret is empty, too long, or has characters other than
    /// visible ASCII.
    #[error("the Vonage API secret must be 1 to 256 visible ASCII characters")]
    ApiSecret,
    /// The alphanumeric sender id is not 1 to 11 ASCII letters, digits and
    /// spaces with at least one letter.
    #[error("the Vonage sender id must be 1 to 11 ASCII letters, digits and spaces, with a letter")]
    From,
    /// The base URL was refused (not https, and not http on loopback).
    #[error("the Vonage base URL was refused: {0}")]
    BaseUrl(SendError),
    /// The HTTP client could not be built.
    #[error("the Vonage HTTP client could not be built: {0}")]
    Client(SendError),
}

/// Settings of a [`VonageSender`]; [`build`](Self::build) checks them.
#[derive(Debug, Clone)]
#[must_use]
pub struct VonageSenderBuilder {
    api_key: String,
    api_secret: SecretString,
    from: VonageFrom,
    base_url: String,
    timeout: Duration,
}

impl VonageSenderBuilder {
    /// Sends to another base URL than [`DEFAULT_BASE_URL`]: a proxy, or a
    /// local test server (`http` only on loopback). `/sms/json` is appended.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The time Vonage has to answer one request (default
    /// [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT)).
    ///
    /// # Panics
    /// If `timeout` is zero (every send would time out).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "a gateway timeout must be positive");
        self.timeout = timeout;
        self
    }

    /// Checks the settings and builds the sender.
    ///
    /// # Errors
    /// A [`VonageConfigError`] naming the first setting refused.
    pub fn build(self) -> Result<VonageSender, VonageConfigError> {
        let key_ok =
            (4..=32).contains(&self.api_key.len()) && self.api_key.bytes().all(|b| b.is_ascii_alphanumeric());
        if !key_ok {
            return Err(VonageConfigError::ApiKey);
        }
        let secret = self.api_secret.expose_secret();
        if secret.is_empty() || secret.len() > MAX_SECRET || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(VonageConfigError::ApiSecret);
        }
        if let VonageFrom::Alphanumeric(id) = &self.from
            && !is_alphanumeric_sender(id)
        {
            return Err(VonageConfigError::From);
        }
        let endpoint = Endpoint::parse(&self.base_url).map_err(VonageConfigError::BaseUrl)?;
        let url = endpoint.join("sms/json").map_err(VonageConfigError::BaseUrl)?;
        let client = http::client(self.timeout).map_err(VonageConfigError::Client)?;
        Ok(VonageSender {
            api_key: self.api_key,
            api_secret: self.api_secret,
            from: self.from,
            url,
            timeout: self.timeout,
            client,
        })
    }
}

/// Sends SMS through the Vonage SMS API.
///
/// See the [module documentation](self) for the request and the status
/// mapping. `Debug` shows the API key, the sender and the URL, never the
/// secret.
#[derive(Clone)]
pub struct VonageSender {
    api_key: String,
    api_secret: SecretString,
    from: VonageFrom,
    url: reqwest::Url,
    timeout: Duration,
    client: reqwest::Client,
}

impl VonageSender {
    /// A sender to the real API with the default timeout.
    ///
    /// # Errors
    /// A [`VonageConfigError`] if the key, the secret or the sender is
    /// malformed.
    pub fn new(
        api_key: impl Into<String>,
        api_secret: SecretString,
        from: VonageFrom,
    ) -> Result<Self, VonageConfigError> {
        Self::builder(api_key, api_secret, from).build()
    }

    /// A builder, to change the base URL or the timeout.
    pub fn builder(
        api_key: impl Into<String>,
        api_secret: SecretString,
        from: VonageFrom,
    ) -> VonageSenderBuilder {
        VonageSenderBuilder {
            api_key: api_key.into(),
            api_secret,
            from,
            base_url: DEFAULT_BASE_URL.to_owned(),
            timeout: http::DEFAULT_TIMEOUT,
        }
    }

    /// The URL this sender posts to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

impl fmt::Debug for VonageSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VonageSender")
            .field("api_key", &self.api_key)
            .field("api_secret", &self.api_secret)
            .field("from", &self.from)
            .field("url", &http::shown(&self.url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SmsSender for VonageSender {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let text = message.body.expose_secret();
        let mut form = vec![
            ("api_key", self.api_key.as_str()),
            ("api_secret", self.api_secret.expose_secret()),
            ("from", self.from.as_field()),
            ("to", digits(&message.to)),
            ("text", text),
        ];
        if Segments::of(text).encoding != Encoding::Gsm7 {
            form.push(("type", "unicode"));
        }
        let answer = http::post_form(GATEWAY, &self.client, self.url.clone(), None, &form).await?;
        interpret(answer.status, answer.retry_after, &answer.body)
    }
}

/// The answer: one entry per SMS part.
#[derive(serde::Deserialize)]
struct Answer {
    messages: Vec<Part>,
}

/// The fields of one part the sender reads (it ignores `error-text`,
/// prices and balances).
#[derive(serde::Deserialize)]
struct Part {
    status: serde_json::Value,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
}

impl Part {
    /// The status, sent as a numeric string (or, leniently, a number).
    fn status(&self) -> Option<u16> {
        match &self.status {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    }
}

/// The outcome of an answer of HTTP `status` with body `answer`.
fn interpret(status: u16, retry_after: Option<Duration>, answer: &[u8]) -> Result<SendReceipt, SendError> {
    let success = (200..300).contains(&status);
    if !success && (status == 429 || status >= 500) {
        return Err(http::status_error(GATEWAY, status, retry_after));
    }
    let parts = match serde_json::from_slice::<Answer>(answer) {
        Ok(answer) if !answer.messages.is_empty() => answer.messages,
        _ if success => return Err(unreadable(status)),
        _ => return Err(http::status_error(GATEWAY, status, retry_after)),
    };
    let mut id = None;
    let any_sent = success && parts.iter().any(|p| p.status() == Some(0));
    for part in &parts {
        match part.status() {
            Some(0) if success => {
                if id.is_none() {
                    id = part.message_id.as_deref().filter(|id| is_message_id(id));
                }
            }
            Some(0) => return Err(http::status_error(GATEWAY, status, retry_after)),
            // Another part already went out: a retry would send it again,
            // so a failure a retry could help becomes one it cannot.
            Some(code) if any_sent && status_error(code, status, retry_after).is_retryable() => {
                let error = status_error(code, status, retry_after);
                return Err(SendError::new(
                    SendErrorKind::Rejected,
                    format!("{error} after a part was sent"),
                ));
            }
            Some(code) => return Err(status_error(code, status, retry_after)),
            None => return Err(unreadable(status)),
        }
    }
    id.map(SendReceipt::with_id).ok_or_else(|| unreadable(status))
}

/// The error of Vonage status `code` in an answer of HTTP `status`.
fn status_error(code: u16, status: u16, retry_after: Option<Duration>) -> SendError {
    let kind = status_kind(code).unwrap_or(SendErrorKind::Rejected);
    let error = SendError::new(kind, format!("{GATEWAY}: status {code} (HTTP {status})"));
    match retry_after {
        Some(wait) if kind.is_retryable() => error.with_retry_after(wait),
        _ => error,
    }
}

/// A success status with a body that is not an SMS API answer: the
/// endpoint is not (or not only) Vonage; not retryable: the message may have gone out.
fn unreadable(status: u16) -> SendError {
    SendError::new(
        SendErrorKind::Rejected,
        format!("{GATEWAY}: unreadable answer (HTTP {status})"),
    )
}

/// A message id: 1 to 64 ASCII letters, digits and dashes.
fn is_message_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The E.164 digits, without `+`.
fn digits(number: &PhoneNumber) -> &str {
    number.as_str().trim_start_matches('+')
}

fn is_alphanumeric_sender(id: &str) -> bool {
    (1..=MAX_ALPHANUMERIC).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && id.bytes().any(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_listed_once_and_never_zero() {
        let mut codes: Vec<u16> = STATUS_CODES.iter().map(|&(c, _)| c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), STATUS_CODES.len());
        assert!(!codes.contains(&0));
    }

    #[test]
    fn sender_ids_are_checked() {
        for ok in ["Acme", "Acme Bank", "A1", "ABCDEFGHIJK"] {
            assert!(VonageFrom::alphanumeric(ok).is_ok(), "{ok}");
        }
        for bad in ["", "12345", "ABCDEFGHIJKL", "Acme!", "Açme", "Ac\nme"] {
            assert_eq!(
                VonageFrom::alphanumeric(bad),
                Err(VonageConfigError::From),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_part_must_be_accepted() {
        let answer = br#"{"message-count":"2","messages":[
            {"to":"447700900000","message-id":"0A0000000123ABCD1","status":"0"},
            {"status":"9","error-text":"Quota Exceeded - rejected"}]}"#;
        let err = interpret(200, None, answer).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Configuration);
        assert!(err.to_string().contains("status 9"), "{err}");
        assert!(!err.to_string().contains("Quota"), "{err}");
    }

    #[test]
    fn a_retryable_failure_after_a_sent_part_is_not_retried() {
        let answer = br#"{"message-count":"2","messages":[
            {"to":"447700900000","message-id":"0A0000000123ABCD1","status":"0"},
            {"status":"1","error-text":"Throughput Rate Exceeded"}]}"#;
        let err = interpret(200, None, answer).unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains("status 1"), "{err}");
    }

    #[test]
    fn numeric_statuses_and_unknown_statuses() {
        let ok = br#"{"message-count":"1","messages":[{"message-id":"0A0000000123ABCD1","status":0}]}"#;
        assert_eq!(
            interpret(200, None, ok).unwrap().id.as_deref(),
            Some("0A0000000123ABCD1")
        );
        let odd = br#"{"message-count":"1","messages":[{"status":"99","error-text":"?"}]}"#;
        assert_eq!(
            interpret(200, None, odd).unwrap_err().kind(),
            SendErrorKind::Rejected
        );
    }
}
