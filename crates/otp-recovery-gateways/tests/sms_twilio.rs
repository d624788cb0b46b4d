//! The Twilio sender against a local server that checks the exact request
//! the Messages API expects and answers with Twilio's own bodies.
//!
//! ```sh
//! cargo test --features twilio --test sms_twilio
//! ```

#![cfg(feature = "twilio")]

use std::time::Duration;

use otp_recovery::sms::{MessageKind, SendError, SendErrorKind, SmsMessage, SmsSender};
use otp_recovery::{PhoneNumber, SecretString};
use otp_recovery_gateways::twilio::{self, TwilioAuth, TwilioConfigError, TwilioFrom, TwilioSender};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// Made up, in Twilio's shape (32 hex digits).
const AUTH_TOKEN: &str = "5f1e2d3c4b5a69788796a5b4c3d2e1f0";
const API_KEY_SID: &str = "SK00112233445566778899aabbccddeeff";
const API_KEY_SECRET: &str = "Zq8vN3rT6yW1uI4oP7aS0dF2gH5jK9lX";
const SERVICE_SID: &str = "MGffeeddccbbaa99887766554433221100";
const MESSAGE_SID: &str = "SM9876543210fedcba9876543210fedcba";
const FROM: &str = "+15017122661";
const TO: &str = "+14155550123";
const CODE: &str = "042917";
/// Characters that form encoding must escape: `+`, `#`, `@`, `&`, `=`,
/// newlines, and non-ASCII text.
const BODY: &str = "042917 is your Acme code. Never share it: a+b=c & 100%.\n\n@acme.example #042917";
const UNICODE_BODY: &str = "042917 est votre code Acmé ✅ — ne le partagez pas.";

fn messages_path() -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
}

fn message(body: &str) -> SmsMessage {
    SmsMessage::new(
        PhoneNumber::parse(TO).unwrap(),
        SecretString::new(body.to_owned()),
        MessageKind::Code,
    )
}

fn token() -> TwilioAuth {
    TwilioAuth::Token(SecretString::new(AUTH_TOKEN.to_owned()))
}

fn from_number() -> TwilioFrom {
    TwilioFrom::Number(PhoneNumber::parse(FROM).unwrap())
}

fn sender(server: &MockServer) -> TwilioSender {
    TwilioSender::builder(ACCOUNT_SID, token(), from_number())
        .base_url(server.uri())
        .build()
        .unwrap()
}

/// Standard base64 (RFC 4648, with padding), to write the expected
/// `Authorization` header independently of the sender's encoder.
fn base64(input: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(&format!("{user}:{password}")))
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

/// The Message resource Twilio answers a create with (`201 Created`).
fn created(from: Option<&str>, service: Option<&str>, body: &str) -> serde_json::Value {
    json!({
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
        "date_sent": null,
        "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": MESSAGE_SID,
        "status": if service.is_some() { "accepted" } else { "queued" },
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}/Media.json")
        },
        "to": TO,
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}.json")
    })
}

/// Twilio's error body.
fn error_body(code: u32, message: &str, status: u16) -> serde_json::Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status
    })
}

/// No secret, message body or phone number in an error's text or Debug.
fn assert_clean(error: &SendError, also: &[&str]) {
    for text in [error.to_string(), format!("{error:?}")] {
        for secret in [AUTH_TOKEN, API_KEY_SECRET, CODE, BODY, TO, "14155550123"]
            .iter()
            .chain(also)
        {
            assert!(!text.contains(secret), "{text:?} contains {secret:?}");
        }
    }
}

#[tokio::test]
async fn sends_the_exact_request_with_the_auth_token_and_a_number() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(header("authorization", basic(ACCOUNT_SID, AUTH_TOKEN).as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("accept", "application/json"))
        .and(FormIs::new(&[("To", TO), ("From", FROM), ("Body", BODY)]))
        .respond_with(ResponseTemplate::new(201).set_body_json(created(Some(FROM), None, BODY)))
        .expect(1)
        .mount(&server)
        .await;

    let receipt = sender(&server).send(&message(BODY)).await.unwrap();
    assert_eq!(receipt.id.as_deref(), Some(MESSAGE_SID));
}

