//! A generic HTTPS webhook: each message is POSTed as JSON to an endpoint
//! the host configures, signed with HMAC-SHA256 so that the receiver can
//! authenticate it and refuse replays.
//!
//! Use it when your SMS gateway sits behind a service of your own, or when
//! no built-in adapter fits: the receiver checks the signature, then hands
//! the message to whatever gateway it likes.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use otp_recovery::sms::webhook::WebhookSender;
//! use otp_recovery::ServerKey;
//!
//! // The shared secret, from your secret manager (at least 32 bytes).
//! let secret = ServerKey::from_bytes(std::env::var("SMS_WEBHOOK_SECRET")?.into_bytes())?;
//! let sender = WebhookSender::new("https://sms.internal.example.com/send", secret)?
//!     .with_timeout(Duration::from_secs(5));
//! # let _ = sender; Ok(()) }
//! ```
//!
//! The endpoint must be `https://`; `http://` is refused unless the host is
//! a loopback address (for tests). Redirects are not followed.
//!
//! # The request
//!
//! One `POST` to the configured URL per send, with these headers:
//!
//! ```text
//! Content-Type: application/json
//! X-Otp-Timestamp: 1700000000
//! X-Otp-Id: 6f1c0e2a9b8d4c7e5a3f1b2d4c6e8a0b
//! X-Otp-Signature: v1=<64 lowercase hex digits>
//! ```
//!
//! and this body, a JSON object with exactly these five members:
//!
//! ```json
//! {"id":"6f1c0e2a9b8d4c7e5a3f1b2d4c6e8a0b","to":"+14155550123","body":"123456 is your code","kind":"code","timestamp":1700000000}
//! ```
//!
//! - `id`: 32 lowercase hex digits, 128 random bits, fresh for each request
//!   (a retry is a new request with a new id); also in `X-Otp-Id`, and
//!   the receipt id the sender returns.
//! - `to`: the recipient in E.164 form.
//! - `body`: the text to send. It may carry a one-time code: treat it as a
//!   secret, and do not log it.
//! - `kind`: `"code"` (carries a code) or `"notice"` (carries no secret).
//! - `timestamp`: when the request was signed, in Unix seconds; the same
//!   value as `X-Otp-Timestamp`.
//!
//! The signature is `v1=` followed by the lowercase hex of
//!
//! ```text
//! HMAC-SHA256(secret, "v1." + X-Otp-Timestamp + "." + raw body bytes)
//! ```
//!
//! Any `2xx` answer means delivered. `429` and `5xx` are retryable failures
//! (with `Retry-After` in seconds honoured by [`Retrying`](super::retry::Retrying)),
//! `401`/`403` a configuration error, any other status a rejection; a
//! receiver that refuses a request (bad signature, replay) should answer
//! `4xx`, so the request is not retried.
//!
//! # Verifying a request (the receiver)
//!
//! 1. Read `X-Otp-Timestamp`: digits only; refuse it if it is more than
//!    5 minutes ([`TOLERANCE`]) before or after your clock.
//! 2. Recompute the HMAC over the **raw body bytes as received**, before
//!    parsing them (parsing and re-serializing changes bytes), and compare
//!    it with `X-Otp-Signature` in constant time. Refuse on mismatch.
//! 3. Only now parse the JSON. Its `timestamp` must equal the header's.
//! 4. Refuse an `id` you have already accepted: that request is a replay.
//!    Remember accepted ids for as long as their timestamp is within the
//!    tolerance; an older replay is refused by step 1. Record the id only
//!    after the signature checked out, so forged requests cannot fill the
//!    list.
//!
//! A complete verifier, checked by `cargo test`:
//!
//! ```
//! use std::collections::HashMap;
//!
//! use hmac::{Hmac, KeyInit, Mac};
//! use sha2::Sha256;
//! use subtle::ConstantTimeEq;
//!
//! const TOLERANCE_SECS: u64 = 300;
//!
//! #[derive(Debug, PartialEq)]
//! enum Refused {
//!     Malformed,
//!     Stale,
//!     BadSignature,
//!     Replay,
//! }
//!
//! /// Ids accepted within the tolerance, with their timestamps.
//! #[derive(Default)]
//! struct SeenIds(HashMap<String, u64>);
//!
//! fn hex(bytes: &[u8]) -> String {
//!     bytes.iter().map(|b| format!("{b:02x}")).collect()
//! }
//!
//! fn signature(secret: &[u8], timestamp: &str, raw_body: &[u8]) -> String {
//!     let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
//!     mac.update(b"v1.");
//!     mac.update(timestamp.as_bytes());
//!     mac.update(b".");
//!     mac.update(raw_body);
//!     format!("v1={}", hex(&mac.finalize().into_bytes()))
//! }
//!
//! /// Checks one request; returns the parsed message if it is authentic and new.
//! fn verify(
//!     secret: &[u8],
//!     timestamp_header: &str,
//!     signature_header: &str,
//!     raw_body: &[u8],
//!     now_unix: u64,
//!     seen: &mut SeenIds,
//! ) -> Result<serde_json::Value, Refused> {
//!     // 1. A fresh timestamp.
//!     if timestamp_header.is_empty() || !timestamp_header.bytes().all(|b| b.is_ascii_digit()) {
//!         return Err(Refused::Malformed);
//!     }
//!     let timestamp: u64 = timestamp_header.parse().map_err(|_| Refused::Malformed)?;
//!     if timestamp.abs_diff(now_unix) > TOLERANCE_SECS {
//!         return Err(Refused::Stale);
//!     }
//!     // 2. The signature over the raw bytes, compared in constant time.
//!     let expected = signature(secret, timestamp_header, raw_body);
//!     if !bool::from(expected.as_bytes().ct_eq(signature_header.as_bytes())) {
//!         return Err(Refused::BadSignature);
//!     }
//!     // 3. Parse only authentic bytes; the signed header must match the body.
//!     let message: serde_json::Value = serde_json::from_slice(raw_body).map_err(|_| Refused::Malformed)?;
//!     if message["timestamp"].as_u64() != Some(timestamp) {
//!         return Err(Refused::Malformed);
//!     }
//!     let id = message["id"].as_str().ok_or(Refused::Malformed)?.to_owned();
//!     // 4. A new id: forget ids past the window, refuse one seen within it.
//!     seen.0.retain(|_, &mut seen_at| seen_at.saturating_add(TOLERANCE_SECS) >= now_unix);
//!     if seen.0.contains_key(&id) {
//!         return Err(Refused::Replay);
//!     }
//!     seen.0.insert(id, timestamp);
//!     Ok(message)
//! }
//!
//! // A request as the sender signs it.
//! let secret = b"an example secret of at least 32 bytes, from the secret manager";
//! let timestamp = "1700000000";
//! let body = br#"{"id":"6f1c0e2a9b8d4c7e5a3f1b2d4c6e8a0b","to":"+14155550123","body":"123456 is your code","kind":"code","timestamp":1700000000}"#;
//! let signed = signature(secret, timestamp, body);
//! let now = 1_700_000_042;
//! let mut seen = SeenIds::default();
//!
//! let message = verify(secret, timestamp, &signed, body, now, &mut seen).unwrap();
//! assert_eq!(message["to"], "+14155550123");
//!
//! // The same request again is a replay.
//! assert_eq!(verify(secret, timestamp, &signed, body, now + 1, &mut seen), Err(Refused::Replay));
//! // A changed body or timestamp breaks the signature.
//! let tampered = String::from_utf8_lossy(body).replace("123456", "654321");
//! let mut fresh = SeenIds::default();
//! assert_eq!(verify(secret, timestamp, &signed, tampered.as_bytes(), now, &mut fresh), Err(Refused::BadSignature));
//! assert_eq!(verify(secret, "1700000001", &signed, body, now, &mut fresh), Err(Refused::BadSignature));
//! // A request older than the tolerance is refused, even correctly signed.
//! assert_eq!(verify(secret, timestamp, &signed, body, now + 600, &mut fresh), Err(Refused::Stale));
//! // Another secret does not verify.
//! let other = b"another secret, also at least 32 bytes long......";
//! assert_eq!(verify(other, timestamp, &signed, body, now, &mut fresh), Err(Refused::BadSignature));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac as _};
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::http::{self, Endpoint};
use super::{MessageKind, SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};
use crate::hex;
use crate::secret::{MIN_KEY_LEN, SecretString, ServerKey, fill_random};

