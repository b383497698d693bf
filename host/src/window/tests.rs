//! A native executor for planned [`SlotOp`]s and brute-force oracles for every window kind.
//!
//! The executor runs ops over an in-memory map `Window -> Vec<i64>` (the sorted timestamps
//! folded into each slot, so copies and merges are visible) and checks after every record
//! that ops named only live slots, that the planner's metadata matches the slots, and that
//! a window never changed once the planner called it closed. The oracles derive the
//! expected windows from the accepted records alone, from the Kafka Streams definitions
//! (see the planners' module docs), not from the planners' code.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

type Slots = BTreeMap<Window, Vec<i64>>;

/// Runs one key's records through a planner and the slot executor.
struct Harness<P> {
    planner: P,
    meta: KeyWindows,
    slots: Slots,
    stream_time: i64,
    /// Accepted and dropped records, in arrival order.
    accepted: Vec<i64>,
    dropped: Vec<i64>,
    /// Every plan, for comparing harnesses.
    log: Vec<(Planned, Vec<SlotOp>)>,
    /// The value of each window when it was first seen closed.
    finals: Slots,
    created: BTreeSet<Window>,
    tombstones: BTreeSet<Window>,
    /// Delete expired windows after each record.
    expire: bool,
    /// Give the planner only the windows of its lookup range.
    restrict: bool,
}

impl<P: Planner> Harness<P> {
    fn new(planner: P) -> Self {
        Self {
            planner,
            meta: KeyWindows::new(),
            slots: Slots::new(),
            stream_time: -1,
            accepted: Vec::new(),
            dropped: Vec::new(),
            log: Vec::new(),
            finals: Slots::new(),
            created: BTreeSet::new(),
            tombstones: BTreeSet::new(),
            expire: false,
            restrict: false,
        }
    }

    fn run(planner: P, arrivals: &[i64]) -> Self {
        let mut h = Self::new(planner);
        h.feed_all(arrivals);
        h
    }

    fn feed_all(&mut self, arrivals: &[i64]) {
        for &t in arrivals {
            self.feed(t);
        }
    }

    fn feed(&mut self, t: i64) {
        let mut ops = Vec::new();
        let planned = if self.restrict {
            let lookup = self.planner.lookup(t);
            let mut part: KeyWindows = self.meta.iter().filter(|m| lookup.contains(m.window)).collect();
            let before: Vec<Window> = part.iter().map(|m| m.window).collect();
            let planned = self.planner.plan(&mut part, t, self.stream_time, &mut ops);
            for w in before {
                if part.get(w).is_none() {
                    self.meta.remove(w);
                }
            }
            for m in part.iter() {
                self.meta.insert(m);
            }
            planned
        } else {
            self.planner.plan(&mut self.meta, t, self.stream_time, &mut ops)
        };
        assert_eq!(planned.stream_time, self.stream_time.max(t), "stream time after {t}");
        for op in &ops {
            self.apply(*op, t, planned.stream_time);
        }
        match planned.outcome {
            Outcome::Applied { .. } => self.accepted.push(t),
            Outcome::Dropped(_) => {
                assert!(ops.is_empty(), "a dropped record planned ops: {ops:?}");
                self.dropped.push(t);
            }
        }
        self.stream_time = planned.stream_time;
        self.log.push((planned, ops));
        self.check();
        if self.expire {
            let (p, st) = (&self.planner, self.stream_time);
            self.meta.retain(|m| !p.is_expired(m.window, st));
            self.slots.retain(|w, _| !p.is_expired(*w, st));
            self.finals.retain(|w, _| !p.is_expired(*w, st));
        }
    }

    fn apply(&mut self, op: SlotOp, t: i64, stream_time: i64) {
        let open = |w: Window| !self.planner.is_closed(w, stream_time);
        match op {
            SlotOp::Create { window, seed } => {
                assert!(open(window), "created closed {window:?}");
                assert!(!self.slots.contains_key(&window), "created existing {window:?}");
                let value = match seed {
                    Seed::Empty => Vec::new(),
                    Seed::CopyOf(source) => self.slots.get(&source).expect("copy of a missing slot").clone(),
                };
                self.slots.insert(window, value);
                self.created.insert(window);
            }
            SlotOp::Add { window } => {
                assert!(open(window), "added to closed {window:?}");
                let slot = self.slots.get_mut(&window).expect("add to a missing slot");
                slot.push(t);
                slot.sort_unstable();
            }
            SlotOp::Merge { into, from } => {
                assert!(open(into) && into != from, "merge {from:?} into {into:?}");
                let from = self.slots.get(&from).expect("merge from a missing slot").clone();
                let slot = self.slots.get_mut(&into).expect("merge into a missing slot");
                slot.extend(from);
                slot.sort_unstable();
            }
            SlotOp::Remove { window } => {
                assert!(open(window), "removed closed {window:?}");
                assert!(self.slots.remove(&window).is_some(), "removed a missing slot {window:?}");
                self.tombstones.insert(window);
            }
        }
    }

