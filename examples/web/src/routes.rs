//! The HTML pages' handlers.
//!
//! | route | page |
//! |---|---|
//! | `GET /` | home: signed in or not |
//! | `GET, POST /login`, `POST /logout` | sessions |
//! | `GET /recover` → `POST /recover` | "forgot password" → "enter code" |
//! | `POST /recover/{flow}/verify` | "enter code" → "new password" (or the code page again, with the error) |
//! | `POST /recover/{flow}/resend` | "enter code", with a new code or the wait |
//! | `GET /recover/{flow}` | "enter code" again (after a reload) |
//! | `POST /recover/password` | "new password" → "done" |
//! | `GET /dev/messages` | development mode only: the SMS sent |
//!
//! Every POST checks the CSRF token first. The flow id travels in the
//! forms' addresses; the reset token only in a hidden field.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use otp_recovery::{Error, FlowId, InputError, Requested};
use serde::Deserialize;

use crate::app::{App, MAX_IDENTIFIER_LEN, ResetError};
use crate::pages::{self, CodeNotice};
use crate::problem::Problem;
use crate::users::PasswordError;

/// The session cookie.
pub const SESSION_COOKIE: &str = "session";

type AppState = State<Arc<App>>;

/// The pages and their static files.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/recover", get(forgot_page).post(request))
        .route("/recover/password", post(set_password))
        .route("/recover/{flow}", get(code_page))
        .route("/recover/{flow}/verify", post(verify))
        .route("/recover/{flow}/resend", post(resend))
        .route(
            "/static/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], pages::STYLE_CSS) }),
        )
        .route(
            "/static/webotp.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], pages::WEBOTP_JS) }),
        )
}

/// Development mode only: `/dev/messages`.
pub fn dev_router() -> Router<Arc<App>> {
    Router::new().route("/dev/messages", get(dev_messages))
}

