//! Restores task stores from their changelog partitions (or, for a table read
//! from a topic, that topic up to the task's committed offset) without
//! blocking the poll loop: one consumer reads every partition being restored
//! (of every store), and the pipeline drains it a little on each turn of its
//! loop.
//!
//! A restore reads from the store's checkpoint up to the end the partition had
//! when the task's committed offsets were known, counting records of
//! transactions still open then. Under exactly-once it reads committed records
//! only, so while another producer's transaction is open on the partition (a host
//! that died or hung) the last stable offset stays behind that end and the
//! restore waits — saying so in the log — until the transaction ends (at most
//! that producer's `transaction.timeout.ms`). Reading only to the last stable
//! offset would miss records later transactions committed after the open one,
//! while the committed input offsets say they were processed.
//!
//! A restorer also keeps standby copies warm: a tail ([`Restorer::tail`]) reads
//! a changelog partition without end, writing what arrives on every poll.
//!
//! A restorer knows the topics it may read from its start (`KnownTopics`):
//! librdkafka looks up the leader of a topic first met in an assignment only at
//! its once-a-second topic scan, so a restore on a restorer idle until then
//! waited up to a second before its first fetch (a promoted standby's last
//! step over an aborted transaction took 760 ms that way).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::health::Health;
use super::source::Reporting;
use super::{KafkaIoError, set_default};
use crate::state::Change;
use crate::task::TaskId;

/// Changes applied to a store per write batch, at most.
const CHUNK_RECORDS: usize = 10_000;
/// Bytes of changes applied to a store per write batch, at most.
const CHUNK_BYTES: usize = 8 << 20;
/// How often a restore that waits is mentioned in the log.
const NOTE_EVERY: Duration = Duration::from_secs(5);

/// A changelog partition being restored.
struct Reading {
    task: TaskId,
    /// Which of the task's stores.
    store: usize,
    end: i64,
    chunk: Vec<Change>,
    chunk_bytes: usize,
    /// Offset after the last record read into `chunk` or written.
    next: Option<i64>,
    records: u64,
    /// `records` when progress was last looked at.
    seen: u64,
    /// Polls that found records of it, and when its first record came.
    polls: u32,
    first_at: Option<Instant>,
    started: Instant,
    progressed: Instant,
    noted: Instant,
}

impl Reading {
    /// How far it has read: the consumer's position (`positions`, past commit
    /// markers and aborted records too) or after the last record read.
    fn reached(&self, positions: Option<&TopicPartitionList>, topic: &str, partition: i32) -> Option<i64> {
        let position = positions
            .and_then(|p| p.find_partition(topic, partition))
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0);
        position.into_iter().chain(self.next).max()
    }
}

/// A restore that finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The task whose store it restored.
    pub task: TaskId,
    /// Which of its stores.
    pub store: usize,
    /// Records applied.
    pub records: u64,
    /// How long it took.
    pub took: Duration,
}

/// Application handles of the topics a restorer may read: librdkafka asks for
/// their leaders at once (and keeps them up to date), so an assignment finds the
/// leader known and fetches at once.
struct KnownTopics(Vec<NonNull<rdkafka::bindings::rd_kafka_topic_t>>);

// SAFETY: librdkafka's topic handles may be used and destroyed from any thread.
#[allow(unsafe_code)]
unsafe impl Send for KnownTopics {}

impl KnownTopics {
    fn new(consumer: &BaseConsumer<Reporting>, topics: &[String]) -> Self {
        let mut handles = Vec::with_capacity(topics.len());
        for topic in topics {
            let Ok(name) = CString::new(topic.as_str()) else { continue };
            // SAFETY: the client outlives the handle (released before the
            // client is dropped, see `Restorer`'s drop); librdkafka copies the
            // name; a null configuration takes the client's defaults.
            #[allow(unsafe_code)]
            let handle = unsafe {
                rdkafka::bindings::rd_kafka_topic_new(
                    consumer.client().native_ptr(),
                    name.as_ptr(),
                    std::ptr::null_mut(),
                )
            };
            handles.extend(NonNull::new(handle));
        }
        Self(handles)
    }

