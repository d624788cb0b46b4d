//! Twilio Programmable Messaging: [`TwilioSender`] sends each SMS with one
//! call to the Messages API,
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` on
//! `https://api.twilio.com`.
//!
//! The request is form-encoded: `To` (E.164), `From` (a Twilio number) or
//! `MessagingServiceSid`, and `Body`, with HTTP Basic authentication by the
//! Account SID and its auth token, or by an API key SID and its secret.
//! A `201 Created` answer carries the message `sid`, which becomes the
//! receipt id; an error answer carries Twilio's numeric `code`, mapped to a
//! [`SendErrorKind`] by [`ERROR_CODES`].
//!
//! Credentials are [`SecretString`]s (zeroized, `[redacted]` in `Debug`).
//! Errors name the Twilio error code and the HTTP status only: never the
//! answer's text, a credential or the message body. The sender does not
//! retry; wrap it in the retrying sender for that.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use otp_recovery_gateways::twilio::{TwilioAuth, TwilioFrom, TwilioSender};
//! use otp_recovery::{PhoneNumber, SecretString};
//!
//! let sender = TwilioSender::new(
//!     std::env::var("TWILIO_ACCOUNT_SID")?,
//!     TwilioAuth::Token(SecretString::new(std::env::var("TWILIO_AUTH_TOKEN")?)),
//!     TwilioFrom::Number(PhoneNumber::parse("+15017122661")?),
//! )?;
//! // Or through a Messaging Service, with an API key and a shorter timeout:
//! let sender = TwilioSender::builder(
//!     std::env::var("TWILIO_ACCOUNT_SID")?,
//!     TwilioAuth::ApiKey {
//!         sid: std::env::var("TWILIO_API_KEY_SID")?,
//!         secret: SecretString::new(std::env::var("TWILIO_API_KEY_SECRET")?),
//!     },
//!     TwilioFrom::MessagingService(std::env::var("TWILIO_MESSAGING_SERVICE_SID")?),
//! )
//! .timeout(std::time::Duration::from_secs(5))
//! .build()?;
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

/// The Twilio REST API.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// The gateway's name in error messages.
const GATEWAY: &str = "twilio";
/// The longest secret accepted (Twilio's are 32 characters).
const MAX_SECRET: usize = 256;

/// Twilio error codes and the kind of send error each one is.
///
/// A code not listed here is classified by the HTTP status of the answer
/// (by the shared status mapping); an answer of HTTP 429 or 5xx is always
/// retryable, whatever its code.
pub const ERROR_CODES: &[(u32, SendErrorKind)] = &[
    // The recipient's number is wrong or cannot take SMS.
    (21211, SendErrorKind::InvalidNumber), // invalid 'To' phone number
    (21217, SendErrorKind::InvalidNumber), // phone number does not appear to be valid
    (21265, SendErrorKind::InvalidNumber), // 'To' number cannot be a short code
    (21401, SendErrorKind::InvalidNumber), // invalid phone number
    (21407, SendErrorKind::InvalidNumber), // this number type does not support SMS
    (21614, SendErrorKind::InvalidNumber), // 'To' number is not a valid mobile number
    (30005, SendErrorKind::InvalidNumber), // unknown destination handset
    // The recipient cannot receive it.
    (21610, SendErrorKind::Unreachable), // unsubscribed recipient (replied STOP)
    (21612, SendErrorKind::Unreachable), // 'To' not reachable from this sender
    (30003, SendErrorKind::Unreachable), // unreachable destination handset
    (30004, SendErrorKind::Unreachable), // message blocked
    (30006, SendErrorKind::Unreachable), // landline or unreachable carrier
    // Twilio refused this message.
    (21266, SendErrorKind::Rejected), // 'To' and 'From' are the same number
    (21408, SendErrorKind::Rejected), // region not enabled (geo permissions)
    (21602, SendErrorKind::Rejected), // message body is required
    (21617, SendErrorKind::Rejected), // body exceeds 1600 characters
    (30007, SendErrorKind::Rejected), // filtered by the carrier
    // The account, its credentials or its sender are wrong.
    (10001, SendErrorKind::Configuration), // account is not active
    (20003, SendErrorKind::Configuration), // authentication failed
    (20404, SendErrorKind::Configuration), // resource not found (wrong Account SID)
    (21212, SendErrorKind::Configuration), // invalid 'From' number
    (21219, SendErrorKind::Configuration), // 'To' not verified (trial account)
    (21603, SendErrorKind::Configuration), // 'From' is required
    (21606, SendErrorKind::Configuration), // 'From' cannot send SMS (to this destination)
    (21608, SendErrorKind::Configuration), // unverified number (trial account)
    (21659, SendErrorKind::Configuration), // 'From' is not a Twilio number of the account
    (21701, SendErrorKind::Configuration), // Messaging Service does not exist
    (21703, SendErrorKind::Configuration), // Messaging Service has no usable sender
    (21704, SendErrorKind::Configuration), // Messaging Service contains no phone numbers
    (30034, SendErrorKind::Configuration), // unregistered US A2P 10DLC sender
    // Slow down.
    (14107, SendErrorKind::RateLimited), // SMS send rate limit exceeded
    (20429, SendErrorKind::RateLimited), // too many requests
    (21611, SendErrorKind::RateLimited), // 'From' queue is full
    (30001, SendErrorKind::RateLimited), // queue overflow
    // Twilio is failing.
    (20500, SendErrorKind::Unavailable), // internal server error
    (20503, SendErrorKind::Unavailable), // service unavailable
    (21730, SendErrorKind::Unavailable), // under maintenance
];

