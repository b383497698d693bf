//! Weir's group membership on the real broker, without pipelines: hosts split
//! an application's tasks, a host that leaves hands its tasks over at once, a
//! host that dies loses them when its session expires, standbys are placed
//! away from the owners, and no host's commits wait for a generation once the
//! group settled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weir::group::{Membership, Settings, Space};
use weir::task::TaskId;

use crate::support::{bootstrap, unique};

/// A host as the engine drives its membership: it takes what it is given
/// and says so.
struct Host {
    membership: Option<Membership>,
    active: BTreeSet<TaskId>,
    standby: BTreeSet<TaskId>,
    generation: i32,
}

impl Host {
    fn join(group: &str, instance: &str, session: Duration, space: &Space) -> Result<Self> {
        let settings = Settings {
            bootstrap: bootstrap(),
            group: group.to_owned(),
            instance: instance.to_owned(),
            client_id: format!("test-{instance}"),
            session_timeout: session,
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_millis(200),
            standbys: 1,
            acceptable_lag: 10_000,
            admin: None,
        };
        let membership = Membership::join(settings, space.clone())?;
        Ok(Self { membership: Some(membership), active: BTreeSet::new(), standby: BTreeSet::new(), generation: -1 })
    }

    fn pump(&mut self) -> Result<()> {
        let Some(m) = &self.membership else { return Ok(()) };
        if let Some(e) = m.take_fatal() {
            bail!("the group refused the host: {e}");
        }
        let Some(update) = m.take_update() else { return Ok(()) };
        if update.lost {
            self.active.clear();
            self.standby.clear();
        }
        if let Some(a) = update.assignment {
            self.active = a.active;
            self.standby = a.standby;
            self.generation = a.generation;
            let positions: BTreeMap<TaskId, i64> = self.active.iter().map(|&t| (t, 1)).collect();
            m.applied(a.generation, &self.active, positions);
        }
        Ok(())
    }
}

fn space(partitions: &[i32]) -> Space {
    let tasks: Vec<TaskId> = partitions
        .iter()
        .enumerate()
        .flat_map(|(sub, &n)| (0..n).map(move |partition| TaskId { sub, partition }))
        .collect();
    Space {
        stateful: tasks.iter().copied().collect(),
        inputs: (0..partitions.len()).map(|s| vec![format!("input-{s}")]).collect(),
        tasks,
    }
}

