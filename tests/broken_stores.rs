//! The conformance suite rejects broken stores, each on every run.
//!
//! `MapStore` is the `store` module's documentation example (one map
//! behind one mutex), which passes the suite; each [`Break`] changes one
//! thing in it the way a real store gets it wrong. A "round trip" is a
//! `yield_now` between two critical sections: what a store does when it
//! checks in one call to its backend and writes in another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use otp_recovery::conformance;
use otp_recovery::record::FlowRecord;
use otp_recovery::store::{CodeStore, Counter, CounterValue, Created, Load, Newest, Result, StoreError};
use otp_recovery::support::{SupportCase, SupportReference};
use otp_recovery::{FlowId, Timestamp};

/// One way to get a store wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    /// Nothing: the store is correct.
    None,
    /// `compare_and_swap` checks the version, then writes after a round trip.
    NonAtomicSwap,
    /// A `max` is checked on a read, and the increments applied after a
    /// round trip.
    CheckThenActMax,
    /// A condition (`only_if_opened`) is decided on a read before the
    /// increment.
    ConditionOnARead,
    /// Windows are capped at one hour (a TTL the backend caps).
    CappedWindow,
    /// Every increment moves the window's end.
    SlidingWindow,
    /// The subject's newest flow is compared, then, after a round trip,
    /// the new one inserted and the newest replaced.
    NonAtomicCreate,
    /// A counting swap swaps, then read-modify-writes each counter over
    /// round trips.
    NonAtomicCountingSwap,
    /// A counting swap counts even when it did not write.
    CountsWhenLosing,
    /// `load_counting` reads the counters without incrementing them.
    LoadWithoutCounting,
    /// Timestamps are kept to the second.
    WholeSeconds,
    /// A refused call keeps its increments.
    RefusalKept,
    /// A read (an increment by zero) opens a window.
    ReadOpensWindow,
    /// A flow is purged only after its `purge_after`, not at it.
    PurgedLate,
    /// A create compares the newest flow's id, not its version.
    ComparesIdOnly,
    /// A purge deletes every counter and case, live or not.
    PurgeWipesLive,
    /// A refused call restores the values it read before its increments,
    /// after a round trip (so it also undoes what others counted).
    UndoBySnapshot,
    /// Subject and counter keys are compared ignoring case (a collation).
    CaseInsensitiveKeys,
    /// A create inserts the new flow but drops the newest one's
    /// replacement.
    DropsReplacement,
    /// A create compares and inserts in one step, then writes the
    /// replacement after a round trip, without comparing again.
    BlindReplacement,
    /// A stale create answers `Stale(None)`, not the newest flow.
    StaleWithoutNewest,
    /// A stale create inserts the new flow all the same.
    InsertsWhenStale,
    /// `find_flows` keeps the oldest `limit` flows, newest first.
    FindKeepsOldest,
    /// Swaps and counts are atomic only among the calls of one handle (an
    /// in-process lock), with round trips between check and write.
    AtomicPerInstanceOnly,
    /// Creates are atomic only among the calls of one handle: as in
    /// `NonAtomicCreate`, under an in-process lock.
    CreatesAtomicPerInstanceOnly,
    /// Each handle caches the flows it read or wrote, so it reads the
    /// other handle's writes stale.
    CachedReads,
    /// The subject's newest flow is the one with the latest `created_at`,
    /// not the one created last.
    NewestByStamp,
}

#[derive(Default)]
struct Inner {
    flows: HashMap<FlowId, FlowRecord>,
    subjects: HashMap<String, Vec<FlowId>>,
    counters: HashMap<String, CounterValue>,
    cases: HashMap<SupportReference, SupportCase>,
}

struct MapStore {
    inner: Arc<Mutex<Inner>>,
    broken: Break,
    /// This handle's lock (for `AtomicPerInstanceOnly`).
    local: tokio::sync::Mutex<()>,
    /// This handle's read cache (for `CachedReads`).
    cache: Mutex<HashMap<FlowId, FlowRecord>>,
}

