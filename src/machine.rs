//! The pure state machine: every rule of a recovery, decided from a flow
//! record, a [`Policy`] and the current instant. No I/O, no async, no
//! randomness: secrets arrive already hashed and the outcome of comparing
//! them arrives as a `bool`.
//!
//! Each step returns the next record (with `version` grown by one) for the
//! driver to compare-and-swap into the store; a step that is refused returns
//! the [`Error`] the caller sees and changes nothing.
//!
//! ```
//! use otp_recovery::machine;
//! use otp_recovery::{FlowId, Mac, Policy, Timestamp};
//!
//! let policy = Policy::default();
//! let t0 = Timestamp::from_unix_millis(1_000_000);
//! let flow = machine::open(&policy, t0, FlowId::from_bytes([1; 16]), None, 1, Mac::from_bytes([1; 32]));
//!
//! // A wrong code costs an attempt.
//! machine::verify_gate(&flow, t0).unwrap();
//! let (flow, verdict) = machine::verify(&flow, &policy, t0, false, None).unwrap();
//! assert_eq!(verdict, machine::Verdict::Wrong { attempts_left: 4 });
//! assert_eq!(flow.version, 2);
//! ```

use crate::clock::Timestamp;
use crate::code::Mac;
use crate::error::Error;
use crate::id::{AccountId, FlowId};
use crate::phone::PhoneNumber;
use crate::policy::Policy;
use crate::record::{EffectiveState, FlowRecord, FlowState};

/// The outcome of an evaluated code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The code matched; the flow is now `Verified`.
    Right,
    /// The code did not match; `attempts_left == 0` means the flow is now
    /// `Locked`.
    Wrong {
        /// Attempts the flow still allows.
        attempts_left: u32,
    },
}

/// A new flow whose first code was just generated (and is about to be sent).
/// `account` is `None` for the decoy flow of an unknown identifier.
pub fn open(
    policy: &Policy,
    now: Timestamp,
    id: FlowId,
    account: Option<(AccountId, PhoneNumber)>,
    key_id: u32,
    code_mac: Mac,
) -> FlowRecord {
    let code_expires_at = now.saturating_add(policy.code_ttl());
    let (account, phone) = account.unzip();
    FlowRecord {
        id,
        account,
        phone,
        state: FlowState::CodeSent,
        version: 1,
        key_id,
        code_mac,
        code_expires_at,
        failed_attempts: 0,
        sends: 1,
        last_sent_at: now,
        created_at: now,
        updated_at: now,
        token_mac: None,
        token_expires_at: Timestamp::default(),
        purge_after: code_expires_at.saturating_add(policy.record_retention()),
    }
}

/// Whether a code may be evaluated against `flow` at `now`. Cheap; the driver
/// calls it before computing any MAC.
///
/// # Errors
/// `Expired`, `Locked`, `AlreadyUsed`, `Superseded` or `Cancelled`.
pub fn verify_gate(flow: &FlowRecord, now: Timestamp) -> Result<(), Error> {
    match flow.state_at(now) {
        EffectiveState::Stored(FlowState::CodeSent) => Ok(()),
        other => Err(refusal(other)),
    }
}

/// Evaluates one code: consumes one attempt and records the verdict in the
/// same new record, so an attempt is never evaluated without being counted.
/// `token` is the key id and MAC of the reset token to issue, required when
/// `matched`.
///
/// # Errors
/// As [`verify_gate`]; also `Locked` when earlier attempts already reached
/// the policy's limit (a policy lowered while the flow was open).
///
/// # Panics
/// If `matched` is true and no token is given: a driver bug.
pub fn verify(
    flow: &FlowRecord,
    policy: &Policy,
    now: Timestamp,
    matched: bool,
    token: Option<(u32, Mac)>,
) -> Result<(FlowRecord, Verdict), Error> {
    verify_gate(flow, now)?;
    if flow.failed_attempts >= policy.max_attempts() {
        return Err(Error::Locked { until: None });
    }
    let mut next = step(flow, now);
    if matched {
        let (key_id, mac) = token.expect("a matched code needs a token to issue");
        next.state = FlowState::Verified;
        next.key_id = key_id;
        next.token_mac = Some(mac);
        next.token_expires_at = now.saturating_add(policy.token_ttl());
        next.purge_after = next
            .purge_after
            .max(next.token_expires_at.saturating_add(policy.record_retention()));
        Ok((next, Verdict::Right))
    } else {
        next.failed_attempts += 1;
        let attempts_left = policy.max_attempts() - next.failed_attempts;
        if attempts_left == 0 {
            next.state = FlowState::Locked;
        }
        Ok((next, Verdict::Wrong { attempts_left }))
    }
}

