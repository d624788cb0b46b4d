//! The memory store's private form of a flow record: one allocation per
//! flow, about 115 bytes for an account flow, instead of the 320-byte
//! [`FlowRecord`] plus its account id's own allocation.
//!
//! The account id and the phone are kept inline, small numbers as
//! varints, and every instant but the creation as its (zigzag) distance
//! from the creation. The form never leaves the process, so it has no
//! version: it only has to round-trip within one build.
//!
//! ```text
//! [0..16)   flow id
//! [16..24)  version, u64 LE        (compare-and-swap reads it in place)
//! [24..32)  purge_after, u64 LE    (sweeping reads it in place)
//! [32..40)  updated_at, u64 LE     (a supersede writes it in place)
//! [40]      state                  (read and superseded in place)
//! varint    seq                    (the store's creation order, per subject shard)
//! subject   1 | flags, len, account id | 2 | flags, len, decoy id (hex)
//!           (flags: 0x10 a token MAC follows, 0x20 a factor step follows)
//! phone     0 | len, E.164 text
//! varint    key_id
//! [32]      code_mac
//! varint    created_at
//! zigzag    code_expires_at, last_sent_at, token_expires_at (from created_at)
//! varint    failed_attempts, prior_failures, sends
//! token     mac (32), if flagged
//! factor    if flagged: offered, varint failed × 3, zigzag expires_at,
//!           channel_expires_at, channel_last_sent_at, channel mac flag (+ 32), varint channel_sends
//! ```

use crate::clock::Timestamp;
use crate::code::Mac;
use crate::factor::FactorSet;
use crate::id::{AccountId, FlowId};
use crate::phone::PhoneNumber;
use crate::record::{DecodeError, DecoyId, FactorProgress, FlowRecord, FlowState, Reader, Subject};

const VERSION_AT: usize = 16;
const PURGE_AT: usize = 24;
const UPDATED_AT: usize = 32;
const STATE_AT: usize = 40;
const HEADER: usize = 41;
/// The subject byte: its kind in the low bits, and whether a token MAC and
/// a factor step follow.
const SUBJECT_KIND: u8 = 0x0f;
const HAS_TOKEN: u8 = 0x10;
const HAS_FACTOR: u8 = 0x20;
/// Room for the largest record: a 128-byte account id, a 16-digit phone,
/// a token and a factor step with a channel code, every varint at its
/// longest, come to under 450 bytes.
const MAX_LEN: usize = 512;

/// One flow as the memory store keeps it. Always at least [`HEADER`]
/// bytes: only [`Stored::new`] makes one.
pub(super) struct Stored(Box<[u8]>);

impl Stored {
    /// Packs `flow`, created `seq`-th in its subject's index shard.
    pub(super) fn new(flow: &FlowRecord, seq: u64) -> Self {
        Stored(Box::from(Writer::pack(flow, seq).as_slice()))
    }

    /// Replaces the record with `flow`, keeping `seq`; reuses the
    /// allocation when the packed length is unchanged (the usual update:
    /// a count or a state moves).
    pub(super) fn replace(&mut self, flow: &FlowRecord, seq: u64) {
        let packed = Writer::pack(flow, seq);
        if packed.as_slice().len() == self.0.len() {
            self.0.copy_from_slice(packed.as_slice());
        } else {
            self.0 = Box::from(packed.as_slice());
        }
    }

    pub(super) fn id(&self) -> FlowId {
        let mut id = [0u8; FlowId::LEN];
        id.copy_from_slice(&self.0[..FlowId::LEN]);
        FlowId::from_bytes(id)
    }

    /// Whether this is the flow `id`, without copying the id out.
    pub(super) fn is(&self, id: &FlowId) -> bool {
        self.0[..FlowId::LEN] == id.as_bytes()[..]
    }

    pub(super) fn version(&self) -> u64 {
        u64::from_le_bytes(self.fixed(VERSION_AT))
    }

    pub(super) fn purge_after(&self) -> Timestamp {
        Timestamp::from_unix_millis(u64::from_le_bytes(self.fixed(PURGE_AT)))
    }

    pub(super) fn state(&self) -> Result<FlowState, DecodeError> {
        FlowState::from_code(self.0[STATE_AT]).ok_or(DecodeError("unknown state"))
    }

