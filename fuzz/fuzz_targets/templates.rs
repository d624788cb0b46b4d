//! `Messages::builder(..).build()` with arbitrary settings and templates,
//! then rendering, and `Segments::of` on any text.
//!
//! Whatever `build` accepts must render every message, with every value it
//! can take, within the segment budget it checked, and within the buffer
//! that is sized so the code is never copied by a reallocation.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use otp_recovery::support::SupportReference;
use otp_recovery::{Code, Encoding, FlowId, Locale, Messages, Segments, Templates, Timestamp};

/// The last instant whose `{until}` has a four-digit year.
const MAX_UNTIL_MILLIS: u64 = 253_402_300_799_000;
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#[derive(Debug, Arbitrary)]
struct Input {
    app_name: String,
    default_locale: String,
    custom: Vec<(String, [String; 4])>,
    webotp_domain: Option<String>,
    link_base: Option<String>,
    support_contact: Option<String>,
    max_segments: u8,
    // The values of one rendering.
    requested_locale: Option<String>,
    code_digits: u64,
    code_len: u8,
    ttl_secs: u16,
    flow: [u8; 16],
    until: u64,
    reference: [u8; 8],
    // Any text, for the segment counter alone.
    text: String,
}

fuzz_target!(|input: Input| {
    check_segments(&input.text);

    let mut builder = Messages::builder(input.app_name.clone());
    if let Some(locale) = Locale::from_tag(&input.default_locale) {
        builder = builder.locale(locale);
    }
    for (tag, [code, changed, locked, support]) in input.custom.iter().take(4) {
        if let Some(locale) = Locale::from_tag(tag) {
            builder = builder.templates(locale, Templates::new(code, changed, locked, support));
        }
    }
    if let Some(domain) = &input.webotp_domain {
        builder = builder.webotp_domain(domain);
    }
    if let Some(base) = &input.link_base {
        builder = builder.link_base(base);
    }
    if let Some(contact) = &input.support_contact {
        builder = builder.support_contact(contact);
    }
    let Ok(messages) = builder.max_segments(input.max_segments).build() else {
        return;
    };
    let budget = usize::from(input.max_segments);
    assert!((1..=4).contains(&budget));
    assert_eq!(messages.app_name(), input.app_name);

    // The values a flow can carry: 6 to 10 digits, a policy's TTL (1 to
    // 10 minutes), any flow id, a lock end up to the year 9999.
    let len = 6 + usize::from(input.code_len % 5);
    let digits = format!("{:010}", input.code_digits % 10_000_000_000);
    let code = Code::parse(&digits[..len]).expect("digits");
    let ttl = Duration::from_secs(60 + u64::from(input.ttl_secs % 541));
    let flow = FlowId::from_bytes(input.flow);
    let until = Timestamp::from_unix_millis(input.until % (MAX_UNTIL_MILLIS + 1));
    let reference: String = input
        .reference
        .iter()
        .map(|b| char::from(CROCKFORD[usize::from(b % 32)]))
        .collect();
    let reference = SupportReference::parse(&reference).expect("Crockford characters");
    let locale = input.requested_locale.as_deref().and_then(Locale::from_tag);

    let code_message = messages.code_message(&code, ttl, &flow, locale);
    let code_text = code_message.expose_secret();
    assert!(
        code_text.contains(code.expose_secret()),
        "the code message lost its code"
    );
    for text in [
        code_text,
        messages.password_changed_message(locale).expose_secret(),
        messages.locked_message(until, &reference, locale).expose_secret(),
    ] {
        let segments = Segments::of(text);
        assert!(
            segments.count <= budget,
            "{segments:?} over a budget of {budget}: {text:?}"
        );
        assert!(text.len() <= 2048, "the render buffer reallocated");
    }
});

fn check_segments(text: &str) {
    let segments = Segments::of(text);
    let (single, multi) = match segments.encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => {
            assert_eq!(segments.units, text.encode_utf16().count());
            (70, 67)
        }
        _ => unreachable!("a new encoding"),
    };
    if segments.encoding == Encoding::Gsm7 {
        // Every character is one or two septets.
        let chars = text.chars().count();
        assert!((chars..=2 * chars).contains(&segments.units), "{segments:?}");
    }
    let expected = if segments.units <= single {
        1
    } else {
        segments.units.div_ceil(multi)
    };
    assert_eq!(segments.count, expected);
    assert!(segments.count >= 1);
}
