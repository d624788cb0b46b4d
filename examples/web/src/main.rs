//! `cargo run -p otp-recovery-web -- [--port 3000] [--database PATH] [--dev]`
//!
//! Serves the example on 127.0.0.1, keeping its data in `--database`
//! (default: `otp-recovery-web.db` in the temporary directory). `--dev`
//! (or `OTP_WEB_DEV=1`) turns on development mode: every SMS is listed at
//! `/dev/messages`. Never in production. The server key comes from `OTP_WEB_SERVER_KEY` (hex, at
//! least 32 bytes); without it a random key is drawn, and open recoveries
//! do not survive a restart.

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use otp_recovery::ServerKey;
use otp_recovery_web::{App, Config, users};

struct Args {
    port: u16,
    database: PathBuf,
    dev: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        port: 3000,
        database: std::env::temp_dir().join("otp-recovery-web.db"),
        dev: std::env::var("OTP_WEB_DEV").is_ok_and(|v| v == "1"),
    };
    if let Ok(port) = std::env::var("PORT") {
        args.port = port.parse().map_err(|_| format!("PORT: not a port: {port}"))?;
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => {
                let port = it.next().ok_or("--port needs a value")?;
                args.port = port.parse().map_err(|_| format!("--port: not a port: {port}"))?;
            }
            "--database" => args.database = it.next().ok_or("--database needs a path")?.into(),
            "--dev" => args.dev = true,
            other => return Err(format!("unknown argument {other}; see the README")),
        }
    }
    Ok(args)
}

fn server_key() -> Result<ServerKey, Box<dyn Error + Send + Sync>> {
    match std::env::var("OTP_WEB_SERVER_KEY") {
        Ok(hex) => {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or("OTP_WEB_SERVER_KEY: not hex")?;
            Ok(ServerKey::from_bytes(bytes)?)
        }
        Err(_) => {
            eprintln!("OTP_WEB_SERVER_KEY is not set: using a random key (open recoveries end at restart)");
            Ok(ServerKey::generate()?)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let args = args()?;
    let mut config = Config::development(&args.database)?;
    config.server_key = server_key()?;
    config.dev_mode = args.dev;
    let app = App::new(config).await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    // Open it as localhost: the SMS's WebOTP line names that host, and
    // browsers offer the code only to the page of the host it names.
    let url = format!("http://localhost:{}", listener.local_addr()?.port());
    println!(
        "serving on {url} (127.0.0.1; database {})",
        args.database.display()
    );
    println!("demo users (email / password / phone):");
    for (_, email, phone, password) in users::DEMO_USERS {
        println!("  {email} / {password} / {phone}");
    }
    if args.dev {
        println!("development mode: SMS messages are listed at {url}/dev/messages (never in production)");
    }
    tokio::select! {
        served = otp_recovery_web::serve(listener, app) => served?,
        _ = tokio::signal::ctrl_c() => println!("stopping"),
    }
    Ok(())
}