/// The kind of send error a Twilio error code is, if it is one of
/// [`ERROR_CODES`].
pub fn error_kind(code: u32) -> Option<SendErrorKind> {
    ERROR_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|&(_, kind)| kind)
}

/// How the sender authenticates.
#[derive(Debug, Clone)]
pub enum TwilioAuth {
    /// The account's auth token, with the Account SID as user name.
    Token(SecretString),
    /// An API key (recommended: it can be revoked alone).
    ApiKey {
        /// The key's SID, `SK` and 32 hex digits.
        sid: String,
        /// The key's secret.
        secret: SecretString,
    },
}

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioFrom {
    /// A Twilio phone number of the account (sent as `From`).
    Number(PhoneNumber),
    /// A Messaging Service SID, `MG` and 32 hex digits (sent as
    /// `MessagingServiceSid`): Twilio picks the sender from its pool.
    MessagingService(String),
}

/// A Twilio setting that was refused. No variant carries the refused value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TwilioConfigError {
    /// The Account SID is not `AC` and 32 hex digits.
    #[error("the Twilio Account SID must be \"AC\" followed by 32 hex digits")]
    AccountSid,
    /// The API key SID is not `SK` and 32 hex digits.
    #[error("the Twilio API key SID must be \"SK\" followed by 32 hex digits")]
    ApiKeySid,
    /// The Messaging Service SID is not `MG` and 32 hex digits.
    #[error("the Twilio Messaging Service SID must be \"MG\" followed by 32 hex digits")]
    MessagingServiceSid,
    /// The auth token or API key secret is empty, too long, or has
    /// characters other than visible ASCII.
    #[error("the Twilio auth token or API key secret must be 1 to 256 visible ASCII characters")]
    Secret,
    /// The base URL was refused (not https, and not http on loopback).
    #[error("the Twilio base URL was refused: {0}")]
    BaseUrl(SendError),
    /// The HTTP client could not be built.
    #[error("the Twilio HTTP client could not be built: {0}")]
    Client(SendError),
}

/// Settings of a [`TwilioSender`]; [`build`](Self::build) checks them.
#[derive(Debug, Clone)]
#[must_use]
pub struct TwilioSenderBuilder {
    account_sid: String,
    auth: TwilioAuth,
    from: TwilioFrom,
    base_url: String,
    timeout: Duration,
}

