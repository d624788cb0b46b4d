//! The Vonage sender against a local server that checks the exact request
//! the SMS API expects and answers with Vonage's own bodies.
//!
//! ```sh
//! cargo test --features vonage --test sms_vonage
//! ```

#![cfg(feature = "vonage")]

use std::time::Duration;

use otp_recovery::sms::{MessageKind, SendError, SendErrorKind, SmsMessage, SmsSender};
use otp_recovery::{PhoneNumber, SecretString};
use otp_recovery_gateways::vonage::{self, VonageConfigError, VonageFrom, VonageSender};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const API_KEY: &str = "a1b2c3d4";
/// Made up, in Vonage's shape (16 letters and digits).
const API_SECRET: &str = "Xy7Qp2Lm9Rt4Vw6Z";
const SENDER_ID: &str = "Acme";
const FROM: &str = "+447700900001";
const TO: &str = "+447700900123";
const TO_DIGITS: &str = "447700900123";
const MESSAGE_ID: &str = "0A0000000123ABCD1";
const CODE: &str = "042917";
/// GSM-7 only, with characters form encoding must escape.
const BODY: &str = "042917 is your Acme code. Never share it: a+b=c & 100%.\n\n@acme.example #042917";
/// Needs UCS-2.
const UNICODE_BODY: &str = "042917 est votre code Acmé ✅ — ne le partagez pas.";

fn message(body: &str) -> SmsMessage {
    SmsMessage::new(
        PhoneNumber::parse(TO).unwrap(),
        SecretString::new(body.to_owned()),
        MessageKind::Code,
    )
}

fn secret() -> SecretString {
    SecretString::new(API_SECRET.to_owned())
}

fn sender_id() -> VonageFrom {
    VonageFrom::alphanumeric(SENDER_ID).unwrap()
}

fn sender(server: &MockServer) -> VonageSender {
    VonageSender::builder(API_KEY, secret(), sender_id())
        .base_url(server.uri())
        .build()
        .unwrap()
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    fn decode(text: &str) -> Option<String> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    let body = std::str::from_utf8(body).ok()?;
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((decode(key)?, decode(value)?))
        })
        .collect()
}

/// Matches a form body with exactly these fields (any order), no others.
struct FormIs(Vec<(String, String)>);

