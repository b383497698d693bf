//! The application's group: which host runs which task, and which hosts keep
//! standby copies of which task's stores.
//!
//! Every host of an application is a static member of the application's
//! consumer group (Kafka's classic group protocol, protocol type `consumer`,
//! so Kafka's tools list the members and their partitions). librdkafka joins
//! groups only with its built-in assignors, which know partitions, not tasks,
//! standbys or warm state; so Weir joins the group itself (`member`, over
//! `wire`) and the group's leader places tasks with Weir's [`assignor`] —
//! Kafka Streams' design before its broker-side protocol. Kafka still decides
//! who is in the group (sessions, generations) and fences a host that was
//! dropped: a transaction's offsets carry the member's generation.
//!
//! The engine sees a [`Membership`]: it takes [`Update`]s (tasks to run and to
//! keep warm, or the loss of everything), says when it has applied one, and
//! commits with the member's current [`Identity`].

pub mod assignor;
pub mod codec;
mod fence;
mod member;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

pub use codec::HostTasks;
pub use fence::fence;

use crate::task::TaskId;

/// What went wrong in the group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A broker could not be reached or dropped the connection.
    #[error("broker {broker}: {source}")]
    Io {
        /// The broker's address.
        broker: String,
        /// What happened.
        source: std::io::Error,
    },
    /// The broker answered a request with an error.
    #[error("{api} answered {error} ({code})")]
    Broker {
        /// The request.
        api: &'static str,
        /// Kafka's error code.
        code: i16,
        /// Its name.
        error: String,
    },
    /// The broker does not speak a version of a request Weir needs.
    #[error("{api} is not possible: {reason}")]
    Unsupported {
        /// The request.
        api: &'static str,
        /// Why.
        reason: String,
    },
    /// A message could not be encoded or decoded.
    #[error("group protocol: {0}")]
    Protocol(String),
    /// The group cannot be joined as configured; joining again would not help.
    #[error("{0}")]
    Refused(String),
}

impl GroupError {
    fn broker(api: &'static str, code: i16) -> Self {
        let error = ResponseError::try_from_code(code).map_or_else(|| "no error".to_owned(), |e| format!("{e:?}"));
        Self::Broker { api, code, error }
    }

    /// The Kafka error code, if the broker answered with one.
    fn code(&self) -> Option<i16> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How a host joins its application's group.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The group: the application id.
    pub group: String,
    /// This host's static identity in the group.
    pub instance: String,
    /// The client id the broker sees.
    pub client_id: String,
    /// Without a heartbeat for this long, the group drops the host.
    pub session_timeout: Duration,
    /// How long a rebalance waits for members to join.
    pub rebalance_timeout: Duration,
    /// How often the host tells the group it lives (and learns of rebalances).
    pub heartbeat_interval: Duration,
    /// Standby copies per stateful task.
    pub standbys: usize,
    /// A stateful task moves to a host whose copy is at most this many
    /// changelog records behind its owner's; until then that host warms one up.
    pub acceptable_lag: i64,
    /// This host's admin API, told to the others.
    pub admin: Option<String>,
}

/// The tasks of the application.
#[derive(Debug, Clone, Default)]
pub struct Space {
    /// Every task.
    pub tasks: Vec<TaskId>,
    /// The tasks with stores (the ones standbys are kept of).
    pub stateful: BTreeSet<TaskId>,
    /// Per sub-topology, the topics its tasks read (shown to Kafka's tools).
    pub inputs: Vec<Vec<String>>,
}

/// A generation's tasks for this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// The group's generation that made it.
    pub generation: i32,
    /// Tasks to run.
    pub active: BTreeSet<TaskId>,
    /// Tasks to keep standby copies of.
    pub standby: BTreeSet<TaskId>,
    /// Some standbys warm up tasks this host is to take: ask for another
    /// round ([`Membership::rejoin`]) once they are within the acceptable lag.
    pub warming: bool,
    /// Every host's tasks.
    pub group: Vec<HostTasks>,
}

