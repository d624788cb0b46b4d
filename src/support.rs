//! The support desk: look a case up by its reference or by account, unlock
//! an account, cancel a flow. Every action names the agent and a reason and
//! is emitted as an [`EventKind::Support`]
//! event: the audit trail.
//!
//! When an account reaches its failure limit, the user is told a short
//! [`SupportReference`] (`Locked { reference, .. }`) to quote to support.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use otp_recovery::sms::RecordingSender;
//! use otp_recovery::store::MemoryStore;
//! use otp_recovery::support::Agent;
//! use otp_recovery::{AccountId, KeyRing, Recovery, ServerKey};
//!
//! let recovery = Recovery::new(MemoryStore::new(), RecordingSender::new(), KeyRing::new(1, ServerKey::generate().unwrap()));
//! let agent = Agent::new("dana@support").unwrap();
//! let account = AccountId::new("user-1001").unwrap();
//! let case = recovery.support().lookup_account(&agent, "customer called", &account).await.unwrap();
//! assert!(case.locked_until.is_none());
//! # });
//! ```

use std::fmt;
use std::str::FromStr;

use crate::clock::{Clock, Timestamp};
use crate::error::{Error, InputError, Result};
use crate::events::{Event, EventKind, SupportAction};
use crate::guards::lock_read_of;
use crate::id::{AccountId, FlowId};
use crate::limits::BlockTarget;
use crate::machine;
use crate::phone::MaskedPhone;
use crate::record::{DecodeError, DecoyId, EffectiveState, FlowRecord, Reader, Subject};
use crate::recovery::Recovery;
use crate::sms::SmsSender;
use crate::store::{CodeStore, Counter, CounterValue};

/// Crockford's base-32 alphabet: no I, L, O or U, so a reference read out
/// over the phone is not misheard.
pub(crate) const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A short reference for a locked case, `ABCD-1234`: 40 bits in Crockford
/// base 32. Not a secret: it only lets support find the case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SupportReference([u8; 8]);

impl SupportReference {
    /// From 5 bytes (40 bits).
    pub(crate) fn from_bits(bytes: [u8; 5]) -> Self {
        let mut bits = u64::from_be_bytes([0, 0, 0, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]]);
        let mut out = [0u8; 8];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(bits & 31) as usize];
            bits >>= 5;
        }
        SupportReference(out)
    }

    /// Parses a reference as a person may type it: case-insensitive, with
    /// or without the dash, `O` read as `0` and `I`/`L` as `1`.
    ///
    /// # Errors
    /// [`InputError::MalformedReference`] for anything else.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let mut out = [0u8; 8];
        let mut n = 0;
        for (i, c) in input.trim().chars().enumerate() {
            if c == '-' && i == 4 && n == 4 {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if n == 8 || !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
                return Err(InputError::MalformedReference);
            }
            out[n] = c as u8;
            n += 1;
        }
        if n != 8 {
            return Err(InputError::MalformedReference);
        }
        Ok(SupportReference(out))
    }

    /// The eight characters without the dash, for stores.
    pub fn as_compact(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for SupportReference {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SupportReference::parse(s)
    }
}

impl fmt::Display for SupportReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_compact();
        write!(f, "{}-{}", &s[..4], &s[4..])
    }
}

impl fmt::Debug for SupportReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SupportReference({self})")
    }
}

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
        out.extend_from_slice(&self.reference.0);
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
    /// Until when recovery by SMS is locked, if it is.
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

/// The support desk's operations on a [`Recovery`]; see
/// [`Recovery::support`].
pub struct Support<'a, S, T, C> {
    recovery: &'a Recovery<S, T, C>,
}

impl<S, T, C> fmt::Debug for Support<'_, S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Support").finish_non_exhaustive()
    }
}

/// A subject's lock as support sees it.
struct LockState {
    until: Option<Timestamp>,
    reference: Option<SupportReference>,
    failures: Counter,
    failures_value: CounterValue,
    lock: Counter,
}

/// How many recent flows a look-up shows.
const FLOWS_SHOWN: usize = 8;

impl<S: CodeStore, T: SmsSender, C: Clock> Recovery<S, T, C> {
    /// The support desk's operations. Each needs the [`Agent`] acting and a
    /// reason, and is reported as an audit event.
    pub fn support(&self) -> Support<'_, S, T, C> {
        Support { recovery: self }
    }
}

