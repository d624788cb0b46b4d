//! Time-based one-time passwords from an authenticator app (RFC 6238), over
//! HOTP (RFC 4226).
//!
//! The host keeps each enrolled authenticator's secret and hands it to the
//! crate as a [`Totp`] when a recovery needs it (see
//! [`FactorSource`](crate::factor::FactorSource)); the crate never stores
//! it. A code is accepted once per time step: the step a code matched is
//! claimed in the store, so a code seen over a shoulder cannot be replayed
//! on another instance of the host within its window. (The claim is keyed
//! by the account's pseudonym, so retiring the key ring's decoy key forgets
//! the claims of the last two minutes or so; retire it when that matters
//! not, or set [`KeyRing::with_decoy_key`](crate::KeyRing::with_decoy_key).)
//!
//! ```
//! use std::time::Duration;
//! use otp_recovery::factor::{Totp, TotpAlgorithm, TotpSecret};
//! use otp_recovery::Timestamp;
//!
//! // RFC 6238, Appendix B: SHA-1, 8 digits, T = 59 s.
//! let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap();
//! let totp = Totp::new(secret).with_algorithm(TotpAlgorithm::Sha1).with_digits(8).unwrap();
//! let at = Timestamp::from_unix_millis(59_000);
//! assert_eq!(totp.code_at(at).expose_secret(), "94287082");
//! assert_eq!(totp.matching_step("94287082", at), Some(1));
//! ```

use std::fmt;
use std::time::Duration;

use hmac::Hmac;
use hmac::digest::KeyInit;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::clock::Timestamp;
use crate::input::InputError;
use crate::rng::{RandomError, fill_random};
use crate::secret::{Code, REDACTED};

/// Fewest bytes an authenticator secret may have (RFC 4226 requires 128
/// bits and recommends 160).
pub const MIN_TOTP_SECRET_LEN: usize = 16;
/// Most steps either side of the current one that [`Totp::with_skew`]
/// allows.
pub const MAX_TOTP_SKEW: u32 = 2;

/// The hash function of an authenticator (RFC 6238 allows these three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TotpAlgorithm {
    /// HMAC-SHA-1, what most authenticator apps use.
    #[default]
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

/// An authenticator's shared secret: at least 16 bytes. Zeroized on drop,
/// `[redacted]` in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    /// Wraps secret bytes (the decoded form of an `otpauth://` secret).
    ///
    /// # Errors
    /// [`InputError::TotpSecretTooShort`] below 16 bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, InputError> {
        if bytes.len() < MIN_TOTP_SECRET_LEN {
            let mut bytes = bytes;
            bytes.zeroize();
            return Err(InputError::TotpSecretTooShort {
                min: MIN_TOTP_SECRET_LEN,
            });
        }
        Ok(TotpSecret(bytes))
    }
}

impl TotpSecret {
    /// A fresh 20-byte secret (160 bits, what RFC 4226 recommends and
    /// authenticator apps expect) from the OS CSPRNG, for enrolment.
    ///
    /// # Errors
    /// [`RandomError`] if the operating system cannot supply randomness.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = vec![0u8; 20];
        fill_random(&mut bytes)?;
        Ok(TotpSecret(bytes))
    }

    /// The secret's bytes, to store (encrypted) or to show once at
    /// enrolment (base-32 encoded in an `otpauth://` URI).
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// One enrolled authenticator: its secret and parameters. Defaults: SHA-1,
/// 6 digits, 30-second steps from the Unix epoch, one step of skew either
/// side.
#[derive(Clone)]
pub struct Totp {
    secret: TotpSecret,
    algorithm: TotpAlgorithm,
    digits: u8,
    step: Duration,
    skew: u32,
}

impl fmt::Debug for Totp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Totp")
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .field("step", &self.step)
            .field("skew", &self.skew)
            .finish_non_exhaustive()
    }
}

impl Totp {
    /// An authenticator with the common parameters (SHA-1, 6 digits, 30 s,
    /// skew 1).
    pub fn new(secret: TotpSecret) -> Self {
        Totp {
            secret,
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
            step: Duration::from_secs(30),
            skew: 1,
        }
    }

