//! Sending codes: a request opens a flow (a decoy's for an unknown
//! identifier, by the same work) and a resend replaces its code; both count
//! the send limits before anything is stored or sent.

use super::{Account, Recovery, RequestContext, flow_event_masked, parity};
use crate::answer::Requested;
use crate::clock::Clock;
use crate::code::Mac;
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, EventSink};
use crate::id::FlowId;
use crate::input::InputError;
use crate::limits::Plan;
use crate::machine::{self, Opening};
use crate::phone::{MaskedPhone, PhoneNumber};
use crate::record::{FlowRecord, Subject};
use crate::secret::Code;
use crate::sms::{MessageKind, SendError, SendErrorKind, SmsMessage, SmsSender};
use crate::store::CodeStore;

impl<S: CodeStore, T: SmsSender, C: Clock> Recovery<S, T, C> {
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
    /// [`Error::Input`] for an identifier over
    /// [`MAX_IDENTIFIER_BYTES`](crate::MAX_IDENTIFIER_BYTES), refused before
    /// anything is derived, counted or stored, alike for every account;
    /// [`Error::Locked`] (with its end and support reference) when the
    /// account has reached its failure limit; [`Error::RateLimited`] past a
    /// send limit; [`Error::Blocked`] while the client IP or destination is
    /// blocked; [`Error::Store`], [`Error::Random`]; [`Error::Send`] if the
    /// SMS could not be sent and [`Policy::reveal_send_failures`](crate::Policy::reveal_send_failures) is on (the
    /// new code is invalid either way).
    pub async fn request(
        &self,
        identifier: &str,
        account: Option<Account>,
        ctx: &RequestContext,
    ) -> Result<Requested> {
        if identifier.len() > parity::MAX_IDENTIFIER_BYTES {
            return Err(InputError::IdentifierTooLong.into());
        }
        let now = self.clock.now();
        let (id, code) = crate::secret::new_flow_and_code(self.policy.code_digits(), &self.rng)?;
        let key_id = self.keys.current_id();
        let code_mac = self.keys.current_code_mac(&id, &code);
        let decoy = self.keys.decoy(&parity::canonical(identifier));
        // An unknown identifier gets a made-up destination, and both go
        // through the very same plan of limits, blocks and detectors. Both
        // paths make one, so that they do the same work.
        let (made_up, unknown) = (
            parity::made_up_phone(&decoy, &self.limits),
            parity::decoy_id(&decoy),
        );
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
        // Both paths look the country up: only a code that will be sent
        // spends what everyone shares.
        let allowed = self.limits.country_allowed(destination.country_code());
        let spends = phone.is_some() && allowed;
        let detection = self.plan_send(&mut plan, &who, destination, spends, ctx);
        self.refused_before(&detection, now, &event)?;
        // The subject's newest flow comes with the counts: the create that
        // supersedes it needs no read of its own.
        let (newest, values) = self.count_loading_newest(&subject, &plan.counters, now).await?;
        // A real newest flow's phone was decoded with it; a decoy's had
        // none, so its made-up one is, and freed with the record.
        let decoded = newest
            .as_ref()
            .is_some_and(|n| n.phone.is_none())
            .then(|| parity::decoded(&made_up));
        self.detect(&detection, &plan, &values, now, &event).await?;
        let judged = self.judge(&plan, &values, now, &subject, locks, &event);
        self.remember_refusal(&detection, &judged, now);
        judged?;

        // A decoy stores its decoy MAC, under a label no code MAC shares, so
        // it can never verify; the code is drawn and MACed all the same, so
        // both paths do the same work. A real flow whose destination the
        // limits refuse stores a void MAC (not the identifier's decoy MAC,
        // which would link it to the identifier's unknown flows): its code
        // will never be sent, so it is never valid, and no second write has
        // to void it (an unknown identifier makes no such write either).
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
            prior_failures: machine::prior_failures(
                values[locks.failures].count,
                values[locks.streak].count,
                &self.policy,
            ),
        };
        let flow = machine::open(&self.policy, now, opening);
        let inserted = self.insert_newest(&flow, newest).await;
        drop(decoded);
        if let Err(e) = inserted {
            // The write may have applied with its answer lost: void the
            // code, which will never be sent.
            if flow.phone.is_some() && allowed {
                let _ = self.void_unsent(&flow).await;
            }
            return Err(e);
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
        let made_up = parity::made_up_phone(&flow.code_mac, &self.limits);
        let destination = flow.phone.as_ref().unwrap_or(&made_up);
        // A real flow's record decoded its phone (text, then number), which
        // lives as long as the record; a decoy's reads its made-up one the
        // same way, and keeps it as long.
        let _decoded = flow.phone.is_none().then(|| parity::decoded(&made_up));
        let masked = destination.masked();
        let real_phone = flow.phone.as_ref().map(|_| masked);
        let event = |kind| flow_event_masked(now, kind, &flow, real_phone, ctx);
        // Refuse early (cooldown, state) before counting a send that will
        // not happen; the compare-and-swap below decides again.
        machine::resend_gate(&flow, &self.policy, now)?;
        // Drawn before anything is counted: a failing generator spends no
        // send limit.
        let code = Code::generate_with(self.policy.code_digits(), |b| self.rng.fill(b))?;
        let mut plan = Plan::with_capacity(self.send_plan_len());
        let who = self.subject_pseudonym(&flow.subject);
        let locks = self.plan_locks(&mut plan, &who);
        let sendable = self.limits.country_allowed(destination.country_code());
        let spends = flow.phone.is_some() && sendable;
        let detection = self.plan_send(&mut plan, &who, destination, spends, ctx);
        self.refused_before(&detection, now, &event)?;
        let values = self.count(&plan.counters, now).await?;
        self.detect(&detection, &plan, &values, now, &event).await?;
        let judged = self.judge(&plan, &values, now, &flow.subject, locks, &event);
        self.remember_refusal(&detection, &judged, now);
        judged?;

        let key_id = self.keys.current_id();
        let code_mac = self.keys.current_code_mac(flow_id, &code);
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
    pub(super) async fn send_code(
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
            false => (&parity::Nowhere, &parity::Nowhere),
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

    pub(super) async fn void_unsent(&self, sent: &FlowRecord) -> Result<()> {
        let mut void = [0u8; 32];
        self.rng.fill(&mut void)?;
        let void = Mac::from_bytes(void);
        // `None`: replaced, used or expired already; nothing to undo.
        self.undo(&sent.id, |current, now| {
            machine::send_failed(current, now, &sent.code_mac, void)
        })
        .await
    }

    pub(super) fn requested(&self, flow: &FlowRecord, masked_phone: MaskedPhone) -> Requested {
        Requested {
            flow_id: flow.id,
            masked_phone,
            code_expires_at: flow.code_expires_at,
            next_send_at: machine::next_send_at(flow, &self.policy),
            attempts_left: machine::attempts_left(flow, &self.policy),
        }
    }
}
