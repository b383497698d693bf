//! The in-memory store: a `BTreeMap`, rebuilt from the changelog on every start.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Change, Store, StoreError};

/// Committed state held in memory only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoint: Option<i64>,
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.get(key).cloned())
    }

    fn write(&mut self, changes: Vec<Change>, checkpoint: Option<i64>) -> Result<(), StoreError> {
        for (key, value) in changes {
            match value {
                Some(value) => self.map.insert(key, value),
                None => self.map.remove(&key),
            };
        }
        if checkpoint.is_some() {
            self.checkpoint = checkpoint;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.checkpoint)
    }

    fn keys_between(&self, from: &[u8], to: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self.map.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to))).map(|(k, _)| k.clone()).collect())
    }

    fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.map.keys().cloned().collect())
    }

    fn approximate_len(&self) -> u64 {
        self.map.len() as u64
    }

    fn forget_checkpoint(&mut self) -> Result<(), StoreError> {
        self.checkpoint = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn behaves_like_a_store() {
        super::super::tests::exercise(&mut super::MemoryStore::default());
    }
}
