//! The counters of one store call and what each means (a limit, a block,
//! the subject's lock, a detector's measure), and why the call was refused.

use std::time::Duration;

use super::{BlockTarget, LimitScope, Rule};
use crate::clock::Timestamp;
use crate::counter::{Counter, CounterValue};

/// One counter of a store call, with what it means.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// A limit: the call is refused when the count passes `max`.
    Limit(LimitScope, u32),
    /// A block: the call is refused while its window is open.
    Block(BlockTarget),
    /// The subject's lock, or its failures (refused at the account limit).
    Lock,
    /// Counted for a detector or read for a decision; undone with the
    /// call's limits when `guarded`.
    Measure {
        /// Undo when the call is refused.
        guarded: bool,
    },
}

/// The counters of one store call and their roles, built up in order.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) counters: Vec<Counter>,
    pub(crate) roles: Vec<Role>,
}

impl Plan {
    /// An empty plan with room for `n` counters.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Plan {
            counters: Vec::with_capacity(n),
            roles: Vec::with_capacity(n),
        }
    }

    /// Adds a counter; its role sets its maximum and guard. Returns its
    /// index.
    pub(crate) fn push(&mut self, counter: Counter, role: Role) -> usize {
        let counter = match &role {
            Role::Limit(_, max) => counter.with_max(u64::from(*max)),
            Role::Block(_) => counter.with_max(0),
            Role::Lock | Role::Measure { guarded: false } => counter,
            Role::Measure { guarded: true } => counter.guarded(),
        };
        self.counters.push(counter);
        self.roles.push(role);
        self.counters.len() - 1
    }

    /// Adds a read of a block under `key`.
    pub(crate) fn block(&mut self, target: BlockTarget, key: String) {
        let counter = Counter::read(key, Duration::from_secs(1));
        self.push(counter, Role::Block(target));
    }

    /// Adds `by` to the count of a limit rule, keyed by `value`. A read
    /// (`by` 0) refuses where one more would pass the rule's maximum, so it
    /// is refused exactly when a count would be.
    pub(crate) fn limit(&mut self, rule: &Rule, value: &str, by: u32) -> usize {
        let max = rule.max.saturating_sub(u32::from(by == 0));
        self.push(rule.counter(value, by), Role::Limit(rule.scope, max))
    }

    /// Adds a lock counter (read, or set) that refuses the call while its
    /// count passes `max`.
    pub(crate) fn lock(&mut self, counter: Counter, max: u64) -> usize {
        self.push(counter.with_max(max), Role::Lock)
    }

    /// Why the call was refused, if it was: a lock, then a block, then the
    /// limit passed with the longest wait.
    pub(crate) fn refusal(&self, values: &[CounterValue], now: Timestamp) -> Option<Refusal> {
        let refusing = || {
            self.counters
                .iter()
                .zip(&self.roles)
                .zip(values)
                .filter(|((c, _), v)| c.refuses(v))
                .map(|((_, r), v)| (r, v))
        };
        if refusing().any(|(r, _)| matches!(r, Role::Lock)) {
            return Some(Refusal::Locked);
        }
        if let Some((Role::Block(target), value)) = refusing().find(|(r, _)| matches!(r, Role::Block(_))) {
            return Some(Refusal::Blocked(target.clone(), value.resets_at.unwrap_or(now)));
        }
        refusing()
            .filter_map(|(r, v)| match r {
                Role::Limit(scope, _) => Some((
                    *scope,
                    v.resets_at
                        .map_or(Duration::ZERO, |end| end.saturating_duration_since(now)),
                )),
                _ => None,
            })
            .max_by_key(|(_, wait)| *wait)
            .map(|(scope, wait)| Refusal::Limited(scope, wait))
    }
}

/// Why a plan refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The subject is locked.
    Locked,
    /// A block is in force until then.
    Blocked(BlockTarget, Timestamp),
    /// A limit was passed; this long until it allows again.
    Limited(LimitScope, Duration),
}
