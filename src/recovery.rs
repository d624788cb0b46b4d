//! The driver: [`Recovery`] loads a flow, asks the [`machine`] what happens,
//! writes the result back with a compare-and-swap, and performs the effects
//! (sending the SMS).
//!
//! Every write that decides a rule is a compare-and-swap on the flow's
//! version: when two calls race on one flow, one wins and the other reloads
//! and decides again on the newer record. A verdict on a code is returned
//! only once the attempt it consumed is stored, so no number of concurrent
//! calls can evaluate more codes than the policy allows.

use std::fmt;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::code::{KeyRing, Mac};
use crate::error::{Error, InputError, Result};
use crate::id::{AccountId, FlowId};
use crate::machine::{self, Evaluation, Opening, Verdict};
use crate::message::Messages;
use crate::phone::{MaskedPhone, PhoneNumber};
use crate::policy::Policy;
use crate::record::{DecoyId, FlowRecord, Subject};
use crate::secret::{Code, ResetToken};
use crate::sms::{MessageKind, SmsMessage, SmsSender};
use crate::store::{CodeStore, Counter};

/// How many times one call re-reads a flow after losing a compare-and-swap
/// before it gives up with [`Error::Busy`]. Each loss means another call
/// changed the flow, and a flow allows only a handful of changes, so this
/// is reached only under pathological contention.
const MAX_CAS_ROUNDS: usize = 64;

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
/// use otp_recovery::{Account, AccountId, KeyRing, PhoneNumber, Recovery, ServerKey};
///
/// let sender = RecordingSender::new();
/// let keys = KeyRing::new(1, ServerKey::generate().unwrap());
/// let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys);
///
/// // The host looked "alice@example.com" up and found this account.
/// let account = Account::new(AccountId::new("42").unwrap(), PhoneNumber::parse("+14155550123").unwrap());
/// let requested = recovery.request("alice@example.com", Some(account)).await.unwrap();
///
/// // The user types the code from the SMS.
/// let code = sender.last_code().unwrap();
/// let verified = recovery.verify(&requested.flow_id, code.expose_secret()).await.unwrap();
///
/// // The new-password form posts the token back.
/// let done = recovery.reset(&verified.token.expose_secret()).await.unwrap();
/// assert_eq!(done.account.as_str(), "42");
/// # });
/// ```
pub struct Recovery<S, T, C = SystemClock> {
    store: S,
    sender: T,
    clock: C,
    keys: KeyRing,
    policy: Policy,
    messages: Messages,
}

impl<S, T, C> fmt::Debug for Recovery<S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field("keys", &self.keys)
            .field("policy", &self.policy)
            .field("messages", &self.messages)
            .finish_non_exhaustive()
    }
}

