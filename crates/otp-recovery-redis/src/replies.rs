//! Reading the server's replies: flows from their hash fields, counter
//! values, and Redis errors as typed store errors.

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use otp_recovery::FlowId;
use otp_recovery::Timestamp;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{CounterValue, Result, StoreError};

use crate::{CLOCK_MARGIN, MAX_REDIS_MILLIS};

/// When the native TTL of something due at `t` fires: [`CLOCK_MARGIN`]
/// later, at most [`MAX_REDIS_MILLIS`].
pub(crate) fn expire_at(t: Timestamp) -> u64 {
    t.saturating_add(CLOCK_MARGIN)
        .as_unix_millis()
        .min(MAX_REDIS_MILLIS)
}

pub(crate) fn unexpected(op: &str) -> StoreError {
    StoreError::backend(format!("redis {op}: unexpected reply"), false)
}

pub(crate) fn array(op: &str, value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(unexpected(op)),
    }
}

pub(crate) fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn decimal(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

pub(crate) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => decimal(as_bytes(other)?),
    }
}

/// A flow from its fields `d`, `v` (`HMGET` order; nil or empty
/// when missing): `None` when the flow does not exist.
pub(crate) fn flow_from_fields(op: &str, id: &FlowId, fields: Value) -> Result<Option<FlowRecord>> {
    let fields = array(op, fields)?;
    if fields.iter().all(|f| matches!(f, Value::Nil)) {
        return Ok(None);
    }
    let [d, v]: [Value; 2] = fields.try_into().map_err(|_| unexpected(op))?;
    let flow = FlowRecord::from_bytes(field(&d).ok_or(incomplete())?)?;
    if flow.id != *id {
        return Err(StoreError::Decode("a flow record stored under another id".into()));
    }
    // `v` is what the scripts compare: a record whose own version differs
    // was written by something else.
    if field(&v).and_then(decimal) != Some(flow.version) {
        return Err(StoreError::Decode("invalid stored version".into()));
    }
    Ok(Some(flow))
}

/// A flow id as a subject list holds it.
pub(crate) fn listed_id(id: &Value) -> Result<FlowId> {
    as_bytes(id)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| FlowId::parse(s).ok())
        .ok_or_else(|| StoreError::Decode("a subject lists an invalid flow id".into()))
}

/// A field's bytes; `None` when nil or empty (what scripts send for a
/// missing field).
pub(crate) fn field(value: &Value) -> Option<&[u8]> {
    as_bytes(value).filter(|b| !b.is_empty())
}

pub(crate) fn incomplete() -> StoreError {
    StoreError::Decode("incomplete flow record".into())
}

/// Counter values from `count, window end` pairs (an empty end: no window).
pub(crate) fn counter_values(op: &str, value: &Value, n: usize) -> Result<Vec<CounterValue>> {
    let Value::Array(items) = value else {
        return Err(unexpected(op));
    };
    if items.len() != 2 * n {
        return Err(unexpected(op));
    }
    items
        .chunks_exact(2)
        .map(|pair| {
            let count = as_u64(&pair[0]).ok_or_else(|| unexpected(op))?;
            let end = as_bytes(&pair[1]).ok_or_else(|| unexpected(op))?;
            let resets_at = match end {
                [] => None,
                digits => Some(Timestamp::from_unix_millis(
                    decimal(digits).ok_or_else(|| unexpected(op))?,
                )),
            };
            Ok(CounterValue::new(count, resets_at))
        })
        .collect()
}

/// A store error for a failed Redis call: the operation and the kind of
/// failure, never the server's text (it may quote arguments).
pub(crate) fn redis_error(op: &str, e: &RedisError) -> StoreError {
    let wrong_type = e.code() == Some("WRONGTYPE") || e.detail().is_some_and(|d| d.contains("WRONGTYPE"));
    if wrong_type {
        return StoreError::Decode(format!("a key of the store holds foreign data ({op})"));
    }
    let server_retryable = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ) | ErrorKind::ClusterConnectionNotFound
    ) || e.code() == Some("BUSY");
    let retryable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || server_retryable;
    let what = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connection_refusal() {
        "connection refused".to_owned()
    } else if e.is_connection_dropped() {
        "connection lost".to_owned()
    } else {
        match (e.category(), e.code()) {
            ("", Some(code)) => code.to_owned(),
            (category, Some(code)) => format!("{category} ({code})"),
            (category, None) => category.to_owned(),
        }
    };
    StoreError::backend(format!("redis {op}: {what}"), retryable)
}
