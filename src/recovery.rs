//! The driver: [`Recovery`] loads a flow, asks the [`machine`] what happens,
//! writes the result back with a compare-and-swap, and performs the effects
//! (sending the SMS, reporting events).
//!
//! Every write that decides a rule is a compare-and-swap on the flow's
//! version: when two calls race on one flow, one wins and the other reloads
//! and decides again on the newer record. A verdict on a code is returned
//! only once the attempt it consumed is stored, so no number of concurrent
//! calls can evaluate more codes than the policy allows. Limits, blocks and
//! detectors are windowed counters applied in the same store calls.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::code::{KeyRing, Mac};
use crate::error::{Error, InputError, Result};
use crate::events::{Event, EventKind, EventSink, Suspicion, TracingSink};
use crate::id::{AccountId, FlowId};
use crate::limits::{self, BlockTarget, LimitScope, Limits, Plan, Refusal, Role};
use crate::machine::{self, Evaluation, Opening, Verdict};
use crate::message::{Locale, Messages};
use crate::phone::{MaskedPhone, PhoneNumber};
use crate::policy::Policy;
use crate::record::{DecoyId, FlowRecord, FlowState, Subject};
use crate::secret::{Code, ResetToken, SecretString};
use crate::sms::{MessageKind, SendError, SendErrorKind, SmsMessage, SmsSender};
use crate::store::{CodeStore, Counter, CounterValue};
use crate::support::SupportCase;

/// How many times one call re-reads a flow after losing a compare-and-swap
/// before it gives up with [`Error::Busy`]. Each loss means another call
/// changed the flow, and a flow allows only a handful of changes, so this
/// is reached only under pathological contention.
const MAX_CAS_ROUNDS: usize = 64;
/// The window in which repeated lockouts of one account are counted.
const LOCKOUT_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// An account as the host resolved it: its id and verified phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Account {
    /// The host's account id.
    pub id: AccountId,
    /// The account's verified phone, E.164.
    pub phone: PhoneNumber,
}

impl Account {
    /// An account with its phone.
    pub fn new(id: AccountId, phone: PhoneNumber) -> Self {
        Account { id, phone }
    }
}

/// What the host knows about the client making a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestContext {
    /// The client's IP address, as the host determined it (behind a proxy,
    /// from the header the host's own proxy sets). Limits and detectors by
    /// IP apply only when it is given.
    pub client_ip: Option<IpAddr>,
    /// The language of the messages this call sends, if not the default.
    pub locale: Option<Locale>,
}

impl RequestContext {
    /// No client information: IP rules do not apply.
    pub fn none() -> Self {
        Self::default()
    }

    /// A call from `ip`.
    pub fn from_ip(ip: IpAddr) -> Self {
        RequestContext {
            client_ip: Some(ip),
            locale: None,
        }
    }

    /// Sets the language of the messages.
    #[must_use]
    pub fn with_locale(mut self, locale: Locale) -> Self {
        self.locale = Some(locale);
        self
    }

    fn ip_key(&self) -> Option<String> {
        self.client_ip.map(limits::ip_key)
    }
}

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
    /// Hand this to the user's browser; give it back to [`Recovery::reset`].
    pub token: ResetToken,
    /// The token is valid strictly before this instant.
    pub token_expires_at: Timestamp,
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

