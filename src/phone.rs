//! Phone numbers in E.164 form, their country calling code, and their
//! masked display form.
//!
//! Parsing is strict: `+`, then a country calling code assigned by ITU-T
//! (the table below), then the national number, 7 to 15 digits in all. The
//! country calling codes form a prefix code, so the code is read off the
//! front without any per-country metadata. National numbering plans are not
//! checked: the host verified the number when the user enrolled it, and the
//! gateway refuses numbers that do not exist.
//!
//! ```
//! use otp_recovery::PhoneNumber;
//!
//! let phone = PhoneNumber::parse("+14155550123").unwrap();
//! assert_eq!(phone.country_code(), 1);
//! assert_eq!(phone.masked().to_string(), "+1 ***-***-0123");
//! assert!(PhoneNumber::parse("+1 415 555 0123").is_err());
//! assert!(PhoneNumber::parse("+2101234567").is_err()); // 210 is not assigned
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::input::InputError;

/// Country calling codes assigned by ITU-T (E.164 and its annex), one to
/// three digits. Includes the non-geographic codes (international freephone,
/// satellite and network codes), which a [`Policy`](crate::Policy) denies by
/// default.
const COUNTRY_CODES: &[u16] = &[
    1, 7, //
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56, 57, 58,
    60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98, //
    211, 212, 213, 216, 218, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235,
    236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 256,
    257, 258, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 290, 291, 297, 298, 299, //
    350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 380,
    381, 382, 383, 385, 386, 387, 389, 420, 421, 423, //
    500, 501, 502, 503, 504, 505, 506, 507, 508, 509, 590, 591, 592, 593, 594, 595, 596, 597, 598,
    599, //
    670, 672, 673, 674, 675, 676, 677, 678, 679, 680, 681, 682, 683, 685, 686, 687, 688, 689, 690, 691, 692,
    800, 808, 850, 852, 853, 855, 856, 870, 878, 880, 881, 882, 883, 886, 888, //
    960, 961, 962, 963, 964, 965, 966, 967, 968, 970, 971, 972, 973, 974, 975, 976, 977, 979, 992, 993, 994,
    995, 996, 998,
];

/// Non-geographic calling codes (freephone, shared cost, premium, satellite,
/// international networks): no ordinary mobile phone has them, and sending
/// to them is a classic way to pump SMS costs.
pub const NON_GEOGRAPHIC_CODES: &[u16] = &[800, 808, 870, 878, 881, 882, 883, 888, 979];

/// Whether ITU-T has assigned `code` as a country calling code.
pub fn is_country_code(code: u16) -> bool {
    COUNTRY_CODES.binary_search(&code).is_ok()
}

/// A phone number in E.164 form, with a known country calling code.
/// Shared, not copied: a clone is a reference count.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: Arc<str>,
    code_len: u8,
}

impl PhoneNumber {
    /// Parses an E.164 number such as `+14155550123`.
    ///
    /// # Errors
    /// [`InputError::MalformedPhone`] for anything else: spaces, dashes,
    /// national form, letters, 6 digits or fewer, more than 15, or a
    /// country calling code that is not assigned.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let digits = input.strip_prefix('+').ok_or(InputError::MalformedPhone)?;
        let well_formed = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !well_formed {
            return Err(InputError::MalformedPhone);
        }
        let code_len = (1..=3)
            .find(|&len| digits[..len].parse().is_ok_and(is_country_code))
            .ok_or(InputError::MalformedPhone)?;
        if digits.len() - code_len < 4 {
            return Err(InputError::MalformedPhone);
        }
        Ok(PhoneNumber {
            e164: input.into(),
            code_len: code_len as u8,
        })
    }

    /// The E.164 text, `+` included.
    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// The country calling code (1 for the NANP, 44 for the UK...).
    pub fn country_code(&self) -> u16 {
        self.e164[1..=usize::from(self.code_len)]
            .parse()
            .unwrap_or_default()
    }

    /// The national significant number: the digits after the country code.
    pub fn national_number(&self) -> &str {
        &self.e164[1 + usize::from(self.code_len)..]
    }

    /// The display form: the country code and the last four digits,
    /// `+1 ***-***-4567` (only the last two for national numbers under
    /// eight digits, so that a short number is never shown whole).
    pub fn masked(&self) -> MaskedPhone {
        let national = self.national_number().as_bytes();
        let shown = if national.len() >= 8 { 4 } else { 2 };
        let mut last = [0u8; 4];
        last[..shown].copy_from_slice(&national[national.len() - shown..]);
        MaskedPhone {
            country_code: self.country_code(),
            hidden: (national.len() - shown) as u8,
            last,
            shown: shown as u8,
        }
    }
}

