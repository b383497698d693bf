//! Event-time windows: which windows a record belongs to, and what must happen to them.
//! Pure logic, no I/O.
//!
//! The host keeps, per record key, the windows that exist in the store with a little
//! metadata ([`KeyWindows`] of [`WindowMeta`]); the aggregates themselves live in opaque
//! slots that the guest updates in batches. For one record of one key, a [`Planner`]
//! decides from the metadata alone the ordered [`SlotOp`]s the guest must run, and updates
//! the metadata. There is one planner per window kind, each in its own file and each
//! following the matching Kafka Streams processor: [`TimePlanner`] (tumbling and hopping,
//! `time.rs`), [`SlidingPlanner`] (`sliding.rs`) and [`SessionPlanner`] (`session.rs`).
//! Every file says where, and why, Weir differs from Kafka Streams.
//!
//! Choices shared by every kind:
//! - Every [`Window`] is half-open, `[start, end)` in milliseconds. Where Kafka Streams
//!   has inclusive ends (a sliding window `[s, s + D]`, a session `[a, b]`), Weir's end is
//!   one larger (`s + D + 1`, `b + 1`).
//! - Stream time belongs to the operator and is kept by the caller, which restores it after
//!   a restart (Kafka Streams starts again from -1). A planner takes it and returns
//!   `max(stream_time, t)`, updated *before* the late check, so a dropped record still
//!   advances it.
//! - Timestamps outside `0..=MAX_TIMESTAMP` have no windows: the record is dropped and
//!   stream time does not move (Kafka Streams drops negative timestamps before any
//!   processor; the upper bound keeps every sum below `i64::MAX`).
//! - A window is *closed* ([`Planner::is_closed`]) once no later record can change it, so
//!   emit-final may emit it. It is *expired* ([`Planner::is_expired`]) once no later plan
//!   reads it, so the store may delete it. Both only grow with stream time.
//! - A slot starts from the guest's initializer, which must be an identity of its merger
//!   (merging an empty slot into another changes nothing).

mod session;
mod sliding;
mod time;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use thiserror::Error;
pub use weir_abi::Window;

pub use session::SessionPlanner;
pub use sliding::SlidingPlanner;
pub use time::{TimePlanner, Windowing};

/// Upper bound on sizes, advances, differences, gaps and grace periods, so that sums of a
/// few of them and a timestamp never overflow: ~285,000 years.
const MAX_MS: u64 = 1 << 53;

/// The largest record timestamp a planner accepts (~146 million years after the epoch).
pub const MAX_TIMESTAMP: i64 = 1 << 62;

/// A window definition that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WindowError {
    /// Size or advance is zero or too large.
    #[error("window size and advance must be between 1 ms and {max} ms (size {size}, advance {advance})")]
    OutOfRange {
        /// Requested size.
        size: u64,
        /// Requested advance.
        advance: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// Windows would leave gaps.
    #[error("window advance ({advance} ms) must not exceed its size ({size} ms)")]
    Gaps {
        /// Requested size.
        size: u64,
        /// Requested advance.
        advance: u64,
    },
    /// The grace period is too large.
    #[error("grace period must be at most {max} ms (got {grace})")]
    GraceOutOfRange {
        /// Requested grace period.
        grace: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A sliding window's time difference is zero or too large.
    #[error("sliding-window time difference must be between 1 ms and {max} ms (got {difference})")]
    DifferenceOutOfRange {
        /// Requested time difference.
        difference: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A session window's inactivity gap is zero or too large.
    #[error("session inactivity gap must be between 1 ms and {max} ms (got {gap})")]
    GapOutOfRange {
        /// Requested gap.
        gap: u64,
        /// Largest allowed value.
        max: u64,
    },
}

/// Checks a grace period and converts it to a signed duration.
fn grace(grace_ms: u64) -> Result<i64, WindowError> {
    if grace_ms > MAX_MS {
        return Err(WindowError::GraceOutOfRange { grace: grace_ms, max: MAX_MS });
    }
    Ok(grace_ms as i64)
}

/// Whether `t` can have windows at all.
fn valid_timestamp(t: i64) -> bool {
    (0..=MAX_TIMESTAMP).contains(&t)
}

/// Metadata of one existing window of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowMeta {
    /// The window; it also names the slot holding its aggregate.
    pub window: Window,
    /// The largest record timestamp folded into the window: the timestamp Kafka Streams
    /// stores and forwards with a windowed aggregate.
    pub max_ts: i64,
}

/// The existing windows of one key, ordered by `(start, end)`.
///
/// The caller loads the windows a plan may read ([`Planner::lookup`]) from the store, the
/// planner reads and updates them, and the caller writes back what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyWindows {
    /// Window → largest folded timestamp.
    map: BTreeMap<Window, i64>,
}

impl KeyWindows {
    /// No windows.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a window; returns the metadata it replaced.
    pub fn insert(&mut self, meta: WindowMeta) -> Option<WindowMeta> {
        self.map.insert(meta.window, meta.max_ts).map(|max_ts| WindowMeta { window: meta.window, max_ts })
    }

    /// The metadata of `window`, if it exists.
    pub fn get(&self, window: Window) -> Option<WindowMeta> {
        self.map.get(&window).map(|&max_ts| WindowMeta { window, max_ts })
    }

