//! Kafka I/O: client settings, topic setup, the sink (producer and transactions),
//! the source's rebalance hooks and changelog restore.

pub mod admin;
pub mod restore;
pub mod sink;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
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
