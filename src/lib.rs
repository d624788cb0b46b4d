//! Account recovery by SMS one-time code, with the security practices built
//! in: the user forgets a password, asks for recovery, gets a code by SMS,
//! enters it, and sets a new password.
//!
//! The crate owns the state machine, the cryptography and the limits; the
//! host brings its database ([`CodeStore`](store::CodeStore)), its SMS
//! gateway ([`SmsSender`](sms::SmsSender)) and, in tests, a [`Clock`].
//!
//! ```text
//! request ──► CodeSent ──verify──► Verified ──reset──► Completed
//!              │  ▲                   └─ token expires ─► Expired
//!      resend ─┘  │
//!              ├─ too many wrong codes ─► Locked
//!              ├─ code TTL passed ──────► Expired
//!              └─ new request ──────────► Superseded
//! ```
//!
//! - Codes: 6 digits (6 to 10), uniform from the OS CSPRNG, valid 10
//!   minutes at most (NIST SP 800-63B), 5 attempts, single use.
//! - Only HMAC-SHA256 of codes and tokens is stored, under a rotating
//!   [`KeyRing`], with the flow id bound in; comparisons are constant time.
//! - Unknown identifiers get answers of the same shape and cost, and no SMS.
//! - Every limit is decided by the pure [`machine`] and written with a
//!   compare-and-swap, so it holds across concurrent calls and instances.
//! - Secrets zeroize on drop and print as `[redacted]`.
//!
//! See [`Recovery`] for the whole flow in a few lines.
//!
//! # Cargo features
//! - `conformance`: the `conformance` suite for testing a store, and
//!   the fault-injecting wrappers of `testing`.
//!
//! # Adapters (workspace crates of their own)
//! - `otp-recovery-sqlx`: the SQLite and PostgreSQL stores;
//! - `otp-recovery-redis`: the Redis store;
//! - `otp-recovery-gateways`: Twilio, Vonage, a signed webhook, retries.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod answer;
mod case;
mod clock;
mod code;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod counter;
mod detect;
mod error;
pub mod events;
pub mod factor;
mod hex;
mod id;
mod input;
pub mod limits;
pub mod machine;
mod message;
mod phone;
mod policy;
pub mod record;
mod recovery;
mod reference;
pub mod rng;
mod secret;
pub mod sms;
pub mod store;
pub mod support;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod testing;
mod wire;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use code::KeyRing;
pub use error::{Error, Result};
pub use id::{AccountId, FlowId};
pub use input::InputError;
pub use message::{
    Encoding, Locale, MAX_APP_NAME_CHARS, MessageError, Messages, MessagesBuilder, Segments, Templates,
};
pub use phone::{MaskedPhone, NON_GEOGRAPHIC_CODES, PhoneNumber, is_country_code};
pub use policy::{
    MAX_ATTEMPTS_CAP, MAX_TOKEN_TTL, NIST_MAX_ACCOUNT_FAILURES, NIST_MAX_CODE_TTL, Policy, PolicyBuilder,
    PolicyError,
};
/// The `rand_core` whose `TryCryptoRng` [`Recovery::with_rng`] takes.
pub use rand_core;
pub use recovery::{
    Account, Completed, FactorChallenge, Progress, Recovery, RequestContext, Requested, Verified,
};
pub use recovery::{FactorCodeSent, MAX_IDENTIFIER_BYTES};
pub use rng::RandomError;
pub use secret::{
    Code, MAX_CODE_DIGITS, MAX_TYPED_CODE_BYTES, MIN_CODE_DIGITS, MIN_KEY_LEN, ResetToken, SecretString,
    ServerKey,
};

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
