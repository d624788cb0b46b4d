//! One recovery request sent through Twilio.
//!
//! ```sh
//! export TWILIO_ACCOUNT_SID=AC...        # your Account SID
//! export TWILIO_AUTH_TOKEN=...           # its auth token
//! export TWILIO_FROM=+15017122661        # a Twilio number, or a Messaging Service SID (MG...)
//! export TWILIO_TO=+14155550123          # your phone
//! export TWILIO_BASE_URL=http://127.0.0.1:8080   # optional: a local test server
//! cargo run --features twilio --example twilio
//! ```
//!
//! Without the credentials it prints what to set and exits successfully.
//! `TWILIO_BASE_URL` defaults to the real API; plain `http://` is accepted
//! only for a loopback address.

#[cfg(feature = "twilio")]
mod run {
    use otp_recovery::store::MemoryStore;
    use otp_recovery::{
        Account, AccountId, Error, KeyRing, PhoneNumber, Policy, Recovery, RequestContext, SecretString,
        ServerKey,
    };
    use otp_recovery_gateways::twilio::{self, TwilioAuth, TwilioFrom, TwilioSender};

    const REQUIRED: [&str; 4] = [
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM",
        "TWILIO_TO",
    ];

    pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|name| std::env::var(name).map_or(true, |value| value.is_empty()))
            .collect();
        if !missing.is_empty() {
            println!("This example sends one recovery code through Twilio. Set:");
            for name in REQUIRED {
                let mark = if missing.contains(&name) { "missing" } else { "set" };
                println!("  {name:<20} ({mark})");
            }
            println!(
                "  TWILIO_BASE_URL      (optional, default {})",
                twilio::DEFAULT_BASE_URL
            );
            println!("TWILIO_FROM is a Twilio number (+1...) or a Messaging Service SID (MG...).");
            return Ok(());
        }
        let var = |name: &str| std::env::var(name).unwrap_or_default();

        let from = var("TWILIO_FROM");
        let from = if from.starts_with("MG") {
            TwilioFrom::MessagingService(from)
        } else {
            TwilioFrom::Number(PhoneNumber::parse(&from).map_err(|e| format!("TWILIO_FROM: {e}"))?)
        };
        let to = PhoneNumber::parse(&var("TWILIO_TO")).map_err(|e| format!("TWILIO_TO: {e}"))?;
        let base_url = std::env::var("TWILIO_BASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| twilio::DEFAULT_BASE_URL.to_owned());
        let sender = TwilioSender::builder(
            var("TWILIO_ACCOUNT_SID"),
            TwilioAuth::Token(SecretString::new(var("TWILIO_AUTH_TOKEN"))),
            from,
        )
        .base_url(base_url)
        .build()?;
        println!("sender: {sender:?}");

        // Report a failed send to the caller, so this program can print it
        // (a service keeps the default: same answer either way).
        let policy = Policy::builder().reveal_send_failures(true).build()?;
        let keys = KeyRing::new(1, ServerKey::generate()?);
        let recovery = Recovery::new(MemoryStore::new(), sender, keys).with_policy(policy);
        let account = Account::new(AccountId::new("example-user")?, to);

        match recovery
            .request(
                "user@example.com",
                Some(account),
                &RequestContext::without_client_ip(),
            )
            .await
        {
            Ok(requested) => {
                println!(
                    "sent: a code to {}; recovery id {}",
                    requested.masked_phone, requested.flow_id
                );
                Ok(())
            }
            Err(Error::Send(error)) => {
                println!(
                    "not sent: {error} ({})",
                    if error.is_retryable() {
                        "retryable"
                    } else {
                        "not retryable"
                    }
                );
                std::process::exit(1);
            }
            Err(other) => Err(other.into()),
        }
    }
}

#[cfg(feature = "twilio")]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run::main().await
}

#[cfg(not(feature = "twilio"))]
fn main() {
    println!("This example needs the twilio feature: cargo run --features twilio --example twilio");
}
