//! SQLite and PostgreSQL stores for [`otp_recovery`], through `sqlx`.
//!
//! Each store implements [`otp_recovery::store::CodeStore`] and passes its
//! conformance suite. Enable the feature of your database:
//!
//! ```toml
//! otp-recovery-sqlx = { version = "0.1", features = ["postgres"] }
//! ```
//!
//! sqlx's types appear in this crate's API only where a host passes its
//! own pool in (`SqliteStore::from_pool`, `PostgresStore::from_pool`).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(fuzzing)]
pub mod fuzzing;