    fn fixed(&self, at: usize) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.0[at..at + 8]);
        out
    }

    /// The fields the index needs, without unpacking the record.
    pub(super) fn head(&self) -> Result<Head<'_>, DecodeError> {
        let mut r = Reader(&self.0[HEADER..]);
        let seq = varint(&mut r)?;
        let state = self.state()?;
        let kind = r.byte()?;
        let flags = kind & !SUBJECT_KIND;
        if flags & !(HAS_TOKEN | HAS_FACTOR) != 0 {
            return Err(DecodeError("unknown flags"));
        }
        // Both kinds are kept as the text of their key, so that finding a
        // subject's flows costs the same for an account and for a decoy.
        let len = r.byte()?;
        let text =
            std::str::from_utf8(r.take(usize::from(len))?).map_err(|_| DecodeError("invalid utf-8"))?;
        let subject = match kind & SUBJECT_KIND {
            1 => SubjectRef::Account(text),
            2 => SubjectRef::Unknown(text),
            _ => return Err(DecodeError("unknown subject kind")),
        };
        Ok(Head {
            seq,
            state,
            subject,
            flags,
            rest: r,
        })
    }

    /// The record.
    pub(super) fn record(&self) -> Result<FlowRecord, DecodeError> {
        let Head {
            state,
            subject,
            flags,
            rest: mut r,
            ..
        } = self.head()?;
        let subject = subject.to_subject()?;
        let phone = match r.byte()? {
            0 => None,
            len => {
                let text = std::str::from_utf8(r.take(usize::from(len))?)
                    .map_err(|_| DecodeError("invalid utf-8"))?;
                Some(PhoneNumber::parse(text).map_err(|_| DecodeError("invalid phone number"))?)
            }
        };
        let key_id = u32::try_from(varint(&mut r)?).map_err(|_| DecodeError("key id out of range"))?;
        let code_mac = Mac::from_bytes(r.array()?);
        let created_at = Timestamp::from_unix_millis(varint(&mut r)?);
        let code_expires_at = delta(&mut r, created_at)?;
        let last_sent_at = delta(&mut r, created_at)?;
        let updated_at = Timestamp::from_unix_millis(u64::from_le_bytes(self.fixed(UPDATED_AT)));
        let token_expires_at = delta(&mut r, created_at)?;
        let failed_attempts = small(&mut r)?;
        let prior_failures = small(&mut r)?;
        let sends = small(&mut r)?;
        let token_mac = match flags & HAS_TOKEN {
            0 => None,
            _ => Some(Mac::from_bytes(r.array()?)),
        };
        let factor = match flags & HAS_FACTOR {
            0 => None,
            _ => {
                let offered = FactorSet::from_bits(r.byte()?).ok_or(DecodeError("unknown factor kind"))?;
                let failed = [small(&mut r)?, small(&mut r)?, small(&mut r)?];
                let expires_at = delta(&mut r, created_at)?;
                let channel_expires_at = delta(&mut r, created_at)?;
                let channel_last_sent_at = delta(&mut r, created_at)?;
                let channel_mac = mac(&mut r)?;
                let channel_sends = small(&mut r)?;
                Some(FactorProgress {
                    offered,
                    failed,
                    expires_at,
                    channel_mac,
                    channel_expires_at,
                    channel_sends,
                    channel_last_sent_at,
                })
            }
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(FlowRecord {
            id: self.id(),
            subject,
            phone,
            state,
            version: self.version(),
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
            purge_after: self.purge_after(),
            factor,
        })
    }

    /// Bytes held, for tests of the size.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The start of a stored record.
pub(super) struct Head<'a> {
    /// Creation order within the subject's index shard.
    pub(super) seq: u64,
    pub(super) state: FlowState,
    pub(super) subject: SubjectRef<'a>,
    /// [`HAS_TOKEN`] and [`HAS_FACTOR`].
    flags: u8,
    rest: Reader<'a>,
}

/// A stored record's subject, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubjectRef<'a> {
    Account(&'a str),
    /// The decoy id's hex form.
    Unknown(&'a str),
}

impl SubjectRef<'_> {
    /// Whether this subject's [`Subject::key`] is `key`.
    #[cfg(test)]
    fn has_key(&self, key: &str) -> bool {
        let [kind, text] = self.key_parts();
        key.strip_prefix(kind) == Some(text)
    }

    /// As [`Subject::key_parts`].
    pub(super) fn key_parts(&self) -> [&str; 2] {
        match *self {
            SubjectRef::Account(id) => ["account:", id],
            SubjectRef::Unknown(hex) => ["unknown:", hex],
        }
    }

    fn to_subject(self) -> Result<Subject, DecodeError> {
        Ok(match self {
            SubjectRef::Account(id) => Subject::Account(
                AccountId::from_str_checked(id).map_err(|_| DecodeError("invalid account id"))?,
            ),
            SubjectRef::Unknown(hex) => {
                Subject::Unknown(DecoyId::from_hex(hex).ok_or(DecodeError("invalid decoy id"))?)
            }
        })
    }
}

