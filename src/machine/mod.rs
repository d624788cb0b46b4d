//! The pure state machine: every rule of a recovery, decided from a flow
//! record, a [`Policy`] and the current instant. No I/O, no async, no
//! randomness: secrets arrive already hashed and the outcome of comparing
//! them arrives as a `bool`.
//!
//! Each step returns the next record (with `version` grown by one) for the
//! driver to compare-and-swap into the store; a step that is refused returns
//! a [`Refusal`] (which becomes the caller's [`Error`](crate::Error)) and changes
//! nothing.
//!
//! ```
//! use otp_recovery::machine::{self, Evaluation, Opening, Verdict};
//! use otp_recovery::{AccountId, FlowId, PhoneNumber, Policy, Timestamp};
//! use otp_recovery::record::{Mac, Subject};
//!
//! let policy = Policy::default();
//! let t0 = Timestamp::from_unix_millis(1_000_000);
//! let flow = machine::open(&policy, t0, Opening {
//!     id: FlowId::from_bytes([1; 16]),
//!     subject: Subject::Account(AccountId::new("42").unwrap()),
//!     phone: Some(PhoneNumber::parse("+14155550123").unwrap()),
//!     key_id: 1,
//!     code_mac: Mac::from_bytes([1; 32]),
//!     prior_failures: 0,
//! });
//!
//! // A wrong code costs an attempt.
//! machine::verify_gate(&flow, &policy, t0).unwrap();
//! let (flow, verdict) = machine::verify(&flow, &policy, t0, Evaluation::Wrong).unwrap();
//! assert_eq!(verdict, Verdict::Wrong { attempts_left: 4, account_locked: false });
//! assert_eq!(flow.version, 2);
//! ```

use std::time::Duration;

use crate::clock::Timestamp;
use crate::code::Mac;
use crate::factor::{FactorKind, FactorSet};
use crate::id::FlowId;
use crate::phone::PhoneNumber;
use crate::policy::Policy;
use crate::record::{EffectiveState, FactorProgress, FlowRecord, FlowState, Subject};

mod account;
mod factor;

pub(crate) use account::{AfterFailure, after_failure, lock_end, prior_failures};
pub use account::{catch_up, hard_locked, subject_locked};
pub use factor::{
    FactorEvaluation, channel_code_sent, channel_send_failed, channel_send_gate, factor_attempts_left,
    factor_gate, next_channel_send_at, usable_factors, verify_factor,
};
pub(crate) use factor::{FactorNeed, factor_need};

/// Why the machine refuses a step: the flow's own state or the policy,
/// never a store, a sender or randomness (those are the driver's). Each
/// becomes the [`Error`](crate::Error) variant of the same name
/// (`Locked` as a lock of the flow alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Too many wrong codes on this flow.
    #[error("too many wrong codes: this recovery is locked")]
    Locked,
    /// The code's lifetime has passed.
    #[error("the code has expired")]
    Expired,
    /// Resends come too soon after the last one.
    #[error("too soon to send another code")]
    TooSoon {
        /// Time to wait before asking again.
        retry_after: Duration,
    },
    /// The flow has sent all the codes it may.
    #[error("no more codes can be sent for this recovery")]
    TooManySends,
    /// A newer request replaced this flow.
    #[error("this code was replaced by a newer one")]
    Superseded,
    /// Support or the host cancelled the flow.
    #[error("this recovery was cancelled")]
    Cancelled,
    /// The code (or token) was used already.
    #[error("this code was already used")]
    AlreadyUsed,
    /// The reset token does not match.
    #[error("invalid reset token")]
    InvalidToken,
    /// This factor is not offered, or has no attempts left.
    #[error("this second factor is not available")]
    FactorUnavailable {
        /// The factor asked for.
        kind: FactorKind,
    },
    /// The SMS code has not been verified yet.
    #[error("the SMS code has not been verified yet")]
    CodeNotVerified,
    /// A state the step does not expect (another call changed the flow).
    #[error("the recovery changed meanwhile; try again")]
    Busy,
}