    /// Sets the hash function.
    #[must_use]
    pub fn with_algorithm(mut self, algorithm: TotpAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets the number of digits.
    ///
    /// # Errors
    /// [`InputError::TotpParameters`] outside 6 to 8.
    pub fn with_digits(mut self, digits: u8) -> Result<Self, InputError> {
        if !(6..=8).contains(&digits) {
            return Err(InputError::TotpParameters("digits must be 6 to 8"));
        }
        self.digits = digits;
        Ok(self)
    }

    /// Sets the time step.
    ///
    /// # Errors
    /// [`InputError::TotpParameters`] for a step that is not a whole number
    /// of seconds from 1 s to 10 minutes.
    pub fn with_step(mut self, step: Duration) -> Result<Self, InputError> {
        if step.subsec_nanos() != 0 || step.as_secs() == 0 || step.as_secs() > 600 {
            return Err(InputError::TotpParameters(
                "the step must be 1 to 600 whole seconds",
            ));
        }
        self.step = step;
        Ok(self)
    }

    /// Sets how many steps before and after the current one are accepted,
    /// for clock drift and typing time.
    ///
    /// # Errors
    /// [`InputError::TotpParameters`] above [`MAX_TOTP_SKEW`].
    pub fn with_skew(mut self, steps: u32) -> Result<Self, InputError> {
        if steps > MAX_TOTP_SKEW {
            return Err(InputError::TotpParameters("the skew must be at most 2 steps"));
        }
        self.skew = steps;
        Ok(self)
    }

    /// The hash function.
    pub fn algorithm(&self) -> TotpAlgorithm {
        self.algorithm
    }

    /// The number of digits.
    pub fn digits(&self) -> u8 {
        self.digits
    }

    /// The time step.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Steps of skew accepted either side.
    pub fn skew(&self) -> u32 {
        self.skew
    }

    /// The time step (RFC 6238's `T`) that `at` falls in.
    pub fn step_at(&self, at: Timestamp) -> u64 {
        at.as_unix_millis() / 1000 / self.step.as_secs()
    }

    /// The code of the step `at` falls in: what the authenticator shows.
    pub fn code_at(&self, at: Timestamp) -> Code {
        self.code_of_step(self.step_at(at))
    }

    fn code_of_step(&self, step: u64) -> Code {
        let value = hotp_value(&self.secret.0, self.algorithm, step, self.digits);
        let text = Zeroizing::new(format!("{value:0width$}", width = usize::from(self.digits)));
        Code::parse(&text).expect("a HOTP value is all digits")
    }

    /// The step whose code `code` is, within the skew window around `at`,
    /// or `None`. Every step of the window is computed and compared in
    /// constant time, whatever matches, so the time taken says nothing
    /// about which step (if any) matched. Whether the step was already used
    /// is for the caller to check.
    pub fn matching_step(&self, code: &str, at: Timestamp) -> Option<u64> {
        let presented = code.as_bytes();
        if presented.len() != usize::from(self.digits) || !presented.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let now = self.step_at(at);
        let mut found = 0u64;
        let mut any = subtle::Choice::from(0);
        for step in now.saturating_sub(u64::from(self.skew))..=now.saturating_add(u64::from(self.skew)) {
            let expected = self.code_of_step(step);
            let hit = expected.expose_secret().as_bytes().ct_eq(presented);
            found.conditional_assign(&step, hit & !any);
            any |= hit;
        }
        bool::from(any).then_some(found)
    }

    /// How long a claimed step must be remembered: past the last instant
    /// its code can still be accepted.
    pub(crate) fn replay_window(&self) -> Duration {
        self.step * (2 * self.skew + 2)
    }
}

/// The HOTP value (RFC 4226) of `counter`: the dynamically truncated HMAC,
/// modulo 10^`digits` (6 to 8 digits; more are clamped to 8).
pub fn hotp(secret: &TotpSecret, algorithm: TotpAlgorithm, counter: u64, digits: u8) -> u32 {
    hotp_value(&secret.0, algorithm, counter, digits.clamp(6, 8))
}

fn hotp_value(key: &[u8], algorithm: TotpAlgorithm, counter: u64, digits: u8) -> u32 {
    let message = counter.to_be_bytes();
    let digest: Zeroizing<Vec<u8>> = Zeroizing::new(match algorithm {
        TotpAlgorithm::Sha1 => hmac_bytes::<Hmac<sha1::Sha1>>(key, &message),
        TotpAlgorithm::Sha256 => hmac_bytes::<Hmac<sha2::Sha256>>(key, &message),
        TotpAlgorithm::Sha512 => hmac_bytes::<Hmac<sha2::Sha512>>(key, &message),
    });
    let offset = usize::from(digest[digest.len() - 1] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    binary % 10u32.pow(u32::from(digits))
}

fn hmac_bytes<M: KeyInit + hmac::Mac>(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_SEED: &[u8] = b"12345678901234567890";
    const SHA256_SEED: &[u8] = b"12345678901234567890123456789012";
    const SHA512_SEED: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    fn totp(seed: &[u8], algorithm: TotpAlgorithm, digits: u8) -> Totp {
        Totp::new(TotpSecret::from_bytes(seed.to_vec()).unwrap())
            .with_algorithm(algorithm)
            .with_digits(digits)
            .unwrap()
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_millis(secs * 1000)
    }

    #[test]
    fn rfc_4226_appendix_d_hotp_values() {
        let secret = TotpSecret::from_bytes(SHA1_SEED.to_vec()).unwrap();
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, want) in expected.into_iter().enumerate() {
            assert_eq!(
                hotp(&secret, TotpAlgorithm::Sha1, counter as u64, 6),
                want,
                "count {counter}"
            );
        }
    }

    #[test]
    fn rfc_6238_appendix_b_vectors_for_all_three_hashes() {
        // (time, SHA-1, SHA-256, SHA-512), 8 digits, 30 s steps from 0.
        let table: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (time, sha1, sha256, sha512) in table {
            for (seed, algorithm, want) in [
                (SHA1_SEED, TotpAlgorithm::Sha1, sha1),
                (SHA256_SEED, TotpAlgorithm::Sha256, sha256),
                (SHA512_SEED, TotpAlgorithm::Sha512, sha512),
            ] {
                let t = totp(seed, algorithm, 8);
                assert_eq!(
                    t.code_at(at(time)).expose_secret(),
                    want,
                    "{algorithm:?} at {time}"
                );
                let step = t.step_at(at(time));
                assert_eq!(
                    t.matching_step(want, at(time)),
                    Some(step),
                    "{algorithm:?} at {time}"
                );
            }
        }
    }

    #[test]
    fn skew_accepts_exactly_one_step_either_side() {
        let t = totp(SHA1_SEED, TotpAlgorithm::Sha1, 6);
        // Step 40 covers [1200 s, 1230 s).
        let code = t.code_at(at(1200));
        let code = code.expose_secret();
        // Valid from the first instant of step 39 to the last of step 41.
        assert_eq!(
            t.matching_step(code, Timestamp::from_unix_millis(1_170_000)),
            Some(40)
        );
        assert_eq!(
            t.matching_step(code, Timestamp::from_unix_millis(1_169_999)),
            None
        );
        assert_eq!(
            t.matching_step(code, Timestamp::from_unix_millis(1_259_999)),
            Some(40)
        );
        assert_eq!(
            t.matching_step(code, Timestamp::from_unix_millis(1_260_000)),
            None
        );
        let strict = t.clone().with_skew(0).unwrap();
        assert_eq!(
            strict.matching_step(code, Timestamp::from_unix_millis(1_229_999)),
            Some(40)
        );
        assert_eq!(
            strict.matching_step(code, Timestamp::from_unix_millis(1_230_000)),
            None
        );
    }

    #[test]
    fn malformed_and_wrong_codes_match_nothing() {
        let t = totp(SHA1_SEED, TotpAlgorithm::Sha1, 6);
        let now = at(1_000_000);
        let right = t.code_at(now);
        assert!(t.matching_step(right.expose_secret(), now).is_some());
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６", " 123456"] {
            assert_eq!(t.matching_step(bad, now), None, "{bad:?}");
        }
        let mut wrong = right.expose_secret().as_bytes().to_vec();
        wrong[5] = b'0' + (wrong[5] - b'0' + 1) % 10;
        assert_eq!(t.matching_step(std::str::from_utf8(&wrong).unwrap(), now), None);
    }

    #[test]
    fn parameters_are_checked_and_secrets_stay_out_of_debug() {
        assert!(TotpSecret::from_bytes(vec![1; 15]).is_err());
        let t = totp(SHA1_SEED, TotpAlgorithm::Sha1, 6);
        assert!(t.clone().with_digits(5).is_err());
        assert!(t.clone().with_digits(9).is_err());
        assert!(t.clone().with_step(Duration::from_millis(1500)).is_err());
        assert!(t.clone().with_step(Duration::ZERO).is_err());
        assert!(t.clone().with_skew(3).is_err());
        let shown = format!("{t:?} {:?}", TotpSecret::from_bytes(SHA1_SEED.to_vec()).unwrap());
        assert!(!shown.contains("1234567890"), "{shown}");
        assert!(shown.contains("[redacted]"));
        assert_eq!(t.replay_window(), Duration::from_secs(120));
        let fresh = TotpSecret::generate().unwrap();
        assert_eq!(fresh.expose_secret().len(), 20);
        assert_ne!(
            fresh.expose_secret(),
            TotpSecret::generate().unwrap().expose_secret()
        );
    }
}
