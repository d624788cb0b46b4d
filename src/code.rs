//! Hashing and checking codes and tokens under a rotating key ring.
//!
//! Nothing secret is ever stored: a flow keeps
//! `HMAC-SHA256(key, label || 0x00 || flow id || len64 || secret)`, where the
//! label separates codes, tokens and decoys, and binding the flow id means a
//! MAC copied from one flow is worthless in another. Each record names the
//! id of the key that made its MACs, so rotating in a new key leaves open
//! flows verifiable under the old one.
//!
//! ```
//! use otp_recovery::{KeyRing, ServerKey};
//!
//! // Key 2 signs new flows; key 1 still verifies flows opened before.
//! let ring = KeyRing::new(2, ServerKey::generate().unwrap())
//!     .with_previous(1, ServerKey::generate().unwrap())
//!     .unwrap();
//! assert_eq!(ring.current_id(), 2);
//! ```

use std::fmt;

use std::hash::Hasher as _;

use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;
use siphasher::sip128::{Hasher128 as _, SipHasher24};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::input::InputError;
use crate::reference::SupportReference;
use crate::secret::{Code, ServerKey};

type HmacSha256 = Hmac<Sha256>;

const CODE_LABEL: &[u8] = b"otp-recovery/v1/code";
const TOKEN_LABEL: &[u8] = b"otp-recovery/v1/token";
const DECOY_LABEL: &[u8] = b"otp-recovery/v1/decoy";
const REFERENCE_LABEL: &[u8] = b"otp-recovery/v1/support-reference";
/// Derives the pseudonyms' SipHash key (the label of the first release's
/// HMAC pseudonyms is not reused: no value it pseudonymised can share bits
/// with this key).
const PSEUDONYM_KEY_LABEL: &[u8] = b"otp-recovery/v2/pseudonym-key";
const CHANNEL_LABEL: &[u8] = b"otp-recovery/v1/channel-code";
const RECOVERY_CODE_LABEL: &[u8] = b"otp-recovery/v1/recovery-code";

/// An HMAC-SHA256 value as stored in a flow record. Not secret on its own,
/// but still kept out of `Debug`, since a leaked MAC of a six-digit code
/// together with a leaked key would reveal the code.
#[derive(Clone, Copy)]
pub struct Mac([u8; 32]);

/// Constant time, so that no comparison of MACs leaks how much matched.
impl PartialEq for Mac {
    fn eq(&self, other: &Self) -> bool {
        self.ct_matches(other)
    }
}

impl Eq for Mac {}

impl Mac {
    /// A MAC no code matches (all zero bits: a code whose HMAC is that
    /// would be a preimage no one can find), stored in place of a code
    /// that will never be sent.
    pub(crate) const VOID: Mac = Mac([0; 32]);

    /// From the 32 stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Mac(bytes)
    }

    /// The 32 bytes, for a store to persist.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality.
    pub(crate) fn ct_matches(&self, other: &Mac) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mac([redacted])")
    }
}

/// The server keys: one current key that makes new MACs, and earlier keys
/// that still check the MACs of flows opened before a rotation.
///
/// Each key is identified by a number that is written into every flow
/// record; remove an old key only once its flows have expired (one code
/// lifetime plus one token lifetime after rotating).
#[derive(Clone)]
pub struct KeyRing {
    current: u32,
    keys: Vec<(u32, HmacSha256)>,
    decoy: Option<HmacSha256>,
    /// Derived from the decoy key whenever that changes.
    pseudonym: PseudonymKey,
}

/// The SipHash-2-4 key of pseudonyms, derived from the decoy key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct PseudonymKey([u8; 16]);

impl PseudonymKey {
    fn derive(decoy: &HmacSha256) -> Self {
        let m = mac(
            decoy,
            PSEUDONYM_KEY_LABEL,
            &FlowId::from_bytes([0; 16]),
            b"siphash-2-4",
        );
        let mut key = [0; 16];
        key.copy_from_slice(&m.as_bytes()[..16]);
        PseudonymKey(key)
    }
}

impl KeyRing {
    /// A ring whose current key is `key`, named `id`.
    pub fn new(id: u32, key: ServerKey) -> Self {
        let keyed = keyed(&key);
        KeyRing {
            current: id,
            pseudonym: PseudonymKey::derive(&keyed),
            keys: vec![(id, keyed)],
            decoy: None,
        }
    }

    /// Sets the key that derives the stand-ins of unknown identifiers
    /// (their decoy ids and made-up masked phones). Without it, the key with
    /// the lowest id serves, so decoys stay stable across rotations until
    /// that key is removed; set a dedicated key you never rotate to keep
    /// them stable for good (a changing decoy would set unknown identifiers
    /// apart from accounts, whose masks never change).
    #[must_use]
    pub fn with_decoy_key(mut self, key: ServerKey) -> Self {
        self.decoy = Some(keyed(&key));
        self.pseudonym = PseudonymKey::derive(self.decoy_key());
        self
    }

