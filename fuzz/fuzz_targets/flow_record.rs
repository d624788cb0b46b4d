//! `FlowRecord::from_bytes`, the blob every store keeps a flow in (SQLite
//! `flows.data`, PostgreSQL `otp_flows.data`, Redis hash field `d`).
//!
//! Decoding checks every field, so a decoded record re-encodes to exactly
//! the input (the format has one encoding per record; a record of the first
//! format, still read, re-encodes as the second, which only adds the byte
//! saying "no factor step"), and decodes again to itself:
//! decode(encode(x)) == x.
//!
//! Every decoded record also goes through the in-memory store, which keeps
//! flows in a packed form of its own: what it gives back must be the
//! record it was given.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use otp_recovery::PhoneNumber;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{CodeStore, MemoryStore, Newest};

/// The memory store's futures never wait.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the memory store waited"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(record) = FlowRecord::from_bytes(data) else {
        return;
    };
    let bytes = record.to_bytes();
    if data.starts_with(b"OR\x01") {
        let mut upgraded = data.to_vec();
        upgraded[2] = 2;
        upgraded.push(0);
        assert_eq!(
            bytes, upgraded,
            "a first-format record upgrades by its factor flag only"
        );
    } else {
        assert_eq!(bytes, data, "a record with two encodings");
    }
    assert_eq!(FlowRecord::from_bytes(&bytes).as_ref(), Ok(&record));

    // Only a valid account and phone get through, and never a decoy phone.
    assert_eq!(record.account().is_some(), record.phone.is_some());
    assert_eq!(record.is_decoy(), record.phone.is_none());
    if let Some(phone) = &record.phone {
        assert_eq!(PhoneNumber::parse(phone.as_str()).as_ref(), Ok(phone));
    }
    let store = MemoryStore::new();
    ready(store.create_flow(&record, Newest::None)).expect("an empty store takes any flow");
    assert_eq!(
        ready(store.get_flow(&record.id)).unwrap().as_ref(),
        Some(&record),
        "the memory store's packed form lost something"
    );

    // Debug shows no MAC.
    let debug = format!("{record:?}");
    assert!(
        !debug.contains("code_mac") && !debug.contains("token_mac"),
        "{debug}"
    );
});
