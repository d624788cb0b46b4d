//! The rules over a subject's failures across its flows: when the account
//! is locked, when a lock ends, and what follows a counted wrong code.

use super::{Refusal, account_attempts_left, refusal, step};
use crate::clock::Timestamp;
use crate::counter::CounterValue;
use crate::policy::Policy;
use crate::record::{EffectiveState, FactorProgress, FlowRecord, FlowState};

/// Brings a flow's snapshot of its account's failures (taken when it
/// opened) up to `failures`, the count the account's failure counter holds
/// now, of which the flow's own wrong codes are part; the flow locks when
/// that leaves the account no attempt. A snapshot falls behind when other
/// flows' wrong codes land while a request opens this one.
///
/// # Errors
/// The refusal of the flow's state when it is not open.
pub fn catch_up(
    flow: &FlowRecord,
    policy: &Policy,
    now: Timestamp,
    failures: u64,
) -> Result<FlowRecord, Refusal> {
    if !flow.state.is_open() {
        return Err(refusal(EffectiveState::Stored(flow.state)));
    }
    let own = flow
        .failed_attempts
        .saturating_add(flow.factor.as_ref().map_or(0, FactorProgress::total_failed));
    let prior = u32::try_from(failures).unwrap_or(u32::MAX).saturating_sub(own);
    let mut next = step(flow, now);
    next.prior_failures = next.prior_failures.max(prior);
    if account_attempts_left(&next, policy) == 0 {
        next.state = FlowState::Locked;
    }
    Ok(next)
}

/// Whether a subject with `failures` wrong codes in its current window may
/// not open a new flow.
pub fn subject_locked(failures: u64, policy: &Policy) -> bool {
    failures >= u64::from(policy.max_account_failures())
}

/// Whether `streak` wrong codes in a row leave the subject locked until
/// support unlocks it: at the cap, not past it only.
pub fn hard_locked(streak: u64, policy: &Policy) -> bool {
    streak >= u64::from(policy.max_consecutive_failures())
}

/// What a new flow records as its account's failures before it
/// (`prior_failures`): those of the failure window, or as many as leave it
/// no more attempts than the subject's wrong codes in a row (`streak`)
/// leave before their cap, whichever is more. So the wrong code that
/// reaches either limit locks the flow in the write that counts it, and
/// racing guesses at the cap find the flow locked.
pub(crate) fn prior_failures(window: u64, streak: u64, policy: &Policy) -> u32 {
    let max = policy.max_account_failures();
    let to_cap = u64::from(policy.max_consecutive_failures()).saturating_sub(streak);
    let by_streak = max.saturating_sub(u32::try_from(to_cap).unwrap_or(u32::MAX).min(max));
    u32::try_from(window).unwrap_or(u32::MAX).max(by_streak)
}

/// When a subject's lock ends, from its failures and its lock counter
/// (read together): the later of the failure window's end, while the
/// failures are at the limit, and the lock counter's, while it is open.
/// `None` when neither holds it.
pub(crate) fn lock_end(failures: CounterValue, lock: CounterValue, policy: &Policy) -> Option<Timestamp> {
    let by_failures = failures
        .resets_at
        .filter(|_| subject_locked(failures.count, policy));
    let by_lock = lock.resets_at.filter(|_| lock.count > 0);
    by_failures.max(by_lock)
}

/// What follows a wrong code once the store has counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Nothing more (the flow itself may have locked).
    Counted,
    /// The account's wrong codes in a row reached the cap: locked until
    /// support unlocks it. `first`: this failure reached it (and opens the
    /// case); otherwise an earlier one did.
    HardLocked {
        /// Whether this failure reached the cap.
        first: bool,
    },
    /// This failure locked the account, until `until`; it is the account's
    /// `lockouts`-th lock in the week.
    AccountLocked {
        /// When the lock ends.
        until: Timestamp,
        /// The account's locks in the week, this one included.
        lockouts: u64,
    },
    /// The account reached its limit although the flow's snapshot of its
    /// failures did not (a request opened the flow while other flows' wrong
    /// codes landed): the flow catches up and locks. `another_first`: an
    /// earlier failure, on another flow, reached the limit (and locked the
    /// account); otherwise this one did and locks it.
    CatchUp {
        /// Whether another flow's failure reached the limit first.
        another_first: bool,
    },
}

/// What follows a wrong code whose store call counted `counted`: the
/// account's failures and its wrong codes in a row, then, when the flow
/// expected this failure to lock the account (`account_locked`), its
/// lockouts and its lock. The cap on wrong codes in a row comes first; a
/// lock lasts until the later of the failure window's end and the minimum
/// lockout.
pub(crate) fn after_failure(
    counted: &[CounterValue],
    account_locked: bool,
    policy: &Policy,
    now: Timestamp,
) -> AfterFailure {
    let (failures, streak) = (counted[0], counted[1]);
    if hard_locked(streak.count, policy) {
        return AfterFailure::HardLocked {
            first: streak.count == u64::from(policy.max_consecutive_failures()),
        };
    }
    if !account_locked {
        return match subject_locked(failures.count, policy) {
            true => AfterFailure::CatchUp {
                another_first: failures.count > u64::from(policy.max_account_failures()),
            },
            false => AfterFailure::Counted,
        };
    }
    let (lockouts, lock) = (counted[2], counted[3]);
    let until =
        lock_end(failures, lock, policy).unwrap_or_else(|| now.saturating_add(policy.account_lockout()));
    AfterFailure::AccountLocked {
        until,
        lockouts: lockouts.count,
    }
}
