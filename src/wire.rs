//! Reading the binary forms the crate stores (flow records, support cases,
//! recovery code sets): a cursor that refuses truncation, and the error of
//! a stored form that cannot be read.

use crate::clock::Timestamp;

/// A stored record that cannot be decoded: corrupt, truncated, or written
/// by something else. Says what is wrong, never what the record held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable flow record: {0}")]
pub struct DecodeError(pub &'static str);

/// Reads the binary forms of records and cases, refusing truncation.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn timestamp(&mut self) -> Result<Timestamp, DecodeError> {
        Ok(Timestamp::from_unix_millis(u64::from_be_bytes(self.array()?)))
    }
    pub(crate) fn string(&mut self) -> Result<Option<&'a str>, DecodeError> {
        match self.byte()? {
            0xff => Ok(None),
            len => std::str::from_utf8(self.take(usize::from(len))?)
                .map(Some)
                .map_err(|_| DecodeError("invalid utf-8")),
        }
    }
}
