//! Sliding windows ([`SlidingPlanner`]), following Kafka Streams' `SlidingWindows` and
//! `KStreamSlidingWindowAggregate` (KIP-450).
//!
//! A sliding window of time difference `D` covers `D + 1` milliseconds; Kafka Streams
//! writes it `[s, s + D]`, Weir `[s, s + D + 1)`. Windows exist only where the set of
//! records changes: each record `r` has a *left* window ending at `r` (early records,
//! `r < D`, share `[0, D]`), and a *right* window starting at `r + 1` if some record lies
//! in it. A record goes into every existing window containing it; new windows are seeded
//! by copying a neighbour (no merger), exactly as Kafka Streams' store-backed algorithm
//! (its backward-fetch variant, which RocksDB and the in-memory store both use):
//! - the record is dropped if `t + D < stream_time - grace` (its latest window is closed);
//! - each window is left out on its own while closed, i.e. `end + grace <= stream_time`
//!   with Weir's exclusive end (Kafka Streams: `stream_time > end + grace`, inclusive end);
//! - the stored timestamp ([`super::WindowMeta::max_ts`]) is the largest record timestamp
//!   in the window.
//!
//! Kafka Streams' algorithm assumes every window it would have made exists. Once grace has
//! left some out, its backward and forward scans can disagree, and a copied window can
//! carry a record outside its bounds; Weir reproduces the backward scan, quirks included
//! (`late_data_can_leak_into_a_right_window_as_in_kafka_streams` in the tests). Without
//! closed windows the result is exact.
//!
//! Where Weir differs, and why:
//! - Ops run against slots that change as they go, so the current record's right window,
//!   a copy of a neighbour *before* the record is added to it, is created first; Kafka
//!   Streams creates (and forwards) it last from a value it read earlier.
//! - When the previous record's right window and the current record's left window are the
//!   same window (previous record at exactly `t - D - 1`), Kafka Streams writes it twice
//!   with the same value; Weir creates it once.
//! - `D = 0` is refused: Kafka Streams accepts it but then fails on every record (a window
//!   may not have `start == end`), and a 1 ms window is a tumbling window anyway.
//! - A closed window is still read as a seed for up to `2 D` more, so it expires later than
//!   it closes (`end + 2 D + grace <= stream_time`); Kafka Streams' retention of
//!   `2 D + grace` counted from window starts is shorter and can miss such a seed.

use super::{
    DropReason, KeyWindows, Lookup, MAX_MS, Outcome, Planned, Planner, Seed, SlotOp, Window, WindowError, WindowMeta,
    valid_timestamp,
};

/// Plans records for sliding windows with a time difference and a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingPlanner {
    difference: i64,
    grace: i64,
}

/// What a scan of the existing windows found, before anything changes.
#[derive(Debug, Default)]
struct Scan {
    /// Existing windows containing `t`, in the order Kafka Streams updates them.
    containing: Vec<Window>,
    /// The window the current record's right window is copied from.
    right_source: Option<WindowMeta>,
    /// Whether the current record's right window exists.
    right_exists: bool,
    /// Whether the current record's left window (or, for an early record, `[0, D]`) exists.
    left_exists: bool,
    /// The window the current record's left window is copied from.
    left_source: Option<WindowMeta>,
    /// The timestamp of the previous record, if Kafka Streams' scan found one.
    previous: Option<i64>,
    /// Whether the previous record's right window exists.
    previous_right_exists: bool,
    /// A record with timestamp `t` exists already, so every window does too.
    complete: bool,
}

impl SlidingPlanner {
    /// Windows `difference_ms` long (both ends included, in Kafka Streams' terms), accepting
    /// records until `grace_ms` after their end.
    pub fn new(difference_ms: u64, grace_ms: u64) -> Result<Self, WindowError> {
        if difference_ms == 0 || difference_ms > MAX_MS {
            return Err(WindowError::DifferenceOutOfRange { difference: difference_ms, max: MAX_MS });
        }
        Ok(Self { difference: difference_ms as i64, grace: super::grace(grace_ms)? })
    }

    /// The time difference `D` in milliseconds.
    pub fn difference_ms(&self) -> i64 {
        self.difference
    }

