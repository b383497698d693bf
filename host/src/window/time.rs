//! Tumbling and hopping windows: the epoch-aligned arithmetic ([`Windowing`]) and the
//! planner ([`TimePlanner`]) following Kafka Streams' `TimeWindows` and
//! `KStreamWindowAggregate`.
//!
//! Windows are aligned to the Unix epoch and half-open: a window contains
//! `start <= t < end`, as in Kafka Streams. Tumbling windows are hopping windows whose
//! advance equals their size. Negative timestamps have no windows.
//!
//! A record goes into every window of [`Windowing::windows_for`] that is still open after
//! stream time has taken the record into account; a window is closed once
//! `end + grace <= stream_time`. As in Kafka Streams, one record of a hopping window can be
//! left out of its earliest windows and still go into later ones (each one left out is
//! counted in [`Outcome::Applied::skipped`]); it is dropped only when all are closed.
//! Nothing is read but the windows the record goes into, so a closed window can also be
//! deleted at once.

use super::{
    DropReason, KeyWindows, Lookup, MAX_MS, Outcome, Planned, Planner, Seed, SlotOp, Window, WindowError,
    valid_timestamp,
};

/// Fixed-size windows starting every `advance` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    size: i64,
    advance: i64,
}

impl Windowing {
    /// Hopping windows of `size_ms`, one starting every `advance_ms`.
    pub fn hopping(size_ms: u64, advance_ms: u64) -> Result<Self, WindowError> {
        if size_ms == 0 || advance_ms == 0 || size_ms > MAX_MS || advance_ms > MAX_MS {
            return Err(WindowError::OutOfRange { size: size_ms, advance: advance_ms, max: MAX_MS });
        }
        if advance_ms > size_ms {
            return Err(WindowError::Gaps { size: size_ms, advance: advance_ms });
        }
        Ok(Self { size: size_ms as i64, advance: advance_ms as i64 })
    }

    /// Back-to-back windows of `size_ms`.
    pub fn tumbling(size_ms: u64) -> Result<Self, WindowError> {
        Self::hopping(size_ms, size_ms)
    }

    /// Window length in milliseconds.
    pub fn size_ms(&self) -> i64 {
        self.size
    }

    /// Distance between window starts in milliseconds.
    pub fn advance_ms(&self) -> i64 {
        self.advance
    }

    /// The windows containing `ts`, in ascending order of start.
    pub fn windows_for(&self, ts: i64) -> impl Iterator<Item = Window> + use<> {
        let (size, advance) = (self.size, self.advance);
        let last_start = if ts < 0 { -1 } else { ts - ts.rem_euclid(advance) };
        // The earliest start still containing ts, clamped at the epoch.
        let lowest = ts.saturating_sub(size - 1).max(0);
        let first_start = if last_start < 0 { 0 } else { last_start - ((last_start - lowest) / advance) * advance };
        let count = if last_start < first_start { 0 } else { (last_start - first_start) / advance + 1 };
        (0..count).map(move |i| {
            let start = first_start + i * advance;
            Window { start, end: start.saturating_add(size) }
        })
    }
}

/// Plans records for tumbling or hopping windows with a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimePlanner {
    windowing: Windowing,
    grace: i64,
}

impl TimePlanner {
    /// Windows of `windowing` that accept records until `grace_ms` after their end.
    pub fn new(windowing: Windowing, grace_ms: u64) -> Result<Self, WindowError> {
        Ok(Self { windowing, grace: super::grace(grace_ms)? })
    }

    /// The window arithmetic.
    pub fn windowing(&self) -> Windowing {
        self.windowing
    }

    /// The grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        self.grace
    }
}

impl Planner for TimePlanner {
    fn plan(&self, windows: &mut KeyWindows, t: i64, stream_time: i64, ops: &mut Vec<SlotOp>) -> Planned {
        if !valid_timestamp(t) {
            return Planned { outcome: Outcome::Dropped(DropReason::InvalidTimestamp), stream_time };
        }
        let stream_time = stream_time.max(t);
        let mut skipped = 0;
        let mut last = None;
        for window in self.windowing.windows_for(t) {
            last = Some(window);
            if self.is_closed(window, stream_time) {
                skipped += 1;
                continue;
            }
            if windows.get(window).is_none() {
                ops.push(SlotOp::Create { window, seed: Seed::Empty });
            }
            ops.push(SlotOp::Add { window });
            windows.fold(window, t);
        }
        let outcome = match last {
            // The last window ends last: if it is closed, all are.
            Some(window) if self.is_closed(window, stream_time) => {
                Outcome::Dropped(DropReason::Late { window, close_time: stream_time.saturating_sub(self.grace) })
            }
            Some(_) => Outcome::Applied { skipped },
            // Unreachable for a valid timestamp: every one has a window.
            None => Outcome::Dropped(DropReason::InvalidTimestamp),
        };
        Planned { outcome, stream_time }
    }

