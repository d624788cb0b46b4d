//! The application's own users and sessions, in SQLite: argon2 password
//! hashes (RustCrypto's `argon2`, default parameters: Argon2id, 19 MiB, 2
//! passes), and sessions whose ids are kept only as SHA-256 hashes, so a
//! copy of the table signs nobody in.
//!
//! ```sql
//! CREATE TABLE users (
//!     id            TEXT PRIMARY KEY,   -- the AccountId given to the recovery
//!     email         TEXT NOT NULL UNIQUE,
//!     phone         TEXT NOT NULL,      -- verified, E.164
//!     password_hash TEXT NOT NULL       -- PHC string
//! );
//! CREATE TABLE sessions (
//!     id_hash    BLOB PRIMARY KEY,      -- SHA-256 of the cookie's value
//!     user_id    TEXT NOT NULL REFERENCES users (id),
//!     created_at INTEGER NOT NULL       -- seconds since the Unix epoch
//! );
//! ```

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use otp_recovery::{Account, AccountId, PhoneNumber};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// The demo users seeded at start-up: (id, email, phone, password).
pub const DEMO_USERS: [(&str, &str, &str, &str); 3] = [
    (
        "user-1001",
        "alice@example.com",
        "+14155550101",
        "alice-old-password",
    ),
    ("user-1002", "bob@example.com", "+14155550102", "bob-old-password"),
    (
        "user-1003",
        "carol@example.com",
        "+14155550103",
        "carol-old-password",
    ),
];

/// How long a session lasts after sign-in (12 hours).
pub const SESSION_LIFETIME_SECS: i64 = 12 * 3600;

/// Shortest password accepted (NIST SP 800-63B: at least 8).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (NIST: allow at least 64).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A password that cannot be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Shorter than [`MIN_PASSWORD_CHARS`].
    #[error("password too short")]
    TooShort,
    /// Longer than [`MAX_PASSWORD_CHARS`].
    #[error("password too long")]
    TooLong,
    /// Hashing failed (random salt or argon2): an internal error.
    #[error("password hashing failed")]
    Hashing,
}

impl PasswordError {
    /// What to tell the user.
    pub fn message(self) -> String {
        match self {
            PasswordError::TooShort => format!("Use at least {MIN_PASSWORD_CHARS} characters."),
            PasswordError::TooLong => format!("Use at most {MAX_PASSWORD_CHARS} characters."),
            PasswordError::Hashing => "Something went wrong on our side; please try again.".into(),
        }
    }
}

/// The user and session tables.
#[derive(Debug, Clone)]
pub struct Users {
    pool: SqlitePool,
    /// Verified against when an email is unknown, so that a failed sign-in
    /// costs the same whether the account exists or not.
    dummy_hash: String,
}

impl Users {
    /// Opens the database file (creating it and the tables if needed).
    ///
    /// # Errors
    /// A database error.
    pub async fn open(path: &Path) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS users (
                id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, phone TEXT NOT NULL,
                password_hash TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS sessions (
                id_hash BLOB PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users (id),
                created_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let dummy_hash = Self::hash_password("not a password of anyone").await?;
        Ok(Users { pool, dummy_hash })
    }

    /// Adds the [`DEMO_USERS`] that are not there yet.
    ///
    /// # Errors
    /// A database or hashing error.
    pub async fn seed_demo_users(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        for (id, email, phone, password) in DEMO_USERS {
            let exists = sqlx::query("SELECT 1 FROM users WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
            if !exists {
                let hash = Self::hash_password(password).await?;
                sqlx::query("INSERT INTO users (id, email, phone, password_hash) VALUES (?, ?, ?, ?)")
                    .bind(id)
                    .bind(email)
                    .bind(phone)
                    .bind(hash)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Hashes a new password (on a blocking thread: argon2 is meant to be
    /// slow), after checking its length.
    ///
    /// # Errors
    /// [`PasswordError`].
    pub async fn hash_password(password: &str) -> Result<String, PasswordError> {
        let chars = password.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(PasswordError::TooShort);
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(PasswordError::TooLong);
        }
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| PasswordError::Hashing)?;
        let password = zeroize::Zeroizing::new(password.to_owned());
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::encode_b64(&salt).map_err(|_| PasswordError::Hashing)?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|_| PasswordError::Hashing)
        })
        .await
        .map_err(|_| PasswordError::Hashing)?
    }

    /// The account an identifier (an email address) names, with its phone,
    /// for the recovery; `None` when no user has that address.
    ///
    /// # Errors
    /// A database error.
    pub async fn find_account(&self, identifier: &str) -> Result<Option<Account>, sqlx::Error> {
        let row = sqlx::query("SELECT id, phone FROM users WHERE email = ?")
            .bind(normalize_email(identifier))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let phone: String = row.try_get("phone")?;
        // The table holds valid values; a row that does not is corrupt.
        let id = AccountId::new(id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let phone = PhoneNumber::parse(&phone).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Some(Account::new(id, phone)))
    }

    /// Checks an email and password; on success opens a session and returns
    /// its id (the cookie's value).
    ///
    /// # Errors
    /// A database error.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = ?")
            .bind(normalize_email(email))
            .fetch_optional(&self.pool)
            .await?;
        let (user, hash) = match &row {
            Some(row) => (
                Some(row.try_get::<String, _>("id")?),
                row.try_get::<String, _>("password_hash")?,
            ),
            None => (None, self.dummy_hash.clone()),
        };
        let password = zeroize::Zeroizing::new(password.to_owned());
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        let Some(user) = user.filter(|_| matches) else {
            return Ok(None);
        };
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?;
        let id = hex(&id);
        // Expired sessions go as new ones come.
        sqlx::query("DELETE FROM sessions WHERE created_at <= ?")
            .bind(unix_seconds().saturating_sub(SESSION_LIFETIME_SECS))
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO sessions (id_hash, user_id, created_at) VALUES (?, ?, ?)")
            .bind(session_key(&id))
            .bind(user)
            .bind(unix_seconds())
            .execute(&self.pool)
            .await?;
        Ok(Some(id))
    }

    /// The email of the user a session cookie belongs to, if the session
    /// is open and younger than [`SESSION_LIFETIME_SECS`].
    ///
    /// # Errors
    /// A database error.
    pub async fn session_user(&self, session: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT users.email FROM sessions JOIN users ON users.id = sessions.user_id
             WHERE sessions.id_hash = ? AND sessions.created_at > ?",
        )
        .bind(session_key(session))
        .bind(unix_seconds().saturating_sub(SESSION_LIFETIME_SECS))
        .fetch_optional(&self.pool)
        .await
    }

    /// Ends one session.
    ///
    /// # Errors
    /// A database error.
    pub async fn sign_out(&self, session: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
            .bind(session_key(session))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets the password hash of `account` and ends all its sessions, in
    /// one transaction; returns how many sessions ended.
    ///
    /// # Errors
    /// A database error, or [`sqlx::Error::RowNotFound`] if the user is gone.
    pub async fn set_password_and_sign_out(
        &self,
        account: &AccountId,
        hash: &str,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(hash)
            .bind(account.as_str())
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(sqlx::Error::RowNotFound);
        }
        let revoked = sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(account.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(revoked)
    }
}

/// Email addresses are compared trimmed and lowercased.
fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The stored form of a session id.
fn session_key(session: &str) -> Vec<u8> {
    Sha256::digest(session.as_bytes()).to_vec()
}

fn unix_seconds() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