    /// The grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        self.grace
    }

    /// The window starting at `start`.
    fn window(&self, start: i64) -> Window {
        Window { start, end: start + self.difference + 1 }
    }

    /// Kafka Streams' inclusive end of a window starting at `start`.
    fn last_ms(&self, start: i64) -> i64 {
        start + self.difference
    }

    /// The scan for a record with `t >= D`, walking windows by descending start.
    fn scan_regular(&self, windows: &KeyWindows, t: i64) -> Scan {
        let mut scan = Scan::default();
        let lo = (t - 2 * self.difference).max(0);
        for meta in windows.starting_between(lo, t + 1).rev() {
            let (start, last) = (meta.window.start, self.last_ms(meta.window.start));
            if start == t + 1 {
                scan.right_exists = true;
            } else if last > t {
                // The first one seen has the largest start.
                scan.right_source.get_or_insert(meta);
                scan.containing.push(meta.window);
            } else if last == t {
                scan.left_exists = true;
                scan.containing.push(meta.window);
                if meta.max_ts < t {
                    scan.previous = Some(meta.max_ts);
                } else {
                    scan.complete = true;
                    break;
                }
            } else {
                scan.left_source = Some(meta);
                scan.previous = Some(meta.max_ts);
                break;
            }
        }
        scan.previous_right_exists = scan.previous.is_some_and(|p| windows.has_start(p + 1));
        scan
    }

    /// The scan for an early record (`t < D`), walking windows by ascending start.
    fn scan_early(&self, windows: &KeyWindows, t: i64) -> Scan {
        let mut scan = Scan::default();
        let mut combined = None;
        for meta in windows.starting_between(0, t + 1) {
            let start = meta.window.start;
            if start == 0 {
                combined = Some(meta);
                if meta.max_ts < t {
                    scan.previous = Some(meta.max_ts);
                }
            } else if start <= t {
                // The last one seen has the largest start.
                scan.right_source = Some(meta);
                scan.containing.push(meta.window);
            } else {
                scan.right_exists = true;
            }
        }
        if scan.right_source.is_none() {
            scan.right_source = combined.filter(|c| c.max_ts > t);
        }
        scan.left_exists = combined.is_some();
        scan.previous_right_exists = scan.previous.is_some_and(|p| windows.has_start(p + 1));
        scan
    }

    /// Folds `t` into `window`, creating it from `seed` if `seed` is given, unless it is
    /// closed. Returns 1 if it was left out.
    fn fold(
        &self,
        windows: &mut KeyWindows,
        window: Window,
        seed: Option<Seed>,
        t: i64,
        stream_time: i64,
        ops: &mut Vec<SlotOp>,
    ) -> u32 {
        if self.is_closed(window, stream_time) {
            return 1;
        }
        if let Some(seed) = seed {
            ops.push(SlotOp::Create { window, seed });
        }
        ops.push(SlotOp::Add { window });
        windows.fold(window, t);
        0
    }
}

impl Planner for SlidingPlanner {
    fn plan(&self, windows: &mut KeyWindows, t: i64, stream_time: i64, ops: &mut Vec<SlotOp>) -> Planned {
        if !valid_timestamp(t) {
            return Planned { outcome: Outcome::Dropped(DropReason::InvalidTimestamp), stream_time };
        }
        let stream_time = stream_time.max(t);
        let close_time = stream_time.saturating_sub(self.grace);
        if self.last_ms(t) < close_time {
            let late = DropReason::Late { window: self.window(t), close_time };
            return Planned { outcome: Outcome::Dropped(late), stream_time };
        }
        let early = t < self.difference;
        let scan = if early { self.scan_early(windows, t) } else { self.scan_regular(windows, t) };

        // 1. The current record's right window: a copy of its source before `t` goes in.
        //    It ends after `t + D`, so it is open.
        if let Some(source) = scan.right_source.filter(|s| !scan.right_exists && !scan.complete && s.max_ts > t) {
            let window = self.window(t + 1);
            ops.push(SlotOp::Create { window, seed: Seed::CopyOf(source.window) });
            windows.insert(WindowMeta { window, max_ts: source.max_ts });
        }
        // 2. Every existing window containing `t`.
        let mut skipped = 0;
        for &window in &scan.containing {
            skipped += self.fold(windows, window, None, t, stream_time, ops);
        }
        if scan.complete {
            return Planned { outcome: Outcome::Applied { skipped }, stream_time };
        }
        // 3. The previous record's right window, if `t` falls into it: it holds only `t`.
        let mut previous_right = None;
        if let Some(previous) = scan.previous.filter(|&p| !scan.previous_right_exists && self.last_ms(p + 1) >= t) {
            let window = self.window(previous + 1);
            previous_right = Some(window);
            skipped += self.fold(windows, window, Some(Seed::Empty), t, stream_time, ops);
        }
        // 4. The current record's left window, or `[0, D]` for an early record.
        if early {
            let seed = (!scan.left_exists).then_some(Seed::Empty);
            skipped += self.fold(windows, self.window(0), seed, t, stream_time, ops);
        } else {
            let left = self.window(t - self.difference);
            if !scan.left_exists && previous_right != Some(left) {
                let seed = match (scan.previous, scan.left_source) {
                    (Some(p), Some(source)) if p >= t - self.difference => Seed::CopyOf(source.window),
                    _ => Seed::Empty,
                };
                skipped += self.fold(windows, left, Some(seed), t, stream_time, ops);
            }
        }
        Planned { outcome: Outcome::Applied { skipped }, stream_time }
    }

