//! How a text travels as SMS: its encoding (GSM-7 or UCS-2) and the
//! segments it needs.

/// The SMS encoding a text needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// The GSM 03.38 7-bit alphabet: 160 septets in one segment, 153 per
    /// segment of a longer message.
    Gsm7,
    /// UCS-2 (UTF-16 units): 70 in one segment, 67 per segment otherwise.
    Ucs2,
}

/// How a text travels as SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Segments {
    /// The encoding the text needs.
    pub encoding: Encoding,
    /// Septets (GSM-7, extension characters counting two) or UTF-16 units.
    pub units: usize,
    /// Segments needed.
    pub count: usize,
}

/// The GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The GSM 03.38 extension table: two septets each.
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

impl Segments {
    /// Counts the segments `text` needs.
    pub fn of(text: &str) -> Segments {
        let mut septets = 0;
        let mut gsm = true;
        for c in text.chars() {
            if GSM7_BASIC.contains(c) {
                septets += 1;
            } else if GSM7_EXTENSION.contains(c) {
                septets += 2;
            } else {
                gsm = false;
                break;
            }
        }
        let (encoding, units, single, multi) = if gsm {
            (Encoding::Gsm7, septets, 160, 153)
        } else {
            (Encoding::Ucs2, text.encode_utf16().count(), 70, 67)
        };
        let count = if units <= single { 1 } else { units.div_ceil(multi) };
        Segments {
            encoding,
            units,
            count,
        }
    }
}
