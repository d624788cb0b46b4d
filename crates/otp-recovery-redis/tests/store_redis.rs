//! The Redis store against a real server: the conformance suite, several
//! host instances racing through separate connections, a reconnect, and
//! foreign data where records live.
//!
//! Needs `OTP_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/`); without it
//! every test prints a notice and passes (in CI, where `CI` is set, it
//! fails instead). Each test works under a prefix of its own, so tests and
//! runs sharing one database never see each other's keys (or purges); the
//! keys expire by themselves.

use std::time::Duration;

use otp_recovery::conformance::{self, server_url};
use otp_recovery::limits::Limits;
use otp_recovery::sms::RecordingSender;
use otp_recovery::store::{CodeStore, Counter, Load, MemoryStore, StoreError};
use otp_recovery::support::SupportReference;
use otp_recovery::{
    Account, AccountId, Clock, Error, FlowId, KeyRing, PhoneNumber, Recovery, RequestContext, ServerKey,
    SystemClock,
};
use otp_recovery_redis::RedisStore;

const URL_VAR: &str = "OTP_TEST_REDIS_URL";

/// A prefix no other test or run uses.
fn fresh_prefix() -> String {
    format!("otp-test-{}", FlowId::generate().expect("randomness"))
}

/// A store under `prefix`; panics if the server cannot be reached, so a
/// set URL never passes with the tests skipped.
async fn connect(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but Redis is unreachable: {e}"))
        .with_prefix(prefix)
}

/// A store under a fresh prefix, a raw connection to the same server (for
/// tests that plant or inspect keys themselves), and the prefix.
async fn store_and_raw(url: &str) -> (RedisStore, redis::aio::MultiplexedConnection, String) {
    let prefix = fresh_prefix();
    let store = connect(url, &prefix).await;
    let raw = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("a raw connection");
    (store, raw, prefix)
}

