//! The application state and the recovery steps the pages and the API
//! share: look the identifier up, call [`Recovery`], and on a reset set the
//! password and end the user's sessions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use otp_recovery::{
    Clock, Completed, Error, FlowId, KeyRing, Messages, Policy, Recovery, RequestContext, Requested,
    ServerKey, SystemClock, Timestamp, Verified,
};
use otp_recovery_sqlx::sqlite::SqliteStore;

use crate::csrf::CsrfKey;
use crate::outbox::Outbox;
use crate::users::{PasswordError, Users};

/// The longest identifier accepted (the longest email address); the
/// handlers refuse longer ones, known or not, before any lookup.
pub const MAX_IDENTIFIER_LEN: usize = 254;

/// How the application is set up.
#[derive(Debug)]
pub struct Config {
    /// The SQLite file for the recovery store, the users and the sessions.
    pub database: PathBuf,
    /// The recovery server key. In production it comes from a secret
    /// manager and stays the same across restarts (open flows are keyed
    /// with it).
    pub server_key: ServerKey,
    /// The recovery policy (code length, attempts, cooldowns, lockouts).
    pub policy: Policy,
    /// The app name in the SMS.
    pub app_name: String,
    /// The host name in the SMS's WebOTP line: the host the pages are
    /// served from, or browsers will not offer the code.
    pub webotp_domain: String,
    /// How users reach support; shown with a lock's support reference.
    pub support_contact: String,
    /// Development mode: keeps every SMS and lists it at `/dev/messages`.
    /// Never in production: that page shows every code to anyone.
    pub dev_mode: bool,
    /// Mark cookies `Secure`. Keep it on in production (served over
    /// HTTPS); off only for plain-HTTP development on loopback.
    pub secure_cookies: bool,
}

impl Config {
    /// Development settings: the default policy, a fresh random server key,
    /// `localhost` for WebOTP, plain-HTTP cookies, development mode off.
    ///
    /// # Errors
    /// When the OS random number generator fails.
    pub fn development(database: impl Into<PathBuf>) -> Result<Self, otp_recovery::RandomError> {
        Ok(Config {
            database: database.into(),
            server_key: ServerKey::generate()?,
            policy: Policy::default(),
            app_name: "Acme".into(),
            webotp_domain: "localhost".into(),
            support_contact: "help@acme.example".into(),
            dev_mode: false,
            secure_cookies: false,
        })
    }
}

/// Why setting a new password did not succeed.
#[derive(Debug)]
pub enum ResetError {
    /// The new password is not acceptable; the token was not used.
    Password(PasswordError),
    /// The recovery refused the token.
    Recovery(Error),
    /// The user table could not be updated after the token was used.
    Database(sqlx::Error),
}

/// A successful reset.
#[derive(Debug)]
pub struct ResetDone {
    /// How many sessions of the user were signed out.
    pub sessions_revoked: u64,
}

/// The application state, shared by every request.
#[derive(Debug)]
pub struct App {
    recovery: Recovery<SqliteStore, Outbox>,
    users: Users,
    csrf: CsrfKey,
    outbox: Outbox,
    config: Config,
}

impl App {
    /// Opens (creates) the database, seeds the demo users and sets the
    /// recovery up.
    ///
    /// # Errors
    /// A database, message-configuration or random-generator error.
    pub async fn new(config: Config) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let store = SqliteStore::open(&config.database).await?;
        let users = Users::open(&config.database).await?;
        users.seed_demo_users().await?;
        let outbox = Outbox::new(config.dev_mode);
        let messages = Messages::builder(config.app_name.clone())
            .webotp_domain(config.webotp_domain.clone())
            .support_contact(config.support_contact.clone())
            .build()?;
        let keys = KeyRing::new(1, config.server_key.clone());
        let recovery = Recovery::new(store, outbox.clone(), keys)
            .with_policy(config.policy.clone())
            .with_messages(messages);
        Ok(App {
            recovery,
            users,
            csrf: CsrfKey::generate()?,
            outbox,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The users and sessions.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The CSRF key.
    pub fn csrf(&self) -> &CsrfKey {
        &self.csrf
    }

    /// The development outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Starts a recovery. Known and unknown identifiers get the same kind
    /// of answer; only a known one gets an SMS.
    ///
    /// # Errors
    /// The recovery's errors ([`crate::problem::Problem`] maps them).
    pub async fn request(&self, identifier: &str, peer: SocketAddr) -> Result<Requested, Error> {
        let account = match self.users.find_account(identifier).await {
            Ok(account) => account,
            Err(e) => {
                // Reported like the recovery's own transient failures: the
                // user is told to try again (503), the log gets the cause.
                tracing::error!(error = %e, "user lookup failed");
                return Err(Error::Busy);
            }
        };
        self.recovery.request(identifier, account, &context(peer)).await
    }

    /// Sends a new code for the flow.
    ///
    /// # Errors
    /// The recovery's errors.
    pub async fn resend(&self, flow: &FlowId, peer: SocketAddr) -> Result<Requested, Error> {
        self.recovery.resend(flow, &context(peer)).await
    }

    /// Checks a code.
    ///
    /// # Errors
    /// The recovery's errors.
    pub async fn verify(&self, flow: &FlowId, code: &str, peer: SocketAddr) -> Result<Verified, Error> {
        self.recovery.verify(flow, code.trim(), &context(peer)).await
    }

    /// Sets a new password with a reset token: checks the password, hashes
    /// it, uses the token, stores the hash and signs the user out
    /// everywhere. The password is checked and hashed before the token is
    /// used, so a refused password leaves the token valid for another try.
    ///
    /// # Errors
    /// [`ResetError`].
    pub async fn reset_password(
        &self,
        token: &str,
        password: &str,
        peer: SocketAddr,
    ) -> Result<ResetDone, ResetError> {
        let hash = Users::hash_password(password)
            .await
            .map_err(ResetError::Password)?;
        let Completed { account, .. } = self
            .recovery
            .reset(token.trim(), &context(peer))
            .await
            .map_err(ResetError::Recovery)?;
        // The token is spent: from here on a failure means the user starts
        // again, which is safe (the password did not change).
        let sessions_revoked = self
            .users
            .set_password_and_sign_out(&account, &hash)
            .await
            .map_err(ResetError::Database)?;
        Ok(ResetDone { sessions_revoked })
    }

    /// How long from now until `at` (zero if it has passed).
    pub fn until(&self, at: Timestamp) -> Duration {
        at.saturating_duration_since(SystemClock.now())
    }
}

/// The request context: the peer's IP address feeds the per-IP limits.
fn context(peer: SocketAddr) -> RequestContext {
    RequestContext::from_ip(peer.ip())
}
