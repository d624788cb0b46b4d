//! The flow record: everything a store keeps about one recovery, and no
//! secret (codes and tokens appear only as MACs). Store authors and support
//! tools need these types; the basic flow of a host does not.

use std::fmt;
use std::str::FromStr;

use crate::clock::Timestamp;
pub use crate::code::Mac;
use crate::factor::{FactorKind, FactorSet};
use crate::id::{AccountId, FlowId};
use crate::phone::PhoneNumber;
pub use crate::wire::DecodeError;
pub(crate) use crate::wire::Reader;

mod encoding;

/// The stored state of a flow. Expiry is not stored: it is derived from the
/// timestamps by [`FlowRecord::state_at`], so no write is needed when time
/// passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlowState {
    /// A code was sent and can be verified.
    CodeSent,
    /// The code was verified; a reset token is outstanding.
    Verified,
    /// The token was used: the recovery is done.
    Completed,
    /// Too many wrong codes.
    Locked,
    /// A newer request of the same account replaced this flow.
    Superseded,
    /// Cancelled (by support, or by the host).
    Cancelled,
    /// The SMS code was verified and a second factor is awaited before a
    /// reset token is issued.
    FactorPending,
}

impl FlowState {
    /// Every state, for stores that map them and for tests.
    pub const ALL: &'static [FlowState] = &[
        FlowState::CodeSent,
        FlowState::Verified,
        FlowState::Completed,
        FlowState::Locked,
        FlowState::Superseded,
        FlowState::Cancelled,
        FlowState::FactorPending,
    ];

    /// Whether a flow in this state can still lead to a reset (and so is
    /// superseded by a newer request of the same account).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            FlowState::CodeSent | FlowState::Verified | FlowState::FactorPending
        )
    }

    /// A stable one-byte code, for stores; never reused.
    pub fn code(self) -> u8 {
        match self {
            FlowState::CodeSent => 1,
            FlowState::Verified => 2,
            FlowState::Completed => 3,
            FlowState::Locked => 4,
            FlowState::Superseded => 5,
            FlowState::Cancelled => 6,
            FlowState::FactorPending => 7,
        }
    }

    /// The state with this [`code`](FlowState::code).
    pub fn from_code(code: u8) -> Option<Self> {
        FlowState::ALL.iter().copied().find(|s| s.code() == code)
    }

    /// A stable lowercase name, for stores.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::CodeSent => "code_sent",
            FlowState::Verified => "verified",
            FlowState::Completed => "completed",
            FlowState::Locked => "locked",
            FlowState::Superseded => "superseded",
            FlowState::Cancelled => "cancelled",
            FlowState::FactorPending => "factor_pending",
        }
    }
}

impl FromStr for FlowState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FlowState::ALL
            .iter()
            .copied()
            .find(|state| state.as_str() == s)
            .ok_or(UnknownState)
    }
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state name that no [`FlowState`] has (a corrupt or foreign
/// record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown flow state")]
pub struct UnknownState;

/// Whom a flow is for: an account, or an identifier that matched none.
///
/// Flows of an unknown identifier (decoys) behave exactly like an account's
/// (limits, supersede, attempts) but can never be verified and send
/// nothing. Their [`DecoyId`] is derived from the identifier under the
/// key ring's decoy key, so it is stable and reveals nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A real account.
    Account(AccountId),
    /// An identifier that matched no account.
    Unknown(DecoyId),
}

impl Subject {
    /// The key under which a store indexes the subject's open flow and the
    /// crate counts its limits: `account:<id>` or `unknown:<hex>`.
    pub fn key(&self) -> String {
        crate::limits::key(&self.key_parts())
    }

    /// [`Subject::key`] in its two parts, to hash without joining them.
    pub(crate) fn key_parts(&self) -> [&str; 2] {
        match self {
            Subject::Account(account) => ["account:", account.as_str()],
            Subject::Unknown(decoy) => ["unknown:", decoy.as_str()],
        }
    }