impl FormIs {
    fn new(fields: &[(&str, &str)]) -> Self {
        FormIs(
            fields
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl Match for FormIs {
    fn matches(&self, request: &Request) -> bool {
        let Some(mut got) = parse_form(&request.body) else {
            return false;
        };
        let mut want = self.0.clone();
        got.sort();
        want.sort();
        got == want
    }
}

/// Matches a request without this header.
struct NoHeader(&'static str);

impl Match for NoHeader {
    fn matches(&self, request: &Request) -> bool {
        !request.headers.contains_key(self.0)
    }
}

/// Matches a request whose URL has no query (nothing secret in the URL).
struct NoQuery;

impl Match for NoQuery {
    fn matches(&self, request: &Request) -> bool {
        request.url.query().is_none()
    }
}

/// Vonage's answer to an accepted single-part message.
fn accepted() -> serde_json::Value {
    json!({
        "message-count": "1",
        "messages": [{
            "to": TO_DIGITS,
            "message-id": MESSAGE_ID,
            "status": "0",
            "remaining-balance": "15.53590000",
            "message-price": "0.03330000",
            "network": "23410"
        }]
    })
}

/// Vonage's answer to a refused message.
fn refused(status: &str, text: &str) -> serde_json::Value {
    json!({
        "message-count": "1",
        "messages": [{ "status": status, "error-text": text }]
    })
}

/// No secret, message body or phone number in an error's text or Debug.
fn assert_clean(error: &SendError, also: &[&str]) {
    for text in [error.to_string(), format!("{error:?}")] {
        for secret in [API_SECRET, CODE, BODY, TO_DIGITS].iter().chain(also) {
            assert!(!text.contains(secret), "{text:?} contains {secret:?}");
        }
    }
}

#[tokio::test]
async fn sends_the_exact_request_for_a_gsm_text() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(NoQuery)
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("accept", "application/json"))
        .and(NoHeader("authorization"))
        .and(FormIs::new(&[
            ("api_key", API_KEY),
            ("api_secret", API_SECRET),
            ("from", SENDER_ID),
            ("to", TO_DIGITS),
            ("text", BODY),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(accepted()))
        .expect(1)
        .mount(&server)
        .await;

    let receipt = sender(&server).send(&message(BODY)).await.unwrap();
    assert_eq!(receipt.id.as_deref(), Some(MESSAGE_ID));
}

#[tokio::test]
async fn a_unicode_text_is_sent_as_unicode_from_a_number() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(FormIs::new(&[
            ("api_key", API_KEY),
            ("api_secret", API_SECRET),
            ("from", "447700900001"),
            ("to", TO_DIGITS),
            ("text", UNICODE_BODY),
            ("type", "unicode"),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(accepted()))
        .expect(1)
        .mount(&server)
        .await;

    let sender = VonageSender::builder(
        API_KEY,
        secret(),
        VonageFrom::Number(PhoneNumber::parse(FROM).unwrap()),
    )
    .base_url(server.uri())
    .build()
    .unwrap();
    let receipt = sender.send(&message(UNICODE_BODY)).await.unwrap();
    assert_eq!(receipt.id.as_deref(), Some(MESSAGE_ID));
}

#[tokio::test]
async fn a_multipart_message_is_accepted_when_every_part_is() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "message-count": "2",
            "messages": [
                {"to": TO_DIGITS, "message-id": "0A00000001", "status": "0",
                 "remaining-balance": "15.5", "message-price": "0.0333", "network": "23410"},
                {"to": TO_DIGITS, "message-id": "0A00000002", "status": "0",
                 "remaining-balance": "15.4", "message-price": "0.0333", "network": "23410"}
            ]
        })))
        .mount(&server)
        .await;
    let receipt = sender(&server).send(&message(BODY)).await.unwrap();
    assert_eq!(receipt.id.as_deref(), Some("0A00000001"));

    // One refused part fails the message; since the other part went out, a
    // retry would send it again, so the failure is not retryable.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "message-count": "2",
            "messages": [
                {"to": TO_DIGITS, "message-id": "0A00000001", "status": "0"},
                {"status": "1", "error-text": "Throughput Rate Exceeded - please wait [ 30 ] and retry"}
            ]
        })))
        .mount(&server)
        .await;
    let err = sender(&server).send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Rejected);
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("status 1"), "{err}");
    assert_clean(&err, &["Throughput"]);
}

/// Every status the sender maps, with Vonage's `error-text`, and the
/// expected kind.
const CASES: &[(&str, &str, SendErrorKind)] = &[
    (
        "1",
        "Throughput Rate Exceeded - please wait [ 30 ] and retry",
        SendErrorKind::RateLimited,
    ),
    ("2", "Missing from param", SendErrorKind::Configuration),
    ("3", "Invalid to address", SendErrorKind::Rejected),
    ("4", "Bad Credentials", SendErrorKind::Configuration),
    ("5", "Internal Error", SendErrorKind::Unavailable),
    ("6", "Unroutable message - rejected", SendErrorKind::InvalidNumber),
    ("7", "Number barred.", SendErrorKind::Unreachable),
    ("8", "Account suspended", SendErrorKind::Configuration),
    ("9", "Quota Exceeded - rejected", SendErrorKind::Configuration),
    ("10", "Too many existing binds", SendErrorKind::RateLimited),
    ("11", "Account not enabled for HTTP", SendErrorKind::Configuration),
    ("12", "Message too long", SendErrorKind::Rejected),
    ("13", "Communication failure", SendErrorKind::Unavailable),
    ("14", "Invalid Signature", SendErrorKind::Configuration),
    (
        "15",
        "Illegal Sender Address - rejected",
        SendErrorKind::Configuration,
    ),
    ("16", "Invalid TTL", SendErrorKind::Configuration),
    ("17", "Number unreachable", SendErrorKind::Unreachable),
    ("18", "Too many destinations", SendErrorKind::Rejected),
    ("19", "Facility not allowed", SendErrorKind::Configuration),
    ("20", "Invalid Message Class", SendErrorKind::Configuration),
    ("22", "Invalid network code", SendErrorKind::Configuration),
    (
        "23",
        "Bad callback :: Missing Protocol",
        SendErrorKind::Configuration,
    ),
    (
        "29",
        "Non White-listed Destination - rejected",
        SendErrorKind::Configuration,
    ),
    (
        "32",
        "Signature and API secret disallowed",
        SendErrorKind::Configuration,
    ),
    ("33", "Number de-activated", SendErrorKind::Unreachable),
];

