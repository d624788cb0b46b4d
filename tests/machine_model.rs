//! Property tests: the pure machine against a small reference model, over
//! random sequences of verifies (right and wrong), resends, resets and
//! clock jumps (to exact boundaries, and backwards), under random policies.

use std::time::Duration;

use otp_recovery::machine::{self, Evaluation, Opening, Refusal, Verdict};
use otp_recovery::record::{EffectiveState, FlowRecord, FlowState, Mac, Subject};
use otp_recovery::{AccountId, FlowId, PhoneNumber, Policy, Timestamp};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Boundary {
    CodeExpiry,
    TokenExpiry,
    NextSend,
}

#[derive(Debug, Clone)]
enum Op {
    Verify {
        right: bool,
    },
    Resend,
    Reset {
        right: bool,
    },
    Advance(u64),
    /// Jump to a boundary, -1, 0 or +1 ms (forwards or backwards).
    Jump(Boundary, i64),
}

fn op() -> impl Strategy<Value = Op> {
    let boundary = prop_oneof![
        Just(Boundary::CodeExpiry),
        Just(Boundary::TokenExpiry),
        Just(Boundary::NextSend)
    ];
    prop_oneof![
        4 => any::<bool>().prop_map(|right| Op::Verify { right }),
        2 => Just(Op::Resend),
        2 => any::<bool>().prop_map(|right| Op::Reset { right }),
        2 => prop_oneof![0u64..3, 0u64..700_000].prop_map(Op::Advance),
        3 => (boundary, -1i64..=1).prop_map(|(b, d)| Op::Jump(b, d)),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    policy: Policy,
    prior: u32,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1u32..=6,
        1u32..=6,
        60u64..=600,
        60u64..=900,
        1u64..=60,
        0u32..=44,
        0u32..50,
    )
        .prop_map(|(attempts, sends, ttl, token, cool, extra, prior)| {
            let account_max = attempts + extra;
            let policy = Policy::builder()
                .max_attempts(attempts)
                .max_sends_per_flow(sends)
                .code_ttl(Duration::from_secs(ttl))
                .token_ttl(Duration::from_secs(token))
                .resend_cooldown(Duration::from_secs(cool), Duration::from_secs(cool * 4))
                .account_failures(account_max, Duration::from_secs(86_400))
                .build()
                .unwrap();
            // A request is refused at the account limit, so a flow opens below it.
            Setup {
                policy,
                prior: prior % account_max,
            }
        })
}

/// The reference model: the rules written as plainly as possible.
#[derive(Debug, Clone, PartialEq)]
enum ModelState {
    Open,
    Verified,
    Completed,
    Locked,
}

#[derive(Debug)]
struct Model {
    state: ModelState,
    failures: u32,
    sends: u32,
    last_send: u64,
    code_until: u64,
    token_until: u64,
    tokens_issued: u32,
    resets: u32,
}

impl Model {
    fn attempts_left(&self, policy: &Policy, prior: u32) -> u32 {
        let flow = policy.max_attempts().saturating_sub(self.failures);
        let account = policy
            .max_account_failures()
            .saturating_sub(prior + self.failures);
        flow.min(account)
    }

    fn cooldown(&self, policy: &Policy) -> u64 {
        // 30 s, 60 s, 120 s... capped: computed here, not borrowed.
        let first = policy.resend_cooldown().as_millis() as u64;
        let cap = policy.max_resend_cooldown().as_millis() as u64;
        (first << (self.sends - 1)).min(cap)
    }
}