/// Account recovery by SMS code over a store, a sender and a clock.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use otp_recovery::sms::RecordingSender;
/// use otp_recovery::store::MemoryStore;
/// use otp_recovery::{Account, AccountId, KeyRing, PhoneNumber, Recovery, RequestContext, ServerKey};
///
/// let sender = RecordingSender::new();
/// let keys = KeyRing::new(1, ServerKey::generate().unwrap());
/// let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys);
/// let ctx = RequestContext::from_ip("203.0.113.9".parse().unwrap());
///
/// // The host looked "alice@example.com" up and found this account.
/// let account = Account::new(AccountId::new("42").unwrap(), PhoneNumber::parse("+14155550123").unwrap());
/// let requested = recovery.request("alice@example.com", Some(account), &ctx).await.unwrap();
///
/// // The user types the code from the SMS.
/// let code = sender.last_code().unwrap();
/// let verified = recovery.verify(&requested.flow_id, code.expose_secret(), &ctx).await.unwrap();
///
/// // The new-password form posts the token back.
/// let done = recovery.reset(&verified.token.expose_secret(), &ctx).await.unwrap();
/// assert_eq!(done.account.as_str(), "42");
/// # });
/// ```
pub struct Recovery<S, T, C = SystemClock> {
    pub(crate) store: S,
    sender: T,
    pub(crate) clock: C,
    pub(crate) keys: KeyRing,
    pub(crate) policy: Policy,
    messages: Messages,
    limits: Limits,
    pub(crate) events: Arc<dyn EventSink>,
}

impl<S, T, C> fmt::Debug for Recovery<S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field("keys", &self.keys)
            .field("policy", &self.policy)
            .field("messages", &self.messages)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S: CodeStore, T: SmsSender> Recovery<S, T, SystemClock> {
    /// A recovery with the default [`Policy`], [`Limits`] and [`Messages`],
    /// the system clock, and events to `tracing`.
    pub fn new(store: S, sender: T, keys: KeyRing) -> Self {
        Recovery {
            store,
            sender,
            clock: SystemClock,
            keys,
            policy: Policy::default(),
            messages: Messages::default(),
            limits: Limits::default(),
            events: Arc::new(TracingSink),
        }
    }
}

/// Which detectors a request's counters feed, by index in its plan.
#[derive(Debug, Default)]
struct Detection {
    /// (IP, index of its distinct-subject count).
    subjects_from_ip: Option<(String, usize)>,
    /// Country code, number block, and the indexes of their send and
    /// verified counts.
    pumping: Option<(u16, String, [usize; 4])>,
}

impl<S: CodeStore, T: SmsSender, C: Clock> Recovery<S, T, C> {
    /// Replaces the policy.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Replaces the message settings.
    #[must_use]
    pub fn with_messages(mut self, messages: Messages) -> Self {
        self.messages = messages;
        self
    }

    /// Replaces the limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sends events to `sink` instead of `tracing`.
    #[must_use]
    pub fn with_events(mut self, sink: impl EventSink + 'static) -> Self {
        self.events = Arc::new(sink);
        self
    }

