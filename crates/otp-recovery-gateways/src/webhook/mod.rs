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
//! use otp_recovery_gateways::webhook::WebhookSender;
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
//! (with `Retry-After` in seconds honoured by [`Retrying`](crate::retry::Retrying)),
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
//! [`verify_request`] does steps 1 and 2: it checks the timestamp header
//! against your clock and the signature header against the raw body, in
//! constant time, and returns the signed timestamp. Steps 3 and 4 need your
//! JSON parser and your replay memory; a complete receiver, checked by
//! `cargo test`:
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::{Duration, SystemTime};
//!
//! use otp_recovery_gateways::webhook::{self, TOLERANCE, VerifyError, WebhookSecret};
//! use otp_recovery::SecretString;
//!
//! #[derive(Debug, PartialEq)]
//! enum Refused {
//!     Unverified(VerifyError),
//!     Malformed,
//!     Replay,
//! }
//!
//! /// Ids accepted within the tolerance, with their timestamps.
//! #[derive(Default)]
//! struct SeenIds(HashMap<String, u64>);
//!
//! /// Checks one request; returns the parsed message if it is authentic and new.
//! fn receive(
//!     secret: &WebhookSecret,
//!     timestamp_header: &str,
//!     signature_header: &str,
//!     raw_body: &[u8],
//!     now: SystemTime,
//!     seen: &mut SeenIds,
//! ) -> Result<serde_json::Value, Refused> {
//!     // 1 and 2. A fresh timestamp and a valid signature over the raw bytes.
//!     let timestamp = webhook::verify_request(secret, signature_header, timestamp_header, raw_body, now, TOLERANCE)
//!         .map_err(Refused::Unverified)?;
//!     // 3. Parse only authentic bytes; the signed header must match the body.
//!     let message: serde_json::Value = serde_json::from_slice(raw_body).map_err(|_| Refused::Malformed)?;
//!     if message["timestamp"].as_u64() != Some(timestamp) {
//!         return Err(Refused::Malformed);
//!     }
//!     let id = message["id"].as_str().ok_or(Refused::Malformed)?.to_owned();
//!     // 4. A new id: forget ids past the window, refuse one seen within it.
//!     let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
//!     seen.0.retain(|_, &mut seen_at| seen_at.saturating_add(TOLERANCE.as_secs()) >= now_secs);
//!     if seen.0.contains_key(&id) {
//!         return Err(Refused::Replay);
//!     }
//!     seen.0.insert(id, timestamp);
//!     Ok(message)
//! }
//!
//! // A request as the sender signs it.
//! let secret = WebhookSecret::from(SecretString::new(
//!     "an example secret of at least 32 bytes, from the secret manager".into(),
//! ));
//! let timestamp = "1700000000";
//! let body = br#"{"id":"6f1c0e2a9b8d4c7e5a3f1b2d4c6e8a0b","to":"+14155550123","body":"123456 is your code","kind":"code","timestamp":1700000000}"#;
//! let signed = webhook::sign_request(&secret, timestamp, body);
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_042);
//! let mut seen = SeenIds::default();
//!
//! let message = receive(&secret, timestamp, &signed, body, now, &mut seen).unwrap();
//! assert_eq!(message["to"], "+14155550123");
//!
//! // The same request again is a replay.
//! let later = now + Duration::from_secs(1);
//! assert_eq!(receive(&secret, timestamp, &signed, body, later, &mut seen), Err(Refused::Replay));
//! // A changed body or timestamp breaks the signature.
//! let bad = Err(Refused::Unverified(VerifyError::BadSignature));
//! let tampered = String::from_utf8_lossy(body).replace("123456", "654321");
//! let mut fresh = SeenIds::default();
//! assert_eq!(receive(&secret, timestamp, &signed, tampered.as_bytes(), now, &mut fresh), bad);
//! assert_eq!(receive(&secret, "1700000001", &signed, body, now, &mut fresh), bad);
//! // A request older than the tolerance is refused, even correctly signed.
//! let stale = now + Duration::from_secs(600);
//! assert_eq!(
//!     receive(&secret, timestamp, &signed, body, stale, &mut fresh),
//!     Err(Refused::Unverified(VerifyError::Stale))
//! );
//! // Another secret does not verify.
//! let other = WebhookSecret::from(SecretString::new("another secret, also at least 32 bytes long......".into()));
//! assert_eq!(receive(&other, timestamp, &signed, body, now, &mut fresh), bad);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use zeroize::Zeroizing;

mod signature;

pub use signature::{
    ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, TOLERANCE, VerifyError, sign_request, verify_request,
};

use crate::http::{self, Endpoint};
use otp_recovery::sms::{MessageKind, SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::{MIN_KEY_LEN, SecretString, ServerKey};

const GATEWAY: &str = "webhook";
const ID_BYTES: usize = 16;

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
    /// [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT) per request.
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

    /// The URL requests go to, as configured.
    pub fn endpoint(&self) -> &str {
        self.endpoint.url().as_str()
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
        // A kind added to the core after this adapter was written.
        _ => "other",
    }
}

