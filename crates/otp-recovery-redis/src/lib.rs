//! The Redis store (feature `redis`): flows, counters and support cases in
//! one Redis server, shared by every instance of the host.
//!
//! Every [`CodeStore`] method is one round trip: a single command, or one
//! `EVALSHA` of a Lua script where a step needs several commands. Redis runs
//! a script atomically, so a compare-and-swap, a supersede or a call's
//! counters are never interleaved with another instance's writes. Records
//! expire by themselves (native TTLs: flows and cases after their
//! `purge_after`, counters after the end of their window), and
//! [`purge_expired`](CodeStore::purge_expired) deletes the flows and cases
//! due by the host's clock (it counts the flows it deleted, not those Redis
//! expired before). Counters are left to their native TTL: a counter whose
//! window has ended reads as no window at all, so deleting it sooner would
//! change nothing but memory, and indexing every counter for the purge cost
//! more commands than the rest of a call's counting. The connection is a
//! [`ConnectionManager`], which reconnects by itself after a lost
//! connection (the call that saw the loss fails with a retryable error).
//!
//! ```no_run
//! use otp_recovery::sms::ConsoleSender;
//! use otp_recovery_redis::RedisStore;
//! use otp_recovery::{KeyRing, Recovery, ServerKey};
//!
//! # async fn demo(server_key: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379/")
//!     .await?
//!     .with_prefix("acme-recovery");
//! let keys = KeyRing::new(1, ServerKey::from_bytes(server_key)?);
//! let recovery = Recovery::new(store, ConsoleSender::new(), keys);
//! # let _ = recovery;
//! # Ok(())
//! # }
//! ```
//!
//! # Key layout
//!
//! Every key starts with the prefix in braces (default `{otp}:`), so a
//! store's keys all share one hash tag and live in one Redis Cluster slot:
//! every multi-key script is valid on a cluster. That trades sharding for
//! atomicity (one store's load goes to one shard); a host that needs more
//! throughput runs several stores under different prefixes (per tenant, per
//! region), each with its own limits. [`RedisStore::connect`] talks to one
//! server; for a cluster, hand a cluster connection (the redis crate's
//! `cluster-async` feature) to [`RedisStore::from_connection`]. (The crate's
//! own tests run against a single server.)
//!
//! | Key | Type | Holds | Expires |
//! |-----|------|-------|---------|
//! | `{otp}:flow:<flow id>` | hash | `d`: [`FlowRecord::to_bytes`]; `v`: its version; `l`: the subject's list key; `p`: `purge_after` (ms) | `purge_after` |
//! | `{otp}:subj:<Subject::key>` | list | the subject's 8 most recent flow ids, newest first | with its latest flow |
//! | `{otp}:ctr:<counter key>` | string | `<count>:<window end (ms)>` | window end |
//! | `{otp}:case:<reference>` | string | [`SupportCase::to_bytes`] | `purge_after` |
//! | `{otp}:idx:flows`, `idx:cases` | sorted set | flow ids, references, scored by when they are due | with their latest member |
//!
//! Native TTLs fire a minute after the instant in the last column, a margin
//! for a host clock behind the server's (see below).
//!
//! `v` is kept next to the record so that scripts compare versions without
//! decoding it (a record whose own version differs is
//! [`StoreError::Decode`]). `p` lets a swap that leaves `purge_after` as
//! it was skip the expiry and the index (a flow stored without `p` by an
//! earlier build takes the full path on its first swap). The sorted sets
//! let `purge_expired` find what is due by the host's `now`; each write to
//! one also drops its members
//! whose keys Redis has expired (score plus the margin before the server's
//! clock: one `ZREMRANGEBYSCORE`), so the indexes stay the size of the live
//! data even if `purge_expired` never runs.
//!
//! # Round trips
//!
//! | Method | Round trip |
//! |--------|------------|
//! | `create_flow` | `EVALSHA`: duplicate check, the newest flow compared (and replaced), insert, subject list, index |
//! | `get_flow` | `HMGET` |
//! | `load_counting` | `EVALSHA`: the flow (by id, or the subject's newest) and the counters (`HMGET` for a flow by id without counters) |
//! | `compare_and_swap` | `EVALSHA`: version check and write |
//! | `compare_and_swap_counting` | `EVALSHA`: version check, write and counters |
//! | `increment_counters` | `EVALSHA`: every counter in order, and the undo of a refused call's guarded increments (none for no counters) |
//! | `find_flows` | `EVALSHA`: the subject's list and its flows |
//! | `put_case` | `EVALSHA`: write and index |
//! | `get_case` | `GET` |
//! | `delete_counters` | `DEL` (none for no keys) |
//! | `purge_expired` | `EVALSHA` |
//!
//! The first call of a script on a server (and after a restart or `SCRIPT
//! FLUSH`) is answered `NOSCRIPT`; the redis crate then loads the script and
//! sends the `EVALSHA` again, once.
//!
//! # Clocks and versions
//!
//! Every decision (counter windows, what `purge_expired` deletes) uses the
//! `now` the crate passes in; native TTLs are measured by the Redis server's
//! clock and are only the safety net. They fire a minute late on purpose, so
//! a host clock up to a minute behind the server's never sees a window end
//! or a record vanish early; keep the clocks in sync (NTP).
//! Scripts call `TIME` before writing, and write counters with `SET`'s
//! `PXAT` and `KEEPTTL`: Redis 6.2 or later (tested with Redis 7.0).
//!
//! Errors never include a record, a key or a server error's text: only the
//! operation and the kind of failure. Connection, I/O, timeout, cluster and
//! loading errors are retryable; a flow or case key holding something that
//! is not the store's (wrong type, undecodable bytes) is
//! [`StoreError::Decode`]. A counter key holding anything but a counter
//! reads as no window, and the next increment replaces it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Entry points for the fuzz targets in `fuzz/` (`--cfg fuzzing` only):
/// the store's private decoding of what Redis answers.
#[cfg(fuzzing)]
pub mod fuzzing {
    use otp_recovery::FlowId;
    use otp_recovery::record::FlowRecord;
    use otp_recovery::store::{CounterValue, StoreError};
    pub use redis::Value as RedisValue;

