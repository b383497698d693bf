//! Hot swap: which plugin version a pipeline runs, how a new one takes over at a
//! transaction boundary, and how a failing one is rolled back.
//!
//! [`Control`] is the handle the admin API holds: it checks a version against the
//! running one (the same stateful shape and topics; a state schema it can read, or an explicit reset),
//! instantiates it on the caller's thread, and hands it to the pipeline, which
//! switches at its next transaction boundary. A swapped-in version is on probation
//! for `swap_probation_ms` (and at least until its first commit): a plugin failure
//! then rolls back to the previous version instead of being contained.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::Topics;
use crate::config::RunConfig;
use crate::runtime::{GuestError, Instance, Plugin, PluginInfo, Worker};

/// A plugin version ready to take over: compiled and instantiated off the hot path.
pub(super) struct Staged {
    pub(super) label: String,
    pub(super) plugin: Plugin,
    pub(super) instance: Instance,
    /// Drop the stored state instead of migrating it.
    pub(super) reset_state: bool,
}

/// Why a swap was refused before it was staged.
#[derive(Debug, Error)]
pub enum SwapError {
    /// The new version would read the stores differently.
    #[error("version {label} is incompatible: {reason}")]
    Incompatible {
        /// The version.
        label: String,
        /// What differs.
        reason: String,
    },
    /// The new version cannot read the pipeline's state.
    #[error(
        "version {label} has state schema {schema} for store `{store}` and migrates from {migrates_from:?}, but \
         the pipeline's state is in schema {stored}: use a version that migrates from {stored}, or activate with \
         reset_state to drop the stored windows"
    )]
    StateSchema {
        /// The version.
        label: String,
        /// The store.
        store: String,
        /// Its state schema.
        schema: u32,
        /// What it migrates from.
        migrates_from: Vec<u32>,
        /// The schema the state is in.
        stored: u32,
    },
    /// Nothing to roll back to.
    #[error("no previous version to roll back to")]
    NoPrevious,
    /// The new version could not be instantiated.
    #[error("version {label} cannot be instantiated: {source}")]
    Instantiate {
        /// The version.
        label: String,
        /// Why.
        source: GuestError,
    },
    /// The pipeline is gone.
    #[error("the pipeline has stopped")]
    Stopped,
}

/// One completed or failed swap.
#[derive(Debug, Clone)]
pub struct SwapEvent {
    /// The version swapped from.
    pub from: String,
    /// The version swapped to.
    pub to: String,
    /// How long the pipeline thread paused for it.
    pub pause: Duration,
    /// Set if the new version failed and the pipeline rolled back.
    pub rolled_back: Option<String>,
    /// What happened to the stored state, if anything (migrated or reset).
    pub state: Option<String>,
}

/// What a pipeline reports about its plugin.
#[derive(Debug, Clone, Default)]
pub struct SwapStatus {
    /// Label of the active version.
    pub active: String,
    /// Label of the version before it, if any.
    pub previous: Option<String>,
    /// Every swap, in order.
    pub history: Vec<SwapEvent>,
    /// The last failure of a new version, if any.
    pub last_error: Option<String>,
    /// What the active version declared.
    pub active_info: Option<PluginInfo>,
    /// What the previous version declared.
    pub previous_info: Option<PluginInfo>,
}

/// Hot swap of a running pipeline's plugin.
#[derive(Clone)]
pub struct Control {
    pub(super) tx: Sender<ControlCommand>,
    pub(super) status: Arc<Mutex<SwapStatus>>,
    /// How the pipeline maps a version's logical topics to real ones.
    pub(super) cfg: Arc<RunConfig>,
}

pub(super) enum ControlCommand {
    Activate(Box<Staged>),
    Rollback { reset_state: bool },
}

/// Why `new` cannot take over from `old` in the pipeline configured by `cfg`, if
/// it cannot.
fn incompatibility(
    cfg: &RunConfig,
    label: &str,
    old: &PluginInfo,
    new: &PluginInfo,
    reset_state: bool,
) -> Option<SwapError> {
    let real = |s: &crate::topology::Shape| {
        let t = Topics::of(cfg, s);
        (t.sources, t.sinks)
    };
    if let Some(difference) = new.shape.swap_difference(&old.shape, real) {
        let reason = format!("{difference}; that is a new pipeline (a new application id), not a swap");
        return Some(SwapError::Incompatible { label: label.to_owned(), reason });
    }
    if reset_state {
        return None;
    }
    // Each store, found by name (the shapes matched), must read what is stored.
    old.shape.aggregations().find(|(_, o)| !new.reads_state(&o.store.name, o.store.schema)).map(|(_, o)| {
        let store = new.shape.store(&o.store.name);
        SwapError::StateSchema {
            label: label.to_owned(),
            store: o.store.name.clone(),
            schema: store.map_or(0, |s| s.schema),
            migrates_from: store.map(|s| s.migrates_from.clone()).unwrap_or_default(),
            stored: o.store.schema,
        }
    })
}

