//! The signed webhook sender against a local server: the exact request, an
//! independent verifier (written here with `hmac`/`sha2`, not the crate's
//! code) that accepts it and refuses replays and tampering, the mapping of
//! answers to errors, the TLS rule, and no secret in `Debug` or errors.
#![cfg(feature = "webhook")]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use otp_recovery::sms::{MessageKind, SendErrorKind, SmsMessage, SmsSender};
use otp_recovery::{PhoneNumber, SecretString, ServerKey};
use otp_recovery_gateways::webhook::WebhookSender;
use sha2::Sha256;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SECRET: &[u8] = b"webhook-test-secret-0123456789-abcdef";
const BODY: &str = "123456 is your Example code";

fn key() -> ServerKey {
    ServerKey::from_bytes(SECRET.to_vec()).unwrap()
}

fn message(kind: MessageKind) -> SmsMessage {
    let to = PhoneNumber::parse("+14155550123").unwrap();
    SmsMessage::new(to, SecretString::new(BODY.into()), kind)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn server_answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/sms"))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn sender_for(server: &MockServer) -> WebhookSender {
    WebhookSender::new(&format!("{}/hooks/sms", server.uri()), key()).unwrap()
}

fn header<'r>(request: &'r Request, name: &str) -> &'r str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

// ---------------------------------------------------------------------------
// An independent receiver, as a host would write it from the documentation.
// ---------------------------------------------------------------------------

/// What the receiver sees of one request.
#[derive(Clone)]
struct Delivery {
    timestamp: String,
    id: String,
    signature: String,
    body: Vec<u8>,
}

impl Delivery {
    fn of(request: &Request) -> Self {
        Delivery {
            timestamp: header(request, "x-otp-timestamp").to_owned(),
            id: header(request, "x-otp-id").to_owned(),
            signature: header(request, "x-otp-signature").to_owned(),
            body: request.body.clone(),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Refusal {
    Malformed,
    Stale,
    BadSignature,
    Replay,
}

struct Receiver {
    secret: Vec<u8>,
    /// Accepted ids and their timestamps.
    seen: HashMap<String, u64>,
}

const WINDOW: u64 = 300;

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text.get(i..i + 2)?;
            if pair.bytes().any(|b| b.is_ascii_uppercase()) {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

impl Receiver {
    fn new(secret: &[u8]) -> Self {
        Receiver {
            secret: secret.to_vec(),
            seen: HashMap::new(),
        }
    }

    fn verify(&mut self, d: &Delivery, now: u64) -> Result<serde_json::Value, Refusal> {
        if d.timestamp.is_empty() || !d.timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::Malformed);
        }
        let ts: u64 = d.timestamp.parse().map_err(|_| Refusal::Malformed)?;
        if ts.abs_diff(now) > WINDOW {
            return Err(Refusal::Stale);
        }
        let tag = d
            .signature
            .strip_prefix("v1=")
            .and_then(decode_hex)
            .ok_or(Refusal::Malformed)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).unwrap();
        mac.update(format!("v1.{}.", d.timestamp).as_bytes());
        mac.update(&d.body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&tag).map_err(|_| Refusal::BadSignature)?;

        let json: serde_json::Value = serde_json::from_slice(&d.body).map_err(|_| Refusal::Malformed)?;
        if json["timestamp"].as_u64() != Some(ts) || json["id"].as_str() != Some(d.id.as_str()) {
            return Err(Refusal::Malformed);
        }
        self.seen.retain(|_, &mut at| at + WINDOW >= now);
        if self.seen.contains_key(&d.id) {
            return Err(Refusal::Replay);
        }
        self.seen.insert(d.id.clone(), ts);
        Ok(json)
    }
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_request_is_exactly_the_documented_one() {
    let server = server_answering(ResponseTemplate::new(200)).await;
    let before = unix_now();
    let receipt = sender_for(&server)
        .send(&message(MessageKind::Code))
        .await
        .unwrap();
    let after = unix_now();

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), "/hooks/sms");
    assert_eq!(request.url.query(), None);
    assert_eq!(header(request, "content-type"), "application/json");

    let id = header(request, "x-otp-id");
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    assert_eq!(receipt.id.as_deref(), Some(id));

    let timestamp: u64 = header(request, "x-otp-timestamp").parse().unwrap();
    assert!((before..=after).contains(&timestamp), "{timestamp}");

    let signature = header(request, "x-otp-signature");
    let hex = signature.strip_prefix("v1=").unwrap();
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{hex}"
    );

    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&request.body).unwrap();
    let keys: BTreeSet<&str> = json.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["id", "to", "body", "kind", "timestamp"]));
    assert_eq!(json["id"], id);
    assert_eq!(json["to"], "+14155550123");
    assert_eq!(json["body"], BODY);
    assert_eq!(json["kind"], "code");
    assert_eq!(json["timestamp"], timestamp);
}

