//! Session windows ([`SessionPlanner`]), following Kafka Streams' `SessionWindows` and
//! `KStreamSessionWindowAggregate`.
//!
//! A session is a run of records of one key in which consecutive timestamps are at most
//! the inactivity gap `G` apart. Kafka Streams writes it `[first, last]`, Weir
//! `[first, last + 1)`. A record at `t` joins every session overlapping `[t - G, t + G]`
//! (bounds included, so records exactly `G` apart share a session): the planner creates
//! the merged session, merges each old one into it in order of start, adds the record and
//! removes the old ones (the host emits their tombstones). Stream time includes the record
//! before the check; the record is dropped if the *merged* session is closed, i.e. its
//! last millisecond is before `stream_time - grace - G` (Kafka Streams since 3.0), so an
//! old record that joins an open session is accepted.
//!
//! Where Weir differs, and why:
//! - A closed session is final: it is neither merged nor removed. Kafka Streams still
//!   merges it when a record lands within `G` of it (or bridges it to an open session),
//!   re-emitting a session that emit-final already emitted. In Weir such a record starts
//!   or extends an open session instead, which may then lie within `G` of, or even overlap,
//!   the closed one. This keeps emit-final final and lets the store delete a session as
//!   soon as it closes.
//! - A record that falls inside one session without changing its bounds is only added to
//!   it. Kafka Streams removes the session (a tombstone when emitting updates) and writes
//!   it again; with its cache on, the two collapse into the update Weir emits.
//! - Kafka Streams emits the tombstones of merged-away sessions before the merged session;
//!   the ops remove them last, after the guest has merged them, and the host orders its
//!   output as it likes.

use super::{
    DropReason, KeyWindows, Lookup, MAX_MS, Outcome, Planned, Planner, Seed, SlotOp, Window, WindowError, WindowMeta,
    valid_timestamp,
};

/// Plans records for session windows with an inactivity gap and a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPlanner {
    gap: i64,
    grace: i64,
}

impl SessionPlanner {
    /// Sessions that end after `gap_ms` without records and accept records until
    /// `grace_ms` after that.
    pub fn new(gap_ms: u64, grace_ms: u64) -> Result<Self, WindowError> {
        if gap_ms == 0 || gap_ms > MAX_MS {
            return Err(WindowError::GapOutOfRange { gap: gap_ms, max: MAX_MS });
        }
        Ok(Self { gap: gap_ms as i64, grace: super::grace(grace_ms)? })
    }

    /// The inactivity gap `G` in milliseconds.
    pub fn gap_ms(&self) -> i64 {
        self.gap
    }

    /// The grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        self.grace
    }
}

impl Planner for SessionPlanner {
    fn plan(&self, windows: &mut KeyWindows, t: i64, stream_time: i64, ops: &mut Vec<SlotOp>) -> Planned {
        if !valid_timestamp(t) {
            return Planned { outcome: Outcome::Dropped(DropReason::InvalidTimestamp), stream_time };
        }
        let stream_time = stream_time.max(t);
        let lookup = self.lookup(t);
        let found: Vec<WindowMeta> = windows
            .starting_between(lookup.min_start, lookup.max_start)
            .filter(|m| m.window.end >= lookup.min_end && !self.is_closed(m.window, stream_time))
            .collect();
        let mut merged = Window { start: t, end: t + 1 };
        let mut max_ts = t;
        for m in &found {
            merged.start = merged.start.min(m.window.start);
            merged.end = merged.end.max(m.window.end);
            max_ts = max_ts.max(m.max_ts);
        }
        if self.is_closed(merged, stream_time) {
            let close_time = stream_time.saturating_sub(self.grace).saturating_sub(self.gap);
            return Planned { outcome: Outcome::Dropped(DropReason::Late { window: merged, close_time }), stream_time };
        }
        match found.as_slice() {
            [only] if only.window == merged => ops.push(SlotOp::Add { window: merged }),
            _ => {
                ops.push(SlotOp::Create { window: merged, seed: Seed::Empty });
                ops.extend(found.iter().map(|m| SlotOp::Merge { into: merged, from: m.window }));
                ops.push(SlotOp::Add { window: merged });
                for m in &found {
                    ops.push(SlotOp::Remove { window: m.window });
                    windows.remove(m.window);
                }
            }
        }
        windows.insert(WindowMeta { window: merged, max_ts });
        Planned { outcome: Outcome::Applied { skipped: 0 }, stream_time }
    }

    fn is_closed(&self, window: Window, stream_time: i64) -> bool {
        // Kafka Streams: last millisecond `end - 1 < stream_time - grace - G`.
        window.end.saturating_add(self.grace).saturating_add(self.gap) <= stream_time
    }

    fn is_expired(&self, window: Window, stream_time: i64) -> bool {
        self.is_closed(window, stream_time)
    }