    /// The decoding of a flow hash read with `HMGET d v`.
    pub fn redis_flow(id: &FlowId, fields: RedisValue) -> Result<Option<FlowRecord>, StoreError> {
        crate::flow_from_fields("fuzz", id, fields)
    }

    /// The decoding of the `count, window end` pairs of `n` counters that
    /// the scripts return.
    pub fn redis_counters(value: &RedisValue, n: usize) -> Result<Vec<CounterValue>, StoreError> {
        crate::counter_values("fuzz", value, n)
    }
}

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{ScriptInvocation, Value};

use otp_recovery::FlowId;
use otp_recovery::Timestamp;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result, StoreError};
use otp_recovery::support::{SupportCase, SupportReference};

mod replies;
mod scripts;

use replies::{
    array, as_bytes, as_u64, counter_values, expire_at, flow_from_fields, listed_id, redis_error, unexpected,
};
use scripts::{COUNT, CREATE, FIND, LOAD, LOAD_NEWEST, PURGE, PUT_CASE, SWAP};

/// The default key prefix.
const DEFAULT_PREFIX: &str = "otp";
/// Flows remembered per subject for `find_flows` (as the memory store).
const RECENT_PER_SUBJECT: usize = 8;
/// Latest instant handed to Redis as an expiry: 2^53 ms (year 287,396),
/// exact in Lua's numbers and in Redis' expiry arithmetic.
const MAX_REDIS_MILLIS: u64 = 1 << 53;
/// Native TTLs fire this long after the instant they stand for, so that a
/// host clock somewhat behind the server's never sees a record or a window
/// vanish early; `purge_expired` still deletes at the instant itself.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);
/// How long a command may wait for its reply (the connection manager's
/// default of 0.5 s is short for a busy host).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`CodeStore`] in Redis; see the [module documentation](self) for the
/// key layout and the round trips.
///
/// Cloning is cheap and clones share the connection. `C` is the connection:
/// a [`ConnectionManager`] from [`RedisStore::connect`], or any
/// [`ConnectionLike`] handed to [`RedisStore::from_connection`] (for example
/// a cluster connection of the redis crate's `cluster-async` feature).
#[derive(Clone)]
pub struct RedisStore<C = ConnectionManager> {
    conn: C,
    prefix: String,
    /// `{prefix}:`, what every key starts with.
    base: String,
}