#[tokio::test]
async fn notices_say_so_and_every_send_has_a_fresh_id() {
    let server = server_answering(ResponseTemplate::new(200)).await;
    let sender = sender_for(&server);
    let a = sender.send(&message(MessageKind::Notice)).await.unwrap();
    let b = sender.send(&message(MessageKind::Notice)).await.unwrap();
    assert_ne!(a.id, b.id);
    let requests = server.received_requests().await.unwrap();
    for request in &requests {
        let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(json["kind"], "notice");
    }
    assert_ne!(header(&requests[0], "x-otp-id"), header(&requests[1], "x-otp-id"));
}

#[tokio::test]
async fn an_independent_verifier_accepts_it_and_refuses_replay_and_tampering() {
    let server = server_answering(ResponseTemplate::new(200)).await;
    sender_for(&server)
        .send(&message(MessageKind::Code))
        .await
        .unwrap();
    let requests = server.received_requests().await.unwrap();
    let genuine = Delivery::of(&requests[0]);
    let signed_at: u64 = genuine.timestamp.parse().unwrap();
    let now = unix_now();

    let mut receiver = Receiver::new(SECRET);
    let json = receiver.verify(&genuine, now).unwrap();
    assert_eq!(json["body"], BODY);

    // (a) The same request again, even a little later: a replay.
    assert_eq!(receiver.verify(&genuine, now + 5), Err(Refusal::Replay));

    // The other refusals must not depend on the id being known: a fresh
    // receiver each time.
    // (b) A tampered body: another code, same length; or the number.
    let mut tampered = genuine.clone();
    let text = String::from_utf8(tampered.body.clone()).unwrap();
    tampered.body = text.replace("123456", "999999").into_bytes();
    assert_ne!(tampered.body, genuine.body);
    assert_eq!(
        Receiver::new(SECRET).verify(&tampered, now),
        Err(Refusal::BadSignature)
    );
    tampered.body = text.replace("+14155550123", "+14155550199").into_bytes();
    assert_eq!(
        Receiver::new(SECRET).verify(&tampered, now),
        Err(Refusal::BadSignature)
    );
    // Re-serializing the same JSON (whitespace) also breaks it: the MAC is over raw bytes.
    let mut reformatted = genuine.clone();
    let value: serde_json::Value = serde_json::from_slice(&genuine.body).unwrap();
    reformatted.body = serde_json::to_vec_pretty(&value).unwrap();
    assert_eq!(
        Receiver::new(SECRET).verify(&reformatted, now),
        Err(Refusal::BadSignature)
    );

    // (c) A tampered timestamp header (to dodge the staleness check).
    let mut retimed = genuine.clone();
    retimed.timestamp = (signed_at + 1).to_string();
    assert_eq!(
        Receiver::new(SECRET).verify(&retimed, now),
        Err(Refusal::BadSignature)
    );

    // (d) A stale request: the genuine one, replayed past the window, to a
    // receiver that has forgotten its id.
    assert_eq!(
        Receiver::new(SECRET).verify(&genuine, signed_at + WINDOW + 1),
        Err(Refusal::Stale)
    );
    assert_eq!(
        Receiver::new(SECRET).verify(&genuine, signed_at - WINDOW - 1),
        Err(Refusal::Stale)
    );

    // A tampered signature, or another secret.
    let mut forged = genuine.clone();
    let last = forged.signature.pop().unwrap();
    forged.signature.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        Receiver::new(SECRET).verify(&forged, now),
        Err(Refusal::BadSignature)
    );
    assert_eq!(
        Receiver::new(b"some-other-secret-of-at-least-32-bytes").verify(&genuine, now),
        Err(Refusal::BadSignature)
    );
    // A swapped id header no longer matches the signed body.
    let mut renamed = genuine.clone();
    renamed.id = "0".repeat(32);
    assert_eq!(
        Receiver::new(SECRET).verify(&renamed, now),
        Err(Refusal::Malformed)
    );
}

#[tokio::test]
async fn a_secret_string_signs_like_the_same_bytes_as_a_key() {
    let server = server_answering(ResponseTemplate::new(200)).await;
    let secret = SecretString::new(String::from_utf8(SECRET.to_vec()).unwrap());
    let sender = WebhookSender::new(&format!("{}/hooks/sms", server.uri()), secret).unwrap();
    sender.send(&message(MessageKind::Code)).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    Receiver::new(SECRET)
        .verify(&Delivery::of(&requests[0]), unix_now())
        .unwrap();
}

#[tokio::test]
async fn any_2xx_is_success() {
    for status in [200, 201, 202, 204] {
        let server = server_answering(ResponseTemplate::new(status)).await;
        let receipt = sender_for(&server).send(&message(MessageKind::Code)).await;
        assert!(receipt.is_ok(), "{status}: {receipt:?}");
    }
}

