//! The stores a task keeps beside its aggregation's (a join's sides): each a
//! committed [`Store`] with the task's uncommitted changes over it in memory,
//! read through, handed to the changelog at a commit and written to the store
//! once the transaction carrying them has committed.

use std::collections::BTreeMap;

use crate::state::{Change, Store, StoreError};

/// A store with uncommitted changes over it.
pub(super) struct SideStore {
    store: Box<dyn Store>,
    /// Uncommitted puts (`Some`) and deletes (`None`), ordered for range reads.
    dirty: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values in `dirty`.
    bytes: usize,
}

impl SideStore {
    pub(super) fn new(store: Box<dyn Store>) -> Self {
        Self { store, dirty: BTreeMap::new(), bytes: 0 }
    }

    /// The current value of `key`: uncommitted, or committed.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.dirty.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(key),
        }
    }

    /// Sets `key` to `value` (`None` deletes it) until the next commit.
    pub(super) fn put(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        self.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        if let Some(old) = self.dirty.insert(key.to_vec(), value) {
            self.bytes -= key.len() + old.as_ref().map_or(0, Vec::len);
        }
    }

    /// Every current key in `[from, to)`, ordered.
    pub(super) fn keys_between(&self, from: &[u8], to: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut keys: BTreeMap<Vec<u8>, bool> =
            self.store.keys_between(from, to)?.into_iter().map(|k| (k, true)).collect();
        for (k, v) in self.dirty.range(from.to_vec()..to.to_vec()) {
            keys.insert(k.clone(), v.is_some());
        }
        Ok(keys.into_iter().filter(|(_, live)| *live).map(|(k, _)| k).collect())
    }

    /// Bytes of uncommitted changes.
    pub(super) fn uncommitted_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether anything changed since the last commit.
    pub(super) fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The changes of this commit, leaving them readable until it completes.
    pub(super) fn changes(&self) -> Vec<Change> {
        self.dirty.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The commit carrying `changes` went through: write them with the
    /// changelog checkpoint `next`.
    pub(super) fn complete(&mut self, changes: Vec<Change>, next: Option<i64>) -> Result<(), StoreError> {
        self.dirty.clear();
        self.bytes = 0;
        if changes.is_empty() && next.is_none() {
            return Ok(());
        }
        self.store.write(changes, next)
    }

    /// Forgets what was not committed.
    pub(super) fn rewind(&mut self) {
        self.dirty.clear();
        self.bytes = 0;
    }

    /// The committed store.
    /// The store's checkpoint (its next changelog offset), if it has one.
    pub(super) fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        self.store.checkpoint()
    }

    pub(super) fn into_store(self) -> Box<dyn Store> {
        self.store
    }
}
