//! What members tell the leader and the leader tells them, inside Kafka's
//! consumer protocol (so Kafka's tools show the group's members and their
//! partitions): the subscription carries a member's [`Report`], the assignment
//! its [`Given`] tasks and the whole group's placement.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedPartitions;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use serde::{Deserialize, Serialize};

use super::GroupError;
use crate::task::TaskId;

/// The version of Weir's own part of the messages.
const VERSION: u32 = 1;
const SUBSCRIPTION_VERSION: i16 = 1;
const ASSIGNMENT_VERSION: i16 = 1;

/// A task as written in the messages: (sub-topology, partition).
pub type Wire = (usize, i32);

fn wire(tasks: &BTreeSet<TaskId>) -> Vec<Wire> {
    tasks.iter().map(|t| (t.sub, t.partition)).collect()
}

fn unwire(tasks: &[Wire]) -> BTreeSet<TaskId> {
    tasks.iter().map(|&(sub, partition)| TaskId { sub, partition }).collect()
}

/// What a member reports when it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Weir's version of this message.
    pub v: u32,
    /// The host's instance id.
    pub host: String,
    /// Its admin API, if it serves one.
    pub admin: Option<String>,
    /// The tasks it runs.
    pub owned: Vec<Wire>,
    /// The generation that gave them.
    pub generation: i32,
    /// How far its local copy of each task's stores is (sum of changelog positions).
    pub positions: Vec<(usize, i32, i64)>,
}

impl Report {
    /// A report of `owned` tasks (given in `generation`) and store `positions`.
    pub fn new(
        host: &str,
        admin: Option<String>,
        owned: &BTreeSet<TaskId>,
        generation: i32,
        positions: impl IntoIterator<Item = (TaskId, i64)>,
    ) -> Self {
        Self {
            v: VERSION,
            host: host.to_owned(),
            admin,
            owned: wire(owned),
            generation,
            positions: positions.into_iter().map(|(t, at)| (t.sub, t.partition, at)).collect(),
        }
    }

    /// The tasks it runs.
    pub fn owned(&self) -> BTreeSet<TaskId> {
        unwire(&self.owned)
    }
}

/// Where a host's tasks are, as every member learns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTasks {
    /// The host's instance id.
    pub host: String,
    /// Its admin API, if it serves one.
    pub admin: Option<String>,
    /// The tasks it runs.
    pub active: Vec<Wire>,
    /// The tasks it keeps standby copies of.
    pub standby: Vec<Wire>,
}

/// What the leader gives a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Given {
    /// Weir's version of this message.
    pub v: u32,
    /// The tasks to run.
    pub active: Vec<Wire>,
    /// The tasks to keep standby copies of.
    pub standby: Vec<Wire>,
    /// Let go of the tasks no longer given, then join again.
    pub rejoin: bool,
    /// Some standbys are warm-ups of tasks to take: join again once they are warm.
    #[serde(default)]
    pub warmup: bool,
    /// The whole group's placement.
    pub group: Vec<HostTasks>,
}

impl Given {
    /// The tasks to run.
    pub fn active(&self) -> BTreeSet<TaskId> {
        unwire(&self.active)
    }

    /// The tasks to keep standby copies of.
    pub fn standby(&self) -> BTreeSet<TaskId> {
        unwire(&self.standby)
    }

    /// A placement for one member.
    pub fn new(
        active: &BTreeSet<TaskId>,
        standby: &BTreeSet<TaskId>,
        rejoin: bool,
        warmup: bool,
        group: Vec<HostTasks>,
    ) -> Self {
        Self { v: VERSION, active: wire(active), standby: wire(standby), rejoin, warmup, group }
    }
}

/// `topics[sub]` partition `p` for every task: the partitions Kafka's tools show.
fn partitions_of(tasks: &BTreeSet<TaskId>, inputs: &[Vec<String>]) -> Vec<(String, Vec<i32>)> {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = std::collections::BTreeMap::new();
    for t in tasks {
        for topic in inputs.get(t.sub).into_iter().flatten() {
            by_topic.entry(topic.clone()).or_default().push(t.partition);
        }
    }
    by_topic.into_iter().collect()
}

fn name(topic: String) -> TopicName {
    TopicName(StrBytes::from_string(topic))
}