    fn is_closed(&self, window: Window, stream_time: i64) -> bool {
        window.end.saturating_add(self.grace) <= stream_time
    }

    fn is_expired(&self, window: Window, stream_time: i64) -> bool {
        self.is_closed(window, stream_time)
    }

    fn lookup(&self, t: i64) -> Lookup {
        if !valid_timestamp(t) {
            return Lookup::NOTHING;
        }
        let mut windows = self.windowing.windows_for(t);
        match (windows.next(), windows.last()) {
            (Some(first), last) => {
                Lookup { min_start: first.start, max_start: last.unwrap_or(first).start, min_end: t.saturating_add(1) }
            }
            (None, _) => Lookup::NOTHING,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stock_stats_windows() {
        let w = Windowing::hopping(5_000, 1_000).unwrap();
        let got: Vec<_> = w.windows_for(12_345).map(|w| (w.start, w.end)).collect();
        assert_eq!(got, vec![(8_000, 13_000), (9_000, 14_000), (10_000, 15_000), (11_000, 16_000), (12_000, 17_000)]);
        // Start inclusive, end exclusive.
        let at_boundary: Vec<_> = w.windows_for(13_000).map(|w| w.start).collect();
        assert_eq!(at_boundary, vec![9_000, 10_000, 11_000, 12_000, 13_000]);
    }

    #[test]
    fn windows_do_not_start_before_the_epoch() {
        let w = Windowing::hopping(5_000, 1_000).unwrap();
        let got: Vec<_> = w.windows_for(1_500).map(|w| w.start).collect();
        assert_eq!(got, vec![0, 1_000]);
        assert_eq!(w.windows_for(-1).count(), 0);
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert_eq!(Windowing::hopping(1_000, 5_000), Err(WindowError::Gaps { size: 1_000, advance: 5_000 }));
        assert!(matches!(Windowing::hopping(0, 0), Err(WindowError::OutOfRange { .. })));
        assert!(matches!(Windowing::tumbling(MAX_MS + 1), Err(WindowError::OutOfRange { .. })));
        let w = Windowing::tumbling(10).unwrap();
        assert_eq!(
            TimePlanner::new(w, MAX_MS + 1),
            Err(WindowError::GraceOutOfRange { grace: MAX_MS + 1, max: MAX_MS })
        );
        assert!(TimePlanner::new(w, 0).is_ok());
    }

    fn plan(p: &TimePlanner, windows: &mut KeyWindows, t: i64, st: i64) -> (Planned, Vec<SlotOp>) {
        let mut ops = Vec::new();
        let planned = p.plan(windows, t, st, &mut ops);
        (planned, ops)
    }

    #[test]
    fn first_record_creates_then_adds_and_second_only_adds() {
        let p = TimePlanner::new(Windowing::tumbling(10).unwrap(), 0).unwrap();
        let mut kw = KeyWindows::new();
        let w = Window { start: 0, end: 10 };
        let (planned, ops) = plan(&p, &mut kw, 3, -1);
        assert_eq!(planned, Planned { outcome: Outcome::Applied { skipped: 0 }, stream_time: 3 });
        assert_eq!(ops, vec![SlotOp::Create { window: w, seed: Seed::Empty }, SlotOp::Add { window: w }]);
        let (planned, ops) = plan(&p, &mut kw, 7, 3);
        assert_eq!(planned.stream_time, 7);
        assert_eq!(ops, vec![SlotOp::Add { window: w }]);
        assert_eq!(kw.get(w).map(|m| m.max_ts), Some(7));
        // An older record keeps the max.
        plan(&p, &mut kw, 1, 7);
        assert_eq!(kw.get(w).map(|m| m.max_ts), Some(7));
    }

    /// Kafka Streams keeps a window open while `end + grace > stream time`.
    #[test]
    fn grace_boundary_is_end_plus_grace() {
        let p = TimePlanner::new(Windowing::tumbling(10).unwrap(), 5).unwrap();
        let w = Window { start: 0, end: 10 };
        assert!(!p.is_closed(w, 14));
        assert!(p.is_closed(w, 15));
        let (planned, _) = plan(&p, &mut KeyWindows::new(), 4, 14);
        assert_eq!(planned.outcome, Outcome::Applied { skipped: 0 });
        let (planned, ops) = plan(&p, &mut KeyWindows::new(), 4, 15);
        assert_eq!(planned.outcome, Outcome::Dropped(DropReason::Late { window: w, close_time: 10 }));
        assert!(ops.is_empty());
    }

    /// The current record counts towards stream time before the late check.
    #[test]
    fn the_record_itself_advances_stream_time_first() {
        let p = TimePlanner::new(Windowing::tumbling(10).unwrap(), 0).unwrap();
        let (planned, _) = plan(&p, &mut KeyWindows::new(), 25, 3);
        assert_eq!(planned, Planned { outcome: Outcome::Applied { skipped: 0 }, stream_time: 25 });
        let (planned, _) = plan(&p, &mut KeyWindows::new(), 5, 25);
        assert_eq!(planned.stream_time, 25);
        assert!(matches!(planned.outcome, Outcome::Dropped(DropReason::Late { .. })));
    }

    #[test]
    fn hopping_record_skips_only_its_closed_windows() {
        let p = TimePlanner::new(Windowing::hopping(10, 2).unwrap(), 0).unwrap();
        let mut kw = KeyWindows::new();
        // Windows of 9: [0,10) [2,12) [4,14) [6,16) [8,18); at stream time 13 the first two are closed.
        let (planned, ops) = plan(&p, &mut kw, 9, 13);
        assert_eq!(planned.outcome, Outcome::Applied { skipped: 2 });
        let added: Vec<_> = ops
            .iter()
            .filter_map(|op| if let SlotOp::Add { window } = op { Some(window.start) } else { None })
            .collect();
        assert_eq!(added, vec![4, 6, 8]);
        assert_eq!(kw.len(), 3);
    }

    #[test]
    fn invalid_timestamps_are_dropped_without_moving_stream_time() {
        let p = TimePlanner::new(Windowing::tumbling(10).unwrap(), 0).unwrap();
        for t in [-1, i64::MIN, super::super::MAX_TIMESTAMP + 1, i64::MAX] {
            let (planned, ops) = plan(&p, &mut KeyWindows::new(), t, 7);
            assert_eq!(planned, Planned { outcome: Outcome::Dropped(DropReason::InvalidTimestamp), stream_time: 7 });
            assert!(ops.is_empty());
            assert_eq!(p.lookup(t), Lookup::NOTHING);
        }
    }

    #[test]
    fn lookup_covers_exactly_the_windows_of_t() {
        let p = TimePlanner::new(Windowing::hopping(10, 3).unwrap(), 0).unwrap();
        let l = p.lookup(14);
        assert_eq!(l, Lookup { min_start: 6, max_start: 12, min_end: 15 });
        assert!(p.windowing().windows_for(14).all(|w| l.contains(w)));
    }

    proptest! {
        /// Compared with a brute-force scan of every epoch-aligned start.
        #[test]
        fn windows_match_brute_force(size in 1i64..5_000, advance_frac in 1i64..=100, ts in 0i64..100_000) {
            let advance = (size * advance_frac / 100).max(1);
            let w = Windowing::hopping(size as u64, advance as u64).unwrap();
            let got: Vec<_> = w.windows_for(ts).collect();
            let mut want = Vec::new();
            let mut start = 0;
            while start <= ts {
                if start + size > ts {
                    want.push(Window { start, end: start + size });
                }
                start += advance;
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn tumbling_windows_partition_time(size in 1i64..10_000, ts in 0i64..1_000_000_000) {
            let w = Windowing::tumbling(size as u64).unwrap();
            let got: Vec<_> = w.windows_for(ts).collect();
            prop_assert_eq!(got.len(), 1);
            prop_assert!(got[0].start <= ts && ts < got[0].end);
            prop_assert_eq!(got[0].start % size, 0);
        }
    }
}
