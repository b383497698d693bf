//! Topic setup: check the input topic and create the output, changelog and
//! dead-letter topics a pipeline needs. A broker that does not answer in time is
//! [`KafkaIoError::Unreachable`] (ask again later), not a broken setup.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaIoError;

/// Whether a failed request says the cluster did not answer, rather than no.
fn unreachable(error: KafkaError) -> KafkaIoError {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotController,
        ) => KafkaIoError::Unreachable(error.to_string()),
        _ => KafkaIoError::Request(error),
    }
}

/// A topic a pipeline needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor; -1 for the broker's default.
    pub replication: i32,
    /// Topic configs, e.g. `cleanup.policy=compact`.
    pub configs: Vec<(String, String)>,
    /// Whether an existing topic must have exactly `partitions` partitions.
    pub exact_partitions: bool,
}

/// Number of partitions of `topic`, or `None` if it does not exist. A topic that
/// exists but whose metadata is not complete yet (just created, leader election in
/// progress) is asked about again until `timeout`.
pub fn partition_count(config: &ClientConfig, topic: &str, timeout: Duration) -> Result<Option<i32>, KafkaIoError> {
    let consumer: BaseConsumer = config.create().map_err(|e| KafkaIoError::Setup(e.to_string()))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(unreachable)?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
        match t.error().map(RDKafkaErrorCode::from) {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            None if !t.partitions().is_empty() => return Ok(Some(t.partitions().len() as i32)),
            other => {
                if std::time::Instant::now() > deadline {
                    return Err(KafkaIoError::Unreachable(format!(
                        "metadata of {topic} incomplete after {timeout:?}: {other:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Creates every topic in `specs` that does not exist and checks the ones that do.
pub fn ensure_topics(config: &ClientConfig, specs: &[TopicSpec], timeout: Duration) -> Result<(), KafkaIoError> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| KafkaIoError::Setup(e.to_string()))?;
    let mut missing = Vec::new();
    for spec in specs {
        match partition_count(config, &spec.name, timeout)? {
            None => missing.push(spec),
            Some(n) if spec.exact_partitions && n != spec.partitions => {
                return Err(KafkaIoError::Topic {
                    topic: spec.name.clone(),
                    reason: format!("has {n} partitions but needs {} (one per input partition)", spec.partitions),
                });
            }
            Some(_) => {}
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|spec| {
            let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication));
            for (k, v) in &spec.configs {
                topic = topic.set(k, v);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = futures_executor::block_on(admin.create_topics(&new, &options)).map_err(unreachable)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code @ (RDKafkaErrorCode::RequestTimedOut | RDKafkaErrorCode::NotController))) => {
                return Err(KafkaIoError::Unreachable(format!("creating {topic}: {code}")));
            }
            Err((topic, code)) => return Err(KafkaIoError::Topic { topic, reason: format!("cannot create: {code}") }),
        }
    }
    Ok(())
}
