//! Saved recovery codes: a set of single-use codes the user printed or
//! saved when enrolling, each 80 bits, shown once and stored only as MACs.
//!
//! The host issues a set with [`RecoveryCodes::issue`], shows the codes to
//! the user once, and keeps only the [`RecoveryCodeSet`] (its
//! [`to_bytes`](RecoveryCodeSet::to_bytes) form fits a database column).
//! Issuing a fresh set replaces the old one: the host stores the new set in
//! its place, and the old codes match nothing. Each MAC binds the account
//! and the set's random id, so a set copied to another account is
//! worthless.
//!
//! A code is single use: when one is accepted, the crate claims it in the
//! [`CodeStore`](crate::store::CodeStore) in one atomic step, so two
//! instances racing on the same code accept it once; it also reports the
//! code's [`index`](crate::Verified::recovery_code_used) so the host can
//! strike it from the set.
//!
//! ```
//! use otp_recovery::factor::{RecoveryCodeSet, RecoveryCodes};
//! use otp_recovery::{AccountId, KeyRing, ServerKey};
//!
//! let keys = KeyRing::new(1, ServerKey::generate().unwrap());
//! let account = AccountId::new("42").unwrap();
//! let issued = RecoveryCodes::issue(&keys, &account, 10).unwrap();
//! // Show these once: "7K3M-Q9ZT-4XWB-2HND" ...
//! assert_eq!(issued.codes().len(), 10);
//! // Store this.
//! let stored = issued.set().to_bytes();
//! let set = RecoveryCodeSet::from_bytes(&stored).unwrap();
//! let typed = issued.codes()[3].expose_secret().to_lowercase();
//! assert_eq!(set.find(&keys, &account, &typed).unwrap(), Some(3));
//! ```

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::code::{KeyRing, Mac};
use crate::hex::CROCKFORD as ALPHABET;
use crate::id::AccountId;
use crate::input::InputError;
use crate::rng::{RandomError, fill_random};
use crate::secret::REDACTED;
use crate::wire::{DecodeError, Reader};

/// Bytes of randomness in one code: 80 bits, 16 Crockford characters.
const CODE_BYTES: usize = 10;
/// Characters of one code, without dashes.
const CODE_CHARS: usize = 16;
/// Most codes in one set.
pub const MAX_RECOVERY_CODES: usize = 20;
const SET_MAGIC: &[u8; 4] = b"ORS\x01";

/// One recovery code, to show the user once: `ABCD-EFGH-JKMN-PQRS`.
/// Zeroized on drop, `[redacted]` in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RecoveryCode(String);

impl RecoveryCode {
    /// The code as the user should see it, in four dashed groups.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A set of recovery codes as the host stores it: the MACs of its codes,
/// the id of the key that made them and the set's random id. Holds no code.
///
/// A code keeps its index for the life of the set: striking one leaves an
/// empty slot, so indexes reported by
/// [`Verified::recovery_code_used`](crate::Verified::recovery_code_used)
/// stay right whatever order strikes are applied in.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCodeSet {
    id: [u8; 16],
    key_id: u32,
    macs: Vec<Option<Mac>>,
}

impl fmt::Debug for RecoveryCodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryCodeSet")
            .field("key_id", &self.key_id)
            .field("codes", &self.len())
            .finish_non_exhaustive()
    }
}

/// A freshly issued set: the codes to show once, and the set to store.
#[derive(Debug)]
pub struct RecoveryCodes {
    codes: Vec<RecoveryCode>,
    set: RecoveryCodeSet,
}

/// Why recovery codes could not be issued or checked. Converts into
/// [`Error`](crate::Error) (`Input`, `Random`, `UnknownKey`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryCodeError {
    /// A count outside 1 to 20, or input that cannot be a code.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The random number generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The key ring holds no key with this id.
    #[error("no server key with id {0} in the key ring")]
    UnknownKey(u32),
}

