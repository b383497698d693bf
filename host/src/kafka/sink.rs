//! The sink: one producer per pipeline writing output, changelog and dead-letter
//! records, inside a Kafka transaction under exactly-once.
//!
//! A transaction begins with the first record a commit sends (tasks collect their
//! records in an outbox beforehand), so it stays open only for the Kafka I/O of one
//! commit, well inside the transaction timeout. Every wait is bounded and gives way
//! to the pipeline's stop flag, and every failure is classified by what is known
//! about the transaction afterwards:
//!
//! - [`KafkaIoError::Abortable`]: it was aborted (or will be, by the next
//!   producer with this transactional id); nothing of it is committed.
//! - [`KafkaIoError::Uncertain`]: a commit was asked for and its outcome is not
//!   known (the broker went away mid-commit, or the producer was fenced during
//!   it). Only Kafka knows; the pipeline re-reads its offsets and state.
//!
//! A producer that failed fatally, or whose state is uncertain, is replaced by a
//! new one with the same transactional id, whose `init_transactions` fences the
//! old one and settles any transaction it left open.
//!
//! Flushing polls the producer every millisecond until nothing is in flight:
//! librdkafka's own flush inside `commit_transaction` polls in 100 ms steps.
//! Delivery reports record the highest changelog offset per partition (the next
//! checkpoint of each store) and any failure (which aborts the transaction).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use super::health::{Health, STATS_INTERVAL_MS};
use super::source::forward_log;
use super::{KafkaIoError, set_default};
use crate::faults;
use crate::group::Identity;

/// The producer's transaction timeout unless the user sets
/// `transaction.timeout.ms`: the longest a dead host's open transaction can hold
/// back readers of a changelog (Kafka Streams uses the same under exactly-once).
pub const TRANSACTION_TIMEOUT_MS: u64 = 10_000;
/// How long a commit in flight at a stop request may still wait for Kafka.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// One attempt of a transactional call; longer waits are made of attempts, so a
/// stop request is seen within this time.
const STEP: Duration = Duration::from_secs(1);

/// How long a commit keeps asking for an answer before its outcome counts as
/// uncertain.
const COMMIT_PATIENCE: Duration = Duration::from_secs(30);

/// How long an abort may take before the producer is replaced instead.
const ABORT_PATIENCE: Duration = Duration::from_secs(5);

/// How long Kafka may be known unreachable before a wait gives up early.
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(1);