impl FromStr for PhoneNumber {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PhoneNumber::parse(s)
    }
}

impl fmt::Debug for PhoneNumber {
    /// Masked: a phone number is personal data and stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

/// A phone number with all but its country code and last digits hidden:
/// `+1 ***-***-4567`, `+49 *******-5678`, `+290 **-34`.
///
/// Unknown identifiers get the mask of a stable made-up number, so that the
/// answer does not tell them apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskedPhone {
    country_code: u16,
    hidden: u8,
    last: [u8; 4],
    shown: u8,
}

impl MaskedPhone {
    /// The country calling code shown.
    pub fn country_code(&self) -> u16 {
        self.country_code
    }
}

impl fmt::Display for MaskedPhone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{} ", self.country_code)?;
        if self.hidden == 6 {
            // The familiar North American grouping.
            f.write_str("***-***-")?;
        } else {
            for _ in 0..self.hidden {
                f.write_str("*")?;
            }
            f.write_str("-")?;
        }
        for &d in &self.last[..usize::from(self.shown)] {
            write!(f, "{}", char::from(d))?;
        }
        Ok(())
    }
}

impl fmt::Debug for MaskedPhone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaskedPhone({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_table_is_sorted_and_prefix_free() {
        assert!(COUNTRY_CODES.windows(2).all(|w| w[0] < w[1]));
        for &a in COUNTRY_CODES {
            for &b in COUNTRY_CODES {
                let (sa, sb) = (a.to_string(), b.to_string());
                assert!(a == b || !sb.starts_with(&sa), "{a} is a prefix of {b}");
            }
        }
        assert!(NON_GEOGRAPHIC_CODES.iter().all(|&c| is_country_code(c)));
    }

    #[test]
    fn accepts_e164_and_reads_the_country_code() {
        for (ok, code, national) in [
            ("+14155550123", 1, "4155550123"),
            ("+79161234567", 7, "9161234567"),
            ("+447911123456", 44, "7911123456"),
            ("+4915112345678", 49, "15112345678"),
            ("+35312345678", 353, "12345678"),
            ("+2901234", 290, "1234"),
            ("+998901234567", 998, "901234567"),
        ] {
            let phone = PhoneNumber::parse(ok).unwrap();
            assert_eq!(
                (phone.country_code(), phone.national_number()),
                (code, national),
                "{ok}"
            );
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "+",
            "14155550123",
            "+1 415 555 0123",
            "+1-415-555-0123",
            "+04155550123",
            "+290123",
            "+1234567890123456",
            "+1415555012a",
            "++14155550123",
            "+１４１５５５５０１２３",
            "+2101234567",
            "+3841234567",
            "+999123456789",
            "+1415",
            "+2901",
            "+290123\n",
        ] {
            assert_eq!(
                PhoneNumber::parse(bad).unwrap_err(),
                InputError::MalformedPhone,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn masking_shows_the_country_code_and_last_four_digits() {
        let cases = [
            ("+14155554567", "+1 ***-***-4567"),
            ("+4915112345678", "+49 *******-5678"),
            ("+2901234", "+290 **-34"),
            ("+35312345678", "+353 ****-5678"),
        ];
        for (phone, masked) in cases {
            let phone = PhoneNumber::parse(phone).unwrap();
            assert_eq!(phone.masked().to_string(), masked);
            assert!(!format!("{phone:?}").contains(phone.national_number()));
        }
    }
}
