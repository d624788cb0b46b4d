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
mod parity;
mod refusals;
mod second_factor;
mod sending;
mod verifying;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::code::KeyRing;
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, EventSink, TracingSink};
use crate::factor::{ChannelSender, FactorSource};
use crate::id::{AccountId, FlowId};
use crate::limits::{self, LimitScope, Limits};
use crate::machine::{self, Predecessor};
use crate::message::{Locale, Messages};
use crate::phone::{MaskedPhone, PhoneNumber};
use crate::policy::Policy;
use crate::record::{FlowRecord, Subject};
use crate::rng::Randomness;
use crate::secret::SecretString;
use crate::sms::{MessageKind, SmsMessage, SmsSender};
use crate::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, StoreError, one_per_counter};
pub(crate) use guards::{lock_read_of, streak_counter_of};
pub use parity::MAX_IDENTIFIER_BYTES;
pub use second_factor::FactorCodeSent;

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
///
/// Build it with [`RequestContext::from_ip`] wherever the host knows the
/// client's address: every per-IP rule (the send limit per IP, the codes
/// checked per IP, IP blocks, the many-identifiers detector) needs it.
/// [`RequestContext::without_client_ip`] says, in the code, that they are
/// off for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A call whose client address the host does not know: **no per-IP
    /// rule applies to it** (the per-IP send and verify limits, IP blocks,
    /// the many-identifiers detector), so one client may spend every
    /// account's and phone's own limits. For tests, and for hosts that rate
    /// limit clients themselves in front of the crate. The first such call
    /// of a [`Recovery`] whose limits have per-IP rules emits
    /// [`EventKind::ClientIpMissing`] (a warning in the default sink).
    pub fn without_client_ip() -> Self {
        RequestContext {
            client_ip: None,
            locale: None,
        }
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

    pub(crate) fn ip_site_key(&self) -> Option<String> {
        self.client_ip.and_then(limits::ip_site_key)
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
    pub(crate) refusals: Arc<refusals::Refusals>,
    /// When a call without a client IP may next be reported (Unix ms).
    pub(crate) told_no_ip: Arc<AtomicU64>,
}

/// How often calls without a client IP are reported, at most.
const NO_IP_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

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
            refusals: Arc::default(),
            told_no_ip: Arc::default(),
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
            refusals: self.refusals,
            told_no_ip: self.told_no_ip,
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

    /// [`CodeStore::load_counting`] of a subject's newest flow, its answer
    /// checked (one value per counter).
    pub(crate) async fn count_loading_newest(
        &self,
        subject: &Subject,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        let (newest, values) = self
            .store
            .load_counting(Load::Newest(subject), counters, now)
            .await?;
        Ok((
            checked_newest(subject, newest)?,
            one_per_counter(counters, values)?,
        ))
    }

    /// [`CodeStore::increment_counters`], its answer checked (one value
    /// per counter).
    pub(crate) async fn count(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        let values = self.store.increment_counters(counters, now).await?;
        Ok(one_per_counter(counters, values)?)
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

    /// Reports, at most once an hour, a call whose per-IP rules cannot
    /// apply for want of a client IP.
    pub(crate) fn note_client_ip(&self, ctx: &RequestContext) {
        if ctx.client_ip.is_some() {
            return;
        }
        let per_ip = self.limits.ip_verify_rule().is_some()
            || self.limits.has_send_rule(LimitScope::Ip)
            || self.limits.has_send_rule(LimitScope::IpSite);
        let now = self.clock.now();
        let next = self.told_no_ip.load(Ordering::Relaxed);
        // At most once an hour, so that a proxy that starts dropping client
        // IPs later is still told; the exchange lets one racing call win.
        if per_ip
            && now.as_unix_millis() >= next
            && self
                .told_no_ip
                .compare_exchange(
                    next,
                    now.saturating_add(NO_IP_REPORT_EVERY).as_unix_millis(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.emit(Event::new(now, EventKind::ClientIpMissing));
        }
    }

    /// Load, decide, compare-and-swap; again on a lost race. The first
    /// round decides on `read`, a record of the flow the caller has just
    /// read, when it has one.
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

    /// Inserts `flow` as its subject's newest (see [`insert_newest`]),
    /// given the newest flow as last read.
    pub(crate) async fn insert_newest(&self, flow: &FlowRecord, newest: Option<FlowRecord>) -> Result<()> {
        match insert_newest(&self.store, flow, newest).await? {
            true => Ok(()),
            false => Err(Error::Busy),
        }
    }

    /// [`Recovery::update_from`], without a record read, whose swap also applies the counters
    /// `counters_of` names for the record it replaces; returns the new
    /// record and their values.
    pub(crate) async fn update_counting<E: Into<Error>>(
        &self,
        flow_id: &FlowId,
        counters_of: impl Fn(&FlowRecord) -> Vec<Counter>,
        decide: impl Fn(&FlowRecord, Timestamp) -> Result<FlowRecord, E>,
    ) -> Result<(FlowRecord, Vec<CounterValue>)> {
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let flow = self.store.get_flow(flow_id).await?.ok_or(Error::NotFound)?;
            let next = decide(&flow, now).map_err(Into::into)?;
            let counters = counters_of(&flow);
            if let Some(values) = self.swap_counting(flow.version, &next, &counters, now).await? {
                return Ok((next, values));
            }
        }
        Err(Error::Busy)
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
}

/// A store's answer for `subject`'s newest flow, checked: another
/// subject's flow (a store whose keys collide) would have one account's
/// request supersede another's flow and leave its own open.
fn checked_newest(
    subject: &Subject,
    newest: Option<FlowRecord>,
) -> std::result::Result<Option<FlowRecord>, StoreError> {
    match newest {
        Some(flow) if flow.subject != *subject => Err(StoreError::Decode(
            "the store answered another subject's flow as the newest".into(),
        )),
        newest => Ok(newest),
    }
}

/// Inserts `flow` as its subject's newest: the machine decides what becomes
/// of the newest stored flow (superseded when open) and the store writes
/// both if that flow is still the newest. `newest` is the subject's newest
/// flow as last read (a stale guess costs one more call, which answers the
/// newest). `false` when other creates of the subject won every round.
pub(crate) async fn insert_newest<S: CodeStore + ?Sized>(
    store: &S,
    flow: &FlowRecord,
    newest: Option<FlowRecord>,
) -> std::result::Result<bool, StoreError> {
    let fate = |n: FlowRecord| (n.version, machine::supersede(n, flow.created_at));
    let mut newest: Option<(u64, Predecessor)> = newest.map(fate);
    for _ in 0..MAX_CAS_ROUNDS {
        let expected = match &newest {
            None => Newest::None,
            Some((version, Predecessor::Superseded(next))) => Newest::Replaced(*version, next),
            Some((version, Predecessor::Kept(kept))) => Newest::Kept(kept.id, *version),
        };
        match store.create_flow(flow, expected).await? {
            Created::Inserted => return Ok(true),
            Created::Stale(current) => {
                newest = checked_newest(&flow.subject, current)?.map(fate);
            }
        }
    }
    Ok(false)
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