impl TwilioSenderBuilder {
    /// Sends to another base URL than [`DEFAULT_BASE_URL`]: a regional
    /// edge, a proxy, or a local test server (`http` only on loopback).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The time Twilio has to answer one request (default
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
    /// A [`TwilioConfigError`] naming the first setting refused.
    pub fn build(self) -> Result<TwilioSender, TwilioConfigError> {
        if !is_sid(&self.account_sid, "AC") {
            return Err(TwilioConfigError::AccountSid);
        }
        let secret = match &self.auth {
            TwilioAuth::Token(token) => token,
            TwilioAuth::ApiKey { sid, secret } => {
                if !is_sid(sid, "SK") {
                    return Err(TwilioConfigError::ApiKeySid);
                }
                secret
            }
        };
        let secret = secret.expose_secret();
        if secret.is_empty() || secret.len() > MAX_SECRET || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TwilioConfigError::Secret);
        }
        if let TwilioFrom::MessagingService(sid) = &self.from
            && !is_sid(sid, "MG")
        {
            return Err(TwilioConfigError::MessagingServiceSid);
        }
        let endpoint = Endpoint::parse(&self.base_url).map_err(TwilioConfigError::BaseUrl)?;
        let url = endpoint
            .join(&format!("2010-04-01/Accounts/{}/Messages.json", self.account_sid))
            .map_err(TwilioConfigError::BaseUrl)?;
        let client = http::client(self.timeout).map_err(TwilioConfigError::Client)?;
        Ok(TwilioSender {
            account_sid: self.account_sid,
            auth: self.auth,
            from: self.from,
            url,
            timeout: self.timeout,
            client,
        })
    }
}

/// Sends SMS through Twilio Programmable Messaging.
///
/// See the [module documentation](self) for the request and the error
/// mapping. `Debug` shows the Account SID, the sender and the URL, never a
/// secret.
#[derive(Clone)]
pub struct TwilioSender {
    account_sid: String,
    auth: TwilioAuth,
    from: TwilioFrom,
    url: reqwest::Url,
    timeout: Duration,
    client: reqwest::Client,
}

impl TwilioSender {
    /// A sender to the real API with the default timeout.
    ///
    /// # Errors
    /// A [`TwilioConfigError`] if a SID or the secret is malformed.
    pub fn new(
        account_sid: impl Into<String>,
        auth: TwilioAuth,
        from: TwilioFrom,
    ) -> Result<Self, TwilioConfigError> {
        Self::builder(account_sid, auth, from).build()
    }

    /// A builder, to change the base URL or the timeout.
    pub fn builder(
        account_sid: impl Into<String>,
        auth: TwilioAuth,
        from: TwilioFrom,
    ) -> TwilioSenderBuilder {
        TwilioSenderBuilder {
            account_sid: account_sid.into(),
            auth,
            from,
            base_url: DEFAULT_BASE_URL.to_owned(),
            timeout: http::DEFAULT_TIMEOUT,
        }
    }

