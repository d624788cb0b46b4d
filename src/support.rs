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

pub(crate) use crate::case::check_reason;
pub use crate::case::{Agent, CaseView, FlowSummary, SupportCase, SupportReference};

use crate::clock::{Clock, Timestamp};
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, SupportAction};
use crate::id::{AccountId, FlowId};
use crate::limits::BlockTarget;
use crate::machine;
use crate::record::Subject;
use crate::recovery::Recovery;
use crate::recovery::{lock_read_of, streak_counter_of};
use crate::sms::SmsSender;
use crate::store::{CodeStore, Counter, CounterValue};

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
    streak: Counter,
    streak_value: CounterValue,
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

    /// Clears the subject's failure count and its wrong codes in a row,
    /// ending its lock (the one only support lifts too): the user may
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
        let keys = [
            state.failures.key.clone(),
            state.lock.key.clone(),
            state.streak.key.clone(),
        ];
        r.store.delete_counters(&keys).await?;
        if let Some(reference) = state.reference
            && let Some(mut case) = r.store.get_case(&reference).await?
        {
            case.unlocked_at = Some(now);
            case.purge_after = case
                .purge_after
                .min(now.saturating_add(r.policy.record_retention()));
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
            failures_in_a_row: state.streak_value.count,
            hard_locked: machine::hard_locked(state.streak_value.count, &r.policy),
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
        let streak = streak_counter_of(&who, 0);
        let values = r
            .count(&[failures.clone(), lock.clone(), streak.clone()], now)
            .await?;
        let (fv, lv, sv) = (values[0], values[1], values[2]);
        let until = r.lock_end(fv, lv);
        // A hard lock's reference is its streak's, which the user was given.
        let reference = match machine::hard_locked(sv.count, &r.policy) {
            true => Some(r.hard_lock_reference(subject, sv)),
            false => until.map(|until| r.keys.support_reference(&subject.key(), until)),
        };
        Ok(LockState {
            reference,
            until,
            failures,
            failures_value: fv,
            lock,
            streak,
            streak_value: sv,
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
