//! Each store's own decoding of what its database returns: the SQLite and
//! PostgreSQL row columns around the record blob, the Redis flow hash and
//! the counter replies of all three. The decoders are private to the
//! stores and reached through each adapter crate's `fuzzing` module (`--cfg fuzzing`).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use otp_recovery::record::FlowRecord;
use otp_recovery::{FlowId, Timestamp};
use otp_recovery_redis::fuzzing::{self as redis_fuzzing, RedisValue};
use otp_recovery_sqlx::fuzzing;

/// A valid record (fuzz/seeds/make_seeds.py), so that the decoders'
/// paths after the blob are reached from the first run: flow id `09` x 16.
const SAMPLE_HEX: &str = "4f5201090909090909090909090909090909090107757365722d34320c2b3134313535353530313233020000000000000007000000030101010101010101010101010101010101010101010101010101010101010101000000000000000a000000000000000b000000000000000c000000000000000d000000020000000400000003010202020202020202020202020202020202020202020202020202020202020202000000000000000e000000000000000f";
const SAMPLE_ID: [u8; 16] = [9; 16];

/// A row's blob: arbitrary bytes, or the sample record with one byte
/// changed (or none).
#[derive(Debug, Arbitrary)]
enum Blob<'a> {
    Raw(&'a [u8]),
    Sample { at: u16, xor: u8 },
}

impl Blob<'_> {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Blob::Raw(b) => b.to_vec(),
            Blob::Sample { at, xor } => {
                let mut b: Vec<u8> = (0..SAMPLE_HEX.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&SAMPLE_HEX[i..i + 2], 16).expect("hex"))
                    .collect();
                let i = usize::from(*at) % b.len();
                b[i] ^= xor;
                b
            }
        }
    }
}

/// A row's id column: arbitrary bytes or the sample's id.
#[derive(Debug, Arbitrary)]
enum Id<'a> {
    Raw(&'a [u8]),
    Sample,
}

impl Id<'_> {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Id::Raw(b) => b.to_vec(),
            Id::Sample => SAMPLE_ID.to_vec(),
        }
    }
}

/// A Redis reply, two levels deep at most (what the store's commands and
/// scripts return).
#[derive(Debug, Arbitrary)]
enum Reply {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Okay,
    Array(Vec<Leaf>),
}

#[derive(Debug, Arbitrary)]
enum Leaf {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
}

impl Leaf {
    fn value(&self) -> RedisValue {
        match self {
            Leaf::Nil => RedisValue::Nil,
            Leaf::Int(n) => RedisValue::Int(*n),
            Leaf::Bulk(b) => RedisValue::BulkString(b.clone()),
            Leaf::Simple(s) => RedisValue::SimpleString(s.clone()),
        }
    }
}

