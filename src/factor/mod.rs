//! A second factor in recovery: the SMS code proves possession of a phone
//! number, which SIM swap and porting can steal, so a policy can require one
//! more proof before the reset token is issued (NIST SP 800-63B rev 4 asks
//! recovery at AAL2 for two codes from different methods, or a code and an
//! existing authenticator):
//!
//! - [`Totp`]: a code from an authenticator app the account enrolled
//!   (RFC 6238; SHA-1, SHA-256 or SHA-512; 6 to 8 digits), accepted once per
//!   time step;
//! - a saved [recovery code](RecoveryCodes): 80 bits, stored only as MACs,
//!   single use;
//! - a code on a second channel such as email, through a
//!   [`ChannelSender`].
//!
//! The host says per account which factors it has, through a
//! [`FactorSource`] given to [`Recovery::with_factors`](crate::Recovery::with_factors);
//! [`Policy`](crate::Policy)'s [`SecondFactor`] says when one is required.
//! After the right SMS code, [`Recovery::verify_code`](crate::Recovery::verify_code)
//! answers [`Progress::SecondFactor`](crate::Progress) with the factors the
//! user may use; [`Recovery::verify_factor`](crate::Recovery::verify_factor)
//! then issues the reset token. Each factor has its own attempt limit,
//! counted with a compare-and-swap on the flow like the SMS code, and every
//! wrong factor code counts toward the account's lockout.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::collections::HashMap;
//! use otp_recovery::factor::{FactorKind, Factors, SecondFactor, Totp, TotpSecret};
//! use otp_recovery::sms::RecordingSender;
//! use otp_recovery::store::MemoryStore;
//! use otp_recovery::{Account, AccountId, KeyRing, PhoneNumber, Policy, Progress, Recovery};
//! use otp_recovery::{RequestContext, ServerKey, SystemClock, Clock};
//!
//! let id = AccountId::new("42").unwrap();
//! let totp = Totp::new(TotpSecret::from_bytes(vec![7; 20]).unwrap());
//! let factors = HashMap::from([(id.clone(), Factors::none().with_totp(totp.clone()))]);
//!
//! let sender = RecordingSender::new();
//! let keys = KeyRing::new(1, ServerKey::generate().unwrap());
//! let policy = Policy::builder().second_factor(SecondFactor::Required).build().unwrap();
//! let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys)
//!     .with_policy(policy)
//!     .with_factors(factors);
//! let ctx = RequestContext::without_client_ip();
//!
//! let account = Account::new(id, PhoneNumber::parse("+14155550123").unwrap());
//! let flow = recovery.request("alice", Some(account), &ctx).await.unwrap().flow_id;
//! let sms = sender.last_code().unwrap();
//! let Progress::SecondFactor(challenge) = recovery.verify_code(&flow, sms.expose_secret(), &ctx).await.unwrap()
//! else { panic!("a second factor is required") };
//! assert_eq!(challenge.kinds, vec![FactorKind::Totp]);
//!
//! let code = totp.code_at(SystemClock.now());
//! let verified = recovery.verify_factor(&flow, FactorKind::Totp, code.expose_secret(), &ctx).await.unwrap();
//! # let _ = verified.token;
//! # });
//! ```

mod channel;
mod recovery_codes;
mod totp;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub use channel::{ChannelAddress, ChannelMessage, ChannelSender, RecordingChannel};
pub use recovery_codes::{
    MAX_RECOVERY_CODES, RecoveryCode, RecoveryCodeError, RecoveryCodeSet, RecoveryCodes,
};
pub use totp::{MAX_TOTP_SKEW, MIN_TOTP_SECRET_LEN, Totp, TotpAlgorithm, TotpSecret, hotp};

use crate::id::AccountId;

/// When a second factor is required after the SMS code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SecondFactor {
    /// Never: the SMS code alone issues the reset token (the default, for
    /// hosts without enrolled factors).
    #[default]
    Off,
    /// When the account has a factor the policy accepts; accounts with
    /// none recover by SMS alone.
    IfEnrolled,
    /// Always: an account with no accepted factor cannot recover by SMS and
    /// is sent to support ([`Error::NoSecondFactor`](crate::Error::NoSecondFactor)).
    Required,
}

/// A kind of second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FactorKind {
    /// A code from an enrolled authenticator app.
    Totp,
    /// A saved recovery code.
    RecoveryCode,
    /// A code sent on the second channel.
    Channel,
}

impl FactorKind {
    /// Every kind, in a stable order.
    pub const ALL: [FactorKind; 3] = [FactorKind::Totp, FactorKind::RecoveryCode, FactorKind::Channel];

    /// The kind's position in per-kind arrays and bit sets.
    pub(crate) fn index(self) -> usize {
        match self {
            FactorKind::Totp => 0,
            FactorKind::RecoveryCode => 1,
            FactorKind::Channel => 2,
        }
    }

