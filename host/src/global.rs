//! Global tables: topics replicated whole to every host of a pipeline, for
//! joins that look rows up by a key computed from the stream (Kafka Streams'
//! `GlobalKTable`).
//!
//! One consumer without a group reads every partition of every global topic
//! (committed records only, under exactly-once). At start it reads each topic
//! to the end it has then — from the checkpoints kept in the store, or the
//! beginning — before any task runs; afterwards the pipeline's loop applies
//! what arrives between polls. A global table's changelog is its topic: the
//! store keeps, with the rows, the offset it has read each partition to,
//! written in one batch with them. Rows are the bytes read (a null value
//! deletes; a record without a key is skipped, counted). Global tables are not
//! synchronised with the tasks' event time: a lookup sees the table as read so
//! far, as in Kafka Streams.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::kafka::health::Health;
use crate::kafka::source::Reporting;
use crate::kafka::{KafkaIoError, set_default};
use crate::state::{Change, Store, StoreError};

/// Store keys of rows start with this byte; of checkpoints with [`CHECKPOINT`].
const ROW: u8 = 1;
const CHECKPOINT: u8 = 0;
/// Changes applied per store write, at most.
const BATCH: usize = 10_000;

fn row_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(ROW);
    k.extend_from_slice(key);
    k
}

fn checkpoint_key(partition: i32) -> Vec<u8> {
    let mut k = vec![CHECKPOINT];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// One global table: its topic, its store, and how far each partition was read.
struct Table {
    topic: String,
    store: Box<dyn Store>,
    /// Per partition: the offset after the last record applied.
    next: HashMap<i32, i64>,
    /// Changes read but not written yet.
    pending: Vec<Change>,
}

impl Table {
    fn write(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut changes = std::mem::take(&mut self.pending);
        changes.extend(self.next.iter().map(|(p, o)| (checkpoint_key(*p), Some(o.to_be_bytes().to_vec()))));
        self.store.write(changes, None)
    }
}

/// A global-table failure.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaIoError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<KafkaError> for GlobalError {
    fn from(e: KafkaError) -> Self {
        GlobalError::Kafka(e.into())
    }
}

/// The global tables of one pipeline.
pub struct Globals {
    tables: Vec<Table>,
    consumer: Option<BaseConsumer<Reporting>>,
    health: Health,
    /// Records without a key, skipped.
    pub skipped: u64,
}

impl Globals {
    /// No global tables.
    pub fn none(health: Health) -> Self {
        Self { tables: Vec::new(), consumer: None, health, skipped: 0 }
    }

    /// Global tables reading `topics` into `stores` (in the same order), with
    /// clients of `base`, committed records only if `read_committed`.
    pub fn new(
        base: &ClientConfig,
        read_committed: bool,
        health: Health,
        tables: Vec<(String, Box<dyn Store>)>,
    ) -> Result<Self, GlobalError> {
        if tables.is_empty() {
            return Ok(Self::none(health));
        }
        let mut config = base.clone();
        config.set("group.id", "weir-global");
        config.set("enable.auto.commit", "false");
        config.set("enable.partition.eof", "false");
        config.set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" });
        set_default(&mut config, "fetch.queue.backoff.ms", crate::kafka::source::FETCH_QUEUE_BACKOFF_MS);
        let consumer: BaseConsumer<Reporting> = config
            .create_with_context(Reporting::new(health.clone(), "global"))
            .map_err(|e| KafkaIoError::Setup(e.to_string()))?;
        let mut loaded = Vec::with_capacity(tables.len());
        for (topic, store) in tables {
            let mut next = HashMap::new();
            for key in store.keys_between(&[CHECKPOINT], &[ROW])? {
                let (Some(p), Some(o)) = (key.get(1..5), store.get(&key)?) else { continue };
                let (Ok(p), Ok(o)) = (<[u8; 4]>::try_from(p), <[u8; 8]>::try_from(o.as_slice())) else { continue };
                next.insert(i32::from_be_bytes(p), i64::from_be_bytes(o));
            }
            loaded.push(Table { topic, store, next, pending: Vec::new() });
        }
        Ok(Self { tables: loaded, consumer: Some(consumer), health, skipped: 0 })
    }

