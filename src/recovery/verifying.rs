//! Checking codes and using tokens: one attempt is counted before the
//! comparison, failures count against the flow and its account, and a
//! token resets once.

use super::guards::{lock_counter_of, lock_read_of, lockouts_counter_of, streak_counter_of};
use super::second_factor::Requirement;
use super::{MAX_CAS_ROUNDS, Recovery, RequestContext, flow_event, parity};
use crate::answer::{Completed, Progress, Verified};
use crate::case::SupportCase;
use crate::clock::{Clock, Timestamp};
use crate::code::Mac;
use crate::error::{Error, Result};
use crate::events::{Event, EventKind};
use crate::id::FlowId;
use crate::input::InputError;
use crate::limits::{BlockTarget, Plan};
use crate::machine::{self, AfterFailure, Evaluation, Verdict};
use crate::phone::PhoneNumber;
use crate::record::{FlowRecord, FlowState};
use crate::secret::{Code, ResetToken};
use crate::sms::SmsSender;
use crate::store::{CodeStore, Counter, CounterValue, Load, one_per_counter};

impl<S: CodeStore, T: SmsSender, C: Clock> Recovery<S, T, C> {
    /// Checks a code the user typed, on a flow that needs no second factor:
    /// the shorthand of [`Recovery::verify_code`] for hosts whose policy is
    /// [`SecondFactor::Off`](crate::factor::SecondFactor::Off).
    ///
    /// # Errors
    /// As [`Recovery::verify_code`], and [`Error::SecondFactorRequired`]
    /// when the right code was given on a flow that needs a second factor
    /// (the code is used up; continue with [`Recovery::verify_factor`]).
    pub async fn verify(&self, flow_id: &FlowId, code: &str, ctx: &RequestContext) -> Result<Verified> {
        match self.verify_code(flow_id, code, ctx).await? {
            Progress::Reset(verified) => Ok(verified),
            Progress::SecondFactor(challenge) => Err(Error::SecondFactorRequired(challenge)),
        }
    }

