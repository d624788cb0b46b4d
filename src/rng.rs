//! Where a [`Recovery`](crate::Recovery) draws its codes, flow ids and reset
//! tokens from: the operating system's generator unless the host injects a
//! [`rand_core::TryCryptoRng`] (a seeded generator in tests, a hardware
//! source in production).

use std::fmt;
use std::sync::{Arc, Mutex};

use rand_core::TryCryptoRng;

/// The random number generator (the operating system's or the one the
/// host injected) could not supply random bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the random number generator failed")]
pub struct RandomError;

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|_| RandomError)
}

/// The randomness of one [`Recovery`](crate::Recovery).
///
/// Cloning shares the generator. The default, [`Randomness::os`], reads
/// the OS generator directly, with no lock.
#[derive(Clone, Default)]
pub struct Randomness(Option<Arc<Mutex<dyn FillBytes>>>);

/// Object-safe view of a `TryCryptoRng`, whatever its error type.
trait FillBytes: Send {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError>;
}

impl<R: TryCryptoRng + Send> FillBytes for R {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError> {
        self.try_fill_bytes(buf).map_err(|_| RandomError)
    }
}

impl Randomness {
    /// The operating system's generator (through `getrandom`).
    pub fn os() -> Self {
        Randomness(None)
    }

    /// Any cryptographic generator. A generator's failure becomes
    /// [`RandomError`] ([`Error::Random`](crate::Error::Random)), and the
    /// call that needed it writes nothing.
    pub fn from_rng<R: TryCryptoRng + Send + 'static>(rng: R) -> Self {
        Randomness(Some(Arc::new(Mutex::new(rng))))
    }

    /// Fills `buf` with random bytes.
    ///
    /// # Errors
    /// [`RandomError`] if the generator fails, or once it has panicked.
    pub fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        match &self.0 {
            None => fill_random(buf),
            // A generator that panicked mid-fill may be left in any state,
            // one that repeats its output included: fail closed, for good.
            Some(rng) => rng.lock().map_err(|_| RandomError)?.fill(buf),
        }
    }
}

impl fmt::Debug for Randomness {
    /// Says which source, never its state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("Randomness(os)"),
            Some(_) => f.write_str("Randomness(injected)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter, for tests only: nothing about it is cryptographic.
    struct Counting(u8);

    impl rand_core::TryRng for Counting {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            let mut b = [0; 4];
            self.try_fill_bytes(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            let mut b = [0; 8];
            self.try_fill_bytes(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            for b in dst {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(())
        }
    }

    impl TryCryptoRng for Counting {}

    #[test]
    fn an_injected_generator_is_used_and_shared_by_clones() {
        let rng = Randomness::from_rng(Counting(0));
        let twin = rng.clone();
        let (mut a, mut b) = ([0u8; 3], [0u8; 3]);
        rng.fill(&mut a).unwrap();
        twin.fill(&mut b).unwrap();
        assert_eq!((a, b), ([1, 2, 3], [4, 5, 6]));
        assert_eq!(format!("{rng:?}"), "Randomness(injected)");
    }

    /// Panics on its second fill.
    struct PanicsOnce(u8);

    impl rand_core::TryRng for PanicsOnce {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            unreachable!("fills only")
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            unreachable!("fills only")
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            self.0 += 1;
            assert!(self.0 < 2, "a generator that fails by panicking");
            dst.fill(0x5a);
            Ok(())
        }
    }

    impl TryCryptoRng for PanicsOnce {}

    #[test]
    fn a_generator_that_panicked_fails_every_later_fill() {
        let rng = Randomness::from_rng(PanicsOnce(0));
        rng.fill(&mut [0u8; 4]).unwrap();
        let twin = rng.clone();
        let panicked = std::thread::spawn(move || twin.fill(&mut [0u8; 4])).join();
        assert!(panicked.is_err(), "the second fill panics");
        assert_eq!(rng.fill(&mut [0u8; 4]), Err(RandomError));
        assert_eq!(rng.fill(&mut [0u8; 4]), Err(RandomError), "for good");
    }

    #[test]
    fn the_os_generator_fills() {
        let mut a = [0u8; 32];
        Randomness::os().fill(&mut a).unwrap();
        assert_ne!(a, [0u8; 32]);
        assert_eq!(format!("{:?}", Randomness::os()), "Randomness(os)");
    }
}