impl<S: CodeStore, T: SmsSender, C: Clock> Support<'_, S, T, C> {
    /// The case a user's reference names. Audited as soon as the look-up
    /// answers (whatever it answered, a store failure included), so a
    /// guessed reference leaves a trace too.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a reference no stored case has;
    /// [`Error::Input`] for an empty reason; [`Error::Store`].
    pub async fn lookup_reference(
        &self,
        agent: &Agent,
        reason: &str,
        reference: &SupportReference,
    ) -> Result<CaseView> {
        check_reason(reason)?;
        let case = self.recovery.store.get_case(reference).await;
        // Audited whatever the read answered, a failure included.
        let found = case.as_ref().ok().and_then(Option::as_ref);
        self.audit(
            agent,
            reason,
            SupportAction::Lookup,
            found.map(|c| &c.subject),
            found.map(|c| c.flow),
            Some(*reference),
        );
        let case = case?.ok_or(Error::NotFound)?;
        self.view(&case.subject).await
    }

    /// An account's case: its failures, lock and recent flows.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty reason; [`Error::Store`].
    pub async fn lookup_account(&self, agent: &Agent, reason: &str, account: &AccountId) -> Result<CaseView> {
        check_reason(reason)?;
        let subject = Subject::Account(account.clone());
        self.audit(agent, reason, SupportAction::Lookup, Some(&subject), None, None);
        self.view(&subject).await
    }

    /// Clears the subject's failure count, ending its lock: the user may
    /// request a new code at once. Flows locked by their own wrong codes
    /// stay locked; a new request opens a fresh one.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty reason; [`Error::Store`].
    pub async fn unlock(&self, agent: &Agent, reason: &str, subject: &Subject) -> Result<()> {
        check_reason(reason)?;
        let r = self.recovery;
        let now = r.clock.now();
        let state = self.lock_state(subject, now).await;
        // Audited before it acts, whatever the read answered: a failure
        // half-way still leaves a trace.
        self.audit(
            agent,
            reason,
            SupportAction::Unlock,
            Some(subject),
            None,
            state.as_ref().ok().and_then(|s| s.reference),
        );
        let state = state?;
        let keys = [state.failures.key.clone(), state.lock.key.clone()];
        r.store.delete_counters(&keys).await?;
        if let Some(reference) = state.reference
            && let Some(mut case) = r.store.get_case(&reference).await?
        {
            case.unlocked_at = Some(now);
            r.store.put_case(&case).await?;
        }
        Ok(())
    }

    /// Cancels a flow: its code and any outstanding token stop working.
    ///
    /// # Errors
    /// [`Error::NotFound`]; the refusal of the flow's state when it is
    /// already closed ([`Error::AlreadyUsed`], [`Error::Locked`],
    /// [`Error::Superseded`], [`Error::Cancelled`]); [`Error::Input`] for
    /// an empty reason; [`Error::Store`], [`Error::Busy`].
    pub async fn cancel(&self, agent: &Agent, reason: &str, flow: &FlowId) -> Result<()> {
        check_reason(reason)?;
        let current = self.recovery.store.get_flow(flow).await;
        // Audited whatever the read answered, a failure included.
        let found = current.as_ref().ok().and_then(Option::as_ref);
        self.audit(
            agent,
            reason,
            SupportAction::Cancel,
            found.map(|f| &f.subject),
            Some(*flow),
            None,
        );
        let current = current?.ok_or(Error::NotFound)?;
        // The first round decides on the record just read.
        self.recovery
            .update_from(Some(&current), flow, machine::cancel)
            .await?;
        Ok(())
    }

    /// Lifts an automatic block (of an IP, a country code or a number
    /// block) before it ends.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty reason; [`Error::Store`].
    pub async fn unblock(&self, agent: &Agent, reason: &str, target: &BlockTarget) -> Result<()> {
        check_reason(reason)?;
        self.audit(agent, reason, SupportAction::Unblock, None, None, None);
        let key = self.recovery.block_key(target);
        self.recovery
            .store
            .delete_counters(std::slice::from_ref(&key))
            .await?;
        Ok(())
    }

    async fn view(&self, subject: &Subject) -> Result<CaseView> {
        let r = self.recovery;
        let now = r.clock.now();
        let state = self.lock_state(subject, now).await?;
        let flows = r.store.find_flows(&subject.key(), FLOWS_SHOWN).await?;
        Ok(CaseView {
            subject: subject.clone(),
            failures: state.failures_value.count,
            failures_reset_at: state.failures_value.resets_at,
            locked_until: state.until,
            reference: state.reference,
            flows: flows.iter().map(|f| FlowSummary::of(f, now)).collect(),
        })
    }

    /// The subject's failure count and lock, read in one store call.
    async fn lock_state(&self, subject: &Subject, now: Timestamp) -> Result<LockState> {
        let r = self.recovery;
        let who = r.subject_pseudonym(subject);
        let failures = r.failure_counter_of(&who, 0);
        let lock = lock_read_of(&who);
        let values = r.count(&[failures.clone(), lock.clone()], now).await?;
        let (fv, lv) = (values[0], values[1]);
        let until = r.lock_end(fv, lv);
        Ok(LockState {
            reference: until.map(|until| r.keys.support_reference(&subject.key(), until)),
            until,
            failures,
            failures_value: fv,
            lock,
        })
    }

    fn audit(
        &self,
        agent: &Agent,
        reason: &str,
        action: SupportAction,
        subject: Option<&Subject>,
        flow: Option<FlowId>,
        reference: Option<SupportReference>,
    ) {
        let mut event = Event::new(
            self.recovery.clock.now(),
            EventKind::Support {
                action,
                agent: agent.as_str().to_owned(),
                reason: reason.to_owned(),
                subject: subject.map(Subject::key),
                reference,
            },
        )
        .account(subject.and_then(Subject::account).cloned());
        event.flow = flow;
        self.recovery.emit(event);
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