impl RecoveryCodes {
    /// Draws `count` codes (1 to 20; 10 is usual) for `account` from the
    /// OS CSPRNG, under the key ring's current key.
    ///
    /// # Errors
    /// [`RecoveryCodeError::Input`] for a count outside 1 to 20;
    /// [`RecoveryCodeError::Random`].
    pub fn issue(
        keys: &KeyRing,
        account: &AccountId,
        count: usize,
    ) -> Result<RecoveryCodes, RecoveryCodeError> {
        if !(1..=MAX_RECOVERY_CODES).contains(&count) {
            return Err(InputError::RecoveryCodeCount.into());
        }
        let mut id = [0u8; 16];
        fill_random(&mut id)?;
        let key_id = keys.current_id();
        let mut codes = Vec::with_capacity(count);
        let mut macs = Vec::with_capacity(count);
        for _ in 0..count {
            let mut raw = Zeroizing::new([0u8; CODE_BYTES]);
            fill_random(&mut *raw)?;
            let chars = encode(&raw);
            macs.push(Some(
                mac(keys, key_id, &id, account, &*chars).ok_or(RecoveryCodeError::UnknownKey(key_id))?,
            ));
            let mut shown = String::with_capacity(CODE_CHARS + 3);
            for (i, c) in chars.iter().enumerate() {
                if i > 0 && i % 4 == 0 {
                    shown.push('-');
                }
                shown.push(char::from(*c));
            }
            codes.push(RecoveryCode(shown));
        }
        Ok(RecoveryCodes {
            codes,
            set: RecoveryCodeSet { id, key_id, macs },
        })
    }

    /// The codes, to show the user once.
    pub fn codes(&self) -> &[RecoveryCode] {
        &self.codes
    }

    /// The set to store in place of any earlier one.
    pub fn set(&self) -> &RecoveryCodeSet {
        &self.set
    }

    /// The set to store, without the codes.
    pub fn into_set(self) -> RecoveryCodeSet {
        self.set
    }
}

impl RecoveryCodeSet {
    /// How many codes the set still holds (not struck).
    pub fn len(&self) -> usize {
        self.macs.iter().flatten().count()
    }

    /// Whether the set holds no code (every one struck).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of the key the set was made under: keep that key in the
    /// [`KeyRing`] while the set is in use, or issue a fresh set before
    /// retiring it (its codes answer [`RecoveryCodeError::UnknownKey`] after).
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The set with the code at `index` struck (after it was used), for the
    /// host to store; the other codes keep their indexes.
    #[must_use]
    pub fn without(&self, index: usize) -> RecoveryCodeSet {
        let mut set = self.clone();
        if let Some(slot) = set.macs.get_mut(index) {
            *slot = None;
        }
        set
    }

    /// The index of the code `input` in the set, or `None`. Input is read
    /// as people type it: any case, with or without dashes and spaces, `O`
    /// as `0` and `I`/`L` as `1`. Every MAC of the set is compared, in
    /// constant time, whatever matches.
    ///
    /// # Errors
    /// [`RecoveryCodeError::Input`] (`InputError::MalformedRecoveryCode`)
    /// for input that cannot be a code (no attempt should be counted for
    /// it); [`RecoveryCodeError::UnknownKey`] if the ring no longer holds
    /// the set's key.
    pub fn find(
        &self,
        keys: &KeyRing,
        account: &AccountId,
        input: &str,
    ) -> Result<Option<usize>, RecoveryCodeError> {
        let chars = normalize(input)?;
        let presented = mac(keys, self.key_id, &self.id, account, &*chars)
            .ok_or(RecoveryCodeError::UnknownKey(self.key_id))?;
        let mut found = None;
        for (i, stored) in self.macs.iter().enumerate() {
            let hit = stored.is_some_and(|m| m.ct_matches(&presented));
            found = if hit && found.is_none() { Some(i) } else { found };
        }
        Ok(found)
    }

    /// Whether `input` has the shape of a recovery code (see
    /// [`RecoveryCodeSet::find`]).
    pub(crate) fn is_well_formed(input: &str) -> bool {
        normalize(input).is_ok()
    }

