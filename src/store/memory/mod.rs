//! The in-process store: sharded hash tables behind short-held mutexes.

mod counters;
mod packed;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use hashbrown::HashTable;

use self::counters::CounterTable;
use self::packed::Stored;
use super::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result, StoreError};
use crate::case::{SupportCase, SupportReference};
use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::record::FlowRecord;

const SHARDS: usize = 64;
/// Flows remembered per subject for support look-ups.
const RECENT_PER_SUBJECT: usize = 8;
/// A shard is swept for expired entries when it has grown to this size, or
/// doubled since its last sweep, whichever is larger: sweeping costs O(1)
/// per insert amortized and memory stays within twice the live entries.
const MIN_SWEEP_LEN: usize = 256;

/// The default store: in process memory, for one instance of the host (and
/// for tests). Safe under any number of concurrent tasks; every operation
/// holds a mutex on one shard for a few table operations, never across an
/// `.await`.
///
/// Expired flows and counters are swept as the store grows, so memory stays
/// within twice the live records; [`CodeStore::purge_expired`] sweeps
/// everything at once. Live records are capped too (default 1,000,000
/// flows, about 250 MB, and 4,000,000 counter windows, about 500 MB): past
/// a cap, a new flow, or a call that increments a counter (its reads
/// count too, so that calls of one shape fare alike), is refused with a
/// retryable error, before it changes anything, rather than exhausting
/// memory; a call of reads only always passes. A full table is swept by
/// one call at a time, at most once a second, and only once one of its
/// windows can have ended.
///
/// A flow is kept packed (about 115 bytes for an account flow, its
/// account id and phone inline) in one allocation, and unpacked into a
/// [`FlowRecord`] when read. Flow ids and counter keys are hashed once per
/// operation with a randomly seeded hasher, whose bits pick the shard and
/// the slot; the subject index is keyed by a keyed (SipHash) 64-bit hash
/// of the subject key, each entry one flow, and tells colliding subjects
/// apart by the flows' own records.
pub struct MemoryStore {
    flows: Box<[Padded<Mutex<FlowShard>>]>,
    /// Per subject hash: its most recent flows, at most
    /// [`RECENT_PER_SUBJECT`] per subject.
    subjects: Box<[Padded<Mutex<SubjectShard>>]>,
    cases: Mutex<HashMap<SupportReference, SupportCase>>,
    counters: CounterTable,
    /// Flow ids.
    hasher: foldhash::fast::RandomState,
    /// Subject keys.
    subject_hasher: SubjectHasher,
    flow_count: AtomicUsize,
    capacity: usize,
}

/// One shard on its own cache lines, so that two threads working on two
/// shards never write to the same line (a mutex and its table's header
/// are written on every lock).
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// How subject keys are hashed for the index.
enum SubjectHasher {
    Keyed(RandomState),
    /// Every key to one hash: the tests' way of making every subject
    /// collide.
    #[cfg(test)]
    Constant(u64),
}

struct FlowShard {
    table: HashTable<Stored>,
    sweep_at: usize,
}

struct SubjectShard {
    /// (subject hash, flow id), one entry per remembered flow.
    table: HashTable<(u64, FlowId)>,
    /// The creation order of the flows indexed here; every create of a
    /// subject holds its index shard, so the order is the subject's.
    next_seq: u64,
}

impl Default for FlowShard {
    fn default() -> Self {
        FlowShard {
            table: HashTable::new(),
            sweep_at: MIN_SWEEP_LEN,
        }
    }
}

impl Default for SubjectShard {
    fn default() -> Self {
        SubjectShard {
            table: HashTable::new(),
            next_seq: 0,
        }
    }
}

/// Drops the entries that `dead` picks once the table has grown to
/// `sweep_at` since its last sweep (or always, with `force`), shrinking it
/// when mostly empty. Returns the removed entries.
fn sweep<T>(
    table: &mut HashTable<T>,
    sweep_at: &mut usize,
    force: bool,
    dead: impl FnMut(&mut T) -> bool,
    rehash: impl Fn(&T) -> u64,
) -> Vec<T> {
    if !force && table.len() < *sweep_at {
        return Vec::new();
    }
    let removed: Vec<T> = table.extract_if(dead).collect();
    if table.capacity() > 4 * table.len().max(MIN_SWEEP_LEN) {
        table.shrink_to_fit(rehash);
    }
    *sweep_at = (2 * table.len()).max(MIN_SWEEP_LEN);
    removed
}