#[tokio::test]
async fn sends_the_exact_request_with_an_api_key_and_a_messaging_service() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(header(
            "authorization",
            basic(API_KEY_SID, API_KEY_SECRET).as_str(),
        ))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("accept", "application/json"))
        .and(FormIs::new(&[
            ("To", TO),
            ("MessagingServiceSid", SERVICE_SID),
            ("Body", UNICODE_BODY),
        ]))
        .respond_with(ResponseTemplate::new(201).set_body_json(created(
            None,
            Some(SERVICE_SID),
            UNICODE_BODY,
        )))
        .expect(1)
        .mount(&server)
        .await;

    let auth = TwilioAuth::ApiKey {
        sid: API_KEY_SID.to_owned(),
        secret: SecretString::new(API_KEY_SECRET.to_owned()),
    };
    let sender = TwilioSender::builder(
        ACCOUNT_SID,
        auth,
        TwilioFrom::MessagingService(SERVICE_SID.to_owned()),
    )
    .base_url(server.uri())
    .build()
    .unwrap();
    let receipt = sender.send(&message(UNICODE_BODY)).await.unwrap();
    assert_eq!(receipt.id.as_deref(), Some(MESSAGE_SID));
}

#[tokio::test]
async fn a_base_url_with_a_path_keeps_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/edge/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        )))
        .respond_with(ResponseTemplate::new(201).set_body_json(created(Some(FROM), None, BODY)))
        .expect(1)
        .mount(&server)
        .await;
    let sender = TwilioSender::builder(ACCOUNT_SID, token(), from_number())
        .base_url(format!("{}/edge/", server.uri()))
        .build()
        .unwrap();
    assert!(sender.send(&message(BODY)).await.is_ok());
}

/// Every code the sender maps: (code, HTTP status Twilio answers with, its
/// message, the expected kind).
const CASES: &[(u32, u16, &str, SendErrorKind)] = &[
    (
        21211,
        400,
        "The 'To' number +14155550123 is not a valid phone number.",
        SendErrorKind::InvalidNumber,
    ),
    (
        21217,
        400,
        "Phone number does not appear to be valid",
        SendErrorKind::InvalidNumber,
    ),
    (
        21265,
        400,
        "'To' number cannot be a Short Code: +14155550123",
        SendErrorKind::InvalidNumber,
    ),
    (21401, 400, "Invalid Phone Number", SendErrorKind::InvalidNumber),
    (
        21407,
        400,
        "This Phone Number type does not support SMS or MMS",
        SendErrorKind::InvalidNumber,
    ),
    (
        21614,
        400,
        "'To' number is not a valid mobile number",
        SendErrorKind::InvalidNumber,
    ),
    (
        30005,
        400,
        "Unknown destination handset",
        SendErrorKind::InvalidNumber,
    ),
    (
        21610,
        400,
        "Attempt to send to unsubscribed recipient",
        SendErrorKind::Unreachable,
    ),
    (
        21612,
        400,
        "The 'To' phone number is not currently reachable via SMS",
        SendErrorKind::Unreachable,
    ),
    (
        30003,
        400,
        "Unreachable destination handset",
        SendErrorKind::Unreachable,
    ),
    (30004, 400, "Message blocked", SendErrorKind::Unreachable),
    (
        30006,
        400,
        "Landline or unreachable carrier",
        SendErrorKind::Unreachable,
    ),
    (
        21266,
        400,
        "'To' and 'From' number cannot be the same",
        SendErrorKind::Rejected,
    ),
    (
        21408,
        400,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +14155550123.",
        SendErrorKind::Rejected,
    ),
    (21602, 400, "Message body is required.", SendErrorKind::Rejected),
    (
        21617,
        400,
        "The concatenated message body exceeds the 1600 character limit.",
        SendErrorKind::Rejected,
    ),
    (30007, 400, "Message filtered", SendErrorKind::Rejected),
    (10001, 400, "Account is not active", SendErrorKind::Configuration),
    (20003, 401, "Authenticate", SendErrorKind::Configuration),
    (
        20404,
        404,
        "The requested resource was not found",
        SendErrorKind::Configuration,
    ),
    (
        21212,
        400,
        "The 'From' number +15017122661 is not a valid phone number, shortcode, or alphanumeric sender ID.",
        SendErrorKind::Configuration,
    ),
    (
        21219,
        400,
        "'To' number not verified",
        SendErrorKind::Configuration,
    ),
    (
        21603,
        400,
        "A 'From' phone number is required.",
        SendErrorKind::Configuration,
    ),
    (
        21606,
        400,
        "The From phone number +15017122661 is not a valid, SMS-capable inbound phone number or short code for your account.",
        SendErrorKind::Configuration,
    ),
    (
        21608,
        400,
        "The number +14155550123 is unverified. Trial accounts cannot send messages to unverified numbers.",
        SendErrorKind::Configuration,
    ),
    (
        21659,
        400,
        "'From' +15017122661 is not a Twilio phone number or Short Code country mismatch",
        SendErrorKind::Configuration,
    ),
    (
        21701,
        400,
        "The Messaging Service does not exist",
        SendErrorKind::Configuration,
    ),
    (
        21703,
        400,
        "The Messaging Service does not have a phone number available to send a message",
        SendErrorKind::Configuration,
    ),
    (
        21704,
        400,
        "The Messaging Service contains no phone numbers",
        SendErrorKind::Configuration,
    ),
    (
        30034,
        400,
        "US A2P 10DLC - Message from an Unregistered Number",
        SendErrorKind::Configuration,
    ),
    (
        14107,
        400,
        "SMS send rate limit exceeded",
        SendErrorKind::RateLimited,
    ),
    (20429, 429, "Too Many Requests", SendErrorKind::RateLimited),
    (
        21611,
        400,
        "This 'From' number has exceeded the maximum number of queued messages",
        SendErrorKind::RateLimited,
    ),
    (30001, 400, "Queue overflow", SendErrorKind::RateLimited),
    (20500, 500, "Internal Server Error", SendErrorKind::Unavailable),
    (20503, 503, "Service unavailable", SendErrorKind::Unavailable),
    (
        21730,
        503,
        "System under maintenance. Please try again later.",
        SendErrorKind::Unavailable,
    ),
];

