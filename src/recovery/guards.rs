//! The driver's guards: the counters one call adds to its store call
//! (send limits, blocks, the subject's failures and lock, the detectors'
//! measures), the judgement on the values the store returns, and what
//! follows from it (automatic blocks, lockouts, suspicious-activity
//! events). The rules themselves are in [`crate::limits`]; this is where
//! [`Recovery`] applies them.

use std::time::Duration;

use crate::case::{SupportCase, SupportReference};
use crate::clock::{Clock, Timestamp};
use crate::detect;
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, Suspicion};
use crate::limits::{self, BlockTarget, LimitScope, Plan, Refusal, Role, key};
use crate::machine;
use crate::phone::PhoneNumber;
use crate::record::{FlowRecord, Subject};
use crate::recovery::{Recovery, RequestContext, flow_event};
use crate::sms::SmsSender;
use crate::store::{CodeStore, Counter, CounterValue};

/// Which detectors a request's counters feed, by index in its plan.
#[derive(Debug, Default)]
pub(crate) struct Detection {
    /// (IP, its pseudonym, index of its distinct-subject count).
    subjects_from_ip: Option<(String, String, usize)>,
    /// Country code, number block pseudonym, and the indexes of their send
    /// and verified counts.
    pumping: Option<(u16, String, [usize; 4])>,
    /// What the country's send count lacks of what this call would have
    /// added: 1 for a send that spends nothing shared (a decoy's), which is
    /// judged as if it had.
    unspent: u64,
}

impl<S: CodeStore, T: SmsSender, C: Clock> Recovery<S, T, C> {
    /// Adds to `plan` the blocks to read and the counts of one send: every
    /// send limit, and the detectors. `destination` is the real phone, or
    /// an unknown identifier's made-up one, and both are limited alike; but
    /// only a send that will reach a real phone (`spends`) counts against
    /// what everyone shares (the country and global budgets, the country's
    /// pumping count). A decoy reads them and is refused exactly where one
    /// more send would be, and its number block has a name of its own, so
    /// no flood of unknown identifiers can spend, block or pump what real
    /// users need.
    pub(crate) fn plan_send(
        &self,
        plan: &mut Plan,
        subject_key: &str,
        destination: &PhoneNumber,
        spends: bool,
        ctx: &RequestContext,
    ) -> Detection {
        let spent = u32::from(spends);
        self.note_client_ip(ctx);
        // Personal values (phones, IPs, accounts) enter counter keys only
        // as pseudonyms.
        let ip = ctx.ip_key();
        let p_ip = ip.as_deref().map(|ip| self.keys.pseudonym(ip));
        let cc = destination.country_code();
        let mut cc_text = itoa::Buffer::new();
        let cc_text = cc_text.format(cc);
        let p_block = self.block_pseudonym(destination, spends);
        if let (Some(ip), Some(p_ip)) = (&ip, &p_ip) {
            let target = BlockTarget::Ip(ip.clone());
            let key = target.key(|_| p_ip.clone());
            plan.block(target, key);
        }
        self.plan_block(plan, BlockTarget::CountryCode(cc));
        self.plan_block(plan, BlockTarget::NumberBlock(p_block.clone()));
        let p_phone = self.keys.pseudonym(destination.as_str());
        // Only with a site rule: the key is a formatted string.
        let p_site = self
            .limits
            .has_send_rule(LimitScope::IpSite)
            .then(|| ctx.ip_site_key())
            .flatten()
            .map(|site| self.keys.pseudonym(&site));
        for rule in self.limits.send_rules() {
            let (value, by) = match rule.scope {
                LimitScope::Phone => (Some(p_phone.as_str()), 1),
                LimitScope::Account => (Some(subject_key), 1),
                LimitScope::Ip => (p_ip.as_deref(), 1),
                LimitScope::IpSite => (p_site.as_deref(), 1),
                LimitScope::CountryCode => (Some(cc_text), spent),
                LimitScope::Global => (Some("all"), spent),
                _ => (None, 1),
            };
            if let Some(value) = value {
                plan.limit(rule, value, by);
            }
        }
        let window = self.limits.detectors().window;
        let mut detection = Detection {
            unspent: u64::from(1 - spent),
            ..Detection::default()
        };
        if let (Some(ip), Some(p_ip)) = (ip, p_ip) {
            // Undone with a refused call, like its limits: a refused probe
            // is judged on its count but leaves no counter behind, so a
            // flood of identifiers refused from one network stores nothing.
            let guarded = Role::Measure { guarded: true };
            let pair = plan.push(
                Counter::new(key(&["det:pair:", &p_ip, ":", subject_key]), window, 1),
                guarded.clone(),
            );
            let distinct = plan.push(
                Counter::new(key(&["det:subjects:", &p_ip]), window, 1).only_if_opened(pair),
                guarded,
            );
            detection.subjects_from_ip = Some((ip, p_ip, distinct));
        }
        // Sends count for pumping only when the call is admitted.
        let sent = Role::Measure { guarded: true };
        let read = Role::Measure { guarded: false };
        let [cc_verified, nb_verified] = self.verified_counters(cc_text, &p_block, 0);
        let indexes = [
            plan.push(
                Counter::new(key(&["det:sends:cc:", cc_text]), window, spent),
                sent.clone(),
            ),
            plan.push(cc_verified, read.clone()),
            plan.push(Counter::new(key(&["det:sends:nb:", &p_block]), window, 1), sent),
            plan.push(nb_verified, read),
        ];
        detection.pumping = Some((cc, p_block, indexes));
        detection
    }

