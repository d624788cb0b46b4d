//! Model-based test of the driver: random sequences of requests (two
//! accounts and an unknown identifier), resends, verifies (the right code,
//! an earlier code, a wrong code), resets (first use and replays), support
//! unlocks and cancels, failed sends and clock jumps (to exact boundaries)
//! drive [`Recovery`] over every built-in store (memory, SQLite, and
//! PostgreSQL and Redis at `OTP_TEST_POSTGRES_URL` and `OTP_TEST_REDIS_URL`),
//! and every answer is compared with a small reference model written as
//! plainly as possible.
//!
//! Besides agreeing with the model, every run checks the invariants
//! directly, from the answers and the store:
//! - a flow never counts more wrong codes than its attempt limit, nor its
//!   account more than the account limit;
//! - a flow never hands out two tokens;
//! - a reset never succeeds at or after its token's expiry;
//! - a code never verifies once a newer code (a resend, or a new request)
//!   was issued;
//! - an account has at most one open flow, its newest.
//!
//! Every operation is valid in every state (the driver must answer any
//! call), so a plain vector of operations, which proptest shrinks well,
//! serves as the state machine's transitions.

use std::time::Duration;

use otp_recovery::sms::{MessageKind, RecordingSender, SendError, SendErrorKind};
use otp_recovery::store::{CodeStore, MemoryStore};
use otp_recovery::support::Agent;
use otp_recovery::{
    Account, AccountId, Error, FlowId, KeyRing, ManualClock, PhoneNumber, Policy, Recovery, RequestContext,
    Requested, ServerKey, Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

mod common;

const T0: u64 = 1_800_000_000_000;
const MAX_ATTEMPTS: u32 = 3;
const MAX_ACCOUNT: u32 = 5;
const MAX_SENDS: u32 = 3;
const CODE_TTL: u64 = 60_000;
const TOKEN_TTL: u64 = 90_000;
const COOLDOWN: u64 = 5_000;
const MAX_COOLDOWN: u64 = 12_000;
const FAILURE_WINDOW: u64 = 3_600_000;
const LOCKOUT: u64 = 120_000;

fn policy() -> Policy {
    Policy::builder()
        .max_attempts(MAX_ATTEMPTS)
        .max_sends_per_flow(MAX_SENDS)
        .code_ttl(Duration::from_millis(CODE_TTL))
        .token_ttl(Duration::from_millis(TOKEN_TTL))
        .resend_cooldown(
            Duration::from_millis(COOLDOWN),
            Duration::from_millis(MAX_COOLDOWN),
        )
        .account_failures(MAX_ACCOUNT, Duration::from_millis(FAILURE_WINDOW))
        .account_lockout(Duration::from_millis(LOCKOUT))
        .build()
        .unwrap()
}

/// The subjects: two accounts and an identifier no account has.
const SUBJECTS: usize = 3;
const DECOY: usize = 2;

/// Subject `subject`'s account in the run named `run` (runs on a shared
/// database must not see each other's accounts).
fn account(run: &str, subject: usize) -> Option<Account> {
    (subject != DECOY).then(|| {
        Account::new(
            AccountId::new(format!("user-{subject}-{run}")).unwrap(),
            PhoneNumber::parse(&format!("+1415555010{subject}")).unwrap(),
        )
    })
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Latest,
    Previous,
}

#[derive(Debug, Clone, Copy)]
enum Guess {
    /// The flow's current code, as delivered.
    Current,
    /// A code the flow sent before its current one.
    Stale,
    /// Any other code.
    Wrong,
}

#[derive(Debug, Clone, Copy)]
enum Boundary {
    CodeExpiry,
    TokenExpiry,
    NextSend,
    LockEnd,
    FailureWindowEnd,
}

#[derive(Debug, Clone)]
enum Op {
    Request(usize),
    Resend(usize, Which),
    Verify(usize, Which, Guess),
    Reset(usize, Which),
    Cancel(usize),
    Unlock(usize),
    FailNextSend,
    Advance(u64),
    /// To a subject's boundary, -1, 0 or +1 ms (never backwards).
    Jump(usize, Boundary, i64),
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly one account, so its failures add up across its flows.
    let subject = prop_oneof![6 => Just(0), 2 => Just(1), 2 => Just(DECOY)];
    let which = prop_oneof![3 => Just(Which::Latest), 1 => Just(Which::Previous)];
    let guess = prop_oneof![
        2 => Just(Guess::Current),
        1 => Just(Guess::Stale),
        3 => Just(Guess::Wrong)
    ];
    let boundary = prop_oneof![
        Just(Boundary::CodeExpiry),
        Just(Boundary::TokenExpiry),
        Just(Boundary::NextSend),
        Just(Boundary::LockEnd),
        Just(Boundary::FailureWindowEnd),
    ];
    prop_oneof![
        3 => subject.clone().prop_map(Op::Request),
        3 => (subject.clone(), which.clone()).prop_map(|(s, w)| Op::Resend(s, w)),
        12 => (subject.clone(), which.clone(), guess).prop_map(|(s, w, g)| Op::Verify(s, w, g)),
        3 => (subject.clone(), which).prop_map(|(s, w)| Op::Reset(s, w)),
        1 => subject.clone().prop_map(Op::Cancel),
        1 => subject.clone().prop_map(Op::Unlock),
        1 => Just(Op::FailNextSend),
        3 => prop_oneof![4 => 0u64..3, 4 => 0u64..20_000, 2 => 0u64..200_000, 1 => 0u64..4_000_000]
            .prop_map(Op::Advance),
        4 => (subject, boundary, -1i64..=1).prop_map(|(s, b, d)| Op::Jump(s, b, d)),
    ]
}

/// A flow's stored state, as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    CodeSent,
    Verified,
    Completed,
    Locked,
    Superseded,
    Cancelled,
}

