//! Helpers the benchmarks share.

#![allow(dead_code)]

use async_trait::async_trait;
use otp_recovery::sms::{SendError, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::{Account, AccountId, PhoneNumber, RequestContext};

/// Remembers the last code so the benchmark can verify it.
#[derive(Default)]
pub struct LastCode(pub std::sync::Mutex<String>);

#[async_trait]
impl SmsSender for LastCode {
    async fn send(&self, message: &SmsMessage) -> Result<SendReceipt, SendError> {
        let code = message
            .body
            .expose_secret()
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        *self.0.lock().unwrap() = code;
        Ok(SendReceipt::default())
    }
}

/// An account with its own phone per operation, so per-phone and
/// per-account limits never refuse a measured call.
pub fn account(n: u64) -> Account {
    Account::new(
        AccountId::new(format!("user-{n}")).unwrap(),
        PhoneNumber::parse(&format!("+1415{:07}", n % 10_000_000)).unwrap(),
    )
}

/// A client IP per operation, so per-IP limits never refuse a measured call.
pub fn client(n: u64) -> RequestContext {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000u32.wrapping_add(n as u32));
    RequestContext::from_ip(std::net::IpAddr::V4(ip))
}