    fn is_closed(&self, window: Window, stream_time: i64) -> bool {
        window.end.saturating_add(self.grace) <= stream_time
    }

    fn is_expired(&self, window: Window, stream_time: i64) -> bool {
        // A record that is not late reads windows starting from `t - 2 D` with
        // `t >= stream_time - grace - D`.
        window.end.saturating_add(self.grace).saturating_add(2 * self.difference) <= stream_time
    }

    fn lookup(&self, t: i64) -> Lookup {
        if !valid_timestamp(t) {
            return Lookup::NOTHING;
        }
        Lookup { min_start: (t - 2 * self.difference).max(0), max_start: t + 1, min_end: i64::MIN }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: i64, last: i64) -> Window {
        Window { start, end: last + 1 }
    }

    fn plan(p: &SlidingPlanner, kw: &mut KeyWindows, t: i64, st: i64) -> (Planned, Vec<SlotOp>) {
        let mut ops = Vec::new();
        (p.plan(kw, t, st, &mut ops), ops)
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert_eq!(SlidingPlanner::new(0, 0), Err(WindowError::DifferenceOutOfRange { difference: 0, max: MAX_MS }));
        assert!(matches!(SlidingPlanner::new(MAX_MS + 1, 0), Err(WindowError::DifferenceOutOfRange { .. })));
        assert!(matches!(SlidingPlanner::new(1, MAX_MS + 1), Err(WindowError::GraceOutOfRange { .. })));
        assert!(SlidingPlanner::new(1, 0).is_ok());
    }

    /// The right window is copied from the window containing `t` before `t` is added to it.
    #[test]
    fn right_window_copy_comes_before_the_add() {
        let p = SlidingPlanner::new(5_000, 1 << 40).unwrap();
        let mut kw = KeyWindows::new();
        let (_, ops) = plan(&p, &mut kw, 9_200, -1);
        assert_eq!(
            ops,
            vec![
                SlotOp::Create { window: w(4_200, 9_200), seed: Seed::Empty },
                SlotOp::Add { window: w(4_200, 9_200) }
            ]
        );
        let (_, ops) = plan(&p, &mut kw, 8_000, 9_200);
        assert_eq!(
            ops,
            vec![
                SlotOp::Create { window: w(8_001, 13_001), seed: Seed::CopyOf(w(4_200, 9_200)) },
                SlotOp::Add { window: w(4_200, 9_200) },
                SlotOp::Create { window: w(3_000, 8_000), seed: Seed::Empty },
                SlotOp::Add { window: w(3_000, 8_000) },
            ]
        );
        assert_eq!(kw.get(w(8_001, 13_001)).map(|m| m.max_ts), Some(9_200));
        assert_eq!(kw.get(w(4_200, 9_200)).map(|m| m.max_ts), Some(9_200));
    }

    #[test]
    fn a_second_record_at_the_same_time_only_adds() {
        let p = SlidingPlanner::new(10, 100).unwrap();
        let mut kw = KeyWindows::new();
        plan(&p, &mut kw, 50, -1);
        plan(&p, &mut kw, 55, 50);
        // 55 is in 50's right window [51, 61] and its own left window [45, 55].
        let (_, ops) = plan(&p, &mut kw, 55, 55);
        assert_eq!(ops, vec![SlotOp::Add { window: w(51, 61) }, SlotOp::Add { window: w(45, 55) }]);
    }

