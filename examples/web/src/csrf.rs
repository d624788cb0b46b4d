//! CSRF protection for the forms: a signed double-submit token.
//!
//! Every visitor gets a random `csrf` cookie (HttpOnly, SameSite=Strict);
//! each form carries `HMAC-SHA256(server key, cookie)` in a hidden field,
//! and every POST must bring both, matching. Another site can make a
//! browser send the cookie (SameSite aside) but can neither read it nor
//! compute its HMAC, so it cannot forge the field.
//!
//! Why not a crate: anonymous visitors (the "forgot password" form) have no
//! session to bind a token to, the whole mechanism is the dozen lines
//! below, and it uses the HMAC and constant-time comparison the recovery
//! already depends on. In production, serve over HTTPS and name the cookie
//! `__Host-csrf` with `Secure` (see [`crate::Config::secure_cookies`]), so
//! that a sibling subdomain cannot plant its own cookie.
//!
//! The JSON API needs no token: it takes only `application/json` bodies,
//! which another origin cannot send without a CORS preflight this server
//! never grants, and it reads no cookies.

use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::users::hex;

/// The cookie that carries the visitor's random value.
pub const COOKIE: &str = "csrf";

/// The key that signs tokens; drawn at start-up (tokens in pages served
/// before a restart stop working, which only means reloading the form).
pub struct CsrfKey([u8; 32]);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey([redacted])")
    }
}

impl CsrfKey {
    /// A random key.
    ///
    /// # Errors
    /// When the OS random number generator fails.
    pub fn generate() -> Result<Self, otp_recovery::RandomError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| otp_recovery::RandomError)?;
        Ok(CsrfKey(key))
    }

    fn sign(&self, cookie: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"otp-recovery-web csrf v1\0");
        mac.update(cookie.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The token for this visitor's forms, setting the cookie first if the
    /// visitor has none.
    pub fn token(&self, jar: CookieJar, secure: bool) -> (CookieJar, String) {
        if let Some(cookie) = jar.get(COOKIE) {
            let token = hex(&self.sign(cookie.value()));
            return (jar, token);
        }
        let mut value = [0u8; 32];
        if getrandom::fill(&mut value).is_err() {
            // Without randomness no token can be trusted: forms will be
            // refused, which is the safe failure.
            return (jar, String::new());
        }
        let value = hex(&value);
        let token = hex(&self.sign(&value));
        let cookie = Cookie::build((COOKIE, value))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .path("/");
        (jar.add(cookie), token)
    }

    /// Whether a form's token matches the visitor's cookie.
    pub fn verify(&self, jar: &CookieJar, token: &str) -> bool {
        let Some(cookie) = jar.get(COOKIE) else {
            return false;
        };
        let expected = hex(&self.sign(cookie.value()));
        !cookie.value().is_empty() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }
}