    fn check(&mut self) {
        let meta: Vec<Window> = self.meta.iter().map(|m| m.window).collect();
        let slots: Vec<Window> = self.slots.keys().copied().collect();
        assert_eq!(meta, slots, "metadata and slots disagree");
        for m in self.meta.iter() {
            assert_eq!(self.slots[&m.window].last(), Some(&m.max_ts), "max_ts of {:?}", m.window);
        }
        for (w, value) in &self.slots {
            if self.planner.is_closed(*w, self.stream_time) {
                let first = self.finals.entry(*w).or_insert_with(|| value.clone());
                assert_eq!(first, value, "closed window {w:?} changed");
            }
        }
        for w in self.finals.keys() {
            assert!(self.slots.contains_key(w), "closed window {w:?} was removed");
        }
    }
}

/// Windows of a definition, epoch-aligned, by scanning every start.
fn time_windows_containing(size: i64, advance: i64, t: i64) -> Vec<Window> {
    (0..)
        .map(|i| i * advance)
        .take_while(|&s| s <= t)
        .filter(|&s| s + size > t)
        .map(|s| Window { start: s, end: s + size })
        .collect()
}

/// Time windows: every window holding at least one record.
fn time_exact(size: i64, advance: i64, records: &[i64]) -> Slots {
    let mut slots = Slots::new();
    for &t in records {
        for w in time_windows_containing(size, advance, t) {
            slots.entry(w).or_default().push(t);
        }
    }
    slots.values_mut().for_each(|v| v.sort_unstable());
    slots
}

/// Time windows with grace (§3): a record goes into each of its windows with
/// `end > stream_time - grace`; it is dropped if there is none. Returns the windows and
/// the dropped records.
fn time_with_grace(size: i64, advance: i64, grace: i64, arrivals: &[i64]) -> (Slots, Vec<i64>) {
    let (mut slots, mut dropped, mut st) = (Slots::new(), Vec::new(), -1);
    for &t in arrivals {
        st = st.max(t);
        let open: Vec<_> =
            time_windows_containing(size, advance, t).into_iter().filter(|w| w.end > st - grace).collect();
        if open.is_empty() {
            dropped.push(t);
        }
        for w in open {
            slots.entry(w).or_default().push(t);
        }
    }
    slots.values_mut().for_each(|v| v.sort_unstable());
    (slots, dropped)
}

/// Sliding windows (KIP-450): each record's left window (early records share `[0, D]`)
/// and its right window when some record lies in `(r, r + 1 + D]`; each holds exactly the
/// records in `[start, start + D]`.
fn sliding_exact(d: i64, records: &[i64]) -> Slots {
    let mut starts = BTreeSet::new();
    for &r in records {
        starts.insert((r - d).max(0));
        if records.iter().any(|&x| r < x && x <= r + 1 + d) {
            starts.insert(r + 1);
        }
    }
    starts
        .into_iter()
        .map(|s| {
            let mut v: Vec<i64> = records.iter().copied().filter(|&x| s <= x && x <= s + d).collect();
            v.sort_unstable();
            (Window { start: s, end: s + d + 1 }, v)
        })
        .collect()
}

/// Sessions: sorted records split where consecutive ones are more than `gap` apart.
fn session_exact(gap: i64, records: &[i64]) -> Slots {
    let mut sorted = records.to_vec();
    sorted.sort_unstable();
    let mut groups: Vec<Vec<i64>> = Vec::new();
    for t in sorted {
        match groups.last_mut() {
            Some(g) if g.last().is_some_and(|&last| t - last <= gap) => g.push(t),
            _ => groups.push(vec![t]),
        }
    }
    groups.into_iter().map(|g| (Window { start: g[0], end: g[g.len() - 1] + 1 }, g)).collect()
}

