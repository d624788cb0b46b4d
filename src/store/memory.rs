//! The in-process store: sharded maps behind short-held mutexes.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{CodeStore, Counter, CounterValue, Result, StoreError};
use crate::clock::Timestamp;
use crate::id::FlowId;
use crate::record::{FlowRecord, FlowState};
use crate::support::{SupportCase, SupportReference};

const SHARDS: usize = 64;
/// Flows remembered per subject for support look-ups.
const RECENT_PER_SUBJECT: usize = 8;
/// A shard is swept for expired entries when it has grown to this size, or
/// doubled since its last sweep, whichever is larger: sweeping costs O(1)
/// per insert amortized and memory stays within twice the live entries.
const MIN_SWEEP_LEN: usize = 256;

/// Per subject key, its most recent flow ids, newest first.
type SubjectIndex = HashMap<String, VecDeque<FlowId>>;

/// The default store: in process memory, for one instance of the host (and
/// for tests). Safe under any number of concurrent tasks; every operation
/// holds a mutex on one shard for a few map operations, never across an
/// `.await`.
///
/// Expired flows and counters are swept as the store grows, so memory stays
/// within twice the live records; [`CodeStore::purge_expired`] sweeps
/// everything at once. Live records are capped too (default 1,000,000
/// flows, about 400 MB): past the cap, new flows are refused with a
/// retryable error rather than exhausting memory.
pub struct MemoryStore {
    flows: Box<[Mutex<Shard<FlowId, FlowRecord>>]>,
    /// Per subject key: its most recent flows, newest (the open one, if
    /// any) first.
    subjects: Box<[Mutex<SubjectIndex>]>,
    cases: Mutex<HashMap<SupportReference, SupportCase>>,
    counters: Box<[Mutex<Shard<String, CounterValue>>]>,
    hasher: RandomState,
    flow_count: AtomicUsize,
    capacity: usize,
}

#[derive(Debug)]
struct Shard<K, V> {
    map: HashMap<K, V>,
    sweep_at: usize,
}

impl<K, V> Default for Shard<K, V> {
    fn default() -> Self {
        Shard {
            map: HashMap::new(),
            sweep_at: MIN_SWEEP_LEN,
        }
    }
}

impl<K: Eq + Hash, V> Shard<K, V> {
    /// Drops entries failing `keep` once the shard has grown enough since
    /// its last sweep (or always, with `force`). Returns the removed ones.
    fn sweep(&mut self, force: bool, keep: impl Fn(&V) -> bool) -> Vec<V>
    where
        K: Clone,
    {
        if !force && self.map.len() < self.sweep_at {
            return Vec::new();
        }
        let dead: Vec<K> = self
            .map
            .iter()
            .filter(|(_, v)| !keep(v))
            .map(|(k, _)| k.clone())
            .collect();
        let removed = dead.iter().filter_map(|k| self.map.remove(k)).collect();
        if self.map.capacity() > 4 * self.map.len().max(MIN_SWEEP_LEN) {
            self.map.shrink_to_fit();
        }
        self.sweep_at = (2 * self.map.len()).max(MIN_SWEEP_LEN);
        removed
    }
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

    /// An empty store holding at most [`MemoryStore::DEFAULT_CAPACITY`] flows.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// An empty store holding at most `capacity` flow records.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryStore {
            flows: (0..SHARDS).map(|_| Mutex::default()).collect(),
            subjects: (0..SHARDS).map(|_| Mutex::default()).collect(),
            cases: Mutex::default(),
            counters: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            flow_count: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Number of flow records held, expired ones not yet swept included.
    pub fn flow_count(&self) -> usize {
        self.flow_count.load(Ordering::Relaxed)
    }

    /// Number of counter windows held.
    pub fn counter_count(&self) -> usize {
        self.counters.iter().map(|s| lock(s).map.len()).sum()
    }

    fn flow_shard(id: &FlowId) -> usize {
        // Flow ids are uniformly random.
        usize::from(id.as_bytes()[0]) % SHARDS
    }

    fn shard_of<T: Hash + ?Sized>(&self, key: &T) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Uncounts swept flows and removes them from the subject index. Called
    /// with no lock held.
    fn forget_open(&self, swept: Vec<FlowRecord>) {
        self.flow_count.fetch_sub(swept.len(), Ordering::Relaxed);
        self.forget_swept(swept);
    }

