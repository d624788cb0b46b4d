//! Windowed counters: one increment's request ([`Counter`]) and its answer
//! ([`CounterValue`]), with the rules every store applies to them.

use std::borrow::Cow;
use std::time::Duration;

use crate::clock::Timestamp;

/// One increment of a windowed counter.
///
/// A counter's window opens at its first increment and lasts `window`; the
/// count starts again at zero with the first increment after the window has
/// ended. An increment `by: 0` reads the count and never opens a window.
/// Use one window length per key.
///
/// A counter may be conditional: with `only_if_opened: Some(i)` it is
/// incremented only if the counter at index `i` of the same call (an
/// earlier one) was opened by that call ([`CounterValue::opened`]);
/// otherwise it is read. That counts distinct things in one call: "add one
/// to the IP's count of accounts if this (IP, account) pair is new".
///
/// A counter may carry a `max`: a call in which any such counter ends above
/// its `max` is *refused*, and every `guarded` counter's increment in it
/// (those with a `max` are guarded) is undone before the call returns, so a
/// refused request spends no budget. The values returned are those before
/// the undo, so the caller sees which limit refused. See
/// [`Counter::apply_all`] for the one loop every store may share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Counter {
    /// What is counted, e.g. `send:phone:+14155550123`. Opaque to the store.
    pub key: String,
    /// Window length; at least one millisecond.
    pub window: Duration,
    /// How much to add.
    pub by: u32,
    /// Increment only if the counter at this earlier index was opened by
    /// this call.
    pub only_if_opened: Option<usize>,
    /// Refuse the whole call if this counter ends above it.
    pub max: Option<u64>,
    /// Undo this counter's increment when the call is refused.
    pub guarded: bool,
}

impl Counter {
    /// An increment of `by` on `key` within windows of `window`.
    pub fn new(key: impl Into<String>, window: Duration, by: u32) -> Self {
        Counter {
            key: key.into(),
            window,
            by,
            only_if_opened: None,
            max: None,
            guarded: false,
        }
    }

    /// Refuses the call if this counter ends above `max` (and makes it
    /// guarded).
    #[must_use]
    pub fn with_max(mut self, max: u64) -> Self {
        self.max = Some(max);
        self.guarded = true;
        self
    }

    /// Undoes this counter's increment if the call is refused.
    #[must_use]
    pub fn guarded(mut self) -> Self {
        self.guarded = true;
        self
    }

    /// Whether `value` (this counter's value after the call) refuses it.
    pub fn refuses(&self, value: &CounterValue) -> bool {
        self.max.is_some_and(|max| value.count > max)
    }

    /// Makes the increment conditional on the counter at index `earlier`
    /// of the same call having been opened by it.
    #[must_use]
    pub fn only_if_opened(mut self, earlier: usize) -> Self {
        self.only_if_opened = Some(earlier);
        self
    }

    /// Applies a whole call's counters in order: the loop every store may
    /// use. `step` must apply one counter atomically ([`Counter::apply`] on
    /// the stored value) and return its value; `undo` must take one
    /// counter's increment back atomically ([`Counter::unapply`]), given
    /// the value `step` returned for it (which names the window it went
    /// to). A
    /// conditional counter whose earlier counter was not opened by this call
    /// is applied as a read. If the call is refused (a counter ends above
    /// its `max`), the guarded increments are undone.
    pub fn apply_all(
        counters: &[Counter],
        now: Timestamp,
        mut step: impl FnMut(&Counter) -> CounterValue,
        mut undo: impl FnMut(&Counter, CounterValue),
    ) -> Vec<CounterValue> {
        let mut values = Vec::with_capacity(counters.len());
        // Per counter: whether this call opened its window, and whether
        // its increment held (a conditional one may have become a read).
        let mut opened = Vec::with_capacity(counters.len());
        let mut held = Vec::with_capacity(counters.len());
        // A counter is handed on as it is unless it is conditional: only
        // then is the effective counter a copy (a read when its condition
        // fails), so the common call clones no key.
        fn effective(c: &Counter, holds: bool) -> Cow<'_, Counter> {
            match (c.only_if_opened, holds) {
                (None, _) => Cow::Borrowed(c),
                (Some(_), holds) => {
                    let mut e = c.clone();
                    e.only_if_opened = None;
                    if !holds {
                        e.by = 0;
                    }
                    Cow::Owned(e)
                }
            }
        }
        let mut refused = false;
        for c in counters {
            let holds = c
                .only_if_opened
                .is_none_or(|i| opened.get(i).copied().unwrap_or(false));
            let e = effective(c, holds);
            let value = step(&e);
            opened.push(value.opened(&e, now));
            refused |= e.refuses(&value);
            values.push(value);
            held.push(holds);
        }
        if refused {
            for ((c, holds), applied) in counters.iter().zip(held).zip(&values) {
                let e = effective(c, holds);
                if e.guarded && e.by > 0 {
                    undo(&e, *applied);
                }
            }
        }
        values
    }

    /// [`Counter::apply_all`] over counters held in `cells` for the whole
    /// call: for a store that applies a call under one lock or inside one
    /// transaction (a map behind a mutex, rows read into a batch).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    /// use otp_recovery::Timestamp;
    /// use otp_recovery::store::{Counter, CounterValue};
    ///
    /// let mut counters: HashMap<String, CounterValue> = HashMap::new();
    /// let now = Timestamp::from_unix_millis(0);
    /// let limit = Counter::new("k", Duration::from_secs(60), 1).with_max(1);
    /// assert_eq!(Counter::apply_all_in(&[limit.clone()], now, &mut counters)[0].count, 1);
    /// // Refused above its max, and taken back: the count stays 1.
    /// assert_eq!(Counter::apply_all_in(&[limit], now, &mut counters)[0].count, 2);
    /// assert_eq!(counters["k"].count, 1);
    /// ```
    pub fn apply_all_in(
        counters: &[Counter],
        now: Timestamp,
        cells: &mut impl CounterCells,
    ) -> Vec<CounterValue> {
        let cells = std::cell::RefCell::new(cells);
        Counter::apply_all(
            counters,
            now,
            |c| {
                let mut cells = cells.borrow_mut();
                let value = c.apply(cells.get(&c.key), now);
                // A read opens nothing, so stores nothing.
                if value.resets_at.is_some() {
                    cells.set(&c.key, Some(value));
                }
                value
            },
            |c, applied| {
                let mut cells = cells.borrow_mut();
                let value = c.unapply(applied, cells.get(&c.key));
                cells.set(&c.key, value);
            },
        )
    }

    /// Whether a call whose counters ended at `values` was refused.
    pub fn refused(counters: &[Counter], values: &[CounterValue]) -> bool {
        counters.iter().zip(values).any(|(c, v)| c.refuses(v))
    }

    /// The stored value after taking back this counter's increment, which
    /// made it `applied`: `None` when nothing is left (delete the counter),
    /// the stored value as it is when it holds another window than the
    /// increment went to (a store that is not atomic over a whole call may
    /// see a racing call open the next window in between; its count is not
    /// this call's to take).
    pub fn unapply(&self, applied: CounterValue, stored: Option<CounterValue>) -> Option<CounterValue> {
        let v = stored?;
        if v.resets_at.is_none() || v.resets_at != applied.resets_at {
            return Some(v);
        }
        let count = v.count.saturating_sub(u64::from(self.by));
        (count > 0).then_some(CounterValue {
            count,
            resets_at: v.resets_at,
        })
    }

    /// A read of `key`'s count (an increment by zero).
    pub fn read(key: impl Into<String>, window: Duration) -> Self {
        Counter::new(key, window, 0)
    }

    /// When a window opened at `now` ends.
    pub fn window_end_from(&self, now: Timestamp) -> Timestamp {
        now.saturating_add(self.window.max(Duration::from_millis(1)))
    }

    /// The counter's new value given its stored value (`count`, window end)
    /// and `now`: the shared rule every store applies atomically.
    pub fn apply(&self, stored: Option<CounterValue>, now: Timestamp) -> CounterValue {
        let live = stored.filter(|v| v.resets_at.is_some_and(|end| now < end));
        match (live, self.by) {
            (Some(v), by) => CounterValue {
                count: v.count.saturating_add(u64::from(by)),
                resets_at: v.resets_at,
            },
            (None, 0) => CounterValue::default(),
            (None, by) => CounterValue {
                count: u64::from(by),
                resets_at: Some(self.window_end_from(now)),
            },
        }
    }
}