#[tokio::test]
async fn statuses_map_to_error_kinds() {
    let cases = [
        (400, SendErrorKind::Rejected),
        (401, SendErrorKind::Configuration),
        (403, SendErrorKind::Configuration),
        (404, SendErrorKind::Rejected),
        (422, SendErrorKind::Rejected),
        (429, SendErrorKind::RateLimited),
        (500, SendErrorKind::Unavailable),
        (502, SendErrorKind::Unavailable),
        (503, SendErrorKind::Unavailable),
        (301, SendErrorKind::Rejected),
    ];
    for (status, kind) in cases {
        let template = ResponseTemplate::new(status).insert_header("Location", "https://elsewhere.example/");
        let server = server_answering(template).await;
        let err = sender_for(&server)
            .send(&message(MessageKind::Code))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{status}");
        assert_eq!(err.is_retryable(), matches!(status, 429 | 500..=599), "{status}");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        // A redirect is not followed.
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn retry_after_is_kept_on_retryable_answers_only() {
    let server = server_answering(ResponseTemplate::new(429).insert_header("Retry-After", "7")).await;
    let err = sender_for(&server)
        .send(&message(MessageKind::Code))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    let server = server_answering(ResponseTemplate::new(503).insert_header("Retry-After", "3")).await;
    let err = sender_for(&server)
        .send(&message(MessageKind::Code))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

    let server = server_answering(ResponseTemplate::new(400).insert_header("Retry-After", "3")).await;
    let err = sender_for(&server)
        .send(&message(MessageKind::Code))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn a_slow_answer_is_a_retryable_timeout() {
    let server = server_answering(ResponseTemplate::new(200).set_delay(Duration::from_secs(5))).await;
    let sender = sender_for(&server).with_timeout(Duration::from_millis(200));
    assert_eq!(sender.timeout(), Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = sender.send(&message(MessageKind::Code)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), SendErrorKind::Timeout);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable() {
    // A port that was just listening and is now closed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sender = WebhookSender::new(&format!("http://127.0.0.1:{port}/hook"), key()).unwrap();
    let err = sender.send(&message(MessageKind::Code)).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Unavailable);
}

#[test]
fn plain_http_is_refused_except_on_loopback() {
    for url in [
        "http://sms.example.com/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.10:8080/",
        "http://localhost.evil.example/",
        "ftp://sms.example.com/",
        "https://user:pass@sms.example.com/",
        "not a url",
    ] {
        let err = WebhookSender::new(url, key()).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Configuration, "{url}");
        assert!(!err.is_retryable());
        assert!(!err.to_string().contains("pass"), "{err}");
    }
    for url in [
        "https://sms.example.com/hook",
        "http://127.0.0.1:8080/hook",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
    ] {
        assert!(WebhookSender::new(url, key()).is_ok(), "{url}");
    }
}

#[test]
fn a_short_secret_is_refused_without_being_named() {
    let short = "short-secret-31-bytes-long-abcd";
    assert_eq!(short.len(), 31);
    let err = WebhookSender::new("https://sms.example.com/", SecretString::new(short.into())).unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Configuration);
    assert!(!format!("{err} {err:?}").contains(short));
    let ok = "short-secret-32-bytes-long-abcde";
    assert!(WebhookSender::new("https://sms.example.com/", SecretString::new(ok.into())).is_ok());
}

#[tokio::test]
async fn neither_debug_nor_errors_show_the_secret_or_the_body() {
    let secret_text = String::from_utf8(SECRET.to_vec()).unwrap();
    let sender = WebhookSender::new(
        "https://sms.example.com/hooks/sms?token=query-secret",
        SecretString::new(secret_text.clone()),
    )
    .unwrap();
    let dbg = format!("{sender:?} {sender:#?}");
    assert!(dbg.contains("[redacted]"), "{dbg}");
    for hidden in [secret_text.as_str(), "query-secret"] {
        assert!(!dbg.contains(hidden), "{dbg}");
    }

    let mut texts = vec![dbg];
    for template in [
        ResponseTemplate::new(400).set_body_string(BODY),
        ResponseTemplate::new(503).set_body_string(BODY),
        ResponseTemplate::new(200).set_delay(Duration::from_secs(5)),
    ] {
        let server = server_answering(template).await;
        let sender = sender_for(&server).with_timeout(Duration::from_millis(200));
        let err = sender.send(&message(MessageKind::Code)).await.unwrap_err();
        texts.push(format!("{err} {err:?}"));
    }
    for text in &texts {
        assert!(!text.contains(&secret_text), "{text}");
        assert!(!text.contains("123456"), "{text}");
        assert!(!text.contains(BODY), "{text}");
    }
}

#[test]
#[should_panic(expected = "above zero")]
fn a_zero_timeout_is_refused() {
    let _ = WebhookSender::new("https://sms.example.com/", key())
        .unwrap()
        .with_timeout(Duration::ZERO);
}