async fn round_trip() {
    tokio::task::yield_now().await;
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_unix_millis(t.as_unix_millis() / 1000 * 1000)
}

impl MapStore {
    fn new(broken: Break) -> Self {
        MapStore {
            inner: Arc::default(),
            broken,
            local: tokio::sync::Mutex::new(()),
            cache: Mutex::default(),
        }
    }

    /// A second handle on the same data, as a second host process has.
    fn other_handle(&self) -> Self {
        MapStore {
            inner: self.inner.clone(),
            ..MapStore::new(self.broken)
        }
    }

    /// The key under which a subject or counter is kept.
    fn key(&self, key: &str) -> String {
        if self.broken == Break::CaseInsensitiveKeys {
            key.to_lowercase()
        } else {
            key.to_owned()
        }
    }

    fn cached(&self, id: &FlowId) -> Option<FlowRecord> {
        if self.broken != Break::CachedReads {
            return None;
        }
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn remember(&self, flow: Option<&FlowRecord>) {
        if self.broken == Break::CachedReads
            && let Some(flow) = flow
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.insert(flow.id, flow.clone());
        }
    }

    fn read(&self, id: &FlowId) -> Option<FlowRecord> {
        if let Some(flow) = self.cached(id) {
            return Some(flow);
        }
        // The cache changes under the data's lock, so that one handle
        // never caches an older version over a newer one.
        let inner = self.lock();
        let flow = inner.flows.get(id).cloned();
        self.remember(flow.as_ref());
        flow
    }