#[test]
fn the_cases_cover_every_mapped_status() {
    let mut cases: Vec<(u16, SendErrorKind)> =
        CASES.iter().map(|&(s, _, k)| (s.parse().unwrap(), k)).collect();
    let mut mapped = vonage::STATUS_CODES.to_vec();
    cases.sort_by_key(|&(s, _)| s);
    mapped.sort_by_key(|&(s, _)| s);
    assert_eq!(cases, mapped);
}

#[tokio::test]
async fn every_mapped_status_gives_its_kind() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for &(status, text, kind) in CASES {
        server.reset().await;
        Mock::given(method("POST"))
            .and(path("/sms/json"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("retry-after", "4")
                    .set_body_json(refused(status, text)),
            )
            .expect(1)
            .mount(&server)
            .await;

        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "status {status}");
        assert_eq!(err.is_retryable(), kind.is_retryable(), "status {status}");
        let wait = kind.is_retryable().then_some(Duration::from_secs(4));
        assert_eq!(err.retry_after(), wait, "status {status}");
        let shown = err.to_string();
        assert!(shown.contains(&format!("status {status} ")), "{shown}");
        assert!(shown.contains("HTTP 200"), "{shown}");
        assert_clean(&err, &[text, API_KEY]);
    }
}

#[tokio::test]
async fn an_unknown_status_is_a_rejection() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(refused("99", "Something new")))
        .mount(&server)
        .await;
    let err = sender(&server).send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Rejected);
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("status 99"), "{err}");
}

#[tokio::test]
async fn http_429_is_rate_limited_with_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount(&server)
        .await;
    let err = sender(&server).send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::RateLimited);
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_clean(&err, &[]);
}

#[tokio::test]
async fn server_errors_are_retryable_whatever_the_body() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for (status, body) in [
        (500, String::new()),
        (502, "<html><body>Bad Gateway</body></html>".to_owned()),
        (503, refused("4", "Bad Credentials").to_string()),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "30")
                    .set_body_string(body),
            )
            .mount(&server)
            .await;
        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Unavailable, "{status}");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        assert_clean(&err, &["Bad Gateway"]);
    }
}

#[tokio::test]
async fn client_errors_are_not_retryable() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for (status, body, kind) in [
        (400, String::new(), SendErrorKind::Rejected),
        (401, "Unauthorized".to_owned(), SendErrorKind::Configuration),
        (403, String::new(), SendErrorKind::Configuration),
        (404, "Not Found".to_owned(), SendErrorKind::Rejected),
        // A status in a non-2xx answer still names the cause.
        (
            400,
            refused("6", "Unroutable message - rejected").to_string(),
            SendErrorKind::InvalidNumber,
        ),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "30")
                    .set_body_string(body),
            )
            .mount(&server)
            .await;
        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{status}");
        assert!(!err.is_retryable());
        assert_eq!(err.retry_after(), None);
        assert_clean(&err, &["Unroutable"]);
    }
}

#[tokio::test]
async fn an_unreadable_success_is_an_error() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for body in [
        "<html>Welcome to the captive portal</html>".to_owned(),
        String::new(),
        json!({"message-count": "0", "messages": []}).to_string(),
        json!({"message-count": "1", "messages": [{"status": "0"}]}).to_string(),
        json!({"message-count": "1", "messages": [{"status": "zero", "message-id": MESSAGE_ID}]}).to_string(),
        json!({"message-count": "1", "messages": [{"status": "0", "message-id": "<script>"}]}).to_string(),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string(body.clone()))
            .mount(&server)
            .await;
        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Rejected, "{body}");
        assert!(err.to_string().contains("unreadable"), "{err}");
        assert_clean(&err, &["captive"]);
    }
}

