//! Change versions: for each bucket and campaign, the Raft index of the last apply that
//! changed it, and the keys ordered by it, so that "what changed since index `v`" costs what
//! changed, not a scan of everything (region sync's deltas, [`crate::region`]).
//!
//! In memory only, derived from applies: nothing of it reaches a row, an entry or a reply.
//! Versions are Raft indexes, the same on every replica. A ledger loaded from rows (a restart,
//! a snapshot) knows no versions below the index it was loaded at
//! ([`super::Ledger::loaded_at`]): a reader that last looked at an older one takes everything.

use std::collections::{BTreeMap, BTreeSet};

/// Keys by the index they last changed at.
#[derive(Clone, Debug)]
pub struct Versions<K: Ord + Clone> {
    of: BTreeMap<K, u64>,
    by: BTreeMap<u64, BTreeSet<K>>,
}

impl<K: Ord + Clone> Default for Versions<K> {
    fn default() -> Self {
        Versions {
            of: BTreeMap::new(),
            by: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Versions<K> {
    /// `key` changed at `index`.
    pub fn touch(&mut self, key: &K, index: u64) {
        if let Some(old) = self.of.insert(key.clone(), index) {
            if old == index {
                return;
            }
            if let Some(set) = self.by.get_mut(&old) {
                set.remove(key);
                if set.is_empty() {
                    self.by.remove(&old);
                }
            }
        }
        self.by.entry(index).or_default().insert(key.clone());
    }

    /// `key` is gone.
    pub fn forget(&mut self, key: &K) {
        if let Some(old) = self.of.remove(key)
            && let Some(set) = self.by.get_mut(&old)
        {
            set.remove(key);
            if set.is_empty() {
                self.by.remove(&old);
            }
        }
    }

    /// The keys changed at an index above `index`, oldest change first.
    pub fn since(&self, index: u64) -> impl Iterator<Item = &K> {
        self.by
            .range(index.saturating_add(1)..)
            .flat_map(|(_, set)| set.iter())
    }

    /// How many keys changed at an index above `index`.
    pub fn count_since(&self, index: u64) -> usize {
        self.by
            .range(index.saturating_add(1)..)
            .map(|(_, s)| s.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_lists_each_key_once_at_its_last_change() {
        let mut v: Versions<&str> = Versions::default();
        v.touch(&"a", 3);
        v.touch(&"b", 5);
        v.touch(&"a", 7);
        v.touch(&"c", 7);
        assert_eq!(v.since(0).copied().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(v.since(5).copied().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(v.since(7).count(), 0);
        assert_eq!(v.count_since(4), 3);
        v.forget(&"a");
        assert_eq!(v.since(0).copied().collect::<Vec<_>>(), ["b", "c"]);
        v.touch(&"b", 5);
        assert_eq!(v.by.len(), 2, "no empty sets are left behind");
        v.forget(&"c");
        v.forget(&"b");
        assert!(v.by.is_empty() && v.of.is_empty());
    }
}