fn mac(n: u8) -> Mac {
    Mac::from_bytes([n; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn machine_agrees_with_the_model(setup in setup(), ops in proptest::collection::vec(op(), 1..40)) {
        let Setup { policy, prior } = setup;
        let t0 = 1_000_000_000u64;
        let mut now = t0;
        let opening = Opening {
            id: FlowId::from_bytes([1; 16]),
            subject: Subject::Account(AccountId::new("a").unwrap()),
            phone: Some(PhoneNumber::parse("+14155550123").unwrap()),
            key_id: 1,
            code_mac: mac(1),
            prior_failures: prior,
        };
        let mut flow = machine::open(&policy, Timestamp::from_unix_millis(now), opening);
        let ttl = policy.code_ttl().as_millis() as u64;
        let mut m = Model {
            state: ModelState::Open, failures: 0, sends: 1, last_send: now,
            code_until: now + ttl, token_until: 0, tokens_issued: 0, resets: 0,
        };
        prop_assert_eq!(machine::attempts_left(&flow, &policy), m.attempts_left(&policy, prior));
        let mut next_mac = 2u8;

        for op in ops {
            let ts = Timestamp::from_unix_millis(now);
            let before = flow.clone();
            let result: Result<FlowRecord, Refusal> = match op {
                Op::Advance(ms) => { now += ms; continue; }
                Op::Jump(boundary, delta) => {
                    let target = match boundary {
                        Boundary::CodeExpiry => m.code_until,
                        Boundary::TokenExpiry => m.token_until.max(t0),
                        Boundary::NextSend => m.last_send + m.cooldown(&policy),
                    };
                    now = target.saturating_add_signed(delta).max(t0);
                    continue;
                }
                Op::Verify { right } => {
                    let gate = machine::verify_gate(&flow, &policy, ts);
                    let evaluation = if right {
                        Evaluation::Right { key_id: 1, token_mac: mac(200) }
                    } else {
                        Evaluation::Wrong
                    };
                    let out = machine::verify(&flow, &policy, ts, evaluation);
                    prop_assert_eq!(gate.is_ok(), out.is_ok(), "the gate and the step must agree");
                    let expected_ok = m.state == ModelState::Open
                        && now < m.code_until
                        && m.attempts_left(&policy, prior) > 0;
                    prop_assert_eq!(out.is_ok(), expected_ok, "verify acceptance at {} ({:?})", now, m);
                    match out {
                        Ok((next, verdict)) => {
                            if right {
                                prop_assert_eq!(verdict, Verdict::Right);
                                m.state = ModelState::Verified;
                                m.token_until = now + policy.token_ttl().as_millis() as u64;
                                m.tokens_issued += 1;
                            } else {
                                m.failures += 1;
                                let left = m.attempts_left(&policy, prior);
                                let account_locked = prior + m.failures >= policy.max_account_failures();
                                prop_assert_eq!(verdict, Verdict::Wrong { attempts_left: left, account_locked });
                                if left == 0 { m.state = ModelState::Locked; }
                            }
                            Ok(next)
                        }
                        Err(e) => Err(e),
                    }
                }
                Op::Resend => {
                    let out = machine::resend(&flow, &policy, ts, 1, mac(next_mac));
                    let cooldown = m.cooldown(&policy);
                    let expected_ok = m.state == ModelState::Open
                        && m.attempts_left(&policy, prior) > 0
                        && m.sends < policy.max_sends_per_flow()
                        && now >= m.last_send + cooldown;
                    prop_assert_eq!(out.is_ok(), expected_ok, "resend acceptance at {} ({:?})", now, m);
                    if let Err(Refusal::TooSoon { retry_after, .. }) = &out {
                        prop_assert_eq!(retry_after.as_millis() as u64, m.last_send + cooldown - now);
                    }
                    if out.is_ok() {
                        m.sends += 1;
                        m.last_send = now;
                        m.code_until = now + ttl;
                        next_mac = next_mac.wrapping_add(1).clamp(2, 199);
                    }
                    out
                }
                Op::Reset { right } => {
                    let matched = right && flow.token_mac == Some(mac(200));
                    let out = machine::reset(&flow, ts, matched);
                    let expected_ok = matched && m.state == ModelState::Verified && now < m.token_until;
                    prop_assert_eq!(out.is_ok(), expected_ok, "reset acceptance at {} ({:?})", now, m);
                    if !matched {
                        prop_assert!(matches!(out, Err(Refusal::InvalidToken)), "a wrong token must learn nothing: {:?}", out);
                    }
                    if out.is_ok() {
                        m.state = ModelState::Completed;
                        m.resets += 1;
                    }
                    out
                }
            };
            if let Ok(next) = result {
                prop_assert_eq!(next.version, before.version + 1, "every change bumps the version once");
                prop_assert_eq!(next.updated_at, ts);
                flow = next;
            } else {
                prop_assert_eq!(&flow, &before, "a refused step changes nothing");
            }
            // Invariants, whatever happened.
            prop_assert!(flow.failed_attempts <= policy.max_attempts());
            prop_assert!(flow.prior_failures + flow.failed_attempts <= policy.max_account_failures());
            prop_assert_eq!(flow.failed_attempts, m.failures);
            prop_assert_eq!(flow.sends, m.sends);
            prop_assert!(flow.sends <= policy.max_sends_per_flow());
            prop_assert!(m.tokens_issued <= 1, "never two tokens for one flow");
            prop_assert!(m.resets <= 1, "never two resets for one flow");
            let stored = match flow.state {
                FlowState::CodeSent => ModelState::Open,
                FlowState::Verified => ModelState::Verified,
                FlowState::Completed => ModelState::Completed,
                FlowState::Locked => ModelState::Locked,
                other => { prop_assert!(false, "unexpected state {:?}", other); unreachable!() }
            };
            prop_assert_eq!(&stored, &m.state);
            prop_assert_eq!(machine::attempts_left(&flow, &policy), m.attempts_left(&policy, prior));
            if flow.state == FlowState::CodeSent {
                prop_assert_eq!(flow.code_expires_at.as_unix_millis(), m.code_until);
                let expired = flow.state_at(ts) == EffectiveState::Expired;
                prop_assert_eq!(expired, now >= m.code_until);
            }
            prop_assert!(flow.purge_after >= flow.code_expires_at, "a record outlives its code");
            if flow.token_mac.is_some() {
                prop_assert!(flow.purge_after >= flow.token_expires_at, "a record outlives its token");
            }
        }
    }

    #[test]
    fn send_failure_only_ever_expires_the_code_it_sent(advance in 0u64..700_000, same in any::<bool>()) {
        let policy = Policy::default();
        let t = Timestamp::from_unix_millis(5_000_000);
        let opening = Opening {
            id: FlowId::from_bytes([2; 16]),
            subject: Subject::Account(AccountId::new("a").unwrap()),
            phone: Some(PhoneNumber::parse("+14155550123").unwrap()),
            key_id: 1,
            code_mac: mac(1),
            prior_failures: 0,
        };
        let flow = machine::open(&policy, t, opening);
        let now = t.saturating_add(Duration::from_millis(advance));
        let sent = if same { mac(1) } else { mac(9) };
        match machine::send_failed(&flow, now, &sent, mac(77)) {
            Some(next) => {
                prop_assert!(same && now < flow.code_expires_at);
                prop_assert_eq!(next.code_mac, mac(77), "the unsent code is voided");
                prop_assert_eq!(next.code_expires_at, flow.code_expires_at, "expiry is untouched");
                prop_assert_eq!(next.state, flow.state);
                prop_assert_eq!(next.failed_attempts, 0, "an unsent code costs no attempt");
            }
            None => prop_assert!(!same || now >= flow.code_expires_at),
        }
    }
}
