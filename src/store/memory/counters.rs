//! The memory store's counter windows: a sharded table of per-key atomic
//! counters, capped in number.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hashbrown::HashTable;

use super::{MIN_SWEEP_LEN, Padded, SHARDS, lock, shard_of, sweep};
use crate::clock::Timestamp;
use crate::counter::{Counter, CounterValue};
use crate::store::{Result, StoreError};

/// A full table is swept at most this often, however many calls find it
/// full.
const MIN_FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Counter windows by key. Each counter is atomic on its own shard; a
/// refused call undoes its guarded increments one by one, so a racing call
/// may briefly see a count above a limit (and be refused: never admitted
/// past it).
pub(super) struct CounterTable {
    shards: Box<[Padded<Mutex<CounterShard>>]>,
    hasher: foldhash::fast::RandomState,
    count: AtomicUsize,
    capacity: usize,
    /// No window ends before this instant (Unix ms) among those the last
    /// full sweep kept or any call opened since: a full table is not swept
    /// again before it, so a store held full costs each call no scan.
    next_sweep: AtomicU64,
}

struct CounterShard {
    table: HashTable<CounterEntry>,
    sweep_at: usize,
}

struct CounterEntry {
    /// The key's hash, kept so that growing or shrinking the table reads
    /// no key (each would be a cache miss in a large store).
    hash: u64,
    key: Box<str>,
    value: CounterValue,
}

impl CounterShard {
    /// Drops the counters whose window ended by `now`, once the table has
    /// grown enough (or always, with `force`), and lowers `earliest` (Unix
    /// ms) to the end of each window it keeps. Returns how many it dropped.
    fn sweep_ended(&mut self, force: bool, now: Timestamp, earliest: &mut u64) -> usize {
        sweep(
            &mut self.table,
            &mut self.sweep_at,
            force,
            |e| match e.value.resets_at {
                Some(end) if end > now => {
                    *earliest = (*earliest).min(end.as_unix_millis());
                    false
                }
                _ => true,
            },
            |e| e.hash,
        )
        .len()
    }
}

impl Default for CounterShard {
    fn default() -> Self {
        CounterShard {
            table: HashTable::new(),
            sweep_at: MIN_SWEEP_LEN,
        }
    }
}

impl CounterTable {
    pub(super) fn new(capacity: usize) -> Self {
        CounterTable {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            count: AtomicUsize::new(0),
            capacity,
            next_sweep: AtomicU64::new(0),
        }
    }

    pub(super) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// Windows held, ended ones not yet swept included.
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Refuses a call whose `counters` could open windows past the
    /// capacity, once the ended ones are swept, before it changes anything.
    /// Every counter of a call that increments any needs room, reads too,
    /// so that calls of one shape fare alike whatever they increment (an
    /// unknown identifier's request reads what an account's counts); a call
    /// of reads only opens nothing and always passes (support reads a lock
    /// before it lifts it). (Racing calls may pass it together: the cap
    /// holds to within their counters.)
    pub(super) fn room_for(&self, counters: &[Counter], now: Timestamp) -> Result<()> {
        let needed = counters.len();
        if self.len() + needed <= self.capacity || counters.iter().all(|c| c.by == 0) {
            return Ok(());
        }
        // One caller sweeps at a time, and a table kept full by a flood is
        // swept at most once per `MIN_FULL_SWEEP_EVERY`.
        let seen = self.next_sweep.load(Ordering::Relaxed);
        if now.as_unix_millis() >= seen
            && self
                .next_sweep
                .compare_exchange(seen, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now, MIN_FULL_SWEEP_EVERY);
            if self.len() + needed <= self.capacity {
                return Ok(());
            }
        }
        Err(StoreError::backend("the memory store's counters are full", true))
    }

    /// Drops every window that ended by `now` (the purge).
    pub(super) fn sweep_all(&self, now: Timestamp) {
        self.next_sweep.store(u64::MAX, Ordering::Relaxed);
        self.sweep(now, Duration::ZERO);
    }

    /// Drops every window that ended by `now`, and notes when the next of
    /// those kept ends (but not before `at_least` from now). Call with
    /// `next_sweep` raised: windows opened during the sweep lower it again.
    fn sweep(&self, now: Timestamp, at_least: Duration) {
        let mut earliest = u64::MAX;
        for shard in self.shards.iter() {
            let swept = lock(shard).sweep_ended(true, now, &mut earliest);
            self.count.fetch_sub(swept, Ordering::Relaxed);
        }
        let floor = now.saturating_add(at_least).as_unix_millis();
        self.next_sweep.fetch_min(earliest.max(floor), Ordering::Relaxed);
    }

    /// Applies one call's counters by the shared rules.
    pub(super) fn count(&self, counters: &[Counter], now: Timestamp) -> Vec<CounterValue> {
        Counter::apply_all(
            counters,
            now,
            |c| self.step(c, now),
            |c, applied| self.undo(c, applied),
        )
    }

    /// Applies one counter atomically on its shard.
    pub(super) fn step(&self, c: &Counter, now: Timestamp) -> CounterValue {
        let hash = self.hasher.hash_one(c.key.as_str());
        let mut shard = lock(&self.shards[shard_of(hash)]);
        // A stored counter is updated in place (one look-up); only a new
        // window inserts, copying the key.
        if let Some(stored) = shard.table.find_mut(hash, |e| e.hash == hash && *e.key == *c.key) {
            let value = c.apply(Some(stored.value), now);
            if value.resets_at.is_some() {
                stored.value = value;
            }
            return value;
        }
        let value = c.apply(None, now);
        // Only an increment opens a window: reads store nothing.
        if let Some(end) = value.resets_at {
            // A partial sweep notes nothing: only the window opened here
            // can lower the next full sweep, and does so below.
            let mut kept_ends = u64::MAX;
            let swept = shard.sweep_ended(false, now, &mut kept_ends);
            self.count.fetch_sub(swept, Ordering::Relaxed);
            self.count.fetch_add(1, Ordering::Relaxed);
            self.next_sweep.fetch_min(end.as_unix_millis(), Ordering::Relaxed);
            shard.table.insert_unique(
                hash,
                CounterEntry {
                    hash,
                    key: c.key.as_str().into(),
                    value,
                },
                |e| e.hash,
            );
        }
        value
    }

    /// Takes one counter's increment, which made it `applied`, back
    /// atomically on its shard (from that window only).
    pub(super) fn undo(&self, c: &Counter, applied: CounterValue) {
        let hash = self.hasher.hash_one(c.key.as_str());
        let mut shard = lock(&self.shards[shard_of(hash)]);
        // Nothing stored: nothing to take back.
        if let Ok(mut entry) = shard
            .table
            .find_entry(hash, |e| e.hash == hash && *e.key == *c.key)
        {
            match c.unapply(applied, Some(entry.get().value)) {
                Some(value) => entry.get_mut().value = value,
                None => {
                    entry.remove();
                    self.count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Deletes the windows of `keys`.
    pub(super) fn delete(&self, keys: &[String]) {
        for key in keys {
            let hash = self.hasher.hash_one(key.as_str());
            let mut shard = lock(&self.shards[shard_of(hash)]);
            if let Ok(entry) = shard
                .table
                .find_entry(hash, |e| e.hash == hash && *e.key == **key)
            {
                entry.remove();
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