impl St {
    fn is_open(self) -> bool {
        matches!(self, St::CodeSent | St::Verified)
    }
}

#[derive(Debug)]
struct MFlow {
    id: FlowId,
    state: St,
    failures: u32,
    prior: u32,
    sends: u32,
    last_send: u64,
    code_until: u64,
    token_until: u64,
    /// The current code, if it was delivered (`None`: voided, or a decoy).
    code: Option<String>,
    /// Codes it sent before its current one.
    stale: Vec<String>,
    token: Option<String>,
    tokens_issued: u32,
}

impl MFlow {
    fn attempts_left(&self) -> u32 {
        let flow = MAX_ATTEMPTS.saturating_sub(self.failures);
        let account = MAX_ACCOUNT.saturating_sub(self.prior + self.failures);
        flow.min(account)
    }

    fn cooldown(&self) -> u64 {
        (COOLDOWN << (self.sends - 1).min(31)).min(MAX_COOLDOWN)
    }

    fn next_send_at(&self) -> Option<u64> {
        (self.sends < MAX_SENDS).then(|| self.last_send + self.cooldown())
    }

    /// The refusal of a state (expiry applied) that accepts nothing.
    fn refusal(&self, now: u64) -> Out {
        match self.state {
            St::CodeSent if now >= self.code_until => Out::Expired,
            St::Verified if now >= self.token_until => Out::Expired,
            St::Locked => Out::Locked(None),
            St::Verified | St::Completed => Out::AlreadyUsed,
            St::Superseded => Out::Superseded,
            St::Cancelled => Out::Cancelled,
            St::CodeSent => Out::Other("busy".into()),
        }
    }
}

/// A windowed counter as the store keeps it.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    count: u64,
    end: u64,
}

impl Window {
    fn live(&self, now: u64) -> u64 {
        if now < self.end { self.count } else { 0 }
    }

    /// Adds one; a new window of `length` opens if none is live.
    fn add(&mut self, now: u64, length: u64) {
        if now < self.end {
            self.count += 1;
        } else {
            *self = Window {
                count: 1,
                end: now + length.max(1),
            };
        }
    }
}

#[derive(Debug, Default)]
struct Subject {
    flows: Vec<MFlow>,
    failures: Window,
    lock: Window,
}