/// The header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Otp-Timestamp";
/// The header carrying the request's id (also the body's `id`).
pub const ID_HEADER: &str = "X-Otp-Id";
/// The header carrying `v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-Otp-Signature";
/// How far from the receiver's clock a timestamp may be: 5 minutes.
pub const TOLERANCE: Duration = Duration::from_secs(300);

const GATEWAY: &str = "webhook";
const ID_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The secret shared with the receiver, which signs every request: a
/// [`ServerKey`], or a [`SecretString`] of at least 32 bytes (checked by
/// [`WebhookSender::new`]). Zeroized on drop, redacted in `Debug`.
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl From<ServerKey> for WebhookSecret {
    fn from(key: ServerKey) -> Self {
        // `key` zeroizes itself when it drops at the end of this call.
        WebhookSecret(Zeroizing::new(key.expose_secret().to_vec()))
    }
}

impl From<SecretString> for WebhookSecret {
    fn from(text: SecretString) -> Self {
        WebhookSecret(Zeroizing::new(text.expose_secret().as_bytes().to_vec()))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Sends each message as a signed JSON `POST`. See the
/// [module documentation](self) for the format and its verification.
#[derive(Clone)]
pub struct WebhookSender {
    endpoint: Endpoint,
    secret: Arc<WebhookSecret>,
    client: reqwest::Client,
    timeout: Duration,
}

impl WebhookSender {
    /// A sender posting to `url`, signing with `secret`, with a timeout of
    /// [`DEFAULT_TIMEOUT`](http::DEFAULT_TIMEOUT) per request.
    ///
    /// # Errors
    /// A [`SendErrorKind::Configuration`] error if `url` does not parse, is
    /// not `https` (or `http` to a loopback host), or carries credentials;
    /// if the secret is shorter than 32 bytes; or if the TLS stack cannot
    /// start. The error names neither the secret nor the URL's query.
    pub fn new(url: &str, secret: impl Into<WebhookSecret>) -> Result<Self, SendError> {
        let secret = secret.into();
        if secret.0.len() < MIN_KEY_LEN {
            return Err(SendError::new(
                SendErrorKind::Configuration,
                format!("the webhook secret must be at least {MIN_KEY_LEN} bytes"),
            ));
        }
        let endpoint = Endpoint::parse(url)?;
        Ok(WebhookSender {
            endpoint,
            secret: Arc::new(secret),
            client: http::client(http::DEFAULT_TIMEOUT)?,
            timeout: http::DEFAULT_TIMEOUT,
        })
    }

    /// Sets the time one request may take, from connecting to the end of
    /// the answer; past it the send fails with [`SendErrorKind::Timeout`].
    ///
    /// # Panics
    /// If `timeout` is zero.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "the webhook timeout must be above zero");
        self.timeout = timeout;
        self
    }

    /// The time one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `v1=` and the hex HMAC of `"v1." + timestamp + "." + body`.
    fn sign(&self, timestamp: &str, body: &[u8]) -> Result<String, SendError> {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.secret.0)
            .map_err(|_| SendError::new(SendErrorKind::Configuration, "webhook: unusable secret"))?;
        mac.update(b"v1.");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity(3 + 2 * tag.len());
        out.push_str("v1=");
        hex::encode_into(&tag, &mut out);
        Ok(out)
    }
}

