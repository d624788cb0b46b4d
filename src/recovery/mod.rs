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

mod guards;
mod second_factor;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::code::{KeyRing, Mac};
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, EventSink, TracingSink};
use crate::factor::{ChannelSender, FactorSource};
use crate::id::{AccountId, FlowId};
use crate::input::InputError;
use crate::limits::{self, BlockTarget, Limits, Plan};
use crate::machine::{self, Evaluation, Opening, Verdict};
use crate::message::{Locale, Messages};
use crate::phone::{MaskedPhone, PhoneNumber};
use crate::policy::Policy;
use crate::record::{DecoyId, FlowRecord, FlowState, Subject};
use crate::rng::Randomness;
use crate::secret::{Code, ResetToken, SecretString};
use crate::sms::{MessageKind, SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};
use crate::store::{CodeStore, Counter, CounterValue, one_per_counter};
pub(crate) use guards::lock_read_of;
use guards::{lock_counter_of, lockouts_counter_of};
pub use second_factor::FactorCodeSent;
use second_factor::Requirement;

/// How many times one call re-reads a flow after losing a compare-and-swap
/// before it gives up with [`Error::Busy`]. Each loss means another call
/// changed the flow, and a flow allows only a handful of changes, so this
/// is reached only under pathological contention.
pub(crate) const MAX_CAS_ROUNDS: usize = 64;
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

    pub(crate) fn ip_key(&self) -> Option<String> {
        self.client_ip.map(limits::ip_key)
    }
}

pub use crate::answer::{Completed, FactorChallenge, Progress, Requested, Verified};

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
    pub(crate) messages: Messages,
    pub(crate) limits: Limits,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) factors: Option<Arc<dyn FactorSource>>,
    pub(crate) channel: Option<Arc<dyn ChannelSender>>,
    pub(crate) rng: Randomness,
}