    async fn local(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if matches!(
            self.broken,
            Break::AtomicPerInstanceOnly | Break::CreatesAtomicPerInstanceOnly
        ) {
            Some(self.local.lock().await)
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One call's counters under the lock, by the shared rules (and the
    /// breaks that live inside one step).
    fn count(&self, counters: &[Counter], now: Timestamp) -> Vec<CounterValue> {
        let broken = self.broken;
        let now = if broken == Break::WholeSeconds {
            whole_seconds(now)
        } else {
            now
        };
        let counters: Vec<Counter> = counters
            .iter()
            .cloned()
            .map(|mut c| {
                if broken == Break::CappedWindow {
                    c.window = c.window.min(Duration::from_secs(3600));
                }
                c.key = self.key(&c.key);
                c
            })
            .collect();
        let mut inner = self.lock();
        let map = std::cell::RefCell::new(&mut inner.counters);
        Counter::apply_all(
            &counters,
            now,
            |c| {
                let mut map = map.borrow_mut();
                let stored = map.get(&c.key).copied();
                let mut value = c.apply(stored, now);
                if broken == Break::SlidingWindow && c.by > 0 {
                    value.resets_at = Some(c.window_end_from(now));
                }
                if broken == Break::ReadOpensWindow && value.resets_at.is_none() {
                    value.resets_at = Some(c.window_end_from(now));
                }
                if value.resets_at.is_some() {
                    map.insert(c.key.clone(), value);
                }
                value
            },
            |c, applied| {
                if broken == Break::RefusalKept {
                    return;
                }
                let mut map = map.borrow_mut();
                match c.unapply(applied, map.get(&c.key).copied()) {
                    Some(v) => drop(map.insert(c.key.clone(), v)),
                    None => drop(map.remove(&c.key)),
                }
            },
        )
    }

    /// What `count` would answer, changing nothing.
    fn dry_run(&self, counters: &[Counter], now: Timestamp) -> Vec<CounterValue> {
        let mut copy = self.lock().counters.clone();
        Counter::apply_all(
            counters,
            now,
            |c| {
                let value = c.apply(copy.get(&c.key).copied(), now);
                copy.insert(c.key.clone(), value);
                value
            },
            |_, _| {},
        )
    }

    async fn increment(&self, counters: &[Counter], now: Timestamp) -> Vec<CounterValue> {
        let _local = self.local().await;
        match self.broken {
            Break::CheckThenActMax | Break::AtomicPerInstanceOnly
                if counters.iter().any(|c| c.max.is_some()) =>
            {
                let seen = self.dry_run(counters, now);
                if Counter::refused(counters, &seen) {
                    return self.count(counters, now);
                }
                round_trip().await;
                let unchecked: Vec<Counter> = counters
                    .iter()
                    .cloned()
                    .map(|mut c| {
                        c.max = None;
                        c
                    })
                    .collect();
                // It answers the counts it checked, as `count + 1` from
                // its read would.
                self.count(&unchecked, now);
                seen
            }
            Break::ConditionOnARead if counters.iter().any(|c| c.only_if_opened.is_some()) => {
                let seen = self.dry_run(counters, now);
                round_trip().await;
                let decided: Vec<Counter> = counters
                    .iter()
                    .cloned()
                    .map(|mut c| {
                        if let Some(i) = c.only_if_opened.take()
                            && !seen[i].opened(&counters[i], now)
                        {
                            c.by = 0;
                        }
                        c
                    })
                    .collect();
                self.count(&decided, now)
            }
            Break::UndoBySnapshot if counters.iter().any(|c| c.max.is_some()) => {
                let before: Vec<Option<CounterValue>> = {
                    let inner = self.lock();
                    counters
                        .iter()
                        .map(|c| inner.counters.get(&c.key).copied())
                        .collect()
                };
                let unchecked: Vec<Counter> = counters
                    .iter()
                    .cloned()
                    .map(|mut c| {
                        c.max = None;
                        c
                    })
                    .collect();
                let values = self.count(&unchecked, now);
                round_trip().await;
                if Counter::refused(counters, &values) {
                    let mut inner = self.lock();
                    for (c, old) in counters.iter().zip(before) {
                        if c.guarded || c.max.is_some() {
                            match old {
                                Some(v) => drop(inner.counters.insert(c.key.clone(), v)),
                                None => drop(inner.counters.remove(&c.key)),
                            }
                        }
                    }
                }
                values
            }
            _ => self.count(counters, now),
        }
    }

    async fn swap(&self, expected_version: u64, flow: &FlowRecord) -> bool {
        if self.broken == Break::AtomicPerInstanceOnly {
            let current = self.lock().flows.get(&flow.id).map(|f| f.version);
            if current != Some(expected_version) {
                return false;
            }
            round_trip().await;
            self.lock().flows.insert(flow.id, self.stored(flow));
            return true;
        }
        let mut inner = self.lock();
        let wrote = match inner.flows.get_mut(&flow.id) {
            Some(current) if current.version == expected_version => {
                *current = self.stored(flow);
                true
            }
            _ => false,
        };
        if wrote {
            self.remember(Some(&self.stored(flow)));
        }
        wrote
    }

    fn stored(&self, flow: &FlowRecord) -> FlowRecord {
        let mut flow = flow.clone();
        if self.broken == Break::WholeSeconds {
            flow.created_at = whole_seconds(flow.created_at);
            flow.updated_at = whole_seconds(flow.updated_at);
        }
        flow
    }

    /// The subject's newest flow: its id and version.
    fn newest(&self, inner: &Inner, key: &str) -> Option<(FlowId, u64)> {
        let ids = inner.subjects.get(key).into_iter().flatten();
        let id = match self.broken {
            Break::NewestByStamp => ids.max_by_key(|id| inner.flows[*id].created_at),
            _ => ids.last(),
        }?;
        Some((*id, inner.flows[id].version))
    }

    /// Whether `newest` names the subject's newest flow `stored`.
    fn matches(&self, newest: Newest<'_>, stored: Option<(FlowId, u64)>) -> bool {
        match self.broken {
            Break::ComparesIdOnly => newest.expected().map(|(id, _)| id) == stored.map(|(id, _)| id),
            _ => newest.matches(stored),
        }
    }

    /// Inserts `flow` and writes the newest one's replacement.
    fn insert(&self, inner: &mut Inner, key: String, flow: &FlowRecord, newest: Newest<'_>) {
        if let Some(next) = newest.replacement()
            && self.broken != Break::DropsReplacement
        {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&next.id);
            inner.flows.insert(next.id, self.stored(next));
        }
        inner.subjects.entry(key).or_default().push(flow.id);
        inner.flows.insert(flow.id, self.stored(flow));
        // Under the data's lock, as every change of the cache.
        self.remember(Some(&self.stored(flow)));
    }
}

#[async_trait]
impl CodeStore for MapStore {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> Result<Created> {
        let _local = self.local().await;
        let key = self.key(&flow.subject.key());
        let non_atomic = matches!(
            self.broken,
            Break::NonAtomicCreate | Break::CreatesAtomicPerInstanceOnly
        );
        {
            let mut inner = self.lock();
            if inner.flows.contains_key(&flow.id) {
                return Err(StoreError::Duplicate);
            }
            let stored = self.newest(&inner, &key);
            if !self.matches(newest, stored) {
                let current = match self.broken {
                    Break::StaleWithoutNewest => None,
                    _ => stored.map(|(id, _)| inner.flows[&id].clone()),
                };
                if self.broken == Break::InsertsWhenStale {
                    self.insert(&mut inner, key, flow, Newest::None);
                }
                return Ok(Created::Stale(current));
            }
            if self.broken == Break::BlindReplacement {
                self.insert(&mut inner, key.clone(), flow, Newest::None);
            } else if !non_atomic {
                self.insert(&mut inner, key.clone(), flow, newest);
            }
        }
        if non_atomic {
            round_trip().await;
            self.insert(&mut self.lock(), key, flow, newest);
        } else if let (Break::BlindReplacement, Some(next)) = (self.broken, newest.replacement()) {
            round_trip().await;
            self.lock().flows.insert(next.id, next.clone());
        }
        Ok(Created::Inserted)
    }