impl Subject {
    /// When the subject's lock ends, if it is locked: the later of the
    /// failure window's end (while its failures are at the limit) and the
    /// lock's own end (open for the minimum lockout from the locking
    /// failure).
    fn locked_until(&self, now: u64) -> Option<u64> {
        let by_failures = (self.failures.live(now) >= u64::from(MAX_ACCOUNT)).then_some(self.failures.end);
        let by_lock = (self.lock.live(now) > 0).then_some(self.lock.end);
        by_failures.max(by_lock)
    }
}

#[derive(Debug, Default)]
struct Model {
    subjects: Vec<Subject>,
    /// Sends that will fail, in order (each real send takes one).
    failing_sends: u32,
}

impl Model {
    /// A real send: whether it goes through.
    fn send(&mut self) -> bool {
        if self.failing_sends > 0 {
            self.failing_sends -= 1;
            false
        } else {
            true
        }
    }
}

/// An answer, reduced to what the model predicts.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Requested {
        attempts_left: u32,
        code_expires_at: u64,
        next_send_at: Option<u64>,
    },
    Verified {
        token_expires_at: u64,
    },
    Done,
    InvalidCode(u32),
    Locked(Option<u64>),
    Expired,
    AlreadyUsed,
    Superseded,
    Cancelled,
    TooSoon(u64),
    TooManySends,
    Other(String),
}

fn requested(r: &Requested) -> Out {
    Out::Requested {
        attempts_left: r.attempts_left,
        code_expires_at: r.code_expires_at.as_unix_millis(),
        next_send_at: r.next_send_at.map(Timestamp::as_unix_millis),
    }
}

fn error(e: &Error) -> Out {
    match e {
        Error::InvalidCode { attempts_left, .. } => Out::InvalidCode(*attempts_left),
        Error::Locked { until, .. } => Out::Locked(until.map(Timestamp::as_unix_millis)),
        Error::Expired => Out::Expired,
        Error::AlreadyUsed => Out::AlreadyUsed,
        Error::Superseded => Out::Superseded,
        Error::Cancelled => Out::Cancelled,
        Error::TooSoon { retry_after, .. } => Out::TooSoon(retry_after.as_millis() as u64),
        Error::TooManySends => Out::TooManySends,
        other => Out::Other(format!("{other:?}")),
    }
}

fn wrong_code(code: Option<&str>) -> String {
    let n: u64 = code.map_or(0, |c| c.parse().unwrap());
    format!("{:06}", (n + 1) % 1_000_000)
}

struct Sut<S: CodeStore> {
    /// This run's name, in every account id and identifier.
    run: String,
    recovery: Recovery<S, RecordingSender, ManualClock>,
    sender: RecordingSender,
    clock: ManualClock,
}

impl<S: CodeStore> Sut<S> {
    /// The code of the message sent since `before` messages, if one was.
    fn code_sent_since(&self, before: usize) -> Option<String> {
        let messages = self.sender.messages();
        let last = messages
            .get(before..)?
            .iter()
            .rev()
            .find(|m| m.kind == MessageKind::Code)?;
        let body = last.body.expose_secret();
        body.split(|c: char| !c.is_ascii_digit())
            .find(|run| run.len() == 6)
            .map(str::to_owned)
    }
}