impl<S, T, C> fmt::Debug for Recovery<S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field("keys", &self.keys)
            .field("policy", &self.policy)
            .field("messages", &self.messages)
            .field("limits", &self.limits)
            .field("rng", &self.rng)
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
            factors: None,
            channel: None,
            rng: Randomness::os(),
        }
    }
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

    /// Asks `source` which second factors an account has (see
    /// [`factor`](crate::factor)); without one, accounts have none.
    #[must_use]
    pub fn with_factors(mut self, source: impl FactorSource + 'static) -> Self {
        self.factors = Some(Arc::new(source));
        self
    }

    /// Sends second-channel codes through `sender` (e.g. the host's
    /// mailer). Without one, the second channel is never offered.
    #[must_use]
    pub fn with_channel(mut self, sender: impl ChannelSender + 'static) -> Self {
        self.channel = Some(Arc::new(sender));
        self
    }

    /// Draws codes, flow ids and reset tokens from `rng` instead of the
    /// operating system's generator (a seeded generator in tests). Its
    /// failures are [`Error::Random`], and the call that met one writes
    /// nothing.
    #[must_use]
    pub fn with_rng<R: rand_core::TryCryptoRng + Send + 'static>(mut self, rng: R) -> Self {
        self.rng = Randomness::from_rng(rng);
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
            factors: self.factors,
            channel: self.channel,
            rng: self.rng,
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
    /// Both paths run the same code in the crate, the send's included: a
    /// decoy's code message is rendered and handed, through the same
    /// calls, to a sender that sends nothing, and its send's event to a
    /// sink that records nothing. So their times match to within a
    /// fraction of a percent (`tests/timing.rs`). That parity covers the
    /// crate's own work only: a real gateway takes tens to hundreds of
    /// milliseconds, and only known accounts reach it (and the host's
    /// [`EventSink`] sees the send events of real sends only). Make
    /// [`SmsSender::send`] and [`EventSink::emit`] return at once (hand the
    /// message or the event to a queue or a background task) or answer the
    /// user before the send completes; otherwise the response time alone
    /// tells a known account from an unknown one.
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
        let (id, code) = crate::secret::new_flow_and_code(self.policy.code_digits(), &self.rng)?;
        let key_id = self.keys.current_id();
        let code_mac = self.keys.current_code_mac(&id, &code);
        let decoy = self.keys.decoy(&canonical(identifier));
        // An unknown identifier gets a made-up destination, and both go
        // through the very same plan of limits, blocks and detectors. Both
        // paths make one, so that they do the same work.
        let (made_up, unknown) = (self.decoy_phone(&decoy), decoy_id(&decoy));
        // A real flow keeps its unused decoy id as long as a decoy's flow
        // keeps its own, so that both free the same memory at the same
        // point (the allocator's work depends on the order).
        let (subject, phone, _unused) = match account {
            Some(account) => (Subject::Account(account.id), Some(account.phone), Some(unknown)),
            None => (Subject::Unknown(unknown), None, None),
        };
        // Borrowed, not cloned: a clone is an atomic operation, which the
        // other path would not do.
        let destination = phone.as_ref().unwrap_or(&made_up);
        // One mask serves the answer and, for a real phone only, the
        // events: both paths mask once.
        let masked = destination.masked();
        let real_phone = phone.as_ref().map(|_| masked);
        let event = |kind| {
            Event::new(now, kind)
                .account(subject.owned_account())
                .phone(real_phone)
                .ip(ctx.client_ip)
        };

        let mut plan = Plan::with_capacity(self.send_plan_len());
        let who = self.subject_pseudonym(&subject);
        let locks = self.plan_locks(&mut plan, &who);
        let detection = self.plan_send(&mut plan, &who, destination, ctx);
        let values = self.count(&plan.counters, now).await?;
        self.detect(&detection, &plan, &values, now, &event).await?;
        self.judge(&plan, &values, now, &subject, locks, &event)?;

        // A decoy stores its decoy MAC, under a label no code MAC shares, so
        // it can never verify; the code is drawn and MACed all the same, so
        // both paths do the same work. A real flow whose destination the
        // limits refuse stores a void MAC (not the identifier's decoy MAC,
        // which would link it to the identifier's unknown flows): its code
        // will never be sent, so it is never valid, and no second write has
        // to void it (an unknown identifier makes no such write either).
        // Both paths look the country up.
        let allowed = self.limits.country_allowed(destination.country_code());
        let code_mac = match (phone.is_some(), allowed) {
            (false, _) => decoy,
            (true, true) => code_mac,
            (true, false) => Mac::VOID,
        };
        let opening = Opening {
            id,
            subject: subject.clone(),
            phone,
            key_id,
            code_mac,
            prior_failures: u32::try_from(values[locks.0].count).unwrap_or(u32::MAX),
        };
        let flow = machine::open(&self.policy, now, opening);
        if let Err(e) = self.store.create_flow(&flow).await {
            // The write may have applied with its answer lost: void the
            // code, which will never be sent.
            if flow.phone.is_some() && allowed {
                let _ = self.void_unsent(&flow).await;
            }
            return Err(e.into());
        }
        let event = |kind| event(kind).flow(flow.id);
        self.emit(event(EventKind::Requested {
            known: flow.phone.is_some(),
        }));
        let destination = flow.phone.as_ref().unwrap_or(&made_up);
        self.send_code(&flow, &code, destination, ctx, &event).await?;
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
        let flow = self.store.get_flow(flow_id).await?.ok_or(Error::NotFound)?;
        // As in `request`: both paths make up a destination and borrow the
        // one they use, and one mask serves the answer and, for a real
        // phone only, the events.
        let made_up = self.decoy_phone(&flow.code_mac);
        let destination = flow.phone.as_ref().unwrap_or(&made_up);
        // A real flow's record decoded its phone (text, then number), which
        // lives as long as the record; a decoy's reads its made-up one the
        // same way, and keeps it as long.
        let _decoded = flow.phone.is_none().then(|| {
            let text = std::str::from_utf8(std::hint::black_box(made_up.as_str().as_bytes()));
            std::hint::black_box(text.map(PhoneNumber::parse))
        });
        let masked = destination.masked();
        let real_phone = flow.phone.as_ref().map(|_| masked);
        let event = |kind| flow_event_masked(now, kind, &flow, real_phone, ctx);
        // Refuse early (cooldown, state) before counting a send that will
        // not happen; the compare-and-swap below decides again.
        machine::resend_gate(&flow, &self.policy, now)?;
        let mut plan = Plan::with_capacity(self.send_plan_len());
        let who = self.subject_pseudonym(&flow.subject);
        let locks = self.plan_locks(&mut plan, &who);
        let detection = self.plan_send(&mut plan, &who, destination, ctx);
        let values = self.count(&plan.counters, now).await?;
        self.detect(&detection, &plan, &values, now, &event).await?;
        self.judge(&plan, &values, now, &flow.subject, locks, &event)?;

        let code = Code::generate_with(self.policy.code_digits(), |b| self.rng.fill(b))?;
        let key_id = self.keys.current_id();
        let code_mac = self.keys.current_code_mac(flow_id, &code);
        let sendable = self.limits.country_allowed(destination.country_code());
        // The first round decides on the record read above (one read, not
        // two); a lost race reads it again.
        let resent = self
            .update_from(Some(&flow), flow_id, |flow, now| {
                // A decoy keeps its decoy MAC, which no code can match; a
                // code for a destination the limits refuse is never sent,
                // so it is stored void (as in `request`).
                let mac = match (flow.is_decoy(), sendable) {
                    (true, _) => flow.code_mac,
                    (false, true) => code_mac,
                    (false, false) => Mac::VOID,
                };
                machine::resend(flow, &self.policy, now, key_id, mac)
            })
            .await;
        let sent = match resent {
            Ok(flow) => flow,
            Err(e) => {
                // A store failure may hide an applied write: void the new
                // code, which will never be sent (a decoy's MAC never
                // matches it).
                if matches!(e, Error::Store(_)) {
                    let unsent = FlowRecord {
                        code_mac,
                        ..flow.clone()
                    };
                    let _ = self.void_unsent(&unsent).await;
                }
                return Err(e);
            }
        };
        self.emit(event(EventKind::Resent));
        self.send_code(&sent, &code, destination, ctx, &event).await?;
        Ok(self.requested(&sent, masked))
    }

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

    /// Checks the SMS code the user typed. One attempt is consumed and
    /// stored before the verdict is returned; the comparison is constant
    /// time. The right code issues the reset token, or, when the policy
    /// requires a second factor and the account has one, moves the flow on
    /// to [`Recovery::verify_factor`].
    ///
    /// # Errors
    /// [`Error::InvalidCode`] with the attempts left (0: the flow is now
    /// locked); [`Error::Locked`] with its end and support reference when
    /// this wrong code brought the account to its failure limit, or when
    /// the flow was locked already; [`Error::RateLimited`] when the client
    /// IP has had too many codes checked, [`Error::Blocked`] while it is
    /// blocked; [`Error::Input`] for a code that is not exactly the
    /// policy's number of digits (no attempt is consumed);
    /// [`Error::NoSecondFactor`] for the right code on an account without
    /// the second factor the policy requires (the flow is cancelled);
    /// [`Error::Expired`], [`Error::AlreadyUsed`], [`Error::Superseded`],
    /// [`Error::Cancelled`], [`Error::NotFound`]; [`Error::Store`],
    /// [`Error::Factors`], [`Error::Random`], [`Error::Busy`],
    /// [`Error::UnknownKey`].
    pub async fn verify_code(&self, flow_id: &FlowId, code: &str, ctx: &RequestContext) -> Result<Progress> {
        let code = Code::parse(code)?;
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
                        let block = self.keys.pseudonym(&limits::number_block(phone));
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
            let (flow, values) = self.store.load_counting(flow_id, &checks.counters, now).await?;
            (flow, one_per_counter(&checks.counters, values)?)
        } else {
            (self.store.get_flow(flow_id).await?, Vec::new())
        };
        let flow = flow.ok_or(Error::NotFound)?;
        if flow.phone.is_none() {
            // A real flow's phone is decoded on every load (by any store:
            // text, then number), masked for its events and shared by the
            // next record (a reference count, an atomic operation); a
            // decoy's flow has none, and does the same with the text of a
            // made-up one, so that a wrong code costs the same on both
            // (`tests/timing.rs` compares them).
            let mut text = [0u8; 16];
            let text = self.decoy_phone_text(&flow.code_mac, &mut text);
            let decoded = std::str::from_utf8(std::hint::black_box(text.as_bytes())).map(PhoneNumber::parse);
            if let Ok(Ok(phone)) = std::hint::black_box(decoded) {
                std::hint::black_box((phone.masked(), phone.clone()));
            }
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
        let mut counters = vec![self.failure_counter_of(&subject, 1)];
        if account_locked {
            counters.extend(self.locking_counters(&subject));
        }
        self.swap_counting(flow.version, next, &counters, now).await
    }

    /// [`CodeStore::increment_counters`], its answer checked (one value
    /// per counter).
    pub(crate) async fn count(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        let values = self.store.increment_counters(counters, now).await?;
        Ok(one_per_counter(counters, values)?)
    }

    /// [`CodeStore::compare_and_swap_counting`], its answer checked (one
    /// value per counter).
    async fn swap_counting(
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
        if !account_locked && machine::subject_locked(counted[0].count, &self.policy) {
            return self.catch_up(next, counted[0], now, ctx).await.map(Some);
        }
        if next.state == FlowState::Locked {
            self.emit(flow_event(now, EventKind::FlowLocked, next, ctx));
        }
        if !account_locked {
            return Ok(None);
        }
        // The lock was stored with the failure that reached the limit: it
        // lasts until the later of the failure window's end and the
        // minimum lockout.
        let [failures, lockouts, lock] = counted[..] else {
            unreachable!("a locking failure's counts are checked: failures, lockouts, lock")
        };
        let until = self
            .lock_end(failures, lock)
            .unwrap_or_else(|| now.saturating_add(self.policy.account_lockout()));
        Ok(Some(
            self.lock_account(next, until, lockouts.count, now, ctx).await,
        ))
    }

    /// The counters a subject's lock adds to the failure that reaches the
    /// limit: its lockouts (counted once per lock) and its lock, open for
    /// the minimum lockout.
    fn locking_counters(&self, pseudonym: &str) -> [Counter; 2] {
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
    async fn catch_up(
        &self,
        next: &FlowRecord,
        failures: CounterValue,
        now: Timestamp,
        ctx: &RequestContext,
    ) -> Result<Error> {
        let reached_first = failures.count > u64::from(self.policy.max_account_failures());
        let pseudonym = self.subject_pseudonym(&next.subject);
        // The lock is stored (with the lockout count) before the flow is
        // written, so that no failure after leaves the account unlocked;
        // if another flow's failure reached the limit first, it is read.
        let counters = if reached_first {
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
        if reached_first {
            self.emit(flow_event(now, EventKind::FlowLocked, &locked, ctx));
            return Ok(self.locked(&locked.subject, self.lock_end(failures, values[0])));
        }
        let counted = vec![failures, values[0], values[1]];
        let locked_now = Box::pin(self.after_failure(&locked, counted, true, now, ctx)).await?;
        Ok(locked_now.unwrap_or_else(|| self.locked(&locked.subject, None)))
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
                Ok::<_, Error>(machine::reset(flow, now, matched)?)
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
    pub(crate) async fn update<E: Into<Error>>(
        &self,
        flow_id: &FlowId,
        decide: impl Fn(&FlowRecord, Timestamp) -> Result<FlowRecord, E>,
    ) -> Result<FlowRecord> {
        self.update_from(None, flow_id, decide).await
    }

    /// [`Recovery::update`], whose first round decides on `read`, a record
    /// of the flow the caller has just read, when it has one.
    pub(crate) async fn update_from<E: Into<Error>>(
        &self,
        mut read: Option<&FlowRecord>,
        flow_id: &FlowId,
        decide: impl Fn(&FlowRecord, Timestamp) -> Result<FlowRecord, E>,
    ) -> Result<FlowRecord> {
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let loaded;
            let flow = match read.take() {
                Some(flow) => flow,
                None => {
                    loaded = self.store.get_flow(flow_id).await?.ok_or(Error::NotFound)?;
                    &loaded
                }
            };
            let next = decide(flow, now).map_err(Into::into)?;
            if self.store.compare_and_swap(flow.version, &next).await? {
                return Ok(next);
            }
        }
        Err(Error::Busy)
    }

    /// Sends the code stored in `flow` to `destination` (its phone; for a
    /// decoy, its made-up one, through a sender that sends nothing). If
    /// the send fails, the code is voided at once (its MAC replaced by one
    /// nothing matches) so that no code the user never received stays
    /// valid; a code for a refused destination was stored void already.
    /// The send still counts toward the flow's limit. The failure is
    /// returned only when the policy reveals send failures (a decoy's,
    /// too).
    ///
    /// `event` makes the caller's events; they carry the time of the send,
    /// read here on both paths.
    async fn send_code(
        &self,
        flow: &FlowRecord,
        code: &Code,
        destination: &PhoneNumber,
        ctx: &RequestContext,
        event: &impl Fn(EventKind) -> Event,
    ) -> Result<()> {
        let now = self.clock.now();
        let event = |kind| Event {
            at: now,
            ..event(kind)
        };
        // A decoy runs this very code, with a sender that sends nothing and
        // a sink that records nothing in place of the host's, so that both
        // paths do the same work in the same instructions.
        let real = flow.phone.is_some();
        let (sender, events): (&dyn SmsSender, &dyn EventSink) = match real {
            true => (&self.sender, &*self.events),
            false => (&Nowhere, &Nowhere),
        };
        let country_code = destination.country_code();
        let allowed = self.limits.country_allowed(country_code);
        let error = if allowed {
            let body = self
                .messages
                .code_message(code, self.policy.code_ttl(), &flow.id, ctx.locale);
            let message = SmsMessage::new(destination.clone(), body, MessageKind::Code);
            match sender.send(&message).await {
                Ok(_) => {
                    events.emit(&event(EventKind::CodeSent));
                    return Ok(());
                }
                Err(error) => {
                    events.emit(&event(EventKind::SendFailed { kind: error.kind() }));
                    error
                }
            }
        } else {
            events.emit(&event(EventKind::DestinationRefused { country_code }));
            SendError::new(
                SendErrorKind::Rejected,
                format!("destination +{country_code} is not allowed"),
            )
        };
        // A decoy's code was never valid, nor was one for a refused
        // destination (`request` and `resend` stored it void): nothing to
        // void. If the undo fails (store down), the code nobody received
        // expires with its TTL. A decoy answers as a real flow would whose
        // destination were its made-up one.
        if real && allowed {
            let _ = self.void_unsent(flow).await;
        }
        if self.policy.reveal_send_failures() {
            return Err(Error::Send(error));
        }
        Ok(())
    }

    /// Sends a notice to the flow's phone; a failure is an event, not an
    /// error of the operation it follows.
    pub(crate) async fn notify(
        &self,
        flow: &FlowRecord,
        body: SecretString,
        now: Timestamp,
        ctx: &RequestContext,
    ) {
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
        self.emit(flow_event(now, kind, flow, ctx));
    }

    async fn void_unsent(&self, sent: &FlowRecord) -> Result<()> {
        let mut void = [0u8; 32];
        self.rng.fill(&mut void)?;
        let void = Mac::from_bytes(void);
        // `None`: replaced, used or expired already; nothing to undo.
        self.undo(&sent.id, |current, now| {
            machine::send_failed(current, now, &sent.code_mac, void)
        })
        .await
    }

    /// Load, decide, compare-and-swap, again on a lost race, for a step
    /// that undoes something: `decide` answers `None` when there is nothing
    /// (left) to undo.
    pub(crate) async fn undo(
        &self,
        flow_id: &FlowId,
        decide: impl Fn(&FlowRecord, Timestamp) -> Option<FlowRecord>,
    ) -> Result<()> {
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let current = self.store.get_flow(flow_id).await?.ok_or(Error::NotFound)?;
            let Some(next) = decide(&current, now) else {
                return Ok(());
            };
            if self.store.compare_and_swap(current.version, &next).await? {
                return Ok(());
            }
        }
        Err(Error::Busy)
    }

    /// The made-up destination of an unknown identifier: a plausible number
    /// in [`Limits::decoy_country_code`], its digits from the decoy MAC. It
    /// is never sent to; it is counted and masked like a real one.
    fn decoy_phone(&self, decoy: &Mac) -> PhoneNumber {
        let mut text = [0u8; 16];
        let text = self.decoy_phone_text(decoy, &mut text);
        PhoneNumber::parse(text).expect("a made-up number is valid E.164")
    }

    /// The text of [`Recovery::decoy_phone`], written into `buf` (at most
    /// 14 bytes: `+`, a code of up to 3 digits, 10 more).
    fn decoy_phone_text<'b>(&self, decoy: &Mac, buf: &'b mut [u8; 16]) -> &'b str {
        let b = decoy.as_bytes();
        let mut digits = itoa::Buffer::new();
        let country = digits.format(self.limits.decoy_country_code()).as_bytes();
        let code = country.len();
        buf[0] = b'+';
        buf[1..=code].copy_from_slice(country);
        buf[code + 1] = b'2' + b[16] % 8;
        for (out, byte) in buf[code + 2..code + 11].iter_mut().zip(&b[17..26]) {
            *out = b'0' + byte % 10;
        }
        std::str::from_utf8(&buf[..code + 11]).unwrap_or_default()
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

