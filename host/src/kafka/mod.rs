//! Kafka I/O: client settings, topic setup, the sink (producer and transactions),
//! the source's rebalance hooks and changelog restore.

pub mod admin;
pub mod restore;
pub mod sink;

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
    /// The current transaction failed but the producer can go on after aborting it.
    #[error("transaction must be aborted: {0}")]
    Abortable(String),
    /// The producer was fenced or failed fatally; this instance must stop.
    #[error("fatal producer error: {0}")]
    Fatal(String),
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