/// Pumps `hosts` until every task runs on exactly one live host and each host
/// holds its share, or `within` passes.
fn settle(hosts: &mut [Host], space: &Space, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        for h in hosts.iter_mut() {
            h.pump()?;
        }
        let live: Vec<&Host> = hosts.iter().filter(|h| h.membership.is_some()).collect();
        let mut seen = BTreeMap::new();
        for h in &live {
            for t in &h.active {
                *seen.entry(*t).or_insert(0) += 1;
            }
        }
        let complete = space.tasks.iter().all(|t| seen.get(t) == Some(&1));
        let fair = live.iter().all(|h| h.active.len() >= space.tasks.len() / live.len());
        if complete && fair && seen.len() == space.tasks.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let view: Vec<_> = live.iter().map(|h| (h.generation, &h.active)).collect();
            bail!("the group did not settle within {within:?}: {view:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pumps `hosts` until none waits for its place in a new generation (its
/// commits would be held back meanwhile), or `within` passes.
fn await_places(hosts: &mut [Host], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        for h in hosts.iter_mut() {
            h.pump()?;
        }
        let waiting: Vec<i32> = (hosts.iter())
            .filter(|h| h.membership.as_ref().is_some_and(Membership::between_generations))
            .map(|h| h.generation)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("hosts at generations {waiting:?} still wait for their place in a newer one after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hosts_split_the_tasks_and_a_host_that_leaves_hands_them_over_before_its_session_would_expire() -> Result<()> {
    let group = unique("group-leave");
    let space = space(&[8, 4]);
    // A session far longer than the test waits: only leaving moves the tasks.
    let session = Duration::from_secs(120);
    let mut hosts = vec![
        Host::join(&group, "a", session, &space)?,
        Host::join(&group, "b", session, &space)?,
        Host::join(&group, "c", session, &space)?,
    ];
    settle(&mut hosts, &space, Duration::from_secs(60))?;
    // Commits wait only while a generation forms, never after it settled.
    await_places(&mut hosts, Duration::from_secs(30))?;
    for h in &hosts {
        assert_eq!(h.active.len(), 4, "12 tasks on 3 hosts");
        // Standbys are never where the task runs.
        assert!(h.active.is_disjoint(&h.standby));
    }
    let total_standbys: usize = hosts.iter().map(|h| h.standby.len()).sum();
    assert_eq!(total_standbys, 12, "one standby per task");
    let before: Vec<BTreeSet<TaskId>> = hosts.iter().map(|h| h.active.clone()).collect();
    if let Some(m) = hosts[0].membership.take() {
        m.leave(Duration::from_secs(10));
    }
    settle(&mut hosts, &space, Duration::from_secs(30))?;
    await_places(&mut hosts, Duration::from_secs(30))?;
    // The hosts that stayed kept what they ran (only the leaver's tasks moved).
    for (h, had) in hosts.iter().zip(&before).skip(1) {
        assert!(had.is_subset(&h.active), "{had:?} not kept in {:?}", h.active);
    }
    // A host joining again takes a share back, taken from the others cooperatively.
    hosts[0] = Host::join(&group, "a", session, &space)?;
    settle(&mut hosts, &space, Duration::from_secs(60))?;
    await_places(&mut hosts, Duration::from_secs(30))?;
    for h in &hosts {
        assert_eq!(h.active.len(), 4);
    }
    for h in hosts.iter_mut() {
        if let Some(m) = h.membership.take() {
            m.leave(Duration::from_secs(10));
        }
    }
    Ok(())
}

#[test]
fn a_host_that_dies_loses_its_tasks_to_the_others_when_its_session_expires() -> Result<()> {
    let group = unique("group-die");
    let space = space(&[6]);
    let session = Duration::from_secs(2);
    let mut hosts = vec![Host::join(&group, "a", session, &space)?, Host::join(&group, "b", session, &space)?];
    settle(&mut hosts, &space, Duration::from_secs(60))?;
    let standby_of_b = hosts[1].standby.clone();
    assert_eq!(standby_of_b, hosts[0].active, "with two hosts, each keeps the other's tasks warm");
    // Dropped without leaving: the group notices only when the session expires.
    drop(hosts[0].membership.take());
    settle(&mut hosts, &space, Duration::from_secs(60))?;
    assert_eq!(hosts[1].active.len(), 6);
    if let Some(m) = hosts[1].membership.take() {
        m.leave(Duration::from_secs(10));
    }
    Ok(())
}

#[test]
fn a_second_host_with_the_same_instance_id_is_refused_with_the_reason() -> Result<()> {
    let group = unique("group-twin");
    let space = space(&[2]);
    let session = Duration::from_secs(10);
    let mut first = Host::join(&group, "same", session, &space)?;
    settle(std::slice::from_mut(&mut first), &space, Duration::from_secs(60))?;
    let mut second = Host::join(&group, "same", session, &space)?;
    settle(std::slice::from_mut(&mut second), &space, Duration::from_secs(60))?;
    // The newcomer took the identity; the first one hears it is fenced.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match first.pump() {
            Err(e) => {
                assert!(e.to_string().contains("instance id"), "{e}");
                break;
            }
            Ok(()) if Instant::now() > deadline => bail!("the fenced host never heard it"),
            Ok(()) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    if let Some(m) = second.membership.take() {
        m.leave(Duration::from_secs(10));
    }
    Ok(())
}

#[test]
fn a_host_is_never_given_a_task_its_topology_does_not_have() -> Result<()> {
    let group = unique("group-versions");
    let session = Duration::from_secs(10);
    // The leader (joined first) runs a topology of 8 tasks, the newcomer one of 4.
    let (wide, narrow) = (space(&[8]), space(&[4]));
    let mut leader = Host::join(&group, "a", session, &wide)?;
    settle(std::slice::from_mut(&mut leader), &wide, Duration::from_secs(60))?;
    let mut newcomer = Host::join(&group, "b", session, &narrow)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while newcomer.generation < 0 || leader.active.len() == 8 {
        leader.pump()?;
        newcomer.pump()?;
        if Instant::now() > deadline {
            bail!("the newcomer was never given a share: {:?} / {:?}", leader.active, newcomer.active);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in newcomer.active.iter().chain(&newcomer.standby) {
        assert!(narrow.tasks.contains(t), "given {t:?}, which its topology does not have");
    }
    for h in [&mut leader, &mut newcomer] {
        if let Some(m) = h.membership.take() {
            m.leave(Duration::from_secs(10));
        }
    }
    Ok(())
}