    /// The account, if the subject is one.
    pub fn account(&self) -> Option<&AccountId> {
        match self {
            Subject::Account(account) => Some(account),
            Subject::Unknown(_) => None,
        }
    }

    /// The account, owned, for an event. Both kinds clone their shared id
    /// (a reference count, an atomic operation) and a decoy drops its
    /// clone: an event costs a decoy's flow what it costs an account's.
    pub(crate) fn owned_account(&self) -> Option<AccountId> {
        match self.clone() {
            Subject::Account(account) => Some(account),
            Subject::Unknown(_) => None,
        }
    }
}

/// The stable stand-in for an identifier that matched no account: 128 bits
/// of a MAC of the identifier.
///
/// It keeps its hex form, made once, as text like an account id's
/// (`Arc<str>`): its subject key is made several times per request, and
/// must cost what an account's does (checking bytes to be text on each use
/// cost a request for an unknown identifier a measurable extra).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DecoyId {
    bytes: [u8; 16],
    hex: std::sync::Arc<str>,
}

impl DecoyId {
    /// From its bytes (for stores decoding a record).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut hex = String::with_capacity(32);
        crate::hex::encode_into(&bytes, &mut hex);
        DecoyId {
            bytes,
            hex: hex.into(),
        }
    }

    /// From its lowercase hex form, kept as it is (one allocation, as an
    /// account id's).
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        crate::hex::decode_into(hex.as_bytes(), &mut bytes).ok()?;
        Some(DecoyId {
            bytes,
            hex: hex.into(),
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.bytes
    }

    /// The lowercase hex form.
    pub(crate) fn as_str(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for DecoyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DecoyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecoyId({self})")
    }
}

/// The state of a flow at a given instant, expiry included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EffectiveState {
    /// Stored state, still within its lifetime.
    Stored(FlowState),
    /// The code (state `CodeSent`) or token (state `Verified`) has expired.
    Expired,
}

/// One recovery flow as a store keeps it.
///
/// Stores persist every field and hand it back unchanged; the pure
/// [`machine`](crate::machine) decides every change. `version` grows by one
/// with each change and is what compare-and-swap checks.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowRecord {
    /// The flow's id.
    pub id: FlowId,
    /// Whom the flow is for.
    pub subject: Subject,
    /// Where codes go; `None` for an unknown subject.
    pub phone: Option<PhoneNumber>,
    /// Stored state.
    pub state: FlowState,
    /// Grows by one with every change.
    pub version: u64,
    /// Id of the key that made `code_mac` and `token_mac`.
    pub key_id: u32,
    /// MAC of the current code.
    pub code_mac: Mac,
    /// The current code is valid strictly before this instant.
    pub code_expires_at: Timestamp,
    /// Wrong codes so far, over every code of this flow.
    pub failed_attempts: u32,
    /// Wrong codes the subject had in its failure window when the flow was
    /// opened; with `failed_attempts`, what the account limit is checked on.
    pub prior_failures: u32,
    /// Codes sent so far, the first included.
    pub sends: u32,
    /// When the last code was sent.
    pub last_sent_at: Timestamp,
    /// When the flow was opened.
    pub created_at: Timestamp,
    /// When the flow last changed.
    pub updated_at: Timestamp,
    /// MAC of the outstanding reset token (state `Verified` only).
    pub token_mac: Option<Mac>,
    /// The token is valid strictly before this instant.
    pub token_expires_at: Timestamp,
    /// The record may be deleted from this instant on.
    pub purge_after: Timestamp,
    /// The second-factor step, once the SMS code was verified on a flow
    /// that requires one.
    pub factor: Option<FactorProgress>,
}

