//! Helpers the benchmarks share.

#![allow(dead_code)]

use async_trait::async_trait;
use otp_recovery::sms::{SendError, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::{Account, AccountId, PhoneNumber, RequestContext};

/// Drives a future that never waits (the in-memory store and the null
/// sender never do), without the cost of an async runtime.
pub fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the benchmarked future waited"),
    }
}

/// Sends nothing: measures the crate, not a gateway.
pub struct NullSender;

#[async_trait]
impl SmsSender for NullSender {
    async fn send(&self, _: &SmsMessage) -> Result<SendReceipt, SendError> {
        Ok(SendReceipt::default())
    }
}

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
