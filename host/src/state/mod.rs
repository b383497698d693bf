//! State stores owned by the host: a [`Store`] trait with a RocksDB backend and an
//! in-memory backend, and the key layout of window stores.
//!
//! A store holds *committed* state only, plus the changelog offset it reflects (its
//! checkpoint). Uncommitted updates live in the task until the Kafka transaction that
//! carries their changelog records commits; then they are written here in one atomic
//! batch together with the new checkpoint. After a crash the store is therefore at
//! some earlier commit, and replaying the changelog from its checkpoint brings it to
//! the last one. Replays are idempotent: every changelog record is a full value.

mod claim;
mod memory;
mod rocks;

pub use claim::{DirLock, claim};
pub use memory::MemoryStore;
pub use rocks::{RocksOptions, RocksStore};

use thiserror::Error;
use weir_abi::Window;

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("rocksdb at {path}: {source}")]
    Rocks {
        /// The store directory.
        path: String,
        /// The underlying error.
        source: rocksdb::Error,
    },
    /// The directory could not be prepared.
    #[error("state directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The stored checkpoint is not 8 bytes.
    #[error("corrupt checkpoint in {0}")]
    CorruptCheckpoint(String),
    /// A test asked for this write to fail (see `faults`).
    #[error("injected store failure")]
    Injected,
}

/// One change: `Some(value)` puts, `None` deletes.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Committed key-value state of one task's store.
pub trait Store: Send {
    /// The committed value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies `changes` and sets the checkpoint, atomically.
    fn write(&mut self, changes: Vec<Change>, checkpoint: Option<i64>) -> Result<(), StoreError>;
    /// The changelog offset from which a restore must continue, if any.
    fn checkpoint(&self) -> Result<Option<i64>, StoreError>;
    /// Every key ordered in `[from, to)`.
    fn keys_between(&self, from: &[u8], to: &[u8]) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Every key, ordered.
    fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Number of keys (approximate for RocksDB).
    fn approximate_len(&self) -> u64;
    /// Deletes every key and the checkpoint: the store restores from scratch.
    fn clear(&mut self) -> Result<(), StoreError> {
        let changes = self.keys()?.into_iter().map(|k| (k, None)).collect();
        self.write(changes, None)?;
        self.forget_checkpoint()
    }
    /// Removes the checkpoint.
    fn forget_checkpoint(&mut self) -> Result<(), StoreError>;
}

/// Length of the window prefix of a window-store key.
const WINDOW_PREFIX: usize = 16;

/// `v` as 8 bytes whose byte order is numeric order (big-endian, sign flipped).
pub fn order_preserving(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`order_preserving`].
pub fn from_order_preserving(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Writes the window-store key of (`window`, `key`) into `buf`: window end, window
/// start (both big-endian, sign-flipped so byte order is numeric order), then the
/// record key. Ordering by end first makes "every window that ended before t" one
/// range.
pub fn window_key(buf: &mut Vec<u8>, window: Window, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&order_preserving(window.end));
    buf.extend_from_slice(&order_preserving(window.start));
    buf.extend_from_slice(key);
}

/// The first window-store key of windows ending at or after `end`.
pub fn window_end_bound(end: i64) -> Vec<u8> {
    order_preserving(end).to_vec()
}

/// Splits a window-store key into its window and record key.
pub fn split_window_key(bytes: &[u8]) -> Option<(Window, &[u8])> {
    if bytes.len() < WINDOW_PREFIX {
        return None;
    }
    let end = from_order_preserving(bytes[0..8].try_into().ok()?);
    let start = from_order_preserving(bytes[8..16].try_into().ok()?);
    Some((Window { start, end }, &bytes[WINDOW_PREFIX..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn window_keys_round_trip_and_order_by_end(
            a in (any::<i64>(), any::<i64>(), proptest::collection::vec(any::<u8>(), 0..8)),
            b in (any::<i64>(), any::<i64>(), proptest::collection::vec(any::<u8>(), 0..8)),
        ) {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            let wa = Window { start: a.0, end: a.1 };
            let wb = Window { start: b.0, end: b.1 };
            window_key(&mut ka, wa, &a.2);
            window_key(&mut kb, wb, &b.2);
            prop_assert_eq!(split_window_key(&ka), Some((wa, a.2.as_slice())));
            if wa.end < wb.end {
                prop_assert!(ka < kb);
                prop_assert!(ka < window_end_bound(wb.end));
            }
            prop_assert!(window_end_bound(wa.end) <= ka);
        }
    }

    /// Both backends must behave the same.
    pub(crate) fn exercise(store: &mut dyn Store) {
        assert_eq!(store.checkpoint().unwrap(), None);
        let mut k1 = Vec::new();
        window_key(&mut k1, Window { start: 0, end: 5 }, b"a");
        let mut k2 = Vec::new();
        window_key(&mut k2, Window { start: 5, end: 10 }, b"a");
        store.write(vec![(k1.clone(), Some(b"one".to_vec())), (k2.clone(), Some(b"two".to_vec()))], Some(7)).unwrap();
        assert_eq!(store.get(&k1).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.checkpoint().unwrap(), Some(7));
        assert_eq!(store.keys_between(&[], &window_end_bound(10)).unwrap(), vec![k1.clone()]);
        assert_eq!(store.keys().unwrap(), vec![k1.clone(), k2.clone()]);
        assert!(store.keys_between(&window_end_bound(6), &window_end_bound(10)).unwrap().is_empty());
        assert_eq!(
            store.keys_between(&window_end_bound(5), &window_end_bound(11)).unwrap(),
            vec![k1.clone(), k2.clone()]
        );
        store.write(vec![(k1.clone(), None)], None).unwrap();
        assert_eq!(store.get(&k1).unwrap(), None);
        assert_eq!(store.checkpoint().unwrap(), Some(7), "a write without a checkpoint keeps the old one");
        assert!(store.keys_between(&[], &window_end_bound(10)).unwrap().is_empty());
        store.clear().unwrap();
        assert!(store.keys().unwrap().is_empty());
        assert_eq!(store.checkpoint().unwrap(), None, "a cleared store restores from scratch");
    }
}