    /// Assigns every partition of every global topic at its checkpoint and
    /// reads each to the end it has now. Returns the records read.
    pub fn bootstrap(&mut self, timeout: Duration) -> Result<u64, GlobalError> {
        let Some(consumer) = &self.consumer else { return Ok(0) };
        let mut tpl = TopicPartitionList::new();
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        for table in &self.tables {
            let metadata = consumer.fetch_metadata(Some(&table.topic), timeout)?;
            let partitions: Vec<i32> =
                metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
            if partitions.is_empty() {
                return Err(KafkaIoError::Topic {
                    topic: table.topic.clone(),
                    reason: "the global table's topic has no partitions (does it exist?)".into(),
                }
                .into());
            }
            for p in partitions {
                let from = table.next.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                tpl.add_partition_offset(&table.topic, p, from)?;
                let (low, high) = consumer.fetch_watermarks(&table.topic, p, timeout)?;
                // Nothing to read where every record is gone (or none came).
                if low < high && table.next.get(&p).is_none_or(|at| *at < high) {
                    ends.insert((table.topic.clone(), p), high);
                }
            }
        }
        consumer.assign(&tpl)?;
        let started = Instant::now();
        let mut read = 0u64;
        loop {
            // The consumer's position passes transaction markers and aborted
            // records, which no message shows.
            let positions = match &self.consumer {
                Some(consumer) => consumer.position()?,
                None => TopicPartitionList::new(),
            };
            let behind = ends.iter().any(|((topic, p), end)| {
                let at = self.tables.iter().find(|t| &t.topic == topic).and_then(|t| t.next.get(p).copied());
                let position = positions.find_partition(topic, *p).and_then(|e| e.offset().to_raw());
                at.max(position).unwrap_or(0) < *end
            });
            if !behind {
                break;
            }
            if started.elapsed() > timeout.max(Duration::from_secs(300)) {
                return Err(KafkaIoError::Setup("global tables did not finish loading in time".into()).into());
            }
            read += self.poll(Duration::from_millis(100))?;
        }
        for table in &mut self.tables {
            table.write()?;
        }
        tracing::info!(
            pipeline = %self.health.pipeline(),
            records = read,
            took_ms = started.elapsed().as_millis() as u64,
            "global tables loaded"
        );
        Ok(read)
    }

    /// Applies what has arrived, waiting at most `wait` for the first record.
    /// Returns the records applied.
    pub fn poll(&mut self, wait: Duration) -> Result<u64, GlobalError> {
        let Some(consumer) = &self.consumer else { return Ok(0) };
        let mut applied = 0u64;
        let mut wait = wait;
        while let Some(message) = consumer.poll(wait) {
            wait = Duration::ZERO;
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    self.health.note_error("global", &e.to_string());
                    break;
                }
            };
            let Some(table) = self.tables.iter_mut().find(|t| t.topic == message.topic()) else { continue };
            table.next.insert(message.partition(), message.offset() + 1);
            match message.key() {
                Some(key) => table.pending.push((row_key(key), message.payload().map(<[u8]>::to_vec))),
                None => self.skipped += 1,
            }
            applied += 1;
            if table.pending.len() >= BATCH {
                table.write()?;
            }
            if applied >= BATCH as u64 {
                break;
            }
        }
        for table in &mut self.tables {
            table.write()?;
        }
        Ok(applied)
    }

    /// Global tables over `stores` without a consumer: what tests fill with
    /// [`Globals::apply`].
    pub fn of_stores(health: Health, stores: Vec<(String, Box<dyn Store>)>) -> Self {
        let tables = stores
            .into_iter()
            .map(|(topic, store)| Table { topic, store, next: HashMap::new(), pending: Vec::new() })
            .collect();
        Self { tables, consumer: None, health, skipped: 0 }
    }

    /// Sets (or, with `None`, deletes) the row of `key` in global table `table`
    /// at once, as a record of its topic would.
    pub fn apply(&mut self, table: usize, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        match self.tables.get_mut(table) {
            Some(t) => t.store.write(vec![(row_key(key), value.map(<[u8]>::to_vec))], None),
            None => Ok(()),
        }
    }

    /// The row of `key` in global table `table`.
    pub fn get(&self, table: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.tables.get(table) {
            Some(t) => t.store.get(&row_key(key)),
            None => Ok(None),
        }
    }
}

impl Drop for Globals {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let _ = std::thread::Builder::new().name("weir-close".into()).spawn(move || drop(consumer));
        }
    }
}
