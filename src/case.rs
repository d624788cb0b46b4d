//! Support values: the reference a locked user quotes, the agent who acts,
//! the case the store keeps, and what support sees of flows and accounts.

use crate::clock::Timestamp;
use crate::id::{AccountId, FlowId};
use crate::input::InputError;
use crate::phone::MaskedPhone;
use crate::record::{DecodeError, DecoyId, EffectiveState, FlowRecord, Reader, Subject};
pub use crate::reference::SupportReference;

/// A support agent, as the host authenticated them: a name or id of 1 to 64
/// printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Agent(String);

impl Agent {
    /// An agent named `name`.
    ///
    /// # Errors
    /// [`InputError::MalformedAgent`] if empty, over 64 characters or with
    /// control characters.
    pub fn new(name: impl Into<String>) -> Result<Self, InputError> {
        let name = name.into();
        if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(InputError::MalformedAgent);
        }
        Ok(Agent(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a reason an agent gave: 1 to 500 characters, no control
/// characters but newlines.
pub(crate) fn check_reason(reason: &str) -> Result<(), InputError> {
    let ok = !reason.trim().is_empty()
        && reason.chars().count() <= 500
        && !reason.chars().any(|c| c.is_control() && c != '\n');
    if ok {
        Ok(())
    } else {
        Err(InputError::MalformedReason)
    }
}

/// A locked case as the store keeps it, so support can find it by its
/// reference.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupportCase {
    /// The reference the user was given.
    pub reference: SupportReference,
    /// Whose case it is.
    pub subject: Subject,
    /// The flow whose wrong code reached the limit.
    pub flow: FlowId,
    /// When the lock began.
    pub opened_at: Timestamp,
    /// When the lock ends by itself.
    pub locked_until: Timestamp,
    /// When an agent unlocked it, if one did.
    pub unlocked_at: Option<Timestamp>,
    /// The record may be deleted from this instant on.
    pub purge_after: Timestamp,
}

const CASE_MAGIC: &[u8; 3] = b"OC\x01";

impl SupportCase {
    /// The case's versioned binary form, for stores.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        out.extend_from_slice(CASE_MAGIC);
        out.extend_from_slice(self.reference.as_compact().as_bytes());
        match &self.subject {
            Subject::Account(account) => {
                out.push(1);
                out.push(account.as_str().len() as u8);
                out.extend_from_slice(account.as_str().as_bytes());
            }
            Subject::Unknown(decoy) => {
                out.push(2);
                out.extend_from_slice(decoy.as_bytes());
            }
        }
        out.extend_from_slice(self.flow.as_bytes());
        for t in [self.opened_at, self.locked_until, self.purge_after] {
            out.extend_from_slice(&t.as_unix_millis().to_be_bytes());
        }
        match self.unlocked_at {
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.as_unix_millis().to_be_bytes());
            }
            None => out.push(0),
        }
        out
    }

    /// Decodes [`SupportCase::to_bytes`] output.
    ///
    /// # Errors
    /// [`DecodeError`] for anything that is not a whole, valid case.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.take(3)? != CASE_MAGIC {
            return Err(DecodeError("unknown format or version"));
        }
        let reference = std::str::from_utf8(r.take(8)?)
            .ok()
            .and_then(|s| SupportReference::parse(s).ok())
            .ok_or(DecodeError("invalid reference"))?;
        let subject = match r.byte()? {
            1 => {
                let id = r.string()?.ok_or(DecodeError("missing account id"))?;
                Subject::Account(AccountId::new(id).map_err(|_| DecodeError("invalid account id"))?)
            }
            2 => Subject::Unknown(DecoyId::from_bytes(r.array()?)),
            _ => return Err(DecodeError("unknown subject kind")),
        };
        let flow = FlowId::from_bytes(r.array()?);
        let opened_at = r.timestamp()?;
        let locked_until = r.timestamp()?;
        let purge_after = r.timestamp()?;
        let unlocked_at = match r.byte()? {
            0 => None,
            1 => Some(r.timestamp()?),
            _ => return Err(DecodeError("invalid unlock flag")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(SupportCase {
            reference,
            subject,
            flow,
            opened_at,
            locked_until,
            unlocked_at,
            purge_after,
        })
    }
}

/// What support sees of a flow: states, counts and times, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowSummary {
    /// The flow's id.
    pub id: FlowId,
    /// Its state now, expiry applied.
    pub state: EffectiveState,
    /// Wrong codes on it.
    pub failed_attempts: u32,
    /// Codes it sent.
    pub sends: u32,
    /// Where its codes went, masked.
    pub masked_phone: Option<MaskedPhone>,
    /// When it was opened.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When its current code expires (or expired).
    pub code_expires_at: Timestamp,
}

