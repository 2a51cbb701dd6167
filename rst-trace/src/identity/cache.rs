//! The resolver's bounded cache.
//!
//! Two generations instead of a true LRU: inserts go to the young map; when it is full the old
//! map is dropped and the young one becomes old. A hit in the old map moves the entry back to
//! the young one, so anything used within the last generation survives. At most `capacity`
//! entries in all, no per-hit bookkeeping, and no crate to add.

use std::{collections::HashMap, mem, sync::Arc};

use super::Identity;

/// A cache key: the cgroup id, and the pid when the answer depended on it (cgroup v1
/// hierarchies read from /proc/PID/cgroup, which the cgroup v2 id does not determine).
pub type Key = (u64, Option<u32>);

pub struct Cache {
    /// Entries per generation: half the total bound.
    generation: usize,
    young: HashMap<Key, Arc<Identity>>,
    old: HashMap<Key, Arc<Identity>>,
}

impl Cache {
    /// A cache of at most `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            generation: (capacity / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    /// The identity of `(cgroup_id, pid)`: an answer for the cgroup alone, else one for
    /// this pid in it.
    pub fn get(&mut self, cgroup_id: u64, pid: u32) -> Option<Arc<Identity>> {
        for key in [(cgroup_id, None), (cgroup_id, Some(pid))] {
            if let Some(hit) = self.young.get(&key) {
                return Some(Arc::clone(hit));
            }
            if let Some(hit) = self.old.remove(&key) {
                self.insert(key, Arc::clone(&hit));
                return Some(hit);
            }
        }
        None
    }

    pub fn insert(&mut self, key: Key, identity: Arc<Identity>) {
        if self.young.len() >= self.generation && !self.young.contains_key(&key) {
            self.old = mem::take(&mut self.young);
        }
        self.young.insert(key, identity);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(n: u64) -> Arc<Identity> {
        Arc::new(Identity {
            cgroup_path: Some(format!("/{n}")),
            ..Identity::default()
        })
    }

    #[test]
    fn bounded() {
        let mut c = Cache::new(8);
        c.insert((5000, None), some(5000));
        for n in 0..1000 {
            c.insert((n, None), some(n));
            // The entry kept warm: read after every insert, it must never be evicted.
            assert!(c.len() <= 8, "{} entries", c.len());
            assert!(c.get(5000, 1).is_some());
        }
        // The newest survive, the oldest are gone.
        assert!(c.get(999, 1).is_some());
        assert!(c.get(0, 1).is_none());
    }

    #[test]
    fn per_pid_entries() {
        let mut c = Cache::new(8);
        c.insert((7, Some(100)), some(7));
        assert!(c.get(7, 100).is_some());
        // Another pid in the same cgroup: its v1 cgroups may differ.
        assert!(c.get(7, 101).is_none());
        c.insert((7, None), some(8));
        assert_eq!(c.get(7, 101).unwrap().cgroup_path.as_deref(), Some("/8"));
    }
}
