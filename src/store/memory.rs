//! The in-process store: sharded maps behind short-held mutexes.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{CodeStore, Counter, Result, StoreError};
use crate::clock::Timestamp;
use crate::id::{AccountId, FlowId};
use crate::record::{FlowRecord, FlowState};

const SHARDS: usize = 64;
/// A shard is swept for expired entries when it has grown to this size, or
/// doubled since its last sweep, whichever is larger: sweeping costs O(1)
/// per insert amortized and memory stays within twice the live entries.
const MIN_SWEEP_LEN: usize = 256;

/// The default store: in process memory, for one instance of the host (and
/// for tests). Safe under any number of concurrent tasks; every operation
/// holds a mutex on one shard for a few map operations, never across an
/// `.await`.
///
/// Expired flows and counters are swept as the store grows, so memory stays
/// bounded by the live records; [`CodeStore::purge_expired`] sweeps
/// everything at once.
#[derive(Debug)]
pub struct MemoryStore {
    flows: Box<[Mutex<Shard<FlowId, FlowRecord>>]>,
    open: Box<[Mutex<HashMap<AccountId, FlowId>>]>,
    counters: Box<[Mutex<Shard<CounterKey, CounterValue>>]>,
    hasher: RandomState,
}

/// A counter: its key and the start of its window (Unix ms).
type CounterKey = (String, u64);
/// The count and the end of the window (Unix ms).
type CounterValue = (u64, u64);

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

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            flows: (0..SHARDS).map(|_| Mutex::default()).collect(),
            open: (0..SHARDS).map(|_| Mutex::default()).collect(),
            counters: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Number of flow records held, expired ones not yet swept included.
    pub fn flow_count(&self) -> usize {
        self.flows.iter().map(|s| lock(s).map.len()).sum()
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

    /// Removes swept flows from the account index. Called with no lock held.
    fn forget_open(&self, swept: Vec<FlowRecord>) {
        for flow in swept {
            if let Some(account) = &flow.account {
                let mut open = lock(&self.open[self.shard_of(account)]);
                if open.get(account) == Some(&flow.id) {
                    open.remove(account);
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
        let live = |f: &FlowRecord| f.purge_after > now;
        let new_shard = Self::flow_shard(&flow.id);
        let Some(account) = &flow.account else {
            let mut shard = lock(&self.flows[new_shard]);
            if shard.map.contains_key(&flow.id) {
                return Err(StoreError::Duplicate);
            }
            let swept = shard.sweep(false, live);
            shard.map.insert(flow.id, flow.clone());
            drop(shard);
            self.forget_open(swept);
            return Ok(());
        };
        // Lock order: the account's index shard, then flow shards in
        // ascending index. `compare_and_swap` takes a single flow shard, so
        // no cycle can form.
        let mut open = lock(&self.open[self.shard_of(account)]);
        let old = open.get(account).copied().filter(|old| *old != flow.id);
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
        let swept = new_guard.sweep(false, live);
        new_guard.map.insert(flow.id, flow.clone());
        open.insert(account.clone(), flow.id);
        drop((new_guard, old_guard, open));
        self.forget_open(swept);
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

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<u64>> {
        let mut counts = Vec::with_capacity(counters.len());
        for c in counters {
            let start = c.window_start(now);
            let key = (c.key.clone(), start);
            let mut shard = lock(&self.counters[self.shard_of(&key)]);
            shard.sweep(false, |&(_, end)| end > now.as_unix_millis());
            let entry = shard.map.entry(key).or_insert((0, c.window_end(now)));
            entry.0 = entry.0.saturating_add(u64::from(c.by));
            counts.push(entry.0);
        }
        Ok(counts)
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let mut purged = 0;
        for shard in self.flows.iter() {
            let swept = lock(shard).sweep(true, |f: &FlowRecord| f.purge_after > now);
            purged += swept.len() as u64;
            self.forget_open(swept);
        }
        for shard in self.counters.iter() {
            lock(shard).sweep(true, |&(_, end)| end > now.as_unix_millis());
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::code::Mac;
    use crate::machine;
    use crate::phone::PhoneNumber;
    use crate::policy::Policy;

    fn flow(now: Timestamp, account: Option<&str>) -> FlowRecord {
        let account = account.map(|a| {
            (
                AccountId::new(a).unwrap(),
                PhoneNumber::parse("+14155550123").unwrap(),
            )
        });
        machine::open(
            &Policy::default(),
            now,
            FlowId::generate().unwrap(),
            account,
            1,
            Mac::from_bytes([0; 32]),
        )
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
        // Account index entries of swept flows went with them.
        let indexed: usize = store.open.iter().map(|s| lock(s).len()).sum();
        assert!(indexed <= 500, "{indexed}");
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
    fn purge_forgets_the_account_index_of_purged_flows() {
        let store = MemoryStore::new();
        let t = Timestamp::from_unix_millis(1_000);
        let f = flow(t, Some("alice"));
        run(store.create_flow(&f)).unwrap();
        assert_eq!(run(store.purge_expired(f.purge_after)).unwrap(), 1);
        assert_eq!(store.flow_count(), 0);
        let indexed: usize = store.open.iter().map(|s| lock(s).len()).sum();
        assert_eq!(indexed, 0);
    }
}
