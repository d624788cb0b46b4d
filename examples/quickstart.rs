//! The whole recovery flow, non-interactively: the in-memory store, and a
//! console sender that prints each SMS instead of sending it.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use async_trait::async_trait;
use otp_recovery::sms::{ConsoleSender, RecordingSender, SendError, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::store::MemoryStore;
use otp_recovery::{
    Account, AccountId, Error, KeyRing, Messages, PhoneNumber, Recovery, RequestContext, ServerKey,
};

/// The host's user table, reduced to one user.
fn find_account(identifier: &str) -> Option<Account> {
    (identifier == "alice@example.com").then(|| {
        Account::new(
            AccountId::new("user-1001").unwrap(),
            PhoneNumber::parse("+14155550123").unwrap(),
        )
    })
}

/// Alice's phone: prints every SMS (the console sender) and remembers it,
/// so that this program can "read" the code the way Alice would.
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
    // In production the key comes from your secret manager:
    // ServerKey::from_bytes(load_secret("otp-recovery-key-1")?)?
    let keys = KeyRing::new(1, ServerKey::generate()?);
    let phone = std::sync::Arc::new(Phone::default());
    let messages = Messages::builder("Acme")
        .webotp_domain("acme.example")
        .support_contact("help@acme.example")
        .build()?;
    let recovery = Recovery::new(MemoryStore::new(), phone.clone(), keys).with_messages(messages);

    println!("1. alice@example.com asks to recover her account");
    let requested = recovery
        .request(
            "alice@example.com",
            find_account("alice@example.com"),
            &RequestContext::without_client_ip(),
        )
        .await?;
    println!(
        "   -> code sent to {}; recovery id {}; {} attempts allowed",
        requested.masked_phone, requested.flow_id, requested.attempts_left
    );

    println!("2. someone asks for an address that has no account");
    let unknown = recovery
        .request(
            "mallory@example.com",
            find_account("mallory@example.com"),
            &RequestContext::without_client_ip(),
        )
        .await?;
    println!(
        "   -> the same kind of answer (code 'sent' to {}, {} attempts allowed); no SMS went out",
        unknown.masked_phone, unknown.attempts_left
    );

    println!("3. alice asks for another code straight away");
    match recovery
        .resend(&requested.flow_id, &RequestContext::without_client_ip())
        .await
    {
        Err(Error::TooSoon { retry_after, .. }) => {
            println!("   -> refused: try again in {} s", retry_after.as_secs().max(1))
        }
        other => return Err(format!("expected a cooldown, got {other:?}").into()),
    }

    let code = phone.inbox.last_code().ok_or("no SMS arrived")?;
    let wrong = if code.expose_secret() == "000000" {
        "000001"
    } else {
        "000000"
    };

    println!("4. alice mistypes the code");
    match recovery
        .verify(&requested.flow_id, wrong, &RequestContext::without_client_ip())
        .await
    {
        Err(Error::InvalidCode { attempts_left, .. }) => {
            println!("   -> wrong code, {attempts_left} attempts left")
        }
        other => return Err(format!("expected a wrong code, got {other:?}").into()),
    }

    println!("5. alice types something that is not a six-digit code");
    let err = recovery
        .verify(&requested.flow_id, "12a456", &RequestContext::without_client_ip())
        .await
        .unwrap_err();
    println!("   -> refused before any check, no attempt used: {err}");

    println!("6. alice types the code from the SMS");
    let verified = recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await?;
    println!("   -> verified; a single-use reset token was issued, valid 10 minutes");

    println!("7. alice submits her new password with the token");
    let done = recovery
        .reset(
            &verified.token.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await?;
    println!(
        "   -> token accepted: the host now sets the password of account {}",
        done.account
    );

    println!("8. the token is replayed, and the code typed again");
    let replay = recovery
        .reset(
            &verified.token.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    println!("   -> token refused: {replay}");
    let again = recovery
        .verify(
            &requested.flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap_err();
    println!("   -> code refused: {again}");
    Ok(())
}