/// One raw command on one key, for tests that inspect keys themselves.
async fn ask<T: redis::FromRedisValue>(
    raw: &mut redis::aio::MultiplexedConnection,
    command: &str,
    key: &str,
) -> T {
    redis::cmd(command)
        .arg(key)
        .query_async(raw)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

otp_recovery::code_store_conformance! {
    optional: store: async {
        match server_url(URL_VAR) {
            Some(url) => Some(connect(&url, &fresh_prefix()).await),
            None => None,
        }
    },
    // Two host instances, each with its own connection manager to the same
    // server and prefix.
    two_instances: async {
        match server_url(URL_VAR) {
            Some(url) => {
                let prefix = fresh_prefix();
                Some((connect(&url, &prefix).await, connect(&url, &prefix).await))
            }
            None => None,
        }
    },
}

/// An account of its own, so no limit carries over between tests.
fn account() -> Account {
    let id =
        AccountId::new(format!("redis-test-{}", FlowId::generate().expect("randomness"))).expect("valid id");
    Account::new(id, PhoneNumber::parse("+14155550123").expect("valid phone"))
}

/// A flow and its counts survive the connection being dropped and made
/// again.
#[test]
fn flows_and_counts_survive_a_reconnect() {
    conformance::block_on(async {
        let Some(url) = server_url(URL_VAR) else { return };
        let prefix = fresh_prefix();
        conformance::a_reopened_store_keeps_flows_and_counts(|| connect(&url, &prefix)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_where_records_live_is_a_typed_error() {
    let Some(url) = server_url(URL_VAR) else { return };
    let prefix = fresh_prefix();
    let recovery = Recovery::new(
        connect(&url, &prefix).await,
        RecordingSender::new(),
        KeyRing::new(1, ServerKey::generate().expect("randomness")),
    )
    .with_limits(Limits::none());
    let ctx = RequestContext::without_client_ip();
    let flow = recovery
        .request("someone@example.com", Some(account()), &ctx)
        .await
        .expect("request")
        .flow_id;
    let store = recovery.store();
    assert!(store.get_flow(&flow).await.expect("get").is_some());

    let client = redis::Client::open(url.as_str()).expect("url");
    let raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("a raw connection");
    let key = format!("{{{prefix}}}:flow:{flow}");
    let set = |cmd: redis::Cmd| {
        let mut raw = raw.clone();
        async move { cmd.query_async::<()>(&mut raw).await.expect("raw write") }
    };

    // Garbage bytes where the record lives.
    set(redis::cmd("HSET")
        .arg(&key)
        .arg("d")
        .arg(b"\x00garbage\xff".as_slice())
        .clone())
    .await;
    let err = store.get_flow(&flow).await.expect_err("garbage");
    assert!(matches!(err, StoreError::Decode(_)), "{err:?}");
    let err = recovery.verify(&flow, "123456", &ctx).await.expect_err("garbage");
    assert!(matches!(err, Error::Store(StoreError::Decode(_))), "{err:?}");

    // A stored version that is not a number.
    let valid = recovery
        .request("x@example.com", Some(account()), &ctx)
        .await
        .expect("request")
        .flow_id;
    set(redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:flow:{valid}"))
        .arg("v")
        .arg("seven")
        .clone())
    .await;
    assert!(matches!(store.get_flow(&valid).await, Err(StoreError::Decode(_))));

    // A value of another type where the flow lives.
    set(redis::cmd("DEL").arg(&key).clone()).await;
    set(redis::cmd("SET").arg(&key).arg("not a hash").clone()).await;
    match store.get_flow(&flow).await {
        Err(StoreError::Decode(_)) => {}
        Err(StoreError::Backend { retryable, .. }) => assert!(!retryable, "foreign data is not transient"),
        other => panic!("expected an error for a wrong-typed key: {other:?}"),
    }
    let err = recovery
        .verify(&flow, "123456", &ctx)
        .await
        .expect_err("wrong type");
    assert!(matches!(err, Error::Store(_)), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");

    // Garbage where a support case lives.
    let reference = SupportReference::parse("ABCD-1234").expect("reference");
    set(redis::cmd("SET")
        .arg(format!("{{{prefix}}}:case:{}", reference.as_compact()))
        .arg("garbage")
        .clone())
    .await;
    assert!(matches!(
        store.get_case(&reference).await,
        Err(StoreError::Decode(_))
    ));

    // None of it leaks into an error message.
    let message = format!("{err} {err:?}");
    assert!(
        !message.contains("not a hash") && !message.contains(&prefix),
        "{message}"
    );

    // Raw writes carry no TTL: take them back.
    set(redis::cmd("DEL")
        .arg(&key)
        .arg(format!("{{{prefix}}}:case:{}", reference.as_compact()))
        .clone())
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_retryable_error() {
    // Port 1 on localhost: nothing listens there.
    let err = RedisStore::connect("redis://127.0.0.1:1/")
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err:?}");
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    let err = RedisStore::connect("not a url").await.expect_err("invalid url");
    assert!(!err.is_retryable(), "{err:?}");
}

/// xorshift64*: reproducible from the seed a failure prints.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Random calls of counters (repeated keys, reads, conditions, maxima,
/// guards, window ends to the millisecond, deletes, purges) give the same
/// values in Redis as in the memory store, the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_memory_store_call_for_call() {
    let Some(url) = server_url(URL_VAR) else { return };
    let redis = connect(&url, &fresh_prefix()).await;
    let memory = MemoryStore::new();
    let seed = u64::from_le_bytes(
        FlowId::generate().expect("randomness").as_bytes()[..8]
            .try_into()
            .unwrap(),
    ) | 1;
    let mut rng = Rng(seed);
    // Windows: key i lasts WINDOWS[i]. The logical clock runs an hour
    // ahead of real time, so Redis' own expiry (by its clock) never
    // removes a window the logical clock still sees open.
    const KEYS: [&str; 3] = ["a", "b", "c"];
    const WINDOWS: [Duration; 3] = [
        Duration::from_secs(10),
        Duration::from_secs(5),
        Duration::from_millis(1),
    ];
    let mut now = SystemClock.now().saturating_add(Duration::from_secs(3600));
    let (mut refused, mut counted) = (0, 0);
    for step in 0..400 {
        let advance = [0, 1, 4_999, 5_000, 9_999, 10_000][rng.below(6) as usize];
        now = now.saturating_add(Duration::from_millis(advance));
        match rng.below(20) {
            0 => {
                let keys = vec![KEYS[rng.below(3) as usize].to_owned(), "never".to_owned()];
                memory.delete_counters(&keys).await.expect("delete");
                redis.delete_counters(&keys).await.expect("delete");
                continue;
            }
            1 => {
                memory.purge_expired(now).await.expect("purge");
                redis.purge_expired(now).await.expect("purge");
                continue;
            }
            _ => {}
        }
        let n = 1 + rng.below(4) as usize;
        let counters: Vec<Counter> = (0..n)
            .map(|i| {
                let k = rng.below(3) as usize;
                let mut c = Counter::new(KEYS[k], WINDOWS[k], rng.below(3) as u32);
                if rng.below(3) == 0 {
                    // Mostly an earlier counter; sometimes itself or later.
                    c = c.only_if_opened(rng.below(i as u64 + 2) as usize);
                }
                match rng.below(4) {
                    0 => c.with_max(rng.below(6)),
                    1 => c.guarded(),
                    _ => c,
                }
            })
            .collect();
        let expected = memory.increment_counters(&counters, now).await.expect("memory");
        let got = if rng.below(2) == 0 {
            redis.increment_counters(&counters, now).await.expect("redis")
        } else {
            let missing = FlowId::generate().expect("randomness");
            let (flow, values) = redis
                .load_counting(Load::Flow(&missing), &counters, now)
                .await
                .expect("redis");
            assert!(flow.is_none());
            values
        };
        assert_eq!(got, expected, "step {step} (seed {seed:#x}): {counters:?}");
        refused += usize::from(Counter::refused(&counters, &expected));
        counted += expected.iter().filter(|v| v.count > 2).count();
    }
    assert!(
        refused > 10 && counted > 10,
        "the calls exercised too little: {refused} refused, {counted}"
    );
}

/// A swap that moves `purge_after` moves the flow's purge with it; one
/// that keeps it (the store then skips the expiry and the index) leaves
/// the purge where it was.
#[test]
fn a_swap_moves_the_purge_only_with_purge_after() {
    conformance::block_on(async {
        let Some(url) = server_url(URL_VAR) else { return };
        let store = connect(&url, &fresh_prefix()).await;
        let open = |store: RedisStore| async move {
            let id = recovery_flow(&store).await;
            store.get_flow(&id).await.expect("get").expect("stored")
        };
        let moved = open(store.clone()).await;
        let kept = open(store.clone()).await;
        let later = moved.purge_after.saturating_add(Duration::from_secs(10));
        let mut next = moved.clone();
        next.version += 1;
        next.purge_after = later;
        assert!(store.compare_and_swap(moved.version, &next).await.expect("swap"));
        let mut same = kept.clone();
        same.version += 1;
        assert!(store.compare_and_swap(kept.version, &same).await.expect("swap"));
        // A second swap that keeps it again.
        let mut again = same.clone();
        again.version += 1;
        assert!(store.compare_and_swap(same.version, &again).await.expect("swap"));

        store
            .purge_expired(moved.purge_after.max(kept.purge_after))
            .await
            .expect("purge");
        assert_eq!(
            store.get_flow(&kept.id).await.expect("get"),
            None,
            "kept: not purged"
        );
        assert!(
            store.get_flow(&moved.id).await.expect("get").is_some(),
            "moved: purged at its old purge_after"
        );
        store.purge_expired(later).await.expect("purge");
        assert_eq!(
            store.get_flow(&moved.id).await.expect("get"),
            None,
            "moved: not purged"
        );
    });
}

/// A flow of a fresh account, opened by a request through `store`.
async fn recovery_flow(store: &RedisStore) -> FlowId {
    let recovery = Recovery::new(
        store.clone(),
        RecordingSender::new(),
        KeyRing::new(1, ServerKey::generate().expect("key")),
    );
    recovery
        .request(
            "someone@example.com",
            Some(account()),
            &RequestContext::without_client_ip(),
        )
        .await
        .expect("request")
        .flow_id
}

/// Counters are strings, `<count>:<window end>`, that expire natively a
/// minute after their window: a new window sets the expiry, an increment
/// keeps it. A counter key holding anything else (an earlier format's
/// hash) opens a new window over it rather than failing every call.
#[tokio::test]
async fn counters_keep_their_expiry_and_replace_foreign_values() {
    let Some(url) = server_url(URL_VAR) else { return };
    let (store, mut raw, prefix) = store_and_raw(&url).await;
    let now = SystemClock.now();
    let minute = Duration::from_secs(60);
    let end = now.saturating_add(minute).as_unix_millis();
    let key = format!("{{{prefix}}}:ctr:c");

    store
        .increment_counters(&[Counter::new("c", minute, 1)], now)
        .await
        .expect("count");
    let opened: i64 = ask(&mut raw, "PTTL", &key).await;
    // The window's minute and the margin's, less the time since `now`.
    assert!(
        (60_000..=120_000).contains(&opened),
        "a new window's expiry: {opened} ms"
    );
    store
        .increment_counters(&[Counter::new("c", minute, 2)], now)
        .await
        .expect("count");
    let kept: i64 = ask(&mut raw, "PTTL", &key).await;
    assert!(
        kept > 0 && kept <= opened,
        "an increment keeps the expiry: {kept} ms"
    );
    let value: String = ask(&mut raw, "GET", &key).await;
    assert_eq!(value, format!("3:{end}"));

    let old = format!("{{{prefix}}}:ctr:h");
    let _: () = redis::cmd("HSET")
        .arg(&old)
        .arg("c")
        .arg(5)
        .arg("e")
        .arg(end)
        .query_async(&mut raw)
        .await
        .expect("hset");
    let counted = store
        .increment_counters(&[Counter::new("h", minute, 1)], now)
        .await
        .expect("a foreign value is replaced, not an error");
    assert_eq!(counted[0].count, 1, "a new window");
    let kind: String = ask(&mut raw, "TYPE", &old).await;
    assert_eq!(kind, "string");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .arg(&old)
        .query_async(&mut raw)
        .await
        .expect("del");
}