/// What comparing the presented code with the stored MAC showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// The code matched; this reset token (its key id and MAC) is issued.
    Right {
        /// Id of the key that made `token_mac`.
        key_id: u32,
        /// MAC of the new token's random part.
        token_mac: Mac,
    },
    /// The code matched, and the account must now pass one of `offered`
    /// before a reset token is issued.
    RightAwaitingFactor {
        /// The second factors the user may use.
        offered: FactorSet,
    },
    /// The code matched, but the policy requires a second factor and the
    /// account has none: the flow is cancelled (support takes over).
    RightWithoutFactor,
    /// The code did not match.
    Wrong,
}

/// The outcome of an evaluated code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The code matched; the flow is now `Verified`.
    Right,
    /// The code matched; the flow now awaits a second factor.
    AwaitingFactor,
    /// The code matched, but the account has no second factor the policy
    /// requires; the flow is now `Cancelled`.
    NoFactor,
    /// The code did not match. `attempts_left == 0` means the flow is now
    /// `Locked`; `account_locked` that it was the account's limit (over all
    /// its flows in the failure window) that was reached.
    Wrong {
        /// Attempts left: the lower of the flow's and the account's.
        attempts_left: u32,
        /// Whether this attempt reached the account's failure limit.
        account_locked: bool,
    },
}

/// What a new flow starts from.
#[derive(Debug, Clone)]
pub struct Opening {
    /// The new flow's id.
    pub id: FlowId,
    /// Whom it is for.
    pub subject: Subject,
    /// Where its codes go (`None` for an unknown subject).
    pub phone: Option<PhoneNumber>,
    /// Id of the key that made `code_mac`.
    pub key_id: u32,
    /// MAC of the first code.
    pub code_mac: Mac,
    /// The subject's wrong codes in its current failure window.
    pub prior_failures: u32,
}

/// A new flow whose first code was just generated (and is about to be sent).
pub fn open(policy: &Policy, now: Timestamp, opening: Opening) -> FlowRecord {
    let code_expires_at = now.saturating_add(policy.code_ttl());
    FlowRecord {
        id: opening.id,
        subject: opening.subject,
        phone: opening.phone,
        state: FlowState::CodeSent,
        version: 1,
        key_id: opening.key_id,
        code_mac: opening.code_mac,
        code_expires_at,
        failed_attempts: 0,
        prior_failures: opening.prior_failures,
        sends: 1,
        last_sent_at: now,
        created_at: now,
        updated_at: now,
        token_mac: None,
        token_expires_at: Timestamp::default(),
        purge_after: code_expires_at.saturating_add(policy.record_retention()),
        factor: None,
    }
}

/// Attempts the flow still allows: the lower of what is left of the flow's
/// limit and of the account's (its failures before the flow plus the
/// flow's own).
pub fn attempts_left(flow: &FlowRecord, policy: &Policy) -> u32 {
    flow_attempts_left(flow, policy).min(account_attempts_left(flow, policy))
}

fn flow_attempts_left(flow: &FlowRecord, policy: &Policy) -> u32 {
    policy.max_attempts().saturating_sub(flow.failed_attempts)
}

fn account_attempts_left(flow: &FlowRecord, policy: &Policy) -> u32 {
    let factor_failures = flow.factor.as_ref().map_or(0, FactorProgress::total_failed);
    policy.max_account_failures().saturating_sub(
        flow.prior_failures
            .saturating_add(flow.failed_attempts)
            .saturating_add(factor_failures),
    )
}

/// Whether a code may be evaluated against `flow` at `now`. Cheap; the driver
/// calls it before computing any MAC.
///
/// # Errors
/// `Expired`, `Locked`, `AlreadyUsed`, `Superseded` or `Cancelled`.
pub fn verify_gate(flow: &FlowRecord, policy: &Policy, now: Timestamp) -> Result<(), Refusal> {
    match flow.state_at(now) {
        EffectiveState::Stored(FlowState::CodeSent) if attempts_left(flow, policy) == 0 => {
            Err(Refusal::Locked)
        }
        EffectiveState::Stored(FlowState::CodeSent) => Ok(()),
        other => Err(refusal(other)),
    }
}

