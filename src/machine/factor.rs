//! The second-factor step of a flow: which factors a flow may still use,
//! checking one, and the codes sent on the second channel.

use super::{Refusal, Verdict, account_attempts_left, issue_token, refusal, step};
use crate::clock::Timestamp;
use crate::code::Mac;
use crate::factor::{FactorKind, FactorSet, SecondFactor};
use crate::policy::Policy;
use crate::record::{EffectiveState, FactorProgress, FlowRecord, FlowState};

/// What checking a second-factor code showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorEvaluation {
    /// The factor passed; this reset token (its key id and MAC) is issued.
    Right {
        /// Id of the key that made `token_mac`.
        key_id: u32,
        /// MAC of the new token's random part.
        token_mac: Mac,
    },
    /// The factor's code was wrong (or already used).
    Wrong,
}

/// Wrong codes of `kind` the flow still allows: the lower of the kind's own
/// limit and the account's; 0 for a kind not offered.
pub fn factor_attempts_left(flow: &FlowRecord, policy: &Policy, kind: FactorKind) -> u32 {
    match &flow.factor {
        Some(f) if f.offered.contains(kind) => policy
            .factor_attempts()
            .saturating_sub(f.failed(kind))
            .min(account_attempts_left(flow, policy)),
        _ => 0,
    }
}

/// The factors a user can still use on `flow`: offered, with attempts left.
pub fn usable_factors(flow: &FlowRecord, policy: &Policy) -> FactorSet {
    FactorKind::ALL
        .into_iter()
        .filter(|k| factor_attempts_left(flow, policy, *k) > 0)
        .collect()
}

fn factor_step_gate(flow: &FlowRecord, now: Timestamp) -> Result<&FactorProgress, Refusal> {
    match flow.state_at(now) {
        EffectiveState::Stored(FlowState::FactorPending) => {
            flow.factor.as_ref().ok_or(Refusal::CodeNotVerified)
        }
        EffectiveState::Stored(FlowState::CodeSent) => Err(Refusal::CodeNotVerified),
        other => Err(refusal(other)),
    }
}

