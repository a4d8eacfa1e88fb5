//! A linearizability checker for registers, for tests that record what clients did and
//! when: is there one order of the operations, each taking effect at some instant
//! between its call and its return, in which every read returns the value of the last
//! write before it? Wing and Gong's search, with the memo of states already tried that
//! Lowe added. Registers are independent (linearizability is local), so each key is
//! checked on its own.

use std::collections::{BTreeMap, HashSet};

/// What an operation did to its register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// One operation of one client, as recorded.
#[derive(Clone, Debug)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub kind: Kind,
    /// The value written, or the value read (none: the register held nothing).
    pub value: Option<String>,
    /// When the call began, in nanoseconds from an origin common to every client.
    pub called: u64,
    /// When it returned. A write that failed may still have taken effect (its answer
    /// may have been lost): none, and it may be left out of the order or put anywhere
    /// after its call. A read that failed tells nothing and is not recorded.
    pub returned: Option<u64>,
}

/// Checks the history of every key, each register starting out holding `initial`.
/// `Err` says which key has no valid order.
pub fn check(events: &[Event], initial: Option<&str>) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    for (key, ops) in by_key {
        if ops.len() > 128 {
            return Err(format!(
                "{} operations on {key:?}: this checker takes at most 128 per key",
                ops.len()
            ));
        }
        let mut search = Search {
            ops: &ops,
            tried: HashSet::new(),
        };
        let all = if ops.len() == 128 {
            u128::MAX
        } else {
            (1u128 << ops.len()) - 1
        };
        if !search.from(all, initial.map(str::to_string)) {
            return Err(format!(
                "the {} operations on {key:?} have no linearization; {}",
                ops.len(),
                first_broken(&ops, initial)
            ));
        }
    }
    Ok(())
}

/// The shortest prefix of `ops` (by call time) with no linearization, shown from a few
/// operations before its last one: where to look. (A hint only: a read in a prefix may
/// have returned a value written by an operation called after it.)
fn first_broken(ops: &[&Event], initial: Option<&str>) -> String {
    let mut sorted: Vec<&Event> = ops.to_vec();
    sorted.sort_by_key(|e| e.called);
    for n in 1..=sorted.len() {
        let prefix = &sorted[..n];
        let mut search = Search {
            ops: prefix,
            tried: HashSet::new(),
        };
        let all = if n == 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        };
        if !search.from(all, initial.map(str::to_string)) {
            let from = n.saturating_sub(8);
            return format!(
                "the first {n} by call time have none; they end: {}",
                describe(&prefix[from..])
            );
        }
    }
    format!("every prefix has one: {}", describe(ops))
}

fn describe(ops: &[&Event]) -> String {
    let mut sorted: Vec<&&Event> = ops.iter().collect();
    sorted.sort_by_key(|e| e.called);
    sorted
        .iter()
        .map(|e| {
            format!(
                "c{} {:?}({}) [{}..{}]",
                e.client,
                e.kind,
                e.value.as_deref().unwrap_or("-"),
                e.called / 1_000_000,
                e.returned
                    .map_or("?".into(), |r| (r / 1_000_000).to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Search<'a> {
    ops: &'a [&'a Event],
    /// (operations left, register value) already found to lead nowhere.
    tried: HashSet<(u128, Option<String>)>,
}

impl Search<'_> {
    /// Whether the operations in `left` can be ordered after a prefix that left the
    /// register holding `state`.
    fn from(&mut self, left: u128, state: Option<String>) -> bool {
        let members = || (0..self.ops.len()).filter(move |i| left & (1u128 << i) != 0);
        // Done when only failed writes are left: they may never have happened.
        if members().all(|i| self.ops[i].returned.is_none()) {
            return true;
        }
        if self.tried.contains(&(left, state.clone())) {
            return false;
        }
        // Whatever takes effect next was called before every operation left returned.
        let horizon = members()
            .filter_map(|i| self.ops[i].returned)
            .min()
            .unwrap_or(u64::MAX);
        let candidates: Vec<usize> = members()
            .filter(|&i| self.ops[i].called <= horizon)
            .collect();
        for i in candidates {
            let op = self.ops[i];
            let rest = left & !(1u128 << i);
            let fits = match op.kind {
                Kind::Write => self.from(rest, op.value.clone()),
                Kind::Read => op.value == state && self.from(rest, state.clone()),
            };
            if fits {
                return true;
            }
            // A failed write may also never have taken effect.
            if op.kind == Kind::Write && op.returned.is_none() && self.from(rest, state.clone()) {
                return true;
            }
        }
        self.tried.insert((left, state));
        false
    }
}