fn fresh_id() -> Result<String, SendError> {
    let mut raw = [0u8; ID_BYTES];
    getrandom::fill(&mut raw).map_err(|_| {
        SendError::new(
            SendErrorKind::Unavailable,
            "webhook: the operating system random number generator failed",
        )
    })?;
    Ok(hex::encode(raw))
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
        let signature = sign_request(&self.secret, &timestamp_text, &body);

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

    fn secret() -> WebhookSecret {
        WebhookSecret::from(ServerKey::from_bytes(vec![b'k'; 32]).unwrap())
    }

    const TS: &str = "1700000000";
    const BODY: &[u8] = br#"{"a":1}"#;
    /// HMAC-SHA256(b"k" * 32, b"v1.1700000000.{\"a\":1}"), computed with
    /// another implementation (Python's hmac module).
    const VECTOR: &str = "v1=c93f83482288474def74f5fa2e8c5109d721cca819b5489586655c5864e171be";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn signatures_match_an_independent_hmac_and_verify() {
        assert_eq!(sign_request(&secret(), TS, BODY), VECTOR);
        assert_eq!(
            verify_request(&secret(), VECTOR, TS, BODY, at(1_700_000_000), TOLERANCE),
            Ok(1_700_000_000)
        );
    }

    #[test]
    fn timestamps_exactly_the_tolerance_away_pass_and_one_second_more_is_stale() {
        let t = 1_700_000_000;
        for now in [t - 300, t + 300] {
            assert_eq!(
                verify_request(&secret(), VECTOR, TS, BODY, at(now), TOLERANCE),
                Ok(t)
            );
        }
        for now in [t - 301, t + 301] {
            assert_eq!(
                verify_request(&secret(), VECTOR, TS, BODY, at(now), TOLERANCE),
                Err(VerifyError::Stale)
            );
        }
        // A zero tolerance accepts the same second only.
        assert_eq!(
            verify_request(&secret(), VECTOR, TS, BODY, at(t), Duration::ZERO),
            Ok(t)
        );
        assert_eq!(
            verify_request(&secret(), VECTOR, TS, BODY, at(t + 1), Duration::ZERO),
            Err(VerifyError::Stale)
        );
    }

    #[test]
    fn malformed_timestamps_are_refused_before_the_signature() {
        for bad in [
            "",
            "+1700000000",
            " 1700000000",
            "1700000000 ",
            "1.7e9",
            "-1",
            "18446744073709551616",
            "000000000001700000000",
            "１７００００００００",
        ] {
            assert_eq!(
                verify_request(&secret(), VECTOR, bad, BODY, at(1_700_000_000), TOLERANCE),
                Err(VerifyError::MalformedTimestamp),
                "{bad:?}"
            );
        }
        // Twenty digits are read (and then judged stale here).
        assert_eq!(
            verify_request(&secret(), VECTOR, "18446744073709551615", BODY, at(0), TOLERANCE),
            Err(VerifyError::Stale)
        );
    }

    #[test]
    fn malformed_signatures_are_told_apart_from_wrong_ones() {
        let now = at(1_700_000_000);
        let hex = &VECTOR[3..];
        for bad in [
            String::new(),
            hex.to_owned(),
            format!("v2={hex}"),
            format!("V1={hex}"),
            format!("v1={}", &hex[..63]),
            format!("v1={hex}0"),
            format!("v1={}", hex.to_uppercase()),
            format!(" {VECTOR}"),
        ] {
            assert_eq!(
                verify_request(&secret(), &bad, TS, BODY, now, TOLERANCE),
                Err(VerifyError::MalformedSignature),
                "{bad:?}"
            );
        }
        // Each changed hex digit of the tag is a wrong signature.
        for i in 3..VECTOR.len() {
            let mut flipped = VECTOR.as_bytes().to_vec();
            flipped[i] = if flipped[i] == b'0' { b'1' } else { b'0' };
            let flipped = String::from_utf8(flipped).unwrap();
            assert_eq!(
                verify_request(&secret(), &flipped, TS, BODY, now, TOLERANCE),
                Err(VerifyError::BadSignature),
                "digit {i}"
            );
        }
        let other = WebhookSecret::from(ServerKey::from_bytes(vec![b'j'; 32]).unwrap());
        let leading_zero = sign_request(&secret(), "01700000000", BODY);
        for (secret, signature, timestamp, body) in [
            (&secret(), VECTOR, TS, &br#"{"a":2}"#[..]),
            (&secret(), VECTOR, TS, &br#"{"a":1} "#[..]),
            (&secret(), VECTOR, "1700000001", BODY),
            (&secret(), VECTOR, "01700000000", BODY),
            (&secret(), leading_zero.as_str(), TS, BODY),
            (&other, VECTOR, TS, BODY),
        ] {
            assert_eq!(
                verify_request(secret, signature, timestamp, body, now, TOLERANCE),
                Err(VerifyError::BadSignature)
            );
        }
    }

    #[test]
    fn the_sender_signs_what_the_receiver_verifies() {
        let body = br#"{"id":"00","to":"+14155550123","body":"123456","kind":"code","timestamp":5}"#;
        let signature = sign_request(&secret(), "5", body);
        assert_eq!(
            verify_request(&secret(), &signature, "5", body, at(5), TOLERANCE),
            Ok(5)
        );
        for err in [
            VerifyError::MalformedTimestamp,
            VerifyError::Stale,
            VerifyError::MalformedSignature,
            VerifyError::BadSignature,
        ] {
            let text = format!("{err} {err:?}");
            assert!(!text.contains(&signature[3..13]), "{text}");
        }
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
