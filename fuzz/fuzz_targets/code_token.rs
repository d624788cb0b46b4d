//! `Code::parse` and `ResetToken::parse`: the two secrets a user sends back.
//!
//! A code is accepted exactly when it is 6 to 10 ASCII digits and reads back
//! unchanged; a token exactly when it is 96 lowercase hex characters, and
//! its text form is the input again (parse(display(x)) == x).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otp_recovery::{Code, InputError, ResetToken};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let code_ok = (6..=10).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    match Code::parse(text) {
        Ok(code) => {
            assert!(code_ok, "accepted a malformed code");
            assert_eq!(code.expose_secret(), text);
            assert_eq!(code.len(), text.len());
            assert_eq!(format!("{code:?}"), "[redacted]");
        }
        Err(e) => {
            assert!(!code_ok, "refused a well-formed code");
            assert_eq!(e, InputError::MalformedCode);
        }
    }

    let token_ok = text.len() == 96 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match ResetToken::parse(text) {
        Ok(token) => {
            assert!(token_ok, "accepted a malformed token");
            assert_eq!(token.expose_secret().as_str(), text);
            assert_eq!(token.flow_id().to_string(), text[..32]);
            let again = ResetToken::parse(&token.expose_secret()).expect("a token's own text parses");
            assert_eq!(again.expose_secret(), token.expose_secret());
            assert_eq!(format!("{token:?}"), "[redacted]");
        }
        Err(e) => {
            assert!(!token_ok, "refused a well-formed token");
            assert_eq!(e, InputError::MalformedToken);
        }
    }
});
