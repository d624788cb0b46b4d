//! Strict lowercase hex, for flow ids and tokens.
//!
//! Hand-written because it is a dozen lines and the default build keeps its
//! dependency list short; decoding refuses uppercase so that every value has
//! exactly one text form.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Decodes exactly `2 * out.len()` lowercase hex characters into `out`.
pub(crate) fn decode_into(text: &[u8], out: &mut [u8]) -> Result<(), ()> {
    if text.len() != 2 * out.len() {
        return Err(());
    }
    for (pair, byte) in text.chunks_exact(2).zip(out.iter_mut()) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(())
}

fn nibble(c: u8) -> Result<u8, ()> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(()),
    }
}

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