impl<S: CodeStore, T: SmsSender> Recovery<S, T, SystemClock> {
    /// A recovery with the default [`Policy`] and [`Messages`] and the
    /// system clock.
    pub fn new(store: S, sender: T, keys: KeyRing) -> Self {
        Recovery {
            store,
            sender,
            clock: SystemClock,
            keys,
            policy: Policy::default(),
            messages: Messages::default(),
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

    /// Replaces the clock (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock<C2: Clock>(self, clock: C2) -> Recovery<S, T, C2> {
        Recovery {
            store: self.store,
            sender: self.sender,
            clock,
            keys: self.keys,
            policy: self.policy,
            messages: self.messages,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
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
    /// stable made-up masked phone) after the same kind of work, and
    /// nothing is sent.
    ///
    /// # Errors
    /// [`Error::Locked`] (with the instant it ends) when the account has
    /// reached [`Policy::max_account_failures`] wrong codes in its failure
    /// window, for unknown identifiers alike; [`Error::Store`],
    /// [`Error::Random`]; [`Error::Send`] if the SMS could not be sent and
    /// [`Policy::reveal_send_failures`] is on (the new code is invalid
    /// either way).
    pub async fn request(&self, identifier: &str, account: Option<Account>) -> Result<Requested> {
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
        let failures = self.failure_counter(&subject, 0);
        let prior = self
            .store
            .increment_counters(std::slice::from_ref(&failures), now)
            .await?[0];
        if machine::subject_locked(prior.count, &self.policy) {
            return Err(Error::Locked {
                until: prior.resets_at,
            });
        }
        // A decoy stores its decoy MAC, under a label no code MAC shares, so
        // it can never verify; the code and its message are made all the
        // same, so both paths do the same work.
        let code_mac = if phone.is_some() { code_mac } else { decoy };
        let opening = Opening {
            id,
            subject,
            phone,
            key_id,
            code_mac,
            prior_failures: u32::try_from(prior.count).unwrap_or(u32::MAX),
        };
        let flow = machine::open(&self.policy, now, opening);
        self.store.create_flow(&flow).await?;
        self.send_code(&flow, &code).await?;
        Ok(self.requested(&flow, masked))
    }

    /// Sends a new code for the flow; every earlier code stops working.
    /// Failed attempts are kept.
    ///
    /// # Errors
    /// [`Error::TooSoon`] within the cooldown (30 s, doubling with each
    /// send), [`Error::TooManySends`] once the flow has sent its allowance,
    /// [`Error::Locked`] when the flow or its account is locked,
    /// [`Error::NotFound`], [`Error::AlreadyUsed`], [`Error::Superseded`],
    /// [`Error::Cancelled`]; store, random and send failures as for
    /// [`Recovery::request`].
    pub async fn resend(&self, flow_id: &FlowId) -> Result<Requested> {
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
        let masked = match &flow.phone {
            Some(phone) => phone.masked(),
            None => self.decoy_mask(&flow.code_mac),
        };
        self.send_code(&flow, &code).await?;
        Ok(self.requested(&flow, masked))
    }

    /// Checks a code the user typed. One attempt is consumed and stored
    /// before the verdict is returned; the comparison is constant time.
    ///
    /// # Errors
    /// [`Error::InvalidCode`] with the attempts left (0: the flow is now
    /// locked); [`Error::Locked`] with its end when this wrong code brought
    /// the account to its failure limit, or when the flow was locked
    /// already; [`Error::Input`] for a code that is not exactly the
    /// policy's number of digits (no attempt is consumed);
    /// [`Error::Expired`], [`Error::AlreadyUsed`], [`Error::Superseded`],
    /// [`Error::Cancelled`], [`Error::NotFound`]; [`Error::Store`],
    /// [`Error::Random`], [`Error::Busy`], [`Error::UnknownKey`].
    pub async fn verify(&self, flow_id: &FlowId, code: &str) -> Result<Verified> {
        let code = Code::parse(code)?;
        if code.len() != usize::from(self.policy.code_digits()) {
            return Err(InputError::MalformedCode.into());
        }
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let flow = self.load(flow_id).await?;
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
                if self.store.compare_and_swap(flow.version, &next).await? {
                    return Ok(Verified {
                        token,
                        token_expires_at: next.token_expires_at,
                    });
                }
                continue;
            }
            let (next, verdict) = machine::verify(&flow, &self.policy, now, Evaluation::Wrong)?;
            // The flow's attempt and the subject's failure are counted in
            // one store call; the flow locks in the same write when either
            // limit is reached.
            let failure = self.failure_counter(&flow.subject, 1);
            let Some(counts) = self
                .store
                .compare_and_swap_counting(flow.version, &next, std::slice::from_ref(&failure), now)
                .await?
            else {
                continue;
            };
            return Err(match verdict {
                Verdict::Wrong {
                    account_locked: true, ..
                } => Error::Locked {
                    until: counts[0].resets_at,
                },
                Verdict::Wrong { attempts_left, .. } => Error::InvalidCode { attempts_left },
                Verdict::Right => unreachable!("a wrong evaluation has a wrong verdict"),
            });
        }
        Err(Error::Busy)
    }

    /// Consumes a reset token and returns the account whose password the
    /// host may now set. Works once per token.
    ///
    /// # Errors
    /// [`Error::Input`] for a malformed token; [`Error::InvalidToken`] for
    /// one that does not match; [`Error::AlreadyUsed`], [`Error::Expired`],
    /// [`Error::Superseded`], [`Error::Cancelled`]; [`Error::Store`],
    /// [`Error::Busy`], [`Error::UnknownKey`].
    pub async fn reset(&self, token: &str) -> Result<Completed> {
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
        Ok(Completed { account, flow_id })
    }

    /// Deletes expired flows and counters from the store; returns how many
    /// flows went. Run it periodically (the in-memory store also sweeps by
    /// itself as it grows).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn purge_expired(&self) -> Result<u64> {
        Ok(self.store.purge_expired(self.clock.now()).await?)
    }

    async fn load(&self, flow_id: &FlowId) -> Result<FlowRecord> {
        self.store.get_flow(flow_id).await?.ok_or(Error::NotFound)
    }

    /// Load, decide, compare-and-swap; again on a lost race.
    async fn update(
        &self,
        flow_id: &FlowId,
        decide: impl Fn(&FlowRecord, Timestamp) -> Result<FlowRecord>,
    ) -> Result<FlowRecord> {
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let flow = self.load(flow_id).await?;
            let next = decide(&flow, now)?;
            if self.store.compare_and_swap(flow.version, &next).await? {
                return Ok(next);
            }
        }
        Err(Error::Busy)
    }

    /// Sends the code stored in `flow` (a no-op for decoys). If the send
    /// fails, the code is expired at once so that no code the user never
    /// received stays valid; the send still counts toward the flow's limit.
    /// The failure is returned only when the policy reveals send failures.
    async fn send_code(&self, flow: &FlowRecord, code: &Code) -> Result<()> {
        let Some(phone) = &flow.phone else {
            return Ok(());
        };
        let body = self.messages.code_message(code, self.policy.code_ttl());
        let message = SmsMessage::new(phone.clone(), body, MessageKind::Code);
        let Err(send_error) = self.sender.send(&message).await else {
            return Ok(());
        };
        // If the undo fails too (store down), the code nobody received
        // expires with its TTL.
        let _ = self.expire_unsent(flow).await;
        if self.policy.reveal_send_failures() {
            return Err(Error::Send(send_error));
        }
        Ok(())
    }

    async fn expire_unsent(&self, sent: &FlowRecord) -> Result<()> {
        for _ in 0..MAX_CAS_ROUNDS {
            let now = self.clock.now();
            let current = self.load(&sent.id).await?;
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
    fn failure_counter(&self, subject: &Subject, by: u32) -> Counter {
        Counter::new(
            format!("fail:{}", subject.key()),
            self.policy.account_failure_window(),
            by,
        )
    }

    /// The made-up masked phone of an unknown identifier: the policy's
    /// decoy shape, with four digits from its decoy MAC.
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
