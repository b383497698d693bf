//! Kafka I/O: client settings, topic setup, the source (group consumer and its
//! rebalance hooks), the sink (producer and transactions), changelog restore, the
//! questions that may block (on a thread of their own) and Kafka's reachability.

pub mod admin;
pub mod health;
pub mod queries;
pub mod restore;
pub mod sink;
pub mod source;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as Code;
use rdkafka::{ClientConfig, TopicPartitionList};
use thiserror::Error;

/// A Kafka failure, classified by what the pipeline can do about it.
#[derive(Debug, Error)]
pub enum KafkaIoError {
    /// A client could not be created or configured.
    #[error("kafka client setup: {0}")]
    Setup(String),
    /// A topic is missing or has the wrong shape.
    #[error("topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// The current transaction failed and was aborted (or is left for the next
    /// producer with the same id to abort): nothing of it is committed.
    #[error("transaction aborted: {0}")]
    Abortable(String),
    /// A commit was asked for and its outcome is unknown: Kafka knows.
    #[error("outcome of a commit unknown: {0}")]
    Uncertain(String),
    /// A client failed fatally (fenced, or unusable) and must be made again.
    #[error("fatal Kafka client error: {0}")]
    Fatal(String),
    /// Kafka did not answer in time; asking again later may succeed.
    #[error("Kafka unreachable: {0}")]
    Unreachable(String),
    /// The pipeline was told to stop while waiting for Kafka.
    #[error("stopped while waiting for Kafka")]
    Stopped,
    /// A request failed.
    #[error("kafka: {0}")]
    Request(#[from] KafkaError),
}

/// Base settings for every client of a pipeline: bootstrap servers, then the
/// user's extra properties (which win).
pub fn base_config(bootstrap_servers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// Sets `key` unless the user already did.
pub(crate) fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

/// Fences the producers of `transactional_id` (see [`crate::group::fence`]) at
/// the brokers of `config`, within `within` or else its
/// `transaction.timeout.ms` (the timeout the new epoch carries too).
pub(crate) fn fence(
    config: &ClientConfig,
    transactional_id: &str,
    within: Option<Duration>,
) -> Result<(), crate::group::GroupError> {
    let setting = |key: &str| config.get(key).unwrap_or_default();
    let timeout =
        Duration::from_millis(setting("transaction.timeout.ms").parse().unwrap_or(sink::TRANSACTION_TIMEOUT_MS));
    let (bootstrap, client_id) = (setting("bootstrap.servers"), setting("client.id"));
    crate::group::fence(bootstrap, client_id, transactional_id, timeout, within.unwrap_or(timeout))
}

/// Whether a failed group request only met a coordinator that is moving or loading,
/// so asking again shortly will succeed.
pub fn is_coordinator_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::NotCoordinator
                | Code::CoordinatorNotAvailable
                | Code::CoordinatorLoadInProgress
                | Code::RequestTimedOut
                | Code::OperationTimedOut
        )
    )
}

/// A group's committed offsets for `partitions`, asking again while the group
/// coordinator is moving or loading, until `timeout` has passed.
pub fn committed_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &TopicPartitionList,
    timeout: Duration,
) -> Result<TopicPartitionList, KafkaError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.committed_offsets(partitions.clone(), left) {
            Err(e) if is_coordinator_transient(&e) && Instant::now() + backoff < deadline => {
                tracing::debug!(error = %e, "group coordinator not ready; asking again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}