    /// Previous record at `t - D - 1`: its right window is the current left window.
    #[test]
    fn previous_right_window_equal_to_left_window_is_created_once() {
        let p = SlidingPlanner::new(10, 100).unwrap();
        let mut kw = KeyWindows::new();
        for (t, st) in [(95, -1), (100, 95)] {
            plan(&p, &mut kw, t, st);
        }
        let (_, ops) = plan(&p, &mut kw, 111, 100);
        assert_eq!(
            ops,
            vec![SlotOp::Create { window: w(101, 111), seed: Seed::Empty }, SlotOp::Add { window: w(101, 111) }]
        );
    }

    #[test]
    fn early_records_share_the_first_window() {
        let p = SlidingPlanner::new(10, 100).unwrap();
        let mut kw = KeyWindows::new();
        let (_, ops) = plan(&p, &mut kw, 3, -1);
        assert_eq!(ops, vec![SlotOp::Create { window: w(0, 10), seed: Seed::Empty }, SlotOp::Add { window: w(0, 10) }]);
        let (_, ops) = plan(&p, &mut kw, 1, 3);
        // Right window of 1 is a copy of [0, 10] as it was (holding 3), then 1 joins [0, 10].
        assert_eq!(
            ops,
            vec![SlotOp::Create { window: w(2, 12), seed: Seed::CopyOf(w(0, 10)) }, SlotOp::Add { window: w(0, 10) }]
        );
        let (_, ops) = plan(&p, &mut kw, 7, 3);
        assert_eq!(
            ops,
            vec![
                SlotOp::Add { window: w(2, 12) },
                SlotOp::Create { window: w(4, 14), seed: Seed::Empty },
                SlotOp::Add { window: w(4, 14) },
                SlotOp::Add { window: w(0, 10) },
            ]
        );
    }

    /// Dropped iff `t + D < stream_time - grace`; otherwise each closed window is skipped.
    #[test]
    fn late_boundary_and_skipped_windows() {
        let p = SlidingPlanner::new(10, 5).unwrap();
        let (planned, ops) = plan(&p, &mut KeyWindows::new(), 25, 30);
        assert_eq!(planned.outcome, Outcome::Applied { skipped: 0 });
        assert_eq!(ops.len(), 2);
        let (planned, ops) = plan(&p, &mut KeyWindows::new(), 20, 36);
        assert_eq!(
            planned,
            Planned {
                outcome: Outcome::Dropped(DropReason::Late { window: w(20, 30), close_time: 31 }),
                stream_time: 36
            }
        );
        assert!(ops.is_empty());
        // Not late as a whole, but its only window is closed: Kafka Streams counts the skip.
        let (planned, ops) = plan(&p, &mut KeyWindows::new(), 20, 35);
        assert_eq!(planned.outcome, Outcome::Applied { skipped: 1 });
        assert!(ops.is_empty());

        let mut kw = KeyWindows::new();
        plan(&p, &mut kw, 30, -1);
        let (planned, ops) = plan(&p, &mut kw, 26, 40);
        // [20, 30] and the left window [16, 26] are closed; the right window [27, 37] is
        // created from [20, 30] although 26 goes nowhere.
        assert_eq!(planned.outcome, Outcome::Applied { skipped: 2 });
        assert_eq!(ops, vec![SlotOp::Create { window: w(27, 37), seed: Seed::CopyOf(w(20, 30)) }]);
        assert!(kw.get(w(16, 26)).is_none());
        assert_eq!(kw.get(w(20, 30)).map(|m| m.max_ts), Some(30));
    }

    #[test]
    fn closing_expiry_and_lookup() {
        let p = SlidingPlanner::new(10, 5).unwrap();
        let win = w(0, 10);
        assert!(!p.is_closed(win, 15));
        assert!(p.is_closed(win, 16));
        assert!(!p.is_expired(win, 35));
        assert!(p.is_expired(win, 36));
        assert_eq!(p.lookup(30), Lookup { min_start: 10, max_start: 31, min_end: i64::MIN });
        assert_eq!(p.lookup(5).min_start, 0);
    }
}