    /// A stable name of the code at `index`, for the store's single-use
    /// claim: 128 bits of SHA-256 over the set id and the code's MAC, never
    /// the code. Not keyed on purpose: a claim must outlive key rotations
    /// (the MAC is already keyed, and the set id is random), or a used code
    /// the host never struck would work again once the key ring changes.
    pub(crate) fn claim_name(&self, index: usize) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"otp-recovery/v1/recovery-code-claim\0");
        h.update(self.id);
        if let Some(Some(m)) = self.macs.get(index) {
            h.update(m.as_bytes());
        }
        let mut out = String::with_capacity(32);
        crate::hex::encode_into(&h.finalize()[..16], &mut out);
        out
    }

    /// The set's binary form, to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 16 + 4 + 1 + 33 * self.macs.len());
        out.extend_from_slice(SET_MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.push(self.macs.len() as u8);
        for m in &self.macs {
            match m {
                Some(m) => {
                    out.push(1);
                    out.extend_from_slice(m.as_bytes());
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Decodes [`RecoveryCodeSet::to_bytes`].
    ///
    /// # Errors
    /// [`DecodeError`] for anything that is not a whole, valid set.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.take(4)? != SET_MAGIC {
            return Err(DecodeError("unknown recovery code set format"));
        }
        let id = r.array()?;
        let key_id = u32::from_be_bytes(r.array()?);
        let n = usize::from(r.byte()?);
        if n > MAX_RECOVERY_CODES {
            return Err(DecodeError("too many recovery codes"));
        }
        let macs = (0..n)
            .map(|_| match r.byte()? {
                0 => Ok(None),
                1 => r.array().map(|b| Some(Mac::from_bytes(b))),
                _ => Err(DecodeError("invalid recovery code slot")),
            })
            .collect::<Result<_, _>>()?;
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(RecoveryCodeSet { id, key_id, macs })
    }
}

fn encode(raw: &[u8; CODE_BYTES]) -> Zeroizing<[u8; CODE_CHARS]> {
    let mut out = Zeroizing::new([0u8; CODE_CHARS]);
    let mut bits = Zeroizing::new(u128::from_be_bytes({
        let mut b = [0u8; 16];
        b[6..].copy_from_slice(raw);
        b
    }));
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(*bits & 31) as usize];
        *bits >>= 5;
    }
    out
}

fn normalize(input: &str) -> Result<Zeroizing<[u8; CODE_CHARS]>, InputError> {
    let mut out = Zeroizing::new([0u8; CODE_CHARS]);
    let mut n = 0;
    for c in input.trim().bytes() {
        if c == b'-' || c == b' ' {
            continue;
        }
        let c = match c.to_ascii_uppercase() {
            b'O' => b'0',
            b'I' | b'L' => b'1',
            c => c,
        };
        if n == CODE_CHARS || !ALPHABET.contains(&c) {
            return Err(InputError::MalformedRecoveryCode);
        }
        out[n] = c;
        n += 1;
    }
    if n != CODE_CHARS {
        return Err(InputError::MalformedRecoveryCode);
    }
    Ok(out)
}

