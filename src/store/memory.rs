//! The in-process store: sharded hash tables behind short-held mutexes.

mod packed;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use hashbrown::HashTable;

use self::packed::Stored;
use super::{CodeStore, Counter, CounterValue, Result, StoreError};
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
/// a cap, a new flow, or a call that could open a counter window, is
/// refused with a retryable error, before it changes anything, rather than
/// exhausting memory.
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
    counters: Box<[Padded<Mutex<CounterShard>>]>,
    /// Flow ids and counter keys.
    hasher: foldhash::fast::RandomState,
    /// Subject keys.
    subject_hasher: SubjectHasher,
    flow_count: AtomicUsize,
    capacity: usize,
    counter_count: AtomicUsize,
    counter_capacity: usize,
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

impl CounterShard {
    /// Drops the counters whose window ended by `now`, once the table has
    /// grown enough (or always, with `force`): the counters' twin of
    /// [`MemoryStore::sweep_flows`].
    /// Returns how many it dropped.
    fn sweep_ended(&mut self, force: bool, now: Timestamp) -> usize {
        sweep(
            &mut self.table,
            &mut self.sweep_at,
            force,
            |e| e.value.resets_at.is_none_or(|end| end <= now),
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
            counters: (0..SHARDS).map(|_| Padded::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            subject_hasher,
            flow_count: AtomicUsize::new(0),
            capacity,
            counter_count: AtomicUsize::new(0),
            counter_capacity: Self::DEFAULT_COUNTER_CAPACITY,
        }
    }

    /// Holds at most `capacity` counter windows (see the type's docs).
    #[must_use]
    pub fn with_counter_capacity(mut self, capacity: usize) -> Self {
        self.counter_capacity = capacity;
        self
    }

    /// Number of flow records held, expired ones not yet swept included.
    pub fn flow_count(&self) -> usize {
        self.flow_count.load(Ordering::Relaxed)
    }

    /// Number of counter windows held, ended ones not yet swept included.
    pub fn counter_count(&self) -> usize {
        self.counter_count.load(Ordering::Relaxed)
    }

    /// Refuses a call whose `counters` could open windows past the counter
    /// capacity, once the ended ones are swept, before it changes anything.
    /// (Racing calls may pass it together: the cap holds to within their
    /// counters.)
    fn room_for(&self, counters: &[Counter], now: Timestamp) -> Result<()> {
        let new = counters.iter().filter(|c| c.by > 0).count();
        if self.counter_count() + new <= self.counter_capacity {
            return Ok(());
        }
        for shard in self.counters.iter() {
            let swept = lock(shard).sweep_ended(true, now);
            self.counter_count.fetch_sub(swept, Ordering::Relaxed);
        }
        if self.counter_count() + new <= self.counter_capacity {
            return Ok(());
        }
        Err(StoreError::backend("the memory store's counters are full", true))
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

    fn counter_hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn subject_hash(&self, key: &str) -> u64 {
        match &self.subject_hasher {
            SubjectHasher::Keyed(state) => state.hash_one(key),
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

    /// The flows indexed under `key`'s hash that are `key`'s: (id, seq,
    /// open), in index order. Entries of other subjects with the same hash,
    /// and of flows swept but not yet forgotten, are left out. Takes each
    /// flow's shard in turn: call with the index shard held and no flow
    /// shard.
    fn flows_of(&self, index: &SubjectShard, hash: u64, key: &str) -> Result<Vec<(FlowId, u64, bool)>> {
        let mut mine = Vec::new();
        for (_, id) in index.table.iter_hash(hash).filter(|(h, _)| *h == hash) {
            let flow_hash = self.flow_hash(id);
            let shard = lock(&self.flows[shard_of(flow_hash)]);
            if let Some(stored) = shard.table.find(flow_hash, |s| s.is(id)) {
                let head = stored.head()?;
                if head.subject.has_key(key) {
                    mine.push((*id, head.seq, head.state.is_open()));
                }
            }
        }
        Ok(mine)
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
            let hash = self.subject_hash(&head.subject.key());
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

    fn count(&self, counters: &[Counter], now: Timestamp) -> Vec<CounterValue> {
        // Each counter is atomic on its own shard; a refused call undoes its
        // guarded increments one by one, so a racing call may briefly see
        // a count above a limit (and be refused: never admitted past it).
        Counter::apply_all(
            counters,
            now,
            |c| self.step_counter(c, now),
            |c, applied| self.undo_counter(c, applied),
        )
    }

    /// Applies one counter atomically on its shard.
    fn step_counter(&self, c: &Counter, now: Timestamp) -> CounterValue {
        let hash = self.counter_hash(&c.key);
        let mut shard = lock(&self.counters[shard_of(hash)]);
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
        if value.resets_at.is_some() {
            // Only an increment opens a window: reads store nothing.
            let swept = shard.sweep_ended(false, now);
            self.counter_count.fetch_sub(swept, Ordering::Relaxed);
            self.counter_count.fetch_add(1, Ordering::Relaxed);
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
    fn undo_counter(&self, c: &Counter, applied: CounterValue) {
        let hash = self.counter_hash(&c.key);
        let mut shard = lock(&self.counters[shard_of(hash)]);
        // Nothing stored: nothing to take back.
        if let Ok(mut entry) = shard
            .table
            .find_entry(hash, |e| e.hash == hash && *e.key == *c.key)
        {
            match c.unapply(applied, Some(entry.get().value)) {
                Some(value) => entry.get_mut().value = value,
                None => {
                    entry.remove();
                    self.counter_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a panic in
    // another task does not make the data unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl CodeStore for MemoryStore {
    async fn create_flow(&self, flow: &FlowRecord) -> Result<()> {
        let now = flow.created_at;
        let key = flow.subject.key();
        let subject_hash = self.subject_hash(&key);
        // Lock order: the subject's index shard, then flow shards one at a
        // time (to read the subject's flows), then at most two flow shards
        // in ascending index. `compare_and_swap` takes a single flow
        // shard, so no cycle can form.
        let mut index = lock(&self.subjects[shard_of(subject_hash)]);
        let mut mine = self.flows_of(&index, subject_hash, &key)?;
        mine.retain(|(id, _, _)| *id != flow.id);
        mine.sort_unstable_by_key(|(_, seq, _)| std::cmp::Reverse(*seq));
        // The newest flow, if open, is superseded; older ones were when
        // it was created.
        let old = mine.first().filter(|(_, _, open)| *open).map(|(id, _, _)| *id);
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
        // The record to supersede, read before anything changes so that a
        // failure leaves the store as it was.
        let superseded = match (old, old_hash) {
            (Some(old), Some(old_hash)) => {
                let shard = old_guard.as_deref().unwrap_or(&*new_guard);
                match shard.table.find(old_hash, |s| s.is(&old)) {
                    Some(stored) => stored.state()?.is_open().then_some((old, old_hash)),
                    None => None,
                }
            }
            _ => None,
        };
        let swept = self.sweep_flows(&mut new_guard, false, now);
        self.flow_count.fetch_sub(swept.len(), Ordering::Relaxed);
        if let Err(full) = self.reserve() {
            drop((new_guard, old_guard, index));
            self.forget_swept(swept);
            return Err(full);
        }
        if let Some((old, old_hash)) = superseded {
            let shard = old_guard.as_deref_mut().unwrap_or(&mut *new_guard);
            if let Some(stored) = shard.table.find_mut(old_hash, |s| s.is(&old)) {
                // Its state was read above: this cannot fail.
                let _ = stored.supersede_if_open(now);
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
        for (id, _, _) in mine.iter().skip(RECENT_PER_SUBJECT - 1) {
            if let Ok(entry) = index
                .table
                .find_entry(subject_hash, |(h, i)| *h == subject_hash && i == id)
            {
                entry.remove();
            }
        }
        drop((new_guard, old_guard, index));
        self.forget_swept(swept);
        Ok(())
    }

    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        self.read_flow(id)
    }

    async fn load_counting(
        &self,
        id: &FlowId,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        // No await between the two: nothing can fail or cancel in between.
        self.room_for(counters, now)?;
        let flow = self.read_flow(id)?;
        Ok((flow, self.count(counters, now)))
    }

    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        self.room_for(counters, now)?;
        if !self.swap(expected_version, flow)? {
            return Ok(None);
        }
        Ok(Some(self.count(counters, now)))
    }

    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        self.swap(expected_version, flow)
    }

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        self.room_for(counters, now)?;
        Ok(self.count(counters, now))
    }

    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        // Lock order: subject shard, then one flow shard at a time.
        let hash = self.subject_hash(subject_key);
        let index = lock(&self.subjects[shard_of(hash)]);
        let mut mine = self.flows_of(&index, hash, subject_key)?;
        mine.sort_unstable_by_key(|(_, seq, _)| std::cmp::Reverse(*seq));
        let mut found = Vec::with_capacity(mine.len().min(limit));
        for (id, _, _) in mine.iter().take(limit) {
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
        for key in keys {
            let hash = self.counter_hash(key);
            let mut shard = lock(&self.counters[shard_of(hash)]);
            if let Ok(entry) = shard
                .table
                .find_entry(hash, |e| e.hash == hash && *e.key == **key)
            {
                entry.remove();
                self.counter_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let mut purged = 0;
        for shard in self.flows.iter() {
            let swept = self.sweep_flows(&mut lock(shard), true, now);
            purged += swept.len() as u64;
            self.forget_open(swept);
        }
        for shard in self.counters.iter() {
            let swept = lock(shard).sweep_ended(true, now);
            self.counter_count.fetch_sub(swept, Ordering::Relaxed);
        }
        lock(&self.cases).retain(|_, case| case.purge_after > now);
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::code::Mac;
    use crate::id::AccountId;
    use crate::machine::{self, Opening};
    use crate::phone::PhoneNumber;
    use crate::policy::Policy;
    use crate::record::{DecoyId, FlowState, Subject};

    fn flow(now: Timestamp, account: Option<&str>) -> FlowRecord {
        let (subject, phone) = match account {
            Some(a) => (
                Subject::Account(AccountId::new(a).unwrap()),
                Some(PhoneNumber::parse("+14155550123").unwrap()),
            ),
            None => (
                Subject::Unknown(DecoyId::from_bytes(*FlowId::generate().unwrap().as_bytes())),
                None,
            ),
        };
        let opening = Opening {
            id: FlowId::generate().unwrap(),
            subject,
            phone,
            key_id: 1,
            code_mac: Mac::from_bytes([0; 32]),
            prior_failures: 0,
        };
        machine::open(&Policy::default(), now, opening)
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => unreachable!("the memory store never waits"),
        }
    }

    #[test]
    fn memory_stays_bounded_when_expired_flows_pile_up() {
        let store = MemoryStore::new();
        let day = Duration::from_secs(86_400);
        let mut now = Timestamp::from_unix_millis(1_800_000_000_000);
        // 40 rounds of 10,000 flows; each round the previous ones expire.
        for round in 0..40 {
            for i in 0..10_000 {
                let account = format!("user-{}", i % 500);
                run(store.create_flow(&flow(now, (i % 2 == 0).then_some(account.as_str())))).unwrap();
            }
            now = now.saturating_add(2 * day);
            assert!(
                store.flow_count() <= 2 * 10_000 + SHARDS * MIN_SWEEP_LEN,
                "round {round}: {}",
                store.flow_count()
            );
        }
        // Index entries of swept flows went with them (500 accounts, and
        // the decoys of the last two rounds at most).
        let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
        assert!(indexed <= 500 + 2 * 5_000 + SHARDS * MIN_SWEEP_LEN, "{indexed}");
        let counted: usize = store.flows.iter().map(|s| lock(s).table.len()).sum();
        assert_eq!(store.flow_count(), counted, "the flow count must match the maps");
    }

    #[test]
    fn counters_of_ended_windows_are_swept_as_new_ones_arrive() {
        let store = MemoryStore::new();
        let mut now = Timestamp::from_unix_millis(1_800_000_000_000);
        for round in 0..20 {
            let counters: Vec<Counter> = (0..5_000)
                .map(|i| Counter::new(format!("k{i}"), Duration::from_secs(60), 1))
                .collect();
            run(store.increment_counters(&counters, now)).unwrap();
            now = now.saturating_add(Duration::from_secs(120));
            assert!(
                store.counter_count() <= 2 * 5_000 + SHARDS * MIN_SWEEP_LEN,
                "round {round}"
            );
        }
        run(store.purge_expired(now)).unwrap();
        assert_eq!(store.counter_count(), 0);
    }

    #[test]
    fn counter_windows_are_capped_and_a_refused_call_changes_nothing() {
        let store = MemoryStore::new().with_counter_capacity(10);
        let t = Timestamp::from_unix_millis(1_800_000_000_000);
        let minute = Duration::from_secs(60);
        let c = |k: &str| Counter::new(k, minute, 1);
        let ten: Vec<Counter> = (0..10).map(|i| c(&format!("k{i}"))).collect();
        run(store.increment_counters(&ten, t)).unwrap();
        assert_eq!(store.counter_count(), 10);
        let err = run(store.increment_counters(&[c("k0"), c("new")], t)).unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(
            run(store.increment_counters(&[Counter::read("k0", minute)], t)).unwrap()[0].count,
            1,
            "the refused call counted nothing"
        );
        // A counting swap is refused before its swap.
        let f = flow(t, Some("a"));
        run(store.create_flow(&f)).unwrap();
        let next = FlowRecord {
            version: f.version + 1,
            ..f.clone()
        };
        assert!(run(store.compare_and_swap_counting(f.version, &next, &[c("new")], t)).is_err());
        assert_eq!(run(store.get_flow(&f.id)).unwrap().unwrap().version, f.version);
        // Windows that ended make room; deletes and undos give it back.
        let later = t.saturating_add(2 * minute);
        run(store.increment_counters(&[c("new")], later)).unwrap();
        assert_eq!(store.counter_count(), 1);
        run(store.delete_counters(&["new".to_owned()])).unwrap();
        assert_eq!(store.counter_count(), 0);
        let refused = [c("x"), Counter::new("y", minute, 2).with_max(1)];
        run(store.increment_counters(&refused, later)).unwrap();
        assert_eq!(
            store.counter_count(),
            1,
            "the refused call's guarded window is gone, x stays"
        );
    }

    #[test]
    fn reads_store_nothing() {
        let store = MemoryStore::new();
        let t = Timestamp::from_unix_millis(1_000);
        for i in 0..1_000 {
            let read = Counter::read(format!("k{i}"), Duration::from_secs(60));
            assert_eq!(
                run(store.increment_counters(&[read], t)).unwrap(),
                [CounterValue::default()]
            );
        }
        assert_eq!(store.counter_count(), 0);
    }

    #[test]
    fn new_flows_are_refused_past_the_capacity_and_accepted_after_a_purge() {
        let store = MemoryStore::with_capacity(3);
        let t = Timestamp::from_unix_millis(1_000);
        for _ in 0..3 {
            run(store.create_flow(&flow(t, None))).unwrap();
        }
        let err = run(store.create_flow(&flow(t, None))).unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(store.flow_count(), 3);
        let later = flow(t, None).purge_after;
        assert_eq!(run(store.purge_expired(later)).unwrap(), 3);
        run(store.create_flow(&flow(later, None))).unwrap();
        assert_eq!(store.flow_count(), 1);
    }

    #[test]
    fn purge_forgets_the_account_index_of_purged_flows() {
        let store = MemoryStore::new();
        let t = Timestamp::from_unix_millis(1_000);
        let f = flow(t, Some("alice"));
        run(store.create_flow(&f)).unwrap();
        assert_eq!(run(store.purge_expired(f.purge_after)).unwrap(), 1);
        assert_eq!(store.flow_count(), 0);
        let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
        assert_eq!(indexed, 0);
    }
    /// A store whose subject index puts every subject under one hash.
    fn colliding() -> MemoryStore {
        MemoryStore::with_subject_hasher(MemoryStore::DEFAULT_CAPACITY, SubjectHasher::Constant(7))
    }

    fn ids(flows: &[FlowRecord]) -> Vec<FlowId> {
        flows.iter().map(|f| f.id).collect()
    }

    #[test]
    fn colliding_subjects_keep_their_own_flows_and_supersede_only_their_own() {
        let store = colliding();
        let t = Timestamp::from_unix_millis(1_000);
        let alice = flow(t, Some("alice"));
        let bob = flow(t, Some("bob"));
        let decoy = flow(t, None);
        for f in [&alice, &bob, &decoy] {
            run(store.create_flow(f)).unwrap();
        }
        // Another subject's flow under the same hash is not superseded.
        for f in [&alice, &bob, &decoy] {
            let stored = run(store.get_flow(&f.id)).unwrap().unwrap();
            assert_eq!(stored.state, FlowState::CodeSent, "{:?}", f.subject);
        }
        let alice2 = flow(t, Some("alice"));
        run(store.create_flow(&alice2)).unwrap();
        assert_eq!(
            run(store.get_flow(&alice.id)).unwrap().unwrap().state,
            FlowState::Superseded
        );
        assert_eq!(
            run(store.get_flow(&bob.id)).unwrap().unwrap().state,
            FlowState::CodeSent
        );
        let key = |f: &FlowRecord| f.subject.key();
        assert_eq!(
            ids(&run(store.find_flows(&key(&alice), 10)).unwrap()),
            [alice2.id, alice.id]
        );
        assert_eq!(ids(&run(store.find_flows(&key(&bob), 10)).unwrap()), [bob.id]);
        assert_eq!(ids(&run(store.find_flows(&key(&decoy), 10)).unwrap()), [decoy.id]);
        assert!(run(store.find_flows("account:carol", 10)).unwrap().is_empty());
        // A key that is a prefix of another's is another subject.
        assert!(run(store.find_flows("account:alic", 10)).unwrap().is_empty());
    }

    #[test]
    fn each_of_colliding_subjects_keeps_its_newest_flows_up_to_the_limit() {
        let store = colliding();
        let t = Timestamp::from_unix_millis(1_000);
        let (mut alice, mut bob) = (Vec::new(), Vec::new());
        // Same instant throughout: the order is the creation order.
        for _ in 0..RECENT_PER_SUBJECT + 3 {
            for (account, mine) in [("alice", &mut alice), ("bob", &mut bob)] {
                let f = flow(t, Some(account));
                run(store.create_flow(&f)).unwrap();
                mine.insert(0, f.id);
            }
        }
        for (key, mine) in [("account:alice", &alice), ("account:bob", &bob)] {
            let found = run(store.find_flows(key, 100)).unwrap();
            assert_eq!(ids(&found), mine[..RECENT_PER_SUBJECT], "{key}");
            assert_eq!(found[0].state, FlowState::CodeSent);
            assert!(found[1..].iter().all(|f| f.state == FlowState::Superseded));
            assert_eq!(ids(&run(store.find_flows(key, 3)).unwrap()), mine[..3]);
        }
        let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
        assert_eq!(indexed, 2 * RECENT_PER_SUBJECT);
    }

    #[test]
    fn sweeping_forgets_exactly_the_swept_flows_of_colliding_subjects() {
        let store = colliding();
        let t = Timestamp::from_unix_millis(1_000);
        let old = flow(t, Some("alice"));
        run(store.create_flow(&old)).unwrap();
        let later = old.purge_after;
        let kept = flow(later, Some("bob"));
        run(store.create_flow(&kept)).unwrap();
        assert_eq!(run(store.purge_expired(later)).unwrap(), 1);
        assert!(run(store.find_flows("account:alice", 10)).unwrap().is_empty());
        assert_eq!(ids(&run(store.find_flows("account:bob", 10)).unwrap()), [kept.id]);
        let indexed: usize = store.subjects.iter().map(|s| lock(s).table.len()).sum();
        assert_eq!(indexed, 1);
        // A new flow of the swept subject supersedes nothing of the other's.
        run(store.create_flow(&flow(later, Some("alice")))).unwrap();
        assert_eq!(
            run(store.get_flow(&kept.id)).unwrap().unwrap().state,
            FlowState::CodeSent
        );
    }

    #[test]
    fn shard_and_slot_use_different_bits_of_one_hash() {
        // Flow ids are uniformly random (the crate makes them): they reach
        // every shard, and the ids of one shard still differ in the slot's
        // low bits. (Ids that differ only in a few bytes are no fair test:
        // for about one seed in thirty, foldhash leaves a shard empty.)
        let store = MemoryStore::new();
        let mut shards = std::collections::HashSet::new();
        let mut slots_of_one_shard = std::collections::HashSet::new();
        for _ in 0..4_000 {
            let hash = store.flow_hash(&FlowId::generate().unwrap());
            shards.insert(shard_of(hash));
            if shard_of(hash) == 0 {
                slots_of_one_shard.insert(hash % 64);
            }
        }
        assert_eq!(shards.len(), SHARDS);
        // About 62 hashes in shard 0 take about 40 of 64 low-bit values;
        // were the shard taken from the low bits, they would take one.
        assert!(slots_of_one_shard.len() >= 16, "{}", slots_of_one_shard.len());
    }

    #[test]
    fn a_refused_call_undoes_only_the_window_it_counted_in() {
        // A limit of 5, full in a window ending at `end`. A call at the
        // window's last millisecond counts a sixth and is refused; before
        // it takes that back, a racing call at `end` opens the next window
        // and is admitted. The undo must leave the new window's count.
        let store = MemoryStore::new();
        let start = Timestamp::from_unix_millis(1_800_000_000_000);
        let limit = Counter::new("limit:x", Duration::from_secs(60), 1)
            .with_max(5)
            .guarded();
        for _ in 0..5 {
            store.step_counter(&limit, start);
        }
        let end = start.saturating_add(Duration::from_secs(60));
        let last = Timestamp::from_unix_millis(end.as_unix_millis() - 1);
        let refused = store.step_counter(&limit, last);
        assert!(limit.refuses(&refused));
        let admitted = store.step_counter(&limit, end);
        assert_eq!(admitted.count, 1);
        store.undo_counter(&limit, refused);
        let read =
            run(store.increment_counters(&[Counter::read("limit:x", Duration::from_secs(60))], end)).unwrap();
        assert_eq!(read[0], admitted, "the next window keeps its count");
        // Its own window's increment is taken back.
        store.undo_counter(&limit, admitted);
        let read =
            run(store.increment_counters(&[Counter::read("limit:x", Duration::from_secs(60))], end)).unwrap();
        assert_eq!(read[0].count, 0);
    }

    /// The whole conformance suite with every subject colliding in the
    /// index.
    #[cfg(feature = "conformance")]
    #[test]
    fn the_conformance_suite_passes_with_every_subject_colliding() {
        let store = std::sync::Arc::new(colliding());
        crate::conformance::block_on(crate::conformance::run(store.clone(), store));
    }
}
