//! Timing parity: what an unknown identifier's flow (a decoy) does so that
//! it costs what a real account's costs, in the same instructions, with
//! nothing sent or recorded. `tests/timing.rs` measures both paths.
//!
//! A decoy is derived from the identifier under the server key (its MAC),
//! so the same identifier gets the same decoy, made-up phone included.

use std::hint::black_box;

use crate::code::Mac;
use crate::events::{Event, EventSink};
use crate::limits::Limits;
use crate::phone::PhoneNumber;
use crate::record::DecoyId;
use crate::sms::{SendError, SendReceipt, SmsMessage, SmsSender};

/// Longest identifier [`Recovery::request`](crate::Recovery::request)
/// takes, in bytes: the longest email address (RFC 3696: 64 for the local
/// part, 255 for the domain, and the `@`). Longer ones are refused before
/// any work proportional to their length.
pub const MAX_IDENTIFIER_BYTES: usize = 320;

/// The form of an identifier that decoys are derived from: trimmed and
/// lowercased, so that `Alice@X.com ` and `alice@x.com` are one identifier
/// (as most hosts' look-ups treat them). Pass identifiers as your look-up
/// sees them; aliases of different kinds (an email and a username of one
/// account) cannot be told apart here.
pub(super) fn canonical(identifier: &str) -> String {
    identifier.trim().to_lowercase()
}

/// The decoy id of an unknown identifier: the first half of its decoy MAC.
pub(super) fn decoy_id(decoy: &Mac) -> DecoyId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&decoy.as_bytes()[..16]);
    DecoyId::from_bytes(id)
}

/// The made-up destination of an unknown identifier: a plausible number
/// of one of the configured destinations (drawn by the decoy MAC's first
/// bytes), its digits from the rest of the MAC. It is never sent to; it is
/// counted and masked like a real one.
pub(super) fn made_up_phone(decoy: &Mac, limits: &Limits) -> PhoneNumber {
    let mut text = [0u8; 20];
    let text = made_up_phone_text(decoy, limits, &mut text);
    PhoneNumber::parse(text).expect("a made-up number is valid E.164")
}

/// The text of [`made_up_phone`], written into `buf` (at most 16 bytes:
/// `+` and 15 digits).
fn made_up_phone_text<'b>(decoy: &Mac, limits: &Limits, buf: &'b mut [u8; 20]) -> &'b str {
    let b = decoy.as_bytes();
    let draw = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let destination = limits.decoy_destination(draw);
    let mut digits = itoa::Buffer::new();
    let country = digits.format(destination.country_code).as_bytes();
    let code = country.len();
    // Limits checked the length: 4 to 14 national digits, 15 in all.
    let national = usize::from(destination.national_digits).clamp(4, 14);
    buf[0] = b'+';
    buf[1..=code].copy_from_slice(country);
    buf[code + 1] = b'2' + b[16] % 8;
    for (out, byte) in buf[code + 2..code + 1 + national].iter_mut().zip(&b[17..31]) {
        *out = b'0' + byte % 10;
    }
    std::str::from_utf8(&buf[..code + 1 + national]).unwrap_or_default()
}

/// What a real flow's record costs on load: its phone decoded (text, then
/// number), masked for its events and shared by the next record (a
/// reference count, an atomic operation). A decoy's flow has no phone and
/// does the same with the text of its made-up one.
pub(super) fn load_made_up_phone(decoy: &Mac, limits: &Limits) {
    let mut text = [0u8; 20];
    let text = made_up_phone_text(decoy, limits, &mut text);
    let decoded = std::str::from_utf8(black_box(text.as_bytes())).map(PhoneNumber::parse);
    if let Ok(Ok(phone)) = black_box(decoded) {
        black_box((phone.masked(), phone.clone()));
    }
}

/// `phone` decoded as a stored record's is (text, then number). The caller
/// keeps the result as long as a real flow keeps its record's, so that
/// both free the same memory at the same point.
pub(super) fn decoded(phone: &PhoneNumber) -> impl Sized {
    let text = std::str::from_utf8(black_box(phone.as_str().as_bytes()));
    black_box(text.map(PhoneNumber::parse))
}

/// The sender of a decoy's code and the sink of its events: it sends and
/// records nothing, at the cost of a call to a sender or a sink.
pub(super) struct Nowhere;

impl EventSink for Nowhere {
    fn emit(&self, event: &Event) {
        black_box(event);
    }
}

#[async_trait::async_trait]
impl SmsSender for Nowhere {
    async fn send(&self, _: &SmsMessage) -> std::result::Result<SendReceipt, SendError> {
        Ok(SendReceipt::default())
    }
}
