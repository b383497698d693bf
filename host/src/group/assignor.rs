//! Where tasks run: the placement the group's leader computes from what every
//! member reports — the tasks it runs, and how far its local copy of each
//! task's stores is.
//!
//! - **Balanced**: every member runs ⌊T/N⌋ or ⌈T/N⌉ of the T tasks.
//! - **Sticky**: a task stays with the member that runs it while that member's
//!   share allows.
//! - **Warm before it moves**: a stateful task moves off a member that is still
//!   in the group (to balance the load) only to a member whose copy of its
//!   stores is within `acceptable_lag` changelog records of the owner's.
//!   Until then it stays, and the member it will go to keeps a warm-up copy
//!   (a standby) and asks for another round now and then (a probing rebalance).
//! - **Cooperative**: a task taken from a member that is still in the group is
//!   given to nobody in this generation; that member commits and lets it go,
//!   then asks for the next round, where the task is free.
//! - **Warm first**: a free task (its owner left) goes to the member with the
//!   most of its state (a standby's), among those with room; if none of them
//!   is caught up (within `acceptable_lag` of the warmest copy), to the
//!   least loaded member that is, past its share, while the member that had
//!   room warms a copy up to take it later (as Kafka Streams' high-availability
//!   assignor does: a failover never waits for a full restore to keep balance).
//! - **Standbys**: each stateful task gets up to `standbys` copies on members
//!   other than its owner, the warmest first, spread evenly.

use std::collections::{BTreeMap, BTreeSet};

use crate::task::TaskId;

/// What one member of the group reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    /// The tasks it runs.
    pub owned: BTreeSet<TaskId>,
    /// The generation in which it was given them (a stale claim loses to a newer one).
    pub generation: i32,
    /// How far its copy of a task's stores is (the sum of their changelog
    /// positions): larger is warmer. Absent: no copy.
    pub positions: BTreeMap<TaskId, i64>,
}

/// The placement of one generation, per member (in the order given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The tasks each member runs.
    pub active: Vec<BTreeSet<TaskId>>,
    /// The tasks each member keeps a standby copy of.
    pub standby: Vec<BTreeSet<TaskId>>,
    /// Whether each member must let tasks go and then ask for another round.
    pub revoking: Vec<bool>,
    /// Whether each member warms up tasks it is to take (and should ask for
    /// another round once they may be warm).
    pub warming: Vec<bool>,
}

