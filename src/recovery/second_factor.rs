//! The driver's second-factor steps: after the right SMS code on a flow
//! that needs a second factor, [`Recovery::verify_factor`] checks a TOTP
//! code, a saved recovery code or a second-channel code and issues the reset
//! token; [`Recovery::send_factor_code`] sends the second-channel code.
//!
//! Each check follows the SMS code's discipline: the attempt and its verdict
//! are stored together with a compare-and-swap on the flow before anything
//! is answered, the failure counts toward the account's lockout in the same
//! store call, and comparisons are constant time. What must be used once
//! (a TOTP time step, a recovery code) is claimed with a counter whose
//! maximum is 1 before the token is stored: of two instances racing on the
//! same code, one claims it and the other is told the code is wrong. A
//! claim whose call ends in an error (its write failed, or applied with its
//! answer lost, so the token reached no one) is given back; a call the
//! host drops half-way (a timeout around it) keeps its claim, and the code
//! stays used.

use std::time::Duration;

use crate::clock::{Clock, Timestamp};
use crate::code::Mac;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::factor::{ChannelMessage, FactorKind, FactorSet, Factors, RecoveryCodeSet, SecondFactor};
use crate::id::{AccountId, FlowId};
use crate::input::InputError;
use crate::limits::{BlockTarget, Plan};
use crate::machine::{self, FactorEvaluation, FactorNeed, Verdict};
use crate::record::FlowRecord;
use crate::recovery::{FactorChallenge, MAX_CAS_ROUNDS, Recovery, RequestContext, Verified, flow_event};
use crate::secret::Code;
use crate::sms::SmsSender;
use crate::store::{CodeStore, Counter};