    fn release(&mut self) {
        for handle in self.0.drain(..) {
            // SAFETY: each handle came from `rd_kafka_topic_new` and is
            // destroyed once, while its client is alive.
            #[allow(unsafe_code)]
            unsafe {
                rdkafka::bindings::rd_kafka_topic_destroy(handle.as_ptr());
            }
        }
    }
}

/// The restore consumer of one pipeline and the partitions it is reading.
pub struct Restorer {
    /// Always `Some` until dropped.
    consumer: Option<BaseConsumer<Reporting>>,
    known: KnownTopics,
    health: Health,
    /// By changelog topic and partition (= the task's input partition).
    reading: BTreeMap<(String, i32), Reading>,
    /// How long a poll waits for its first record.
    first_wait: Duration,
}

impl Restorer {
    /// A restorer of `topics` (changelogs, and topics tables are restored
    /// from), reading committed records only if `read_committed`.
    pub fn new(
        base: &ClientConfig,
        read_committed: bool,
        health: Health,
        topics: &[String],
    ) -> Result<Self, KafkaIoError> {
        let mut config = base.clone();
        // A group id it never joins: assigned partitions, no membership.
        config.set("group.id", "weir-restore");
        config.set("enable.auto.commit", "false");
        config.set("enable.partition.eof", "false");
        config.set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" });
        set_default(&mut config, "fetch.queue.backoff.ms", super::source::FETCH_QUEUE_BACKOFF_MS);
        // A restore is done when its position reaches the end, often only a
        // commit marker away: the broker's long poll (500 ms by default) would
        // hold that last step back, and a partition assigned meanwhile waits
        // for the poll in flight. A restore reads only while tasks wait for it.
        set_default(&mut config, "fetch.wait.max.ms", "25");
        let consumer: BaseConsumer<Reporting> = config
            .create_with_context(Reporting::new(health.clone(), "restore"))
            .map_err(|e| KafkaIoError::Setup(e.to_string()))?;
        let known = KnownTopics::new(&consumer, topics);
        Ok(Self {
            consumer: Some(consumer),
            known,
            health,
            reading: BTreeMap::new(),
            first_wait: Duration::from_millis(10),
        })
    }

    /// A restorer whose polls never wait for records (standby tails, polled
    /// between the pipeline's own work).
    pub fn impatient(mut self) -> Self {
        self.first_wait = Duration::ZERO;
        self
    }

    fn consumer(&self) -> Result<&BaseConsumer<Reporting>, KafkaIoError> {
        self.consumer.as_ref().ok_or_else(|| KafkaIoError::Setup("restore consumer gone".into()))
    }

    /// Whether nothing is being restored.
    pub fn is_idle(&self) -> bool {
        self.reading.is_empty()
    }

    /// Starts reading `task`'s partition of `changelog` (of its store number
    /// `store`) at `from` until every committed record before `end` was read.
    /// Returns false if there is nothing to read.
    pub fn start(
        &mut self,
        task: TaskId,
        store: usize,
        changelog: &str,
        from: i64,
        end: i64,
    ) -> Result<bool, KafkaIoError> {
        if from >= end {
            return Ok(false);
        }
        self.read(task, store, changelog, Offset::Offset(from), end)?;
        Ok(true)
    }

    /// Starts reading `task`'s partition of `changelog` (of its store number
    /// `store`) at `from` (its start if `None`) without end: what arrives is
    /// written on every poll.
    pub fn tail(&mut self, task: TaskId, store: usize, changelog: &str, from: Option<i64>) -> Result<(), KafkaIoError> {
        self.read(task, store, changelog, from.map_or(Offset::Beginning, Offset::Offset), i64::MAX)
    }

