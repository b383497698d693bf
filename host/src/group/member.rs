//! The group member's thread: finds the coordinator, joins, syncs (placing the
//! tasks when it leads), heartbeats, rejoins when the group rebalances or
//! after letting tasks go, and leaves on a clean stop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, OffsetCommitRequest,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::assignor::{self, MemberView};
use super::codec::{self, HostTasks, Report};
use super::wire::Connection;
use super::{Assignment, GroupError, Identity, Settings, Shared, Space};

/// Weir's protocol name inside the consumer protocol type.
const PROTOCOL: &str = "weir";
const PROTOCOL_TYPE: &str = "consumer";

/// How long a connection or a short request may take.
pub(super) const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// A host warming tasks up asks for another round at least this often, in
/// case its copies never get within the acceptable lag by its own count.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Longest pause between attempts while the coordinator is away.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

// Kafka error codes the member acts on.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const MEMBER_ID_REQUIRED: i16 = 79;
const GROUP_MAX_SIZE_REACHED: i16 = 81;
const FENCED_INSTANCE_ID: i16 = 82;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

pub(super) struct Member {
    shared: Arc<Shared>,
    settings: Settings,
    space: Space,
    coordinator: Option<Connection>,
    member_id: String,
    generation: i32,
    /// Join (again) before anything else.
    need_join: bool,
    /// Join again once the engine has applied this generation (it let tasks go).
    rejoin_after: Option<i32>,
    /// Join again then (warm-ups may be warm by then).
    probe_at: Option<Instant>,
    next_heartbeat: Instant,
    backoff: Duration,
}