    /// Removes already uncounted swept flows from the subject index.
    fn forget_swept(&self, swept: Vec<FlowRecord>) {
        for flow in swept {
            let subject = flow.subject.key();
            let mut subjects = lock(&self.subjects[self.shard_of(&subject)]);
            if let Some(recent) = subjects.get_mut(&subject) {
                recent.retain(|id| *id != flow.id);
                if recent.is_empty() {
                    subjects.remove(&subject);
                }
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
        let live = |f: &FlowRecord| f.purge_after > now;
        let new_shard = Self::flow_shard(&flow.id);
        let subject = flow.subject.key();
        // Lock order: the subject's index shard, then flow shards in
        // ascending index. `compare_and_swap` takes a single flow shard, so
        // no cycle can form.
        let mut subjects = lock(&self.subjects[self.shard_of(&subject)]);
        let old = subjects
            .get(&subject)
            .and_then(|recent| recent.front().copied())
            .filter(|old| *old != flow.id);
        let old_shard = old.map(|id| Self::flow_shard(&id)).filter(|s| *s != new_shard);
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
        if new_guard.map.contains_key(&flow.id) {
            return Err(StoreError::Duplicate);
        }
        let swept = new_guard.sweep(false, live);
        self.flow_count.fetch_sub(swept.len(), Ordering::Relaxed);
        if let Err(full) = self.reserve() {
            drop((new_guard, old_guard, subjects));
            self.forget_swept(swept);
            return Err(full);
        }
        if let Some(old) = old {
            let shard = old_guard.as_deref_mut().unwrap_or(&mut *new_guard);
            if let Some(record) = shard.map.get_mut(&old)
                && record.state.is_open()
            {
                record.state = FlowState::Superseded;
                record.version += 1;
                record.updated_at = now;
            }
        }
        new_guard.map.insert(flow.id, flow.clone());
        // Most subjects only ever have one flow: room for one to start
        // with (16 bytes) rather than the default first growth (four).
        let recent = subjects
            .entry(subject)
            .or_insert_with(|| VecDeque::with_capacity(1));
        recent.push_front(flow.id);
        recent.truncate(RECENT_PER_SUBJECT);
        drop((new_guard, old_guard, subjects));
        self.forget_swept(swept);
        Ok(())
    }

    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        Ok(lock(&self.flows[Self::flow_shard(id)]).map.get(id).cloned())
    }

    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        let mut shard = lock(&self.flows[Self::flow_shard(&flow.id)]);
        match shard.map.get_mut(&flow.id) {
            Some(current) if current.version == expected_version => {
                current.clone_from(flow);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        let live = |v: &CounterValue| v.resets_at.is_some_and(|end| end > now);
        // Each counter is atomic on its own shard; a refused call undoes its
        // guarded increments one by one, so a racing call may briefly see
        // a count above a limit (and be refused: never admitted past it).
        Ok(Counter::apply_all(
            counters,
            now,
            |c| {
                let mut shard = lock(&self.counters[self.shard_of(&c.key)]);
                // A stored counter is updated in place (one look-up); only a
                // new window inserts, cloning the key.
                if let Some(stored) = shard.map.get_mut(&c.key) {
                    let value = c.apply(Some(*stored), now);
                    if value.resets_at.is_some() {
                        *stored = value;
                    }
                    return value;
                }
                let value = c.apply(None, now);
                if value.resets_at.is_some() {
                    // Only an increment opens a window: reads store nothing.
                    shard.sweep(false, live);
                    shard.map.insert(c.key.clone(), value);
                }
                value
            },
            |c| {
                let mut shard = lock(&self.counters[self.shard_of(&c.key)]);
                match c.unapply(shard.map.get(&c.key).copied(), now) {
                    Some(value) => drop(shard.map.insert(c.key.clone(), value)),
                    None => drop(shard.map.remove(&c.key)),
                }
            },
        ))
    }

    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        // Lock order: subject shard, then one flow shard at a time.
        let subjects = lock(&self.subjects[self.shard_of(subject_key)]);
        let ids: Vec<FlowId> = subjects
            .get(subject_key)
            .into_iter()
            .flatten()
            .take(limit)
            .copied()
            .collect();
        Ok(ids
            .iter()
            .filter_map(|id| lock(&self.flows[Self::flow_shard(id)]).map.get(id).cloned())
            .collect())
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
            lock(&self.counters[self.shard_of(key)]).map.remove(key);
        }
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let mut purged = 0;
        for shard in self.flows.iter() {
            let swept = lock(shard).sweep(true, |f: &FlowRecord| f.purge_after > now);
            purged += swept.len() as u64;
            self.forget_open(swept);
        }
        for shard in self.counters.iter() {
            lock(shard).sweep(true, |v: &CounterValue| v.resets_at.is_some_and(|end| end > now));
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
    use crate::record::{DecoyId, Subject};

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
        let indexed: usize = store.subjects.iter().map(|s| lock(s).len()).sum();
        assert!(indexed <= 500 + 2 * 5_000 + SHARDS * MIN_SWEEP_LEN, "{indexed}");
        let counted: usize = store.flows.iter().map(|s| lock(s).map.len()).sum();
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
        let indexed: usize = store.subjects.iter().map(|s| lock(s).len()).sum();
        assert_eq!(indexed, 0);
    }
}
