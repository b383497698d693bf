//! The sink: one producer per pipeline writing output, changelog and dead-letter
//! records, inside a Kafka transaction under exactly-once.
//!
//! Flushing polls the producer every millisecond until nothing is in flight, then
//! commits: librdkafka's own flush inside `commit_transaction` polls in 100 ms steps.
//! Delivery reports record the highest changelog offset per partition (the next
//! checkpoint of each store) and any failure (which aborts the transaction).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use super::{KafkaIoError, set_default};

/// How long a flush or transaction call may take before it counts as failed.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// Delivery bookkeeping shared with librdkafka's callback.
pub struct SinkContext {
    changelog_topic: String,
    changelog_offsets: Mutex<HashMap<i32, i64>>,
    failure: Mutex<Option<String>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) if msg.topic() == self.changelog_topic => {
                if let Ok(mut offsets) = self.changelog_offsets.lock() {
                    let entry = offsets.entry(msg.partition()).or_insert(msg.offset());
                    *entry = (*entry).max(msg.offset());
                }
            }
            Ok(_) => {}
            Err((err, msg)) => {
                if let Ok(mut failure) = self.failure.lock() {
                    failure.get_or_insert_with(|| {
                        format!("delivery to {}[{}] failed: {err}", msg.topic(), msg.partition())
                    });
                }
            }
        }
    }
}

/// A record to write.
pub struct OutRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition, or `None` for the default partitioner.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Timestamp in ms.
    pub timestamp: Option<i64>,
    /// Headers.
    pub headers: Option<OwnedHeaders>,
}

/// The pipeline's producer.
pub struct Sink {
    producer: BaseProducer<SinkContext>,
    transactional: bool,
    in_transaction: bool,
}

/// A fatal transactional error (fenced, or the producer is unusable) stops the
/// pipeline; anything else aborts the transaction and is retried.
fn classify(err: KafkaError) -> KafkaIoError {
    match &err {
        KafkaError::Transaction(e) if e.is_fatal() => KafkaIoError::Fatal(err.to_string()),
        _ => KafkaIoError::Abortable(err.to_string()),
    }
}

impl Sink {
    /// Creates the producer; with `transactional_id` it is transactional and
    /// `init_transactions` fences any earlier producer with the same id.
    pub fn new(
        mut config: ClientConfig,
        changelog_topic: &str,
        transactional_id: Option<&str>,
    ) -> Result<Self, KafkaIoError> {
        set_default(&mut config, "enable.idempotence", "true");
        set_default(&mut config, "acks", "all");
        set_default(&mut config, "linger.ms", "5");
        set_default(&mut config, "queue.buffering.max.messages", "1000000");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
            set_default(&mut config, "transaction.timeout.ms", "60000");
        }
        let context = SinkContext {
            changelog_topic: changelog_topic.to_owned(),
            changelog_offsets: Mutex::new(HashMap::new()),
            failure: Mutex::new(None),
        };
        let producer: BaseProducer<SinkContext> =
            config.create_with_context(context).map_err(|e| KafkaIoError::Setup(e.to_string()))?;
        if transactional_id.is_some() {
            producer.init_transactions(TXN_TIMEOUT).map_err(classify)?;
        }
        Ok(Self { producer, transactional: transactional_id.is_some(), in_transaction: false })
    }

    /// Whether this sink commits through transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    fn ensure_transaction(&mut self) -> Result<(), KafkaIoError> {
        if self.transactional && !self.in_transaction {
            self.producer.begin_transaction().map_err(classify)?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Sends a record (inside the current transaction, begun on demand).
    pub fn send(&mut self, record: OutRecord<'_>) -> Result<(), KafkaIoError> {
        self.ensure_transaction()?;
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(record.topic);
        if let Some(p) = record.partition {
            rec = rec.partition(p);
        }
        if let Some(k) = record.key {
            rec = rec.key(k);
        }
        if let Some(v) = record.value {
            rec = rec.payload(v);
        }
        if let Some(ts) = record.timestamp {
            rec = rec.timestamp(ts);
        }
        if let Some(h) = record.headers {
            rec = rec.headers(h);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((err, _)) => return Err(classify(err)),
            }
        }
    }

    /// Serves delivery reports without blocking.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits until every sent record is acknowledged; fails if any was not.
    pub fn flush(&self) -> Result<(), KafkaIoError> {
        let deadline = Instant::now() + TXN_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(KafkaIoError::Abortable("records not acknowledged within 60 s".into()));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        match self.producer.context().failure.lock().ok().and_then(|mut f| f.take()) {
            Some(failure) => Err(KafkaIoError::Abortable(failure)),
            None => Ok(()),
        }
    }

    /// Exactly-once: flushes, adds the input offsets to the transaction and commits
    /// it. At-least-once: flushes only (the caller commits offsets afterwards).
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), KafkaIoError> {
        self.flush()?;
        if !self.transactional {
            return Ok(());
        }
        self.ensure_transaction()?;
        if offsets.count() > 0 {
            let group = group
                .ok_or_else(|| KafkaIoError::Abortable("no consumer group metadata (not in a group yet)".into()))?;
            self.producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT).map_err(classify)?;
        }
        self.producer.commit_transaction(TXN_TIMEOUT).map_err(classify)?;
        self.in_transaction = false;
        Ok(())
    }

    /// Aborts the current transaction, dropping what it wrote.
    pub fn abort(&mut self) -> Result<(), KafkaIoError> {
        // Undelivered records must be served before an abort can succeed.
        let _ = self.producer.flush(Duration::from_secs(5));
        if let Ok(mut failure) = self.producer.context().failure.lock() {
            failure.take();
        }
        if let Ok(mut offsets) = self.producer.context().changelog_offsets.lock() {
            offsets.clear();
        }
        if self.transactional && self.in_transaction {
            self.in_transaction = false;
            self.producer.abort_transaction(TXN_TIMEOUT).map_err(classify)?;
        }
        Ok(())
    }

    /// Takes the highest changelog offset delivered per partition since the last call.
    pub fn take_changelog_offsets(&self) -> HashMap<i32, i64> {
        self.producer.context().changelog_offsets.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default()
    }
}
