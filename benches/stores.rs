//! Request and verify on each real store, next to one bare round trip to
//! the same server, measured in the same run.
//!
//! ```sh
//! OTP_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1/test \
//! OTP_TEST_REDIS_URL=redis://127.0.0.1:6379/ \
//!   cargo bench ,sqlite --bench stores
//! ```
//!
//! A store whose URL is not set is left out (SQLite needs none).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{LastCode, account, client};
use criterion::{Criterion, criterion_group, criterion_main};
use otp_recovery::store::CodeStore;
use otp_recovery::{FlowId, KeyRing, ManualClock, Recovery, ServerKey, Timestamp};
use tokio::runtime::Runtime;

/// Request and verify (a wrong code) on `store`, every default limit on.
fn bench_store<S: CodeStore + 'static>(c: &mut Criterion, rt: &Runtime, name: &str, store: S) {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(4)).sample_size(30);
    // Time moves an hour every 250 operations so no budget refuses a call.
    let start = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    // Each run starts at its own point up to a million hours ahead, so
    // runs against a shared database never meet each other's windows.
    let start = start + (rand_seed() % 1_000_000) * 3_600_000;
    let clock = ManualClock::new(Timestamp::from_unix_millis(start));
    let n = Cell::new(rand_seed());
    let tick = || {
        let v = n.get() + 1;
        n.set(v);
        if v.is_multiple_of(250) {
            clock.advance(Duration::from_secs(3601));
        }
        v
    };
    let sender = Arc::new(LastCode::default());
    let recovery = Recovery::new(
        store,
        sender.clone(),
        KeyRing::new(1, ServerKey::generate().unwrap()),
    )
    .with_limits(run_local_limits())
    .with_clock(clock.clone());
    g.bench_function("request", |b| {
        b.iter(|| {
            let i = tick();
            rt.block_on(recovery.request("bench@example.com", Some(account(i)), &client(i)))
                .unwrap()
        })
    });
    g.bench_function("verify_wrong", |b| {
        b.iter_batched(
            || {
                let i = tick();
                let flow: FlowId = rt
                    .block_on(recovery.request("bench@example.com", Some(account(i)), &client(i)))
                    .unwrap()
                    .flow_id;
                let code = sender.0.lock().unwrap().clone();
                (
                    flow,
                    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000),
                    client(i),
                )
            },
            |(flow, wrong, ctx)| rt.block_on(recovery.verify(&flow, &wrong, &ctx)).unwrap_err(),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// The default rules, with the two that every run shares in a shared
/// database (the country and global budgets, keyed by plain values)
/// replaced by per-phone rules of the same cost: every limit is one counter
/// upsert, so the store does the same work, and runs never refuse each
/// other.
fn run_local_limits() -> otp_recovery::limits::Limits {
    use otp_recovery::limits::{LimitScope, Limits, Rule};
    let hour = Duration::from_secs(3600);
    let mut b = Limits::builder().clear_send_rules();
    for rule in Limits::default().send_rules() {
        b = match rule.scope {
            LimitScope::CountryCode | LimitScope::Global => b.add_send_rule(Rule::new(
                LimitScope::Phone,
                1_000_000,
                hour + Duration::from_secs(rule.max.into()),
            )),
            _ => b.add_send_rule(*rule),
        };
    }
    b.build().unwrap()
}

/// A different starting point per run, so runs against a shared database
/// do not meet each other's counters.
fn rand_seed() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % 1_000_000_000
}

fn stores(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    {
        use otp_recovery_sqlx::sqlite::SqliteStore;
        let path = std::env::temp_dir().join(format!("otp-bench-{}.db", rand_seed()));
        let store = rt.block_on(SqliteStore::open(&path)).unwrap();
        bench_store(c, &rt, "sqlite", store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    if let Ok(url) = std::env::var("OTP_TEST_POSTGRES_URL") {
        use otp_recovery_sqlx::postgres::PostgresStore;
        let store = rt.block_on(PostgresStore::connect(&url)).unwrap();
        rt.block_on(store.migrate()).unwrap();
        let pool = rt.block_on(sqlx::PgPool::connect(&url)).unwrap();
        c.bench_function("postgres/bare_round_trip", |b| {
            b.iter(|| rt.block_on(sqlx::query("SELECT 1").execute(&pool)).unwrap())
        });
        bench_store(c, &rt, "postgres", store);
    }
    redis(c, &rt);
}

criterion_group!(benches, stores);

fn redis(c: &mut Criterion, rt: &Runtime) {
    use otp_recovery_redis::RedisStore;
    let Ok(url) = std::env::var("OTP_TEST_REDIS_URL") else {
        return;
    };
    let store = rt
        .block_on(RedisStore::connect(&url))
        .unwrap()
        .with_prefix(&format!("bench-{}", rand_seed()));
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = rt.block_on(client.get_multiplexed_async_connection()).unwrap();
    c.bench_function("redis/bare_round_trip", |b| {
        b.iter(|| {
            rt.block_on(::redis::cmd("PING").query_async::<String>(&mut conn))
                .unwrap()
        })
    });
    bench_store(c, rt, "redis", store);
}
criterion_main!(benches);