    fn read(
        &mut self,
        task: TaskId,
        store: usize,
        changelog: &str,
        from: Offset,
        end: i64,
    ) -> Result<(), KafkaIoError> {
        let partition = task.partition;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(changelog, partition, from)?;
        self.consumer()?.incremental_assign(&tpl)?;
        let now = Instant::now();
        self.reading.insert(
            (changelog.to_owned(), partition),
            Reading {
                task,
                store,
                end,
                chunk: Vec::new(),
                chunk_bytes: 0,
                next: None,
                records: 0,
                seen: 0,
                polls: 0,
                first_at: None,
                started: now,
                progressed: now,
                noted: now,
            },
        );
        Ok(())
    }

    /// Where each of `task`'s readings has read to, by store: the consumer's
    /// position (past commit markers too) or after the last record read.
    /// Between polls a tail has written everything before it.
    pub fn positions(&self, task: TaskId) -> BTreeMap<usize, i64> {
        let consumer_positions = self.consumer.as_ref().and_then(|c| c.position().ok());
        let mut at = BTreeMap::new();
        for ((topic, partition), r) in self.reading.iter().filter(|(_, r)| r.task == task) {
            if let Some(p) = r.reached(consumer_positions.as_ref(), topic, *partition) {
                at.insert(r.store, p);
            }
        }
        at
    }

    /// How far `task`'s reading is: records read, and records left (to the
    /// end it was given, or for a tail to the end the consumer last heard of).
    pub fn progress(&self, task: TaskId) -> (u64, Option<i64>) {
        let (mut records, mut left) = (0, Some(0i64));
        for ((topic, partition), r) in self.reading.iter().filter(|(_, r)| r.task == task) {
            records += r.records;
            let end = if r.end == i64::MAX {
                self.consumer.as_ref().and_then(|c| super::source::high_watermark(c, topic, *partition))
            } else {
                Some(r.end)
            };
            left = match (left, end, r.next) {
                (Some(l), Some(end), Some(next)) => Some(l + (end - next).max(0)),
                _ => None,
            };
        }
        (records, left)
    }

    /// Stops restoring `task` (every store of it); what was not written yet is
    /// dropped (each store's checkpoint says where to go on next time).
    pub fn cancel(&mut self, task: TaskId) {
        let readings: Vec<(String, i32)> =
            self.reading.iter().filter(|(_, r)| r.task == task).map(|(at, _)| at.clone()).collect();
        if readings.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for at in readings {
            tpl.add_partition(&at.0, at.1);
            self.reading.remove(&at);
        }
        if let Err(e) = self.consumer().and_then(|c| c.incremental_unassign(&tpl).map_err(KafkaIoError::from)) {
            tracing::warn!(pipeline = %self.health.pipeline(), %task, error = %e, "unassigning a restore");
        }
    }

