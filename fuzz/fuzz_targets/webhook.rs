//! `webhook::verify_request`, the receiver's check of a signed request.
//!
//! Nothing but the exact signature of the timestamp header and body under
//! the secret is accepted, and only within the tolerance; what the sender
//! signs always verifies, and any change to the body breaks it.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use otp_recovery::ServerKey;
use otp_recovery_gateways::webhook::{VerifyError, WebhookSecret, sign_request, verify_request};

#[derive(Debug, Arbitrary)]
struct Input {
    secret: [u8; 32],
    longer_secret: Vec<u8>,
    signature: String,
    timestamp: String,
    body: Vec<u8>,
    now_secs: u64,
    tolerance_secs: u16,
    flip: usize,
}

fn secret(input: &Input) -> WebhookSecret {
    let mut bytes = input.secret.to_vec();
    bytes.extend_from_slice(&input.longer_secret);
    WebhookSecret::from(ServerKey::from_bytes(bytes).expect("32 bytes or more"))
}

fuzz_target!(|input: Input| {
    let secret = secret(&input);
    let Some(now) = UNIX_EPOCH.checked_add(Duration::from_secs(input.now_secs)) else {
        return;
    };
    let tolerance = Duration::from_secs(u64::from(input.tolerance_secs));

    // Arbitrary headers: accepted only when they are the real signature.
    let verdict = verify_request(
        &secret,
        &input.signature,
        &input.timestamp,
        &input.body,
        now,
        tolerance,
    );
    let timestamp_ok = !input.timestamp.is_empty()
        && input.timestamp.len() <= 20
        && input.timestamp.bytes().all(|b| b.is_ascii_digit());
    let parsed = input.timestamp.parse::<u64>().ok().filter(|_| timestamp_ok);
    match verdict {
        Ok(ts) => {
            assert_eq!(Some(ts), parsed);
            assert!(ts.abs_diff(input.now_secs) <= tolerance.as_secs());
            assert_eq!(
                input.signature,
                sign_request(&secret, &input.timestamp, &input.body),
                "forgery"
            );
        }
        Err(VerifyError::MalformedTimestamp) => assert!(parsed.is_none()),
        Err(VerifyError::Stale) => {
            assert!(parsed.is_some_and(|ts| ts.abs_diff(input.now_secs) > tolerance.as_secs()));
        }
        Err(VerifyError::MalformedSignature | VerifyError::BadSignature) => {
            assert!(parsed.is_some_and(|ts| ts.abs_diff(input.now_secs) <= tolerance.as_secs()));
            assert_ne!(
                input.signature,
                sign_request(&secret, &input.timestamp, &input.body)
            );
        }
        Err(other) => panic!("an unexpected refusal {other:?}"),
    }

    // A request as the sender signs it verifies at its own time...
    let Some(ts) = parsed else {
        return;
    };
    let Some(signed_at) = UNIX_EPOCH.checked_add(Duration::from_secs(ts)) else {
        return;
    };
    let signature = sign_request(&secret, &input.timestamp, &input.body);
    assert_eq!(
        verify_request(
            &secret,
            &signature,
            &input.timestamp,
            &input.body,
            signed_at,
            Duration::ZERO
        ),
        Ok(ts)
    );
    // ...and not once one bit of the body changes.
    if !input.body.is_empty() {
        let mut tampered = input.body.clone();
        let i = input.flip % tampered.len();
        tampered[i] ^= 1 << (input.flip % 8);
        assert_eq!(
            verify_request(
                &secret,
                &signature,
                &input.timestamp,
                &tampered,
                signed_at,
                Duration::ZERO
            ),
            Err(VerifyError::BadSignature)
        );
    }
});
