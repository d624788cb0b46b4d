//! What the gateway senders share: TLS-only endpoints, one HTTP client with
//! a per-request timeout, and the mapping of HTTP failures to
//! [`SendError`]s.
//!
//! An endpoint must be `https://`; plain `http://` is accepted only for a
//! loopback host (`127.0.0.0/8`, `[::1]`, `localhost`), so tests can run a
//! local server, and refused otherwise, whatever the host configured.

use std::net::IpAddr;
use std::time::Duration;

use zeroize::Zeroizing;

use otp_recovery::sms::{SendError, SendErrorKind};

/// The default time a gateway has to answer one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway endpoint that passed the TLS rule.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(reqwest::Url);

/// The origin and path only: a query may carry a token.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", shown(&self.0))
    }
}

/// A URL as it may be shown: origin and path, never the query.
pub fn shown(url: &reqwest::Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

impl Endpoint {
    /// Parses `url` and applies the rule: `https`, or `http` to loopback.
    ///
    /// # Errors
    /// A non-retryable [`SendErrorKind::Configuration`] error naming the
    /// problem (never the URL's credentials or query).
    pub fn parse(url: &str) -> Result<Self, SendError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| SendError::new(SendErrorKind::Configuration, "the gateway URL does not parse"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(SendError::new(
                SendErrorKind::Configuration,
                "the gateway URL must not carry credentials",
            ));
        }
        match parsed.scheme() {
            "https" => Ok(Endpoint(parsed)),
            "http" if is_loopback(&parsed) => Ok(Endpoint(parsed)),
            "http" => Err(SendError::new(
                SendErrorKind::Configuration,
                "the gateway URL must be https (http is allowed only on loopback, for tests)",
            )),
            _ => Err(SendError::new(
                SendErrorKind::Configuration,
                "the gateway URL must be https",
            )),
        }
    }

    /// The URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }

    /// This endpoint with `path` appended (segments separated by `/`).
    pub fn join(&self, path: &str) -> Result<reqwest::Url, SendError> {
        let mut url = self.0.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                SendError::new(SendErrorKind::Configuration, "the gateway URL cannot take a path")
            })?;
            segments.pop_if_empty();
            for segment in path.split('/').filter(|s| !s.is_empty()) {
                segments.push(segment);
            }
        }
        Ok(url)
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP client of a sender: rustls, no redirects (a gateway answering a
/// send with a redirect is misconfigured, and a redirect must not carry the
/// credentials elsewhere), `timeout` per request.
///
/// # Errors
/// A [`SendErrorKind::Configuration`] error if the TLS stack cannot start.
pub fn client(timeout: Duration) -> Result<reqwest::Client, SendError> {
    reqwest::Client::builder()
        // Never through a proxy from the environment: it could carry an
        // allowed loopback http request, credentials and code, elsewhere.
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("otp-recovery/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| SendError::new(SendErrorKind::Configuration, "the HTTP client could not be built"))
}

/// The [`SendError`] of a transport failure (no answer): a timeout, or the
/// gateway unreachable; both retryable.
pub fn transport_error(gateway: &str, error: &reqwest::Error) -> SendError {
    if error.is_timeout() {
        SendError::new(SendErrorKind::Timeout, format!("{gateway}: no answer in time"))
    } else {
        SendError::new(SendErrorKind::Unavailable, format!("{gateway}: unreachable"))
    }
}

/// The [`SendError`] of an HTTP status the gateway's body did not explain:
/// 429 and 5xx retryable (with `Retry-After` when given), 401/403 a
/// configuration error, other 4xx a rejection.
pub fn status_error(gateway: &str, status: u16, retry_after: Option<Duration>) -> SendError {
    let kind = match status {
        429 => SendErrorKind::RateLimited,
        401 | 403 => SendErrorKind::Configuration,
        500..=599 => SendErrorKind::Unavailable,
        _ => SendErrorKind::Rejected,
    };
    let error = SendError::new(kind, format!("{gateway}: HTTP {status}"));
    match retry_after {
        Some(wait) if kind.is_retryable() => error.with_retry_after(wait),
        _ => error,
    }
}

/// A request body that holds a secret (an SMS body carries the code): the
/// buffer is handed to reqwest whole, and wiped when reqwest drops it.
pub fn secret_body(buffer: Zeroizing<Vec<u8>>) -> reqwest::Body {
    reqwest::Body::from(bytes::Bytes::from_owner(buffer))
}

/// An `application/x-www-form-urlencoded` body of `fields`, encoded into a
/// buffer sized up front (so it never reallocates and leaves no copy
/// behind) that is wiped when dropped.
pub fn secret_form(fields: &[(&str, &str)]) -> Zeroizing<Vec<u8>> {
    let capacity = fields.iter().map(|(k, v)| 3 * (k.len() + v.len()) + 2).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        encode_component(key, &mut out);
        out.push(b'=');
        encode_component(value, &mut out);
    }
    out
}

fn encode_component(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
    }
}