/// What changed in the group for this host since it last looked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// The host was dropped from the group: its tasks may run elsewhere already,
    /// so nothing may be committed for them.
    pub lost: bool,
    /// The newest assignment, if there is one not taken yet.
    pub assignment: Option<Assignment>,
}

/// Who commits: the group's generation and this member, for a transaction's
/// offsets (the broker refuses them from a member of an older generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The group (the application id).
    pub group: String,
    /// The group's generation.
    pub generation: i32,
    /// The member id the coordinator gave this host.
    pub member_id: String,
    /// This host's static identity.
    pub instance: String,
}

/// The group as this host sees it, for the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    /// The group (the application id).
    pub group: String,
    /// This host's static identity.
    pub instance: String,
    /// The member id the coordinator gave this host.
    pub member_id: String,
    /// The group's generation (-1: not joined yet).
    pub generation: i32,
    /// Whether this host placed the tasks of the generation.
    pub leader: bool,
    /// The coordinating broker.
    pub coordinator: Option<String>,
    /// Every host's tasks, as the leader placed them.
    pub hosts: Vec<HostTasks>,
    /// Generations this host joined.
    pub rebalances: u64,
    /// The last thing that went wrong, until the next join.
    pub last_error: Option<String>,
}

/// What one task does on this host, for the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TaskView {
    /// The task, `<sub-topology>_<partition>`.
    pub task: String,
    /// `active`, `restoring` or `standby`.
    pub role: &'static str,
    /// Records of its inputs not processed yet (active), or changelog records
    /// not read yet (restoring, standby), by the last offsets the host heard of.
    pub lag: Option<i64>,
    /// Changelog records read into its stores since it was given to this host.
    pub restored: u64,
}

/// The group and this host's tasks, for the admin API and `weir status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupView {
    /// The group as this host sees it.
    pub group: GroupStatus,
    /// This host's tasks.
    pub tasks: Vec<TaskView>,
}

/// A pipeline's [`GroupView`], shared with the admin API.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<GroupView>>);

