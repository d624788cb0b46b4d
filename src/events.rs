//! Events: a structured record of every step, for monitoring, alerting and
//! the support audit trail.
//!
//! [`Recovery`](crate::Recovery) reports each step to an [`EventSink`]. The
//! default, [`TracingSink`], emits `tracing` events under the target
//! `otp_recovery`; [`RecordingSink`] keeps them for tests. Events carry ids,
//! the masked phone, the client IP and the reason, and never a code, a
//! token or a key.
//!
//! ```
//! use otp_recovery::events::{Event, EventKind, EventSink};
//!
//! /// Counts lockouts for a dashboard.
//! #[derive(Default)]
//! struct Lockouts(std::sync::atomic::AtomicU64);
//!
//! impl EventSink for Lockouts {
//!     fn emit(&self, event: &Event) {
//!         if matches!(event.kind, EventKind::AccountLocked { .. }) {
//!             self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         }
//!     }
//! }
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::factor::FactorKind;
use crate::id::{AccountId, FlowId};
use crate::limits::{BlockTarget, LimitScope};
use crate::phone::MaskedPhone;
use crate::reference::SupportReference;
use crate::sms::SendErrorKind;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A recovery was requested; `known` says whether the identifier
    /// matched an account (events are for the host, not the requester).
    Requested {
        /// Whether the identifier matched an account.
        known: bool,
    },
    /// A new code was asked for on an open flow.
    Resent,
    /// The gateway accepted a code message.
    CodeSent,
    /// The gateway refused or failed a message; its code was expired.
    SendFailed {
        /// The failure's kind.
        kind: SendErrorKind,
    },
    /// A message was not sent because its destination country is not
    /// allowed; its code was expired.
    DestinationRefused {
        /// The destination's country calling code.
        country_code: u16,
    },
    /// A wrong code.
    VerifyFailed {
        /// Attempts the flow still allows.
        attempts_left: u32,
    },
    /// A right SMS code: a reset token was issued, or (followed by
    /// [`EventKind::FactorRequired`]) the flow moved on to a second factor.
    Verified,
    /// A right SMS code on a flow that needs a second factor.
    FactorRequired,
    /// A right SMS code, but the policy requires a second factor the
    /// account does not have: the flow was cancelled; support takes over.
    NoSecondFactor,
    /// A second factor passed: a reset token was issued.
    FactorVerified {
        /// Which factor.
        kind: FactorKind,
    },
    /// A wrong second-factor code.
    FactorFailed {
        /// Which factor.
        kind: FactorKind,
        /// Attempts of that kind the flow still allows.
        attempts_left: u32,
    },
    /// A second-factor code that was already used (a TOTP code in its time
    /// step, a recovery code): counted as wrong.
    FactorReplayed {
        /// Which factor.
        kind: FactorKind,
    },
    /// A second-channel code was sent.
    FactorCodeSent,
    /// A second-channel code could not be sent; it was withdrawn.
    FactorSendFailed {
        /// The failure's kind.
        kind: SendErrorKind,
    },
    /// A flow used its last attempt.
    FlowLocked,
    /// An account reached its failure limit: recovery by SMS is locked.
    AccountLocked {
        /// When the lock ends.
        until: Timestamp,
        /// The reference support can look the case up by.
        reference: SupportReference,
    },
    /// An account's wrong codes in a row reached
    /// [`Policy::max_consecutive_failures`](crate::Policy::max_consecutive_failures):
    /// recovery by SMS is locked until support unlocks it.
    AccountHardLocked {
        /// Its wrong codes in a row.
        failures: u64,
        /// The reference support can look the case up by.
        reference: SupportReference,
    },
    /// A call without a client IP
    /// ([`RequestContext::without_client_ip`](crate::RequestContext::without_client_ip))
    /// to a recovery whose limits have per-IP rules: they did not apply to
    /// it, nor will they to any such call. Emitted at most once an hour per
    /// `Recovery` (and its clones), for the first such call.
    ClientIpMissing,
    /// A request or resend was refused because the account (or unknown
    /// identifier) is locked.
    LockedOut {
        /// When the lock ends.
        until: Option<Timestamp>,
    },
    /// A request, resend or verify was refused by a limit.
    RateLimited {
        /// Which limit.
        scope: LimitScope,
        /// When it allows again.
        retry_after: Duration,
    },
    /// A request, resend or verify was refused by an automatic block.
    BlockedRequest {
        /// What is blocked.
        target: BlockTarget,
    },
    /// A reset token was used.
    ResetCompleted,
    /// A notice (password changed, lockout) was sent to the account's phone.
    NotificationSent,
    /// A notice could not be sent; the operation it followed still stands.
    NotificationFailed {
        /// The failure's kind.
        kind: SendErrorKind,
    },
    /// A detector saw a suspicious pattern.
    Suspicious {
        /// Which pattern.
        pattern: Suspicion,
    },
    /// A detector blocked a client IP, a country code or a number block.
    AutoBlocked {
        /// What is blocked.
        target: BlockTarget,
        /// Until when.
        until: Timestamp,
    },
    /// A support agent acted (the audit trail), reported before the action
    /// takes effect.
    Support {
        /// What the agent did.
        action: SupportAction,
        /// Who did it.
        agent: String,
        /// Why, as the agent wrote it.
        reason: String,
        /// Whose case: [`Subject::key`](crate::record::Subject::key) (an account,
        /// or an unknown identifier's stand-in, which holds no personal data).
        subject: Option<String>,
        /// The reference the agent used or the lock had.
        reference: Option<SupportReference>,
    },
}