/// A page with its status, cookies and, for a problem worth waiting out,
/// `Retry-After`.
fn page(status: StatusCode, jar: CookieJar, body: String, problem: Option<&Problem>) -> Response {
    let mut response = (status, jar, Html(body)).into_response();
    if let Some(value) = problem.and_then(Problem::retry_after_header) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn problem_page(jar: CookieJar, problem: &Problem) -> Response {
    page(problem.status, jar, pages::problem(problem), Some(problem))
}

fn cookie(app: &App, name: &'static str, value: String) -> Cookie<'static> {
    Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(app.config().secure_cookies)
        .path("/")
        .build()
}

async fn home(State(app): AppState, jar: CookieJar) -> Response {
    let user = match jar.get(SESSION_COOKIE) {
        Some(session) => match app.users().session_user(session.value()).await {
            Ok(user) => user,
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                return problem_page(jar, &Problem::unavailable());
            }
        },
        None => None,
    };
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    page(StatusCode::OK, jar, pages::home(user.as_deref(), &csrf), None)
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    email: String,
    password: String,
}

async fn login_page(State(app): AppState, jar: CookieJar) -> Response {
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    page(StatusCode::OK, jar, pages::login(&csrf, "", false), None)
}

async fn login(State(app): AppState, jar: CookieJar, Form(form): Form<LoginForm>) -> Response {
    if !app.csrf().verify(&jar, &form.csrf) {
        return problem_page(jar, &Problem::csrf());
    }
    match app.users().sign_in(&form.email, &form.password).await {
        Ok(Some(session)) => {
            let jar = jar.add(cookie(&app, SESSION_COOKIE, session));
            (jar, Redirect::to("/")).into_response()
        }
        Ok(None) => {
            let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
            page(
                StatusCode::UNAUTHORIZED,
                jar,
                pages::login(&csrf, &form.email, true),
                None,
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "sign-in failed");
            problem_page(jar, &Problem::unavailable())
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(app): AppState, jar: CookieJar, Form(form): Form<CsrfForm>) -> Response {
    if !app.csrf().verify(&jar, &form.csrf) {
        return problem_page(jar, &Problem::csrf());
    }
    if let Some(session) = jar.get(SESSION_COOKIE)
        && let Err(e) = app.users().sign_out(session.value()).await
    {
        tracing::error!(error = %e, "sign-out failed");
        return problem_page(jar, &Problem::unavailable());
    }
    (
        jar.remove(Cookie::build(SESSION_COOKIE).path("/")),
        Redirect::to("/"),
    )
        .into_response()
}

async fn forgot_page(State(app): AppState, jar: CookieJar) -> Response {
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    page(StatusCode::OK, jar, pages::forgot(&csrf, None), None)
}

#[derive(Deserialize)]
struct IdentifierForm {
    csrf: String,
    identifier: String,
}

/// "Forgot password" submitted: known or not, the answer is the code page
/// (the recovery gives an unknown address a decoy flow and sends nothing).
async fn request(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<IdentifierForm>,
) -> Response {
    if !app.csrf().verify(&jar, &form.csrf) {
        return problem_page(jar, &Problem::csrf());
    }
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    let identifier = form.identifier.trim();
    if identifier.is_empty() || identifier.len() > MAX_IDENTIFIER_LEN {
        let problem = Problem::bad_request("Enter the email address of your account.");
        return page(problem.status, jar, pages::forgot(&csrf, Some(&problem)), None);
    }
    match app.request(identifier, peer).await {
        Ok(requested) => code_sent(&app, jar, &csrf, &requested),
        Err(e) => {
            let problem = Problem::from_error(&e);
            page(
                problem.status,
                jar,
                pages::forgot(&csrf, Some(&problem)),
                Some(&problem),
            )
        }
    }
}

/// The code page right after a code went out.
fn code_sent(app: &App, jar: CookieJar, csrf: &str, requested: &Requested) -> Response {
    let notice = CodeNotice {
        sent_to: Some(requested.masked_phone.to_string()),
        resend_in: requested
            .next_send_at
            .map(|at| crate::problem::whole_seconds(app.until(at))),
        problem: None,
    };
    page(
        StatusCode::OK,
        jar,
        pages::code(&requested.flow_id, csrf, &notice),
        None,
    )
}

fn parse_flow(flow: &str) -> Result<FlowId, Problem> {
    FlowId::parse(flow).map_err(|_| Problem::from_error(&Error::Input(InputError::MalformedFlowId)))
}

async fn code_page(State(app): AppState, jar: CookieJar, Path(flow): Path<String>) -> Response {
    let flow = match parse_flow(&flow) {
        Ok(flow) => flow,
        Err(problem) => return problem_page(jar, &problem),
    };
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    page(
        StatusCode::OK,
        jar,
        pages::code(&flow, &csrf, &CodeNotice::default()),
        None,
    )
}

/// A failed step on the code page: the page again with the error, or, when
/// the flow cannot go on, the problem page.
fn code_problem(jar: CookieJar, csrf: &str, flow: &FlowId, error: &Error) -> Response {
    let problem = Problem::from_error(error);
    if problem.start_again {
        return problem_page(jar, &problem);
    }
    let notice = CodeNotice {
        problem: Some(&problem),
        ..CodeNotice::default()
    };
    page(
        problem.status,
        jar,
        pages::code(flow, csrf, &notice),
        Some(&problem),
    )
}

#[derive(Deserialize)]
struct CodeForm {
    csrf: String,
    code: String,
}

async fn verify(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Path(flow): Path<String>,
    Form(form): Form<CodeForm>,
) -> Response {
    if !app.csrf().verify(&jar, &form.csrf) {
        return problem_page(jar, &Problem::csrf());
    }
    let flow = match parse_flow(&flow) {
        Ok(flow) => flow,
        Err(problem) => return problem_page(jar, &problem),
    };
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    match app.verify(&flow, &form.code, peer).await {
        Ok(verified) => {
            let token = verified.token.expose_secret();
            page(
                StatusCode::OK,
                jar,
                pages::new_password(&token, &csrf, None),
                None,
            )
        }
        Err(e) => code_problem(jar, &csrf, &flow, &e),
    }
}

async fn resend(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Path(flow): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !app.csrf().verify(&jar, &form.csrf) {
        return problem_page(jar, &Problem::csrf());
    }
    let flow = match parse_flow(&flow) {
        Ok(flow) => flow,
        Err(problem) => return problem_page(jar, &problem),
    };
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    match app.resend(&flow, peer).await {
        Ok(requested) => code_sent(&app, jar, &csrf, &requested),
        Err(e) => code_problem(jar, &csrf, &flow, &e),
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    csrf: String,
    token: String,
    password: String,
    confirm: String,
}

async fn set_password(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<PasswordForm>,
) -> Response {
    if !app.csrf().verify(&jar, &form.csrf) {
        return problem_page(jar, &Problem::csrf());
    }
    let (jar, csrf) = app.csrf().token(jar, app.config().secure_cookies);
    let again = |jar, message: &str| {
        page(
            StatusCode::UNPROCESSABLE_ENTITY,
            jar,
            pages::new_password(&form.token, &csrf, Some(message)),
            None,
        )
    };
    if form.password != form.confirm {
        return again(jar, "The two passwords are not the same.");
    }
    match app.reset_password(&form.token, &form.password, peer).await {
        Ok(done) => page(StatusCode::OK, jar, pages::done(done.sessions_revoked), None),
        Err(ResetError::Password(PasswordError::Hashing)) => problem_page(jar, &Problem::unavailable()),
        Err(ResetError::Password(e)) => again(jar, &e.message()),
        Err(ResetError::Recovery(e)) => problem_page(jar, &Problem::from_error(&e)),
        Err(ResetError::Database(e)) => {
            tracing::error!(error = %e, "password update failed after the token was used");
            problem_page(jar, &Problem::unavailable())
        }
    }
}

async fn dev_messages(State(app): AppState) -> Html<String> {
    Html(pages::dev_messages(&app.outbox().messages()))
}
