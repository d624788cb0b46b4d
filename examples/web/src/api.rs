//! The JSON API: the same steps as the pages, for apps and scripts.
//!
//! | request | success |
//! |---|---|
//! | `POST /api/recovery {"identifier"}` | 202 `{"flow_id", "sent_to", "attempts_left", "code_expires_in_secs", "resend_in_secs"}` |
//! | `POST /api/recovery/{flow}/resend` | 202, the same shape |
//! | `POST /api/recovery/{flow}/verify {"code"}` | 200 `{"reset_token", "expires_in_secs"}` |
//! | `POST /api/recovery/reset {"reset_token", "new_password"}` | 200 `{"sessions_revoked"}` |
//!
//! Failures are a [`Problem`] as JSON with its status and `Retry-After`.
//! Bodies must be `application/json` (axum's `Json` refuses anything
//! else), which a cross-site form cannot send; no cookie is read, so no
//! CSRF token is needed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use otp_recovery::{Error, FlowId, InputError, Requested};
use serde::{Deserialize, Serialize};

use crate::app::{App, MAX_IDENTIFIER_LEN, ResetError};
use crate::problem::{Problem, whole_seconds};
use crate::users::PasswordError;

type AppState = State<Arc<App>>;

/// The API routes.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/api/recovery", post(request))
        .route("/api/recovery/reset", post(reset))
        .route("/api/recovery/{flow}/resend", post(resend))
        .route("/api/recovery/{flow}/verify", post(verify))
}

#[derive(Deserialize)]
struct RequestBody {
    identifier: String,
}

#[derive(Serialize)]
struct Sent {
    flow_id: String,
    sent_to: String,
    attempts_left: u32,
    code_expires_in_secs: u64,
    resend_in_secs: Option<u64>,
}

fn sent(app: &App, requested: &Requested) -> Response {
    let body = Sent {
        flow_id: requested.flow_id.to_string(),
        sent_to: requested.masked_phone.to_string(),
        attempts_left: requested.attempts_left,
        code_expires_in_secs: whole_seconds(app.until(requested.code_expires_at)),
        resend_in_secs: requested.next_send_at.map(|at| whole_seconds(app.until(at))),
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn problem(error: &Error) -> Response {
    Problem::from_error(error).into_response()
}

fn malformed_flow() -> Response {
    problem(&Error::Input(InputError::MalformedFlowId))
}

async fn request(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<RequestBody>,
) -> Response {
    let identifier = body.identifier.trim();
    if identifier.is_empty() || identifier.len() > MAX_IDENTIFIER_LEN {
        return Problem::bad_request("identifier: 1 to 254 characters").into_response();
    }
    match app.request(identifier, peer).await {
        Ok(requested) => sent(&app, &requested),
        Err(e) => problem(&e),
    }
}

async fn resend(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(flow): Path<String>,
) -> Response {
    let Ok(flow) = FlowId::parse(&flow) else {
        return malformed_flow();
    };
    match app.resend(&flow, peer).await {
        Ok(requested) => sent(&app, &requested),
        Err(e) => problem(&e),
    }
}

#[derive(Deserialize)]
struct VerifyBody {
    code: String,
}

#[derive(Serialize)]
struct Token {
    reset_token: String,
    expires_in_secs: u64,
}

async fn verify(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(flow): Path<String>,
    Json(body): Json<VerifyBody>,
) -> Response {
    let Ok(flow) = FlowId::parse(&flow) else {
        return malformed_flow();
    };
    match app.verify(&flow, &body.code, peer).await {
        Ok(verified) => Json(Token {
            reset_token: verified.token.expose_secret().to_string(),
            expires_in_secs: whole_seconds(app.until(verified.token_expires_at)),
        })
        .into_response(),
        Err(e) => problem(&e),
    }
}

#[derive(Deserialize)]
struct ResetBody {
    reset_token: String,
    new_password: String,
}

#[derive(Serialize)]
struct Reset {
    sessions_revoked: u64,
}

async fn reset(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<ResetBody>,
) -> Response {
    match app
        .reset_password(&body.reset_token, &body.new_password, peer)
        .await
    {
        Ok(done) => Json(Reset {
            sessions_revoked: done.sessions_revoked,
        })
        .into_response(),
        Err(ResetError::Password(PasswordError::Hashing)) => Problem::unavailable().into_response(),
        Err(ResetError::Password(e)) => Problem::bad_request(e.message()).into_response(),
        Err(ResetError::Recovery(e)) => problem(&e),
        Err(ResetError::Database(e)) => {
            tracing::error!(error = %e, "password update failed after the token was used");
            Problem::unavailable().into_response()
        }
    }
}
