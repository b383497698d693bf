//! The source: the pipeline's group consumer and what its callbacks do.
//!
//! Rebalances are handed to a [`RebalanceHandler`] (the pipeline) on the polling
//! thread: a revocation before partitions are given up, an assignment after they
//! are taken. librdkafka's log lines become `tracing` events naming the pipeline,
//! its statistics and errors feed the pipeline's [`Health`]. Closing is bounded:
//! a consumer that cannot leave cleanly (the broker is away) is let go instead of
//! holding up a shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use super::health::{Health, STATS_INTERVAL_MS};
use super::{KafkaIoError, set_default};

/// What a pipeline does when its group membership changes.
pub trait RebalanceHandler: Send + 'static {
    /// Partitions are about to be taken away. `lost` is set when the group has
    /// already given them to someone else (the member was kicked out): nothing
    /// may be committed for them then.
    fn revoke(&mut self, consumer: &BaseConsumer<SourceContext<Self>>, partitions: &TopicPartitionList, lost: bool)
    where
        Self: Sized;

    /// Partitions were given to this member.
    fn assign(&mut self, consumer: &BaseConsumer<SourceContext<Self>>, partitions: &TopicPartitionList)
    where
        Self: Sized;
}

/// Forwards a librdkafka log line to `tracing`, naming the pipeline and client.
/// Connection failures (`FAIL`) are informational: an outage is reported once,
/// as a warning, by the pipeline's [`Health`], not once a second per client.
pub(crate) fn forward_log(health: &Health, client: &'static str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    let pipeline = health.pipeline();
    let level =
        if fac == "FAIL" && (level as i32) < (RDKafkaLogLevel::Notice as i32) { RDKafkaLogLevel::Info } else { level };
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(%pipeline, %client, fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(%pipeline, %client, fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(%pipeline, %client, fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(%pipeline, %client, fac, "librdkafka: {message}"),
    }
}

/// A client context that only reports to a pipeline's [`Health`] and log.
pub struct Reporting {
    health: Health,
    client: &'static str,
}

impl Reporting {
    /// Reports as `client` of the pipeline `health` belongs to.
    pub fn new(health: Health, client: &'static str) -> Self {
        Self { health, client }
    }
}

impl ClientContext for Reporting {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(&self.health, self.client, level, fac, message);
    }

    fn stats_raw(&self, _: &[u8]) {}

    fn error(&self, error: KafkaError, reason: &str) {
        self.health.note_error(self.client, &format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Reporting {}

/// The group consumer's context. It holds its handler weakly: the session that
/// owns the handler can take it back whatever became of the consumer.
pub struct SourceContext<H> {
    handler: Weak<Mutex<H>>,
    /// Cleared when the consumer is let go: its late callbacks must not reach a
    /// handler that has moved on to a new consumer.
    attached: Arc<AtomicBool>,
    health: Health,
}

impl<H> SourceContext<H> {
    /// A context handing rebalances to `handler` and reporting to `health`.
    pub fn new(handler: &Arc<Mutex<H>>, health: Health) -> Self {
        Self { handler: Arc::downgrade(handler), attached: Arc::new(AtomicBool::new(true)), health }
    }

    /// Runs `f` on the handler, unless the consumer was let go.
    fn with_handler(&self, f: impl FnOnce(&mut H)) {
        if !self.attached.load(Ordering::Acquire) {
            return;
        }
        let Some(handler) = self.handler.upgrade() else { return };
        match handler.lock() {
            Ok(mut handler) => f(&mut handler),
            Err(_) => tracing::error!(pipeline = %self.health.pipeline(), "pipeline poisoned; rebalance ignored"),
        }
    }
}

impl<H: RebalanceHandler> ClientContext for SourceContext<H> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(&self.health, "consumer", level, fac, message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.health.report_stats("consumer", statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.health.report_error("consumer", &error, reason);
    }
}

impl<H: RebalanceHandler> ConsumerContext for SourceContext<H> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let lost = consumer.assignment_lost();
            self.with_handler(|handler| handler.revoke(consumer, partitions, lost));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => self.with_handler(|handler| handler.assign(consumer, partitions)),
            Rebalance::Error(e) => tracing::warn!(pipeline = %self.health.pipeline(), error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// `fetch.queue.backoff.ms` of the consumers that read fast (the group
/// consumer and the restorer).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "50";

/// Settings of a pipeline's group consumer on top of `base`.
pub fn consumer_config(base: &ClientConfig, group: &str, member: &str) -> ClientConfig {
    let mut config = base.clone();
    config.set("group.id", group);
    config.set("enable.auto.commit", "false");
    config.set("enable.auto.offset.store", "false");
    set_default(&mut config, "group.instance.id", member);
    set_default(&mut config, "auto.offset.reset", "earliest");
    // A task reading several topics (merged, or joined) needs the same
    // partition of each: the range assignor gives co-partitioned topics (same
    // partition count, same subscribers) to members alike.
    set_default(&mut config, "partition.assignment.strategy", "range");
    set_default(&mut config, "isolation.level", "read_committed");
    // When the fetch queue is full (the host is behind), librdkafka waits this
    // long before it looks again; at 0 its broker thread spins on the check and
    // takes a core from the pipeline (stock-stats ran at a third of its speed on
    // two cores). With a full queue, 50 ms cannot starve the pipeline.
    set_default(&mut config, "fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    set_default(&mut config, "session.timeout.ms", "10000");
    set_default(&mut config, "statistics.interval.ms", STATS_INTERVAL_MS);
    config
}

/// Creates the group consumer and subscribes it to `topics`.
pub fn subscribe<H: RebalanceHandler>(
    config: &ClientConfig,
    context: SourceContext<H>,
    topics: &[&str],
) -> Result<BaseConsumer<SourceContext<H>>, KafkaIoError> {
    let consumer: BaseConsumer<SourceContext<H>> =
        config.create_with_context(context).map_err(|e| KafkaIoError::Setup(e.to_string()))?;
    consumer.subscribe(topics).map_err(KafkaIoError::from)?;
    Ok(consumer)
}

/// Closes a consumer, serving its last callbacks (a revocation commits), for at
/// most `within`. The close runs on a thread of its own; a consumer that cannot
/// finish in time (the coordinator is unreachable) is detached from its handler
/// and left to finish there, so it can never hold up the caller. The caller must
/// not hold the handler's lock.
pub fn close<H: RebalanceHandler>(consumer: BaseConsumer<SourceContext<H>>, within: Duration) {
    let attached = consumer.context().attached.clone();
    let pipeline = consumer.context().health.pipeline().to_owned();
    let (done, closed) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("weir-close".into()).spawn(move || {
        drop(consumer);
        let _ = done.send(());
    });
    if spawned.is_err() || closed.recv_timeout(within).is_err() {
        attached.store(false, Ordering::Release);
        tracing::warn!(
            %pipeline,
            within_ms = within.as_millis() as u64,
            "consumer did not close in time (Kafka unreachable?); letting it go in the background"
        );
    }
}

/// Whether a consumer positioned at `position` in `partition` of `topic`
/// (`None`: not positioned yet, so at the partition's start) has nothing more
/// to fetch there, by the high watermark the consumer last fetched (cached by
/// librdkafka, no request to the broker). Unknown counts as not caught up.
pub fn caught_up<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    position: Option<i64>,
) -> bool {
    let Ok(topic) = std::ffi::CString::new(topic) else { return false };
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; librdkafka
    // reads the topic name (a NUL-terminated string that outlives the call)
    // and writes the two offsets, taking its own lock.
    #[allow(unsafe_code)]
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return false;
    }
    // A topic written in transactions ends in a commit marker, an offset no
    // record has: the consumer's own position steps over it (and over
    // aborted records), the position after the last record read does not.
    let caught_up = |position: Option<i64>| match position {
        Some(at) => at >= high,
        None => high == 0 || (low >= 0 && low >= high),
    };
    // The consumer's position only when the cheap answer is no.
    caught_up(position) || caught_up(consumer_position(consumer, &topic, partition).max(position))
}

/// The consumer's position in `partition` of `topic` (after the last message
/// it handed out, control records stepped over), if it has one.
fn consumer_position<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &std::ffi::CStr,
    partition: i32,
) -> Option<i64> {
    use rdkafka::bindings as rd;
    // SAFETY: the list is made, filled, read and destroyed here; librdkafka
    // copies the topic name into it and writes the offset of each entry.
    #[allow(unsafe_code)]
    unsafe {
        let list = rd::rd_kafka_topic_partition_list_new(1);
        if list.is_null() {
            return None;
        }
        let entry = rd::rd_kafka_topic_partition_list_add(list, topic.as_ptr(), partition);
        let err = rd::rd_kafka_position(consumer.client().native_ptr(), list);
        let offset = (!entry.is_null() && err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| (*entry).offset)
            .filter(|&o| o >= 0);
        rd::rd_kafka_topic_partition_list_destroy(list);
        offset
    }
}
