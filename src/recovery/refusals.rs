//! Client networks this instance has seen refused by their own send limit,
//! remembered until the refusal ends, so that a network flooding requests
//! past its limit costs the store nothing more: its refused calls are
//! answered from here, alike for every identifier, known or not.
//!
//! Only a refusal by the network's own limit is remembered: it ends at a
//! known time, which no other call can bring forward (support unblocks
//! blocks, never limits), so the answer is the one the store would give.
//! The memory is bounded; past its bound a refusal is simply not
//! remembered and the store refuses as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::clock::Timestamp;

/// Networks remembered at most (about 100 bytes each).
const MAX_REMEMBERED: usize = 65_536;

/// Shards of the memory, so that concurrent calls rarely share a lock.
const SHARDS: usize = 16;

/// One shard: per network, when its refusal ends, and the earliest end
/// among them when the shard last filled (nothing ends before it, so a
/// full shard is not scanned again until then).
#[derive(Debug, Default)]
struct Shard {
    map: HashMap<String, Timestamp>,
    earliest: Option<Timestamp>,
}

/// Per client network (its counter key): when its refusal ends.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    until: [Mutex<Shard>; SHARDS],
    /// Networks remembered in all: while none is, a call takes no lock.
    len: AtomicUsize,
}

impl Refusals {
    /// How long `network` stays refused, if this instance saw it refused
    /// by its own limit and the refusal has not ended by `now`.
    pub(crate) fn wait(&self, network: &str, now: Timestamp) -> Option<Duration> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let until = *self.shard(network).map.get(network)?;
        (now < until).then(|| until.saturating_duration_since(now))
    }

    /// Remembers that `network` is refused until `until`.
    pub(crate) fn remember(&self, network: &str, until: Timestamp, now: Timestamp) {
        let mut shard = self.shard(network);
        if shard.map.len() >= MAX_REMEMBERED / SHARDS {
            if shard.earliest.is_some_and(|earliest| now < earliest) {
                return;
            }
            let before = shard.map.len();
            shard.map.retain(|_, end| now < *end);
            self.len.fetch_sub(before - shard.map.len(), Ordering::Relaxed);
            shard.earliest = shard.map.values().min().copied();
            if shard.map.len() >= MAX_REMEMBERED / SHARDS {
                return;
            }
        }
        if shard.map.insert(network.to_owned(), until).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn shard(&self, network: &str) -> std::sync::MutexGuard<'_, Shard> {
        // Any spread will do: the key is already a network's text.
        let i = network
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
        // A panic while holding it leaves a map that is still consistent.
        self.until[i % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_holds_until_its_end_exactly_and_the_memory_is_bounded() {
        let r = Refusals::default();
        let t = Timestamp::from_unix_millis(1_000_000);
        let end = t.saturating_add(Duration::from_secs(60));
        assert_eq!(r.wait("a", t), None);
        r.remember("a", end, t);
        assert_eq!(r.wait("a", t), Some(Duration::from_secs(60)));
        let last = Timestamp::from_unix_millis(end.as_unix_millis() - 1);
        assert_eq!(r.wait("a", last), Some(Duration::from_millis(1)));
        assert_eq!(r.wait("a", end), None, "ended at its end");
        assert_eq!(r.wait("b", t), None);
        for n in 0..2 * MAX_REMEMBERED {
            r.remember(&n.to_string(), end, t);
        }
        let full = r.count();
        assert!(
            full <= MAX_REMEMBERED && full > MAX_REMEMBERED * 9 / 10,
            "full of live refusals, the rest not kept: {full}"
        );
        let later = end.saturating_add(Duration::from_secs(1));
        for n in 0..2 * MAX_REMEMBERED {
            r.remember(
                &format!("new{n}"),
                later.saturating_add(Duration::from_secs(60)),
                later,
            );
        }
        assert!(
            r.count() <= MAX_REMEMBERED,
            "ended refusals made room: {}",
            r.count()
        );
        assert!(r.wait("new1", later).is_some());
    }
}
