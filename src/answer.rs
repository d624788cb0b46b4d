//! What the recovery calls answer: a request's flow, a verified code's
//! token, the second factor still to prove, a completed reset.

use crate::clock::Timestamp;
use crate::factor::FactorKind;
use crate::id::{AccountId, FlowId};
use crate::phone::MaskedPhone;
use crate::secret::ResetToken;

/// The answer to a request or resend. It has the same shape and the same
/// kind of values whether or not the identifier matched an account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Requested {
    /// The flow to verify against (put it in the link or the form).
    pub flow_id: FlowId,
    /// Where the code went, masked.
    pub masked_phone: MaskedPhone,
    /// The code is valid strictly before this instant.
    pub code_expires_at: Timestamp,
    /// When a resend will be accepted; `None` once the flow has sent all
    /// the codes it may.
    pub next_send_at: Option<Timestamp>,
    /// Wrong codes the flow still allows.
    pub attempts_left: u32,
}

/// A verified code: the single-use reset token.
#[derive(Debug)]
#[non_exhaustive]
pub struct Verified {
    /// Hand this to the user's browser; give it back to [`Recovery::reset`](crate::Recovery::reset).
    pub token: ResetToken,
    /// The token is valid strictly before this instant.
    pub token_expires_at: Timestamp,
    /// The second factor that passed, if one was required.
    pub factor: Option<FactorKind>,
    /// When a saved recovery code passed: its index in the account's
    /// [`RecoveryCodeSet`](crate::factor::RecoveryCodeSet). The crate
    /// already refuses it from now on; strike it from the stored set with
    /// [`RecoveryCodeSet::without`](crate::factor::RecoveryCodeSet::without).
    pub recovery_code_used: Option<usize>,
}

/// Where a right SMS code leads.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress {
    /// The reset token: no second factor is needed.
    Reset(Verified),
    /// A second factor is needed: continue with
    /// [`Recovery::verify_factor`](crate::Recovery::verify_factor) (and, for the second channel,
    /// [`Recovery::send_factor_code`](crate::Recovery::send_factor_code)).
    SecondFactor(FactorChallenge),
}

/// What the user may prove next, after the right SMS code on a flow that
/// needs a second factor. Safe to show: no secret, addresses masked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FactorChallenge {
    /// The flow.
    pub flow_id: FlowId,
    /// The factors the user may use (offered, with attempts left).
    pub kinds: Vec<FactorKind>,
    /// The second channel's masked address, when it is offered.
    pub channel: Option<String>,
    /// The factor must be given strictly before this instant.
    pub expires_at: Timestamp,
}

/// A consumed reset token: the host may now set the account's password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Completed {
    /// Whose password to set.
    pub account: AccountId,
    /// The flow that completed.
    pub flow_id: FlowId,
}