/// The sender of a decoy's code and the sink of its events: it sends and
/// records nothing, at the cost of a call to a sender or a sink.
struct Nowhere;

impl EventSink for Nowhere {
    fn emit(&self, event: &Event) {
        std::hint::black_box(event);
    }
}

#[async_trait::async_trait]
impl SmsSender for Nowhere {
    async fn send(&self, _: &SmsMessage) -> std::result::Result<SendReceipt, SendError> {
        Ok(SendReceipt::default())
    }
}

/// An event about `flow` at `now`: its id, account, masked phone (real
/// numbers only) and the client's IP.
pub(crate) fn flow_event(now: Timestamp, kind: EventKind, flow: &FlowRecord, ctx: &RequestContext) -> Event {
    flow_event_masked(now, kind, flow, flow.phone.as_ref().map(PhoneNumber::masked), ctx)
}

/// [`flow_event`], with the flow's phone masked once by the caller (`None`
/// for a decoy's).
fn flow_event_masked(
    now: Timestamp,
    kind: EventKind,
    flow: &FlowRecord,
    masked_phone: Option<MaskedPhone>,
    ctx: &RequestContext,
) -> Event {
    Event::new(now, kind)
        .flow(flow.id)
        .account(flow.subject.owned_account())
        .phone(masked_phone)
        .ip(ctx.client_ip)
}

/// The form of an identifier that decoys are derived from: trimmed and
/// lowercased, so that `Alice@X.com ` and `alice@x.com` are one identifier
/// (as most hosts' look-ups treat them). Pass identifiers as your look-up
/// sees them; aliases of different kinds (an email and a username of one
/// account) cannot be told apart here.
fn canonical(identifier: &str) -> String {
    identifier.trim().to_lowercase()
}

/// The decoy id of an unknown identifier: the first half of its decoy MAC.
fn decoy_id(decoy: &Mac) -> DecoyId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&decoy.as_bytes()[..16]);
    DecoyId::from_bytes(id)
}
