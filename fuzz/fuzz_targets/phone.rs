//! `PhoneNumber::parse`: strict E.164 with an assigned country code, and
//! the masked form that must never show the number whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otp_recovery::{PhoneNumber, is_country_code};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(phone) = PhoneNumber::parse(text) else {
        let digits = text.strip_prefix('+').unwrap_or("");
        // Anything accepted must look like E.164; the converse is checked
        // by the unit tests (assigned codes, minimum national length).
        assert!(
            !(text.starts_with('+')
                && (7..=15).contains(&digits.len())
                && digits.starts_with('1')
                && digits.bytes().all(|b| b.is_ascii_digit())),
            "refused a NANP number {text:?}"
        );
        return;
    };
    let digits = &text[1..];
    assert!(text.starts_with('+'));
    assert!((7..=15).contains(&digits.len()));
    assert!(digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'));

    // parse(display(x)) == x.
    assert_eq!(phone.as_str(), text);
    assert_eq!(PhoneNumber::parse(phone.as_str()).as_ref(), Ok(&phone));

    let code = phone.country_code();
    assert!(is_country_code(code), "{code}");
    let national = phone.national_number();
    assert_eq!(format!("+{code}{national}"), text);
    assert!(national.len() >= 4);

    let masked = phone.masked();
    assert_eq!(masked.country_code(), code);
    let shown = masked.to_string();
    let shown_digits = if national.len() >= 8 { 4 } else { 2 };
    let prefix = format!("+{code} ");
    assert!(shown.starts_with(&prefix), "{shown}");
    assert!(
        shown.ends_with(&national[national.len() - shown_digits..]),
        "{shown}"
    );
    let hidden = shown.bytes().filter(|&b| b == b'*').count();
    assert_eq!(hidden, national.len() - shown_digits, "{shown}");
    assert!(!shown.contains(national), "{shown}");
    assert!(!format!("{phone:?}").contains(national));
});