    /// Checks the SMS code the user typed, read by [`Code::parse_typed`]
    /// (spaces and hyphens dropped, the digits of other scripts read as
    /// ASCII). One attempt is consumed and stored before the verdict is
    /// returned; the comparison is constant time. The right code issues the reset token, or, when the policy
    /// requires a second factor and the account has one, moves the flow on
    /// to [`Recovery::verify_factor`].
    ///
    /// # Errors
    /// [`Error::InvalidCode`] with the attempts left (0: the flow is now
    /// locked); [`Error::Locked`] with its end and support reference when
    /// this wrong code brought the account to its failure limit, or when
    /// the flow was locked already; [`Error::RateLimited`] when the client
    /// IP has had too many codes checked, [`Error::Blocked`] while it is
    /// blocked; [`Error::Input`] for input that is not, so read, exactly
    /// the policy's number of digits (no attempt is consumed);
    /// [`Error::NoSecondFactor`] for the right code on an account without
    /// the second factor the policy requires (the flow is cancelled);
    /// [`Error::Expired`], [`Error::AlreadyUsed`], [`Error::Superseded`],
    /// [`Error::Cancelled`], [`Error::NotFound`]; [`Error::Store`],
    /// [`Error::Factors`], [`Error::Random`], [`Error::Busy`],
    /// [`Error::UnknownKey`].
    pub async fn verify_code(&self, flow_id: &FlowId, code: &str, ctx: &RequestContext) -> Result<Progress> {
        let code = Code::parse_typed(code)?;
        if code.len() != usize::from(self.policy.code_digits()) {
            return Err(InputError::MalformedCode.into());
        }
        let checks = self.verify_checks(ctx);
        // The account's factors, read once, on the right code only.
        let mut requirement: Option<Requirement> = None;
        for round in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let flow = self.load_checked(flow_id, &checks, round, now, ctx).await?;
            let event = |kind| flow_event(now, kind, &flow, ctx);
            machine::verify_gate(&flow, &self.policy, now)?;
            let expected = self
                .keys
                .code_mac(flow.key_id, flow_id, &code)
                .ok_or(Error::UnknownKey(flow.key_id))?;
            if flow.code_mac.ct_matches(&expected) {
                let required = match &requirement {
                    Some(found) => found.clone(),
                    None => requirement.insert(self.factor_requirement(&flow).await?).clone(),
                };
                let (evaluation, token, channel) = match required {
                    Requirement::None => {
                        let (key_id, token_mac, token) = self.new_token(flow_id)?;
                        (Evaluation::Right { key_id, token_mac }, Some(token), None)
                    }
                    Requirement::Missing => (Evaluation::RightWithoutFactor, None, None),
                    Requirement::One(offered, channel) => {
                        (Evaluation::RightAwaitingFactor { offered }, None, channel)
                    }
                };
                let (next, verdict) = machine::verify(&flow, &self.policy, now, evaluation)?;
                // Verified codes feed the SMS-pumping detector.
                let verified: Vec<Counter> = flow
                    .phone
                    .iter()
                    .flat_map(|phone| {
                        let block = self.block_pseudonym(phone, true);
                        let mut cc = itoa::Buffer::new();
                        self.verified_counters(cc.format(phone.country_code()), &block, 1)
                    })
                    .collect();
                let stored = self.swap_counting(flow.version, &next, &verified, now).await?;
                if stored.is_none() {
                    continue;
                }
                self.emit(event(EventKind::Verified));
                return match (verdict, token) {
                    (Verdict::Right, Some(token)) => Ok(Progress::Reset(Verified {
                        token,
                        token_expires_at: next.token_expires_at,
                        factor: None,
                        recovery_code_used: None,
                    })),
                    (Verdict::NoFactor, _) => {
                        self.emit(event(EventKind::NoSecondFactor));
                        Err(Error::NoSecondFactor {
                            support: self.messages.support_contact().map(str::to_owned),
                        })
                    }
                    _ => {
                        self.emit(event(EventKind::FactorRequired));
                        Ok(Progress::SecondFactor(self.challenge(&next, channel)))
                    }
                };
            }
            let (next, verdict) = machine::verify(&flow, &self.policy, now, Evaluation::Wrong)?;
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
            self.emit(event(EventKind::VerifyFailed { attempts_left }));
            return Err(self
                .after_failure(&next, counted, account_locked, now, ctx)
                .await?
                .unwrap_or(Error::InvalidCode { attempts_left }));
        }
        Err(Error::Busy)
    }

    /// The blocks and limits read (and, for the IP's verify limit, counted)
    /// before any code of a flow is checked.
    pub(crate) fn verify_checks(&self, ctx: &RequestContext) -> Plan {
        self.note_client_ip(ctx);
        let ip = ctx.ip_key();
        let ip_rule = ip.as_ref().and(self.limits.ip_verify_rule());
        let mut checks = Plan::with_capacity(2);
        if let Some(ip) = &ip {
            // One pseudonym serves the block and the limit.
            let p_ip = self.keys.pseudonym(ip);
            let target = BlockTarget::Ip(ip.clone());
            let key = target.key(|_| p_ip.clone());
            checks.block(target, key);
            if let Some(rule) = &ip_rule {
                // Counted before the code is checked, so racing guesses
                // cannot pass a read together.
                checks.limit(rule, &p_ip, 1);
            }
        }
        checks
    }

    /// Loads a flow to check a code against. The first round reads (and
    /// counts) the client's block and limit with the flow, in one store
    /// call, and refuses if they say so.
    pub(crate) async fn load_checked(
        &self,
        flow_id: &FlowId,
        checks: &Plan,
        round: usize,
        now: Timestamp,
        ctx: &RequestContext,
    ) -> Result<FlowRecord> {
        let (flow, values) = if round == 0 {
            let (flow, values) = self
                .store
                .load_counting(Load::Flow(flow_id), &checks.counters, now)
                .await?;
            (flow, one_per_counter(&checks.counters, values)?)
        } else {
            (self.store.get_flow(flow_id).await?, Vec::new())
        };
        let flow = flow.ok_or(Error::NotFound)?;
        if flow.phone.is_none() {
            parity::load_made_up_phone(&flow.code_mac, &self.limits);
        }
        if round == 0
            && let Some(refusal) = checks.refusal(&values, now)
        {
            return Err(self.refuse(refusal, now, &|kind| flow_event(now, kind, &flow, ctx)));
        }
        Ok(flow)
    }

    /// A fresh reset token for `flow_id`, and the evaluation that stores
    /// its MAC under the current key.
    pub(crate) fn new_token(&self, flow_id: &FlowId) -> Result<(u32, Mac, ResetToken)> {
        let token = ResetToken::generate(*flow_id, &self.rng)?;
        let key_id = self.keys.current_id();
        let token_mac = self
            .keys
            .token_mac(key_id, flow_id, token.secret_bytes())
            .ok_or(Error::UnknownKey(key_id))?;
        Ok((key_id, token_mac, token))
    }

    /// Stores a wrong code's record with the subject's failure (and, if
    /// this locks the account, its lockout count and its lock) in one store
    /// call; the flow locks in the same write.
    /// The values come back in that order: failures, then lockouts and
    /// lock. `None` when the compare-and-swap lost
    /// (decide again). (The flow's own snapshot of the account's failures
    /// decides the account limit, so no lock needs reading here: a locked
    /// account has no open flow.)
    pub(crate) async fn count_failure(
        &self,
        flow: &FlowRecord,
        next: &FlowRecord,
        account_locked: bool,
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        let subject = self.subject_pseudonym(&flow.subject);
        let mut counters = vec![
            self.failure_counter_of(&subject, 1),
            streak_counter_of(&subject, 1),
        ];
        if account_locked {
            counters.extend(self.locking_counters(&subject));
        }
        self.swap_counting(flow.version, next, &counters, now).await
    }

    /// [`CodeStore::compare_and_swap_counting`], its answer checked (one
    /// value per counter).
    pub(super) async fn swap_counting(
        &self,
        expected_version: u64,
        next: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        let values = self
            .store
            .compare_and_swap_counting(expected_version, next, counters, now)
            .await?;
        Ok(values.map(|v| one_per_counter(counters, v)).transpose()?)
    }

    /// After a counted failure: reports a locked flow and, when the account
    /// reached its limit, locks it and returns the error to answer with.
    pub(crate) async fn after_failure(
        &self,
        next: &FlowRecord,
        counted: Vec<CounterValue>,
        account_locked: bool,
        now: Timestamp,
        ctx: &RequestContext,
    ) -> Result<Option<Error>> {
        let decided = machine::after_failure(&counted, account_locked, &self.policy, now);
        if let AfterFailure::HardLocked { first } = decided {
            return self.hard_lock(next, counted[1], first, now, ctx).await.map(Some);
        }
        if let AfterFailure::CatchUp { another_first } = decided {
            return self
                .catch_up(next, [counted[0], counted[1]], another_first, now, ctx)
                .await
                .map(Some);
        }
        if next.state == FlowState::Locked {
            self.emit(flow_event(now, EventKind::FlowLocked, next, ctx));
        }
        match decided {
            // The lock was stored with the failure that reached the limit.
            AfterFailure::AccountLocked { until, lockouts } => {
                Ok(Some(self.lock_account(next, until, lockouts, now, ctx).await))
            }
            _ => Ok(None),
        }
    }

    /// The counters a subject's lock adds to the failure that reaches the
    /// limit: its lockouts (counted once per lock) and its lock, open for
    /// the minimum lockout.
    pub(super) fn locking_counters(&self, pseudonym: &str) -> [Counter; 2] {
        [
            lockouts_counter_of(pseudonym),
            lock_counter_of(pseudonym, self.policy.account_lockout(), 1),
        ]
    }

    /// After a counted failure whose count (`failures`, the account's own)
    /// reached the account's limit although the flow's snapshot of it did
    /// not: a request opened the flow while other flows' wrong codes landed.
    /// The flow catches up and locks; the account locks as if the flow had
    /// known, unless another flow's failure reached the limit first (that
    /// one locks it). Returns the answer. Without this, such a flow would
    /// allow its whole allowance of attempts past the account's limit; now
    /// it allows none but the one that finds out.
    pub(super) async fn catch_up(
        &self,
        next: &FlowRecord,
        [failures, streak]: [CounterValue; 2],
        another_first: bool,
        now: Timestamp,
        ctx: &RequestContext,
    ) -> Result<Error> {
        let pseudonym = self.subject_pseudonym(&next.subject);
        // The lock is stored (with the lockout count) before the flow is
        // written, so that no failure after leaves the account unlocked;
        // if another flow's failure reached the limit first, it is read.
        let counters = if another_first {
            vec![lock_read_of(&pseudonym)]
        } else {
            self.locking_counters(&pseudonym).to_vec()
        };
        let values = self.count(&counters, now).await?;
        // A flow its own attempts have just locked needs no second write.
        let locked = if next.state == FlowState::Locked {
            next.clone()
        } else {
            self.update_from(Some(next), &next.id, |f, now| {
                machine::catch_up(f, &self.policy, now, failures.count)
            })
            .await?
        };
        if another_first {
            self.emit(flow_event(now, EventKind::FlowLocked, &locked, ctx));
            return Ok(self.locked(&locked.subject, self.lock_end(failures, values[0])));
        }
        let counted = vec![failures, streak, values[0], values[1]];
        let locked_now = Box::pin(self.after_failure(&locked, counted, true, now, ctx)).await?;
        Ok(locked_now.unwrap_or_else(|| self.locked(&locked.subject, None)))
    }

    /// After a counted failure that left the subject's wrong codes in a row
    /// (`streak`) at the cap or past it: the flow locks (a second write
    /// unless its own attempts locked it), and the failure that reached
    /// the cap (`first`) opens the support case, reports and notifies.
    async fn hard_lock(
        &self,
        next: &FlowRecord,
        streak: CounterValue,
        first: bool,
        now: Timestamp,
        ctx: &RequestContext,
    ) -> Result<Error> {
        // The flow's snapshot of the streak (in its prior failures) locked
        // it in the write that counted this failure; a flow opened before
        // its streak grew elsewhere locks now. One that is closed already
        // (a racing guess locked it) needs nothing, and a failed write
        // leaves the stored streak to refuse the next call: the case, the
        // event and the notice go out either way.
        if next.state != FlowState::Locked {
            let _ = self
                .update_from(Some(next), &next.id, |f, now| {
                    machine::catch_up(f, &self.policy, now, u64::MAX)
                })
                .await;
        }
        let locked = next;
        let event = |kind| flow_event(now, kind, locked, ctx);
        self.emit(event(EventKind::FlowLocked));
        if first {
            let reference = self.hard_lock_reference(&locked.subject, streak);
            let case = SupportCase {
                reference,
                subject: locked.subject.clone(),
                flow: locked.id,
                opened_at: now,
                locked_until: streak.resets_at.unwrap_or(now),
                unlocked_at: None,
                // Kept while the lock holds; an unlock shortens it.
                purge_after: streak.resets_at.unwrap_or(now),
            };
            // The lock is the stored streak; a case that cannot be stored
            // only means support finds it by account.
            let _ = self.store.put_case(&case).await;
            self.emit(event(EventKind::AccountHardLocked {
                failures: streak.count,
                reference,
            }));
            let notice = self.messages.hard_locked_message(&reference, ctx.locale);
            self.notify(locked, notice, now, ctx).await;
        }
        Ok(self.hard_locked(&locked.subject, streak))
    }

    /// Consumes a reset token and returns the account whose password the
    /// host may now set; the account's phone is told its password was
    /// reset. Works once per token.
    ///
    /// # Errors
    /// [`Error::Input`] for a malformed token; [`Error::InvalidToken`] for
    /// one that does not match; [`Error::AlreadyUsed`], [`Error::Expired`],
    /// [`Error::Superseded`], [`Error::Cancelled`]; [`Error::Store`],
    /// [`Error::Busy`], [`Error::UnknownKey`].
    pub async fn reset(&self, token: &str, ctx: &RequestContext) -> Result<Completed> {
        let token = ResetToken::parse(token)?;
        let flow_id = *token.flow_id();
        // The swap reads the account's streak of wrong codes, which a
        // completed recovery ends.
        let streak_of =
            |flow: &FlowRecord| vec![streak_counter_of(&self.subject_pseudonym(&flow.subject), 0)];
        let (flow, streak) = self
            .update_counting(&flow_id, streak_of, |flow, now| {
                let presented = self
                    .keys
                    .token_mac(flow.key_id, &flow_id, token.secret_bytes())
                    .ok_or(Error::UnknownKey(flow.key_id))?;
                let matched = flow.token_mac.is_some_and(|stored| stored.ct_matches(&presented));
                Ok::<_, Error>(machine::reset(flow, now, matched)?)
            })
            .await
            .map_err(|e| match e {
                Error::NotFound => Error::InvalidToken,
                e => e,
            })?;
        let account = flow.account().cloned().ok_or(Error::InvalidToken)?;
        let now = flow.updated_at;
        // Deleted only when there is one (a third round trip, after wrong
        // codes only). The reset stands whatever this answers: a streak
        // left behind only brings the support-only lock nearer.
        if streak[0].count > 0 {
            let key = streak_of(&flow).swap_remove(0).key;
            let _ = self.store.delete_counters(&[key]).await;
        }
        self.emit(
            Event::new(now, EventKind::ResetCompleted)
                .flow(flow_id)
                .account(Some(account.clone()))
                .phone(flow.phone.as_ref().map(PhoneNumber::masked))
                .ip(ctx.client_ip),
        );
        let notice = self.messages.password_changed_message(ctx.locale);
        self.notify(&flow, notice, now, ctx).await;
        Ok(Completed { account, flow_id })
    }
}