#[test]
fn the_cases_cover_every_mapped_code() {
    let mut cases: Vec<(u32, SendErrorKind)> = CASES.iter().map(|&(c, _, _, k)| (c, k)).collect();
    let mut mapped = twilio::ERROR_CODES.to_vec();
    cases.sort_by_key(|&(c, _)| c);
    mapped.sort_by_key(|&(c, _)| c);
    assert_eq!(cases, mapped);
}

#[tokio::test]
async fn every_mapped_error_code_gives_its_kind() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for &(code, status, text, kind) in CASES {
        server.reset().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "4")
                    .set_body_json(error_body(code, text, status)),
            )
            .expect(1)
            .mount(&server)
            .await;

        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{code}");
        assert_eq!(err.is_retryable(), kind.is_retryable(), "{code}");
        let wait = kind.is_retryable().then_some(Duration::from_secs(4));
        assert_eq!(err.retry_after(), wait, "{code}");
        let shown = err.to_string();
        assert!(shown.contains(&code.to_string()), "{shown}");
        assert!(shown.contains(&format!("HTTP {status}")), "{shown}");
        assert_clean(&err, &[text, FROM]);
    }
}

#[tokio::test]
async fn an_unknown_code_is_classified_by_its_status() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for (status, kind) in [
        (400, SendErrorKind::Rejected),
        (403, SendErrorKind::Configuration),
        (502, SendErrorKind::Unavailable),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(error_body(
                29999,
                "Something new",
                status,
            )))
            .mount(&server)
            .await;
        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{status}");
        assert!(err.to_string().contains("29999"), "{err}");
    }
}

