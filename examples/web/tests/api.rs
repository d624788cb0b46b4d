//! The JSON API and the forms' guards, through the router without a
//! browser or a socket: statuses, `Retry-After`, the attempts left, the
//! same answer for unknown addresses, sessions signed out on reset, and
//! forms refused without their CSRF token.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use otp_recovery::Policy;
use otp_recovery_web::outbox::Outbox;
use otp_recovery_web::{App, Config};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    router: Router,
    outbox: Outbox,
    _dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn harness(name: &str) -> Harness {
    let dir = std::env::temp_dir().join(format!("otp-recovery-web-api-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config::development(dir.join("web.db")).unwrap();
    config.dev_mode = true;
    config.policy = Policy::builder()
        .max_attempts(3)
        .account_failures(3, Duration::from_secs(3600))
        .build()
        .unwrap();
    let app = App::new(config).await.unwrap();
    let outbox = app.outbox().clone();
    let router =
        otp_recovery_web::router(app).layer(MockConnectInfo(SocketAddr::from((Ipv4Addr::LOCALHOST, 4000))));
    Harness {
        router,
        outbox,
        _dir: TempDir(dir),
    }
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    json: Value,
    text: String,
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            json,
            text,
        }
    }

    async fn post_json(&self, path: &str, body: Value) -> Answer {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    async fn request(&self, identifier: &str) -> Answer {
        self.post_json("/api/recovery", json!({ "identifier": identifier }))
            .await
    }

    /// The code in the newest SMS to a phone ending in `last_digits`.
    fn code_for(&self, last_digits: &str) -> String {
        let message = self
            .outbox
            .messages()
            .into_iter()
            .find(|m| m.to.as_str().ends_with(last_digits))
            .expect("an SMS was sent");
        let body = message.body.expose_secret().to_string();
        body.rsplit('#').next().unwrap().trim().to_string()
    }
}

fn wrong(code: &str) -> &'static str {
    if code == "000000" { "000001" } else { "000000" }
}

#[tokio::test]
async fn the_whole_flow_through_the_api() {
    let h = harness("flow").await;
    let sent = h.request("alice@example.com").await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    assert_eq!(sent.json["sent_to"], "+1 ***-***-0101");
    assert_eq!(sent.json["attempts_left"], 3);
    let flow = sent.json["flow_id"].as_str().unwrap().to_string();
    let code = h.code_for("0101");

    let wrong_code = h
        .post_json(
            &format!("/api/recovery/{flow}/verify"),
            json!({ "code": wrong(&code) }),
        )
        .await;
    assert_eq!(wrong_code.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_code.json["error"], "invalid_code");
    assert_eq!(wrong_code.json["attempts_left"], 2);

    let too_soon = h
        .post_json(&format!("/api/recovery/{flow}/resend"), json!({}))
        .await;
    assert_eq!(too_soon.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(too_soon.json["error"], "too_soon");
    let wait: u64 = too_soon.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");

    let verified = h
        .post_json(&format!("/api/recovery/{flow}/verify"), json!({ "code": code }))
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.text);
    let token = verified.json["reset_token"].as_str().unwrap().to_string();

    let short = h
        .post_json(
            "/api/recovery/reset",
            json!({ "reset_token": token, "new_password": "short" }),
        )
        .await;
    assert_eq!(
        short.status,
        StatusCode::BAD_REQUEST,
        "a refused password keeps the token"
    );
    let done = h
        .post_json(
            "/api/recovery/reset",
            json!({ "reset_token": token, "new_password": "a-new-passphrase" }),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.json["sessions_revoked"], 0);

    let replay = h
        .post_json(
            "/api/recovery/reset",
            json!({ "reset_token": token, "new_password": "another-passphrase" }),
        )
        .await;
    assert_eq!(replay.status, StatusCode::GONE);
    assert_eq!(replay.json["start_again"], true);
}

#[tokio::test]
async fn an_unknown_address_gets_the_same_answer_and_no_sms() {
    let h = harness("unknown").await;
    let known = h.request("bob@example.com").await;
    let sent_before = h.outbox.messages().len();
    let unknown = h.request("nobody@example.com").await;
    assert_eq!(unknown.status, known.status);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&unknown.json), keys(&known.json));
    assert_eq!(unknown.json["attempts_left"], known.json["attempts_left"]);
    assert_eq!(
        h.outbox.messages().len(),
        sent_before,
        "no SMS for an unknown address"
    );

    let flow = unknown.json["flow_id"].as_str().unwrap();
    let wrong_code = h
        .post_json(
            &format!("/api/recovery/{flow}/verify"),
            json!({ "code": "123456" }),
        )
        .await;
    assert_eq!(wrong_code.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        wrong_code.json["attempts_left"], 2,
        "a decoy counts attempts like a real flow"
    );
}