    /// The pseudonym of `phone`'s number block, which its block and its
    /// pumping counts are keyed by. One that no code will reach (`real`
    /// false: a decoy's made-up number) is drawn under another label, so it
    /// can never count into, or block, the block of real numbers it falls
    /// in; both cost alike.
    pub(crate) fn block_pseudonym(&self, phone: &PhoneNumber, real: bool) -> String {
        let label: &[u8] = [b"decoy-nb:".as_slice(), b"phone-nb:".as_slice()][usize::from(real)];
        self.keys
            .pseudonym_of(&[label, limits::number_block(phone).as_bytes()])
    }

    /// The pumping detector's counts of verified codes into a country code
    /// and into a number block (its pseudonym): a verified code adds to
    /// them (`by` 1), a send's plan reads them (`by` 0).
    pub(crate) fn verified_counters(&self, cc: &str, p_block: &str, by: u32) -> [Counter; 2] {
        let window = self.limits.detectors().window;
        [
            Counter::new(key(&["det:verified:cc:", cc]), window, by),
            Counter::new(key(&["det:verified:nb:", p_block]), window, by),
        ]
    }

    /// How many counters a send's plan holds: the three locks, three
    /// blocks, the send rules and six detector counters.
    pub(crate) fn send_plan_len(&self) -> usize {
        3 + 3 + self.limits.send_rules().len() + 6
    }

    /// Adds the reads of the subject's failures, lock and wrong codes in a
    /// row to `plan`, as refusals; returns their indexes.
    /// `subject_key` is the subject's pseudonym.
    pub(crate) fn plan_locks(&self, plan: &mut Plan, subject_key: &str) -> Locks {
        let max = u64::from(self.policy.max_account_failures());
        let failures = plan.lock(self.failure_counter_of(subject_key, 0), max - 1);
        let lock = plan.lock(lock_read_of(subject_key), 0);
        let streak = u64::from(self.policy.max_consecutive_failures());
        let streak = plan.lock(streak_counter_of(subject_key, 0), streak - 1);
        Locks {
            failures,
            lock,
            streak,
        }
    }

    /// Adds a read of the block of `target` to `plan`.
    pub(crate) fn plan_block(&self, plan: &mut Plan, target: BlockTarget) {
        let key = self.block_key(&target);
        plan.block(target, key);
    }

    pub(crate) fn block_key(&self, target: &BlockTarget) -> String {
        target.key(|value| self.keys.pseudonym(value))
    }

    /// Refuses, without a store call, a send from a network this instance
    /// saw refused by its own send limit, until that refusal ends: the
    /// answer the store would give, for any identifier, at no write.
    pub(crate) fn refused_before(
        &self,
        detection: &Detection,
        now: Timestamp,
        event: &(dyn Fn(EventKind) -> Event + Sync),
    ) -> Result<()> {
        if let Some((ip, _, _)) = &detection.subjects_from_ip
            && let Some(wait) = self.refusals.wait(ip, now)
        {
            return Err(self.refuse(Refusal::Limited(LimitScope::Ip, wait), now, event));
        }
        Ok(())
    }

    /// Remembers a send refused by its network's own limit (see
    /// [`Recovery::refused_before`]).
    pub(crate) fn remember_refusal(&self, detection: &Detection, judged: &Result<()>, now: Timestamp) {
        if let (
            Some((ip, _, _)),
            Err(Error::RateLimited {
                scope: LimitScope::Ip,
                retry_after,
            }),
        ) = (&detection.subjects_from_ip, judged)
        {
            self.refusals.remember(ip, now.saturating_add(*retry_after), now);
        }
    }