/// The shard of a hash: bits that neither the table's slot (its low bits)
/// nor its control byte (its top seven) use.
fn shard_of(hash: u64) -> usize {
    ((hash >> 32) as usize) % SHARDS
}

/// A summary: the records themselves stay out of logs.
impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("flows", &self.flow_count())
            .field("counters", &self.counter_count())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// Default cap on flow records.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;
    /// Default cap on counter windows.
    pub const DEFAULT_COUNTER_CAPACITY: usize = 4_000_000;

    /// An empty store holding at most [`MemoryStore::DEFAULT_CAPACITY`] flows.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// An empty store holding at most `capacity` flow records.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_subject_hasher(capacity, SubjectHasher::Keyed(RandomState::new()))
    }

    fn with_subject_hasher(capacity: usize, subject_hasher: SubjectHasher) -> Self {
        MemoryStore {
            flows: (0..SHARDS).map(|_| Padded::default()).collect(),
            subjects: (0..SHARDS).map(|_| Padded::default()).collect(),
            cases: Mutex::default(),
            counters: CounterTable::new(Self::DEFAULT_COUNTER_CAPACITY),
            hasher: foldhash::fast::RandomState::default(),
            subject_hasher,
            flow_count: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Holds at most `capacity` counter windows (see the type's docs).
    #[must_use]
    pub fn with_counter_capacity(mut self, capacity: usize) -> Self {
        self.counters.set_capacity(capacity);
        self
    }

    /// Number of flow records held, expired ones not yet swept included.
    pub fn flow_count(&self) -> usize {
        self.flow_count.load(Ordering::Relaxed)
    }

    /// Number of counter windows held, ended ones not yet swept included.
    pub fn counter_count(&self) -> usize {
        self.counters.len()
    }

    fn flow_hash(&self, id: &FlowId) -> u64 {
        self.hasher.hash_one(u128::from_le_bytes(*id.as_bytes()))
    }

    /// Sweeps the flows of `shard` whose `purge_after` is at or before
    /// `now` (once it has grown enough, or always with `force`).
    fn sweep_flows(&self, shard: &mut FlowShard, force: bool, now: Timestamp) -> Vec<Stored> {
        sweep(
            &mut shard.table,
            &mut shard.sweep_at,
            force,
            |s| s.purge_after() <= now,
            |s| self.flow_hash(&s.id()),
        )
    }

    /// The hash of a subject key given in its two parts (see
    /// [`key_parts`]): the key is never joined.
    fn subject_hash(&self, [kind, text]: [&str; 2]) -> u64 {
        match &self.subject_hasher {
            SubjectHasher::Keyed(state) => {
                let mut hasher = state.build_hasher();
                hasher.write(kind.as_bytes());
                hasher.write(text.as_bytes());
                hasher.finish()
            }
            #[cfg(test)]
            SubjectHasher::Constant(hash) => *hash,
        }
    }

    /// The flow `id`, unpacked, if stored; takes its shard's lock.
    fn read_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        let hash = self.flow_hash(id);
        let shard = lock(&self.flows[shard_of(hash)]);
        Ok(shard
            .table
            .find(hash, |s| s.is(id))
            .map(Stored::record)
            .transpose()?)
    }

    /// The flows indexed under `key`'s hash that are `key`'s: (id, seq),
    /// in index order. Entries of other subjects with the same hash,
    /// and of flows swept but not yet forgotten, are left out. Takes each
    /// flow's shard in turn: call with the index shard held and no flow
    /// shard.
    fn flows_of(&self, index: &SubjectShard, hash: u64, key: [&str; 2]) -> Result<Vec<(FlowId, u64)>> {
        let mut mine = Vec::new();
        for (_, id) in index.table.iter_hash(hash).filter(|(h, _)| *h == hash) {
            let flow_hash = self.flow_hash(id);
            let shard = lock(&self.flows[shard_of(flow_hash)]);
            if let Some(stored) = shard.table.find(flow_hash, |s| s.is(id)) {
                let head = stored.head()?;
                if head.subject.key_parts() == key {
                    mine.push((*id, head.seq));
                }
            }
        }
        Ok(mine)
    }

    /// The newest stored flow of the subject `key`, unpacked. Lock order:
    /// the subject's index shard, then one flow shard at a time.
    fn newest_of(&self, key: [&str; 2]) -> Result<Option<FlowRecord>> {
        let hash = self.subject_hash(key);
        let index = lock(&self.subjects[shard_of(hash)]);
        let newest = self
            .flows_of(&index, hash, key)?
            .into_iter()
            .max_by_key(|(_, seq)| *seq);
        match newest {
            Some((id, _)) => self.read_flow(&id),
            None => Ok(None),
        }
    }

    /// Uncounts swept flows and removes them from the subject index. Called
    /// with no lock held.
    fn forget_open(&self, swept: Vec<Stored>) {
        self.flow_count.fetch_sub(swept.len(), Ordering::Relaxed);
        self.forget_swept(swept);
    }

    /// Removes already uncounted swept flows from the subject index.
    fn forget_swept(&self, swept: Vec<Stored>) {
        for flow in swept {
            // A record that does not unpack was never indexed by this
            // build: there is nothing to forget.
            let Ok(head) = flow.head() else { continue };
            let hash = self.subject_hash(head.subject.key_parts());
            let id = flow.id();
            let mut index = lock(&self.subjects[shard_of(hash)]);
            if let Ok(entry) = index.table.find_entry(hash, |(h, i)| *h == hash && *i == id) {
                entry.remove();
            }
            if index.table.capacity() > 4 * index.table.len().max(MIN_SWEEP_LEN) {
                index.table.shrink_to_fit(|(h, _)| *h);
            }
        }
    }

    /// Reserves room for one more flow, or refuses past the capacity.
    fn reserve(&self) -> Result<()> {
        let before = self.flow_count.fetch_add(1, Ordering::Relaxed);
        if before >= self.capacity {
            self.flow_count.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::backend("the memory store is full", true));
        }
        Ok(())
    }

    fn swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        let hash = self.flow_hash(&flow.id);
        let mut shard = lock(&self.flows[shard_of(hash)]);
        match shard.table.find_mut(hash, |s| s.is(&flow.id)) {
            Some(current) if current.version() == expected_version => {
                let seq = current.head()?.seq;
                current.replace(flow, seq);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A subject key (`account:<id>`, `unknown:<hex>`) in the two parts of
/// [`Subject::key_parts`](crate::record::Subject::key_parts); a key
/// without a colon is one part, which no subject's parts equal.
fn key_parts(key: &str) -> [&str; 2] {
    match key.find(':') {
        Some(colon) => [&key[..=colon], &key[colon + 1..]],
        None => [key, ""],
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a panic in
    // another task does not make the data unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl CodeStore for MemoryStore {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        let now = flow.created_at;
        // Joined, though its parts would hash alike: without this one
        // allocation per create, a resend on a decoy's flow measured 50 to
        // 70 ns faster than on an account's (tests/timing.rs), the
        // allocator's layout of the two kinds of records apart.
        let joined = flow.subject.key();
        let key = key_parts(&joined);
        let subject_hash = self.subject_hash(key);
        // Lock order: the subject's index shard, then flow shards one at a
        // time (to find the subject's flows), then at most two flow shards
        // in ascending index. `compare_and_swap` takes a single flow
        // shard, so no cycle can form.
        let mut index = lock(&self.subjects[shard_of(subject_hash)]);
        let mut mine = self.flows_of(&index, subject_hash, key)?;
        mine.retain(|(id, _)| *id != flow.id);
        mine.sort_unstable_by_key(|(_, seq)| std::cmp::Reverse(*seq));
        let old = mine.first().map(|(id, _)| *id);
        let new_hash = self.flow_hash(&flow.id);
        let new_shard = shard_of(new_hash);
        let old_hash = old.map(|id| self.flow_hash(&id));
        let old_shard = old_hash.map(shard_of).filter(|s| *s != new_shard);
        let (mut new_guard, mut old_guard) = match old_shard {
            Some(s) if s < new_shard => {
                let o = lock(&self.flows[s]);
                (lock(&self.flows[new_shard]), Some(o))
            }
            Some(s) => {
                let n = lock(&self.flows[new_shard]);
                (n, Some(lock(&self.flows[s])))
            }
            None => (lock(&self.flows[new_shard]), None),
        };
        if new_guard.table.find(new_hash, |s| s.is(&flow.id)).is_some() {
            return Err(StoreError::Duplicate);
        }
        // The newest flow, read again under its shard's lock (a swap may
        // have changed it since the index was read).
        let shard = old_guard.as_deref().unwrap_or(&*new_guard);
        let stored = old
            .zip(old_hash)
            .and_then(|(old, hash)| shard.table.find(hash, |s| s.is(&old)));
        if !newest.matches(stored.map(|s| (s.id(), s.version()))) {
            return Ok(Created::Stale(stored.map(Stored::record).transpose()?));
        }
        let swept = self.sweep_flows(&mut new_guard, false, now);
        self.flow_count.fetch_sub(swept.len(), Ordering::Relaxed);
        if let Err(full) = self.reserve() {
            drop((new_guard, old_guard, index));
            self.forget_swept(swept);
            return Err(full);
        }
        // `mine` gave the newest flow's seq: nothing after `reserve` can fail.
        if let (Some(next), Some(old_hash), Some((_, seq))) = (newest.replacement(), old_hash, mine.first()) {
            let shard = old_guard.as_deref_mut().unwrap_or(&mut *new_guard);
            if let Some(stored) = shard.table.find_mut(old_hash, |s| s.is(&next.id)) {
                stored.replace(next, *seq);
            }
        }
        let seq = index.next_seq;
        index.next_seq += 1;
        new_guard
            .table
            .insert_unique(new_hash, Stored::new(flow, seq), |s| self.flow_hash(&s.id()));
        index
            .table
            .insert_unique(subject_hash, (subject_hash, flow.id), |(h, _)| *h);
        // Remember the newest RECENT_PER_SUBJECT: `mine` is newest first.
        for (id, _) in mine.iter().skip(RECENT_PER_SUBJECT - 1) {
            if let Ok(entry) = index
                .table
                .find_entry(subject_hash, |(h, i)| *h == subject_hash && i == id)
            {
                entry.remove();
            }
        }
        drop((new_guard, old_guard, index));
        self.forget_swept(swept);
        Ok(Created::Inserted)
    }

    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        self.read_flow(id)
    }

    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        // No await between the two: nothing can fail or cancel in between.
        self.counters.room_for(counters, now)?;
        let flow = match load {
            Load::Flow(id) => self.read_flow(id)?,
            Load::Newest(subject) => self.newest_of(subject.key_parts())?,
        };
        Ok((flow, self.counters.count(counters, now)))
    }

    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        self.counters.room_for(counters, now)?;
        if !self.swap(expected_version, flow)? {
            return Ok(None);
        }
        Ok(Some(self.counters.count(counters, now)))
    }

    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        self.swap(expected_version, flow)
    }

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        self.counters.room_for(counters, now)?;
        Ok(self.counters.count(counters, now))
    }

    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        // Lock order: subject shard, then one flow shard at a time.
        let key = key_parts(subject_key);
        let hash = self.subject_hash(key);
        let index = lock(&self.subjects[shard_of(hash)]);
        let mut mine = self.flows_of(&index, hash, key)?;
        mine.sort_unstable_by_key(|(_, seq)| std::cmp::Reverse(*seq));
        let mut found = Vec::with_capacity(mine.len().min(limit));
        for (id, _) in mine.iter().take(limit) {
            found.extend(self.read_flow(id)?);
        }
        Ok(found)
    }

    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        let mut cases = lock(&self.cases);
        // Bounded like the flows: expired cases go as the map grows.
        if cases.len() >= MIN_SWEEP_LEN && cases.len().is_power_of_two() {
            cases.retain(|_, c| c.purge_after > case.opened_at);
        }
        cases.insert(case.reference, case.clone());
        Ok(())
    }

    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        Ok(lock(&self.cases).get(reference).cloned())
    }

    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        self.counters.delete(keys);
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let mut purged = 0;
        for shard in self.flows.iter() {
            let swept = self.sweep_flows(&mut lock(shard), true, now);
            purged += swept.len() as u64;
            self.forget_open(swept);
        }
        self.counters.sweep_all(now);
        lock(&self.cases).retain(|_, case| case.purge_after > now);
        Ok(purged)
    }
}

#[cfg(test)]
mod tests;
