//! The identifier parsers: `FlowId::parse`, `SupportReference::parse`,
//! `AccountId::new`, `FlowState::from_str` and `Locale::from_tag`, each on
//! the same input, each checked to round-trip through its text form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otp_recovery::record::FlowState;
use otp_recovery::support::SupportReference;
use otp_recovery::{AccountId, FlowId, Locale};

const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let hex_ok = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match FlowId::parse(text) {
        Ok(id) => {
            assert!(hex_ok, "accepted a malformed flow id");
            assert_eq!(id.to_string(), text);
            assert_eq!(FlowId::from_bytes(*id.as_bytes()), id);
        }
        Err(_) => assert!(!hex_ok, "refused a well-formed flow id"),
    }

    if let Ok(reference) = SupportReference::parse(text) {
        let compact = reference.as_compact();
        assert_eq!(compact.len(), 8);
        assert!(compact.chars().all(|c| CROCKFORD.contains(c)), "{compact}");
        let shown = reference.to_string();
        assert_eq!(shown, format!("{}-{}", &compact[..4], &compact[4..]));
        assert_eq!(SupportReference::parse(&shown), Ok(reference));
        assert_eq!(SupportReference::parse(compact), Ok(reference));
        assert_eq!(SupportReference::parse(&shown.to_lowercase()), Ok(reference));
    }

    let account_ok = !text.is_empty() && text.len() <= 128 && !text.chars().any(char::is_control);
    match AccountId::new(text) {
        Ok(account) => {
            assert!(account_ok, "accepted a malformed account id");
            assert_eq!(account.as_str(), text);
            assert_eq!(account.to_string().parse::<AccountId>(), Ok(account));
        }
        Err(_) => assert!(!account_ok, "refused a well-formed account id"),
    }

    if let Ok(state) = text.parse::<FlowState>() {
        assert_eq!(state.as_str(), text);
        assert_eq!(FlowState::from_code(state.code()), Some(state));
    }
    if let Ok(code) = text.parse::<u8>()
        && let Some(state) = FlowState::from_code(code)
    {
        assert_eq!(state.code(), code);
    }

    if let Some(locale) = Locale::from_tag(text) {
        let tag = locale.as_str();
        assert!((2..=12).contains(&tag.len()), "{tag}");
        assert!(!tag.bytes().any(|b| b.is_ascii_uppercase() || b == b'_'), "{tag}");
        assert_eq!(Locale::from_tag(tag), Some(locale));
        assert_eq!(Locale::from_tag(&locale.to_string()), Some(locale));
        let language = locale.language();
        assert!(tag.starts_with(language.as_str()), "{tag}");
        assert_eq!(language.language(), language);
    }
});