/// A counter's value after an increment or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CounterValue {
    /// The count in the current window.
    pub count: u64,
    /// When the current window ends; `None` when no window is open (count 0).
    pub resets_at: Option<Timestamp>,
}

impl CounterValue {
    /// A value of `count` in a window ending at `resets_at`.
    pub fn new(count: u64, resets_at: Option<Timestamp>) -> Self {
        CounterValue { count, resets_at }
    }

    /// Whether `counter`, applied at `now`, opened this window: its count
    /// is exactly its increment and the window started now.
    pub fn opened(&self, counter: &Counter, now: Timestamp) -> bool {
        counter.by > 0
            && self.count == u64::from(counter.by)
            && self.resets_at == Some(counter.window_end_from(now))
    }
}

/// Counter windows by key, for [`Counter::apply_all_in`]: what a store holds
/// (or has read) while it applies one call.
pub trait CounterCells {
    /// The stored value of `key`, if any.
    fn get(&self, key: &str) -> Option<CounterValue>;
    /// Stores `value` under `key`; `None` deletes it.
    fn set(&mut self, key: &str, value: Option<CounterValue>);
}

impl<S: std::hash::BuildHasher> CounterCells for std::collections::HashMap<String, CounterValue, S> {
    fn get(&self, key: &str) -> Option<CounterValue> {
        std::collections::HashMap::get(self, key).copied()
    }

    fn set(&mut self, key: &str, value: Option<CounterValue>) {
        match (value, self.get_mut(key)) {
            (Some(v), Some(slot)) => *slot = v,
            (Some(v), None) => drop(self.insert(key.to_owned(), v)),
            (None, _) => drop(self.remove(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_map_holds_what_apply_all_decides() {
        let mut map: HashMap<String, CounterValue> = HashMap::new();
        let now = Timestamp::from_unix_millis(1_000);
        let minute = Duration::from_secs(60);
        // A read stores nothing.
        assert_eq!(
            Counter::apply_all_in(&[Counter::read("r", minute)], now, &mut map)[0].count,
            0
        );
        assert!(map.is_empty());
        // A pair opened by this call counts the distinct subject; a repeat does not.
        let call = [
            Counter::new("pair", minute, 1),
            Counter::new("distinct", minute, 1).only_if_opened(0),
        ];
        Counter::apply_all_in(&call, now, &mut map);
        let again = Counter::apply_all_in(&call, now, &mut map);
        assert_eq!((again[0].count, again[1].count), (2, 1));
        // A refused call takes its guarded increments back, and deletes a
        // window it opened.
        let refused = [
            Counter::new("fresh", minute, 1).guarded(),
            Counter::new("pair", minute, 1).with_max(2),
        ];
        let values = Counter::apply_all_in(&refused, now, &mut map);
        assert_eq!((values[0].count, values[1].count), (1, 3));
        assert_eq!(map.get("fresh"), None);
        assert_eq!(map["pair"].count, 2);
    }
}
