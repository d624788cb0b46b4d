//! The recovery flow across two process runs with the SQLite store: the
//! first process requests a code, counts one mistyped attempt and exits its
//! part; a second process, started fresh, finds the flow in the database,
//! verifies the code Alice "received" and resets her password. The two
//! share nothing but files: the database, the server key, and Alice's SMS
//! inbox.
//!
//! ```sh
//! cargo run --example persistent --features sqlite
//! ```
//!
//! Non-interactive: the first run starts the second itself (the same
//! program, with the arguments `finish <database>`), waits for it, and
//! deletes the files.

use std::error::Error as StdError;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use async_trait::async_trait;
use otp_recovery::sms::{ConsoleSender, SendError, SendErrorKind, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::store::CodeStore;
use otp_recovery::{
    Account, AccountId, Code, Error, FlowId, KeyRing, Messages, PhoneNumber, Recovery, RequestContext,
    ServerKey,
};
use otp_recovery_sqlx::sqlite::SqliteStore;

type Result<T, E = Box<dyn StdError>> = std::result::Result<T, E>;

/// The host's user table, reduced to one user.
fn find_account(identifier: &str) -> Option<Account> {
    (identifier == "alice@example.com").then(|| {
        Account::new(
            AccountId::new("user-1001").unwrap(),
            PhoneNumber::parse("+14155550123").unwrap(),
        )
    })
}

/// A file next to the database.
fn beside(database: &Path, extension: &str) -> PathBuf {
    database.with_extension(extension)
}

/// Alice's phone: prints every SMS and appends it, one per line, to an
/// inbox file that outlives the process.
struct Phone {
    console: ConsoleSender,
    inbox: PathBuf,
}

#[async_trait]
impl SmsSender for Phone {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let receipt = self.console.send(message).await?;
        let line = message.body.expose_secret().replace('\n', " ");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.inbox)
            .and_then(|mut inbox| writeln!(inbox, "{line}"))
            .map_err(|e| SendError::new(SendErrorKind::Unavailable, format!("inbox: {e}")))?;
        Ok(receipt)
    }
}

/// The code in the latest SMS of the inbox: its first run of 6 to 10
/// digits, as Alice would read it.
fn read_code(inbox: &Path) -> Result<Code> {
    let text = std::fs::read_to_string(inbox)?;
    let run = text
        .lines()
        .rev()
        .flat_map(|line| line.split(|c: char| !c.is_ascii_digit()))
        .find(|run| (6..=10).contains(&run.len()))
        .ok_or("no code in the inbox")?;
    Ok(Code::parse(run)?)
}

/// The server key both processes share. In production it comes from your
/// secret manager; here the first run draws one and keeps it next to the
/// database, readable by its owner only.
fn key_ring(database: &Path, create: bool) -> Result<KeyRing> {
    let path = beside(database, "key");
    if create {
        let key = ServerKey::generate()?;
        let bytes = key.expose_secret();
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path)?.write_all(bytes)?;
        return Ok(KeyRing::new(1, key));
    }
    Ok(KeyRing::new(1, ServerKey::from_bytes(std::fs::read(&path)?)?))
}

async fn recovery(database: &Path, create: bool) -> Result<Recovery<SqliteStore, Phone>> {
    let store = SqliteStore::open(database).await?;
    let phone = Phone {
        console: ConsoleSender::new(),
        inbox: beside(database, "inbox"),
    };
    let messages = Messages::builder("Acme").build()?;
    Ok(Recovery::new(store, phone, key_ring(database, create)?).with_messages(messages))
}

/// The first process: requests the code, then runs the second one.
async fn start(database: &Path) -> Result<()> {
    println!("[first process, pid {}]", std::process::id());
    println!("1. the service opens (creates) {}", database.display());
    let recovery = recovery(database, true).await?;

    println!("2. alice@example.com asks to recover her account");
    let identifier = "alice@example.com";
    let requested = recovery
        .request(
            identifier,
            find_account(identifier),
            &RequestContext::without_client_ip(),
        )
        .await?;
    println!(
        "   -> code sent to {}; recovery id {}",
        requested.masked_phone, requested.flow_id
    );
    // The recovery id is what the host keeps in Alice's session (or link).
    std::fs::write(beside(database, "flow"), requested.flow_id.to_string())?;

    println!("3. alice mistypes the code");
    let code = read_code(&beside(database, "inbox"))?;
    let wrong = if code.expose_secret() == "000000" {
        "000001"
    } else {
        "000000"
    };
    match recovery
        .verify(&requested.flow_id, wrong, &RequestContext::without_client_ip())
        .await
    {
        Err(Error::InvalidCode { attempts_left, .. }) => {
            println!("   -> wrong code, {attempts_left} attempts left")
        }
        other => return Err(format!("expected a wrong code, got {other:?}").into()),
    }

    println!("4. the service stops; everything it knew is in the database");
    recovery.store().close().await;
    drop(recovery);

    let status = Command::new(std::env::current_exe()?)
        .arg("finish")
        .arg(database)
        .status()?;
    if !status.success() {
        return Err(format!("the second process failed: {status}").into());
    }
    println!("[first process] the second process completed the recovery");
    Ok(())
}

/// The second process: reopens the store and finishes the recovery.
async fn finish(database: &Path) -> Result<()> {
    println!("[second process, pid {}]", std::process::id());
    println!("5. the service starts again and reopens {}", database.display());
    let recovery = recovery(database, false).await?;
    let flow_id = FlowId::parse(std::fs::read_to_string(beside(database, "flow"))?.trim())?;
    let flow = recovery
        .store()
        .get_flow(&flow_id)
        .await?
        .ok_or("the flow did not survive the restart")?;
    println!(
        "   -> recovery {flow_id} is still there, with {} wrong code counted",
        flow.failed_attempts
    );

    println!("6. alice types the code from the SMS");
    let code = read_code(&beside(database, "inbox"))?;
    let verified = recovery
        .verify(
            &flow_id,
            code.expose_secret(),
            &RequestContext::without_client_ip(),
        )
        .await?;
    println!("   -> verified; a single-use reset token was issued");

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
    recovery.store().close().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            let dir = std::env::temp_dir().join(format!("otp-recovery-persistent-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let outcome = start(&dir.join("recovery.db")).await;
            let cleanup = std::fs::remove_dir_all(&dir);
            outcome?;
            Ok(cleanup?)
        }
        [command, database] if command == "finish" => finish(Path::new(database)).await,
        _ => Err("usage: persistent [finish <database>]".into()),
    }
}