/// Places `tasks` on `members` (in a fixed order: every leader sorts them the
/// same way). Tasks in `stateful` get standbys, and move between live members
/// only to a copy within `acceptable_lag` records of the owner's.
pub fn assign(
    tasks: &[TaskId],
    stateful: &BTreeSet<TaskId>,
    members: &[MemberView],
    standbys: usize,
    acceptable_lag: i64,
) -> Placement {
    let n = members.len();
    let mut placement = Placement {
        active: vec![BTreeSet::new(); n],
        standby: vec![BTreeSet::new(); n],
        revoking: vec![false; n],
        warming: vec![false; n],
    };
    if n == 0 {
        return placement;
    }
    let known: BTreeSet<TaskId> = tasks.iter().copied().collect();
    // Who runs what now: the newest claim wins a task claimed twice.
    let mut owner: BTreeMap<TaskId, usize> = BTreeMap::new();
    for (m, member) in members.iter().enumerate() {
        for &task in member.owned.iter().filter(|t| known.contains(t)) {
            match owner.get(&task) {
                Some(&o) if members[o].generation >= member.generation => {}
                _ => {
                    owner.insert(task, m);
                }
            }
        }
    }
    let owned_count = |m: usize| owner.values().filter(|&&o| o == m).count();
    // Shares: ⌈T/N⌉ for as many members as the remainder, the members running
    // most now first (fewer moves); ⌊T/N⌋ for the rest.
    let total = known.len();
    let (floor, extra) = (total / n, total % n);
    let mut by_load: Vec<usize> = (0..n).collect();
    by_load.sort_by_key(|&m| (std::cmp::Reverse(owned_count(m)), m));
    let mut share = vec![floor; n];
    for &m in by_load.iter().take(extra) {
        share[m] += 1;
    }
    // Sticky: each member keeps what it runs, up to its share, spreading
    // sub-topologies (it keeps its lowest tasks of each in turn).
    let mut planned: Vec<BTreeSet<TaskId>> = vec![BTreeSet::new(); n];
    let mut moving: Vec<(TaskId, Option<usize>)> = Vec::new();
    for m in 0..n {
        let mine: Vec<TaskId> = owner.iter().filter(|&(_, &o)| o == m).map(|(t, _)| *t).collect();
        for task in round_robin_by_sub(&mine) {
            if planned[m].len() < share[m] {
                planned[m].insert(task);
            } else {
                moving.push((task, Some(m)));
            }
        }
    }
    moving.extend(known.iter().filter(|t| !owner.contains_key(t)).map(|&t| (t, None)));
    moving.sort_unstable();
    let position = |m: usize, t: &TaskId| members[m].positions.get(t).copied();
    for (task, from) in moving {
        let receiver = (0..n).filter(|&m| Some(m) != from && planned[m].len() < share[m]).max_by_key(|&m| {
            let of_sub = planned[m].iter().filter(|t| t.sub == task.sub).count();
            (
                position(m, &task).map_or(i128::MIN, i128::from),
                std::cmp::Reverse(of_sub),
                std::cmp::Reverse(planned[m].len()),
                std::cmp::Reverse(m),
            )
        });
        // With shares summing to the task count there is always room, except
        // for a task moving off a member that is alone in the group.
        let Some(receiver) = receiver.or(from) else { continue };
        // A free task whose receiver is cold goes to a caught-up copy (a
        // standby within `acceptable_lag` of the warmest), even past that
        // member's share: its restore is short. The receiver warms a copy up
        // and takes the task later (balance moves it when warm).
        let best = (0..n).filter_map(|m| position(m, &task)).max();
        let caught_up =
            |m: usize| best.is_some_and(|b| position(m, &task).is_some_and(|p| p >= b.saturating_sub(acceptable_lag)));
        if from.is_none() && stateful.contains(&task) && !caught_up(receiver) {
            let warmest = (0..n).filter(|&m| caught_up(m)).min_by_key(|&m| (planned[m].len(), m));
            if let Some(warmest) = warmest {
                planned[warmest].insert(task);
                placement.standby[receiver].insert(task);
                placement.warming[receiver] = true;
                continue;
            }
        }
        let warm = |m: usize| position(m, &task).unwrap_or(0);
        let cold = |f: usize| stateful.contains(&task) && warm(receiver) < warm(f).saturating_sub(acceptable_lag);
        match from {
            Some(f) if f != receiver && cold(f) => {
                // Not warm enough to take it without a long restore: the owner
                // keeps it while the receiver warms a copy up.
                planned[f].insert(task);
                placement.standby[receiver].insert(task);
                placement.warming[receiver] = true;
            }
            Some(f) if f != receiver => {
                // Cooperative: the owner lets it go first; the receiver keeps a
                // copy meanwhile.
                placement.revoking[f] = true;
                planned[receiver].insert(task);
                placement.standby[receiver].insert(task);
            }
            _ => {
                planned[receiver].insert(task);
            }
        }
    }
    for (m, tasks) in planned.into_iter().enumerate() {
        for task in tasks {
            let moving_in = placement.standby[m].contains(&task);
            if !moving_in {
                placement.active[m].insert(task);
            }
        }
    }
    // Standbys: warmest first, then the member with fewest, never on the owner
    // (or on the member it is moving to, which holds one already).
    let wanted = standbys.min(n.saturating_sub(1));
    let per_member = (stateful.iter().filter(|t| known.contains(t)).count() * wanted).div_ceil(n.max(1));
    for task in known.iter().filter(|t| stateful.contains(t)) {
        let mut have = (0..n).filter(|&m| placement.standby[m].contains(task)).count();
        while have < wanted {
            let runs = |m: usize| placement.active[m].contains(task) || placement.standby[m].contains(task);
            let pick = (0..n).filter(|&m| !runs(m)).min_by_key(|&m| {
                let count = placement.standby[m].len();
                (count >= per_member, std::cmp::Reverse(position(m, task).map_or(i128::MIN, i128::from)), count, m)
            });
            let Some(m) = pick else { break };
            placement.standby[m].insert(*task);
            have += 1;
        }
    }
    placement
}