/// Whether a new code may be sent for `flow` at `now`.
///
/// # Errors
/// `TooSoon` before the cooldown has passed (it doubles with every send),
/// `TooManySends` once the flow has sent its allowance, and the state
/// refusals of [`verify_gate`] except `Expired`: an expired code is exactly
/// what a resend is for.
pub fn resend_gate(flow: &FlowRecord, policy: &Policy, now: Timestamp) -> Result<(), Error> {
    if flow.state != FlowState::CodeSent {
        return Err(refusal(flow.state_at(now)));
    }
    if flow.failed_attempts >= policy.max_attempts() {
        return Err(Error::Locked { until: None });
    }
    match next_send_at(flow, policy) {
        None => Err(Error::TooManySends),
        Some(at) if now < at => Err(Error::TooSoon {
            retry_after: at.saturating_duration_since(now),
        }),
        Some(_) => Ok(()),
    }
}

/// Replaces the flow's code with a new one (making every earlier code
/// invalid). Failed attempts are kept: a resend never buys more guesses.
///
/// # Errors
/// As [`resend_gate`].
pub fn resend(
    flow: &FlowRecord,
    policy: &Policy,
    now: Timestamp,
    key_id: u32,
    code_mac: Mac,
) -> Result<FlowRecord, Error> {
    resend_gate(flow, policy, now)?;
    let mut next = step(flow, now);
    next.key_id = key_id;
    next.code_mac = code_mac;
    next.code_expires_at = now.saturating_add(policy.code_ttl());
    next.sends += 1;
    next.last_sent_at = now;
    next.purge_after = next
        .purge_after
        .max(next.code_expires_at.saturating_add(policy.record_retention()));
    Ok(next)
}

/// The SMS carrying the code whose MAC is `code_mac` could not be sent: that
/// code must not stay valid. Returns the record with the code expired now,
/// or `None` if there is nothing to undo (the code was already replaced,
/// used, or has expired).
pub fn send_failed(flow: &FlowRecord, now: Timestamp, code_mac: &Mac) -> Option<FlowRecord> {
    let live = flow.state_at(now) == EffectiveState::Stored(FlowState::CodeSent);
    if !live || !flow.code_mac.ct_matches(code_mac) {
        return None;
    }
    let mut next = step(flow, now);
    next.code_expires_at = now;
    Some(next)
}

/// Consumes the reset token. `token_matched` is the constant-time comparison
/// of the presented token's MAC with the stored one; it is checked first, so
/// a wrong token learns nothing about the flow's state.
///
/// # Errors
/// `InvalidToken` when the token does not match; for a matching token,
/// `AlreadyUsed` when it was used, `Expired` past its lifetime,
/// `Superseded` or `Cancelled`.
pub fn reset(flow: &FlowRecord, now: Timestamp, token_matched: bool) -> Result<FlowRecord, Error> {
    if !token_matched || flow.token_mac.is_none() {
        return Err(Error::InvalidToken);
    }
    match flow.state_at(now) {
        EffectiveState::Stored(FlowState::Verified) => {
            let mut next = step(flow, now);
            // The token's MAC stays, so a replayed token is told apart
            // (`AlreadyUsed`) from a wrong one.
            next.state = FlowState::Completed;
            Ok(next)
        }
        // The token is right, so its holder may learn why it no longer
        // works (used, expired, superseded by a newer request, cancelled).
        other => Err(refusal(other)),
    }
}

/// Locks the flow because its account reached its failure limit (the
/// flow's own wrong codes may not have). `None` if it is not open for codes.
pub fn lock(flow: &FlowRecord, now: Timestamp) -> Option<FlowRecord> {
    if flow.state != FlowState::CodeSent {
        return None;
    }
    let mut next = step(flow, now);
    next.state = FlowState::Locked;
    Some(next)
}

/// Whether an account with `failures` wrong codes in the current window is
/// locked.
pub fn account_locked(failures: u64, policy: &Policy) -> bool {
    failures >= u64::from(policy.max_account_failures())
}

/// When the next code may be sent, or `None` if the flow has used its
/// allowance.
pub fn next_send_at(flow: &FlowRecord, policy: &Policy) -> Option<Timestamp> {
    (flow.sends < policy.max_sends_per_flow()).then(|| {
        flow.last_sent_at
            .saturating_add(policy.cooldown_after(flow.sends))
    })
}

/// Attempts left on the flow.
pub fn attempts_left(flow: &FlowRecord, policy: &Policy) -> u32 {
    policy.max_attempts().saturating_sub(flow.failed_attempts)
}

fn step(flow: &FlowRecord, now: Timestamp) -> FlowRecord {
    let mut next = flow.clone();
    next.version += 1;
    next.updated_at = now;
    next
}

fn refusal(state: EffectiveState) -> Error {
    match state {
        EffectiveState::Expired => Error::Expired,
        EffectiveState::Stored(FlowState::Locked) => Error::Locked { until: None },
        EffectiveState::Stored(FlowState::Verified | FlowState::Completed) => Error::AlreadyUsed,
        EffectiveState::Stored(FlowState::Superseded) => Error::Superseded,
        EffectiveState::Stored(FlowState::Cancelled) => Error::Cancelled,
        // Only reached for a state the caller accepts; keep a safe answer.
        EffectiveState::Stored(FlowState::CodeSent) => Error::Busy,
    }
}
