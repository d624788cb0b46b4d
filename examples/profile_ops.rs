//! Runs one operation many times for a profiler (callgrind):
//! `cargo run --release --example profile_ops -- request|request_again|verify_wrong|verify_right N`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use otp_recovery::sms::{SendError, SendReceipt, SmsMessage, SmsSender};
use otp_recovery::store::MemoryStore;
use otp_recovery::{
    Account, AccountId, FlowId, KeyRing, ManualClock, PhoneNumber, Recovery, RequestContext, ServerKey,
    Timestamp,
};

fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("waited"),
    }
}

#[derive(Default)]
struct LastCode(Mutex<String>);

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

fn account(n: u64) -> Account {
    Account::new(
        AccountId::new(format!("user-{n}")).unwrap(),
        PhoneNumber::parse(&format!("+1415{:07}", n % 10_000_000)).unwrap(),
    )
}

fn client(n: u64) -> RequestContext {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000u32.wrapping_add(n as u32));
    RequestContext::from_ip(std::net::IpAddr::V4(ip))
}

type R = Recovery<MemoryStore, Arc<LastCode>, ManualClock>;

#[inline(never)]
fn measured_request(r: &R, n: u64) {
    for i in 0..n {
        black_box(
            ready(r.request(
                "someone@example.com",
                Some(account(1_000_000 + i)),
                &client(1_000_000 + i),
            ))
            .unwrap(),
        );
    }
}

/// The same accounts' requests again: each supersedes the flow of the
/// one before.
#[inline(never)]
fn measured_request_again(r: &R, n: u64) {
    measured_request(r, n);
}

#[inline(never)]
fn measured_verify(r: &R, flows: &[(FlowId, String, RequestContext)]) {
    for (f, c, ctx) in flows {
        black_box(ready(r.verify(f, c, ctx)).is_ok());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map_or("request", String::as_str);
    let n: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let sender = Arc::new(LastCode::default());
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let limits = otp_recovery::limits::Limits::builder().clear_send_rules();
    let mut b = limits;
    for rule in otp_recovery::limits::Limits::default().send_rules() {
        let mut r = *rule;
        r.max = 1_000_000_000;
        b = b.add_send_rule(r);
    }
    let r = Recovery::new(
        MemoryStore::new(),
        sender.clone(),
        KeyRing::new(1, ServerKey::generate().unwrap()),
    )
    .with_limits(b.build().unwrap())
    .with_clock(clock);
    // Warm up the maps.
    measured_request(&r, 10);
    if op == "request" || op == "request_again" {
        if op == "request_again" {
            measured_request(&r, n);
        }
        let start = std::time::Instant::now();
        if op == "request_again" {
            measured_request_again(&r, n);
        } else {
            measured_request(&r, n);
        }
        eprintln!(
            "{op}: {:.0} ns each",
            start.elapsed().as_nanos() as f64 / n as f64
        );
        return;
    }
    let flows: Vec<_> = (0..n)
        .map(|i| {
            let f = ready(r.request("x@example.com", Some(account(i)), &client(i)))
                .unwrap()
                .flow_id;
            let code = sender.0.lock().unwrap().clone();
            let code = if op == "verify_right" {
                code
            } else {
                format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
            };
            (f, code, client(i))
        })
        .collect();
    if op == "verify_threads" {
        // The flows split over two threads, then the same number on one.
        let (a, b) = flows.split_at(flows.len() / 2);
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| measured_verify(&r, a));
            s.spawn(|| measured_verify(&r, b));
        });
        let two = start.elapsed().as_nanos() as f64 / n as f64;
        let more: Vec<_> = (n..2 * n)
            .map(|i| {
                let f = ready(r.request("x@example.com", Some(account(i)), &client(i)))
                    .unwrap()
                    .flow_id;
                (f, "000000".to_owned(), client(i))
            })
            .collect();
        let start = std::time::Instant::now();
        measured_verify(&r, &more);
        let one = start.elapsed().as_nanos() as f64 / n as f64;
        eprintln!(
            "{op}: two threads {two:.0} ns per verify, one {one:.0} ns: {:.2}x",
            one / two
        );
        return;
    }
    let start = std::time::Instant::now();
    measured_verify(&r, &flows);
    eprintln!(
        "{op}: {:.0} ns each",
        start.elapsed().as_nanos() as f64 / n as f64
    );
}
