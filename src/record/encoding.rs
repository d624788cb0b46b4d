//! The flow record's versioned binary form, for stores that keep a record
//! as one value.

use super::{DecodeError, DecoyId, FactorProgress, FlowRecord, FlowState, Mac, Subject};
use crate::factor::FactorSet;
use crate::id::{AccountId, FlowId};
use crate::phone::PhoneNumber;
use crate::wire::Reader;

/// The first form, without the factor step; still read.
const MAGIC_V1: &[u8; 3] = b"OR\x01";
const MAGIC: &[u8; 3] = b"OR\x02";

impl FlowRecord {
    /// Encodes the record in the crate's versioned binary form (at most
    /// about 400 bytes), for stores that keep it as one value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.id.as_bytes());
        match &self.subject {
            Subject::Account(account) => {
                out.push(1);
                put_str(&mut out, Some(account.as_str()));
            }
            Subject::Unknown(decoy) => {
                out.push(2);
                out.extend_from_slice(decoy.as_bytes());
            }
        }
        put_str(&mut out, self.phone.as_ref().map(PhoneNumber::as_str));
        out.push(self.state.code());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(self.code_mac.as_bytes());
        for t in [
            self.code_expires_at,
            self.last_sent_at,
            self.created_at,
            self.updated_at,
        ] {
            out.extend_from_slice(&t.as_unix_millis().to_be_bytes());
        }
        out.extend_from_slice(&self.failed_attempts.to_be_bytes());
        out.extend_from_slice(&self.prior_failures.to_be_bytes());
        out.extend_from_slice(&self.sends.to_be_bytes());
        match &self.token_mac {
            Some(mac) => {
                out.push(1);
                out.extend_from_slice(mac.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.token_expires_at.as_unix_millis().to_be_bytes());
        out.extend_from_slice(&self.purge_after.as_unix_millis().to_be_bytes());
        match &self.factor {
            None => out.push(0),
            Some(f) => {
                out.push(1);
                out.push(f.offered.bits());
                for n in f.failed {
                    out.extend_from_slice(&n.to_be_bytes());
                }
                match &f.channel_mac {
                    Some(mac) => {
                        out.push(1);
                        out.extend_from_slice(mac.as_bytes());
                    }
                    None => out.push(0),
                }
                for t in [f.expires_at, f.channel_expires_at, f.channel_last_sent_at] {
                    out.extend_from_slice(&t.as_unix_millis().to_be_bytes());
                }
                out.extend_from_slice(&f.channel_sends.to_be_bytes());
            }
        }
        out
    }

    /// Decodes [`FlowRecord::to_bytes`] output, checking every field.
    ///
    /// # Errors
    /// [`DecodeError`] for anything that is not a whole, valid record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let format = match r.take(3)? {
            m if m == MAGIC => 2,
            m if m == MAGIC_V1 => 1,
            _ => return Err(DecodeError("unknown format or version")),
        };
        let id = FlowId::from_bytes(r.array()?);
        let subject = match r.byte()? {
            1 => {
                let id = r.string()?.ok_or(DecodeError("missing account id"))?;
                Subject::Account(AccountId::new(id).map_err(|_| DecodeError("invalid account id"))?)
            }
            2 => Subject::Unknown(DecoyId::from_bytes(r.array()?)),
            _ => return Err(DecodeError("unknown subject kind")),
        };
        let phone = r
            .string()?
            .map(|s| PhoneNumber::parse(s).map_err(|_| DecodeError("invalid phone number")))
            .transpose()?;
        if matches!(subject, Subject::Account(_)) != phone.is_some() {
            return Err(DecodeError("an account flow has a phone and a decoy has none"));
        }
        let state = FlowState::from_code(r.byte()?).ok_or(DecodeError("unknown state"))?;
        let version = u64::from_be_bytes(r.array()?);
        let key_id = u32::from_be_bytes(r.array()?);
        let code_mac = Mac::from_bytes(r.array()?);
        let code_expires_at = r.timestamp()?;
        let last_sent_at = r.timestamp()?;
        let created_at = r.timestamp()?;
        let updated_at = r.timestamp()?;
        let failed_attempts = u32::from_be_bytes(r.array()?);
        let prior_failures = u32::from_be_bytes(r.array()?);
        let sends = u32::from_be_bytes(r.array()?);
        let token_mac = match r.byte()? {
            0 => None,
            1 => Some(Mac::from_bytes(r.array()?)),
            _ => return Err(DecodeError("invalid token flag")),
        };
        let token_expires_at = r.timestamp()?;
        let purge_after = r.timestamp()?;
        let factor = if format == 1 { None } else { read_factor(&mut r)? };
        if state == FlowState::FactorPending && factor.is_none() {
            return Err(DecodeError("a flow awaiting a factor has no factor step"));
        }
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(FlowRecord {
            id,
            subject,
            phone,
            state,
            version,
            key_id,
            code_mac,
            code_expires_at,
            failed_attempts,
            prior_failures,
            sends,
            last_sent_at,
            created_at,
            updated_at,
            token_mac,
            token_expires_at,
            purge_after,
            factor,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    // Account ids are at most 128 bytes and phones 16, so a length fits a
    // byte; 0xff marks absence.
    match s {
        Some(s) => {
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        None => out.push(0xff),
    }
}

/// A record's factor step, if it has one.
fn read_factor(r: &mut Reader<'_>) -> Result<Option<FactorProgress>, DecodeError> {
    match r.byte()? {
        0 => return Ok(None),
        1 => {}
        _ => return Err(DecodeError("invalid factor flag")),
    }
    let offered = FactorSet::from_bits(r.byte()?).ok_or(DecodeError("unknown factor kind"))?;
    let mut failed = [0u32; 3];
    for n in &mut failed {
        *n = u32::from_be_bytes(r.array()?);
    }
    let channel_mac = match r.byte()? {
        0 => None,
        1 => Some(Mac::from_bytes(r.array()?)),
        _ => return Err(DecodeError("invalid channel code flag")),
    };
    Ok(Some(FactorProgress {
        offered,
        failed,
        expires_at: r.timestamp()?,
        channel_expires_at: r.timestamp()?,
        channel_last_sent_at: r.timestamp()?,
        channel_sends: u32::from_be_bytes(r.array()?),
        channel_mac,
    }))
}
