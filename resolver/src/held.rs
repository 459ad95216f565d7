//! The keys of the blocking index the store holds, kept in memory as 32-bit fingerprints.
//!
//! Most of a new record's blocking keys name blocks no record has been filed under yet, and each
//! of those reads was a RocksDB lookup that found nothing (a tenth of the resolver's thread on
//! FEBRL 4). With the fingerprints in memory, a key whose fingerprint is absent is known to be
//! absent without a lookup. A present fingerprint proves nothing (the key may have been emptied
//! since, or share its fingerprint with another): that key is read from the store as before.
//!
//! Nothing the store holds may ever be missing, so:
//! - every put is noted before its batch is written;
//! - the fingerprints already stored are gathered by a scan of the column family, started on a
//!   thread of its own by the first read that wants them (a command that never reads a block
//!   never scans). Puts noted while it runs are kept aside and added when it ends.
//!
//! Until the scan ends, and for good once the set would pass its budget (`[resolver.storage]
//! blocking_keys_in_memory`), every read goes to the store.

use crate::overlay::ById;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Fingerprints of the keys a column family holds.
pub struct HeldKeys {
    state: RwLock<State>,
    /// Seeded at random per process: keys are tenant-supplied.
    hasher: crate::overlay::ByBytes,
    budget: usize,
}

enum State {
    /// No scan started yet, or one running: the fingerprints of the puts noted since the store
    /// opened, to add to what it finds.
    Gathering {
        pending: Vec<u32>,
        scanning: bool,
    },
    Ready(HashSet<u32, ById>),
    /// Over budget, or the scan failed: every read goes to the store.
    Off,
}

/// What [`HeldKeys::may_hold`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The store does not hold the key.
    Absent,
    /// The store may hold it: read it.
    Maybe,
    /// The store may hold it, and no scan has been started: the caller starts one
    /// ([`HeldKeys::scan_started`]) and reads the key.
    MaybeStartScan,
}

impl HeldKeys {
    /// Holds up to `budget` fingerprints; 0: none, every read goes to the store.
    pub fn new(budget: usize) -> Self {
        let state = if budget == 0 {
            State::Off
        } else {
            State::Gathering {
                pending: Vec::new(),
                scanning: false,
            }
        };
        Self {
            state: RwLock::new(state),
            hasher: Default::default(),
            budget,
        }
    }

    /// The fingerprint the set keeps for `key`.
    pub fn fingerprint(&self, key: &[u8]) -> u32 {
        // The high half: hashbrown takes its control bytes from the top of the hash it computes
        // over the fingerprint, not from the fingerprint itself, so any half serves.
        (self.hasher.hash_one(key) >> 32) as u32
    }

    /// Whether the store may hold `key`.
    pub fn may_hold(&self, key: &[u8]) -> Answer {
        match &*self.read() {
            State::Ready(set) => {
                if set.contains(&self.fingerprint(key)) {
                    Answer::Maybe
                } else {
                    Answer::Absent
                }
            }
            State::Gathering {
                scanning: false, ..
            } => Answer::MaybeStartScan,
            State::Gathering { .. } | State::Off => Answer::Maybe,
        }
    }

    /// Notes keys about to be written to the store: call it before the write.
    pub fn note<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        if matches!(&*self.read(), State::Off) {
            return;
        }
        let prints: Vec<u32> = keys.map(|k| self.fingerprint(k)).collect();
        if prints.is_empty() {
            return;
        }
        let mut state = self.write();
        let over = match &mut *state {
            State::Ready(set) => {
                set.extend(prints);
                set.len() > self.budget
            }
            State::Gathering { pending, .. } => {
                pending.extend(prints);
                // A block is written again each time a record is filed under it.
                if pending.len() > self.budget {
                    pending.sort_unstable();
                    pending.dedup();
                }
                pending.len() > self.budget
            }
            State::Off => false,
        };
        if over {
            *state = State::Off;
        }
    }

    /// Marks the scan started; false if one already was (or the set is off or ready).
    pub fn scan_started(&self) -> bool {
        match &mut *self.write() {
            State::Gathering { scanning, .. } if !*scanning => {
                *scanning = true;
                true
            }
            _ => false,
        }
    }

    /// The budget a scan may gather before it gives up.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The scan's result: the fingerprints of every key the store held when it began (`None`:
    /// it failed, or passed the budget). The puts noted meanwhile are added to them.
    pub fn scanned(&self, found: Option<HashSet<u32, ById>>) {
        let mut state = self.write();
        let next = match (std::mem::replace(&mut *state, State::Off), found) {
            (State::Gathering { pending, .. }, Some(mut set)) => {
                set.extend(pending);
                if set.len() > self.budget {
                    State::Off
                } else {
                    State::Ready(set)
                }
            }
            _ => State::Off,
        };
        *state = next;
    }

    /// Whether reads of absent keys are answered in memory now.
    pub fn is_ready(&self) -> bool {
        matches!(&*self.read(), State::Ready(_))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<'a>(names: &'a [&'static str]) -> impl Iterator<Item = &'static [u8]> + 'a {
        names.iter().map(|n| n.as_bytes())
    }

    fn set_of(held: &HeldKeys, names: &[&str]) -> HashSet<u32, ById> {
        names
            .iter()
            .map(|n| held.fingerprint(n.as_bytes()))
            .collect()
    }

    #[test]
    fn absent_only_once_the_scan_has_ended_and_never_for_a_held_key() {
        let held = HeldKeys::new(100);
        assert_eq!(held.may_hold(b"a"), Answer::MaybeStartScan);
        assert!(held.scan_started());
        assert!(!held.scan_started(), "one scan");
        // Puts noted while the scan runs are not lost when it ends.
        held.note(keys(&["noted"]));
        assert_eq!(held.may_hold(b"never"), Answer::Maybe);
        held.scanned(Some(set_of(&held, &["stored"])));
        assert!(held.is_ready());
        for key in ["stored", "noted"] {
            assert_eq!(held.may_hold(key.as_bytes()), Answer::Maybe, "{key}");
        }
        assert_eq!(held.may_hold(b"never"), Answer::Absent);
        held.note(keys(&["later"]));
        assert_eq!(held.may_hold(b"later"), Answer::Maybe);
        assert!(!held.scan_started());
    }

    #[test]
    fn past_its_budget_every_read_goes_to_the_store() {
        // While ready.
        let held = HeldKeys::new(3);
        held.scan_started();
        held.scanned(Some(set_of(&held, &["a", "b"])));
        assert_eq!(held.may_hold(b"z"), Answer::Absent);
        held.note(keys(&["c", "d"]));
        assert!(!held.is_ready());
        assert_eq!(held.may_hold(b"z"), Answer::Maybe);
        // While gathering, or found by the scan.
        let held = HeldKeys::new(3);
        held.note(keys(&["a", "b", "c", "d"]));
        assert_eq!(held.may_hold(b"z"), Answer::Maybe);
        assert!(!held.scan_started());
        let held = HeldKeys::new(3);
        held.scan_started();
        held.note(keys(&["a", "b"]));
        held.scanned(Some(set_of(&held, &["c", "d"])));
        assert_eq!(held.may_hold(b"z"), Answer::Maybe);
        // A failed scan.
        let held = HeldKeys::new(3);
        held.scan_started();
        held.scanned(None);
        assert_eq!(held.may_hold(b"z"), Answer::Maybe);
        // None at all.
        assert_eq!(HeldKeys::new(0).may_hold(b"z"), Answer::Maybe);
    }
}