impl Board {
    /// The latest view.
    pub fn view(&self) -> GroupView {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Replaces the view.
    pub fn set(&self, view: GroupView) {
        if let Ok(mut v) = self.0.lock() {
            *v = view;
        }
    }
}

#[derive(Default)]
struct State {
    update: Update,
    /// The generation of the last assignment handed out.
    published: i32,
    /// The generation the last JoinGroup answer formed (ahead of `identity`'s
    /// from then until this host's place in it is known).
    joined: i32,
    /// The engine's report: what it runs (as of generation `applied`) and how
    /// far its stores are.
    owned: BTreeSet<TaskId>,
    applied: i32,
    positions: BTreeMap<TaskId, i64>,
    identity: Option<Identity>,
    status: GroupStatus,
    fatal: Option<GroupError>,
    /// The engine asks for another round (its warm-ups are warm).
    rejoin: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
    /// Set by [`Membership::leave`]: leave the group on the way out.
    leave: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sleeps until woken or `until`.
    fn sleep_until(&self, until: Instant) {
        let guard = self.lock();
        let wait = until.saturating_duration_since(Instant::now());
        if !wait.is_zero() && !self.stop.load(Ordering::Acquire) {
            let _ = self.wake.wait_timeout(guard, wait);
        }
    }
}

/// A host's membership of its application's group, kept by a thread of its own.
pub struct Membership {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    client_id: String,
    /// A connection to the coordinator for offset commits outside transactions.
    commits: Mutex<Option<wire::Connection>>,
}

impl Membership {
    /// Starts joining the group.
    pub fn join(settings: Settings, space: Space) -> Result<Self, GroupError> {
        let mut state = State { published: -1, applied: -1, joined: -1, ..State::default() };
        state.status.group = settings.group.clone();
        state.status.instance = settings.instance.clone();
        state.status.generation = -1;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            leave: AtomicBool::new(false),
        });
        let client_id = settings.client_id.clone();
        let thread = std::thread::Builder::new()
            .name("weir-group".into())
            .spawn({
                let shared = shared.clone();
                move || member::Member::new(shared, settings, space).run()
            })
            .map_err(|e| GroupError::Protocol(format!("starting the group thread: {e}")))?;
        Ok(Self { shared, thread: Some(thread), client_id, commits: Mutex::new(None) })
    }

    /// What changed since the last call (nothing: `None`).
    pub fn take_update(&self) -> Option<Update> {
        let mut state = self.shared.lock();
        let update = std::mem::take(&mut state.update);
        (update.lost || update.assignment.is_some()).then_some(update)
    }

    /// The engine runs `owned` as of `generation` (the one it last took), and
    /// its stores are as far as `positions`.
    pub fn applied(&self, generation: i32, owned: &BTreeSet<TaskId>, positions: BTreeMap<TaskId, i64>) {
        let mut state = self.shared.lock();
        if generation != state.published || state.update.lost {
            // Overtaken: a newer assignment (or the loss) is waiting to be taken.
            return;
        }
        state.applied = generation;
        state.owned = owned.clone();
        state.positions = positions;
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Asks the group for another round (a probing rebalance: warm-ups are
    /// warm, so the tasks they were for can move here now).
    pub fn rejoin(&self) {
        self.shared.lock().rejoin = true;
        self.shared.wake.notify_all();
    }

    /// How far the stores of tasks held locally are, for the next rebalance.
    pub fn report_positions(&self, positions: BTreeMap<TaskId, i64>) {
        self.shared.lock().positions = positions;
    }

    /// Who commits now; `None` while not in the group.
    pub fn identity(&self) -> Option<Identity> {
        self.shared.lock().identity.clone()
    }

    /// Whether a new generation has formed and this host's place in it is not
    /// known yet: offsets committed now, under the last generation, would be
    /// refused (`ILLEGAL_GENERATION`) and the transaction carrying them aborted.
    pub fn between_generations(&self) -> bool {
        let state = self.shared.lock();
        state.joined > state.identity.as_ref().map_or(-1, |i| i.generation)
    }

    /// Commits `offsets` — (topic, partition, next offset, metadata) — as this
    /// member, outside any transaction (at-least-once).
    pub fn commit_offsets(&self, offsets: &[(String, i32, i64, String)]) -> Result<(), GroupError> {
        let identity = self.identity().ok_or_else(|| GroupError::Protocol("not in the group yet".into()))?;
        let coordinator = self.shared.lock().status.coordinator.clone();
        let coordinator = coordinator.ok_or_else(|| GroupError::Protocol("no coordinator yet".into()))?;
        let mut connection = self.commits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if connection.as_ref().is_none_or(|c| c.broker() != coordinator) {
            *connection = Some(wire::Connection::open(&coordinator, &self.client_id, member::REQUEST_WAIT)?);
        }
        let Some(open) = connection.as_mut() else { return Ok(()) };
        let result = member::commit_offsets(open, &identity, offsets);
        if result.is_err() {
            *connection = None;
        }
        result
    }

    /// The group as this host sees it.
    pub fn status(&self) -> GroupStatus {
        self.shared.lock().status.clone()
    }

    /// An error that stops the pipeline (the group refused this host), once.
    pub fn take_fatal(&self) -> Option<GroupError> {
        self.shared.lock().fatal.take()
    }

    /// Leaves the group at once (its tasks go to the other hosts without
    /// waiting for the session to expire), waiting at most `within`.
    pub fn leave(mut self, within: Duration) {
        self.shared.leave.store(true, Ordering::Release);
        self.stop(within);
    }

    fn stop(&mut self, within: Duration) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + within;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!("the group thread did not finish in time; leaving it behind");
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Not leaving: a host that stops without `leave` (a failure) keeps its
        // place until its session expires, as a static member does.
        self.stop(Duration::from_secs(2));
    }
}