/// `tasks` reordered so that sub-topologies alternate: the first of each, then
/// the second of each, and so on.
fn round_robin_by_sub(tasks: &[TaskId]) -> Vec<TaskId> {
    let mut by_sub: BTreeMap<usize, Vec<TaskId>> = BTreeMap::new();
    for &t in tasks {
        by_sub.entry(t.sub).or_default().push(t);
    }
    let longest = by_sub.values().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|i| by_sub.values().filter_map(move |v| v.get(i).copied())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(sub: usize, partition: i32) -> TaskId {
        TaskId { sub, partition }
    }

    fn tasks(subs: &[i32]) -> Vec<TaskId> {
        subs.iter().enumerate().flat_map(|(s, &n)| (0..n).map(move |p| t(s, p))).collect()
    }

    fn member(owned: &[TaskId]) -> MemberView {
        MemberView { owned: owned.iter().copied().collect(), generation: 1, positions: BTreeMap::new() }
    }

    /// Runs rounds as the group would: members let go of what they lost and
    /// take what they got, until nobody is revoking. Returns the final
    /// placement and the number of rounds.
    /// Between rounds every copy of a task (active or standby) catches up
    /// with its changelog (at [`AT`]).
    fn settle(all: &[TaskId], members: &mut [MemberView], standbys: usize) -> (Placement, usize) {
        let stateful: BTreeSet<TaskId> = all.iter().copied().collect();
        for round in 1..10 {
            let p = assign(all, &stateful, members, standbys, LAG);
            for (m, member) in members.iter_mut().enumerate() {
                member.owned = p.active[m].clone();
                member.generation += 1;
                for t in p.active[m].iter().chain(&p.standby[m]) {
                    member.positions.insert(*t, AT);
                }
            }
            if !p.revoking.iter().any(|&r| r) && !p.warming.iter().any(|&w| w) {
                return (p, round);
            }
        }
        panic!("did not settle in 10 rounds");
    }

    const LAG: i64 = 100;
    const AT: i64 = 1_000;

    #[test]
    fn a_new_group_spreads_tasks_evenly_and_every_sub_topology_over_the_members() {
        let all = tasks(&[6, 6]);
        let (p, rounds) = settle(&all, &mut [member(&[]), member(&[]), member(&[])], 0);
        assert_eq!(rounds, 1);
        for active in &p.active {
            assert_eq!(active.len(), 4);
            assert_eq!(active.iter().filter(|t| t.sub == 0).count(), 2, "{active:?}");
        }
    }

    #[test]
    fn a_task_whose_owner_left_goes_to_the_member_with_its_standby() {
        let all = tasks(&[4]);
        let stateful: BTreeSet<TaskId> = all.iter().copied().collect();
        // Three members ran 0,1 / 2 / 3; the first left. Its task 1 has a standby
        // on the third member, which therefore takes it.
        let mut b = member(&[t(0, 2)]);
        b.positions.insert(t(0, 0), 10);
        let mut c = member(&[t(0, 3)]);
        c.positions.insert(t(0, 1), 40);
        let p = assign(&all, &stateful, &[b, c], 1, LAG);
        assert!(p.active[1].contains(&t(0, 1)), "{p:?}");
        assert!(p.active[0].contains(&t(0, 0)), "{p:?}");
        assert_eq!(p.revoking, vec![false, false]);
    }

    #[test]
    fn a_free_task_goes_to_its_warm_standby_even_past_its_share_and_the_cold_member_warms_up() {
        let all = tasks(&[6]);
        let stateful: BTreeSet<TaskId> = all.iter().copied().collect();
        // Three members ran 0,1 / 2,3 / 4,5; the third left. The first has warm
        // standbys of 4 and 5, the second copies far behind: balance would give
        // the second one of them, but a caught-up copy takes both at once.
        let mut a = member(&all[..2]);
        let mut b = member(&all[2..4]);
        for task in &all[4..] {
            a.positions.insert(*task, AT);
            b.positions.insert(*task, AT - 10 * LAG);
        }
        let mut members = vec![a, b];
        let p = assign(&all, &stateful, &members, 1, LAG);
        assert_eq!(p.active[0].len(), 4, "{p:?}");
        assert!(p.active[0].contains(&t(0, 4)) && p.active[0].contains(&t(0, 5)), "{p:?}");
        assert_eq!(p.warming, vec![false, true]);
        // Once the second member's copy is warm, balance is restored.
        let (last, _) = settle(&all, &mut members, 1);
        assert_eq!(last.active[0].len(), 3);
        assert_eq!(last.active[1].len(), 3);
    }

    #[test]
    fn scaling_up_warms_what_the_new_member_will_take_then_moves_only_that() {
        let all = tasks(&[8]);
        let mut members = vec![member(&all[..4]), member(&all[4..]), member(&[])];
        for m in &mut members[..2] {
            m.positions = m.owned.iter().map(|&t| (t, AT)).collect();
        }
        let stateful: BTreeSet<TaskId> = all.iter().copied().collect();
        let first = assign(&all, &stateful, &members, 0, LAG);
        // Cold: the owners keep everything; the newcomer warms what it will take.
        assert!(first.active[2].is_empty());
        assert_eq!(first.active[0].len() + first.active[1].len(), 8);
        assert_eq!(first.standby[2].len(), 2);
        assert_eq!(first.warming, vec![false, false, true]);
        assert_eq!(first.revoking, vec![false, false, false]);
        // Warm: the owners let those go (a round), the newcomer takes them (another).
        let (last, rounds) = settle(&all, &mut members, 0);
        assert_eq!(rounds, 3);
        assert_eq!(last.active[2], first.standby[2]);
    }

    proptest! {
        #[test]
        fn placements_are_complete_disjoint_balanced_and_settle(
            subs in proptest::collection::vec(1i32..9, 1..4),
            owners in proptest::collection::vec(0usize..6, 0..30),
            n in 1usize..6,
            standbys in 0usize..3,
            positions in proptest::collection::vec((0usize..6, 0usize..30, 0i64..100), 0..20),
        ) {
            let all = tasks(&subs);
            let stateful: BTreeSet<TaskId> = all.iter().copied().collect();
            let mut members: Vec<MemberView> = (0..n).map(|_| member(&[])).collect();
            // Some tasks are claimed by members (even by several, with generations).
            for (i, &o) in owners.iter().enumerate() {
                if let Some(task) = all.get(i) && o < n {
                    members[o].owned.insert(*task);
                }
            }
            for &(m, i, at) in &positions {
                if m < n && let Some(task) = all.get(i) {
                    members[m].positions.insert(*task, at);
                }
            }
            let p = assign(&all, &stateful, &members, standbys, LAG);
            // Never two owners; a task given to a member is not also its standby.
            for task in &all {
                let holders: Vec<usize> = (0..n).filter(|&m| p.active[m].contains(task)).collect();
                prop_assert!(holders.len() <= 1, "{task} on {holders:?}");
                for &m in &holders {
                    prop_assert!(!p.standby[m].contains(task));
                }
                // A task taken from a member still in the group is nobody's yet.
                let claimed_by = (0..n).find(|&m| members[m].owned.contains(task));
                if let (Some(c), Some(&h)) = (claimed_by, holders.first()) {
                    prop_assert_eq!(c, h, "{} moved from {} to {} without being let go first", task, c, h);
                }
                if claimed_by.is_some() && holders.is_empty() {
                    prop_assert!(p.revoking[claimed_by.unwrap_or(0)], "{} dropped without a revocation", task);
                }
            }
            let (last, _) = settle(&all, &mut members, standbys);
            let total: usize = last.active.iter().map(BTreeSet::len).sum();
            prop_assert_eq!(total, all.len());
            let (lo, hi) = (all.len() / n, all.len().div_ceil(n));
            for a in &last.active {
                prop_assert!(a.len() >= lo && a.len() <= hi, "{:?}", last.active);
            }
            for task in &all {
                let copies = (0..n).filter(|&m| last.standby[m].contains(task)).count();
                prop_assert_eq!(copies, standbys.min(n - 1));
            }
        }
    }
}