    /// A stable lowercase name, for events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FactorKind::Totp => "totp",
            FactorKind::RecoveryCode => "recovery_code",
            FactorKind::Channel => "channel",
        }
    }
}

impl fmt::Display for FactorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of factor kinds (a bit per kind), as a flow record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FactorSet(u8);

impl FactorSet {
    /// No kind.
    pub const EMPTY: FactorSet = FactorSet(0);
    /// Every kind.
    pub const ALL: FactorSet = FactorSet(0b111);

    /// The set with `kind` added.
    #[must_use]
    pub fn with(self, kind: FactorKind) -> Self {
        FactorSet(self.0 | 1 << kind.index())
    }

    /// The set without `kind`.
    #[must_use]
    pub fn without(self, kind: FactorKind) -> Self {
        FactorSet(self.0 & !(1 << kind.index()))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: FactorKind) -> bool {
        self.0 & 1 << kind.index() != 0
    }

    /// The kinds in both sets.
    #[must_use]
    pub fn intersect(self, other: FactorSet) -> Self {
        FactorSet(self.0 & other.0)
    }

    /// Whether no kind is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in [`FactorKind::ALL`] order.
    pub fn kinds(self) -> Vec<FactorKind> {
        FactorKind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .collect()
    }

    /// The set's byte, for stores.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set of a stored byte; `None` for bits no kind has.
    pub fn from_bits(bits: u8) -> Option<Self> {
        (bits & !FactorSet::ALL.0 == 0).then_some(FactorSet(bits))
    }
}

impl FromIterator<FactorKind> for FactorSet {
    fn from_iter<I: IntoIterator<Item = FactorKind>>(iter: I) -> Self {
        iter.into_iter().fold(FactorSet::EMPTY, FactorSet::with)
    }
}

/// The second factors one account has, as the host knows them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Factors {
    /// An enrolled authenticator.
    pub totp: Option<Totp>,
    /// The account's current set of saved recovery codes.
    pub recovery_codes: Option<RecoveryCodeSet>,
    /// A verified address on the second channel (e.g. email).
    pub channel: Option<ChannelAddress>,
}

impl Factors {
    /// No factor.
    pub fn none() -> Self {
        Self::default()
    }

    /// With an enrolled authenticator.
    #[must_use]
    pub fn with_totp(mut self, totp: Totp) -> Self {
        self.totp = Some(totp);
        self
    }

    /// With a set of recovery codes (an empty set counts as none).
    #[must_use]
    pub fn with_recovery_codes(mut self, set: RecoveryCodeSet) -> Self {
        self.recovery_codes = Some(set);
        self
    }

    /// With an address on the second channel.
    #[must_use]
    pub fn with_channel(mut self, address: ChannelAddress) -> Self {
        self.channel = Some(address);
        self
    }

    /// The kinds this account has.
    pub fn kinds(&self) -> FactorSet {
        let mut set = FactorSet::EMPTY;
        if self.totp.is_some() {
            set = set.with(FactorKind::Totp);
        }
        if self.recovery_codes.as_ref().is_some_and(|s| !s.is_empty()) {
            set = set.with(FactorKind::RecoveryCode);
        }
        if self.channel.is_some() {
            set = set.with(FactorKind::Channel);
        }
        set
    }
}

/// The host could not say which factors an account has (its database
/// failed). The message is the host's, and must hold no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the account's factors could not be read: {0}")]
pub struct FactorSourceError(pub String);

/// Where the crate learns which second factors an account has: the host's
/// account database. Asked after the right SMS code, and again when a
/// factor code is checked (so a factor removed meanwhile no longer counts).
#[async_trait]
pub trait FactorSource: Send + Sync {
    /// The factors of `account` (none if it has none).
    async fn factors(&self, account: &AccountId) -> Result<Factors, FactorSourceError>;
}

/// A fixed map, for tests, examples and hosts that load factors up front.
#[async_trait]
impl FactorSource for HashMap<AccountId, Factors> {
    async fn factors(&self, account: &AccountId) -> Result<Factors, FactorSourceError> {
        Ok(self.get(account).cloned().unwrap_or_default())
    }
}

#[async_trait]
impl<T: FactorSource + ?Sized> FactorSource for Arc<T> {
    async fn factors(&self, account: &AccountId) -> Result<Factors, FactorSourceError> {
        (**self).factors(account).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_sets_keep_their_kinds_and_refuse_unknown_bits() {
        let set: FactorSet = [FactorKind::Channel, FactorKind::Totp].into_iter().collect();
        assert_eq!(set.kinds(), vec![FactorKind::Totp, FactorKind::Channel]);
        assert!(!set.contains(FactorKind::RecoveryCode));
        assert_eq!(FactorSet::from_bits(set.bits()), Some(set));
        assert_eq!(FactorSet::from_bits(0b1000), None);
        assert!(
            set.intersect(FactorSet::EMPTY.with(FactorKind::RecoveryCode))
                .is_empty()
        );
    }
}