    /// Replaces the clock (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock<C2: Clock>(self, clock: C2) -> Recovery<S, T, C2> {
        Recovery {
            store: self.store,
            sender: self.sender,
            clock,
            keys: self.keys,
            policy: self.policy,
            messages: self.messages,
            limits: self.limits,
            events: self.events,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Starts a recovery for `identifier` (what the user typed: an email, a
    /// user name), which the host resolved to `account`, or to `None` when
    /// no account matches.
    ///
    /// For a known account, a new code is stored and sent, and every earlier
    /// code of the account stops working. For an unknown identifier the
    /// answer has the same shape (a flow id that behaves like a real one
    /// under verify and resend and is superseded by the next request, a
    /// stable made-up masked phone), under the same limits, after the same
    /// kind of work, and nothing is sent.
    ///
    /// One store call reads the account's failures and the blocks and
    /// counts the send against every limit and detector; a second creates
    /// the flow.
    ///
    /// # Errors
    /// [`Error::Locked`] (with its end and support reference) when the
    /// account has reached its failure limit; [`Error::RateLimited`] past a
    /// send limit; [`Error::Blocked`] while the client IP or destination is
    /// blocked; [`Error::Store`], [`Error::Random`]; [`Error::Send`] if the
    /// SMS could not be sent and [`Policy::reveal_send_failures`] is on (the
    /// new code is invalid either way).
    pub async fn request(
        &self,
        identifier: &str,
        account: Option<Account>,
        ctx: &RequestContext,
    ) -> Result<Requested> {
        let now = self.clock.now();
        let id = FlowId::generate()?;
        let code = Code::generate(self.policy.code_digits())?;
        let key_id = self.keys.current_id();
        let code_mac = self.keys.current_code_mac(&id, &code);
        let decoy = self.keys.decoy(identifier);
        let (subject, phone, masked) = match account {
            Some(account) => {
                let masked = account.phone.masked();
                (Subject::Account(account.id), Some(account.phone), masked)
            }
            None => (Subject::Unknown(decoy_id(&decoy)), None, self.decoy_mask(&decoy)),
        };
        let real_phone = phone.as_ref().map(PhoneNumber::masked);
        let event = |kind| {
            Event::new(now, kind)
                .account(subject.account().cloned())
                .phone(real_phone)
                .ip(ctx.client_ip)
        };

        let mut plan = Plan::default();
        let failures = plan.push(self.failure_counter(&subject, 0), Role::Measure);
        let detection = self.plan_send(&mut plan, &subject, phone.as_ref(), ctx);
        let values = self.store.increment_counters(&plan.counters, now).await?;
        if machine::subject_locked(values[failures].count, &self.policy) {
            return Err(self.locked(&subject, values[failures].resets_at));
        }
        self.judge(&plan, &values, now, &event)?;
        self.detect(&detection, &values, now, &event).await?;

        // A decoy stores its decoy MAC, under a label no code MAC shares, so
        // it can never verify; the code is drawn and MACed all the same, so
        // both paths do the same work.
        let code_mac = if phone.is_some() { code_mac } else { decoy };
        let opening = Opening {
            id,
            subject: subject.clone(),
            phone,
            key_id,
            code_mac,
            prior_failures: u32::try_from(values[failures].count).unwrap_or(u32::MAX),
        };
        let flow = machine::open(&self.policy, now, opening);
        self.store.create_flow(&flow).await?;
        self.emit(
            event(EventKind::Requested {
                known: flow.phone.is_some(),
            })
            .flow(flow.id),
        );
        self.send_code(&flow, &code, ctx).await?;
        Ok(self.requested(&flow, masked))
    }

    /// Sends a new code for the flow; every earlier code stops working.
    /// Failed attempts are kept, and the send counts against every send
    /// limit like a request.
    ///
    /// # Errors
    /// [`Error::TooSoon`] within the cooldown (30 s, doubling with each
    /// send), [`Error::TooManySends`] once the flow has sent its allowance,
    /// [`Error::RateLimited`], [`Error::Blocked`], [`Error::Locked`] when
    /// the flow or its account is locked, [`Error::NotFound`],
    /// [`Error::AlreadyUsed`], [`Error::Superseded`], [`Error::Cancelled`];
    /// store, random and send failures as for [`Recovery::request`].
    pub async fn resend(&self, flow_id: &FlowId, ctx: &RequestContext) -> Result<Requested> {
        let now = self.clock.now();
        let mut blocks = Plan::default();
        if let Some(ip) = ctx.ip_key() {
            self.plan_block(&mut blocks, BlockTarget::Ip(ip));
        }
        let (flow, values) = self.store.load_counting(flow_id, &blocks.counters, now).await?;
        let flow = flow.ok_or(Error::NotFound)?;
        let masked = self.masked(&flow);
        let event = |kind| {
            Event::new(now, kind)
                .flow(flow.id)
                .account(flow.account().cloned())
                .phone(flow.phone.as_ref().map(PhoneNumber::masked))
                .ip(ctx.client_ip)
        };
        self.judge(&blocks, &values, now, &event)?;
        // Refuse early (cooldown, state) before counting a send that will
        // not happen; the compare-and-swap below decides again.
        machine::resend_gate(&flow, &self.policy, now)?;
        let mut plan = Plan::default();
        let detection = self.plan_send(&mut plan, &flow.subject, flow.phone.as_ref(), ctx);
        let values = self.store.increment_counters(&plan.counters, now).await?;
        self.judge(&plan, &values, now, &event)?;
        self.detect(&detection, &values, now, &event).await?;

        let code = Code::generate(self.policy.code_digits())?;
        let key_id = self.keys.current_id();
        let code_mac = self.keys.current_code_mac(flow_id, &code);
        let flow = self
            .update(flow_id, |flow, now| {
                // A decoy keeps its decoy MAC, which no code can match.
                let mac = if flow.is_decoy() { flow.code_mac } else { code_mac };
                machine::resend(flow, &self.policy, now, key_id, mac)
            })
            .await?;
        self.emit(event(EventKind::Resent));
        self.send_code(&flow, &code, ctx).await?;
        Ok(self.requested(&flow, masked))
    }

    /// Checks a code the user typed. One attempt is consumed and stored
    /// before the verdict is returned; the comparison is constant time.
    ///
    /// # Errors
    /// [`Error::InvalidCode`] with the attempts left (0: the flow is now
    /// locked); [`Error::Locked`] with its end and support reference when
    /// this wrong code brought the account to its failure limit, or when
    /// the flow was locked already; [`Error::RateLimited`] when the client
    /// IP has had too many codes checked, [`Error::Blocked`] while it is
    /// blocked; [`Error::Input`] for a code that is not exactly the
    /// policy's number of digits (no attempt is consumed);
    /// [`Error::Expired`], [`Error::AlreadyUsed`], [`Error::Superseded`],
    /// [`Error::Cancelled`], [`Error::NotFound`]; [`Error::Store`],
    /// [`Error::Random`], [`Error::Busy`], [`Error::UnknownKey`].
    pub async fn verify(&self, flow_id: &FlowId, code: &str, ctx: &RequestContext) -> Result<Verified> {
        let code = Code::parse(code)?;
        if code.len() != usize::from(self.policy.code_digits()) {
            return Err(InputError::MalformedCode.into());
        }
        let ip = ctx.ip_key();
        let ip_rule = ip.as_ref().and(self.limits.ip_verify_rule());
        let mut checks = Plan::default();
        if let Some(ip) = &ip {
            self.plan_block(&mut checks, BlockTarget::Ip(ip.clone()));
            if let Some(rule) = &ip_rule {
                // Counted before the code is checked, so racing guesses
                // cannot pass a read together.
                checks.limit(rule, &self.keys.pseudonym(ip), 1);
            }
        }
        for round in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            // The first round reads the client's block and limit with the
            // flow, in one store call.
            let (flow, values) = if round == 0 {
                self.store.load_counting(flow_id, &checks.counters, now).await?
            } else {
                (self.store.get_flow(flow_id).await?, Vec::new())
            };
            let flow = flow.ok_or(Error::NotFound)?;
            let event = |kind| {
                Event::new(now, kind)
                    .flow(flow.id)
                    .account(flow.account().cloned())
                    .phone(flow.phone.as_ref().map(PhoneNumber::masked))
                    .ip(ctx.client_ip)
            };
            if round == 0 {
                self.judge(&checks, &values, now, &event)?;
            }
            machine::verify_gate(&flow, &self.policy, now)?;
            let expected = self
                .keys
                .code_mac(flow.key_id, flow_id, &code)
                .ok_or(Error::UnknownKey(flow.key_id))?;
            if flow.code_mac.ct_matches(&expected) {
                let token = ResetToken::generate(*flow_id)?;
                let key_id = self.keys.current_id();
                let token_mac = self
                    .keys
                    .token_mac(key_id, flow_id, token.secret_bytes())
                    .ok_or(Error::UnknownKey(key_id))?;
                let (next, _) =
                    machine::verify(&flow, &self.policy, now, Evaluation::Right { key_id, token_mac })?;
                // Verified codes feed the SMS-pumping detector.
                let verified: Vec<Counter> = flow
                    .phone
                    .iter()
                    .flat_map(|phone| {
                        let window = self.limits.detectors().window;
                        let block = self.keys.pseudonym(&limits::number_block(phone));
                        [
                            Counter::new(format!("det:verified:cc:{}", phone.country_code()), window, 1),
                            Counter::new(format!("det:verified:nb:{block}"), window, 1),
                        ]
                    })
                    .collect();
                let stored = self
                    .store
                    .compare_and_swap_counting(flow.version, &next, &verified, now)
                    .await?;
                if stored.is_none() {
                    continue;
                }
                self.emit(event(EventKind::Verified));
                return Ok(Verified {
                    token,
                    token_expires_at: next.token_expires_at,
                });
            }
            let (next, verdict) = machine::verify(&flow, &self.policy, now, Evaluation::Wrong)?;
            let Verdict::Wrong {
                attempts_left,
                account_locked,
            } = verdict
            else {
                unreachable!("a wrong evaluation has a wrong verdict")
            };
            // The flow's attempt, the subject's failure and (if this locks
            // the account) the lockout are counted in one store call; the
            // flow locks in the same write.
            let mut counters = vec![self.failure_counter(&flow.subject, 1)];
            if account_locked {
                let subject = self.keys.pseudonym(&flow.subject.key());
                counters.push(Counter::new(format!("lockouts:{subject}"), LOCKOUT_WINDOW, 1));
            }
            let Some(counts) = self
                .store
                .compare_and_swap_counting(flow.version, &next, &counters, now)
                .await?
            else {
                continue;
            };
            self.emit(event(EventKind::VerifyFailed { attempts_left }));
            if next.state == FlowState::Locked {
                self.emit(event(EventKind::FlowLocked));
            }
            if account_locked {
                let until = counts[0].resets_at.unwrap_or(now);
                let lockouts = counts.last().map_or(0, |c| c.count);
                return Err(self.lock_account(&next, until, lockouts, now, ctx).await);
            }
            return Err(Error::InvalidCode { attempts_left });
        }
        Err(Error::Busy)
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
        let flow = self
            .update(&flow_id, |flow, now| {
                let presented = self
                    .keys
                    .token_mac(flow.key_id, &flow_id, token.secret_bytes())
                    .ok_or(Error::UnknownKey(flow.key_id))?;
                let matched = flow.token_mac.is_some_and(|stored| stored.ct_matches(&presented));
                machine::reset(flow, now, matched)
            })
            .await
            .map_err(|e| match e {
                Error::NotFound => Error::InvalidToken,
                e => e,
            })?;
        let account = flow.account().cloned().ok_or(Error::InvalidToken)?;
        let now = flow.updated_at;
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

    /// Deletes expired flows, cases and counters from the store; returns
    /// how many flows went. Run it periodically (the in-memory store also
    /// sweeps by itself as it grows).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn purge_expired(&self) -> Result<u64> {
        Ok(self.store.purge_expired(self.clock.now()).await?)
    }

    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(&event);
    }

