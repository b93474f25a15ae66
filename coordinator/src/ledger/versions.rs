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
    /// `(index, Some(key))` for every key: one ordered set, not a set per index (100,000
    /// campaigns created one by one would each have had a set of one). `None` sorts first, so
    /// `(v, None)` is where index `v` starts.
    by: BTreeSet<(u64, Option<K>)>,
}

impl<K: Ord + Clone> Default for Versions<K> {
    fn default() -> Self {
        Versions {
            of: BTreeMap::new(),
            by: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> Versions<K> {
    /// `key` changed at `index`.
    pub fn touch(&mut self, key: &K, index: u64) {
        match self.of.get_mut(key) {
            Some(v) if *v == index => {}
            Some(v) => {
                let old = std::mem::replace(v, index);
                let entry = (old, Some(key.clone()));
                self.by.remove(&entry);
                self.by.insert((index, entry.1));
            }
            None => {
                self.of.insert(key.clone(), index);
                self.by.insert((index, Some(key.clone())));
            }
        }
    }

    /// `key` is gone.
    pub fn forget(&mut self, key: &K) {
        if let Some(old) = self.of.remove(key) {
            self.by.remove(&(old, Some(key.clone())));
        }
    }

    /// The keys changed at an index above `index`, oldest change first.
    pub fn since(&self, index: u64) -> impl Iterator<Item = &K> {
        self.by
            .range((index.saturating_add(1), None)..)
            .filter_map(|(_, k)| k.as_ref())
    }

    /// How many keys changed at an index above `index`.
    pub fn count_since(&self, index: u64) -> usize {
        self.since(index).count()
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
        assert_eq!(v.by.len(), 2, "one entry per key");
        v.forget(&"c");
        v.forget(&"b");
        assert!(v.by.is_empty() && v.of.is_empty());
    }
}
