//! `SupportCase::from_bytes`, the blob every store keeps a locked case in.
//!
//! A decoded case re-encodes to the input but for the reference, which is
//! read as leniently as a person types it and written in its one canonical
//! form; decode(encode(x)) == x always.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otp_recovery::support::SupportCase;

fuzz_target!(|data: &[u8]| {
    let Ok(case) = SupportCase::from_bytes(data) else {
        return;
    };
    let bytes = case.to_bytes();
    assert_eq!(bytes.len(), data.len());
    assert_eq!(bytes[..3], data[..3]);
    assert_eq!(&bytes[3..11], case.reference.as_compact().as_bytes());
    assert_eq!(bytes[11..], data[11..], "a case with two encodings");
    assert_eq!(SupportCase::from_bytes(&bytes).as_ref(), Ok(&case));
});