/// Runs `ops` against the driver over `store` and the model.
async fn run<S: CodeStore>(store: S, ops: &[Op]) -> Result<(), TestCaseError> {
    let sender = RecordingSender::new();
    let clock = ManualClock::new(Timestamp::from_unix_millis(T0));
    let recovery = Recovery::new(
        store,
        sender.clone(),
        // A key of its own, so that decoys and counters are this run's too.
        KeyRing::new(1, ServerKey::generate().unwrap()),
    )
    .with_policy(policy())
    .with_limits(otp_recovery::limits::Limits::none())
    .with_clock(clock.clone());
    let sut = Sut {
        run: FlowId::generate().unwrap().to_string(),
        recovery,
        sender,
        clock,
    };
    let ctx = RequestContext::without_client_ip();
    let agent = Agent::new("model").unwrap();
    let mut m = Model {
        subjects: (0..SUBJECTS).map(|_| Subject::default()).collect(),
        failing_sends: 0,
    };
    let mut now = T0;

    for (step, op) in ops.iter().enumerate() {
        sut.clock.set(Timestamp::from_unix_millis(now));
        let pick = |subject: &Subject, which: Which| -> Option<usize> {
            let n = subject.flows.len();
            match which {
                Which::Latest => n.checked_sub(1),
                Which::Previous => n.checked_sub(2),
            }
        };
        let (expected, actual): (Out, Out) = match *op {
            Op::Advance(ms) => {
                now += ms;
                continue;
            }
            Op::Jump(s, boundary, delta) => {
                let subject = &m.subjects[s];
                let flow = subject.flows.last();
                let target = match boundary {
                    Boundary::CodeExpiry => flow.map(|f| f.code_until),
                    Boundary::TokenExpiry => flow.map(|f| f.token_until),
                    Boundary::NextSend => flow.and_then(MFlow::next_send_at),
                    Boundary::LockEnd => Some(subject.lock.end),
                    Boundary::FailureWindowEnd => Some(subject.failures.end),
                };
                if let Some(target) = target {
                    now = now.max(target.saturating_add_signed(delta));
                }
                continue;
            }
            Op::FailNextSend => {
                m.failing_sends += 1;
                sut.sender
                    .fail_next(SendError::new(SendErrorKind::Unavailable, "model: failing send"));
                continue;
            }
            Op::Request(s) => {
                let before = sut.sender.count();
                let identifier = format!("subject-{s}-{}@example.com", sut.run);
                let actual = sut
                    .recovery
                    .request(&identifier, account(&sut.run, s), &ctx)
                    .await;
                let subject = &mut m.subjects[s];
                let failures = subject.failures.live(now);
                let expected = if let Some(until) = subject.locked_until(now) {
                    Out::Locked(Some(until))
                } else {
                    if let Some(open) = subject.flows.last_mut().filter(|f| f.state.is_open()) {
                        open.state = St::Superseded;
                    }
                    let Ok(r) = &actual else {
                        return Err(TestCaseError::fail(format!(
                            "step {step} {op:?}: expected a new flow, got {actual:?}"
                        )));
                    };
                    let flow = MFlow {
                        id: r.flow_id,
                        state: St::CodeSent,
                        failures: 0,
                        prior: failures as u32,
                        sends: 1,
                        last_send: now,
                        code_until: now + CODE_TTL,
                        token_until: 0,
                        code: None,
                        stale: Vec::new(),
                        token: None,
                        tokens_issued: 0,
                    };
                    let out = Out::Requested {
                        attempts_left: flow.attempts_left(),
                        code_expires_at: flow.code_until,
                        next_send_at: flow.next_send_at(),
                    };
                    subject.flows.push(flow);
                    if s != DECOY && m.send() {
                        let code = sut.code_sent_since(before);
                        prop_assert!(code.is_some(), "step {step}: no code was sent");
                        m.subjects[s].flows.last_mut().unwrap().code = code;
                    }
                    out
                };
                (expected, actual.as_ref().map_or_else(error, requested))
            }
            Op::Resend(s, which) => {
                let Some(i) = pick(&m.subjects[s], which) else {
                    continue;
                };
                let before = sut.sender.count();
                let id = m.subjects[s].flows[i].id;
                let actual = sut.recovery.resend(&id, &ctx).await;
                let subject = &mut m.subjects[s];
                let locked_until = subject.locked_until(now);
                let flow = &mut subject.flows[i];
                let expected = if flow.state != St::CodeSent {
                    flow.refusal(now)
                } else if flow.attempts_left() == 0 {
                    Out::Locked(None)
                } else if flow.sends >= MAX_SENDS {
                    Out::TooManySends
                } else if now < flow.last_send + flow.cooldown() {
                    Out::TooSoon(flow.last_send + flow.cooldown() - now)
                } else if let Some(until) = locked_until {
                    Out::Locked(Some(until))
                } else {
                    flow.sends += 1;
                    flow.last_send = now;
                    flow.code_until = now + CODE_TTL;
                    if let Some(old) = flow.code.take() {
                        flow.stale.push(old);
                    }
                    let out = Out::Requested {
                        attempts_left: flow.attempts_left(),
                        code_expires_at: flow.code_until,
                        next_send_at: flow.next_send_at(),
                    };
                    if s != DECOY && m.send() {
                        let code = sut.code_sent_since(before);
                        prop_assert!(code.is_some(), "step {step}: no code was sent");
                        m.subjects[s].flows[i].code = code;
                    }
                    out
                };
                (expected, actual.as_ref().map_or_else(error, requested))
            }
            Op::Verify(s, which, guess) => {
                let Some(i) = pick(&m.subjects[s], which) else {
                    continue;
                };
                let flow = &m.subjects[s].flows[i];
                let presented = match guess {
                    Guess::Current => flow.code.clone().unwrap_or_else(|| wrong_code(None)),
                    Guess::Stale => flow.stale.last().cloned().unwrap_or_else(|| wrong_code(None)),
                    Guess::Wrong => wrong_code(flow.code.as_deref()),
                };
                // An older code of this flow, or any code of an older flow
                // of the subject: a newer code was issued since.
                let outdated = flow.stale.contains(&presented) || i + 1 < m.subjects[s].flows.len();
                let id = flow.id;
                let actual = sut.recovery.verify(&id, &presented, &ctx).await;
                if actual.is_ok() {
                    prop_assert!(
                        !outdated,
                        "step {step}: a code verified after a newer one was issued"
                    );
                }
                let subject = &mut m.subjects[s];
                let flow = &mut subject.flows[i];
                let expected = if !(flow.state == St::CodeSent && now < flow.code_until) {
                    flow.refusal(now)
                } else if flow.attempts_left() == 0 {
                    Out::Locked(None)
                } else if flow.code.as_deref() == Some(presented.as_str()) {
                    flow.state = St::Verified;
                    flow.token_until = now + TOKEN_TTL;
                    flow.tokens_issued += 1;
                    Out::Verified {
                        token_expires_at: flow.token_until,
                    }
                } else {
                    flow.failures += 1;
                    let left = flow.attempts_left();
                    if left == 0 {
                        flow.state = St::Locked;
                    }
                    let locks = flow.prior + flow.failures >= MAX_ACCOUNT;
                    subject.failures.add(now, FAILURE_WINDOW);
                    if locks {
                        subject.lock.add(now, LOCKOUT);
                        let until = subject.locked_until(now);
                        // The user's phone is told (a decoy has none).
                        if s != DECOY {
                            m.send();
                        }
                        Out::Locked(until)
                    } else {
                        Out::InvalidCode(left)
                    }
                };
                let actual_out = match &actual {
                    Ok(v) => {
                        m.subjects[s].flows[i].token = Some(v.token.expose_secret().to_string());
                        Out::Verified {
                            token_expires_at: v.token_expires_at.as_unix_millis(),
                        }
                    }
                    Err(e) => error(e),
                };
                (expected, actual_out)
            }
            Op::Reset(s, which) => {
                let Some(i) = pick(&m.subjects[s], which) else {
                    continue;
                };
                let Some(token) = m.subjects[s].flows[i].token.clone() else {
                    continue;
                };
                let actual = sut.recovery.reset(&token, &ctx).await;
                let flow = &mut m.subjects[s].flows[i];
                let expected = if flow.state == St::Verified && now < flow.token_until {
                    flow.state = St::Completed;
                    // "Your password was changed".
                    m.send();
                    Out::Done
                } else {
                    flow.refusal(now)
                };
                if actual.is_ok() {
                    let flow = &m.subjects[s].flows[i];
                    prop_assert!(
                        now < flow.token_until,
                        "step {step}: a reset after the token expired"
                    );
                }
                (expected, actual.as_ref().map_or_else(error, |_| Out::Done))
            }
            Op::Cancel(s) => {
                let Some(i) = pick(&m.subjects[s], Which::Latest) else {
                    continue;
                };
                let id = m.subjects[s].flows[i].id;
                let actual = sut.recovery.support().cancel(&agent, "model", &id).await;
                let flow = &mut m.subjects[s].flows[i];
                let expected = if flow.state.is_open() {
                    flow.state = St::Cancelled;
                    Out::Done
                } else {
                    match flow.state {
                        St::Locked => Out::Locked(None),
                        St::Completed => Out::AlreadyUsed,
                        St::Superseded => Out::Superseded,
                        _ => Out::Cancelled,
                    }
                };
                (expected, actual.as_ref().map_or_else(error, |()| Out::Done))
            }
            Op::Unlock(s) => {
                let subject = match account(&sut.run, s) {
                    Some(a) => otp_recovery::record::Subject::Account(a.id),
                    None => match m.subjects[s].flows.last() {
                        // The decoy's subject, as the store has it.
                        Some(f) => {
                            sut.recovery
                                .store()
                                .get_flow(&f.id)
                                .await
                                .unwrap()
                                .unwrap()
                                .subject
                        }
                        None => continue,
                    },
                };
                let actual = sut.recovery.support().unlock(&agent, "model", &subject).await;
                let model = &mut m.subjects[s];
                model.failures = Window::default();
                model.lock = Window::default();
                (Out::Done, actual.as_ref().map_or_else(error, |()| Out::Done))
            }
        };
        prop_assert_eq!(
            &actual,
            &expected,
            "step {} {:?} at +{} ms; model: {:#?}",
            step,
            op,
            now - T0,
            m.subjects
        );
        check_invariants(&sut, &m, step).await?;
    }
    Ok(())
}

