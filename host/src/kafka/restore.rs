//! Restores a task's store from its changelog partition, from the store's
//! checkpoint to the end, reading committed records only under exactly-once.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{KafkaIoError, set_default};
use crate::state::Change;

/// Give up a restore that makes no progress for this long.
const STALL: Duration = Duration::from_secs(60);
/// Changes applied to the store per write batch.
const CHUNK: usize = 10_000;

/// What a restore did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Restored {
    /// Records applied.
    pub records: u64,
    /// The offset after the last record read, if any was.
    pub next_offset: Option<i64>,
}

/// Reads `topic[partition]` from `from` (or the beginning) to its end, handing
/// changes to `apply` in chunks together with the offset after the chunk.
pub fn restore(
    base: &ClientConfig,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    read_committed: bool,
    mut apply: impl FnMut(Vec<Change>, i64) -> Result<(), KafkaIoError>,
) -> Result<Restored, KafkaIoError> {
    let mut config = base.clone();
    config.set("enable.auto.commit", "false");
    config.set("enable.partition.eof", "true");
    config.set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" });
    set_default(&mut config, "fetch.queue.backoff.ms", "0");
    set_default(&mut config, "group.id", "weir-restore");
    let consumer: BaseConsumer = config.create().map_err(|e| KafkaIoError::Setup(e.to_string()))?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
    let start = from.unwrap_or(low).max(low);
    if start >= high {
        return Ok(Restored::default());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;

    let mut restored = Restored::default();
    let mut chunk: Vec<Change> = Vec::new();
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                last_progress = Instant::now();
                restored.records += 1;
                restored.next_offset = Some(msg.offset() + 1);
                if let Some(key) = msg.key() {
                    chunk.push((key.to_vec(), msg.payload().map(<[u8]>::to_vec)));
                }
                if chunk.len() >= CHUNK {
                    apply(std::mem::take(&mut chunk), msg.offset() + 1)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.into()),
            None => {
                let position = consumer.position()?;
                let at = position.find_partition(topic, partition).and_then(|e| e.offset().to_raw());
                if at.is_some_and(|o| o >= high) {
                    break;
                }
                if last_progress.elapsed() > STALL {
                    return Err(KafkaIoError::Topic {
                        topic: topic.to_owned(),
                        reason: format!("restore of partition {partition} stalled at {at:?} (end {high})"),
                    });
                }
            }
        }
    }
    if let Some(next) = restored.next_offset {
        apply(chunk, next)?;
    }
    Ok(restored)
}