/// Evaluates one code: consumes one attempt and records the verdict in the
/// same new record, so an attempt is never evaluated without being counted,
/// and the flow locks in the very write that uses its last attempt (its own
/// or its account's).
///
/// # Errors
/// As [`verify_gate`].
pub fn verify(
    flow: &FlowRecord,
    policy: &Policy,
    now: Timestamp,
    evaluation: Evaluation,
) -> Result<(FlowRecord, Verdict), Refusal> {
    verify_gate(flow, policy, now)?;
    let mut next = step(flow, now);
    match evaluation {
        Evaluation::Right { key_id, token_mac } => {
            issue_token(&mut next, policy, now, key_id, token_mac);
            Ok((next, Verdict::Right))
        }
        Evaluation::RightAwaitingFactor { offered } => {
            next.state = FlowState::FactorPending;
            let expires_at = now.saturating_add(policy.code_ttl());
            next.factor = Some(FactorProgress::new(offered, expires_at));
            next.purge_after = next
                .purge_after
                .max(expires_at.saturating_add(policy.record_retention()));
            Ok((next, Verdict::AwaitingFactor))
        }
        Evaluation::RightWithoutFactor => {
            next.state = FlowState::Cancelled;
            Ok((next, Verdict::NoFactor))
        }
        Evaluation::Wrong => {
            next.failed_attempts += 1;
            let attempts_left = attempts_left(&next, policy);
            if attempts_left == 0 {
                next.state = FlowState::Locked;
            }
            let account_locked = account_attempts_left(&next, policy) == 0;
            Ok((
                next,
                Verdict::Wrong {
                    attempts_left,
                    account_locked,
                },
            ))
        }
    }
}

fn issue_token(next: &mut FlowRecord, policy: &Policy, now: Timestamp, key_id: u32, token_mac: Mac) {
    next.state = FlowState::Verified;
    next.key_id = key_id;
    next.token_mac = Some(token_mac);
    next.token_expires_at = now.saturating_add(policy.token_ttl());
    next.purge_after = next
        .purge_after
        .max(next.token_expires_at.saturating_add(policy.record_retention()));
}