/// Sessions with grace (§2, with Weir's closed sessions left alone): a record joins the
/// open sessions overlapping `[t - G, t + G]` unless the merged session's last millisecond
/// is before `stream_time - grace - G`. Returns the sessions and the dropped records.
fn session_with_grace(gap: i64, grace: i64, arrivals: &[i64]) -> (Slots, Vec<i64>) {
    let (mut sessions, mut dropped, mut st): (Vec<(i64, i64, Vec<i64>)>, _, _) = (Vec::new(), Vec::new(), -1);
    for &t in arrivals {
        st = st.max(t);
        let close = st - grace - gap;
        let (touching, rest): (Vec<_>, Vec<_>) =
            sessions.into_iter().partition(|(first, last, _)| *last >= close && *last >= t - gap && *first <= t + gap);
        let first = touching.iter().map(|s| s.0).chain([t]).min().unwrap_or(t);
        let last = touching.iter().map(|s| s.1).chain([t]).max().unwrap_or(t);
        sessions = rest;
        if last < close {
            dropped.push(t);
            sessions.extend(touching);
        } else {
            let mut records: Vec<i64> = touching.into_iter().flat_map(|s| s.2).chain([t]).collect();
            records.sort_unstable();
            sessions.push((first, last, records));
        }
    }
    (sessions.into_iter().map(|(first, last, v)| (Window { start: first, end: last + 1 }, v)).collect(), dropped)
}

fn arrivals() -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        prop::collection::vec(0i64..400, 1..50),
        // Mostly in order with some stragglers: exercises the grace boundaries.
        prop::collection::vec((0i64..20, 0i64..60), 1..50).prop_map(|steps| {
            let mut now = 0;
            steps
                .into_iter()
                .map(|(step, back)| {
                    now += step;
                    (now - back).max(0)
                })
                .collect()
        }),
    ]
}

/// Grace periods that close windows during a run.
fn small_grace() -> impl Strategy<Value = u64> {
    0u64..120
}

/// Grace periods long enough that nothing closes: the oracle over all records is exact.
fn no_drop_grace() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64 << 40), 10_000u64..1_000_000]
}

/// Every window ever created and not removed still exists.
fn assert_tombstones_match<P: Planner>(h: &Harness<P>) {
    let live: BTreeSet<Window> = h.slots.keys().copied().collect();
    let expected: BTreeSet<Window> = h.created.difference(&h.tombstones).copied().collect();
    assert_eq!(live, expected);
}

/// The same plans whether the caller keeps every window, deletes expired ones, or loads
/// only the lookup range; and the surviving windows are equal.
fn assert_expiry_and_lookup_are_invisible<P: Planner + Clone>(planner: P, arrivals: &[i64]) {
    let full = Harness::run(planner.clone(), arrivals);
    let mut lean = Harness::new(planner);
    lean.expire = true;
    lean.restrict = true;
    lean.feed_all(arrivals);
    assert_eq!(full.log, lean.log);
    for (w, v) in &lean.slots {
        assert_eq!(full.slots.get(w), Some(v));
    }
}

#[test]
fn sliding_javadoc_example_in_every_arrival_order() {
    let orders = [
        [8_000, 9_200, 12_400],
        [8_000, 12_400, 9_200],
        [9_200, 8_000, 12_400],
        [9_200, 12_400, 8_000],
        [12_400, 8_000, 9_200],
        [12_400, 9_200, 8_000],
    ];
    let w = |start: i64, last: i64| Window { start, end: last + 1 };
    let want: Slots = [
        (w(3_000, 8_000), vec![8_000]),
        (w(4_200, 9_200), vec![8_000, 9_200]),
        (w(7_400, 12_400), vec![8_000, 9_200, 12_400]),
        (w(8_001, 13_001), vec![9_200, 12_400]),
        (w(9_201, 14_201), vec![12_400]),
    ]
    .into_iter()
    .collect();
    for order in orders {
        let h = Harness::run(SlidingPlanner::new(5_000, 1 << 40).unwrap(), &order);
        assert_eq!(h.slots, want, "arrival order {order:?}");
        assert_eq!(sliding_exact(5_000, &order), want);
    }
}

/// Kafka Streams' sliding algorithm assumes no window is missing. Once grace has left
/// some out, its backward scan can take the previous record from an older window and skip
/// a right window, and a later copy then carries a record outside the copy's bounds. Weir
/// follows it; this pins the behaviour (found by `sliding_windows_drop_exactly_the_late_records`).
#[test]
fn late_data_can_leak_into_a_right_window_as_in_kafka_streams() {
    let h = Harness::run(SlidingPlanner::new(15, 18).unwrap(), &[0, 0, 6, 38, 40, 40, 11, 22, 21]);
    let w = |start: i64, last: i64| Window { start, end: last + 1 };
    // 11 went into 6's right window [7, 22] while [0, 15] and [1, 16] were closed; 22 then
    // took the previous record from [1, 16] (6, whose right window exists) instead of 11,
    // so 11's right window [12, 27] was never made, and 21's right window copied [7, 22].
    assert_eq!(h.slots.get(&w(22, 37)), Some(&vec![11, 22]));
    assert_eq!(h.slots.get(&w(12, 27)), None);
}