    /// The Messages URL this sender posts to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

impl fmt::Debug for TwilioSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioSender")
            .field("account_sid", &self.account_sid)
            .field("auth", &self.auth)
            .field("from", &self.from)
            .field("url", &http::shown(&self.url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SmsSender for TwilioSender {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let (user, secret) = match &self.auth {
            TwilioAuth::Token(token) => (self.account_sid.as_str(), token),
            TwilioAuth::ApiKey { sid, secret } => (sid.as_str(), secret),
        };
        let from = match &self.from {
            TwilioFrom::Number(number) => ("From", number.as_str()),
            TwilioFrom::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        let form = [
            ("To", message.to.as_str()),
            from,
            ("Body", message.body.expose_secret()),
        ];
        // Twilio echoes the body (and so the code) in its answer, which is
        // read into wiped memory.
        let answer = http::post_form(
            GATEWAY,
            &self.client,
            self.url.clone(),
            Some((user, secret.expose_secret())),
            &form,
        )
        .await?;
        interpret(answer.status, answer.retry_after, &answer.body)
    }
}

/// The fields of a Message resource the sender reads.
#[derive(serde::Deserialize)]
struct Created {
    sid: Option<String>,
    status: Option<String>,
    error_code: Option<serde_json::Value>,
}

/// The field of an error answer the sender reads (Twilio also sends
/// `message`, `more_info` and `status`).
#[derive(serde::Deserialize)]
struct ApiError {
    code: Option<serde_json::Value>,
}

/// An error code, as a JSON number or a numeric string.
fn code_of(value: Option<&serde_json::Value>) -> Option<u32> {
    match value? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The outcome of an answer of HTTP `status` with body `answer`.
fn interpret(status: u16, retry_after: Option<Duration>, answer: &[u8]) -> Result<SendReceipt, SendError> {
    if (200..300).contains(&status) {
        let created: Created = serde_json::from_slice(answer).map_err(|_| unreadable(status))?;
        if let Some(code) = code_of(created.error_code.as_ref())
            && matches!(created.status.as_deref(), Some("failed" | "undelivered"))
        {
            return Err(coded_error(code, status, retry_after));
        }
        return match created.sid {
            Some(sid) if is_message_sid(&sid) => Ok(SendReceipt::with_id(sid)),
            _ => Err(unreadable(status)),
        };
    }
    let code = serde_json::from_slice::<ApiError>(answer)
        .ok()
        .and_then(|error| code_of(error.code.as_ref()));
    match code {
        Some(code) => Err(coded_error(code, status, retry_after)),
        None => Err(http::status_error(GATEWAY, status, retry_after)),
    }
}

/// The error of Twilio error `code` in an answer of HTTP `status`: 429 and
/// 5xx are retryable whatever the code; otherwise the code decides, and
/// the status when the code is not known.
fn coded_error(code: u32, status: u16, retry_after: Option<Duration>) -> SendError {
    let by_status = http::status_error(GATEWAY, status, retry_after).kind();
    let kind = if status == 429 || status >= 500 {
        by_status
    } else {
        error_kind(code).unwrap_or(by_status)
    };
    let error = SendError::new(kind, format!("{GATEWAY}: error {code} (HTTP {status})"));
    match retry_after {
        Some(wait) if kind.is_retryable() => error.with_retry_after(wait),
        _ => error,
    }
}

/// A success status with a body that is not a Message resource: the
/// message may have been sent, so this is not retryable (a retry could
/// deliver it twice); the code is voided and the user can ask again.
fn unreadable(status: u16) -> SendError {
    SendError::new(
        SendErrorKind::Rejected,
        format!("{GATEWAY}: unreadable answer (HTTP {status})"),
    )
}

/// `prefix` and 32 hex digits.
fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A Message SID: `SM` or `MM` and 32 hex digits.
fn is_message_sid(sid: &str) -> bool {
    is_sid(sid, "SM") || is_sid(sid, "MM")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn sids_have_their_prefix_and_32_hex_digits() {
        assert!(is_sid(SID, "AC"));
        assert!(is_sid("AC0123456789ABCDEF0123456789ABCDEF", "AC"));
        for bad in [
            "",
            "AC",
            "ac0123456789abcdef0123456789abcdef",
            "SK0123456789abcdef0123456789abcdef",
            "AC0123456789abcdef0123456789abcdeg",
            "AC0123456789abcdef0123456789abcde",
            "AC0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!is_sid(bad, "AC"), "{bad}");
        }
    }

    #[test]
    fn codes_are_listed_once() {
        let mut codes: Vec<u32> = ERROR_CODES.iter().map(|&(c, _)| c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ERROR_CODES.len());
    }

    #[test]
    fn failed_status_in_a_success_answer_is_an_error() {
        let answer = br#"{"sid":"SM0123456789abcdef0123456789abcdef","status":"failed","error_code":21610}"#;
        let err = interpret(201, None, answer).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Unreachable);
        assert!(err.to_string().contains("21610"), "{err}");
    }

    #[test]
    fn codes_may_be_strings_and_unknown_codes_fall_back_to_the_status() {
        let err = interpret(400, None, br#"{"code":"21211","status":400}"#).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::InvalidNumber);
        let err = interpret(400, None, br#"{"code":99999,"status":400}"#).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Rejected);
        assert!(err.to_string().contains("99999"), "{err}");
        let err = interpret(403, None, br#"{"code":99999,"status":403}"#).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Configuration);
    }
}
