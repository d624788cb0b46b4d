//! Abuse controls at work: a brute-force attempt stopped, a crawler IP
//! blocked, and a support agent unlocking the real user.
//!
//! ```sh
//! cargo run --example abuse
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otp_recovery::events::{Event, EventKind, EventSink};
use otp_recovery::limits::{Detectors, Limits};
use otp_recovery::sms::{ConsoleSender, RecordingSender, SendError, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::store::MemoryStore;
use otp_recovery::support::Agent;
use otp_recovery::{
    Account, AccountId, Error, KeyRing, Messages, PhoneNumber, Policy, Recovery, RequestContext, ServerKey,
};

/// The victim's phone: prints every SMS and remembers it.
#[derive(Default)]
struct Phone {
    console: ConsoleSender,
    inbox: RecordingSender,
}

#[async_trait]
impl SmsSender for Phone {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        self.console.send(message).await?;
        self.inbox.send(message).await
    }
}

/// Prints the security-relevant events, as a host would alert on them.
struct Alerts;

impl EventSink for Alerts {
    fn emit(&self, event: &Event) {
        let alert = matches!(
            event.kind,
            EventKind::AccountLocked { .. }
                | EventKind::Suspicious { .. }
                | EventKind::AutoBlocked { .. }
                | EventKind::Support { .. }
                | EventKind::FlowLocked
        );
        if alert {
            println!("    [event] {event}");
        }
    }
}

fn victim() -> Account {
    Account::new(
        AccountId::new("user-1001").unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let phone = Arc::new(Phone::default());
    let limits = Limits::builder()
        .detectors(
            Detectors::default()
                .with_subjects_per_ip(5)
                .with_auto_block(Some(Duration::from_secs(3600))),
        )
        .build()?;
    let recovery = Recovery::new(
        MemoryStore::new(),
        phone.clone(),
        KeyRing::new(1, ServerKey::generate()?),
    )
    .with_policy(
        Policy::builder()
            .account_failures(10, Duration::from_secs(24 * 3600))
            .build()?,
    )
    .with_limits(limits)
    .with_messages(
        Messages::builder("Acme")
            .support_contact("help@acme.example")
            .build()?,
    )
    .with_events(Alerts);
    let attacker = RequestContext::from_ip("203.0.113.66".parse()?);

    println!("1. an attacker who knows alice@example.com asks for a code and guesses");
    let flow = recovery
        .request("alice@example.com", Some(victim()), &attacker)
        .await?
        .flow_id;
    let mut guesses = (1u32..).map(|n| format!("{:06}", n * 7919 % 1_000_000));
    for _ in 0..5 {
        let guess = guesses.next().unwrap_or_default();
        match recovery.verify(&flow, &guess, &attacker).await {
            Err(Error::InvalidCode { attempts_left, .. }) => {
                println!("   -> {guess} wrong, {attempts_left} left")
            }
            Ok(_) => return Err("a guess hit the code (one in 200,000); run again".into()),
            Err(e) => return Err(e.into()),
        }
    }
    let err = recovery.verify(&flow, "123456", &attacker).await.unwrap_err();
    println!("   -> a 6th guess: {err}");

    println!("2. the attacker starts a new recovery and keeps guessing: the account locks");
    let flow = recovery
        .request("alice@example.com", Some(victim()), &attacker)
        .await?
        .flow_id;
    let reference = loop {
        let guess = guesses.next().unwrap_or_default();
        match recovery.verify(&flow, &guess, &attacker).await {
            Err(Error::InvalidCode { attempts_left, .. }) => {
                println!("   -> {guess} wrong, {attempts_left} left")
            }
            Err(Error::Locked {
                until,
                reference: Some(reference),
                support,
                ..
            }) => {
                println!(
                    "   -> locked until {:?} (unix ms), reference {reference}, support {}",
                    until.map(|t| t.as_unix_millis()),
                    support.as_deref().unwrap_or("-")
                );
                break reference;
            }
            other => return Err(format!("unexpected: {other:?}").into()),
        }
    };
    match recovery
        .request("alice@example.com", Some(victim()), &attacker)
        .await
    {
        Err(e @ Error::Locked { .. }) => println!("   -> a new request is refused too: {e}"),
        other => return Err(format!("expected a lock, got {other:?}").into()),
    }

    println!("3. the same IP now tries many other addresses");
    for n in 0..10 {
        match recovery
            .request(&format!("guess{n}@example.com"), None, &attacker)
            .await
        {
            Ok(_) => println!("   -> guess{n}@example.com: answered like any other"),
            Err(e @ Error::Blocked { .. }) => {
                println!("   -> guess{n}@example.com: {e}");
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }

    println!("4. alice calls support and quotes {reference}; the agent checks her identity and unlocks");
    let agent = Agent::new("dana@support.acme.example")?;
    let case = recovery
        .support()
        .lookup_reference(&agent, "alice called, ID checked", &reference)
        .await?;
    println!(
        "   -> case: {} wrong codes, locked until {:?}, {} flows, latest {:?}",
        case.failures,
        case.locked_until.map(|t| t.as_unix_millis()),
        case.flows.len(),
        case.flows
            .first()
            .map(|f| (f.state, f.failed_attempts, f.masked_phone.map(|p| p.to_string())))
    );
    recovery
        .support()
        .unlock(&agent, "identity verified by video call", &case.subject)
        .await?;

    println!("5. alice recovers from her own network");
    let home = RequestContext::from_ip("198.51.100.20".parse()?);
    let flow = recovery
        .request("alice@example.com", Some(victim()), &home)
        .await?
        .flow_id;
    let code = phone.inbox.last_code().ok_or("no SMS arrived")?;
    let verified = recovery.verify(&flow, code.expose_secret(), &home).await?;
    let done = recovery.reset(&verified.token.expose_secret(), &home).await?;
    println!("   -> reset completed for {}; she was told by SMS", done.account);
    Ok(())
}