#[tokio::test]
async fn the_last_wrong_code_locks_with_a_support_reference() {
    let h = harness("lock").await;
    let flow = h.request("carol@example.com").await.json["flow_id"]
        .as_str()
        .unwrap()
        .to_string();
    let code = h.code_for("0103");
    let path = format!("/api/recovery/{flow}/verify");
    for left in [2, 1] {
        let answer = h.post_json(&path, json!({ "code": wrong(&code) })).await;
        assert_eq!(answer.json["attempts_left"], left);
    }
    let locked = h.post_json(&path, json!({ "code": wrong(&code) })).await;
    assert_eq!(locked.status, StatusCode::LOCKED, "{}", locked.text);
    assert_eq!(locked.json["error"], "locked");
    let reference = locked.json["support_reference"].as_str().unwrap();
    assert_eq!(reference.len(), 9, "{reference}");
    assert_eq!(locked.json["support_contact"], "help@acme.example");
    assert!(locked.retry_after.is_some(), "an account lock says when it ends");

    let again = h.request("carol@example.com").await;
    assert_eq!(again.status, StatusCode::LOCKED);
    assert_eq!(again.json["support_reference"], reference);
}

#[tokio::test]
async fn malformed_input_is_refused_before_any_lookup() {
    let h = harness("input").await;
    let flow = h.request("bob@example.com").await.json["flow_id"]
        .as_str()
        .unwrap()
        .to_string();
    let letters = h
        .post_json(
            &format!("/api/recovery/{flow}/verify"),
            json!({ "code": "12a456" }),
        )
        .await;
    assert_eq!(letters.status, StatusCode::BAD_REQUEST);
    let bad_flow = h
        .post_json("/api/recovery/not-a-flow/verify", json!({ "code": "123456" }))
        .await;
    assert_eq!(bad_flow.status, StatusCode::BAD_REQUEST);
    let long = h.request(&"a".repeat(255)).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    // The malformed code used no attempt.
    let code = h.code_for("0102");
    let wrong_code = h
        .post_json(
            &format!("/api/recovery/{flow}/verify"),
            json!({ "code": wrong(&code) }),
        )
        .await;
    assert_eq!(wrong_code.json["attempts_left"], 2);
}

#[tokio::test]
async fn forms_without_a_valid_csrf_token_are_refused() {
    let h = harness("csrf").await;
    let form = |cookie: Option<&str>, body: &str| {
        let mut request =
            Request::post("/recover").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.body(Body::from(body.to_string())).unwrap()
    };
    let sent_before = h.outbox.messages().len();
    let no_cookie = h.send(form(None, "csrf=00&identifier=alice%40example.com")).await;
    assert_eq!(no_cookie.status, StatusCode::FORBIDDEN);
    let forged = h
        .send(form(
            Some("csrf=abcd"),
            "csrf=abcd&identifier=alice%40example.com",
        ))
        .await;
    assert_eq!(
        forged.status,
        StatusCode::FORBIDDEN,
        "the token must be the cookie's HMAC, not the cookie"
    );
    assert_eq!(
        h.outbox.messages().len(),
        sent_before,
        "no SMS for a refused form"
    );

    // The token the page hands out, with its cookie, is accepted.
    let page = h
        .send(Request::get("/recover").body(Body::empty()).unwrap())
        .await;
    let token = page
        .text
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let cookie = h
        .router
        .clone()
        .oneshot(
            Request::get("/recover")
                .header(header::COOKIE, "csrf=fixed")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        cookie.headers().get(header::SET_COOKIE).is_none(),
        "an existing cookie is kept"
    );
    let fixed_token = {
        let bytes = axum::body::to_bytes(cookie.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        text.split(r#"name="csrf" value=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(token, fixed_token, "tokens are bound to the visitor's cookie");
    let accepted = h
        .send(form(
            Some("csrf=fixed"),
            &format!("csrf={fixed_token}&identifier=alice%40example.com"),
        ))
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    assert_eq!(h.outbox.messages().len(), sent_before + 1);
}

#[tokio::test]
async fn pages_carry_the_security_headers() {
    let h = harness("headers").await;
    let response = h
        .router
        .clone()
        .oneshot(Request::get("/recover").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
}
