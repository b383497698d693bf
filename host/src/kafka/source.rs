//! The source: the pipeline's consumer of its tasks' input partitions.
//!
//! It belongs to no group: the pipeline's group member ([`crate::group`])
//! decides which tasks run here, and the pipeline assigns their partitions to
//! this consumer at the offsets it resumes from. librdkafka's log lines become
//! `tracing` events naming the pipeline, its statistics and errors feed the
//! pipeline's [`Health`]. Closing is bounded: a consumer that cannot close in
//! time (the broker is away) is let go instead of holding up a shutdown.

use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext};

use super::health::{Health, STATS_INTERVAL_MS};
use super::{KafkaIoError, set_default};

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

/// The source consumer's context: it reports to the pipeline's [`Health`].
pub struct SourceContext {
    health: Health,
}

impl SourceContext {
    /// A context reporting to `health`.
    pub fn new(health: Health) -> Self {
        Self { health }
    }
}

impl ClientContext for SourceContext {
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

impl ConsumerContext for SourceContext {}

/// `fetch.queue.backoff.ms` of the consumers that read fast (the group
/// consumer and the restorer).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "50";

/// Settings of a pipeline's source consumer on top of `base`. It names the
/// application's group (librdkafka assigns partitions incrementally only in
/// one) but never joins it: it does not subscribe.
pub fn consumer_config(base: &ClientConfig, group: &str) -> ClientConfig {
    let mut config = base.clone();
    config.set("group.id", group);
    config.set("enable.auto.commit", "false");
    config.set("enable.auto.offset.store", "false");
    set_default(&mut config, "auto.offset.reset", "earliest");
    set_default(&mut config, "isolation.level", "read_committed");
    // When the fetch queue is full (the host is behind), librdkafka waits this
    // long before it looks again; at 0 its broker thread spins on the check and
    // takes a core from the pipeline (stock-stats ran at a third of its speed on
    // two cores). With a full queue, 50 ms cannot starve the pipeline.
    set_default(&mut config, "fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    set_default(&mut config, "statistics.interval.ms", STATS_INTERVAL_MS);
    config
}

/// Creates the source consumer (it reads nothing until partitions are assigned).
pub fn create(config: &ClientConfig, context: SourceContext) -> Result<BaseConsumer<SourceContext>, KafkaIoError> {
    config.create_with_context(context).map_err(|e| KafkaIoError::Setup(e.to_string()))
}

/// Closes a consumer for at most `within`. The close runs on a thread of its
/// own; a consumer that cannot finish in time (Kafka is unreachable) is left to
/// finish there, so it can never hold up the caller.
pub fn close<C: ConsumerContext + 'static>(consumer: BaseConsumer<C>, within: Duration) {
    let (done, closed) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("weir-close".into()).spawn(move || {
        drop(consumer);
        let _ = done.send(());
    });
    if spawned.is_err() || closed.recv_timeout(within).is_err() {
        tracing::warn!(
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
    let Some((low, high)) = watermarks(consumer, &topic, partition) else { return false };
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

/// The end of `partition` of `topic` as the consumer last fetched it (no
/// request to the broker), if it knows.
pub fn high_watermark<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    watermarks(consumer, &topic, partition).map(|(_, high)| high)
}

/// The low and high watermarks librdkafka cached from its last fetch.
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &std::ffi::CStr,
    partition: i32,
) -> Option<(i64, i64)> {
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
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some((low, high))
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