/// Delivery bookkeeping shared with librdkafka's callback.
pub struct SinkContext {
    changelog_topics: HashSet<String>,
    changelog_offsets: Mutex<HashMap<(String, i32), i64>>,
    failure: Mutex<Option<String>>,
    health: Health,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(&self.health, "producer", level, fac, message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.health.report_stats("producer", statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.health.report_error("producer", &error, reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) if self.changelog_topics.contains(msg.topic()) => {
                if let Ok(mut offsets) = self.changelog_offsets.lock() {
                    let entry = offsets.entry((msg.topic().to_owned(), msg.partition())).or_insert(msg.offset());
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
    config: ClientConfig,
    changelog_topics: HashSet<String>,
    transactional: bool,
    health: Health,
    stop: Arc<AtomicBool>,
    /// `None` after a fatal or uncertain failure: made again by [`Sink::ready`].
    /// Shared with a call that may outlive its timeout (see [`Sink::commit`]).
    producer: Option<Arc<BaseProducer<SinkContext>>>,
    initialized: bool,
    in_transaction: bool,
    /// A producer was dropped with its transaction open: the next one's
    /// `init_transactions` ends it, or [`Sink::end_abandoned`] on the way out.
    abandoned: bool,
    /// After a stop request, waits may go on until then (the last commit).
    grace_until: Option<Instant>,
    /// When a wait first saw the stop request.
    stop_seen: std::sync::OnceLock<Instant>,
}

/// A failure injected by a test at `phase` (see [`faults`]).
fn injected(phase: &str) -> Result<(), KafkaIoError> {
    if faults::hit(phase) {
        return Err(KafkaIoError::Abortable(format!("injected failure ({phase})")));
    }
    Ok(())
}

fn describe(err: &KafkaError) -> String {
    match err {
        KafkaError::Transaction(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// How a transactional call failed.
enum Failed {
    /// The producer cannot be used again.
    Fatal(String),
    /// The transaction must be aborted.
    Abort(String),
    /// Nothing definite: ask again.
    Retry(String),
}

fn classify(err: KafkaError) -> Failed {
    let text = describe(&err);
    match &err {
        KafkaError::Transaction(e) if e.is_fatal() => Failed::Fatal(text),
        KafkaError::Transaction(e) if e.txn_requires_abort() => Failed::Abort(text),
        KafkaError::Transaction(e) if e.is_retriable() => Failed::Retry(text),
        KafkaError::Transaction(e) if e.code() == RDKafkaErrorCode::Fenced => Failed::Fatal(text),
        _ => Failed::Retry(text),
    }
}

/// Adds `offsets` to the producer's transaction as committed by group member
/// `who` (its generation fences a member the group has dropped).
fn send_offsets_as(
    producer: &BaseProducer<SinkContext>,
    offsets: &TopicPartitionList,
    who: &Identity,
    timeout: Duration,
) -> Result<(), Failed> {
    use rdkafka::bindings as rd;
    use std::ffi::{CStr, CString};
    let text = |what: &str| CString::new(what).map_err(|e| Failed::Abort(format!("group identity: {e}")));
    let (group, member, instance) = (text(&who.group)?, text(&who.member_id)?, text(&who.instance)?);
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the strings outlive the calls (librdkafka copies them into the
    // metadata); the metadata is destroyed here after the call, which copies
    // what it needs; the producer and the offset list are alive for the call;
    // the error, if any, is read and destroyed here.
    #[allow(unsafe_code)]
    unsafe {
        let meta = rd::rd_kafka_consumer_group_metadata_new_with_genid(
            group.as_ptr(),
            who.generation,
            member.as_ptr(),
            if who.instance.is_empty() { std::ptr::null() } else { instance.as_ptr() },
        );
        if meta.is_null() {
            return Err(Failed::Abort("group metadata could not be made".into()));
        }
        let error =
            rd::rd_kafka_send_offsets_to_transaction(producer.client().native_ptr(), offsets.ptr(), meta, timeout_ms);
        rd::rd_kafka_consumer_group_metadata_destroy(meta);
        if error.is_null() {
            return Ok(());
        }
        let code = rd::rd_kafka_error_code(error);
        let message = CStr::from_ptr(rd::rd_kafka_error_string(error)).to_string_lossy().into_owned();
        let (fatal, abort, retry) = (
            rd::rd_kafka_error_is_fatal(error) != 0,
            rd::rd_kafka_error_txn_requires_abort(error) != 0,
            rd::rd_kafka_error_is_retriable(error) != 0,
        );
        rd::rd_kafka_error_destroy(error);
        let message = format!("{message} ({code:?})");
        Err(if fatal || code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__FENCED {
            Failed::Fatal(message)
        } else if abort || !retry {
            Failed::Abort(message)
        } else {
            Failed::Retry(message)
        })
    }
}

impl Sink {
    /// A sink for `config`; with `transactional_id` it is transactional. The
    /// producer is made and initialised by [`Sink::ready`], so a sink can be set
    /// up while Kafka is away.
    pub fn new(
        mut config: ClientConfig,
        changelog_topics: &[String],
        transactional_id: Option<&str>,
        health: Health,
        stop: Arc<AtomicBool>,
    ) -> Self {
        set_default(&mut config, "enable.idempotence", "true");
        set_default(&mut config, "acks", "all");
        set_default(&mut config, "linger.ms", "5");
        set_default(&mut config, "queue.buffering.max.messages", "1000000");
        set_default(&mut config, "statistics.interval.ms", STATS_INTERVAL_MS);
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
            set_default(&mut config, "transaction.timeout.ms", &TRANSACTION_TIMEOUT_MS.to_string());
        }
        Self {
            config,
            changelog_topics: changelog_topics.iter().cloned().collect(),
            transactional: transactional_id.is_some(),
            health,
            stop,
            producer: None,
            initialized: false,
            in_transaction: false,
            abandoned: false,
            grace_until: None,
            stop_seen: std::sync::OnceLock::new(),
        }
    }

    /// Lets waits go on for `grace` after the stop request (counted from when
    /// a wait first saw it, else from now): for the last commit of a stopping
    /// pipeline.
    pub fn allow_grace(&mut self, grace: Duration) {
        let from = self.stop_seen.get().copied().unwrap_or_else(Instant::now);
        self.grace_until = Some(from + grace);
    }

    /// Whether waits must give up: the stop flag is set and the grace is over.
    /// A commit in flight at a stop request may finish within [`STOP_GRACE`]
    /// (giving up mid-commit aborted it, and the work since the commit before
    /// was redone by the next owner).
    fn stopping(&self) -> bool {
        if !self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.grace_until.unwrap_or_else(|| *self.stop_seen.get_or_init(Instant::now) + STOP_GRACE);
        Instant::now() >= until
    }

    /// Makes the producer if there is none and initialises transactions (which
    /// fences earlier producers with the same id), waiting at most `within`.
    /// [`KafkaIoError::Unreachable`] means: not yet, ask again.
    pub fn ready(&mut self, within: Duration) -> Result<(), KafkaIoError> {
        if self.producer.is_none() {
            let context = SinkContext {
                changelog_topics: self.changelog_topics.clone(),
                changelog_offsets: Mutex::new(HashMap::new()),
                failure: Mutex::new(None),
                health: self.health.clone(),
            };
            let producer: BaseProducer<SinkContext> =
                self.config.create_with_context(context).map_err(|e| KafkaIoError::Setup(e.to_string()))?;
            self.producer = Some(Arc::new(producer));
            self.initialized = !self.transactional;
            self.in_transaction = false;
        }
        if self.initialized {
            return Ok(());
        }
        let deadline = Instant::now() + within;
        loop {
            let Some(producer) = &self.producer else { return Err(KafkaIoError::Fatal("no producer".into())) };
            match producer.init_transactions(STEP.min(within)) {
                Ok(()) => {
                    self.initialized = true;
                    self.abandoned = false;
                    return Ok(());
                }
                Err(e) => match classify(e) {
                    Failed::Fatal(m) | Failed::Abort(m) => {
                        self.producer = None;
                        return Err(KafkaIoError::Fatal(format!("initialising transactions: {m}")));
                    }
                    Failed::Retry(m) if Instant::now() >= deadline || self.stopping() => {
                        return Err(KafkaIoError::Unreachable(format!("initialising transactions: {m}")));
                    }
                    Failed::Retry(_) => {}
                },
            }
        }
    }

    fn producer(&self) -> Result<&Arc<BaseProducer<SinkContext>>, KafkaIoError> {
        match &self.producer {
            Some(p) if self.initialized => Ok(p),
            _ => Err(KafkaIoError::Abortable("the producer is being replaced".into())),
        }
    }

    /// Whether this sink commits through transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    fn ensure_transaction(&mut self) -> Result<(), KafkaIoError> {
        if self.transactional && !self.in_transaction {
            self.producer()?.begin_transaction().map_err(|e| match classify(e) {
                Failed::Fatal(m) => KafkaIoError::Fatal(m),
                Failed::Abort(m) | Failed::Retry(m) => KafkaIoError::Abortable(m),
            })?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Sends a record (inside the current transaction, begun on demand).
    pub fn send(&mut self, record: OutRecord<'_>) -> Result<(), KafkaIoError> {
        self.ensure_transaction()?;
        let producer = self.producer()?;
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
            match producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if self.stopping() {
                        return Err(KafkaIoError::Stopped);
                    }
                    rec = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((err, _)) => return Err(KafkaIoError::Abortable(describe(&err))),
            }
        }
    }

    /// Serves delivery reports and statistics without blocking.
    pub fn poll(&self) {
        if let Some(producer) = &self.producer {
            producer.poll(Duration::ZERO);
        }
    }

    /// Waits until every sent record is acknowledged (at most the transaction
    /// timeout); fails if any was not. [`Sink::commit`] flushes too; flushing
    /// first separates the two steps (a test hook crashes between them).
    pub fn flush(&self) -> Result<(), KafkaIoError> {
        let producer = self.producer()?;
        let deadline = Instant::now() + Duration::from_millis(TRANSACTION_TIMEOUT_MS);
        while producer.in_flight_count() > 0 {
            if self.stopping() {
                return Err(KafkaIoError::Stopped);
            }
            // Kafka is known to be away: give the loop back instead of waiting.
            if self.health.unreachable_for().is_some_and(|d| d > UNREACHABLE_PATIENCE) {
                return Err(KafkaIoError::Unreachable("records not acknowledged: Kafka is unreachable".into()));
            }
            if Instant::now() > deadline {
                return Err(KafkaIoError::Abortable(format!(
                    "records not acknowledged within {TRANSACTION_TIMEOUT_MS} ms"
                )));
            }
            producer.poll(Duration::from_millis(1));
        }
        match producer.context().failure.lock().ok().and_then(|mut f| f.take()) {
            Some(failure) => Err(KafkaIoError::Abortable(failure)),
            None => Ok(()),
        }
    }

    /// Exactly-once: flushes, adds the input offsets to the transaction and
    /// commits it. At-least-once: flushes only (the caller commits offsets
    /// afterwards). On [`KafkaIoError::Abortable`] the transaction is already
    /// aborted (or left for the next producer to abort).
    pub fn commit(&mut self, offsets: &TopicPartitionList, group: Option<Identity>) -> Result<(), KafkaIoError> {
        let before_commit = self.flush().and_then(|()| {
            injected("flush")?;
            if !self.transactional {
                return Ok(());
            }
            if offsets.count() == 0 && !self.in_transaction {
                return Ok(());
            }
            self.ensure_transaction()?;
            if offsets.count() > 0 {
                let group = group
                    .ok_or_else(|| KafkaIoError::Abortable("no consumer group metadata (not in a group yet)".into()))?;
                self.send_offsets(offsets, group)?;
            }
            injected("offsets")
        });
        if let Err(e) = before_commit {
            return Err(self.abandon(e));
        }
        if !self.in_transaction {
            return Ok(());
        }
        self.commit_transaction()
    }

    /// Adds the offsets to the transaction. The call runs on a thread of its own:
    /// librdkafka's `send_offsets_to_transaction` can block past its timeout,
    /// forever, while the group coordinator is away (librdkafka issue 5456). If it
    /// does not answer in time the producer is given up to that thread (which
    /// drops it whenever the call returns) and a new one takes over; the
    /// transaction was never committed, and the new producer's
    /// `init_transactions` aborts it.
    fn send_offsets(&mut self, offsets: &TopicPartitionList, group: Identity) -> Result<(), KafkaIoError> {
        let producer = self.producer()?.clone();
        let offsets = offsets.clone();
        let timeout = Duration::from_millis(TRANSACTION_TIMEOUT_MS);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("weir-txn-offsets".into())
            .spawn(move || {
                let _ = tx.send(send_offsets_as(&producer, &offsets, &group, timeout));
            })
            .map_err(|e| KafkaIoError::Abortable(format!("adding offsets to the transaction: {e}")))?;
        let deadline = Instant::now() + timeout + STEP;
        let result = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(result) => break result,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if Instant::now() < deadline
                        && !self.stopping()
                        && self.health.unreachable_for().is_none_or(|d| d <= UNREACHABLE_PATIENCE) => {}
                Err(_) => {
                    self.abandon_producer();
                    return Err(KafkaIoError::Abortable(
                        "adding offsets to the transaction got no answer (Kafka unreachable?); the producer is \
                         replaced"
                            .into(),
                    ));
                }
            }
        };
        result.map_err(|failed| match failed {
            Failed::Fatal(m) => KafkaIoError::Fatal(m),
            Failed::Abort(m) | Failed::Retry(m) => {
                KafkaIoError::Abortable(format!("adding offsets to the transaction: {m}"))
            }
        })
    }

    /// Lets go of a producer a call still holds: the call's thread drops it.
    fn abandon_producer(&mut self) {
        self.producer = None;
        self.initialized = false;
        self.in_transaction = false;
    }

    fn commit_transaction(&mut self) -> Result<(), KafkaIoError> {
        if let Err(e) = injected("commit") {
            return Err(self.abandon(e));
        }
        let deadline = Instant::now() + COMMIT_PATIENCE;
        loop {
            let result = self.producer()?.commit_transaction(STEP);
            match result {
                Ok(()) => {
                    self.in_transaction = false;
                    if faults::hit("commit-ack") {
                        // The commit went through; its answer is "lost".
                        self.replace_producer();
                        return Err(KafkaIoError::Uncertain("injected loss of the commit's answer".into()));
                    }
                    return Ok(());
                }
                Err(e) => match classify(e) {
                    Failed::Abort(m) => {
                        // The broker refused to commit: the transaction aborts.
                        return Err(self.abandon(KafkaIoError::Abortable(m)));
                    }
                    Failed::Fatal(m) => {
                        self.replace_producer();
                        return Err(KafkaIoError::Uncertain(format!("committing: {m}")));
                    }
                    Failed::Retry(m)
                        if Instant::now() >= deadline
                            || self.stopping()
                            || self.health.unreachable_for().is_some_and(|d| d > UNREACHABLE_PATIENCE) =>
                    {
                        self.replace_producer();
                        return Err(KafkaIoError::Uncertain(format!("no answer to the commit: {m}")));
                    }
                    Failed::Retry(_) => {}
                },
            }
        }
    }

    /// Gives up the current transaction after `cause`: aborts it if the producer
    /// can, or replaces the producer (whose successor aborts it). A transaction
    /// that was never committed cannot commit afterwards either way.
    fn abandon(&mut self, cause: KafkaIoError) -> KafkaIoError {
        let fatal = matches!(cause, KafkaIoError::Fatal(_));
        if fatal || self.abort().is_err() {
            self.replace_producer();
        }
        match cause {
            KafkaIoError::Fatal(m) => KafkaIoError::Abortable(format!("producer failed fatally: {m}")),
            other => other,
        }
    }

    /// Drops the producer; the next [`Sink::ready`] makes a new one.
    fn replace_producer(&mut self) {
        self.abandoned |= self.transactional && self.in_transaction;
        if let Some(producer) = self.producer.take() {
            // Nothing it holds may be delivered any more.
            producer.purge(PurgeConfig::default().queue().inflight().non_blocking());
            drop(producer);
        }
        self.initialized = false;
        self.in_transaction = false;
    }

    /// On the way out: ends a transaction a dropped producer left open (no
    /// successor will), by fencing this host's own transactional id within
    /// `within`. Otherwise the next owner of its tasks would wait for it up
    /// to `transaction.timeout.ms` — a host that left cleanly is fenced by
    /// nobody, and a host started later does not know it was here.
    pub fn end_abandoned(&mut self, within: Duration) {
        if !std::mem::take(&mut self.abandoned) {
            return;
        }
        let id = self.config.get("transactional.id").unwrap_or_default().to_owned();
        match super::fence(&self.config, &id, Some(within)) {
            Ok(()) => tracing::info!(transactional_id = %id, "ended the transaction this host left open"),
            Err(error) => tracing::warn!(
                transactional_id = %id,
                %error,
                "could not end the transaction this host left open: it ends at its timeout"
            ),
        }
    }

    /// Whether the producer must be made again before the next transaction.
    pub fn needs_ready(&self) -> bool {
        self.producer.is_none() || !self.initialized
    }

    /// Aborts the current transaction, dropping what it wrote. Bounded: if the
    /// abort does not complete in time the producer is replaced instead.
    pub fn abort(&mut self) -> Result<(), KafkaIoError> {
        let Some(producer) = &self.producer else {
            self.in_transaction = false;
            return Ok(());
        };
        // Undelivered records must be served before an abort can succeed.
        producer.purge(PurgeConfig::default().queue().inflight());
        producer.poll(Duration::ZERO);
        if let Ok(mut failure) = producer.context().failure.lock() {
            failure.take();
        }
        if let Ok(mut offsets) = producer.context().changelog_offsets.lock() {
            offsets.clear();
        }
        if !(self.transactional && self.in_transaction) {
            return Ok(());
        }
        let deadline = Instant::now() + ABORT_PATIENCE;
        loop {
            let Some(producer) = &self.producer else { return Ok(()) };
            match producer.abort_transaction(STEP) {
                Ok(()) => {
                    self.in_transaction = false;
                    return Ok(());
                }
                Err(e) => match classify(e) {
                    Failed::Retry(m)
                        if Instant::now() < deadline
                            && !self.stopping()
                            && self.health.unreachable_for().is_none_or(|d| d <= UNREACHABLE_PATIENCE) =>
                    {
                        tracing::debug!(error = %m, "abort not answered yet");
                    }
                    Failed::Fatal(m) | Failed::Abort(m) | Failed::Retry(m) => {
                        self.replace_producer();
                        return Err(KafkaIoError::Fatal(format!("aborting: {m}")));
                    }
                },
            }
        }
    }

    /// Takes the highest changelog offset delivered per (topic, partition) since
    /// the last call.
    pub fn take_changelog_offsets(&self) -> HashMap<(String, i32), i64> {
        let Some(producer) = &self.producer else { return HashMap::new() };
        producer.context().changelog_offsets.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.health.forget("producer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(stop: &Arc<AtomicBool>) -> Sink {
        let health = Health::new("t", prometheus_client::metrics::gauge::Gauge::default());
        Sink::new(ClientConfig::new(), &[], Some("t"), health, stop.clone())
    }

    #[test]
    fn a_stop_request_lets_a_commit_in_flight_wait_for_the_grace_and_the_last_commit_shares_it() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = sink(&stop);
        assert!(!s.stopping());
        stop.store(true, Ordering::Relaxed);
        // Seen inside a commit: its waits go on (they gave up at once before).
        assert!(!s.stopping());
        // The last commit's grace counts from when the stop was seen: a grace
        // already spent leaves nothing.
        s.allow_grace(Duration::ZERO);
        assert!(s.stopping());
        s.allow_grace(Duration::from_secs(60));
        assert!(!s.stopping());
    }
}