impl Member {
    pub(super) fn new(shared: Arc<Shared>, settings: Settings, space: Space) -> Self {
        Self {
            shared,
            settings,
            space,
            coordinator: None,
            member_id: String::new(),
            generation: -1,
            need_join: true,
            rejoin_after: None,
            probe_at: None,
            next_heartbeat: Instant::now(),
            backoff: Duration::ZERO,
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    pub(super) fn run(mut self) {
        while !self.stopping() {
            if let Err(e) = self.step() {
                self.trouble(e);
            }
        }
        if self.shared.leave.load(Ordering::Acquire) {
            self.leave();
        }
    }

    /// One step: connect, join, or heartbeat, then wait for the next.
    fn step(&mut self) -> Result<(), GroupError> {
        if self.coordinator.is_none() {
            self.discover()?;
        }
        if let Some(generation) = self.rejoin_after
            && self.shared.lock().applied >= generation
        {
            self.rejoin_after = None;
            self.need_join = true;
        }
        if std::mem::take(&mut self.shared.lock().rejoin) || self.probe_at.is_some_and(|at| Instant::now() >= at) {
            self.probe_at = None;
            self.need_join = true;
        }
        if self.need_join {
            self.join()?;
            self.backoff = Duration::ZERO;
            return Ok(());
        }
        if Instant::now() >= self.next_heartbeat {
            self.heartbeat()?;
            self.backoff = Duration::ZERO;
        }
        self.shared.sleep_until(self.next_heartbeat);
        Ok(())
    }

    /// After a failed step: a refusal stops the member (the pipeline reports
    /// it); anything else is tried again after a pause.
    fn trouble(&mut self, error: GroupError) {
        match error {
            GroupError::Refused(_) | GroupError::Unsupported { .. } => {
                tracing::error!(group = %self.settings.group, error = %error, "the group refused this host");
                let mut state = self.shared.lock();
                state.status.last_error = Some(error.to_string());
                state.fatal = Some(error);
                drop(state);
                self.shared.stop.store(true, Ordering::Release);
            }
            error => {
                if matches!(error, GroupError::Io { .. } | GroupError::Protocol(_))
                    || matches!(
                        error.code(),
                        Some(NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS)
                    )
                {
                    self.coordinator = None;
                }
                tracing::debug!(group = %self.settings.group, error = %error, "group: trying again");
                self.shared.lock().status.last_error = Some(error.to_string());
                self.backoff = (self.backoff * 2).clamp(Duration::from_millis(50), MAX_BACKOFF);
                self.shared.sleep_until(Instant::now() + self.backoff);
            }
        }
    }

    fn discover(&mut self) -> Result<(), GroupError> {
        let mut any = Connection::bootstrap(&self.settings.bootstrap, &self.settings.client_id, REQUEST_WAIT)?;
        let address = any.find_coordinator(&self.settings.group, 0, REQUEST_WAIT)?;
        let coordinator = if address == any.broker() {
            any
        } else {
            Connection::open(&address, &self.settings.client_id, REQUEST_WAIT)?
        };
        self.shared.lock().status.coordinator = Some(address);
        self.coordinator = Some(coordinator);
        Ok(())
    }

    fn connection(&mut self) -> Result<&mut Connection, GroupError> {
        self.coordinator.as_mut().ok_or_else(|| GroupError::Protocol("no coordinator".into()))
    }

    /// The group dropped this member: its tasks may run elsewhere already.
    fn lost(&mut self, why: &str) {
        tracing::warn!(group = %self.settings.group, why, "this host was dropped from the group: its tasks are given up");
        let mut state = self.shared.lock();
        state.update.lost = true;
        state.update.assignment = None;
        state.owned.clear();
        state.identity = None;
        state.joined = -1;
        drop(state);
        self.generation = -1;
        self.rejoin_after = None;
        self.need_join = true;
    }

    fn join(&mut self) -> Result<(), GroupError> {
        let (owned, generation, positions) = {
            let state = self.shared.lock();
            (state.owned.clone(), state.applied, state.positions.clone())
        };
        let report = Report::new(&self.settings.instance, self.settings.admin.clone(), &owned, generation, positions);
        let metadata = codec::subscription(&report, &self.space.inputs)?;
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(s(&self.settings.group)))
            .with_session_timeout_ms(millis(self.settings.session_timeout))
            .with_rebalance_timeout_ms(millis(self.settings.rebalance_timeout))
            .with_member_id(s(&self.member_id))
            .with_group_instance_id(Some(s(&self.settings.instance)))
            .with_protocol_type(s(PROTOCOL_TYPE))
            .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(s(PROTOCOL)).with_metadata(metadata)]);
        let wait = self.settings.rebalance_timeout + REQUEST_WAIT;
        let started = Instant::now();
        let (_, response) = self.connection()?.send(&request, wait)?;
        match response.error_code {
            0 => {}
            MEMBER_ID_REQUIRED => {
                self.member_id = response.member_id.to_string();
                return Ok(());
            }
            UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                self.lost("unknown member at join");
                return Ok(());
            }
            REBALANCE_IN_PROGRESS => return Ok(()),
            code => return Err(self.refusal("JoinGroup", code)),
        }
        self.member_id = response.member_id.to_string();
        // From now on the group refuses commits of the last generation.
        self.shared.lock().joined = response.generation_id;
        let leader = response.leader.as_str() == response.member_id.as_str();
        let assignments = if leader { self.place(&response)? } else { Vec::new() };
        let request = SyncGroupRequest::default()
            .with_group_id(GroupId(s(&self.settings.group)))
            .with_generation_id(response.generation_id)
            .with_member_id(s(&self.member_id))
            .with_group_instance_id(Some(s(&self.settings.instance)))
            .with_protocol_type(Some(s(PROTOCOL_TYPE)))
            .with_protocol_name(Some(s(PROTOCOL)))
            .with_assignments(assignments);
        let (_, synced) = self.connection()?.send(&request, wait)?;
        match synced.error_code {
            0 => {}
            REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => return Ok(()),
            UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                self.lost("unknown member at sync");
                return Ok(());
            }
            code => return Err(self.refusal("SyncGroup", code)),
        }
        let given = codec::given(&synced.assignment)?;
        self.generation = response.generation_id;
        self.need_join = false;
        self.rejoin_after = given.rejoin.then_some(self.generation);
        self.probe_at = given.warmup.then(|| Instant::now() + PROBE_EVERY);
        self.next_heartbeat = Instant::now() + self.settings.heartbeat_interval;
        // A leader running another version of the topology may name tasks this
        // host does not have: they are not run here (and said so).
        let known = |tasks: BTreeSet<crate::task::TaskId>| -> BTreeSet<crate::task::TaskId> {
            let (ours, unknown): (BTreeSet<_>, BTreeSet<_>) =
                tasks.into_iter().partition(|t| self.space.tasks.contains(t));
            if !unknown.is_empty() {
                tracing::warn!(group = %self.settings.group, ?unknown, "the leader gave tasks this host's topology does not have (hosts running different plugin versions?); they are not run here");
            }
            ours
        };
        let assignment = Assignment {
            generation: self.generation,
            active: known(given.active()),
            standby: known(given.standby()),
            warming: given.warmup,
            group: given.group.clone(),
        };
        tracing::info!(
            group = %self.settings.group,
            generation = self.generation,
            leader,
            active = assignment.active.len(),
            standby = assignment.standby.len(),
            revoking = given.rejoin,
            took_ms = started.elapsed().as_millis() as u64,
            "joined the group"
        );
        let mut state = self.shared.lock();
        state.published = self.generation;
        state.update.assignment = Some(assignment);
        state.identity = Some(Identity {
            group: self.settings.group.clone(),
            generation: self.generation,
            member_id: self.member_id.clone(),
            instance: self.settings.instance.clone(),
        });
        state.status.member_id = self.member_id.clone();
        state.status.generation = self.generation;
        state.status.leader = leader;
        state.status.hosts = given.group;
        state.status.rebalances += 1;
        state.status.last_error = None;
        Ok(())
    }

    /// As the leader: every member's tasks, from their reports.
    fn place(&self, joined: &JoinGroupResponse) -> Result<Vec<SyncGroupRequestAssignment>, GroupError> {
        let mut members: Vec<(String, String, Report)> = joined
            .members
            .iter()
            .map(|m| {
                let report = codec::report(&m.metadata).unwrap_or_else(|e| {
                    tracing::warn!(member = %m.member_id, error = %e, "a member's report is unreadable: it is placed as empty");
                    Report::default()
                });
                let name = m.group_instance_id.as_ref().map_or_else(|| m.member_id.to_string(), ToString::to_string);
                (name, m.member_id.to_string(), report)
            })
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let views: Vec<MemberView> = members
            .iter()
            .map(|(_, _, r)| MemberView {
                owned: r.owned(),
                generation: r.generation,
                positions: r
                    .positions
                    .iter()
                    .map(|&(sub, partition, at)| (crate::task::TaskId { sub, partition }, at))
                    .collect(),
            })
            .collect();
        let placement = assignor::assign(
            &self.space.tasks,
            &self.space.stateful,
            &views,
            self.settings.standbys,
            self.settings.acceptable_lag,
        );
        let group: Vec<HostTasks> = members
            .iter()
            .enumerate()
            .map(|(i, (name, _, r))| HostTasks {
                host: name.clone(),
                admin: r.admin.clone(),
                active: placement.active[i].iter().map(|t| (t.sub, t.partition)).collect(),
                standby: placement.standby[i].iter().map(|t| (t.sub, t.partition)).collect(),
            })
            .collect();
        let moving: BTreeSet<usize> = (0..members.len()).filter(|&i| placement.revoking[i]).collect();
        let warming = placement.warming.iter().filter(|&&w| w).count();
        tracing::info!(members = members.len(), revoking = moving.len(), warming, "placed the group's tasks");
        members
            .iter()
            .enumerate()
            .map(|(i, (_, member_id, _))| {
                let given = codec::Given::new(
                    &placement.active[i],
                    &placement.standby[i],
                    placement.revoking[i],
                    placement.warming[i],
                    group.clone(),
                );
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(s(member_id))
                    .with_assignment(codec::assignment(&given, &self.space.inputs)?))
            })
            .collect()
    }

    fn heartbeat(&mut self) -> Result<(), GroupError> {
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(s(&self.settings.group)))
            .with_generation_id(self.generation)
            .with_member_id(s(&self.member_id))
            .with_group_instance_id(Some(s(&self.settings.instance)));
        let wait = self.settings.session_timeout.max(REQUEST_WAIT);
        let (_, response) = self.connection()?.send(&request, wait)?;
        self.next_heartbeat = Instant::now() + self.settings.heartbeat_interval;
        match response.error_code {
            0 => Ok(()),
            REBALANCE_IN_PROGRESS => {
                self.need_join = true;
                Ok(())
            }
            ILLEGAL_GENERATION => {
                self.lost("a newer generation formed without this host");
                Ok(())
            }
            UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                self.lost("the group no longer knows this host (its session expired)");
                Ok(())
            }
            code => Err(self.refusal("Heartbeat", code)),
        }
    }

    /// An error answer: a refusal that joining again cannot mend, or a
    /// passing one to try again.
    fn refusal(&mut self, api: &'static str, code: i16) -> GroupError {
        if code == FENCED_INSTANCE_ID {
            self.lost("fenced");
        }
        let group = &self.settings.group;
        let instance = &self.settings.instance;
        let refused = |why: String| GroupError::Refused(format!("{api} for group {group:?}: {why}"));
        match code {
            FENCED_INSTANCE_ID => refused(format!(
                "another host joined with this host's instance id {instance:?}; give each host its own \
                 (instance_id, or a state directory of its own)"
            )),
            INVALID_SESSION_TIMEOUT => refused(format!(
                "the broker refuses a session timeout of {} ms (its group.min.session.timeout.ms / \
                 group.max.session.timeout.ms); set session_timeout_ms within them",
                self.settings.session_timeout.as_millis()
            )),
            INCONSISTENT_GROUP_PROTOCOL => refused(
                "another member of the group speaks another protocol (a consumer that is not Weir, or a Weir \
                 older than its group membership): stop it or give this application another application_id"
                    .into(),
            ),
            GROUP_MAX_SIZE_REACHED => refused("the group is full (the broker's group.max.size)".into()),
            GROUP_AUTHORIZATION_FAILED => refused("not authorised to join the group".into()),
            code => GroupError::broker(api, code),
        }
    }

    /// Leaves the group so its tasks move at once.
    fn leave(&mut self) {
        if self.coordinator.is_none() && self.discover().is_err() {
            tracing::warn!(group = %self.settings.group, "could not reach the coordinator to leave the group");
            return;
        }
        let identity = MemberIdentity::default()
            .with_member_id(s(&self.member_id))
            .with_group_instance_id(Some(s(&self.settings.instance)));
        let mut request = LeaveGroupRequest::default().with_group_id(GroupId(s(&self.settings.group)));
        // Versions 3 and later name static members; older ones only a member id.
        request = match self.connection().and_then(|c| c.version::<LeaveGroupRequest>()) {
            Ok(v) if v >= 3 => request.with_members(vec![identity]),
            _ => request.with_member_id(s(&self.member_id)),
        };
        match self.connection().and_then(|c| c.send(&request, REQUEST_WAIT)) {
            Ok((_, r)) if r.error_code == 0 => {
                tracing::info!(group = %self.settings.group, "left the group: its tasks move to the other hosts now");
            }
            Ok((_, r)) => {
                let error = GroupError::broker("LeaveGroup", r.error_code);
                tracing::warn!(group = %self.settings.group, %error, "could not leave the group: its tasks move when its session expires");
            }
            Err(error) => {
                tracing::info!(group = %self.settings.group, %error, "could not leave the group: its tasks move when its session expires")
            }
        }
    }
}

/// Commits `offsets` — (topic, partition, next offset, metadata) — as `who`.
pub(super) fn commit_offsets(
    connection: &mut Connection,
    who: &Identity,
    offsets: &[(String, i32, i64, String)],
) -> Result<(), GroupError> {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset, metadata) in offsets {
        let entry = OffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_metadata(Some(s(metadata)));
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(entry),
            None => topics
                .push(OffsetCommitRequestTopic::default().with_name(TopicName(s(topic))).with_partitions(vec![entry])),
        }
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(&who.group)))
        .with_generation_id_or_member_epoch(who.generation)
        .with_member_id(s(&who.member_id))
        .with_group_instance_id(Some(s(&who.instance)))
        .with_topics(topics);
    let (_, response) = connection.send(&request, REQUEST_WAIT)?;
    let failed = response.topics.iter().flat_map(|t| t.partitions.iter()).find(|p| p.error_code != 0);
    match failed {
        Some(p) => Err(GroupError::broker("OffsetCommit", p.error_code)),
        None => Ok(()),
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