impl Reply {
    fn value(&self) -> RedisValue {
        match self {
            Reply::Nil => RedisValue::Nil,
            Reply::Int(n) => RedisValue::Int(*n),
            Reply::Bulk(b) => RedisValue::BulkString(b.clone()),
            Reply::Simple(s) => RedisValue::SimpleString(s.clone()),
            Reply::Okay => RedisValue::Okay,
            Reply::Array(items) => RedisValue::Array(items.iter().map(Leaf::value).collect()),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    SqliteFlow {
        id: Id<'a>,
        data: Blob<'a>,
    },
    SqliteCounter {
        count: i64,
        resets_at: i64,
    },
    PostgresFlow {
        id: Id<'a>,
        data: Blob<'a>,
        version: i64,
    },
    PostgresCounters {
        counts: Vec<Option<i64>>,
        resets: Vec<Option<i64>>,
        n: u8,
    },
    /// `HMGET d v`, the blob and the version kept beside it.
    RedisFlow {
        sample_id: bool,
        id: [u8; 16],
        d: Blob<'a>,
        v: Leaf,
    },
    RedisHash {
        id: [u8; 16],
        reply: Reply,
    },
    RedisCounters {
        reply: Reply,
        n: u8,
    },
}

/// Decimal text of a Redis field, as the store reads it.
fn decimal(leaf: &Leaf) -> Option<u64> {
    let text = match leaf {
        Leaf::Bulk(b) => std::str::from_utf8(b).ok()?,
        Leaf::Simple(s) => s.as_str(),
        Leaf::Nil | Leaf::Int(_) => return None,
    };
    text.parse().ok()
}

fuzz_target!(|input: Input<'_>| match input {
    Input::SqliteFlow { id, data } => {
        let (id, data) = (&id.bytes()[..], &data.bytes()[..]);
        if let Ok(flow) = fuzzing::sqlite_flow(id, data) {
            // The row is the blob, under its own id.
            assert_eq!(flow.id.as_bytes().as_slice(), id);
            assert_eq!(FlowRecord::from_bytes(data).as_ref(), Ok(&flow));
        }
    }
    Input::SqliteCounter { count, resets_at } => match fuzzing::sqlite_counter(count, resets_at) {
        Ok(value) => {
            let back = |v: u64| {
                if v == u64::MAX {
                    i64::MAX
                } else {
                    i64::try_from(v).unwrap()
                }
            };
            assert_eq!(back(value.count), count);
            assert_eq!(value.resets_at.map(|t| back(t.as_unix_millis())), Some(resets_at));
        }
        Err(_) => assert!(count < 0 || resets_at < 0),
    },
    Input::PostgresFlow { id, data, version } => {
        let (id, data) = (&id.bytes()[..], &data.bytes()[..]);
        if let Ok(flow) = fuzzing::postgres_flow(id, data, version) {
            // The blob, under its own id and version.
            assert_eq!(flow.id.as_bytes().as_slice(), id);
            assert_eq!(i64::try_from(flow.version), Ok(version));
            assert_eq!(FlowRecord::from_bytes(data).as_ref(), Ok(&flow));
        }
    }
    Input::PostgresCounters { counts, resets, n } => {
        let n = usize::from(n);
        let lengths_ok = counts.len() == n && resets.len() == n;
        let all_ok = lengths_ok && counts.iter().chain(&resets).all(|v| v.is_none_or(|v| v >= 0));
        match fuzzing::postgres_counters(counts.clone(), resets.clone(), n) {
            Ok(values) => {
                assert!(all_ok);
                // One value per counter: the caller indexes them.
                assert_eq!(values.len(), n);
                for (value, (count, reset)) in values.iter().zip(counts.iter().zip(&resets)) {
                    assert_eq!(Some(value.count), u64::try_from(count.unwrap_or(0)).ok());
                    assert_eq!(
                        value.resets_at,
                        reset.map(|r| Timestamp::from_unix_millis(r as u64))
                    );
                }
            }
            Err(_) => assert!(!all_ok),
        }
    }
    Input::RedisFlow { sample_id, id, d, v } => {
        let id = FlowId::from_bytes(if sample_id { SAMPLE_ID } else { id });
        let d = &d.bytes()[..];
        let fields = RedisValue::Array(vec![RedisValue::BulkString(d.to_vec()), v.value()]);
        match redis_fuzzing::redis_flow(&id, fields) {
            Ok(Some(flow)) => {
                assert_eq!(flow.id, id);
                assert_eq!(Some(flow.version), decimal(&v));
                assert_eq!(FlowRecord::from_bytes(d).as_ref(), Ok(&flow));
            }
            Ok(None) => panic!("a flow with its blob read as missing"),
            Err(_) => {}
        }
    }
    Input::RedisHash { id, reply } => {
        let id = FlowId::from_bytes(id);
        let all_nil = matches!(&reply, Reply::Array(items) if items.iter().all(|l| matches!(l, Leaf::Nil)));
        match redis_fuzzing::redis_flow(&id, reply.value()) {
            Ok(None) => assert!(all_nil),
            Ok(Some(flow)) => assert_eq!(flow.id, id),
            Err(_) => assert!(!all_nil),
        }
    }
    Input::RedisCounters { reply, n } => {
        if let Ok(values) = redis_fuzzing::redis_counters(&reply.value(), usize::from(n)) {
            assert_eq!(values.len(), usize::from(n));
        }
    }
});