/// A record being packed, on the stack.
struct Writer {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl Writer {
    fn pack(flow: &FlowRecord, seq: u64) -> Self {
        let mut w = Writer {
            buf: [0; MAX_LEN],
            len: 0,
        };
        w.put(flow.id.as_bytes());
        w.put(&flow.version.to_le_bytes());
        w.put(&flow.purge_after.as_unix_millis().to_le_bytes());
        w.put(&flow.updated_at.as_unix_millis().to_le_bytes());
        w.put(&[flow.state.code()]);
        w.varint(seq);
        let flags = if flow.token_mac.is_some() { HAS_TOKEN } else { 0 }
            | if flow.factor.is_some() { HAS_FACTOR } else { 0 };
        match &flow.subject {
            Subject::Account(account) => {
                // At most `AccountId::MAX_LEN` (128) bytes.
                w.put(&[1 | flags, account.as_str().len() as u8]);
                w.put(account.as_str().as_bytes());
            }
            Subject::Unknown(decoy) => {
                w.put(&[2 | flags, decoy.as_str().len() as u8]);
                w.put(decoy.as_str().as_bytes());
            }
        }
        match &flow.phone {
            // E.164: at most 16 bytes, never empty.
            Some(phone) => {
                w.put(&[phone.as_str().len() as u8]);
                w.put(phone.as_str().as_bytes());
            }
            None => w.put(&[0]),
        }
        w.varint(u64::from(flow.key_id));
        w.put(flow.code_mac.as_bytes());
        let base = flow.created_at;
        w.varint(base.as_unix_millis());
        for t in [flow.code_expires_at, flow.last_sent_at, flow.token_expires_at] {
            w.delta(t, base);
        }
        for n in [flow.failed_attempts, flow.prior_failures, flow.sends] {
            w.varint(u64::from(n));
        }
        if let Some(mac) = &flow.token_mac {
            w.put(mac.as_bytes());
        }
        match &flow.factor {
            None => {}
            Some(f) => {
                w.put(&[f.offered.bits()]);
                for n in f.failed {
                    w.varint(u64::from(n));
                }
                for t in [f.expires_at, f.channel_expires_at, f.channel_last_sent_at] {
                    w.delta(t, base);
                }
                w.mac(f.channel_mac.as_ref());
                w.varint(u64::from(f.channel_sends));
            }
        }
        w
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.put(&[(v as u8) | 0x80]);
            v >>= 7;
        }
        self.put(&[v as u8]);
    }

    /// `t` as its signed distance from `base`, zigzag-encoded.
    fn delta(&mut self, t: Timestamp, base: Timestamp) {
        let d = t.as_unix_millis().wrapping_sub(base.as_unix_millis()) as i64;
        self.varint(((d << 1) ^ (d >> 63)) as u64);
    }

    fn mac(&mut self, mac: Option<&Mac>) {
        match mac {
            Some(mac) => {
                self.put(&[1]);
                self.put(mac.as_bytes());
            }
            None => self.put(&[0]),
        }
    }
}

fn varint(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = r.byte()?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError("varint too long"))
}

fn small(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    u32::try_from(varint(r)?).map_err(|_| DecodeError("count out of range"))
}

fn delta(r: &mut Reader<'_>, base: Timestamp) -> Result<Timestamp, DecodeError> {
    let z = varint(r)?;
    let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
    Ok(Timestamp::from_unix_millis(
        base.as_unix_millis().wrapping_add(d as u64),
    ))
}