fn json<T: Serialize>(value: &T) -> Result<Bytes, GroupError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| GroupError::Protocol(format!("encoding: {e}")))
}

/// A subscription to `inputs` (the topics of every sub-topology) carrying `report`.
pub fn subscription(report: &Report, inputs: &[Vec<String>]) -> Result<Bytes, GroupError> {
    let topics: BTreeSet<&String> = inputs.iter().flatten().collect();
    let owned = partitions_of(&report.owned(), inputs)
        .into_iter()
        .map(|(topic, partitions)| OwnedPartitions::default().with_topic(name(topic)).with_partitions(partitions))
        .collect();
    let message = ConsumerProtocolSubscription::default()
        .with_topics(topics.into_iter().map(|t| StrBytes::from_string(t.clone())).collect())
        .with_user_data(Some(json(report)?))
        .with_owned_partitions(owned);
    embed(&message, SUBSCRIPTION_VERSION)
}

/// The report inside a member's subscription.
pub fn report(metadata: &[u8]) -> Result<Report, GroupError> {
    let (version, mut body) = unembed(metadata)?;
    let message = ConsumerProtocolSubscription::decode(&mut body, version)
        .map_err(|e| GroupError::Protocol(format!("a member's subscription: {e}")))?;
    let data = message.user_data.ok_or_else(|| {
        GroupError::Protocol("a member's subscription carries no Weir report (a consumer that is not Weir?)".into())
    })?;
    serde_json::from_slice(&data).map_err(|e| GroupError::Protocol(format!("a member's report: {e}")))
}

/// An assignment of `given` (partitions of its active tasks for the tools).
pub fn assignment(given: &Given, inputs: &[Vec<String>]) -> Result<Bytes, GroupError> {
    let assigned = partitions_of(&given.active(), inputs)
        .into_iter()
        .map(|(topic, partitions)| AssignedPartitions::default().with_topic(name(topic)).with_partitions(partitions))
        .collect();
    let message =
        ConsumerProtocolAssignment::default().with_assigned_partitions(assigned).with_user_data(Some(json(given)?));
    embed(&message, ASSIGNMENT_VERSION)
}

/// The tasks given in an assignment (none if it is empty: the group had no leader's word for it).
pub fn given(assignment: &[u8]) -> Result<Given, GroupError> {
    if assignment.is_empty() {
        return Ok(Given { v: VERSION, ..Given::default() });
    }
    let (version, mut body) = unembed(assignment)?;
    let message = ConsumerProtocolAssignment::decode(&mut body, version)
        .map_err(|e| GroupError::Protocol(format!("the assignment: {e}")))?;
    let data = message.user_data.ok_or_else(|| GroupError::Protocol("the assignment carries no tasks".into()))?;
    serde_json::from_slice(&data).map_err(|e| GroupError::Protocol(format!("the assignment's tasks: {e}")))
}

fn embed<M: Encodable>(message: &M, version: i16) -> Result<Bytes, GroupError> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message.encode(&mut buf, version).map_err(|e| GroupError::Protocol(format!("encoding: {e}")))?;
    Ok(buf.freeze())
}

fn unembed(bytes: &[u8]) -> Result<(i16, Bytes), GroupError> {
    let mut bytes = Bytes::copy_from_slice(bytes);
    if bytes.len() < 2 {
        return Err(GroupError::Protocol("a group message of less than 2 bytes".into()));
    }
    let version = bytes.get_i16();
    Ok((version, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_and_assignments_survive_the_consumer_protocol() {
        let t = |sub, partition| TaskId { sub, partition };
        let inputs = vec![vec!["trades".to_owned()], vec!["a".to_owned(), "b".to_owned()]];
        let owned: BTreeSet<TaskId> = [t(0, 1), t(1, 2)].into();
        let r = Report::new("host-1", Some("127.0.0.1:7070".into()), &owned, 7, [(t(0, 1), 42)]);
        let bytes = subscription(&r, &inputs).unwrap();
        assert_eq!(report(&bytes).unwrap(), r);
        let g = Given::new(&owned, &[t(0, 3)].into(), true, false, vec![]);
        let bytes = assignment(&g, &inputs).unwrap();
        assert_eq!(given(&bytes).unwrap(), g);
        assert!(given(&[]).unwrap().active().is_empty());
        assert!(report(&[0]).is_err());
    }
}