/// The prefix only: no connection details (they may hold a password).
impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = DEFAULT_PREFIX;

    /// Connects to the server at `url` (`redis://[user:password@]host:port/db`,
    /// `rediss://` for TLS if the redis crate was built with it) through a
    /// [`ConnectionManager`], which reconnects after a lost connection.
    /// Replies are awaited up to 5 seconds; use
    /// [`RedisStore::from_connection`] for other settings.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the URL is invalid (not retryable) or the
    /// server cannot be reached (retryable).
    pub async fn connect(url: &str) -> Result<RedisStore> {
        let client = redis::Client::open(url).map_err(|e| redis_error("connect", &e))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECTION_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| redis_error("connect", &e))?;
        Ok(RedisStore::from_connection(conn))
    }
}

impl<C> RedisStore<C> {
    /// A store over an established connection, with the default prefix.
    pub fn from_connection(conn: C) -> Self {
        RedisStore {
            conn,
            prefix: DEFAULT_PREFIX.to_owned(),
            base: format!("{{{DEFAULT_PREFIX}}}:"),
        }
    }

    /// Puts every key under `{prefix}:` instead of `{otp}:`: stores with
    /// different prefixes are independent (and may live in different
    /// cluster slots).
    ///
    /// # Panics
    /// If `prefix` is empty or contains `{` or `}` (it is the hash tag).
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        assert!(
            !prefix.is_empty() && !prefix.contains(['{', '}']),
            "a Redis store prefix must be non-empty and free of braces"
        );
        self.prefix = prefix.to_owned();
        self.base = format!("{{{prefix}}}:");
        self
    }

    /// The key prefix (without braces).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn flow_key(&self, id: &FlowId) -> String {
        format!("{}flow:{id}", self.base)
    }

    fn subject_key(&self, subject_key: &str) -> String {
        format!("{}subj:{subject_key}", self.base)
    }

    fn counter_key(&self, key: &str) -> String {
        format!("{}ctr:{key}", self.base)
    }

    fn case_key(&self, reference: &SupportReference) -> String {
        format!("{}case:{}", self.base, reference.as_compact())
    }

    fn index_key(&self, kind: &str) -> String {
        format!("{}idx:{kind}", self.base)
    }

    /// Adds `counters` as `KEYS` and six `ARGV` each (increment, end of a
    /// window opened now, its expiry, condition, max, guarded), as
    /// `counters()` in Lua reads them.
    fn add_counters(&self, inv: &mut ScriptInvocation<'_>, counters: &[Counter], now: Timestamp) {
        for (i, c) in counters.iter().enumerate() {
            let end = c.window_end_from(now);
            // 0: unconditional; j + 1: the earlier counter j must have
            // opened; -1: names no earlier counter, so never holds.
            let condition = match c.only_if_opened {
                None => 0,
                Some(j) if j < i => i64::try_from(j + 1).unwrap_or(-1),
                Some(_) => -1,
            };
            // Counts never reach 2^53, so a larger max is no limit.
            let max = c
                .max
                .map_or(-1, |max| i64::try_from(max.min(MAX_REDIS_MILLIS)).unwrap_or(-1));
            inv.key(self.counter_key(&c.key))
                .arg(c.by)
                .arg(end.as_unix_millis())
                .arg(expire_at(end))
                .arg(condition)
                .arg(max)
                .arg(u8::from(c.guarded));
        }
    }
}

impl<C: ConnectionLike + Clone + Send + Sync> RedisStore<C> {
    async fn invoke(&self, op: &'static str, inv: &ScriptInvocation<'_>) -> Result<Value> {
        let mut conn = self.conn.clone();
        inv.invoke_async::<Value>(&mut conn)
            .await
            .map_err(|e| redis_error(op, &e))
    }

    async fn query(&self, op: &'static str, cmd: &redis::Cmd) -> Result<Value> {
        let mut conn = self.conn.clone();
        cmd.query_async::<Value>(&mut conn)
            .await
            .map_err(|e| redis_error(op, &e))
    }