impl FlowSummary {
    pub(crate) fn of(flow: &FlowRecord, now: Timestamp) -> Self {
        FlowSummary {
            id: flow.id,
            state: flow.state_at(now),
            failed_attempts: flow.failed_attempts,
            sends: flow.sends,
            masked_phone: flow.phone.as_ref().map(|p| p.masked()),
            created_at: flow.created_at,
            updated_at: flow.updated_at,
            code_expires_at: flow.code_expires_at,
        }
    }

    /// Whether the flow can still lead to a reset.
    pub fn is_open(&self) -> bool {
        matches!(self.state, EffectiveState::Stored(s) if s.is_open())
    }
}

/// What support sees of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaseView {
    /// Whose case: an account, or an identifier that matched none.
    pub subject: Subject,
    /// Wrong codes in the current failure window.
    pub failures: u64,
    /// When the failure window ends, if one is open.
    pub failures_reset_at: Option<Timestamp>,
    /// Wrong codes in a row, over every window: only a completed reset or
    /// an unlock clears them.
    pub failures_in_a_row: u64,
    /// Whether they reached
    /// [`Policy::max_consecutive_failures`](crate::Policy::max_consecutive_failures):
    /// recovery by SMS is locked until support unlocks it.
    pub hard_locked: bool,
    /// Until when recovery by SMS is locked, if it is (for a lock of the
    /// failure window; see `hard_locked` for the other).
    pub locked_until: Option<Timestamp>,
    /// The reference of the current lock, if locked.
    pub reference: Option<SupportReference>,
    /// The most recent flows, newest first.
    pub flows: Vec<FlowSummary>,
}

impl CaseView {
    /// Whether the subject's most recent flow is cancelled or closed.
    pub fn has_open_flow(&self) -> bool {
        self.flows.iter().any(FlowSummary::is_open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_forgive_how_people_type_them() {
        let r = SupportReference::from_bits([0x12, 0x34, 0x56, 0x78, 0x9a]);
        let text = r.to_string();
        assert_eq!(text.len(), 9);
        assert_eq!(SupportReference::parse(&text), Ok(r));
        assert_eq!(SupportReference::parse(&text.to_lowercase()), Ok(r));
        assert_eq!(SupportReference::parse(&text.replace('-', "")), Ok(r));
        assert_eq!(
            SupportReference::parse("0000-0001"),
            SupportReference::parse("oooo-oooI")
        );
        for bad in [
            "",
            "ABCD-123",
            "ABCD-12345",
            "ABCD_1234",
            "ABCDU234",
            "AB-CD1234",
            "ÄBCD-1234",
        ] {
            assert_eq!(
                SupportReference::parse(bad),
                Err(InputError::MalformedReference),
                "{bad}"
            );
        }
    }

    #[test]
    fn cases_round_trip_and_reject_corruption() {
        let case = SupportCase {
            reference: SupportReference::from_bits([1, 2, 3, 4, 5]),
            subject: Subject::Account(AccountId::new("user-1").unwrap()),
            flow: FlowId::from_bytes([7; 16]),
            opened_at: Timestamp::from_unix_millis(1),
            locked_until: Timestamp::from_unix_millis(2),
            unlocked_at: Some(Timestamp::from_unix_millis(3)),
            purge_after: Timestamp::from_unix_millis(4),
        };
        let bytes = case.to_bytes();
        assert_eq!(SupportCase::from_bytes(&bytes), Ok(case.clone()));
        for len in 0..bytes.len() {
            assert!(SupportCase::from_bytes(&bytes[..len]).is_err());
        }
        let decoy = SupportCase {
            subject: Subject::Unknown(DecoyId::from_bytes([9; 16])),
            unlocked_at: None,
            ..case
        };
        assert_eq!(SupportCase::from_bytes(&decoy.to_bytes()), Ok(decoy));
    }

    #[test]
    fn agents_and_reasons_are_checked() {
        assert!(Agent::new("dana@support").is_ok());
        assert!(Agent::new("").is_err());
        assert!(Agent::new("a\nb").is_err());
        assert!(Agent::new("x".repeat(65)).is_err());
        assert!(check_reason("caller verified by ID").is_ok());
        assert!(check_reason(" ").is_err());
        assert!(check_reason("a\u{7}").is_err());
        assert!(check_reason(&"x".repeat(501)).is_err());
    }
}
