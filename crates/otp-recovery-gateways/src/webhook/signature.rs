//! The request signature: how the sender signs a request and the receiver
//! checks it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;

use super::WebhookSecret;

/// The header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Otp-Timestamp";
/// The header carrying the request's id (also the body's `id`).
pub const ID_HEADER: &str = "X-Otp-Id";
/// The header carrying `v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-Otp-Signature";
/// How far from the receiver's clock a timestamp may be: 5 minutes.
pub const TOLERANCE: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

/// Why [`verify_request`] refused a request. Names the check that failed,
/// never the secret or the expected signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The timestamp header is not a decimal number of Unix seconds.
    #[error("the webhook timestamp header is not a number of seconds")]
    MalformedTimestamp,
    /// The timestamp is further from the receiver's clock than the
    /// tolerance: a delayed or replayed request.
    #[error("the webhook request is older or newer than the tolerance allows")]
    Stale,
    /// The signature header is not `v1=` and 64 lowercase hex digits.
    #[error("the webhook signature header is malformed")]
    MalformedSignature,
    /// The signature does not match the timestamp and body under the secret.
    #[error("the webhook signature does not match")]
    BadSignature,
}

/// Longest timestamp header accepted: `u64::MAX` has 20 digits.
const MAX_TIMESTAMP_DIGITS: usize = 20;
/// `v1=` and the hex of an HMAC-SHA256 tag.
const SIGNATURE_PREFIX: &str = "v1=";
const TAG_LEN: usize = 32;

/// The HMAC of `"v1." + timestamp + "." + body` under `secret`, not yet
/// finalized.
fn request_mac(secret: &WebhookSecret, timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC hashes long keys and pads short ones: every length is accepted.
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(&secret.0).expect("HMAC accepts keys of any length");
    mac.update(b"v1.");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Otp-Signature` value of a request: `v1=` and the lowercase hex of
/// `HMAC-SHA256(secret, "v1." + timestamp + "." + body)`.
///
/// [`WebhookSender`](super::WebhookSender) signs every request with it; a receiver needs it only
/// to build requests in its own tests (it verifies with [`verify_request`]).
pub fn sign_request(secret: &WebhookSecret, timestamp: &str, body: &[u8]) -> String {
    let tag = request_mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = String::with_capacity(SIGNATURE_PREFIX.len() + 2 * TAG_LEN);
    out.push_str(SIGNATURE_PREFIX);
    out.push_str(&hex::encode(tag));
    out
}

/// Verifies a request on the receiving side: steps 1 and 2 of the
/// [module documentation](super#verifying-a-request-the-receiver).
///
/// - `timestamp_header` (`X-Otp-Timestamp`) must be 1 to 20 ASCII digits,
///   and at most `tolerance` ([`TOLERANCE`] is the documented value) before
///   or after `now`, the receiver's clock; exactly `tolerance` apart is
///   accepted.
/// - `signature_header` (`X-Otp-Signature`) must be `v1=` and 64 lowercase
///   hex digits, and equal the HMAC-SHA256 under `secret` of the timestamp
///   header and `raw_body`, **the body bytes as received**, before any
///   parsing. The tags are compared in constant time.
///
/// Returns the signed timestamp, in Unix seconds, which the body's
/// `timestamp` must equal. Replays within the tolerance are the caller's to
/// refuse, by the request's `id` (step 4).
///
/// # Errors
/// A [`VerifyError`] naming the first check that failed; the timestamp is
/// checked before the signature.
pub fn verify_request(
    secret: &WebhookSecret,
    signature_header: &str,
    timestamp_header: &str,
    raw_body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<u64, VerifyError> {
    let digits_ok = (1..=MAX_TIMESTAMP_DIGITS).contains(&timestamp_header.len())
        && timestamp_header.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok {
        return Err(VerifyError::MalformedTimestamp);
    }
    let timestamp: u64 = timestamp_header
        .parse()
        .map_err(|_| VerifyError::MalformedTimestamp)?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if timestamp.abs_diff(now_secs) > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    let mut tag = [0u8; TAG_LEN];
    signature_header
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(())
        // Lowercase only: a signature has exactly one text form.
        .and_then(|text| {
            let lowercase = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            lowercase
                .then_some(())
                .and_then(|()| hex::decode_to_slice(text, &mut tag).ok())
                .ok_or(())
        })
        .map_err(|()| VerifyError::MalformedSignature)?;
    request_mac(secret, timestamp_header, raw_body)
        .verify_slice(&tag)
        .map_err(|_| VerifyError::BadSignature)?;
    Ok(timestamp)
}