    async fn get_flow(&self, id: &FlowId) -> Result<Option<FlowRecord>> {
        Ok(self.read(id))
    }

    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(Option<FlowRecord>, Vec<CounterValue>)> {
        let flow = match load {
            Load::Flow(id) => self.read(id),
            Load::Newest(subject) => {
                let newest = self.newest(&self.lock(), &self.key(&subject.key()));
                newest.and_then(|(id, _)| self.read(&id))
            }
        };
        let values = if self.broken == Break::LoadWithoutCounting {
            let reads: Vec<Counter> = counters.iter().map(|c| Counter::read(&c.key, c.window)).collect();
            self.count(&reads, now)
        } else {
            self.increment(counters, now).await
        };
        Ok((flow, values))
    }

    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> Result<bool> {
        if self.broken == Break::NonAtomicSwap {
            let current = self.lock().flows.get(&flow.id).map(|f| f.version);
            if current != Some(expected_version) {
                return Ok(false);
            }
            round_trip().await;
            self.lock().flows.insert(flow.id, self.stored(flow));
            return Ok(true);
        }
        let _local = self.local().await;
        Ok(self.swap(expected_version, flow).await)
    }

    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<Option<Vec<CounterValue>>> {
        let _local = self.local().await;
        match self.broken {
            Break::CountsWhenLosing => {
                let wrote = self.swap(expected_version, flow).await;
                let values = self.count(counters, now);
                Ok(wrote.then_some(values))
            }
            Break::NonAtomicCountingSwap => {
                if !self.swap(expected_version, flow).await {
                    return Ok(None);
                }
                let mut values = Vec::new();
                for c in counters {
                    round_trip().await;
                    let value = c.apply(self.lock().counters.get(&c.key).copied(), now);
                    round_trip().await;
                    self.lock().counters.insert(c.key.clone(), value);
                    values.push(value);
                }
                Ok(Some(values))
            }
            _ => {
                // The swap and the count under one lock (or, broken, under
                // this handle's lock only).
                let wrote = self.swap(expected_version, flow).await;
                Ok(wrote.then(|| self.count(counters, now)))
            }
        }
    }