    /// Swaps, and counts if it wrote: the one script behind both swaps.
    async fn swap(
        &self,
        op: &'static str,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        let mut inv = SWAP.prepare_invoke();
        inv.key(self.flow_key(&flow.id))
            .key(self.subject_key(&flow.subject.key()))
            .key(self.index_key("flows"))
            .arg(&self.base)
            .arg(now.as_unix_millis())
            .arg(counters.len())
            .arg(expected_version)
            .arg(flow.to_bytes())
            .arg(flow.version)
            .arg(flow.purge_after.as_unix_millis())
            .arg(expire_at(flow.purge_after))
            .arg(flow.id.to_string());
        self.add_counters(&mut inv, counters, now);
        let reply = array(op, self.invoke(op, &inv).await?)?;
        match reply.as_slice() {
            [flag] if as_u64(flag) == Some(0) => Ok(None),
            [flag, values] if as_u64(flag) == Some(1) => {
                Ok(Some(counter_values(op, values, counters.len())?))
            }
            _ => Err(unexpected(op)),
        }
    }
}

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> CodeStore for RedisStore<C> {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        let op = "create_flow";
        let mut inv = CREATE.prepare_invoke();
        inv.key(self.flow_key(&flow.id))
            .key(self.subject_key(&flow.subject.key()))
            .key(self.index_key("flows"))
            .arg(&self.base)
            .arg(flow.id.to_string())
            .arg(flow.to_bytes())
            .arg(flow.version)
            .arg(flow.purge_after.as_unix_millis())
            .arg(expire_at(flow.purge_after))
            .arg(RECENT_PER_SUBJECT);
        match newest.expected() {
            Some((id, version)) => inv.arg(id.to_string()).arg(version),
            None => inv.arg("").arg(""),
        };
        match newest.replacement() {
            Some(next) => inv
                .arg(next.to_bytes())
                .arg(next.version)
                .arg(next.purge_after.as_unix_millis())
                .arg(expire_at(next.purge_after)),
            None => inv.arg("").arg("").arg("").arg(""),
        };
        let reply = array(op, self.invoke(op, &inv).await?)?;
        match reply.as_slice() {
            [flag] if as_u64(flag) == Some(2) => Ok(Created::Inserted),
            [flag] if as_u64(flag) == Some(1) => Ok(Created::Stale(None)),
            [flag] if as_u64(flag) == Some(0) => Err(StoreError::Duplicate),
            [flag, id, fields] if as_u64(flag) == Some(1) => {
                let id = listed_id(id)?;
                Ok(Created::Stale(flow_from_fields(op, &id, fields.clone())?))
            }
            _ => Err(unexpected(op)),
        }
    }

    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        let op = "get_flow";
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.flow_key(id)).arg(&["d", "v"]);
        flow_from_fields(op, id, self.query(op, &cmd).await?)
    }

    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        let op = "load_counting";
        let mut inv = match load {
            Load::Flow(id) if counters.is_empty() => return Ok((self.get_flow(id).await?, Vec::new())),
            Load::Flow(id) => {
                let mut inv = LOAD.prepare_invoke();
                inv.key(self.flow_key(id));
                inv
            }
            Load::Newest(subject) => {
                let mut inv = LOAD_NEWEST.prepare_invoke();
                inv.key(self.subject_key(&subject.key()));
                inv
            }
        };
        inv.arg(&self.base).arg(now.as_unix_millis()).arg(counters.len());
        self.add_counters(&mut inv, counters, now);
        let reply = array(op, self.invoke(op, &inv).await?)?;
        let (flow, values) = match (load, <[Value; 3]>::try_from(reply)) {
            (Load::Flow(id), Err(reply)) => {
                let [fields, values]: [Value; 2] = reply.try_into().map_err(|_| unexpected(op))?;
                (flow_from_fields(op, id, fields)?, values)
            }
            (Load::Newest(_), Ok([id, fields, values])) => {
                let flow = match as_bytes(&id) {
                    Some([]) => None,
                    _ => flow_from_fields(op, &listed_id(&id)?, fields)?,
                };
                (flow, values)
            }
            _ => return Err(unexpected(op)),
        };
        Ok((flow, counter_values(op, &values, counters.len())?))
    }

    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let op = "find_flows";
        let mut inv = FIND.prepare_invoke();
        inv.key(self.subject_key(subject_key))
            .arg(&self.base)
            .arg(limit.min(RECENT_PER_SUBJECT));
        let mut flows = Vec::new();
        for entry in array(op, self.invoke(op, &inv).await?)? {
            let [id, fields]: [Value; 2] = array(op, entry)?.try_into().map_err(|_| unexpected(op))?;
            let id = listed_id(&id)?;
            flows.extend(flow_from_fields(op, &id, fields)?);
        }
        Ok(flows)
    }

    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        let op = "put_case";
        let mut inv = PUT_CASE.prepare_invoke();
        inv.key(self.case_key(&case.reference))
            .key(self.index_key("cases"))
            .arg(&self.base)
            .arg(case.to_bytes())
            .arg(case.purge_after.as_unix_millis())
            .arg(expire_at(case.purge_after))
            .arg(case.reference.as_compact());
        self.invoke(op, &inv).await.map(drop)
    }

    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        let op = "get_case";
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.case_key(reference));
        match self.query(op, &cmd).await? {
            Value::Nil => Ok(None),
            value => {
                let bytes = as_bytes(&value).ok_or_else(|| unexpected(op))?;
                let case = SupportCase::from_bytes(bytes)?;
                if case.reference != *reference {
                    return Err(StoreError::Decode("a case stored under another reference".into()));
                }
                Ok(Some(case))
            }
        }
    }

    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("DEL");
        for key in keys {
            cmd.arg(self.counter_key(key));
        }
        self.query("delete_counters", &cmd).await.map(drop)
    }

    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        let swapped = self
            .swap("compare_and_swap", expected_version, flow, &[], flow.updated_at)
            .await?;
        Ok(swapped.is_some())
    }

    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        self.swap("compare_and_swap_counting", expected_version, flow, counters, now)
            .await
    }

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        if counters.is_empty() {
            return Ok(Vec::new());
        }
        let op = "increment_counters";
        let mut inv = COUNT.prepare_invoke();
        inv.arg(&self.base).arg(now.as_unix_millis()).arg(counters.len());
        self.add_counters(&mut inv, counters, now);
        let reply = self.invoke(op, &inv).await?;
        counter_values(op, &reply, counters.len())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let op = "purge_expired";
        let mut inv = PURGE.prepare_invoke();
        inv.key(self.index_key("flows"))
            .key(self.index_key("cases"))
            .arg(&self.base)
            .arg(now.as_unix_millis());
        as_u64(&self.invoke(op, &inv).await?).ok_or_else(|| unexpected(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_prefix_as_its_only_hash_tag() {
        let store = RedisStore::from_connection(()).with_prefix("tenant-7");
        let id = FlowId::from_bytes([0xab; 16]);
        for key in [
            store.flow_key(&id),
            store.subject_key("account:{weird}"),
            store.counter_key("send:{x}"),
            store.index_key("flows"),
        ] {
            assert!(key.starts_with("{tenant-7}:"), "{key}");
        }
        assert_eq!(store.flow_key(&id), format!("{{tenant-7}}:flow:{id}"));
        assert_eq!(format!("{store:?}"), r#"RedisStore { prefix: "tenant-7", .. }"#);
    }

    #[test]
    #[should_panic(expected = "free of braces")]
    fn a_prefix_with_braces_is_refused() {
        let _ = RedisStore::from_connection(()).with_prefix("a}b");
    }

    #[test]
    fn replies_that_are_not_a_flow_are_typed_errors() {
        let id = FlowId::from_bytes([1; 16]);
        let nil = || Value::Nil;
        assert_eq!(
            flow_from_fields("t", &id, Value::Array(vec![nil(), nil()])),
            Ok(None)
        );
        let garbage = Value::Array(vec![
            Value::BulkString(b"garbage".to_vec()),
            Value::BulkString(b"1".to_vec()),
        ]);
        assert!(matches!(
            flow_from_fields("t", &id, garbage),
            Err(StoreError::Decode(_))
        ));
        let partial = Value::Array(vec![nil(), Value::BulkString(b"1".to_vec())]);
        assert!(matches!(
            flow_from_fields("t", &id, partial),
            Err(StoreError::Decode(_))
        ));
        assert!(matches!(
            flow_from_fields("t", &id, Value::Int(3)),
            Err(StoreError::Backend { retryable: false, .. })
        ));
        assert!(counter_values("t", &Value::Array(vec![Value::Int(1)]), 1).is_err());
        assert_eq!(
            counter_values(
                "t",
                &Value::Array(vec![
                    Value::Int(0),
                    Value::BulkString(Vec::new()),
                    Value::Int(2),
                    Value::BulkString(b"1234".to_vec()),
                ]),
                2
            ),
            Ok(vec![
                CounterValue::default(),
                CounterValue::new(2, Some(Timestamp::from_unix_millis(1234)))
            ])
        );
    }
}