fn mac(keys: &KeyRing, key_id: u32, set: &[u8; 16], account: &AccountId, chars: &[u8]) -> Option<Mac> {
    let mut input = Zeroizing::new(Vec::with_capacity(1 + account.as_str().len() + chars.len()));
    input.push(account.as_str().len() as u8);
    input.extend_from_slice(account.as_str().as_bytes());
    input.extend_from_slice(chars);
    keys.recovery_code_mac(key_id, set, &input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ServerKey;

    fn keys() -> KeyRing {
        KeyRing::new(1, ServerKey::from_bytes(vec![9; 32]).unwrap())
    }

    #[test]
    fn codes_are_80_bits_in_four_groups_and_distinct() {
        let account = AccountId::new("a").unwrap();
        let issued = RecoveryCodes::issue(&keys(), &account, 20).unwrap();
        let mut seen = std::collections::HashSet::new();
        for code in issued.codes() {
            let s = code.expose_secret();
            assert_eq!(s.len(), 19, "{s}");
            assert_eq!(s.matches('-').count(), 3);
            assert!(s.bytes().filter(|c| *c != b'-').all(|c| ALPHABET.contains(&c)));
            assert!(seen.insert(s.to_owned()));
        }
        assert!(RecoveryCodes::issue(&keys(), &account, 0).is_err());
        assert!(RecoveryCodes::issue(&keys(), &account, 21).is_err());
    }

    #[test]
    fn each_code_finds_its_own_index_however_it_is_typed() {
        let account = AccountId::new("a").unwrap();
        let issued = RecoveryCodes::issue(&keys(), &account, 10).unwrap();
        let set = issued.set();
        for (i, code) in issued.codes().iter().enumerate() {
            let s = code.expose_secret();
            assert_eq!(set.find(&keys(), &account, s).unwrap(), Some(i));
            let loose = format!(
                " {} ",
                s.replace('-', " ")
                    .to_lowercase()
                    .replace('0', "o")
                    .replace('1', "l")
            );
            assert_eq!(set.find(&keys(), &account, &loose).unwrap(), Some(i), "{loose:?}");
        }
    }

    #[test]
    fn another_account_another_set_or_another_key_matches_nothing() {
        let account = AccountId::new("a").unwrap();
        let issued = RecoveryCodes::issue(&keys(), &account, 3).unwrap();
        let code = issued.codes()[0].expose_secret();
        let other = AccountId::new("b").unwrap();
        assert_eq!(issued.set().find(&keys(), &other, code).unwrap(), None);
        let fresh = RecoveryCodes::issue(&keys(), &account, 3).unwrap();
        assert_eq!(fresh.set().find(&keys(), &account, code).unwrap(), None);
        let other_key = KeyRing::new(1, ServerKey::from_bytes(vec![8; 32]).unwrap());
        assert_eq!(issued.set().find(&other_key, &account, code).unwrap(), None);
        let rotated = KeyRing::new(2, ServerKey::from_bytes(vec![8; 32]).unwrap());
        assert!(matches!(
            issued.set().find(&rotated, &account, code),
            Err(RecoveryCodeError::UnknownKey(1))
        ));
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        let account = AccountId::new("a").unwrap();
        let set = RecoveryCodes::issue(&keys(), &account, 1).unwrap().into_set();
        for bad in [
            "",
            "ABCD",
            "ABCD-EFGH-JKMN-PQRSX",
            "ABCD-EFGH-JKMN-PQR!",
            "ABCD-EFGH-JKMN-PQRU",
        ] {
            assert!(
                matches!(
                    set.find(&keys(), &account, bad),
                    Err(RecoveryCodeError::Input(InputError::MalformedRecoveryCode))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_stored_form_round_trips_and_refuses_damage() {
        let account = AccountId::new("a").unwrap();
        let issued = RecoveryCodes::issue(&keys(), &account, 4).unwrap();
        let bytes = issued.set().to_bytes();
        assert_eq!(RecoveryCodeSet::from_bytes(&bytes).unwrap(), *issued.set());
        for cut in 0..bytes.len() {
            assert!(RecoveryCodeSet::from_bytes(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(RecoveryCodeSet::from_bytes(&long).is_err());
        let struck = issued.set().without(1);
        assert_eq!(struck.len(), 3);
        let find = |set: &RecoveryCodeSet, i: usize| {
            set.find(&keys(), &account, issued.codes()[i].expose_secret())
                .unwrap()
        };
        assert_eq!(find(&struck, 1), None);
        // Indexes are stable: strikes apply in any order.
        assert_eq!(find(&struck, 2), Some(2));
        let both = struck.without(3).without(1);
        assert_eq!(both, issued.set().without(3).without(1));
        assert_eq!(both.len(), 2);
        assert_eq!(RecoveryCodeSet::from_bytes(&both.to_bytes()).unwrap(), both);
        assert_ne!(both.claim_name(0), both.claim_name(2));
        assert_eq!(issued.set().key_id(), 1);
        let shown = format!("{:?} {:?}", issued, issued.set());
        for code in issued.codes() {
            assert!(!shown.contains(code.expose_secret()));
        }
    }
}