/// The invariants, read from the store.
async fn check_invariants<S: CodeStore>(sut: &Sut<S>, m: &Model, step: usize) -> Result<(), TestCaseError> {
    for subject in &m.subjects {
        let mut open = 0;
        for (i, f) in subject.flows.iter().enumerate() {
            let stored = sut.recovery.store().get_flow(&f.id).await.unwrap().unwrap();
            prop_assert!(
                stored.failed_attempts <= MAX_ATTEMPTS,
                "step {step}: over the attempt limit"
            );
            prop_assert!(
                stored.prior_failures + stored.failed_attempts <= MAX_ACCOUNT,
                "step {step}: over the account limit"
            );
            prop_assert_eq!(stored.failed_attempts, f.failures, "step {}", step);
            prop_assert_eq!(stored.sends, f.sends, "step {}", step);
            prop_assert!(f.tokens_issued <= 1, "step {step}: two tokens for one flow");
            if stored.state.is_open() {
                open += 1;
                prop_assert_eq!(i + 1, subject.flows.len(), "step {}: an older flow is open", step);
            }
        }
        prop_assert!(open <= 1, "step {step}: two open flows");
    }
    Ok(())
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn driver_agrees_with_the_model_on_the_memory_store(ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(MemoryStore::new(), &ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn driver_agrees_with_the_model_on_sqlite(ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = otp_recovery_sqlx::sqlite::SqliteStore::open_in_memory().await.unwrap();
            run(store, &ops).await
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn driver_agrees_with_the_model_on_postgres(ops in ops()) {
        let Some(url) = common::server("OTP_TEST_POSTGRES_URL") else { return Ok(()) };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = otp_recovery_sqlx::postgres::PostgresStore::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            run(store, &ops).await
        })?;
    }

    #[test]
    fn driver_agrees_with_the_model_on_redis(ops in ops()) {
        let Some(url) = common::server("OTP_TEST_REDIS_URL") else { return Ok(()) };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let prefix = format!("model-{}", FlowId::generate().unwrap());
            let store = otp_recovery_redis::RedisStore::connect(&url).await.unwrap().with_prefix(&prefix);
            run(store, &ops).await
        })?;
    }
}