#[tokio::test]
async fn http_429_is_rate_limited_with_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_json(error_body(20429, "Too Many Requests", 429)),
        )
        .mount(&server)
        .await;
    let err = sender(&server).send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::RateLimited);
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_clean(&err, &["Too Many Requests"]);

    // Without a body or a Retry-After, still rate limited.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429))
        .mount(&server)
        .await;
    let err = sender(&server).send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::RateLimited);
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn server_errors_are_retryable_whatever_the_body() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for (status, body) in [
        (500, error_body(20500, "Internal Server Error", 500).to_string()),
        (502, "<html><body>Bad Gateway</body></html>".to_owned()),
        (503, String::new()),
        // A mapped non-retryable code under a 5xx is still retryable.
        (
            500,
            error_body(21211, "Invalid 'To' Phone Number", 500).to_string(),
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
        assert_eq!(err.kind(), SendErrorKind::Unavailable, "{status}");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
        assert_clean(&err, &["Bad Gateway"]);
    }
}

#[tokio::test]
async fn client_errors_without_a_code_are_not_retryable() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for (status, kind) in [
        (400, SendErrorKind::Rejected),
        (401, SendErrorKind::Configuration),
        (403, SendErrorKind::Configuration),
        (404, SendErrorKind::Rejected),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "30")
                    .set_body_string("not json"),
            )
            .mount(&server)
            .await;
        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{status}");
        assert!(!err.is_retryable());
        assert_eq!(err.retry_after(), None);
    }
}

#[tokio::test]
async fn an_unreadable_success_is_an_error() {
    let server = MockServer::start().await;
    let sender = sender(&server);
    for body in [
        "<html>Welcome to the captive portal</html>".to_owned(),
        json!({"status": "queued"}).to_string(),
        json!({"sid": "not-a-sid", "status": "queued"}).to_string(),
        String::new(),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_body_string(body.clone()))
            .mount(&server)
            .await;
        let err = sender.send(&message(BODY)).await.unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Rejected, "{body}");
        assert!(err.to_string().contains("unreadable"), "{err}");
        assert_clean(&err, &["captive"]);
    }
}

#[tokio::test]
async fn a_created_message_that_already_failed_is_an_error() {
    let server = MockServer::start().await;
    let mut body = created(Some(FROM), None, BODY);
    body["status"] = json!("failed");
    body["error_code"] = json!(30007);
    body["error_message"] = json!("Message filtered");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(body))
        .mount(&server)
        .await;
    let err = sender(&server).send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Rejected);
    assert!(err.to_string().contains("30007"), "{err}");
    assert_clean(&err, &["filtered"]);
}

#[tokio::test]
async fn a_slow_answer_is_a_retryable_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created(Some(FROM), None, BODY))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let sender = TwilioSender::builder(ACCOUNT_SID, token(), from_number())
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
    let sender = TwilioSender::builder(ACCOUNT_SID, token(), from_number())
        .base_url(format!("http://127.0.0.1:{port}"))
        .build()
        .unwrap();
    let err = sender.send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Unavailable);
    assert!(err.is_retryable());
    assert_clean(&err, &[]);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(
            ResponseTemplate::new(307).insert_header("location", format!("{}/elsewhere", server.uri())),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(201).set_body_json(created(Some(FROM), None, BODY)))
        .expect(0)
        .mount(&server)
        .await;
    let err = sender(&server).send(&message(BODY)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Rejected);
}

#[test]
fn plain_http_is_refused_except_on_loopback() {
    for url in [
        "http://api.twilio.com",
        "http://10.0.0.1:8080",
        "http://localhost.example.com",
        "ftp://api.twilio.com",
        "https://user:pass@api.twilio.com",
    ] {
        let err = TwilioSender::builder(ACCOUNT_SID, token(), from_number())
            .base_url(url)
            .build()
            .unwrap_err();
        let TwilioConfigError::BaseUrl(cause) = &err else {
            panic!("{url}: {err:?}");
        };
        assert_eq!(cause.kind(), SendErrorKind::Configuration);
        assert!(!err.to_string().contains("pass"), "{err}");
    }
    for url in [
        "https://api.twilio.com",
        "http://127.0.0.1:9",
        "http://[::1]:9",
        "http://localhost:9",
    ] {
        assert!(
            TwilioSender::builder(ACCOUNT_SID, token(), from_number())
                .base_url(url)
                .build()
                .is_ok(),
            "{url}"
        );
    }
}

