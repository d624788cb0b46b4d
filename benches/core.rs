//! Costs of the core operations on the in-memory store, next to the
//! cryptography they cannot avoid.
//!
//! ```sh
//! cargo bench --bench core
//! ```

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{LastCode, NullSender, account, client, ready};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use otp_recovery::store::MemoryStore;
use otp_recovery::{FlowId, KeyRing, ManualClock, Recovery, RequestContext, ServerKey, Timestamp};
use sha2::Sha256;

fn benches(c: &mut Criterion) {
    let key = vec![7u8; 32];
    let input = [0u8; 64];

    let mut g = c.benchmark_group("baseline");
    g.bench_function("hmac_sha256_fresh_key", |b| {
        b.iter(|| {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&key)).unwrap();
            m.update(black_box(&input));
            black_box(m.finalize().into_bytes())
        })
    });
    g.bench_function("os_rng_32_bytes", |b| {
        b.iter(|| {
            let mut buf = [0u8; 32];
            getrandom::fill(&mut buf).unwrap();
            black_box(buf)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("memory_store");
    // Every default limit and detector is on. Time moves an hour every 250
    // operations, so no budget (300 sends per country code per hour) ever
    // refuses a measured call, and the store sweeps expired flows.
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let counter = Cell::new(0u64);
    let tick = || {
        let n = counter.get() + 1;
        counter.set(n);
        if n.is_multiple_of(250) {
            clock.advance(Duration::from_secs(3601));
        }
        n
    };
    let keys = KeyRing::new(1, ServerKey::generate().unwrap());
    let recovery = Recovery::new(MemoryStore::new(), NullSender, keys.clone()).with_clock(clock.clone());
    g.bench_function("request_known", |b| {
        b.iter(|| {
            let n = tick();
            ready(recovery.request("someone@example.com", Some(account(n)), &client(n))).unwrap()
        })
    });
    g.bench_function("request_unknown", |b| {
        b.iter(|| {
            let n = tick();
            ready(recovery.request(&format!("nobody{n}@example.com"), None, &client(n))).unwrap()
        })
    });

    let sender = Arc::new(LastCode::default());
    let recovery = Recovery::new(MemoryStore::new(), sender.clone(), keys).with_clock(clock.clone());
    // A fresh account and client per flow, so no limit refuses a measured
    // call and wrong codes never reach the account limit.
    let open_flow = || {
        let n = tick();
        let flow = ready(recovery.request("someone@example.com", Some(account(n)), &client(n)))
            .unwrap()
            .flow_id;
        let code = sender.0.lock().unwrap().clone();
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        (flow, code, wrong, client(n))
    };
    g.bench_function("verify_wrong", |b| {
        b.iter_batched(
            &open_flow,
            |(flow, _, wrong, ctx): (FlowId, String, String, RequestContext)| {
                ready(recovery.verify(&flow, &wrong, &ctx)).unwrap_err()
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("verify_right", |b| {
        b.iter_batched(
            &open_flow,
            |(flow, code, _, ctx): (FlowId, String, String, RequestContext)| {
                ready(recovery.verify(&flow, &code, &ctx)).unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