/// The second-factor step of a flow: what the user may use, and what each
/// kind has cost so far. No secret: the channel code is kept as its MAC.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FactorProgress {
    /// The kinds the user may use, fixed when the SMS code was verified.
    pub offered: FactorSet,
    /// Wrong codes so far, per kind, in [`FactorKind::ALL`] order.
    pub failed: [u32; 3],
    /// The factor step must be completed strictly before this instant.
    pub expires_at: Timestamp,
    /// MAC of the outstanding second-channel code, if one was sent.
    pub channel_mac: Option<Mac>,
    /// That code is valid strictly before this instant.
    pub channel_expires_at: Timestamp,
    /// Second-channel codes sent so far.
    pub channel_sends: u32,
    /// When the last second-channel code was sent.
    pub channel_last_sent_at: Timestamp,
}

impl FactorProgress {
    /// A factor step offering `offered`, open until `expires_at`.
    pub fn new(offered: FactorSet, expires_at: Timestamp) -> Self {
        FactorProgress {
            offered,
            failed: [0; 3],
            expires_at,
            channel_mac: None,
            channel_expires_at: Timestamp::default(),
            channel_sends: 0,
            channel_last_sent_at: Timestamp::default(),
        }
    }

    /// Wrong codes so far of `kind`.
    pub fn failed(&self, kind: FactorKind) -> u32 {
        self.failed[kind.index()]
    }

    /// Wrong factor codes so far, over every kind.
    pub fn total_failed(&self) -> u32 {
        self.failed.iter().fold(0u32, |sum, n| sum.saturating_add(*n))
    }
}

impl fmt::Debug for FactorProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FactorProgress")
            .field("offered", &self.offered)
            .field("failed", &self.failed)
            .field("expires_at", &self.expires_at)
            .field("channel_expires_at", &self.channel_expires_at)
            .field("channel_sends", &self.channel_sends)
            .field("channel_last_sent_at", &self.channel_last_sent_at)
            .finish_non_exhaustive()
    }
}

impl FlowRecord {
    /// The state at `now`, with expiry applied.
    pub fn state_at(&self, now: Timestamp) -> EffectiveState {
        match self.state {
            FlowState::CodeSent if now >= self.code_expires_at => EffectiveState::Expired,
            FlowState::Verified if now >= self.token_expires_at => EffectiveState::Expired,
            FlowState::FactorPending if self.factor.as_ref().is_none_or(|f| now >= f.expires_at) => {
                EffectiveState::Expired
            }
            state => EffectiveState::Stored(state),
        }
    }

    /// Whether this is the made-up flow of an unknown identifier.
    pub fn is_decoy(&self) -> bool {
        matches!(self.subject, Subject::Unknown(_))
    }

    /// The account, unless the flow is a decoy.
    pub fn account(&self) -> Option<&AccountId> {
        self.subject.account()
    }
}