    async fn increment_counters(&self, counters: &[Counter], now: Timestamp) -> Result<Vec<CounterValue>> {
        Ok(self.increment(counters, now).await)
    }

    async fn find_flows(&self, subject_key: &str, limit: usize) -> Result<Vec<FlowRecord>> {
        let inner = self.lock();
        let ids: Vec<FlowId> = inner
            .subjects
            .get(&self.key(subject_key))
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let newest_first: Vec<FlowId> = if self.broken == Break::FindKeepsOldest {
            ids.into_iter().take(limit).rev().collect()
        } else {
            ids.into_iter().rev().take(limit).collect()
        };
        Ok(newest_first
            .iter()
            .filter_map(|id| inner.flows.get(id).cloned())
            .collect())
    }

    async fn put_case(&self, case: &SupportCase) -> Result<()> {
        self.lock().cases.insert(case.reference, case.clone());
        Ok(())
    }

    async fn get_case(&self, reference: &SupportReference) -> Result<Option<SupportCase>> {
        Ok(self.lock().cases.get(reference).cloned())
    }

    async fn delete_counters(&self, keys: &[String]) -> Result<()> {
        let mut inner = self.lock();
        for k in keys {
            inner.counters.remove(k);
        }
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64> {
        let late = self.broken == Break::PurgedLate;
        let wipe = self.broken == Break::PurgeWipesLive;
        let mut inner = self.lock();
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let Inner {
            flows,
            subjects,
            counters,
            cases,
        } = &mut *inner;
        let before = flows.len();
        flows.retain(|_, f| {
            if late {
                f.purge_after >= now
            } else {
                f.purge_after > now
            }
        });
        subjects
            .values_mut()
            .for_each(|ids| ids.retain(|id| flows.contains_key(id)));
        subjects.retain(|_, ids| !ids.is_empty());
        counters.retain(|_, v| !wipe && v.resets_at.is_some_and(|end| end > now));
        cases.retain(|_, c| !wipe && c.purge_after > now);
        Ok((before - flows.len()) as u64)
    }
}

/// Runs the whole suite against `broken` and returns its panic message,
/// or `None` if the store passed.
fn suite_verdict(broken: Break) -> Option<String> {
    conformance::block_on(async move {
        let store = MapStore::new(broken);
        let other = Arc::new(store.other_handle());
        let outcome = tokio::spawn(conformance::run(Arc::new(store), other)).await;
        match outcome {
            Ok(()) => None,
            Err(e) => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                Some(message.unwrap_or_else(|| "a panic without a message".to_owned()))
            }
        }
    })
}

/// The suite rejects `broken`, with the check that is about its fault.
fn rejects(broken: Break, because: &str) {
    rejects_by_one_of(broken, &[because]);
}

/// The suite rejects `broken` with one of the checks about its fault.
fn rejects_by_one_of(broken: Break, because: &[&str]) {
    match suite_verdict(broken) {
        None => panic!("the conformance suite passed a store with {broken:?}"),
        Some(message) => assert!(
            because.iter().any(|b| message.contains(b)),
            "{broken:?} was rejected, but not by the check about it: {message}"
        ),
    }
}

#[test]
fn the_unbroken_map_store_passes() {
    assert_eq!(suite_verdict(Break::None), None);
}

#[test]
fn a_non_atomic_compare_and_swap_is_rejected() {
    rejects(Break::NonAtomicSwap, "one version, one winner");
}

#[test]
fn a_max_checked_before_the_increment_is_rejected() {
    rejects(Break::CheckThenActMax, "a max of 5 admitted another number");
}

#[test]
fn a_condition_decided_on_a_read_is_rejected() {
    rejects(Break::ConditionOnARead, "concurrent calls counted");
}

#[test]
fn a_window_capped_at_an_hour_is_rejected() {
    rejects(Break::CappedWindow, "window must end exactly its length");
}

#[test]
fn a_sliding_window_is_rejected() {
    rejects(Break::SlidingWindow, "must not move its end");
}

#[test]
fn a_non_atomic_create_is_rejected() {
    rejects_by_one_of(
        Break::NonAtomicCreate,
        &[
            "exactly one flow of the account may stay open",
            "swaps and superseding creates from one version: one winner",
        ],
    );
}

#[test]
fn a_counting_swap_that_loses_counts_is_rejected() {
    rejects(Break::NonAtomicCountingSwap, "counting swaps lost counts");
}

#[test]
fn a_counting_swap_that_counts_when_it_loses_is_rejected() {
    rejects(Break::CountsWhenLosing, "a losing swap must not count");
}

#[test]
fn a_load_that_does_not_count_is_rejected() {
    rejects(
        Break::LoadWithoutCounting,
        "load_counting must apply its counters",
    );
}

#[test]
fn timestamps_kept_to_the_second_are_rejected() {
    rejects(Break::WholeSeconds, "a stored flow must read back unchanged");
}

#[test]
fn a_refusal_that_keeps_its_counts_is_rejected() {
    rejects(Break::RefusalKept, "the limit's own increment was undone");
}

#[test]
fn a_read_that_opens_a_window_is_rejected() {
    rejects(
        Break::ReadOpensWindow,
        "a counter never incremented reads as zero",
    );
}

#[test]
fn a_flow_purged_late_is_rejected() {
    rejects(Break::PurgedLate, "not purged at purge_after");
}

#[test]
fn a_create_that_compares_ids_only_is_rejected() {
    rejects(Break::ComparesIdOnly, "is not the subject's newest flow");
}

#[test]
fn a_create_that_drops_the_replacement_is_rejected() {
    rejects(
        Break::DropsReplacement,
        "replacement must be written in the same step",
    );
}

#[test]
fn a_replacement_written_apart_from_its_compare_is_rejected() {
    rejects(
        Break::BlindReplacement,
        "swaps and superseding creates from one version: one winner",
    );
}

#[test]
fn a_stale_create_without_the_newest_flow_is_rejected() {
    rejects(Break::StaleWithoutNewest, "is not the subject's newest flow");
}

#[test]
fn a_stale_create_that_inserts_is_rejected() {
    rejects(
        Break::InsertsWhenStale,
        "a create that answered Stale must not write its flow",
    );
}

#[test]
fn a_purge_that_deletes_live_counters_and_cases_is_rejected() {
    rejects(Break::PurgeWipesLive, "a purge deleted a counter in its window");
}

#[test]
fn an_undo_that_restores_a_snapshot_is_rejected() {
    rejects(Break::UndoBySnapshot, "undo took admitted counts with it");
}

#[test]
fn keys_compared_ignoring_case_are_rejected() {
    // By the check of the keys or, first, by the driver's check of the
    // newest flow a store answers.
    rejects_by_one_of(
        Break::CaseInsensitiveKeys,
        &[
            "differs only in case superseded this one",
            "another subject's flow as the newest",
        ],
    );
}

#[test]
fn a_find_that_keeps_the_oldest_flows_is_rejected() {
    rejects(Break::FindKeepsOldest, "the limit keeps the newest flows");
}

#[test]
fn swaps_and_counts_atomic_within_one_instance_only_are_rejected() {
    // By the wrong codes or, when those happen to serialize, the tokens
    // or the resets.
    rejects_by_one_of(
        Break::AtomicPerInstanceOnly,
        &[
            "two instances evaluated more codes than the limit",
            "two instances issued more than one token",
            "a token reset twice",
        ],
    );
}

#[test]
fn creates_atomic_within_one_instance_only_are_rejected() {
    rejects(Break::CreatesAtomicPerInstanceOnly, "flows of one account open");
}

#[test]
fn reads_cached_per_instance_are_rejected() {
    rejects(
        Break::CachedReads,
        "a flow swapped on the other instance was read stale",
    );
}

#[test]
fn superseding_the_latest_stamp_is_rejected() {
    rejects(
        Break::NewestByStamp,
        "the open flow must be superseded, whatever its stamp",
    );
}