    /// Refuses when the subject is locked, a block is in force or a limit
    /// was passed (the store already undid the call's counts).
    pub(crate) fn judge(
        &self,
        plan: &Plan,
        values: &[CounterValue],
        now: Timestamp,
        subject: &Subject,
        locks: Locks,
        event: &(dyn Fn(EventKind) -> Event + Sync),
    ) -> Result<()> {
        match plan.refusal(values, now) {
            None => Ok(()),
            Some(Refusal::Locked) if machine::hard_locked(values[locks.streak].count, &self.policy) => {
                self.emit(event(EventKind::LockedOut { until: None }));
                Err(self.hard_locked(subject, values[locks.streak]))
            }
            Some(Refusal::Locked) => {
                let until = self.lock_end(values[locks.failures], values[locks.lock]);
                self.emit(event(EventKind::LockedOut { until }));
                Err(self.locked(subject, until))
            }
            Some(refusal) => Err(self.refuse(refusal, now, event)),
        }
    }

    /// The error (and event) for a block or a limit.
    pub(crate) fn refuse(
        &self,
        refusal: Refusal,
        now: Timestamp,
        event: &(dyn Fn(EventKind) -> Event + Sync),
    ) -> Error {
        match refusal {
            Refusal::Blocked(target, until) => {
                self.emit(event(EventKind::BlockedRequest { target }));
                Error::Blocked {
                    retry_after: until.saturating_duration_since(now),
                }
            }
            Refusal::Limited(scope, retry_after) => {
                self.emit(event(EventKind::RateLimited { scope, retry_after }));
                Error::RateLimited { scope, retry_after }
            }
            Refusal::Locked => Error::flow_locked(),
        }
    }

    /// Runs the detectors on a send's counts, whether or not the call was
    /// refused: reports what crosses a threshold and, where configured,
    /// blocks it (and refuses this call).
    pub(crate) async fn detect(
        &self,
        detection: &Detection,
        plan: &Plan,
        values: &[CounterValue],
        now: Timestamp,
        event: &(dyn Fn(EventKind) -> Event + Sync),
    ) -> Result<()> {
        let d = self.limits.detectors();
        let mut found: Vec<detect::Finding> = Vec::new();
        if let Some((ip, p_ip, i)) = &detection.subjects_from_ip {
            let subjects = values[*i].count;
            if detect::too_many_subjects(d, subjects) {
                // Reported once per window: the first call past the
                // threshold opens the "reported" counter.
                let reported = Counter::new(key(&["det:reported:", p_ip]), d.window, 1);
                let first = self.count(std::slice::from_ref(&reported), now).await?;
                if first[0].opened(&reported, now) {
                    found.push(detect::subjects_from_ip(d, ip, subjects));
                }
            }
        }
        // Pumping is judged on sends that were admitted (a refused call's
        // sends were undone).
        let admitted = !Counter::refused(&plan.counters, values);
        if let (true, Some((cc, block, [cc_sends, cc_verified, nb_sends, nb_verified]))) =
            (admitted, &detection.pumping)
        {
            let count = |i: &usize| values[*i].count;
            // A decoy judges the country as the next real send would, to
            // block where it would; it reports nothing it would not block,
            // or every decoy at that count would repeat the real report.
            let own = |(s, t): &detect::Finding| {
                detection.unspent == 0 || t.is_some() || !matches!(s, Suspicion::SmsPumpingCountry { .. })
            };
            found.extend(
                detect::pumping(
                    d,
                    (*cc, [count(cc_sends) + detection.unspent, count(cc_verified)]),
                    (block, [count(nb_sends), count(nb_verified)]),
                )
                .into_iter()
                .filter(own),
            );
        }
        for (pattern, _) in &found {
            self.emit(event(EventKind::Suspicious {
                pattern: pattern.clone(),
            }));
        }
        let (Some(duration), targets) = (
            d.auto_block,
            found.into_iter().filter_map(|(_, t)| t).collect::<Vec<_>>(),
        ) else {
            return Ok(());
        };
        if targets.is_empty() {
            return Ok(());
        }
        let blocks: Vec<Counter> = targets
            .iter()
            .map(|target| Counter::new(self.block_key(target), duration, 1))
            .collect();
        let set = self.count(&blocks, now).await?;
        let mut until = now;
        for (target, value) in targets.into_iter().zip(set) {
            let end = value.resets_at.unwrap_or(now);
            until = until.max(end);
            self.emit(event(EventKind::AutoBlocked { target, until: end }));
        }
        Err(Error::Blocked {
            retry_after: until.saturating_duration_since(now),
        })
    }