    /// Reads what has arrived for at most `budget`, handing changes to `apply`
    /// (task, store, changes, the changelog offset after them) in batches, and
    /// returns the restores that are now complete (already unassigned).
    pub fn poll(
        &mut self,
        budget: Duration,
        mut apply: impl FnMut(TaskId, usize, Vec<Change>, i64) -> Result<(), KafkaIoError>,
    ) -> Result<Vec<Restored>, KafkaIoError> {
        if self.reading.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + budget;
        let mut first = true;
        let Some(consumer) = self.consumer.as_ref() else { return Ok(Vec::new()) };
        // Records come in runs of one partition: its key is made once a run.
        let mut at: (String, i32) = (String::new(), -1);
        let mut polled = 0u32;
        loop {
            // The clock is read every few records: it costs as much as a record.
            if polled.is_multiple_of(64) && Instant::now() >= deadline {
                break;
            }
            polled = polled.wrapping_add(1);
            // Wait a little for the first record, not at all afterwards.
            let wait = if first { budget.min(self.first_wait) } else { Duration::ZERO };
            first = false;
            match consumer.poll(wait) {
                None => break,
                Some(Ok(msg)) => {
                    if at.1 != msg.partition() || at.0 != msg.topic() {
                        at = (msg.topic().to_owned(), msg.partition());
                    }
                    let Some(reading) = self.reading.get_mut(&at) else { continue };
                    // What lies beyond the end (in a source topic restoring a
                    // table: records the task has not processed yet) is not state.
                    if msg.offset() >= reading.end {
                        continue;
                    }
                    if reading.records == 0 {
                        reading.first_at = Some(Instant::now());
                    }
                    reading.records += 1;
                    reading.next = Some(msg.offset() + 1);
                    if let Some(key) = msg.key() {
                        let value = msg.payload().map(<[u8]>::to_vec);
                        reading.chunk_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
                        reading.chunk.push((key.to_vec(), value));
                    }
                    if reading.chunk.len() >= CHUNK_RECORDS || reading.chunk_bytes >= CHUNK_BYTES {
                        reading.chunk_bytes = 0;
                        apply(reading.task, reading.store, std::mem::take(&mut reading.chunk), msg.offset() + 1)?;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.health.note_error("restore", &e.to_string());
                    break;
                }
            }
        }
        self.finished(apply)
    }

    /// Partitions whose position reached their end: write what is left and
    /// unassign them. Tails write what they read.
    fn finished(
        &mut self,
        mut apply: impl FnMut(TaskId, usize, Vec<Change>, i64) -> Result<(), KafkaIoError>,
    ) -> Result<Vec<Restored>, KafkaIoError> {
        for reading in self.reading.values_mut().filter(|r| r.end == i64::MAX) {
            if let Some(next) = reading.next
                && !reading.chunk.is_empty()
            {
                reading.chunk_bytes = 0;
                apply(reading.task, reading.store, std::mem::take(&mut reading.chunk), next)?;
            }
        }
        let positions = self.consumer()?.position()?;
        let mut done = Vec::new();
        for ((topic, partition), reading) in self.reading.iter_mut().filter(|(_, r)| r.end != i64::MAX) {
            let partition = *partition;
            if reading.records != reading.seen {
                reading.seen = reading.records;
                reading.polls += 1;
                reading.progressed = Instant::now();
            }
            let position = reading.reached(Some(&positions), topic, partition);
            if position.is_some_and(|p| p >= reading.end) {
                done.push((topic.clone(), partition));
            } else if reading.progressed.elapsed() >= NOTE_EVERY && reading.noted.elapsed() >= NOTE_EVERY {
                reading.noted = Instant::now();
                tracing::warn!(
                    pipeline = %self.health.pipeline(),
                    changelog = %topic,
                    partition,
                    at = ?position,
                    end = reading.end,
                    waited_ms = reading.started.elapsed().as_millis() as u64,
                    "restore waits for records up to the end: a transaction left open by another producer (a host \
                     that died or hung) holds them back until it ends, at most that producer's \
                     transaction.timeout.ms; or Kafka is unreachable"
                );
            }
        }
        let mut restored = Vec::with_capacity(done.len());
        for at in done {
            let Some(mut reading) = self.reading.remove(&at) else { continue };
            if let Some(next) = reading.next {
                apply(reading.task, reading.store, std::mem::take(&mut reading.chunk), next)?;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&at.0, at.1);
            self.consumer()?.incremental_unassign(&tpl)?;
            tracing::info!(
                pipeline = %self.health.pipeline(),
                changelog = %at.0,
                partition = at.1,
                records = reading.records,
                took_ms = reading.started.elapsed().as_millis() as u64,
                first_record_ms = reading.first_at.map(|f| f.duration_since(reading.started).as_millis() as u64),
                polls = reading.polls,
                "changelog read to its end"
            );
            restored.push(Restored {
                task: reading.task,
                store: reading.store,
                records: reading.records,
                took: reading.started.elapsed(),
            });
        }
        Ok(restored)
    }
}

impl Drop for Restorer {
    fn drop(&mut self) {
        // Topic handles go before their client.
        self.known.release();
        // Closing a consumer can take long while Kafka is away: never on the
        // pipeline's thread.
        if let Some(consumer) = self.consumer.take() {
            let _ = std::thread::Builder::new().name("weir-close".into()).spawn(move || drop(consumer));
        }
    }
}
