//! Strict lowercase hex, for flow ids and tokens.
//!
//! Hand-written because it is a dozen lines and the default build keeps its
//! dependency list short; decoding refuses uppercase so that every value has
//! exactly one text form.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Crockford's base-32 alphabet (support references, recovery codes): no
/// I, L, O or U, so a value read out over the phone is not misheard.
pub(crate) const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Decodes exactly `2 * out.len()` lowercase hex characters into `out`.
///
/// By table, without a branch on each character's class: a decoy id is
/// decoded on every load of its flow, and branches on random digits and
/// letters mispredict often enough that loading a decoy's flow took
/// measurably longer than an account's (see `tests/timing.rs`).
pub(crate) fn decode_into(text: &[u8], out: &mut [u8]) -> Result<(), ()> {
    if text.len() != 2 * out.len() {
        return Err(());
    }
    let mut bad = 0u8;
    for (pair, byte) in text.chunks_exact(2).zip(out.iter_mut()) {
        let (hi, lo) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    if bad & INVALID != 0 { Err(()) } else { Ok(()) }
}

/// Marks a byte that is not a lowercase hex digit in [`NIBBLES`].
const INVALID: u8 = 0x80;

/// Each byte's value as a lowercase hex digit, or [`INVALID`].
const NIBBLES: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 16 {
        table[DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut text = String::new();
        encode_into(&bytes, &mut text);
        let mut back = vec![0; 256];
        decode_into(text.as_bytes(), &mut back).unwrap();
        assert_eq!(back, bytes);
    }

    #[test]
    fn refuses_uppercase_odd_lengths_and_other_characters() {
        let mut out = [0u8; 1];
        for bad in ["AB", "a", "abc", "g0", "0x", " a"] {
            assert!(decode_into(bad.as_bytes(), &mut out).is_err(), "{bad}");
        }
    }
}
