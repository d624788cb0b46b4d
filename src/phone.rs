//! Phone numbers in E.164 form, and their masked display form.

use std::fmt;
use std::str::FromStr;

use crate::error::InputError;

/// A phone number in E.164 form: `+`, then 7 to 15 digits, the first not 0.
///
/// This is a strict syntax check of the canonical form that SMS gateways
/// take; it does not reformat national numbers or check that a number is
/// assigned. Hosts keep numbers in E.164 already (they verified them).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(Box<str>);

impl PhoneNumber {
    /// Parses an E.164 number such as `+14155550123`.
    ///
    /// # Errors
    /// [`InputError::MalformedPhone`] for anything else (spaces, dashes,
    /// national form, letters, too short or long).
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let digits = input.strip_prefix('+').ok_or(InputError::MalformedPhone)?;
        let ok = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !ok {
            return Err(InputError::MalformedPhone);
        }
        Ok(PhoneNumber(input.into()))
    }

    /// The E.164 text, `+` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The display form that reveals only the last two digits.
    pub fn masked(&self) -> MaskedPhone {
        let b = self.0.as_bytes();
        MaskedPhone([b[b.len() - 2], b[b.len() - 1]])
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

/// A phone number with all but its last two digits hidden: `+** *** ***67`.
///
/// Always the same width whatever the number's length, so it reveals no
/// country and no length. Unknown identifiers get a stable made-up mask of
/// the same shape.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskedPhone([u8; 2]);

impl MaskedPhone {
    pub(crate) fn from_last_digits(a: u8, b: u8) -> Self {
        MaskedPhone([b'0' + a % 10, b'0' + b % 10])
    }
}

impl fmt::Display for MaskedPhone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+** *** ***{}{}", char::from(self.0[0]), char::from(self.0[1]))
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
    fn accepts_e164_and_nothing_else() {
        for ok in ["+14155550123", "+2901234", "+123456789012345"] {
            assert!(PhoneNumber::parse(ok).is_ok(), "{ok}");
        }
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
        ] {
            assert_eq!(
                PhoneNumber::parse(bad).unwrap_err(),
                InputError::MalformedPhone,
                "{bad}"
            );
        }
    }

    #[test]
    fn masking_shows_only_the_last_two_digits_at_a_fixed_width() {
        let long = PhoneNumber::parse("+123456789012345").unwrap();
        let short = PhoneNumber::parse("+2901245").unwrap();
        assert_eq!(long.masked().to_string(), "+** *** ***45");
        assert_eq!(short.masked().to_string(), "+** *** ***45");
        assert!(!format!("{long:?}").contains("1234"));
    }
}