/// Most answer bytes a sender reads: gateways answer a send in well under
/// a kilobyte; anything longer is cut.
pub const MAX_ANSWER: usize = 64 * 1024;

/// A gateway's answer: its status, `Retry-After`, and at most
/// [`MAX_ANSWER`] bytes of its body in memory wiped when dropped (a gateway
/// may echo the message, and so the code: `Debug` shows only its length).
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, in seconds.
    pub retry_after: Option<Duration>,
    /// The body, cut at [`MAX_ANSWER`] bytes.
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// POSTs `form` (which may hold the code: encoded into wiped memory) to
/// `url`, with HTTP Basic auth when given, asking for JSON, and reads the
/// answer. Transport failures become retryable errors named by `gateway`.
///
/// # Errors
/// [`transport_error`] when no answer came.
pub async fn post_form(
    gateway: &str,
    client: &reqwest::Client,
    url: reqwest::Url,
    basic_auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Result<Answer, SendError> {
    let mut request = client
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(secret_body(secret_form(form)));
    if let Some((user, password)) = basic_auth {
        request = request.basic_auth(user, Some(password));
    }
    let mut response = request.send().await.map_err(|e| transport_error(gateway, &e))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let mut body = Zeroizing::new(Vec::new());
    // After a success status the message was accepted: losing the answer
    // then must not be retried (it would send the message twice).
    let lost = |e: reqwest::Error| {
        if (200..300).contains(&status) {
            SendError::new(
                SendErrorKind::Rejected,
                format!("{gateway}: answer lost after acceptance (HTTP {status})"),
            )
        } else {
            transport_error(gateway, &e)
        }
    };
    while let Some(chunk) = response.chunk().await.map_err(lost)? {
        let room = MAX_ANSWER - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ANSWER {
            break;
        }
    }
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// The `Retry-After` header in seconds, if present and numeric.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_or_loopback_endpoints_are_accepted() {
        for ok in [
            "https://api.twilio.com",
            "https://rest.nexmo.com/",
            "http://127.0.0.1:8080",
            "http://127.9.9.9/x",
            "http://[::1]:9000/",
            "http://localhost:3000",
        ] {
            assert!(Endpoint::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.twilio.com",
            "http://10.0.0.1/",
            "http://192.168.1.1",
            "http://[::ffff:10.0.0.1]/",
            "ftp://example.com",
            "https://user:pass@example.com",
            "not a url",
            "http://localhost.evil.example/",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert_eq!(err.kind(), SendErrorKind::Configuration, "{bad}");
            assert!(!err.to_string().contains("pass"), "{err}");
        }
    }

    #[test]
    fn paths_are_joined_segment_by_segment() {
        let e = Endpoint::parse("https://api.example.com/base/").unwrap();
        assert_eq!(
            e.join("2010-04-01/Accounts/AC1/Messages.json").unwrap().as_str(),
            "https://api.example.com/base/2010-04-01/Accounts/AC1/Messages.json"
        );
        let odd = e.join("a b/../c").unwrap();
        assert!(!odd.as_str().contains(".."), "{odd}");
    }

    #[test]
    fn forms_encode_like_browsers_and_never_reallocate() {
        let body = secret_form(&[("To", "+14155550123"), ("Body", "123456 is your code. Ça & 100%")]);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "To=%2B14155550123&Body=123456+is+your+code.+%C3%87a+%26+100%25"
        );
        assert!(body.len() <= body.capacity());
        let worst = "\u{1f600}".repeat(50);
        let b = secret_form(&[("k", &worst)]);
        assert_eq!(
            b.capacity(),
            3 * (1 + worst.len()) + 2,
            "sized for the worst case up front"
        );
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(
            status_error("g", 429, Some(Duration::from_secs(3))).retry_after(),
            Some(Duration::from_secs(3))
        );
        assert!(status_error("g", 503, None).is_retryable());
        assert_eq!(status_error("g", 401, None).kind(), SendErrorKind::Configuration);
        assert_eq!(status_error("g", 400, None).kind(), SendErrorKind::Rejected);
        assert_eq!(
            status_error("g", 400, Some(Duration::from_secs(3))).retry_after(),
            None
        );
    }
}