    /// Adds an earlier key that still verifies flows made under it.
    ///
    /// # Errors
    /// [`InputError::DuplicateKeyId`] if `id` is already in the ring.
    pub fn with_previous(mut self, id: u32, key: ServerKey) -> Result<Self, InputError> {
        if self.keys.iter().any(|(k, _)| *k == id) {
            return Err(InputError::DuplicateKeyId(id));
        }
        self.keys.push((id, keyed(&key)));
        // The lowest id may have changed, and with it the decoy key.
        self.pseudonym = PseudonymKey::derive(self.decoy_key());
        Ok(self)
    }

    /// The id of the key that makes new MACs.
    pub fn current_id(&self) -> u32 {
        self.current
    }

    fn key(&self, id: u32) -> Option<&HmacSha256> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, m)| m)
    }

    fn current_key(&self) -> &HmacSha256 {
        // `new` puts the current key first and it is never removed.
        &self.keys[0].1
    }

    /// MAC of a code for a flow, under key `key_id`; `None` if the ring
    /// does not hold that key.
    pub(crate) fn code_mac(&self, key_id: u32, flow: &FlowId, code: &Code) -> Option<Mac> {
        let key = self.key(key_id)?;
        Some(mac(key, CODE_LABEL, flow, code.expose_secret().as_bytes()))
    }

    /// MAC of a code under the current key.
    pub(crate) fn current_code_mac(&self, flow: &FlowId, code: &Code) -> Mac {
        mac(
            self.current_key(),
            CODE_LABEL,
            flow,
            code.expose_secret().as_bytes(),
        )
    }

    /// MAC of a second-channel code for a flow, under key `key_id`: its own
    /// label, so an SMS code's MAC never matches it.
    pub(crate) fn channel_code_mac(&self, key_id: u32, flow: &FlowId, code: &Code) -> Option<Mac> {
        let key = self.key(key_id)?;
        Some(mac(key, CHANNEL_LABEL, flow, code.expose_secret().as_bytes()))
    }

    /// MAC of a saved recovery code (with its account) in the set `set`.
    pub(crate) fn recovery_code_mac(&self, key_id: u32, set: &[u8; 16], input: &[u8]) -> Option<Mac> {
        let key = self.key(key_id)?;
        Some(mac(key, RECOVERY_CODE_LABEL, &FlowId::from_bytes(*set), input))
    }

    /// MAC of the random part of a reset token.
    pub(crate) fn token_mac(&self, key_id: u32, flow: &FlowId, secret: &[u8]) -> Option<Mac> {
        let key = self.key(key_id)?;
        Some(mac(key, TOKEN_LABEL, flow, secret))
    }

    /// The reference of a lock of `subject_key` that ends at `until`: the
    /// same wherever it is computed, so a request refused during the lock
    /// quotes the reference the locking verify gave, without a look-up.
    pub(crate) fn support_reference(&self, subject_key: &str, until: Timestamp) -> SupportReference {
        let mut input = Vec::with_capacity(subject_key.len() + 8);
        input.extend_from_slice(&until.as_unix_millis().to_be_bytes());
        input.extend_from_slice(subject_key.as_bytes());
        let m = mac(
            self.decoy_key(),
            REFERENCE_LABEL,
            &FlowId::from_bytes([0; 16]),
            &input,
        );
        let b = m.as_bytes();
        SupportReference::from_bits([b[0], b[1], b[2], b[3], b[4]])
    }

    /// A stable pseudonym for personal data (a phone number, an IP, an
    /// account key) in counter keys: 96 bits of a keyed PRF as 24 hex
    /// characters, the same on every instance sharing the key ring, so
    /// stores never hold the value itself in a key.
    ///
    /// The PRF is SipHash-2-4 with 128-bit output, under a key derived from
    /// the decoy key by HMAC: a PRF built for short inputs, several times
    /// cheaper than an HMAC-SHA256, and pseudonyms are on every hot path
    /// (four per request, two per verify).
    pub(crate) fn pseudonym(&self, value: &str) -> String {
        self.pseudonym_of(&[value.as_bytes()])
    }

    /// The pseudonym of the concatenation of `parts` (without building it).
    pub(crate) fn pseudonym_of(&self, parts: &[&[u8]]) -> String {
        let mut h = SipHasher24::new_with_key(&self.pseudonym.0);
        for part in parts {
            h.write(part);
        }
        let bytes = h.finish128().as_bytes();
        let mut out = String::with_capacity(24);
        crate::hex::encode_into(&bytes[..12], &mut out);
        out
    }

    /// The key of decoys and references: set explicitly, or the lowest id.
    fn decoy_key(&self) -> &HmacSha256 {
        match &self.decoy {
            Some(key) => key,
            None => {
                let lowest = self.keys.iter().min_by_key(|(id, _)| *id);
                &lowest.expect("a ring has a key").1
            }
        }
    }

    /// A stable pseudo-random value for an unknown identifier, so that its
    /// made-up answers stay the same across requests and key rotations.
    pub(crate) fn decoy(&self, identifier: &str) -> Mac {
        mac(
            self.decoy_key(),
            DECOY_LABEL,
            &FlowId::from_bytes([0; 16]),
            identifier.as_bytes(),
        )
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

fn keyed(key: &ServerKey) -> HmacSha256 {
    // HMAC takes keys of any length; ServerKey guarantees at least 32 bytes.
    <HmacSha256 as KeyInit>::new_from_slice(key.expose_secret()).expect("HMAC accepts keys of any length")
}

fn mac(key: &HmacSha256, label: &[u8], flow: &FlowId, secret: &[u8]) -> Mac {
    let mut m = key.clone();
    m.update(label);
    m.update(&[0]);
    m.update(flow.as_bytes());
    m.update(&(secret.len() as u64).to_be_bytes());
    m.update(secret);
    Mac(m.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: u32) -> KeyRing {
        KeyRing::new(id, ServerKey::from_bytes(vec![id as u8; 32]).unwrap())
    }

    #[test]
    fn matches_an_independent_hmac_computation() {
        // RFC 4231 style cross-check against a fresh HMAC over the same bytes.
        let flow = FlowId::from_bytes([7; 16]);
        let code = Code::parse("123456").unwrap();
        let got = ring(1).current_code_mac(&flow, &code);
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&[1; 32]).unwrap();
        m.update(b"otp-recovery/v1/code\0");
        m.update(&[7; 16]);
        m.update(b"\0\0\0\0\0\0\0\x06123456");
        assert_eq!(got.as_bytes(), &<[u8; 32]>::from(m.finalize().into_bytes()));
    }

    #[test]
    fn the_mac_binds_flow_code_key_and_purpose() {
        let (a, b) = (FlowId::from_bytes([1; 16]), FlowId::from_bytes([2; 16]));
        let code = Code::parse("123456").unwrap();
        let other = Code::parse("123457").unwrap();
        let r = ring(1);
        let base = r.current_code_mac(&a, &code);
        assert_ne!(base, r.current_code_mac(&b, &code));
        assert_ne!(base, r.current_code_mac(&a, &other));
        assert_ne!(base, ring(2).current_code_mac(&a, &code));
        assert_ne!(base, r.token_mac(1, &a, b"123456").unwrap());
    }

    #[test]
    fn old_keys_still_verify_after_rotation() {
        let flow = FlowId::from_bytes([3; 16]);
        let code = Code::parse("654321").unwrap();
        let before = ring(1).current_code_mac(&flow, &code);
        let rotated = KeyRing::new(2, ServerKey::from_bytes(vec![2; 32]).unwrap())
            .with_previous(1, ServerKey::from_bytes(vec![1; 32]).unwrap())
            .unwrap();
        assert_eq!(rotated.current_id(), 2);
        assert_eq!(rotated.code_mac(1, &flow, &code), Some(before));
        assert_ne!(rotated.current_code_mac(&flow, &code), before);
        assert_eq!(rotated.code_mac(9, &flow, &code), None);
        assert!(
            rotated
                .clone()
                .with_previous(2, ServerKey::generate().unwrap())
                .is_err()
        );
    }

    #[test]
    fn decoys_survive_a_rotation_and_follow_an_explicit_decoy_key() {
        let before = ring(1).decoy("nobody@example.com");
        let rotated = KeyRing::new(2, ServerKey::from_bytes(vec![2; 32]).unwrap())
            .with_previous(1, ServerKey::from_bytes(vec![1; 32]).unwrap())
            .unwrap();
        assert_eq!(rotated.decoy("nobody@example.com"), before);
        assert_ne!(rotated.decoy("somebody@example.com"), before);
        let pinned = ring(3).with_decoy_key(ServerKey::from_bytes(vec![1; 32]).unwrap());
        assert_eq!(pinned.decoy("nobody@example.com"), before);
    }

    #[test]
    fn pseudonyms_follow_the_decoy_key_and_hash_parts_as_their_concatenation() {
        let before = ring(1).pseudonym("account:alice");
        assert_eq!(before.len(), 24);
        assert!(
            before
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(ring(1).pseudonym_of(&[b"account:", b"alice"]), before);
        assert_eq!(ring(1).pseudonym_of(&[b"acc", b"", b"ount:alice"]), before);
        assert_ne!(ring(1).pseudonym("account:alicf"), before);
        // A newer key leaves them alone; a lower id or a pinned decoy key
        // takes over, as for decoys.
        let rotated = ring(2)
            .with_previous(1, ServerKey::from_bytes(vec![1; 32]).unwrap())
            .unwrap();
        assert_eq!(rotated.pseudonym("account:alice"), before);
        let newer = ring(1)
            .with_previous(9, ServerKey::from_bytes(vec![9; 32]).unwrap())
            .unwrap();
        assert_eq!(newer.pseudonym("account:alice"), before);
        assert_ne!(ring(2).pseudonym("account:alice"), before);
        let pinned = ring(2).with_decoy_key(ServerKey::from_bytes(vec![1; 32]).unwrap());
        assert_eq!(pinned.pseudonym("account:alice"), before);
    }

    #[test]
    fn debug_shows_ids_not_keys() {
        let dbg = format!("{:?} {:?}", ring(5), Mac::from_bytes([0xab; 32]));
        assert!(dbg.contains("current: 5"));
        assert!(!dbg.contains("171"), "{dbg}");
    }
}
