//! The short reference a locked user quotes to support.

use std::fmt;
use std::str::FromStr;

use crate::hex::CROCKFORD as ALPHABET;
use crate::input::InputError;

/// A short reference for a locked case, `ABCD-1234`: 40 bits in Crockford
/// base 32. Not a secret: it only lets support find the case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SupportReference([u8; 8]);

impl SupportReference {
    /// From 5 bytes (40 bits).
    pub(crate) fn from_bits(bytes: [u8; 5]) -> Self {
        let mut bits = u64::from_be_bytes([0, 0, 0, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]]);
        let mut out = [0u8; 8];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(bits & 31) as usize];
            bits >>= 5;
        }
        SupportReference(out)
    }

    /// Parses a reference as a person may type it: case-insensitive, with
    /// or without the dash, `O` read as `0` and `I`/`L` as `1`.
    ///
    /// # Errors
    /// [`InputError::MalformedReference`] for anything else.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let mut out = [0u8; 8];
        let mut n = 0;
        for (i, c) in input.trim().chars().enumerate() {
            if c == '-' && i == 4 && n == 4 {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if n == 8 || !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
                return Err(InputError::MalformedReference);
            }
            out[n] = c as u8;
            n += 1;
        }
        if n != 8 {
            return Err(InputError::MalformedReference);
        }
        Ok(SupportReference(out))
    }

    /// The eight characters without the dash, for stores.
    pub fn as_compact(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for SupportReference {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SupportReference::parse(s)
    }
}

impl fmt::Display for SupportReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_compact();
        write!(f, "{}-{}", &s[..4], &s[4..])
    }
}

impl fmt::Debug for SupportReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SupportReference({self})")
    }
}