impl fmt::Debug for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowRecord")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("phone", &self.phone)
            .field("state", &self.state)
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .field("code_expires_at", &self.code_expires_at)
            .field("failed_attempts", &self.failed_attempts)
            .field("prior_failures", &self.prior_failures)
            .field("sends", &self.sends)
            .field("last_sent_at", &self.last_sent_at)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("token_expires_at", &self.token_expires_at)
            .field("purge_after", &self.purge_after)
            .field("factor", &self.factor)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> FlowRecord {
        FlowRecord {
            id: FlowId::from_bytes([9; 16]),
            subject: Subject::Account(AccountId::new("user-42").unwrap()),
            phone: Some(PhoneNumber::parse("+14155550123").unwrap()),
            state: FlowState::Verified,
            version: 7,
            key_id: 3,
            code_mac: Mac::from_bytes([1; 32]),
            code_expires_at: Timestamp::from_unix_millis(10),
            failed_attempts: 2,
            prior_failures: 4,
            sends: 3,
            last_sent_at: Timestamp::from_unix_millis(11),
            created_at: Timestamp::from_unix_millis(12),
            updated_at: Timestamp::from_unix_millis(13),
            token_mac: Some(Mac::from_bytes([2; 32])),
            token_expires_at: Timestamp::from_unix_millis(14),
            purge_after: Timestamp::from_unix_millis(15),
            factor: None,
        }
    }

    fn factor_step() -> FactorProgress {
        FactorProgress {
            offered: FactorSet::ALL.without(FactorKind::RecoveryCode),
            failed: [1, 0, 2],
            expires_at: Timestamp::from_unix_millis(16),
            channel_mac: Some(Mac::from_bytes([3; 32])),
            channel_expires_at: Timestamp::from_unix_millis(17),
            channel_sends: 2,
            channel_last_sent_at: Timestamp::from_unix_millis(18),
        }
    }

    #[test]
    fn records_round_trip_through_bytes() {
        let mut rec = sample();
        assert_eq!(FlowRecord::from_bytes(&rec.to_bytes()), Ok(rec.clone()));
        rec.subject = Subject::Unknown(DecoyId::from_bytes([5; 16]));
        rec.phone = None;
        rec.token_mac = None;
        for &state in FlowState::ALL {
            rec.state = state;
            rec.factor = (state == FlowState::FactorPending).then(factor_step);
            assert_eq!(FlowRecord::from_bytes(&rec.to_bytes()), Ok(rec.clone()));
        }
        let mut step = factor_step();
        step.channel_mac = None;
        rec.factor = Some(step);
        assert_eq!(FlowRecord::from_bytes(&rec.to_bytes()), Ok(rec));
    }

    #[test]
    fn records_of_the_first_format_are_still_read() {
        // Version 1 had no factor step: its bytes are version 2's without
        // the trailing "no factor" flag.
        let rec = sample();
        let mut v1 = rec.to_bytes();
        assert_eq!(v1.pop(), Some(0));
        v1[2] = 1;
        assert_eq!(FlowRecord::from_bytes(&v1), Ok(rec));
    }

    #[test]
    fn a_flow_awaiting_a_factor_without_its_step_or_with_unknown_kinds_is_refused() {
        let mut rec = sample();
        rec.state = FlowState::FactorPending;
        assert!(FlowRecord::from_bytes(&rec.to_bytes()).is_err());
        rec.factor = Some(factor_step());
        let mut bytes = rec.to_bytes();
        let at = bytes.len() - (1 + 12 + 1 + 32 + 24 + 4);
        assert_eq!(bytes[at], FactorSet::ALL.without(FactorKind::RecoveryCode).bits());
        bytes[at] = 0b1000;
        assert_eq!(
            FlowRecord::from_bytes(&bytes),
            Err(DecodeError("unknown factor kind"))
        );
    }

    #[test]
    fn every_truncation_and_corruption_is_a_typed_error() {
        let mut full = sample();
        full.state = FlowState::FactorPending;
        full.factor = Some(factor_step());
        let bytes = full.to_bytes();
        for len in 0..bytes.len() {
            assert!(FlowRecord::from_bytes(&bytes[..len]).is_err(), "prefix {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            FlowRecord::from_bytes(&longer),
            Err(DecodeError("trailing bytes"))
        );
        let mut foreign = bytes.clone();
        foreign[2] = 3;
        assert!(FlowRecord::from_bytes(&foreign).is_err());
        let mut mismatched = sample();
        mismatched.phone = None;
        assert!(
            FlowRecord::from_bytes(&mismatched.to_bytes()).is_err(),
            "an account flow needs a phone"
        );
        // Flipping any single byte never panics.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = FlowRecord::from_bytes(&b);
        }
    }

    #[test]
    fn state_names_round_trip_and_unknown_names_are_refused() {
        for &state in FlowState::ALL {
            assert_eq!(state.as_str().parse::<FlowState>(), Ok(state));
            assert_eq!(FlowState::from_code(state.code()), Some(state));
        }
        assert_eq!(FlowState::from_code(0), None);
        assert_eq!("CodeSent".parse::<FlowState>(), Err(UnknownState));
        assert_eq!("".parse::<FlowState>(), Err(UnknownState));
    }
}