/// Prints the endpoint's origin and the timeout; never the secret, the
/// URL's path or query.
impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("origin", &self.endpoint.url().origin().ascii_serialization())
            .field("timeout", &self.timeout)
            .field("secret", &self.secret)
            .finish()
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    to: &'a str,
    body: &'a str,
    kind: &'static str,
    timestamp: u64,
}

fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Code => "code",
        MessageKind::Notice => "notice",
    }
}

fn fresh_id() -> Result<String, SendError> {
    let mut raw = [0u8; ID_BYTES];
    fill_random(&mut raw).map_err(|_| {
        SendError::new(
            SendErrorKind::Unavailable,
            "webhook: the operating system random number generator failed",
        )
    })?;
    let mut id = String::with_capacity(2 * ID_BYTES);
    hex::encode_into(&raw, &mut id);
    Ok(id)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[async_trait]
impl SmsSender for WebhookSender {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let id = fresh_id()?;
        let timestamp = unix_now();
        let timestamp_text = timestamp.to_string();
        let text = message.body.expose_secret();
        let to = message.to.as_str();
        let payload = Payload {
            id: &id,
            to,
            body: text,
            kind: kind_name(message.kind),
            timestamp,
        };
        // Room for the worst case (every character escaped as \uXXXX), so
        // the buffer never reallocates and leaves no unzeroized copy behind.
        let capacity = 128 + id.len() + 6 * (to.len() + text.len()) + timestamp_text.len();
        let mut body = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer(&mut *body, &payload)
            .map_err(|_| SendError::new(SendErrorKind::Rejected, "webhook: the message cannot be encoded"))?;
        let signature = self.sign(&timestamp_text, &body)?;

        // reqwest takes the buffer itself (moved, not copied) and wipes it
        // when it drops it.
        let request = self
            .client
            .post(self.endpoint.url().clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, &timestamp_text)
            .header(ID_HEADER, &id)
            .header(SIGNATURE_HEADER, signature)
            .body(http::secret_body(body));
        let response = request
            .send()
            .await
            .map_err(|error| http::transport_error(GATEWAY, &error))?;
        let status = response.status();
        if status.is_success() {
            Ok(SendReceipt::with_id(id))
        } else {
            Err(http::status_error(
                GATEWAY,
                status.as_u16(),
                http::retry_after(response.headers()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_and_plain_http_are_refused_without_leaking() {
        let short = SecretString::new("too short, only 31 bytes here..".into());
        assert_eq!(short.expose_secret().len(), 31);
        let err = WebhookSender::new("https://example.com/hook", short).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Configuration);
        assert!(!err.to_string().contains("too short"), "{err}");

        let key = || ServerKey::from_bytes(vec![7; 32]).unwrap();
        let err = WebhookSender::new("http://sms.example.com/hook", key()).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Configuration);
        assert!(WebhookSender::new("http://127.0.0.1:9/hook", key()).is_ok());
    }

    #[test]
    fn ids_are_128_bit_lowercase_hex_and_fresh() {
        let (a, b) = (fresh_id().unwrap(), fresh_id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_ne!(a, b);
    }

    #[test]
    fn debug_shows_the_origin_only() {
        let secret = SecretString::new("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t".into());
        let sender = WebhookSender::new("https://sms.example.com/hook/path?token=q", secret).unwrap();
        let dbg = format!("{sender:?}");
        assert!(dbg.contains("https://sms.example.com"), "{dbg}");
        for hidden in ["s3cr3t", "/hook", "token"] {
            assert!(!dbg.contains(hidden), "{dbg}");
        }
    }
}