#[test]
fn the_default_url_is_the_real_api() {
    let sender = TwilioSender::new(ACCOUNT_SID, token(), from_number()).unwrap();
    assert_eq!(
        sender.url(),
        format!("https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
    );
    assert_eq!(twilio::DEFAULT_BASE_URL, "https://api.twilio.com");
}

#[test]
fn malformed_settings_are_refused_with_typed_errors() {
    let key = |sid: &str, secret: &str| TwilioAuth::ApiKey {
        sid: sid.to_owned(),
        secret: SecretString::new(secret.to_owned()),
    };
    let secret = |s: &str| TwilioAuth::Token(SecretString::new(s.to_owned()));
    let cases = [
        (
            TwilioSender::new("", token(), from_number()),
            TwilioConfigError::AccountSid,
        ),
        (
            TwilioSender::new("AC0123", token(), from_number()),
            TwilioConfigError::AccountSid,
        ),
        (
            TwilioSender::new(API_KEY_SID, token(), from_number()),
            TwilioConfigError::AccountSid,
        ),
        (
            TwilioSender::new("AC0123456789abcdef0123456789abcdeZ", token(), from_number()),
            TwilioConfigError::AccountSid,
        ),
        (
            TwilioSender::new(format!("{ACCOUNT_SID}/../x"), token(), from_number()),
            TwilioConfigError::AccountSid,
        ),
        (
            TwilioSender::new(ACCOUNT_SID, key(ACCOUNT_SID, API_KEY_SECRET), from_number()),
            TwilioConfigError::ApiKeySid,
        ),
        (
            TwilioSender::new(ACCOUNT_SID, key(API_KEY_SID, ""), from_number()),
            TwilioConfigError::Secret,
        ),
        (
            TwilioSender::new(ACCOUNT_SID, secret(""), from_number()),
            TwilioConfigError::Secret,
        ),
        (
            TwilioSender::new(ACCOUNT_SID, secret("has space"), from_number()),
            TwilioConfigError::Secret,
        ),
        (
            TwilioSender::new(ACCOUNT_SID, secret(&format!("{AUTH_TOKEN}\n")), from_number()),
            TwilioConfigError::Secret,
        ),
        (
            TwilioSender::new(
                ACCOUNT_SID,
                token(),
                TwilioFrom::MessagingService("MG123".to_owned()),
            ),
            TwilioConfigError::MessagingServiceSid,
        ),
        (
            TwilioSender::new(
                ACCOUNT_SID,
                token(),
                TwilioFrom::MessagingService(ACCOUNT_SID.to_owned()),
            ),
            TwilioConfigError::MessagingServiceSid,
        ),
    ];
    for (result, expected) in cases {
        let err = result.unwrap_err();
        assert_eq!(err, expected);
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(AUTH_TOKEN) && !shown.contains("has space"),
            "{shown}"
        );
    }
}

#[test]
fn debug_shows_no_secret() {
    let with_token = TwilioSender::new(ACCOUNT_SID, token(), from_number()).unwrap();
    let with_key = TwilioSender::new(
        ACCOUNT_SID,
        TwilioAuth::ApiKey {
            sid: API_KEY_SID.to_owned(),
            secret: SecretString::new(API_KEY_SECRET.to_owned()),
        },
        TwilioFrom::MessagingService(SERVICE_SID.to_owned()),
    )
    .unwrap();
    let builder = TwilioSender::builder(ACCOUNT_SID, token(), from_number());
    for shown in [
        format!("{with_token:?}"),
        format!("{with_key:#?}"),
        format!("{builder:?}"),
        format!("{:?}", token()),
        format!("{:?}", message(BODY)),
    ] {
        assert!(!shown.contains(AUTH_TOKEN), "{shown}");
        assert!(!shown.contains(API_KEY_SECRET), "{shown}");
        assert!(!shown.contains(CODE), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
    assert!(format!("{with_token:?}").contains(ACCOUNT_SID));
    assert!(format!("{with_key:?}").contains(API_KEY_SID));
}

#[test]
fn the_test_encoder_is_right() {
    assert_eq!(base64(""), "");
    assert_eq!(base64("f"), "Zg==");
    assert_eq!(base64("fo"), "Zm8=");
    assert_eq!(base64("foo"), "Zm9v");
    assert_eq!(base64("Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
}