/// Whether a code of `kind` may be checked against `flow` at `now`. Cheap;
/// the driver calls it before any MAC or look-up.
///
/// # Errors
/// The state refusals of [`verify_gate`](super::verify_gate) (a flow not awaiting a factor:
/// `AlreadyUsed` once the token was issued); `FactorUnavailable` for a kind
/// not offered or out of attempts; `Locked` when the account's limit is
/// reached; `Expired` for a second-channel code never sent or past its
/// lifetime (send another).
pub fn factor_gate(
    flow: &FlowRecord,
    policy: &Policy,
    now: Timestamp,
    kind: FactorKind,
) -> Result<(), Refusal> {
    let f = factor_step_gate(flow, now)?;
    if account_attempts_left(flow, policy) == 0 {
        return Err(Refusal::Locked);
    }
    if factor_attempts_left(flow, policy, kind) == 0 {
        return Err(Refusal::FactorUnavailable { kind });
    }
    if kind == FactorKind::Channel && (f.channel_mac.is_none() || now >= f.channel_expires_at) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Evaluates one second-factor code: counts the attempt and records the
/// verdict in the same new record, like [`verify`](super::verify). A right code issues the
/// token; a wrong one costs an attempt of its kind and of the account, and
/// locks the flow once no offered kind has attempts left.
///
/// # Errors
/// As [`factor_gate`].
pub fn verify_factor(
    flow: &FlowRecord,
    policy: &Policy,
    now: Timestamp,
    kind: FactorKind,
    evaluation: FactorEvaluation,
) -> Result<(FlowRecord, Verdict), Refusal> {
    factor_gate(flow, policy, now, kind)?;
    let mut next = step(flow, now);
    match evaluation {
        FactorEvaluation::Right { key_id, token_mac } => {
            issue_token(&mut next, policy, now, key_id, token_mac);
            Ok((next, Verdict::Right))
        }
        FactorEvaluation::Wrong => {
            let f = next.factor.as_mut().expect("the gate checked the factor step");
            f.failed[kind.index()] = f.failed[kind.index()].saturating_add(1);
            let attempts_left = factor_attempts_left(&next, policy, kind);
            if usable_factors(&next, policy).is_empty() {
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

/// Whether a second-channel code may be sent for `flow` at `now`.
///
/// # Errors
/// As [`factor_gate`] (but an expired or missing code is what a send is
/// for), `TooManySends` past the flow's allowance of sends, `TooSoon`
/// within the cooldown.
pub fn channel_send_gate(flow: &FlowRecord, policy: &Policy, now: Timestamp) -> Result<(), Refusal> {
    let f = factor_step_gate(flow, now)?;
    if account_attempts_left(flow, policy) == 0 {
        return Err(Refusal::Locked);
    }
    if factor_attempts_left(flow, policy, FactorKind::Channel) == 0 {
        return Err(Refusal::FactorUnavailable {
            kind: FactorKind::Channel,
        });
    }
    match next_channel_send_at(f, policy) {
        None => Err(Refusal::TooManySends),
        Some(at) if f.channel_sends > 0 && now < at => Err(Refusal::TooSoon {
            retry_after: at.saturating_duration_since(now),
        }),
        Some(_) => Ok(()),
    }
}

/// When the next second-channel code may be sent, or `None` once the flow
/// has sent its allowance (the channel's twin of [`next_send_at`](super::next_send_at)).
pub fn next_channel_send_at(f: &FactorProgress, policy: &Policy) -> Option<Timestamp> {
    (f.channel_sends < policy.max_sends_per_flow()).then(|| {
        f.channel_last_sent_at
            .saturating_add(policy.cooldown_after(f.channel_sends))
    })
}

/// Records a new second-channel code (its key id and MAC), replacing any
/// earlier one; valid for the policy's code lifetime, and never past the
/// factor step's end.
///
/// # Errors
/// As [`channel_send_gate`].
pub fn channel_code_sent(
    flow: &FlowRecord,
    policy: &Policy,
    now: Timestamp,
    key_id: u32,
    code_mac: Mac,
) -> Result<FlowRecord, Refusal> {
    channel_send_gate(flow, policy, now)?;
    let mut next = step(flow, now);
    next.key_id = key_id;
    let f = next.factor.as_mut().expect("the gate checked the factor step");
    f.channel_mac = Some(code_mac);
    f.channel_expires_at = now.saturating_add(policy.code_ttl()).min(f.expires_at);
    f.channel_sends += 1;
    f.channel_last_sent_at = now;
    Ok(next)
}

/// The second-channel message carrying the code whose MAC is `code_mac`
/// could not be sent: the code is withdrawn (the user may send another
/// after the cooldown). `None` if there is nothing to undo.
pub fn channel_send_failed(flow: &FlowRecord, now: Timestamp, code_mac: &Mac) -> Option<FlowRecord> {
    let f = factor_step_gate(flow, now).ok()?;
    if !f.channel_mac.is_some_and(|m| m.ct_matches(code_mac)) {
        return None;
    }
    let mut next = step(flow, now);
    next.factor.as_mut().expect("checked above").channel_mac = None;
    Some(next)
}

/// What a right SMS code leads to, by the second-factor rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FactorNeed {
    /// No second factor: the reset token.
    None,
    /// One of these factors.
    One(FactorSet),
    /// A factor is required and the account has none it can use.
    Missing,
}

/// What a right SMS code leads to under `rule`, for an account with
/// `enrolled` factors (those the policy accepts), when the host has a
/// sender for the second channel or not.
pub(crate) fn factor_need(rule: SecondFactor, enrolled: FactorSet, channel_sender: bool) -> FactorNeed {
    if rule == SecondFactor::Off {
        return FactorNeed::None;
    }
    // A channel without a sender cannot be used, but the account still has
    // it: `IfEnrolled` does not fall back to SMS alone.
    let usable = match channel_sender {
        true => enrolled,
        false => enrolled.without(FactorKind::Channel),
    };
    match (rule, enrolled.is_empty(), usable.is_empty()) {
        (SecondFactor::IfEnrolled, true, _) => FactorNeed::None,
        (_, _, true) => FactorNeed::Missing,
        (_, _, false) => FactorNeed::One(usable),
    }
}