    /// The account reached its failure limit with the flow `locked`: store
    /// the support case, report, notify, and build the error.
    pub(crate) async fn lock_account(
        &self,
        locked: &FlowRecord,
        until: Timestamp,
        lockouts: u64,
        now: Timestamp,
        ctx: &RequestContext,
    ) -> Error {
        let reference = self.keys.support_reference(&locked.subject.key(), until);
        let case = SupportCase {
            reference,
            subject: locked.subject.clone(),
            flow: locked.id,
            opened_at: now,
            locked_until: until,
            unlocked_at: None,
            purge_after: until.saturating_add(self.policy.record_retention()),
        };
        let event = |kind| flow_event(now, kind, locked, ctx);
        // The lock itself is already stored (the failure count); a case
        // that cannot be stored only means support finds it by account.
        let _ = self.store.put_case(&case).await;
        self.emit(event(EventKind::AccountLocked { until, reference }));
        if let Some(pattern) = detect::repeated_lockouts(self.limits.detectors(), lockouts) {
            self.emit(event(EventKind::Suspicious { pattern }));
        }
        let notice = self.messages.locked_message(until, &reference, ctx.locale);
        self.notify(locked, notice, now, ctx).await;
        self.locked(&locked.subject, Some(until))
    }

    /// The error for a subject whose wrong codes in a row reached the cap
    /// (`streak`, their counter's value): no end, and the reference of the
    /// streak, which stays the same until support clears it.
    pub(crate) fn hard_locked(&self, subject: &Subject, streak: CounterValue) -> Error {
        Error::Locked {
            until: None,
            reference: Some(self.hard_lock_reference(subject, streak)),
            support: self.messages.support_contact().map(str::to_owned),
        }
    }

    /// The support reference of a hard lock: of the subject and the end of
    /// its streak's window, which its first wrong code fixed.
    pub(crate) fn hard_lock_reference(&self, subject: &Subject, streak: CounterValue) -> SupportReference {
        let end = streak.resets_at.unwrap_or(Timestamp::from_unix_millis(0));
        self.keys.support_reference(&subject.key(), end)
    }

    /// The error for a locked subject.
    pub(crate) fn locked(&self, subject: &Subject, until: Option<Timestamp>) -> Error {
        Error::Locked {
            until,
            reference: until.map(|until| self.keys.support_reference(&subject.key(), until)),
            support: self.messages.support_contact().map(str::to_owned),
        }
    }

    /// [`machine::lock_end`] under this recovery's policy.
    pub(crate) fn lock_end(&self, failures: CounterValue, lock: CounterValue) -> Option<Timestamp> {
        machine::lock_end(failures, lock, &self.policy)
    }

    /// The pseudonym of a subject's key, which its counters are keyed by.
    pub(crate) fn subject_pseudonym(&self, subject: &Subject) -> String {
        let [kind, id] = subject.key_parts();
        self.keys.pseudonym_of(&[kind.as_bytes(), id.as_bytes()])
    }

    /// The counter of a subject's wrong codes, by its pseudonym.
    pub(crate) fn failure_counter_of(&self, pseudonym: &str, by: u32) -> Counter {
        Counter::new(
            key(&["fail:", pseudonym]),
            self.policy.account_failure_window(),
            by,
        )
    }
}

/// The counter of a subject's lock (by its pseudonym): open for the
/// minimum lockout once the subject locks (`by` 1).
pub(crate) fn lock_counter_of(pseudonym: &str, window: Duration, by: u32) -> Counter {
    Counter::new(key(&["lock:", pseudonym]), window, by)
}

/// A read of a subject's lock counter (by its pseudonym): it counts
/// nothing, and opens no window that matters.
pub(crate) fn lock_read_of(pseudonym: &str) -> Counter {
    lock_counter_of(pseudonym, Duration::from_secs(1), 0)
}

/// The indexes, in a plan, of the subject's lock reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Locks {
    /// Its failures in the current window.
    pub(crate) failures: usize,
    /// Its lock.
    pub(crate) lock: usize,
    /// Its wrong codes in a row.
    pub(crate) streak: usize,
}

/// How long a streak of wrong codes is kept: far longer than any account
/// is attacked for, so in effect only a reset or support clears it.
const STREAK_WINDOW: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The counter of a subject's wrong codes in a row (by its pseudonym):
/// every wrong code adds one; a completed reset or a support unlock
/// deletes it.
pub(crate) fn streak_counter_of(pseudonym: &str, by: u32) -> Counter {
    Counter::new(key(&["streak:", pseudonym]), STREAK_WINDOW, by)
}

/// The window in which repeated lockouts of one account are counted.
const LOCKOUT_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// The counter of a subject's lockouts (by its pseudonym), counted once
/// per account lock.
pub(crate) fn lockouts_counter_of(pseudonym: &str) -> Counter {
    Counter::new(key(&["lockouts:", pseudonym]), LOCKOUT_WINDOW, 1)
}
