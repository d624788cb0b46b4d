//! Identifiers: flow ids and account ids.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::hex;
use crate::input::InputError;
use crate::rng::{RandomError, fill_random};

/// The id of one recovery flow: 128 random bits, written as 32 lowercase
/// hex characters.
///
/// Not a secret on its own (it goes into links), but unguessable, so a
/// stranger cannot address someone else's flow. Knowing it never suffices:
/// verify needs the code as well.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId([u8; FlowId::LEN]);

impl FlowId {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// Draws a fresh id from the OS CSPRNG.
    ///
    /// # Errors
    /// [`RandomError`] if the operating system cannot supply randomness.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; Self::LEN];
        fill_random(&mut bytes)?;
        Ok(FlowId(bytes))
    }

    /// Builds an id from its bytes (for stores decoding a record).
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        FlowId(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Parses the 32-character hex form.
    ///
    /// # Errors
    /// [`InputError::MalformedFlowId`] for anything else.
    pub fn parse(input: &str) -> Result<Self, InputError> {
        let mut bytes = [0u8; Self::LEN];
        hex::decode_into(input.as_bytes(), &mut bytes).map_err(|()| InputError::MalformedFlowId)?;
        Ok(FlowId(bytes))
    }
}

impl FromStr for FlowId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FlowId::parse(s)
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(2 * Self::LEN);
        hex::encode_into(&self.0, &mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowId({self})")
    }
}

/// The host's id for an account: any non-empty string of at most 128 bytes
/// without control characters (a database key, a UUID, a username).
///
/// Shared, not copied: a clone (for a record, an event) is a reference
/// count, so a request for an account allocates no more than one for an
/// unknown identifier.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(Arc<str>);

impl AccountId {
    /// Longest accepted id, in bytes; it bounds the memory of a flow record.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps an account id.
    ///
    /// # Errors
    /// [`InputError::MalformedAccountId`] if empty, longer than 128 bytes or
    /// holding a control character.
    pub fn new(id: impl Into<String>) -> Result<Self, InputError> {
        let id = id.into();
        Self::check(&id)?;
        Ok(AccountId(Arc::from(id)))
    }

    /// [`AccountId::new`] from a borrowed id, in one allocation (stores
    /// decode account ids on every load of a flow).
    pub(crate) fn from_str_checked(id: &str) -> Result<Self, InputError> {
        Self::check(id)?;
        Ok(AccountId(Arc::from(id)))
    }

    fn check(id: &str) -> Result<(), InputError> {
        if id.is_empty() || id.len() > Self::MAX_LEN || has_control(id) {
            return Err(InputError::MalformedAccountId);
        }
        Ok(())
    }

    /// The id as the host gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountId::new(s)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({:?})", &*self.0)
    }
}

/// Whether `s` holds a control character (`char::is_control`: U+0000 to
/// U+001F and U+007F to U+009F), read off its UTF-8 bytes: the first two
/// ranges are single bytes, the last is `C2 80` to `C2 9F`. Account ids are
/// checked on every load of a flow, and decoding each character cost as
/// much as checking a decoy id (a measurable difference in the time of a
/// wrong code: `tests/timing.rs`).
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().any(|&c| c < 0x20 || c == 0x7f) || b.windows(2).any(|w| w[0] == 0xc2 && w[1] <= 0x9f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flow_id_round_trips_and_rejects_garbage() {
        let id = FlowId::generate().unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(FlowId::parse(&text).unwrap(), id);
        for bad in [
            "",
            "../etc/passwd",
            &text[..31],
            &text.to_uppercase(),
            &format!("{text}0"),
        ] {
            assert_eq!(FlowId::parse(bad).unwrap_err(), InputError::MalformedFlowId);
        }
    }

    #[test]
    fn account_id_bounds() {
        assert!(AccountId::new("a".repeat(128)).is_ok());
        for bad in [String::new(), "a".repeat(129), "a\nb".into(), "\0".into()] {
            assert_eq!(AccountId::new(bad).unwrap_err(), InputError::MalformedAccountId);
        }
    }

    proptest! {
        #[test]
        fn has_control_is_chars_any_is_control(s in "\\PC*|.*[\u{0}-\u{20}\u{7e}-\u{a0}].*") {
            prop_assert_eq!(has_control(&s), s.chars().any(char::is_control));
        }
    }

    #[test]
    fn has_control_at_each_edge() {
        for c in ['\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'] {
            assert!(has_control(&format!("a{c}b")), "{c:?}");
        }
        for c in [' ', '~', '\u{a0}', '\u{c0}', '\u{100}', '\u{2028}', '€'] {
            assert!(!has_control(&format!("a{c}b")), "{c:?}");
        }
    }
}