#[test]
fn session_tombstones_name_the_merged_away_sessions() {
    let h = Harness::run(SessionPlanner::new(10, 1 << 40).unwrap(), &[0, 30, 20, 10]);
    let w = |start: i64, last: i64| Window { start, end: last + 1 };
    assert_eq!(h.tombstones, [w(0, 0), w(30, 30), w(20, 30)].into_iter().collect());
    assert_eq!(h.slots, [(w(0, 30), vec![0, 10, 20, 30])].into_iter().collect());
    assert_tombstones_match(&h);
}

proptest! {
    #[test]
    fn time_windows_match_the_oracle_without_drops(
        size in 1i64..60, advance_pct in 1i64..=100, grace in no_drop_grace(), arrivals in arrivals(),
    ) {
        let advance = (size * advance_pct / 100).max(1);
        let planner = TimePlanner::new(Windowing::hopping(size as u64, advance as u64).unwrap(), grace).unwrap();
        let h = Harness::run(planner, &arrivals);
        prop_assert!(h.dropped.is_empty());
        prop_assert_eq!(&h.slots, &time_exact(size, advance, &arrivals));
        assert_tombstones_match(&h);
    }

    #[test]
    fn time_windows_follow_the_per_window_grace_rule(
        size in 1i64..60, advance_pct in 1i64..=100, grace in small_grace(), arrivals in arrivals(),
    ) {
        let advance = (size * advance_pct / 100).max(1);
        let planner = TimePlanner::new(Windowing::hopping(size as u64, advance as u64).unwrap(), grace).unwrap();
        let h = Harness::run(planner, &arrivals);
        let (want, dropped) = time_with_grace(size, advance, grace as i64, &arrivals);
        prop_assert_eq!(&h.slots, &want);
        prop_assert_eq!(&h.dropped, &dropped);
        assert_expiry_and_lookup_are_invisible(planner, &arrivals);
    }

    #[test]
    fn sliding_windows_match_the_oracle_without_drops(
        d in 1i64..60, grace in no_drop_grace(), arrivals in arrivals(),
    ) {
        let h = Harness::run(SlidingPlanner::new(d as u64, grace).unwrap(), &arrivals);
        prop_assert!(h.dropped.is_empty());
        prop_assert_eq!(&h.slots, &sliding_exact(d, &arrivals));
        assert_tombstones_match(&h);
    }

    #[test]
    fn sliding_windows_drop_exactly_the_late_records(
        d in 1i64..60, grace in small_grace(), arrivals in arrivals(),
    ) {
        let planner = SlidingPlanner::new(d as u64, grace).unwrap();
        let h = Harness::run(planner, &arrivals);
        // §1: dropped iff t + D < stream time (including t) - grace.
        let mut st = -1;
        let dropped: Vec<i64> = arrivals.iter().copied().filter(|&t| {
            st = st.max(t);
            t + d < st - grace as i64
        }).collect();
        prop_assert_eq!(&h.dropped, &dropped);
        // Windows hold only accepted records (not always within their bounds: see
        // `late_data_can_leak_into_a_right_window_as_in_kafka_streams`).
        for v in h.slots.values() {
            prop_assert!(v.iter().all(|t| h.accepted.contains(t)));
        }
        assert_tombstones_match(&h);
        assert_expiry_and_lookup_are_invisible(planner, &arrivals);
    }

    #[test]
    fn sessions_match_the_oracle_without_drops(
        gap in 1i64..40, grace in no_drop_grace(), arrivals in arrivals(),
    ) {
        let h = Harness::run(SessionPlanner::new(gap as u64, grace).unwrap(), &arrivals);
        prop_assert!(h.dropped.is_empty());
        prop_assert_eq!(&h.slots, &session_exact(gap, &arrivals));
        assert_tombstones_match(&h);
    }

    #[test]
    fn sessions_follow_the_merged_window_grace_rule(
        gap in 1i64..40, grace in small_grace(), arrivals in arrivals(),
    ) {
        let planner = SessionPlanner::new(gap as u64, grace).unwrap();
        let h = Harness::run(planner, &arrivals);
        let (want, dropped) = session_with_grace(gap, grace as i64, &arrivals);
        prop_assert_eq!(&h.slots, &want);
        prop_assert_eq!(&h.dropped, &dropped);
        assert_tombstones_match(&h);
        assert_expiry_and_lookup_are_invisible(planner, &arrivals);
    }
}