fn mac(r: &mut Reader<'_>) -> Result<Option<Mac>, DecodeError> {
    match r.byte()? {
        0 => Ok(None),
        1 => Ok(Some(Mac::from_bytes(r.array()?))),
        _ => Err(DecodeError("invalid mac flag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::FactorKind;

    fn account_flow(account: &str) -> FlowRecord {
        FlowRecord {
            id: FlowId::from_bytes([9; 16]),
            subject: Subject::Account(AccountId::new(account).unwrap()),
            phone: Some(PhoneNumber::parse("+14155550123").unwrap()),
            state: FlowState::CodeSent,
            version: 3,
            key_id: 7,
            code_mac: Mac::from_bytes([1; 32]),
            code_expires_at: Timestamp::from_unix_millis(1_800_000_600_000),
            failed_attempts: 2,
            prior_failures: 5,
            sends: 1,
            last_sent_at: Timestamp::from_unix_millis(1_800_000_000_000),
            created_at: Timestamp::from_unix_millis(1_800_000_000_000),
            updated_at: Timestamp::from_unix_millis(1_800_000_000_500),
            token_mac: None,
            token_expires_at: Timestamp::default(),
            purge_after: Timestamp::from_unix_millis(1_800_086_400_000),
            factor: None,
        }
    }

    #[test]
    fn an_account_flow_round_trips_in_under_120_bytes() {
        let flow = account_flow("user-123456");
        let stored = Stored::new(&flow, 41);
        assert_eq!(stored.record().unwrap(), flow);
        // 120 bytes and the allocator's 8 fit its 128-byte size class.
        assert!(stored.len() <= 120, "{}", stored.len());
        assert_eq!(stored.id(), flow.id);
        assert!(stored.is(&flow.id));
        assert!(!stored.is(&FlowId::from_bytes([8; 16])));
        assert_eq!(stored.version(), 3);
        assert_eq!(stored.purge_after(), flow.purge_after);
        let head = stored.head().unwrap();
        assert_eq!(head.seq, 41);
        assert_eq!(head.state, FlowState::CodeSent);
        assert_eq!(head.subject, SubjectRef::Account("user-123456"));
        assert!(head.subject.has_key("account:user-123456"));
        assert!(!head.subject.has_key("account:user-12345"));
        assert!(!head.subject.has_key("unknown:user-123456"));
        assert_eq!(head.subject.key_parts(), flow.subject.key_parts());
    }

    #[test]
    fn the_largest_record_and_extreme_values_round_trip() {
        let mut flow = account_flow(&"x".repeat(AccountId::MAX_LEN));
        flow.phone = Some(PhoneNumber::parse("+123456789012345").unwrap());
        flow.version = u64::MAX;
        flow.key_id = u32::MAX;
        flow.failed_attempts = u32::MAX;
        flow.prior_failures = u32::MAX;
        flow.sends = u32::MAX;
        // Instants before the creation, at 0 and at the end of time.
        flow.code_expires_at = Timestamp::from_unix_millis(0);
        flow.last_sent_at = Timestamp::from_unix_millis(u64::MAX);
        flow.updated_at = Timestamp::from_unix_millis(1);
        flow.token_mac = Some(Mac::from_bytes([2; 32]));
        flow.token_expires_at = Timestamp::from_unix_millis(u64::MAX - 1);
        flow.purge_after = Timestamp::from_unix_millis(u64::MAX);
        flow.state = FlowState::FactorPending;
        let mut factor = FactorProgress::new(
            [FactorKind::ALL[0], FactorKind::ALL[2]].into_iter().collect(),
            Timestamp::from_unix_millis(u64::MAX),
        );
        factor.failed = [u32::MAX, 0, 1];
        factor.channel_mac = Some(Mac::from_bytes([3; 32]));
        factor.channel_expires_at = Timestamp::from_unix_millis(0);
        factor.channel_sends = u32::MAX;
        factor.channel_last_sent_at = Timestamp::from_unix_millis(12);
        flow.factor = Some(factor);
        for created in [0, 1_800_000_000_000, u64::MAX] {
            flow.created_at = Timestamp::from_unix_millis(created);
            let stored = Stored::new(&flow, u64::MAX);
            assert!(stored.len() < MAX_LEN);
            assert_eq!(stored.record().unwrap(), flow);
            assert_eq!(stored.head().unwrap().seq, u64::MAX);
        }
    }

    #[test]
    fn a_decoy_flow_round_trips_and_matches_only_its_key() {
        let decoy = DecoyId::from_bytes([0xab; 16]);
        let mut flow = account_flow("a");
        flow.subject = Subject::Unknown(decoy);
        flow.phone = None;
        let stored = Stored::new(&flow, 0);
        assert_eq!(stored.record().unwrap(), flow);
        let head = stored.head().unwrap();
        assert!(head.subject.has_key(&flow.subject.key()));
        assert!(!head.subject.has_key("account:a"));
        assert!(
            !head
                .subject
                .has_key(&Subject::Unknown(DecoyId::from_bytes([0xac; 16])).key())
        );
        assert_eq!(head.subject.key_parts(), flow.subject.key_parts());
    }

    #[test]
    fn replace_keeps_the_allocation_when_the_length_holds_and_grows_when_not() {
        let mut flow = account_flow("user-1");
        let mut stored = Stored::new(&flow, 5);
        flow.failed_attempts += 1;
        flow.version += 1;
        stored.replace(&flow, 5);
        assert_eq!(stored.record().unwrap(), flow);
        flow.token_mac = Some(Mac::from_bytes([4; 32]));
        stored.replace(&flow, 5);
        assert_eq!(stored.record().unwrap(), flow);
        assert_eq!(stored.head().unwrap().seq, 5);
    }
}
