//! Recovery that needs the SMS code *and* a code from the authenticator app
//! the account enrolled (TOTP, RFC 6238), as NIST SP 800-63B rev 4 asks of
//! recovery at AAL2. Saved recovery codes are the fallback for a lost
//! authenticator. Non-interactive: the in-memory store, and a console
//! sender that prints each SMS.
//!
//! ```sh
//! cargo run --example two_factor
//! ```

use std::collections::HashMap;

use async_trait::async_trait;
use otp_recovery::factor::{FactorKind, Factors, RecoveryCodes, SecondFactor, Totp, TotpSecret};
use otp_recovery::sms::{ConsoleSender, RecordingSender, SendError, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::store::MemoryStore;
use otp_recovery::{
    Account, AccountId, Clock, Error, KeyRing, Messages, PhoneNumber, Policy, Progress, Recovery,
    RequestContext, ServerKey, SystemClock,
};

/// Alice's phone: prints every SMS and remembers it, so that this program
/// can "read" the code the way Alice would.
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = KeyRing::new(1, ServerKey::generate()?);
    let alice = AccountId::new("user-1001")?;

    // Enrolment, done long before: Alice scanned a QR code into her
    // authenticator app, and saved ten recovery codes. The host stores the
    // authenticator's secret (encrypted at rest) and the recovery code set
    // (MACs only); it shows the codes once.
    let authenticator = Totp::new(TotpSecret::generate()?);
    let saved = RecoveryCodes::issue(&keys, &alice, 10)?;
    println!(
        "0. at enrolment alice saved {} recovery codes, e.g. {}",
        saved.codes().len(),
        saved.codes()[0].expose_secret()
    );
    let factors = HashMap::from([(
        alice.clone(),
        Factors::none()
            .with_totp(authenticator.clone())
            .with_recovery_codes(saved.set().clone()),
    )]);

    let phone = std::sync::Arc::new(Phone::default());
    let policy = Policy::builder().second_factor(SecondFactor::Required).build()?;
    let recovery = Recovery::new(MemoryStore::new(), phone.clone(), keys)
        .with_messages(Messages::builder("Acme").build()?)
        .with_policy(policy)
        .with_factors(factors);
    let ctx = RequestContext::without_client_ip();
    let account = Account::new(alice.clone(), PhoneNumber::parse("+14155550123")?);

    println!("1. alice asks to recover her account; the SMS code arrives");
    let requested = recovery
        .request("alice@example.com", Some(account.clone()), &ctx)
        .await?;
    let sms = phone.inbox.last_code().expect("the SMS carries a code");

    println!("2. she types the SMS code: it is right, and a second factor is required");
    let Progress::SecondFactor(challenge) = recovery
        .verify_code(&requested.flow_id, sms.expose_secret(), &ctx)
        .await?
    else {
        unreachable!("the policy requires a second factor and alice has two")
    };
    let kinds: Vec<String> = challenge.kinds.iter().map(ToString::to_string).collect();
    println!("   -> she may use: {}", kinds.join(", "));

    println!("3. she mistypes her authenticator code");
    let right = authenticator.code_at(SystemClock.now());
    let mistyped = if right.expose_secret() == "000000" {
        "111111"
    } else {
        "000000"
    };
    match recovery
        .verify_factor(&requested.flow_id, FactorKind::Totp, mistyped, &ctx)
        .await
    {
        Err(Error::InvalidFactorCode { attempts_left, .. }) => {
            println!("   -> wrong authenticator code, {attempts_left} attempts left")
        }
        other => panic!("expected a wrong code, got {other:?}"),
    }

    println!("4. she types the code her app shows now");
    let verified = recovery
        .verify_factor(&requested.flow_id, FactorKind::Totp, right.expose_secret(), &ctx)
        .await?;
    println!("   -> reset token issued");

    println!("5. she sets a new password");
    let done = recovery.reset(&verified.token.expose_secret(), &ctx).await?;
    println!("   -> the host sets the password of {}", done.account);

    println!("6. someone who saw that code over her shoulder, and has her SMS code too, tries it");
    let requested = recovery.request("alice@example.com", Some(account), &ctx).await?;
    let sms = phone.inbox.last_code().expect("the SMS carries a code");
    recovery
        .verify_code(&requested.flow_id, sms.expose_secret(), &ctx)
        .await?;
    match recovery
        .verify_factor(&requested.flow_id, FactorKind::Totp, right.expose_secret(), &ctx)
        .await
    {
        // The code's time step was claimed when alice used it.
        Err(Error::InvalidFactorCode { attempts_left, .. }) => {
            println!("   -> refused: an authenticator code works once ({attempts_left} attempts left)")
        }
        other => panic!("a replayed code must be refused, got {other:?}"),
    }
    println!("   -> without a fresh authenticator code or a saved code, no reset token is issued");
    Ok(())
}