#[tokio::test]
async fn a_slow_answer_is_a_retryable_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(accepted())
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let sender = VonageSender::builder(API_KEY, secret(), sender_id())
        .base_url(server.uri())
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = sender.send(&message(BODY)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(err.kind(), SendErrorKind::Timeout);
    assert!(err.is_retryable());
    assert_clean(&err, &[]);
}

#[tokio::test]
async fn an_unreachable_gateway_is_retryable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sender = VonageSender::builder(API_KEY, secret(), sender_id())
        .base_url(format!("http://127.0.0.1:{port}"))
        .build()
        .unwrap();
    let err = sender.send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Unavailable);
    assert!(err.is_retryable());
}

#[test]
fn plain_http_is_refused_except_on_loopback() {
    for url in [
        "http://rest.nexmo.com",
        "http://192.168.1.10",
        "ftp://rest.nexmo.com",
        "https://key:secret@rest.nexmo.com",
    ] {
        let err = VonageSender::builder(API_KEY, secret(), sender_id())
            .base_url(url)
            .build()
            .unwrap_err();
        let VonageConfigError::BaseUrl(cause) = &err else {
            panic!("{url}: {err:?}");
        };
        assert_eq!(cause.kind(), SendErrorKind::Configuration);
        assert!(!err.to_string().contains("secret@"), "{err}");
    }
    for url in ["https://rest.nexmo.com", "http://127.0.0.1:9", "http://[::1]:9"] {
        assert!(
            VonageSender::builder(API_KEY, secret(), sender_id())
                .base_url(url)
                .build()
                .is_ok(),
            "{url}"
        );
    }
}

#[test]
fn the_default_url_is_the_real_api() {
    let sender = VonageSender::new(API_KEY, secret(), sender_id()).unwrap();
    assert_eq!(sender.url(), "https://rest.nexmo.com/sms/json");
    assert_eq!(vonage::DEFAULT_BASE_URL, "https://rest.nexmo.com");
}

#[test]
fn malformed_settings_are_refused_with_typed_errors() {
    let s = |text: &str| SecretString::new(text.to_owned());
    let cases = [
        (
            VonageSender::new("", secret(), sender_id()),
            VonageConfigError::ApiKey,
        ),
        (
            VonageSender::new("abc", secret(), sender_id()),
            VonageConfigError::ApiKey,
        ),
        (
            VonageSender::new("a1b2 c3d4", secret(), sender_id()),
            VonageConfigError::ApiKey,
        ),
        (
            VonageSender::new("a1b2&c3d4", secret(), sender_id()),
            VonageConfigError::ApiKey,
        ),
        (
            VonageSender::new(API_KEY, s(""), sender_id()),
            VonageConfigError::ApiSecret,
        ),
        (
            VonageSender::new(API_KEY, s("two words"), sender_id()),
            VonageConfigError::ApiSecret,
        ),
        (
            VonageSender::new(API_KEY, s(&"x".repeat(257)), sender_id()),
            VonageConfigError::ApiSecret,
        ),
        (
            VonageSender::new(
                API_KEY,
                secret(),
                VonageFrom::Alphanumeric("TwelveLetter".to_owned()),
            ),
            VonageConfigError::From,
        ),
        (
            VonageSender::new(API_KEY, secret(), VonageFrom::Alphanumeric("12345".to_owned())),
            VonageConfigError::From,
        ),
    ];
    for (result, expected) in cases {
        let err = result.unwrap_err();
        assert_eq!(err, expected);
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(API_SECRET) && !shown.contains("two words"),
            "{shown}"
        );
    }
    assert_eq!(VonageFrom::alphanumeric("Acme!"), Err(VonageConfigError::From));
}

#[test]
fn debug_shows_no_secret() {
    let sender = VonageSender::new(API_KEY, secret(), sender_id()).unwrap();
    let builder = VonageSender::builder(API_KEY, secret(), sender_id());
    for shown in [
        format!("{sender:?}"),
        format!("{sender:#?}"),
        format!("{builder:?}"),
    ] {
        assert!(!shown.contains(API_SECRET), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(shown.contains(API_KEY), "{shown}");
    }
}