    fn lookup(&self, t: i64) -> Lookup {
        if !valid_timestamp(t) {
            return Lookup::NOTHING;
        }
        // Sessions whose last millisecond is at least `t - G` and whose start is at most `t + G`.
        Lookup { min_start: i64::MIN, max_start: t + self.gap, min_end: t - self.gap + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(first: i64, last: i64) -> Window {
        Window { start: first, end: last + 1 }
    }

    fn plan(p: &SessionPlanner, kw: &mut KeyWindows, t: i64, st: i64) -> (Planned, Vec<SlotOp>) {
        let mut ops = Vec::new();
        (p.plan(kw, t, st, &mut ops), ops)
    }

    fn sessions(kw: &KeyWindows) -> Vec<Window> {
        kw.iter().map(|m| m.window).collect()
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert_eq!(SessionPlanner::new(0, 0), Err(WindowError::GapOutOfRange { gap: 0, max: MAX_MS }));
        assert!(matches!(SessionPlanner::new(MAX_MS + 1, 0), Err(WindowError::GapOutOfRange { .. })));
        assert!(matches!(SessionPlanner::new(1, MAX_MS + 1), Err(WindowError::GraceOutOfRange { .. })));
    }

    /// Records exactly `G` apart share a session; `G + 1` apart they do not.
    #[test]
    fn gap_boundary_is_inclusive() {
        let p = SessionPlanner::new(10, 1_000).unwrap();
        let mut kw = KeyWindows::new();
        plan(&p, &mut kw, 100, -1);
        let (_, ops) = plan(&p, &mut kw, 110, 100);
        assert_eq!(
            ops,
            vec![
                SlotOp::Create { window: s(100, 110), seed: Seed::Empty },
                SlotOp::Merge { into: s(100, 110), from: s(100, 100) },
                SlotOp::Add { window: s(100, 110) },
                SlotOp::Remove { window: s(100, 100) },
            ]
        );
        plan(&p, &mut kw, 121, 110);
        assert_eq!(sessions(&kw), vec![s(100, 110), s(121, 121)]);
    }

    #[test]
    fn a_bridging_record_merges_two_sessions_in_start_order() {
        let p = SessionPlanner::new(10, 1_000).unwrap();
        let mut kw = KeyWindows::new();
        for (t, st) in [(100, -1), (105, 100), (125, 105)] {
            plan(&p, &mut kw, t, st);
        }
        let (_, ops) = plan(&p, &mut kw, 115, 125);
        let merged = s(100, 125);
        assert_eq!(
            ops,
            vec![
                SlotOp::Create { window: merged, seed: Seed::Empty },
                SlotOp::Merge { into: merged, from: s(100, 105) },
                SlotOp::Merge { into: merged, from: s(125, 125) },
                SlotOp::Add { window: merged },
                SlotOp::Remove { window: s(100, 105) },
                SlotOp::Remove { window: s(125, 125) },
            ]
        );
        assert_eq!(kw.iter().collect::<Vec<_>>(), vec![WindowMeta { window: merged, max_ts: 125 }]);
    }

    #[test]
    fn a_record_inside_a_session_only_adds() {
        let p = SessionPlanner::new(10, 1_000).unwrap();
        let mut kw = KeyWindows::new();
        plan(&p, &mut kw, 100, -1);
        let (_, ops) = plan(&p, &mut kw, 100, 100);
        assert_eq!(ops, vec![SlotOp::Add { window: s(100, 100) }]);
        plan(&p, &mut kw, 108, 100);
        let (_, ops) = plan(&p, &mut kw, 103, 108);
        assert_eq!(ops, vec![SlotOp::Add { window: s(100, 108) }]);
    }

    /// The late check uses the merged session: an old record joining an open session counts.
    #[test]
    fn late_check_uses_the_merged_session() {
        let p = SessionPlanner::new(10, 0).unwrap();
        let mut kw = KeyWindows::new();
        plan(&p, &mut kw, 92, -1);
        plan(&p, &mut kw, 100, 92);
        // Close time 100 - 0 - 10 = 90: 85 alone is late, but it joins [92, 100].
        let (planned, _) = plan(&p, &mut kw, 85, 100);
        assert_eq!(planned.outcome, Outcome::Applied { skipped: 0 });
        assert_eq!(sessions(&kw), vec![s(85, 100)]);
        let (planned, ops) = plan(&p, &mut kw, 70, 100);
        assert_eq!(planned.outcome, Outcome::Dropped(DropReason::Late { window: s(70, 70), close_time: 90 }));
        assert!(ops.is_empty());
        // Last millisecond 89 < 90 is closed, 90 is not.
        assert!(p.is_closed(s(80, 89), 100));
        assert!(!p.is_closed(s(80, 90), 100));
    }

    /// Weir's deviation: a closed session is final and is not merged any more.
    #[test]
    fn a_closed_session_is_not_merged() {
        let p = SessionPlanner::new(10, 0).unwrap();
        let mut kw = KeyWindows::new();
        plan(&p, &mut kw, 0, -1);
        plan(&p, &mut kw, 20, 0);
        assert!(p.is_closed(s(0, 0), 20));
        // Kafka Streams would merge [0, 0], 10 and [20, 20] into [0, 20].
        let (planned, ops) = plan(&p, &mut kw, 10, 20);
        assert_eq!(planned.outcome, Outcome::Applied { skipped: 0 });
        assert!(!ops.contains(&SlotOp::Remove { window: s(0, 0) }));
        assert_eq!(sessions(&kw), vec![s(0, 0), s(10, 20)]);
    }

    #[test]
    fn lookup_matches_find_sessions() {
        let p = SessionPlanner::new(10, 0).unwrap();
        let l = p.lookup(100);
        assert!(l.contains(s(0, 90)));
        assert!(!l.contains(s(0, 89)));
        assert!(l.contains(s(110, 200)));
        assert!(!l.contains(s(111, 200)));
    }
}