/// A suspicious pattern a detector recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Suspicion {
    /// One client IP asked for many different accounts.
    ManySubjectsFromOneIp {
        /// Distinct identifiers in the window.
        subjects: u64,
    },
    /// Many codes went to one country with few verified (SMS pumping).
    SmsPumpingCountry {
        /// The country calling code.
        country_code: u16,
        /// Codes sent in the window.
        sends: u64,
        /// Codes verified in the window.
        verified: u64,
    },
    /// Many codes went to one block of numbers with few verified.
    SmsPumpingNumberBlock {
        /// The block (the numbers without their last three digits), as a
        /// pseudonym: events never hold a phone number.
        block: String,
        /// Codes sent in the window.
        sends: u64,
        /// Codes verified in the window.
        verified: u64,
    },
    /// One account was locked out again and again.
    RepeatedLockouts {
        /// Lockouts in the window.
        lockouts: u64,
    },
}

/// A support action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SupportAction {
    /// Looked a case up.
    Lookup,
    /// Cleared an account's lock and failure count.
    Unlock,
    /// Cancelled a flow.
    Cancel,
    /// Lifted an automatic block.
    Unblock,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// The flow concerned.
    pub flow: Option<FlowId>,
    /// The account concerned (never set for unknown identifiers).
    pub account: Option<AccountId>,
    /// The phone concerned, masked (never set for unknown identifiers,
    /// which have none).
    pub masked_phone: Option<MaskedPhone>,
    /// The client IP, when the host passed it.
    pub ip: Option<IpAddr>,
}

impl Event {
    /// An event of `kind` at `at`, with no subject yet.
    pub fn new(at: Timestamp, kind: EventKind) -> Self {
        Event {
            at,
            kind,
            flow: None,
            account: None,
            masked_phone: None,
            ip: None,
        }
    }

    /// Sets the flow.
    #[must_use]
    pub fn flow(mut self, flow: FlowId) -> Self {
        self.flow = Some(flow);
        self
    }

    /// Sets the account.
    #[must_use]
    pub fn account(mut self, account: Option<AccountId>) -> Self {
        self.account = account;
        self
    }

    /// Sets the masked phone.
    #[must_use]
    pub fn phone(mut self, phone: Option<MaskedPhone>) -> Self {
        self.masked_phone = phone;
        self
    }

    /// Sets the client IP.
    #[must_use]
    pub fn ip(mut self, ip: Option<IpAddr>) -> Self {
        self.ip = ip;
        self
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(flow) = &self.flow {
            write!(f, " flow={flow}")?;
        }
        if let Some(account) = &self.account {
            write!(f, " account={account}")?;
        }
        if let Some(phone) = &self.masked_phone {
            write!(f, " phone={phone}")?;
        }
        if let Some(ip) = &self.ip {
            write!(f, " ip={ip}")?;
        }
        Ok(())
    }
}

/// Where events go. `emit` is called inline, so it must be quick and must
/// not block: hand the event to a channel for anything slow.
pub trait EventSink: Send + Sync {
    /// Records one event.
    fn emit(&self, event: &Event);
}

impl<E: EventSink + ?Sized> EventSink for Arc<E> {
    fn emit(&self, event: &Event) {
        (**self).emit(event)
    }
}

/// The default sink: one `tracing` event per step, target `otp_recovery`,
/// at `warn` for suspicious activity, lockouts and blocks, `info` for
/// support actions and completed resets, `debug` otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl EventSink for TracingSink {
    fn emit(&self, event: &Event) {
        // The fields are formatted lazily, by the subscriber that records
        // them: with none listening (or one filtering the level out), an
        // event costs a level check and no allocation.
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "otp_recovery",
                    $level,
                    at = event.at.as_unix_millis(),
                    flow = event.flow.as_ref().map(tracing::field::display),
                    account = event.account.as_ref().map(AccountId::as_str),
                    phone = event.masked_phone.as_ref().map(tracing::field::display),
                    ip = event.ip.as_ref().map(tracing::field::display),
                    "{:?}",
                    event.kind
                )
            };
        }
        match event.kind {
            EventKind::Suspicious { .. }
            | EventKind::AccountLocked { .. }
            | EventKind::AccountHardLocked { .. }
            | EventKind::ClientIpMissing
            | EventKind::LockedOut { .. }
            | EventKind::AutoBlocked { .. }
            | EventKind::BlockedRequest { .. }
            | EventKind::DestinationRefused { .. }
            | EventKind::SendFailed { .. }
            | EventKind::FactorReplayed { .. }
            | EventKind::NoSecondFactor
            | EventKind::FactorSendFailed { .. }
            | EventKind::NotificationFailed { .. } => emit!(tracing::Level::WARN),
            EventKind::Support { .. } | EventKind::ResetCompleted | EventKind::RateLimited { .. } => {
                emit!(tracing::Level::INFO)
            }
            _ => emit!(tracing::Level::DEBUG),
        }
    }
}

/// Keeps every event, for tests. Clones share the record.
#[derive(Debug, Clone, Default)]
pub struct RecordingSink {
    events: Arc<Mutex<Vec<Event>>>,
}

impl RecordingSink {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The kinds of every event so far, oldest first.
    pub fn kinds(&self) -> Vec<EventKind> {
        self.events().into_iter().map(|e| e.kind).collect()
    }
}

impl EventSink for RecordingSink {
    fn emit(&self, event: &Event) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
    }
}