    /// Load, decide, compare-and-swap; again on a lost race.
    pub(crate) async fn update(
        &self,
        flow_id: &FlowId,
        decide: impl Fn(&FlowRecord, Timestamp) -> Result<FlowRecord>,
    ) -> Result<FlowRecord> {
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let flow = self.store.get_flow(flow_id).await?.ok_or(Error::NotFound)?;
            let next = decide(&flow, now)?;
            if self.store.compare_and_swap(flow.version, &next).await? {
                return Ok(next);
            }
        }
        Err(Error::Busy)
    }

    /// Adds to `plan` the blocks to read and the counts of one send: every
    /// send limit, and the detectors.
    fn plan_send(
        &self,
        plan: &mut Plan,
        subject: &Subject,
        phone: Option<&PhoneNumber>,
        ctx: &RequestContext,
    ) -> Detection {
        // Personal values (phones, IPs, accounts) enter counter keys only
        // as pseudonyms.
        let ip = ctx.ip_key();
        let p_ip = ip.as_deref().map(|ip| self.keys.pseudonym(ip));
        if let Some(ip) = &ip {
            self.plan_block(plan, BlockTarget::Ip(ip.clone()));
        }
        if let Some(phone) = phone {
            self.plan_block(plan, BlockTarget::CountryCode(phone.country_code()));
            self.plan_block(plan, BlockTarget::NumberBlock(limits::number_block(phone)));
        }
        let subject_key = self.keys.pseudonym(&subject.key());
        // An unknown identifier is limited under its stand-in, so it reaches
        // the phone limit exactly when an account would.
        let p_phone = phone.map_or_else(|| subject_key.clone(), |p| self.keys.pseudonym(p.as_str()));
        for rule in self.limits.send_rules() {
            let value = match rule.scope {
                LimitScope::Phone => Some(p_phone.clone()),
                LimitScope::Account => Some(subject_key.clone()),
                LimitScope::Ip => p_ip.clone(),
                LimitScope::CountryCode => phone.map(|p| p.country_code().to_string()),
                LimitScope::Global => Some("all".to_owned()),
                _ => None,
            };
            if let Some(value) = value {
                plan.limit(rule, &value, 1);
            }
        }
        let window = self.limits.detectors().window;
        let mut detection = Detection::default();
        if let (Some(ip), Some(p_ip)) = (ip, p_ip) {
            let pair = plan.push(
                Counter::new(format!("det:pair:{p_ip}:{subject_key}"), window, 1),
                Role::Measure,
            );
            let distinct = plan.push(
                Counter::new(format!("det:subjects:{p_ip}"), window, 1).only_if_opened(pair),
                Role::Measure,
            );
            detection.subjects_from_ip = Some((ip, distinct));
        }
        if let Some(phone) = phone {
            let cc = phone.country_code();
            let block = limits::number_block(phone);
            let p_block = self.keys.pseudonym(&block);
            let indexes = [
                plan.push(
                    Counter::new(format!("det:sends:cc:{cc}"), window, 1),
                    Role::Measure,
                ),
                plan.push(
                    Counter::read(format!("det:verified:cc:{cc}"), window),
                    Role::Measure,
                ),
                plan.push(
                    Counter::new(format!("det:sends:nb:{p_block}"), window, 1),
                    Role::Measure,
                ),
                plan.push(
                    Counter::read(format!("det:verified:nb:{p_block}"), window),
                    Role::Measure,
                ),
            ];
            detection.pumping = Some((cc, block, indexes));
        }
        detection
    }

    /// Adds a read of the block of `target` to `plan`.
    fn plan_block(&self, plan: &mut Plan, target: BlockTarget) {
        let key = self.block_key(&target);
        plan.block(target, key);
    }

    fn block_key(&self, target: &BlockTarget) -> String {
        target.key(|value| self.keys.pseudonym(value))
    }

    /// Refuses when a block is in force or a limit was passed.
    fn judge(
        &self,
        plan: &Plan,
        values: &[CounterValue],
        now: Timestamp,
        event: &(dyn Fn(EventKind) -> Event + Sync),
    ) -> Result<()> {
        match plan.refusal(values, now) {
            None => Ok(()),
            Some(Refusal::Blocked(target, until)) => {
                self.emit(event(EventKind::BlockedRequest { target }));
                Err(Error::Blocked {
                    retry_after: until.saturating_duration_since(now),
                })
            }
            Some(Refusal::Limited(scope, retry_after)) => {
                self.emit(event(EventKind::RateLimited { scope, retry_after }));
                Err(Error::RateLimited { scope, retry_after })
            }
        }
    }

    /// Runs the detectors on a send's counts: reports what crosses a
    /// threshold and, where configured, blocks it (and refuses this send).
    async fn detect(
        &self,
        detection: &Detection,
        values: &[CounterValue],
        now: Timestamp,
        event: &(dyn Fn(EventKind) -> Event + Sync),
    ) -> Result<()> {
        let d = self.limits.detectors();
        let mut found: Vec<(Suspicion, BlockTarget)> = Vec::new();
        if let Some((ip, i)) = &detection.subjects_from_ip {
            let subjects = values[*i].count;
            // Reported once per window, as the count crosses the threshold.
            if subjects == u64::from(d.subjects_per_ip) + 1 {
                found.push((
                    Suspicion::ManySubjectsFromOneIp { subjects },
                    BlockTarget::Ip(ip.clone()),
                ));
            }
        }
        if let Some((cc, block, [cc_sends, cc_verified, nb_sends, nb_verified])) = &detection.pumping {
            let pumped = |sends: u64, verified: u64, min: u32| {
                // Judged at every `min` sends, so a pumped target is
                // reported periodically rather than on every send.
                let min = u64::from(min);
                sends >= min
                    && sends.is_multiple_of(min)
                    && verified * 100 < sends * u64::from(d.pumping_max_verified_percent)
            };
            let (sends, verified) = (values[*cc_sends].count, values[*cc_verified].count);
            if pumped(sends, verified, d.pumping_min_sends_country) {
                let s = Suspicion::SmsPumpingCountry {
                    country_code: *cc,
                    sends,
                    verified,
                };
                found.push((s, BlockTarget::CountryCode(*cc)));
            }
            let (sends, verified) = (values[*nb_sends].count, values[*nb_verified].count);
            if pumped(sends, verified, d.pumping_min_sends_block) {
                let s = Suspicion::SmsPumpingNumberBlock {
                    block: block.clone(),
                    sends,
                    verified,
                };
                found.push((s, BlockTarget::NumberBlock(block.clone())));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        for (pattern, _) in &found {
            self.emit(event(EventKind::Suspicious {
                pattern: pattern.clone(),
            }));
        }
        let Some(duration) = d.auto_block else {
            return Ok(());
        };
        let blocks: Vec<Counter> = found
            .iter()
            .map(|(_, target)| Counter::new(self.block_key(target), duration, 1))
            .collect();
        let set = self.store.increment_counters(&blocks, now).await?;
        let mut until = now;
        for ((_, target), value) in found.into_iter().zip(set) {
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
    async fn lock_account(
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
        let event = |kind| {
            Event::new(now, kind)
                .flow(locked.id)
                .account(locked.account().cloned())
                .phone(locked.phone.as_ref().map(PhoneNumber::masked))
                .ip(ctx.client_ip)
        };
        // The lock itself is already stored (the failure count); a case
        // that cannot be stored only means support finds it by account.
        let _ = self.store.put_case(&case).await;
        self.emit(event(EventKind::AccountLocked { until, reference }));
        if lockouts >= u64::from(self.limits.detectors().lockouts_per_week) {
            self.emit(event(EventKind::Suspicious {
                pattern: Suspicion::RepeatedLockouts { lockouts },
            }));
        }
        let notice = self.messages.locked_message(until, &reference, ctx.locale);
        self.notify(locked, notice, now, ctx).await;
        self.locked(&locked.subject, Some(until))
    }

    /// The error for a locked subject.
    fn locked(&self, subject: &Subject, until: Option<Timestamp>) -> Error {
        Error::Locked {
            until,
            reference: until.map(|until| self.keys.support_reference(&subject.key(), until)),
            support: self.messages.support_contact().map(str::to_owned),
        }
    }

    /// Sends the code stored in `flow` (a no-op for decoys). If the send
    /// fails, or the destination country is not allowed, the code is
    /// expired at once so that no code the user never received stays
    /// valid; the send still counts toward the flow's limit. The failure is
    /// returned only when the policy reveals send failures.
    async fn send_code(&self, flow: &FlowRecord, code: &Code, ctx: &RequestContext) -> Result<()> {
        let Some(phone) = &flow.phone else {
            return Ok(());
        };
        let now = self.clock.now();
        let event = |kind| {
            Event::new(now, kind)
                .flow(flow.id)
                .account(flow.account().cloned())
                .phone(Some(phone.masked()))
                .ip(ctx.client_ip)
        };
        let country_code = phone.country_code();
        let error = if self.limits.country_allowed(country_code) {
            let body = self
                .messages
                .code_message(code, self.policy.code_ttl(), &flow.id, ctx.locale);
            let message = SmsMessage::new(phone.clone(), body, MessageKind::Code);
            match self.sender.send(&message).await {
                Ok(_) => {
                    self.emit(event(EventKind::CodeSent));
                    return Ok(());
                }
                Err(error) => {
                    self.emit(event(EventKind::SendFailed { kind: error.kind() }));
                    error
                }
            }
        } else {
            self.emit(event(EventKind::DestinationRefused { country_code }));
            SendError::new(
                SendErrorKind::Rejected,
                format!("destination +{country_code} is not allowed"),
            )
        };
        // If the undo fails too (store down), the code nobody received
        // expires with its TTL.
        let _ = self.expire_unsent(flow).await;
        if self.policy.reveal_send_failures() {
            return Err(Error::Send(error));
        }
        Ok(())
    }

    /// Sends a notice to the flow's phone; a failure is an event, not an
    /// error of the operation it follows.
    async fn notify(&self, flow: &FlowRecord, body: SecretString, now: Timestamp, ctx: &RequestContext) {
        let Some(phone) = &flow.phone else {
            return;
        };
        if !self.limits.country_allowed(phone.country_code()) {
            return;
        }
        let message = SmsMessage::new(phone.clone(), body, MessageKind::Notice);
        let kind = match self.sender.send(&message).await {
            Ok(_) => EventKind::NotificationSent,
            Err(e) => EventKind::NotificationFailed { kind: e.kind() },
        };
        self.emit(
            Event::new(now, kind)
                .flow(flow.id)
                .account(flow.account().cloned())
                .phone(Some(phone.masked()))
                .ip(ctx.client_ip),
        );
    }

    async fn expire_unsent(&self, sent: &FlowRecord) -> Result<()> {
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let current = self.store.get_flow(&sent.id).await?.ok_or(Error::NotFound)?;
            // `None`: replaced, used or expired already; nothing to undo.
            let Some(next) = machine::send_failed(&current, now, &sent.code_mac) else {
                return Ok(());
            };
            if self.store.compare_and_swap(current.version, &next).await? {
                return Ok(());
            }
        }
        Err(Error::Busy)
    }

    /// The counter of a subject's wrong codes.
    pub(crate) fn failure_counter(&self, subject: &Subject, by: u32) -> Counter {
        Counter::new(
            format!("fail:{}", self.keys.pseudonym(&subject.key())),
            self.policy.account_failure_window(),
            by,
        )
    }

    /// The masked phone of a flow; a decoy's is made up from its MAC.
    pub(crate) fn masked(&self, flow: &FlowRecord) -> MaskedPhone {
        match &flow.phone {
            Some(phone) => phone.masked(),
            None => self.decoy_mask(&flow.code_mac),
        }
    }

    /// The made-up masked phone of an unknown identifier, with four digits
    /// from its decoy MAC.
    fn decoy_mask(&self, decoy: &Mac) -> MaskedPhone {
        MaskedPhone::made_up(1, 10, &decoy.as_bytes()[16..20])
    }

    fn requested(&self, flow: &FlowRecord, masked_phone: MaskedPhone) -> Requested {
        Requested {
            flow_id: flow.id,
            masked_phone,
            code_expires_at: flow.code_expires_at,
            next_send_at: machine::next_send_at(flow, &self.policy),
            attempts_left: machine::attempts_left(flow, &self.policy),
        }
    }
}

/// The decoy id of an unknown identifier: the first half of its decoy MAC.
fn decoy_id(decoy: &Mac) -> DecoyId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&decoy.as_bytes()[..16]);
    DecoyId::from_bytes(id)
}
