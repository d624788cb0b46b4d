//! Account recovery by SMS code in an axum web application: the example
//! behind `cargo run -p otp-recovery-web`.
//!
//! The pages walk a user through "forgot password" → "enter code" → "new
//! password" → "done"; a JSON API offers the same steps to other clients.
//! Everything the application owns besides the recovery itself is here too,
//! small: its user table with argon2 password hashes, its sessions (all of a
//! user's sessions end when the password is reset), CSRF protection on
//! every form, and a mapping from [`otp_recovery::Error`] to HTTP statuses
//! and messages that never tell whether an account exists.
//!
//! | module | what it holds |
//! |---|---|
//! | [`app`] | the application state and the recovery steps both front ends share |
//! | [`routes`] | the HTML pages' handlers |
//! | [`api`] | the JSON API's handlers |
//! | [`pages`] | the HTML, escaped |
//! | [`problem`] | recovery errors → status, headers and the words a user sees |
//! | [`users`] | users, password hashes and sessions, in SQLite |
//! | [`csrf`] | signed double-submit tokens for the forms |
//! | [`outbox`] | the development SMS sender: prints, and keeps messages for `/dev/messages` |

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod app;
pub mod csrf;
pub mod outbox;
pub mod pages;
pub mod problem;
pub mod routes;
pub mod users;

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use tokio::net::TcpListener;

pub use app::{App, Config};

/// Headers on every response. `Referrer-Policy: no-referrer` keeps the
/// flow id in a page's address (and anything else in it) out of the
/// `Referer` of whatever the page links to or loads; `no-store` keeps
/// pages with a reset token out of caches.
const SECURITY_HEADERS: [(HeaderName, &str); 6] = [
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
];

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The whole application: pages, API, static files and, in development
/// mode only, `/dev/messages`.
pub fn router(app: App) -> Router {
    let dev = app.config().dev_mode;
    let mut router = routes::router().merge(api::router());
    if dev {
        router = router.merge(routes::dev_router());
    }
    router
        .layer(axum::middleware::map_response(security_headers))
        .with_state(std::sync::Arc::new(app))
}

/// Serves `app` on `listener` until the future is dropped or fails.
///
/// # Errors
/// An I/O error from the listener.
pub async fn serve(listener: TcpListener, app: App) -> std::io::Result<()> {
    // The peer address feeds the per-IP limits. Behind a reverse proxy,
    // take it from the proxy's header instead (and only from your proxy).
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