/// How long a used recovery code stays claimed in the store: far longer
/// than any set should live (the host also strikes it from its set).
const RECOVERY_CODE_CLAIM: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The answer to [`Recovery::send_factor_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FactorCodeSent {
    /// Where the code went, masked.
    pub masked_address: String,
    /// The code is valid strictly before this instant.
    pub code_expires_at: Timestamp,
    /// When another code may be sent; `None` once the flow has sent all the
    /// codes it may.
    pub next_send_at: Option<Timestamp>,
}

/// What a right SMS code leads to.
#[derive(Debug, Clone)]
pub(crate) enum Requirement {
    /// The reset token.
    None,
    /// One of these factors (with the channel's masked address).
    One(FactorSet, Option<String>),
    /// A factor is required and the account has none it can use.
    Missing,
}

/// What checking one factor code showed.
enum Check {
    /// Right; claim this counter (if any) before issuing the token.
    Right {
        claim: Option<Counter>,
        index: Option<usize>,
    },
    Wrong,
}

impl<S: CodeStore, T: SmsSender, C: Clock> Recovery<S, T, C> {
    /// Checks a second-factor code of `kind` on a flow whose SMS code was
    /// verified ([`Progress::SecondFactor`](crate::Progress)), and issues
    /// the reset token when it is right. One attempt of that kind is
    /// consumed and stored before the verdict is returned.
    ///
    /// Codes are read as people type them: a TOTP code is the
    /// authenticator's 6 to 8 digits, a recovery code any case with or
    /// without dashes, a second-channel code the policy's digits.
    ///
    /// # Errors
    /// [`Error::InvalidFactorCode`] with the attempts of that kind left (a
    /// TOTP code already used in its time step, or a recovery code already
    /// used, is wrong); [`Error::Locked`] when the flow has no factor with
    /// attempts left, or the account reached its failure limit;
    /// [`Error::FactorUnavailable`] for a kind not offered or out of
    /// attempts; [`Error::Input`] for malformed input (no attempt is
    /// consumed); [`Error::Expired`] past the factor step's end (or for a
    /// second-channel code never sent or expired); [`Error::AlreadyUsed`]
    /// once the token was issued; [`Error::RateLimited`],
    /// [`Error::Blocked`] by client IP as for codes; [`Error::NotFound`],
    /// [`Error::Superseded`], [`Error::Cancelled`]; [`Error::Store`],
    /// [`Error::Factors`], [`Error::Random`], [`Error::Busy`],
    /// [`Error::UnknownKey`].
    pub async fn verify_factor(
        &self,
        flow_id: &FlowId,
        kind: FactorKind,
        code: &str,
        ctx: &RequestContext,
    ) -> Result<Verified> {
        self.check_input(kind, code)?;
        let mut claimed = None;
        let answer = self.check_factor(flow_id, kind, code, ctx, &mut claimed).await;
        if answer.is_err()
            && let Some(claim) = claimed
        {
            // The code was claimed but issued no token anyone holds (its
            // write failed, or applied with its answer lost, or the flow
            // changed under it): it is given back, so that a saved code,
            // the user's way in, is not lost to a store failure. If this
            // fails too, the code stays used.
            let _ = self.store.delete_counters(std::slice::from_ref(&claim.key)).await;
        }
        answer
    }

    /// [`Recovery::verify_factor`]'s rounds; `claimed` is the use claimed
    /// for the code, if one was.
    async fn check_factor(
        &self,
        flow_id: &FlowId,
        kind: FactorKind,
        code: &str,
        ctx: &RequestContext,
        claimed: &mut Option<Counter>,
    ) -> Result<Verified> {
        let checks = self.verify_checks(ctx);
        let mut factors: Option<Factors> = None;
        for round in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let flow = self.load_checked(flow_id, &checks, round, now, ctx).await?;
            let event = |kind| flow_event(now, kind, &flow, ctx);
            machine::factor_gate(&flow, &self.policy, now, kind)?;
            let account = flow.account().ok_or(Error::NotFound)?;
            let factors = match &factors {
                Some(f) => f,
                None => factors.insert(self.account_factors(account).await?),
            };
            let check = self.check(&flow, account, factors, kind, code, now)?;
            if let Check::Right {
                claim: Some(claim), ..
            } = &check
                && claimed.is_none()
            {
                let values = self.count(std::slice::from_ref(claim), now).await?;
                if Counter::refused(std::slice::from_ref(claim), &values) {
                    // A code that matched but was used before (on this
                    // flow or another): refused, but without costing an
                    // attempt. Only a matching code can get here, so this
                    // gives a guesser nothing, and copies of a right code
                    // racing it cannot lock its flow. A flow that got its
                    // token meanwhile answers `AlreadyUsed`.
                    self.emit(event(EventKind::FactorReplayed { kind }));
                    let now = self.clock.now();
                    let current = self.store.get_flow(flow_id).await?.ok_or(Error::NotFound)?;
                    machine::factor_gate(&current, &self.policy, now, kind)?;
                    return Err(Error::InvalidFactorCode {
                        kind,
                        attempts_left: machine::factor_attempts_left(&current, &self.policy, kind),
                    });
                } else {
                    // Ours for the rest of this call, whatever races.
                    *claimed = Some(claim.clone());
                }
            }
            if let Check::Right { index, .. } = check {
                let (key_id, token_mac, token) = self.new_token(flow_id)?;
                let evaluation = FactorEvaluation::Right { key_id, token_mac };
                let (next, _) = machine::verify_factor(&flow, &self.policy, now, kind, evaluation)?;
                if !self.store.compare_and_swap(flow.version, &next).await? {
                    continue;
                }
                self.emit(event(EventKind::FactorVerified { kind }));
                return Ok(Verified {
                    token,
                    token_expires_at: next.token_expires_at,
                    factor: Some(kind),
                    recovery_code_used: index,
                });
            }
            let (next, verdict) =
                machine::verify_factor(&flow, &self.policy, now, kind, FactorEvaluation::Wrong)?;
            let Verdict::Wrong {
                attempts_left,
                account_locked,
            } = verdict
            else {
                unreachable!("a wrong evaluation has a wrong verdict")
            };
            let Some(counted) = self.count_failure(&flow, &next, account_locked, now).await? else {
                continue;
            };
            self.emit(event(EventKind::FactorFailed { kind, attempts_left }));
            return Err(self
                .after_failure(&next, counted, account_locked, now, ctx)
                .await?
                .unwrap_or(Error::InvalidFactorCode { kind, attempts_left }));
        }
        Err(Error::Busy)
    }

    /// Sends a code on the second channel for a flow awaiting a second
    /// factor that offers it; every earlier second-channel code of the flow
    /// stops working. If the send fails, the new code is withdrawn at once.
    ///
    /// # Errors
    /// [`Error::FactorUnavailable`] when the channel is not offered (or is
    /// out of attempts, or the host's sender or the account's address is
    /// gone); [`Error::TooSoon`] within the cooldown (as for SMS resends),
    /// [`Error::TooManySends`] past the flow's allowance; [`Error::Send`]
    /// when the message could not be sent; the state refusals of
    /// [`Recovery::verify_factor`]; [`Error::Store`], [`Error::Factors`],
    /// [`Error::Random`], [`Error::Busy`].
    pub async fn send_factor_code(&self, flow_id: &FlowId, ctx: &RequestContext) -> Result<FactorCodeSent> {
        let unavailable = || Error::FactorUnavailable {
            kind: FactorKind::Channel,
        };
        let channel = self.channel.as_ref().ok_or_else(unavailable)?;
        let code = Code::generate_with(self.policy.code_digits(), |b| self.rng.fill(b))?;
        let key_id = self.keys.current_id();
        let code_mac = self
            .keys
            .channel_code_mac(key_id, flow_id, &code)
            .ok_or(Error::UnknownKey(key_id))?;
        // A blocked client IP gets no message sent, as it gets no code
        // checked.
        let mut checks = Plan::default();
        if let Some(ip) = ctx.ip_key() {
            self.plan_block(&mut checks, BlockTarget::Ip(ip));
        }
        let mut address = None;
        for round in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let flow = self.load_checked(flow_id, &checks, round, now, ctx).await?;
            machine::channel_send_gate(&flow, &self.policy, now)?;
            if address.is_none() {
                let account = flow.account().ok_or(Error::NotFound)?;
                address = Some(
                    self.account_factors(account)
                        .await?
                        .channel
                        .ok_or_else(unavailable)?,
                );
            }
            let next = machine::channel_code_sent(&flow, &self.policy, now, key_id, code_mac)?;
            if !self.store.compare_and_swap(flow.version, &next).await? {
                continue;
            }
            let to = address.expect("read above");
            let masked_address = to.masked().to_owned();
            let body = self
                .messages
                .channel_code_message(&code, self.policy.code_ttl(), flow_id, ctx.locale);
            let message = ChannelMessage::new(to, self.messages.app_name(), body);
            let event = |kind| flow_event(now, kind, &next, ctx);
            if let Err(error) = channel.send(&message).await {
                self.emit(event(EventKind::FactorSendFailed { kind: error.kind() }));
                self.withdraw_channel_code(flow_id, &code_mac).await?;
                return Err(Error::Send(error));
            }
            self.emit(event(EventKind::FactorCodeSent));
            let f = next.factor.as_ref().expect("a sent code has a factor step");
            return Ok(FactorCodeSent {
                masked_address,
                code_expires_at: f.channel_expires_at,
                next_send_at: machine::next_channel_send_at(f, &self.policy),
            });
        }
        Err(Error::Busy)
    }

    /// What a right SMS code on `flow` leads to under the policy.
    pub(crate) async fn factor_requirement(&self, flow: &FlowRecord) -> Result<Requirement> {
        let Some(account) = flow.account() else {
            return Ok(Requirement::None);
        };
        let rule = self.policy.second_factor();
        // Off needs no look-up of the account's factors.
        if rule == SecondFactor::Off {
            return Ok(Requirement::None);
        }
        let factors = self.account_factors(account).await?;
        let enrolled = factors.kinds().intersect(self.policy.accepted_factors());
        Ok(
            match machine::factor_need(rule, enrolled, self.channel.is_some()) {
                FactorNeed::None => Requirement::None,
                FactorNeed::Missing => Requirement::Missing,
                FactorNeed::One(usable) => {
                    Requirement::One(usable, factors.channel.map(|c| c.masked().to_owned()))
                }
            },
        )
    }

    /// What the user of a flow awaiting a factor may do next.
    pub(crate) fn challenge(&self, flow: &FlowRecord, channel: Option<String>) -> FactorChallenge {
        let usable = machine::usable_factors(flow, &self.policy);
        FactorChallenge {
            flow_id: flow.id,
            kinds: usable.kinds(),
            channel: channel.filter(|_| usable.contains(FactorKind::Channel)),
            expires_at: flow.factor.as_ref().map_or(flow.updated_at, |f| f.expires_at),
        }
    }

    async fn account_factors(&self, account: &AccountId) -> Result<Factors> {
        match &self.factors {
            Some(source) => Ok(source.factors(account).await?),
            None => Ok(Factors::none()),
        }
    }

    /// Refuses input that cannot be a code of `kind`, before anything is
    /// read or counted.
    fn check_input(&self, kind: FactorKind, code: &str) -> Result<()> {
        let ok = match kind {
            FactorKind::Totp => (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()),
            FactorKind::RecoveryCode => RecoveryCodeSet::is_well_formed(code),
            FactorKind::Channel => {
                Code::parse_typed(code).is_ok_and(|c| c.len() == usize::from(self.policy.code_digits()))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(match kind {
                FactorKind::RecoveryCode => InputError::MalformedRecoveryCode,
                _ => InputError::MalformedCode,
            }
            .into())
        }
    }

    /// Checks `code` against the account's factor of `kind`, in constant
    /// time. A factor the account no longer has is unavailable.
    fn check(
        &self,
        flow: &FlowRecord,
        account: &AccountId,
        factors: &Factors,
        kind: FactorKind,
        code: &str,
        now: Timestamp,
    ) -> Result<Check> {
        let unavailable = Error::FactorUnavailable { kind };
        match kind {
            FactorKind::Totp => {
                let totp = factors.totp.as_ref().ok_or(unavailable)?;
                Ok(match totp.matching_step(code, now) {
                    Some(step) => {
                        let who = self.subject_pseudonym(&flow.subject);
                        let claim = Counter::new(format!("used:totp:{who}:{step}"), totp.replay_window(), 1)
                            .with_max(1);
                        Check::Right {
                            claim: Some(claim),
                            index: None,
                        }
                    }
                    None => Check::Wrong,
                })
            }
            FactorKind::RecoveryCode => {
                let set = factors
                    .recovery_codes
                    .as_ref()
                    .filter(|s| !s.is_empty())
                    .ok_or(unavailable)?;
                Ok(match set.find(&self.keys, account, code)? {
                    Some(index) => {
                        let claim = Counter::new(
                            format!("used:rc:{}", set.claim_name(index)),
                            RECOVERY_CODE_CLAIM,
                            1,
                        )
                        .with_max(1);
                        Check::Right {
                            claim: Some(claim),
                            index: Some(index),
                        }
                    }
                    None => Check::Wrong,
                })
            }
            FactorKind::Channel => {
                if factors.channel.is_none() {
                    return Err(unavailable);
                }
                let stored = flow.factor.as_ref().and_then(|f| f.channel_mac);
                let code = Code::parse_typed(code)?;
                let presented = self
                    .keys
                    .channel_code_mac(flow.key_id, &flow.id, &code)
                    .ok_or(Error::UnknownKey(flow.key_id))?;
                Ok(if stored.is_some_and(|m| m.ct_matches(&presented)) {
                    Check::Right {
                        claim: None,
                        index: None,
                    }
                } else {
                    Check::Wrong
                })
            }
        }
    }

    /// Withdraws a second-channel code that could not be sent.
    async fn withdraw_channel_code(&self, flow_id: &FlowId, code_mac: &Mac) -> Result<()> {
        self.undo(flow_id, |current, now| {
            machine::channel_send_failed(current, now, code_mac)
        })
        .await
    }
}
