//! The RocksDB store: one database per task and store, with the checkpoint in its
//! own column family so it is written in the same atomic batch as the data.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};

use super::{Change, Store, StoreError};

const DATA_CF: &str = "default";
const META_CF: &str = "weir_meta";
const CHECKPOINT_KEY: &[u8] = b"changelog_checkpoint";

/// Memory settings shared by every RocksDB store of a host.
#[derive(Clone)]
pub struct RocksOptions {
    cache: Cache,
    write_buffer_bytes: usize,
}

impl RocksOptions {
    /// A block cache of `cache_bytes` shared by all stores, and memtables of
    /// `write_buffer_bytes` per store.
    pub fn new(cache_bytes: usize, write_buffer_bytes: usize) -> Self {
        Self { cache: Cache::new_lru_cache(cache_bytes), write_buffer_bytes }
    }

    fn db_options(&self) -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_size(self.write_buffer_bytes);
        opts.set_max_write_buffer_number(2);
        opts.set_max_background_jobs(1);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts
    }
}

/// A task's window store in RocksDB.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl RocksStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
        let opts = options.db_options();
        let cfs = vec![
            ColumnFamilyDescriptor::new(DATA_CF, options.db_options()),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|source| StoreError::Rocks { path: path.display().to_string(), source })?;
        Ok(Self { db, path: path.to_path_buf() })
    }

    fn err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.display().to_string(), source }
    }

    fn meta(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(META_CF).ok_or_else(|| StoreError::CorruptCheckpoint(self.path.display().to_string()))
    }
}

impl Store for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(|e| self.err(e))
    }

    fn write(&mut self, changes: Vec<Change>, checkpoint: Option<i64>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in changes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        if let Some(offset) = checkpoint {
            batch.put_cf(self.meta()?, CHECKPOINT_KEY, offset.to_be_bytes());
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        match self.db.get_cf(self.meta()?, CHECKPOINT_KEY).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => {
                let raw: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::CorruptCheckpoint(self.path.display().to_string()))?;
                Ok(Some(i64::from_be_bytes(raw)))
            }
        }
    }

    fn keys_between(&self, from: &[u8], to: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        // The bound lets RocksDB stop at `to` instead of stepping over the
        // deleted keys after the range to find the next live one.
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(to.to_vec());
        for item in self.db.iterator_opt(IteratorMode::From(from, Direction::Forward), options) {
            let (key, _) = item.map_err(|e| self.err(e))?;
            if &*key >= to {
                break;
            }
            keys.push(key.into_vec());
        }
        Ok(keys)
    }

    fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.db
            .iterator(IteratorMode::Start)
            .map(|item| item.map(|(k, _)| k.into_vec()).map_err(|e| self.err(e)))
            .collect()
    }

    fn forget_checkpoint(&mut self) -> Result<(), StoreError> {
        self.db.delete_cf(self.meta()?, CHECKPOINT_KEY).map_err(|e| self.err(e))
    }

    fn approximate_len(&self) -> u64 {
        self.db.property_int_value("rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_store_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions::new(8 << 20, 4 << 20);
        {
            let mut store = RocksStore::open(dir.path(), &options).unwrap();
            super::super::tests::exercise(&mut store);
            store.write(vec![(b"\xffz".to_vec(), Some(b"kept".to_vec()))], Some(42)).unwrap();
        }
        let store = RocksStore::open(dir.path(), &options).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(42));
        assert_eq!(store.get(b"\xffz").unwrap().as_deref(), Some(&b"kept"[..]));
    }
}