    /// Forgets `window` (for example once it has expired); returns its metadata.
    pub fn remove(&mut self, window: Window) -> Option<WindowMeta> {
        self.map.remove(&window).map(|max_ts| WindowMeta { window, max_ts })
    }

    /// Keeps only the windows for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(WindowMeta) -> bool) {
        self.map.retain(|&window, &mut max_ts| keep(WindowMeta { window, max_ts }));
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no windows.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All windows in `(start, end)` order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = WindowMeta> + '_ {
        self.map.iter().map(|(&window, &max_ts)| WindowMeta { window, max_ts })
    }

    /// The windows whose start lies in `lo..=hi`, in `(start, end)` order.
    fn starting_between(&self, lo: i64, hi: i64) -> impl DoubleEndedIterator<Item = WindowMeta> + '_ {
        // `BTreeMap::range` panics on an inverted range.
        let range = (lo <= hi)
            .then(|| self.map.range(Window { start: lo, end: i64::MIN }..=Window { start: hi, end: i64::MAX }));
        range.into_iter().flatten().map(|(&window, &max_ts)| WindowMeta { window, max_ts })
    }

    /// Whether some window starts at `start`.
    fn has_start(&self, start: i64) -> bool {
        self.starting_between(start, start).next().is_some()
    }

    /// Folds `t` into the metadata of an existing or new window.
    fn fold(&mut self, window: Window, t: i64) {
        let max_ts = self.map.entry(window).or_insert(t);
        *max_ts = (*max_ts).max(t);
    }
}

impl FromIterator<WindowMeta> for KeyWindows {
    fn from_iter<I: IntoIterator<Item = WindowMeta>>(iter: I) -> Self {
        Self { map: iter.into_iter().map(|m| (m.window, m.max_ts)).collect() }
    }
}

/// How a new slot gets its first value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// The guest's initializer.
    Empty,
    /// A copy of this window's slot as it is when the op runs (earlier ops of the same plan
    /// included).
    CopyOf(Window),
}

/// One step the guest runs on the slots of the current key. A slot is named by its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOp {
    /// Make a new slot.
    Create {
        /// The new window.
        window: Window,
        /// Its first value.
        seed: Seed,
    },
    /// Fold the current record into a slot.
    Add {
        /// The window.
        window: Window,
    },
    /// Fold slot `from` into slot `into` (session merging); `from` is left unchanged.
    Merge {
        /// The window that absorbs.
        into: Window,
        /// The window being absorbed.
        from: Window,
    },
    /// The slot is gone (a session merged away): the host deletes it and, when emitting
    /// updates, emits a tombstone for it.
    Remove {
        /// The window.
        window: Window,
    },
}

/// Why a record was not folded into any window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Every window the record belongs to is closed.
    Late {
        /// The latest-ending window the record would have gone into.
        window: Window,
        /// Windows ending at or before this were closed (Kafka Streams' `closeTime`; for
        /// inclusive-end windows, Kafka Streams' end is `window.end - 1 < close_time`).
        close_time: i64,
    },
    /// The timestamp is negative or above [`MAX_TIMESTAMP`].
    InvalidTimestamp,
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The record was not late as a whole: it went into every window it belongs to that is
    /// still open. For sliding windows that can be none (its only windows are closed, yet
    /// its later neighbour's window may be created).
    Applied {
        /// Windows the record belongs to that were already closed and were left out.
        /// Kafka Streams counts each one as a dropped record.
        skipped: u32,
    },
    /// The record went into no window; no ops were planned. The caller counts it.
    Dropped(DropReason),
}

/// The result of planning one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Applied or dropped.
    pub outcome: Outcome,
    /// The operator's stream time after this record.
    pub stream_time: i64,
}

/// The stored windows of a key that a plan may read: every window with a start in
/// `min_start..=max_start` and an end of at least `min_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Smallest window start (`i64::MIN`: unbounded).
    pub min_start: i64,
    /// Largest window start.
    pub max_start: i64,
    /// Smallest window end (`i64::MIN`: unbounded).
    pub min_end: i64,
}

impl Lookup {
    /// Nothing to read.
    pub const NOTHING: Self = Self { min_start: 0, max_start: -1, min_end: i64::MAX };

    /// Whether `window` is in the range.
    pub fn contains(&self, window: Window) -> bool {
        (self.min_start..=self.max_start).contains(&window.start) && window.end >= self.min_end
    }
}

/// Plans records of one window kind.
pub trait Planner {
    /// Plans record `t` for one key: pushes the ops the guest must run, in order, onto
    /// `ops`, updates `windows` (the key's metadata, at least every window in
    /// [`Self::lookup`]`(t)`) to match, and returns the outcome and the new stream time.
    fn plan(&self, windows: &mut KeyWindows, t: i64, stream_time: i64, ops: &mut Vec<SlotOp>) -> Planned;

    /// Whether `window` is final at `stream_time`: no later record changes it, so
    /// emit-final may emit it.
    fn is_closed(&self, window: Window, stream_time: i64) -> bool;

    /// Whether no later plan reads `window` at `stream_time`, so the store may delete it.
    /// Implies [`Self::is_closed`].
    fn is_expired(&self, window: Window, stream_time: i64) -> bool;

    /// The stored windows the plan for `t` may read; the caller need load no others.
    fn lookup(&self, t: i64) -> Lookup;
}
