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
use std::time::Duration;

use crate::clock::Timestamp;

/// Networks remembered at most (about 100 bytes each).
const MAX_REMEMBERED: usize = 65_536;

/// Per client network (its counter key): when its refusal ends.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    until: Mutex<HashMap<String, Timestamp>>,
}

impl Refusals {
    /// How long `network` stays refused, if this instance saw it refused
    /// by its own limit and the refusal has not ended by `now`.
    pub(crate) fn wait(&self, network: &str, now: Timestamp) -> Option<Duration> {
        let until = *self.lock().get(network)?;
        (now < until).then(|| until.saturating_duration_since(now))
    }

    /// Remembers that `network` is refused until `until`.
    pub(crate) fn remember(&self, network: &str, until: Timestamp, now: Timestamp) {
        let mut map = self.lock();
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, end| now < *end);
            if map.len() >= MAX_REMEMBERED {
                return;
            }
        }
        map.insert(network.to_owned(), until);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Timestamp>> {
        // A panic while holding it leaves a map that is still consistent.
        self.until.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        for n in 0..MAX_REMEMBERED + 10 {
            r.remember(&n.to_string(), end, t);
        }
        assert_eq!(
            r.lock().len(),
            MAX_REMEMBERED,
            "full of live refusals: the rest are not kept"
        );
        let later = end.saturating_add(Duration::from_secs(1));
        r.remember("new", later.saturating_add(Duration::from_secs(60)), later);
        assert_eq!(r.lock().len(), 1, "ended refusals make room");
    }
}