/// Whether a new code may be sent for `flow` at `now`.
///
/// # Errors
/// `TooSoon` before the cooldown has passed (it doubles with every send),
/// `TooManySends` once the flow has sent its allowance, and the state
/// refusals of [`verify_gate`] except `Expired`: an expired code is exactly
/// what a resend is for.
pub fn resend_gate(flow: &FlowRecord, policy: &Policy, now: Timestamp) -> Result<(), Refusal> {
    if flow.state != FlowState::CodeSent {
        return Err(refusal(flow.state_at(now)));
    }
    if attempts_left(flow, policy) == 0 {
        return Err(Refusal::Locked);
    }
    match next_send_at(flow, policy) {
        None => Err(Refusal::TooManySends),
        Some(at) if now < at => Err(Refusal::TooSoon {
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
) -> Result<FlowRecord, Refusal> {
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
/// code must not stay valid. Returns the record with the code's MAC replaced
/// by `void_mac` (a MAC no code matches: random bytes), or `None` if there
/// is nothing to undo (the code was already replaced, used, or has expired).
///
/// State and expiry stay as they are, so a verify afterwards answers exactly
/// as on a flow whose code was sent (and as on an unknown identifier's flow,
/// which has no code either): a failed send reveals nothing, and consumes no
/// attempt by itself.
pub fn send_failed(flow: &FlowRecord, now: Timestamp, code_mac: &Mac, void_mac: Mac) -> Option<FlowRecord> {
    let live = flow.state_at(now) == EffectiveState::Stored(FlowState::CodeSent);
    if !live || !flow.code_mac.ct_matches(code_mac) {
        return None;
    }
    let mut next = step(flow, now);
    next.code_mac = void_mac;
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
pub fn reset(flow: &FlowRecord, now: Timestamp, token_matched: bool) -> Result<FlowRecord, Refusal> {
    if !token_matched || flow.token_mac.is_none() {
        return Err(Refusal::InvalidToken);
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

/// Cancels a flow (support, or the host). Closed flows stay as they are.
///
/// # Errors
/// The refusal of the flow's state when it is not open.
pub fn cancel(flow: &FlowRecord, now: Timestamp) -> Result<FlowRecord, Refusal> {
    if !flow.state.is_open() {
        return Err(refusal(EffectiveState::Stored(flow.state)));
    }
    let mut next = step(flow, now);
    next.state = FlowState::Cancelled;
    Ok(next)
}

/// What a new flow of a subject makes of the subject's newest stored flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predecessor {
    /// It was open (expired or not): superseded, so that no stored state
    /// reads as open after it.
    Superseded(FlowRecord),
    /// It was closed: kept as it is.
    Kept(FlowRecord),
}

/// What a new flow of the same subject, created at `now`, makes of
/// `newest`. Takes the record, so that neither case copies it.
pub fn supersede(mut newest: FlowRecord, now: Timestamp) -> Predecessor {
    if !newest.state.is_open() {
        return Predecessor::Kept(newest);
    }
    newest.version += 1;
    newest.updated_at = now;
    newest.state = FlowState::Superseded;
    Predecessor::Superseded(newest)
}

/// When the next code may be sent, or `None` if the flow has used its
/// allowance.
pub fn next_send_at(flow: &FlowRecord, policy: &Policy) -> Option<Timestamp> {
    (flow.sends < policy.max_sends_per_flow()).then(|| {
        flow.last_sent_at
            .saturating_add(policy.cooldown_after(flow.sends))
    })
}

fn step(flow: &FlowRecord, now: Timestamp) -> FlowRecord {
    let mut next = flow.clone();
    next.version += 1;
    next.updated_at = now;
    next
}

fn refusal(state: EffectiveState) -> Refusal {
    match state {
        EffectiveState::Expired => Refusal::Expired,
        EffectiveState::Stored(FlowState::Locked) => Refusal::Locked,
        EffectiveState::Stored(FlowState::Verified | FlowState::Completed | FlowState::FactorPending) => {
            Refusal::AlreadyUsed
        }
        EffectiveState::Stored(FlowState::Superseded) => Refusal::Superseded,
        EffectiveState::Stored(FlowState::Cancelled) => Refusal::Cancelled,
        // Only reached for a state the caller accepts; keep a safe answer.
        EffectiveState::Stored(FlowState::CodeSent) => Refusal::Busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::CounterValue;
    use crate::factor::SecondFactor;

    #[test]
    fn a_counted_failure_locks_at_the_account_limit_and_catches_up_past_it() {
        let policy = Policy::default();
        let max = u64::from(policy.max_account_failures());
        let now = Timestamp::from_unix_millis(1_000);
        let end = Timestamp::from_unix_millis(9_000);
        let failures = |count| CounterValue::new(count, Some(end));
        let streak = |count| CounterValue::new(count, Some(end));
        let row = u64::from(policy.max_consecutive_failures());
        assert_eq!(
            after_failure(&[failures(max - 1), streak(1)], false, &policy, now),
            AfterFailure::Counted
        );
        assert_eq!(
            after_failure(&[failures(max), streak(1)], false, &policy, now),
            AfterFailure::CatchUp { another_first: false },
            "the flow's snapshot was behind: this failure reached the limit"
        );
        assert_eq!(
            after_failure(&[failures(max + 1), streak(1)], false, &policy, now),
            AfterFailure::CatchUp { another_first: true }
        );
        assert_eq!(
            after_failure(&[failures(1), streak(row - 1)], false, &policy, now),
            AfterFailure::Counted,
            "one short of the cap on wrong codes in a row"
        );
        assert_eq!(
            after_failure(&[failures(1), streak(row)], false, &policy, now),
            AfterFailure::HardLocked { first: true }
        );
        assert_eq!(
            after_failure(
                &[
                    failures(max),
                    streak(row + 1),
                    CounterValue::new(2, None),
                    CounterValue::default()
                ],
                true,
                &policy,
                now
            ),
            AfterFailure::HardLocked { first: false },
            "past the cap, whatever else the failure does"
        );
        let lock = CounterValue::new(1, Some(Timestamp::from_unix_millis(5_000)));
        assert_eq!(
            after_failure(
                &[failures(max), streak(2), CounterValue::new(2, None), lock],
                true,
                &policy,
                now
            ),
            AfterFailure::AccountLocked {
                until: end,
                lockouts: 2
            },
            "until the later of the failure window and the lock"
        );
        let open = CounterValue::default();
        assert_eq!(
            after_failure(
                &[failures(max - 1), streak(2), CounterValue::new(1, None), open],
                true,
                &policy,
                now
            ),
            AfterFailure::AccountLocked {
                until: now.saturating_add(policy.account_lockout()),
                lockouts: 1
            },
            "no window holds it: the minimum lockout from now"
        );
    }

    #[test]
    fn a_flow_opened_near_the_streak_cap_is_left_only_the_attempts_to_it() {
        let policy = Policy::default();
        let (max, cap) = (
            policy.max_account_failures(),
            u64::from(policy.max_consecutive_failures()),
        );
        assert_eq!(prior_failures(3, 0, &policy), 3, "far from the cap: the window's");
        assert_eq!(
            prior_failures(0, cap - u64::from(max), &policy),
            0,
            "exactly the window left"
        );
        assert_eq!(prior_failures(0, cap - 1, &policy), max - 1, "one attempt left");
        assert_eq!(prior_failures(7, cap - 15, &policy), 7, "the window is nearer");
        assert_eq!(prior_failures(2, cap - 15, &policy), 5, "the cap is nearer");
        assert_eq!(
            prior_failures(0, cap + 5, &policy),
            max,
            "past the cap: none left"
        );
        assert_eq!(prior_failures(u64::MAX, 0, &policy), u32::MAX);
    }

    #[test]
    fn the_second_factor_rule_decides_what_a_right_code_leads_to() {
        use SecondFactor::{IfEnrolled, Off, Required};
        let totp = FactorSet::EMPTY.with(FactorKind::Totp);
        let channel = FactorSet::EMPTY.with(FactorKind::Channel);
        let both = totp.with(FactorKind::Channel);
        assert_eq!(factor_need(Off, both, true), FactorNeed::None);
        assert_eq!(factor_need(IfEnrolled, FactorSet::EMPTY, true), FactorNeed::None);
        assert_eq!(factor_need(IfEnrolled, totp, false), FactorNeed::One(totp));
        assert_eq!(
            factor_need(IfEnrolled, channel, false),
            FactorNeed::Missing,
            "an enrolled channel without a sender is no fallback to SMS alone"
        );
        assert_eq!(factor_need(IfEnrolled, channel, true), FactorNeed::One(channel));
        assert_eq!(factor_need(Required, FactorSet::EMPTY, true), FactorNeed::Missing);
        assert_eq!(factor_need(Required, both, false), FactorNeed::One(totp));
        assert_eq!(factor_need(Required, both, true), FactorNeed::One(both));
    }

    #[test]
    fn a_lock_ends_at_the_later_of_its_failures_and_its_lock_counter() {
        let policy = Policy::default();
        let max = u64::from(policy.max_account_failures());
        let (t1, t2) = (
            Timestamp::from_unix_millis(1_000),
            Timestamp::from_unix_millis(2_000),
        );
        let none = CounterValue::default();
        let failures = |count| CounterValue::new(count, Some(t1));
        assert_eq!(
            lock_end(failures(max - 1), none, &policy),
            None,
            "under the limit"
        );
        assert_eq!(lock_end(failures(max), none, &policy), Some(t1), "at the limit");
        let lock = CounterValue::new(1, Some(t2));
        assert_eq!(
            lock_end(failures(max - 1), lock, &policy),
            Some(t2),
            "the lock alone"
        );
        assert_eq!(lock_end(failures(max), lock, &policy), Some(t2), "the later end");
        let later_failures = CounterValue::new(max, Some(Timestamp::from_unix_millis(3_000)));
        assert_eq!(lock_end(later_failures, lock, &policy), later_failures.resets_at);
        let closed = CounterValue::new(0, Some(t2));
        assert_eq!(
            lock_end(none, closed, &policy),
            None,
            "a lock counter at zero holds nothing"
        );
    }
}
