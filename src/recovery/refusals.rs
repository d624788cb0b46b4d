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

/// One shard: per network, when its refusal ends, and no later than the
/// earliest end among them (nothing ends before it, so a full shard is not
/// scanned again until then).
#[derive(Debug, Default)]
struct Shard {
    map: HashMap<String, Timestamp>,
    earliest: Option<Timestamp>,
}

/// Per client network (its counter key): when its refusal ends.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    until: [Mutex<Shard>; SHARDS],
    /// Keyed, so that no client can choose networks that share a shard.
    hasher: std::hash::RandomState,
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
        shard.earliest = Some(shard.earliest.map_or(until, |earliest| earliest.min(until)));
    }

    fn shard(&self, network: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = std::hash::BuildHasher::hash_one(&self.hasher, network) as usize;
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

    /// From review: a scan that left room noted the earliest end among
    /// what it kept; refusals added after it with earlier ends did not
    /// lower it, so once they had ended a full shard was not scanned again
    /// until the older end (a day here), and nothing new was remembered.
    #[test]
    fn a_full_shard_is_scanned_again_once_any_refusal_in_it_has_ended() {
        let r = Refusals::default();
        let t = Timestamp::from_unix_millis(1_000_000_000);
        let (minute, day) = (Duration::from_secs(60), Duration::from_secs(86_400));
        // Half the room taken by long refusals, the rest by short ones.
        for n in 0..MAX_REMEMBERED / 2 {
            r.remember(&format!("long{n}"), t.saturating_add(day), t);
        }
        for n in 0..2 * MAX_REMEMBERED {
            r.remember(&format!("short{n}"), t.saturating_add(minute), t);
        }
        // Once the short ones end, new ones (ending soon too) take their room.
        let t2 = t.saturating_add(2 * minute);
        for n in 0..2 * MAX_REMEMBERED {
            r.remember(&format!("mid{n}"), t2.saturating_add(minute), t2);
        }
        // They have ended too: a new refusal finds room.
        let t3 = t.saturating_add(10 * minute);
        for n in 0..SHARDS * 4 {
            r.remember(&format!("new{n}"), t3.saturating_add(minute), t3);
        }
        let kept = (0..SHARDS * 4)
            .filter(|n| r.wait(&format!("new{n}"), t3).is_some())
            .count();
        assert_eq!(kept, SHARDS * 4);
    }
}