impl Control {
    /// Stages `plugin` (labelled `label`) to replace the running version at the
    /// next transaction boundary. The instance is created here, on the caller's
    /// thread; the pipeline thread only switches to it. A version with another
    /// state schema must migrate from the running one's, or `reset_state` must be
    /// set to drop the stored windows.
    pub fn activate(&self, label: &str, plugin: Plugin, reset_state: bool) -> Result<(), SwapError> {
        if let Some(old) = self.status().active_info
            && let Some(refusal) = incompatibility(&self.cfg, label, &old, plugin.info(), reset_state)
        {
            return Err(refusal);
        }
        let instance =
            plugin.instantiate().map_err(|source| SwapError::Instantiate { label: label.to_owned(), source })?;
        self.tx
            .send(ControlCommand::Activate(Box::new(Staged { label: label.to_owned(), plugin, instance, reset_state })))
            .map_err(|_| SwapError::Stopped)
    }

    /// Returns to the previous version at the next transaction boundary; the same
    /// state-schema rule as [`Control::activate`] applies.
    pub fn rollback(&self, reset_state: bool) -> Result<(), SwapError> {
        let status = self.status();
        let (Some(label), Some(previous)) = (status.previous, status.previous_info) else {
            return Err(SwapError::NoPrevious);
        };
        if let Some(old) = status.active_info
            && let Some(refusal) = incompatibility(&self.cfg, &label, &old, &previous, reset_state)
        {
            return Err(refusal);
        }
        self.tx.send(ControlCommand::Rollback { reset_state }).map_err(|_| SwapError::Stopped)
    }

    /// The current status.
    pub fn status(&self) -> SwapStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The versions a pipeline runs: the active one (with its instance), the one
/// before it, and the active one's probation.
pub(super) struct Versions {
    pub(super) worker: Worker,
    pub(super) active: String,
    pub(super) previous: Option<(String, Plugin)>,
    /// Set from a swap until the first commit after `probation_until` (so at
    /// least until the new version's first commit); a plugin failure in that
    /// time rolls back instead of dead-lettering records.
    pub(super) probation: bool,
    /// `None`: a probation too long to represent, which does not end.
    pub(super) probation_until: Option<Instant>,
    /// The running version was activated with `reset_state` and that reset is
    /// not committed yet: it is redone if the transaction is rewound.
    pub(super) reset_state: bool,
    pub(super) status: Arc<Mutex<SwapStatus>>,
}

impl Versions {
    /// The versions of a pipeline starting with `plugin`.
    pub(super) fn new(plugin: Plugin) -> Self {
        let label = plugin.label();
        let status = Arc::new(Mutex::new(SwapStatus {
            active: label.clone(),
            active_info: Some(plugin.info().clone()),
            ..SwapStatus::default()
        }));
        Self {
            worker: Worker::new(plugin),
            active: label,
            previous: None,
            probation: false,
            probation_until: None,
            reset_state: false,
            status,
        }
    }

    pub(super) fn info(&self) -> &PluginInfo {
        self.worker.plugin().info()
    }

    /// Switches to `plugin`, keeping the running version as the previous one.
    pub(super) fn switch(&mut self, label: String, worker: Worker) -> String {
        let old = std::mem::replace(&mut self.worker, worker).into_plugin();
        let from = std::mem::replace(&mut self.active, label);
        self.previous = Some((from.clone(), old));
        from
    }

    /// A commit went through: probation ends once its time is up.
    pub(super) fn committed(&mut self) {
        if self.probation_until.is_some_and(|until| Instant::now() >= until) {
            self.probation = false;
        }
        self.reset_state = false;
    }

    /// Records a swap (or rollback) in the status.
    pub(super) fn record(&self, event: SwapEvent, error: Option<String>) {
        if let Ok(mut status) = self.status.lock() {
            status.active = self.active.clone();
            status.active_info = Some(self.info().clone());
            status.previous = self.previous.as_ref().map(|(label, _)| label.clone());
            status.previous_info = self.previous.as_ref().map(|(_, plugin)| plugin.info().clone());
            status.history.push(event);
            if error.is_some() {
                status.last_error = error;
            }
        }
    }

    /// Notes a failure of the active version in the status.
    pub(super) fn note_error(&self, reason: String) {
        if let Ok(mut status) = self.status.lock() {
            status.last_error = Some(reason);
        }
    }
}
