//! Joins through a task, with the SDK itself (natively) as the guest.
//!
//! Profiles read as a table from change-data-capture envelopes and clicks
//! joined with them: whatever the interleaving of the two topics' reads and
//! however batches, commits and crashes are cut (a crash loses what was not
//! committed; the next task starts from stores rebuilt from their changelogs),
//! each click is joined with the profile as of its place in timestamp order
//! across the topics — checked against a recomputation that merges the two
//! topics by timestamp and keeps the table in a map. Two tables joined on key
//! (inner, left, outer) give exactly the updates and tombstones a
//! recomputation over two maps gives. Bad records are dead-lettered naming
//! their node.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use weir_sdk::dsl::{StreamsBuilder, Topology as Built};

use super::planned_tests::{Native, native_env};
use super::*;
use crate::config::{EmitMode, FailurePolicy};
use crate::state::{Change, MemoryStore, Store};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    region: String,
}

/// A change-data-capture envelope: `op` is `c`, `u` or `d`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    op: String,
    after: Option<Profile>,
}

fn row(_: &String, e: Envelope) -> Result<Option<Profile>, String> {
    Ok(if e.op == "d" { None } else { e.after })
}

fn enrich(clicks: &u64, p: Option<&Profile>) -> String {
    format!("{clicks}@{}", p.map_or("-", |p| p.region.as_str()))
}

fn enrich_inner(clicks: &u64, p: &Profile) -> String {
    format!("{clicks}@{}", p.region)
}

/// `profiles → row → profiles-table`; `clicks ⋈ profiles-table → enriched`,
/// and the table's updates to `profile-updates`.
fn enrichment(left: bool) -> Built {
    let b = StreamsBuilder::new();
    let profiles = b.table_with("profiles", row);
    let clicks = b.stream::<String, u64>("clicks");
    let enriched = if left { clicks.left_join(&profiles, enrich) } else { clicks.join(&profiles, enrich_inner) };
    enriched.to("enriched");
    profiles.to_stream().to("profile-updates");
    b.build().unwrap()
}

/// A record of either topic: (input, key, value, timestamp); profiles are
/// input 0, clicks input 1.
type Read = (usize, String, String, i64);

fn task(info: &PluginInfo) -> Task {
    let kind = Kind::of(&info.shape.subs[0].stage, 0).unwrap();
    Task::new(TaskId { sub: 0, partition: 0 }, kind, 0, vec![Box::new(MemoryStore::default())], &[None, None], None, 1)
}

const TOPICS: [&str; 2] = ["profiles", "clicks"];

fn topics() -> [String; 2] {
    TOPICS.map(str::to_owned)
}

/// The joined clicks, in order, as the recomputation says: both topics merged
/// by timestamp (each in its own order), the table a map.
fn recompute(profiles: &[Read], clicks: &[Read], left: bool) -> Vec<(String, Option<String>)> {
    let mut table: HashMap<String, String> = HashMap::new();
    let (mut p, mut c) = (0, 0);
    let mut out = Vec::new();
    while p < profiles.len() || c < clicks.len() {
        let take_profile = c >= clicks.len() || (p < profiles.len() && profiles[p].3 < clicks[c].3);
        if take_profile {
            let (_, key, value, _) = &profiles[p];
            let e: Envelope = serde_json::from_str(value).unwrap();
            match e.after.filter(|_| e.op != "d") {
                Some(profile) => table.insert(key.clone(), profile.region),
                None => table.remove(key),
            };
            p += 1;
        } else {
            let (_, key, value, _) = &clicks[c];
            match table.get(key) {
                Some(region) => out.push((key.clone(), Some(format!("{value}@{region}")))),
                None if left => out.push((key.clone(), Some(format!("{value}@-")))),
                None => {}
            }
            c += 1;
        }
    }
    out
}

/// A value as written: an empty one stands for a tombstone (no value).
fn tombstone_or(value: &str) -> Option<&[u8]> {
    (!value.is_empty()).then_some(value.as_bytes())
}

/// How a run feeds a task: which topic's next record comes next (`order`),
/// records per batch, batches per commit, and commits per crash (a crash
/// loses what was not committed; a new task starts from the stores rebuilt
/// from their changelogs and the committed offsets).
struct Feed<'a> {
    order: &'a [bool],
    cut: usize,
    commit_every: usize,
    crash_every: Option<usize>,
}

/// Feeds `inputs` (input 0 and 1) to one task of `make`'s topology as
/// `feed` says, processing each batch as the engine does (an input with
/// nothing buffered is waited for unless all of it was read). Returns what
/// was committed.
fn run_with(make: fn() -> Built, inputs: [&[Read]; 2], feed: &Feed<'_>) -> Ran {
    let info = PluginInfo::of("join".into(), "1".into(), make().describe().clone()).unwrap();
    assert_eq!(info.shape.subs.len(), 1, "{:?}", info.shape);
    let stores = info.shape.subs[0].stores().len();
    let mut guest = Native(make());
    let topics = topics();
    let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
    // The committed state: changelogs (last value per key), offsets, stream time.
    let mut changelogs: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = vec![BTreeMap::new(); stores];
    let mut committed: [Option<i64>; 2] = [None, None];
    let mut stream_time = None;
    // A restart: stores from their changelogs, or — a table read from a
    // topic — from that topic's records up to the committed offset.
    let start =
        |guest: &mut Native, changelogs: &[BTreeMap<Vec<u8>, Vec<u8>>], committed: &[Option<i64>], stream_time| {
            let kind = Kind::of(&info.shape.subs[0].stage, 0).unwrap();
            let id = TaskId { sub: 0, partition: 0 };
            let stores: Vec<Box<dyn Store>> = changelogs
                .iter()
                .enumerate()
                .map(|(i, log)| {
                    let mut store = MemoryStore::default();
                    let rows = match info.shape.subs[0].source_table(i) {
                        Some(table) => {
                            let upto = committed[table.input].unwrap_or(0) as usize;
                            let records: Vec<Change> = inputs[table.input][..upto]
                                .iter()
                                .filter(|r| !r.1.is_empty())
                                .map(|(_, key, value, _)| {
                                    (key.clone().into_bytes(), tombstone_or(value).map(<[u8]>::to_vec))
                                })
                                .collect();
                            let (mut discard, metrics) = (Outbox::default(), Metrics::default());
                            let mut env = native_env(&info, guest, &mut discard, &metrics, &topics);
                            Task::table_rows(&mut env, id, table, records).unwrap()
                        }
                        None => log.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
                    };
                    store.write(rows, None).unwrap();
                    Box::new(store) as Box<dyn Store>
                })
                .collect();
            Task::new(id, kind, 0, stores, committed, stream_time, 1)
        };
    let mut task = start(&mut guest, &changelogs, &committed, stream_time);
    let mut read = [0usize; 2];
    let mut ran = Ran::default();
    let (mut batches, mut commits) = (0, 0);
    let mut order = feed.order.iter().copied().cycle();
    loop {
        for _ in 0..feed.cut {
            let mut i = usize::from(order.next().unwrap_or(true));
            if read[i] == inputs[i].len() {
                i = 1 - i;
            }
            if let Some((_, key, value, ts)) = inputs[i].get(read[i]) {
                let (key, value) = ((!key.is_empty()).then_some(key.as_bytes()), tombstone_or(value));
                assert!(task.accept(i, read[i] as i64, key, value, Some(*ts)));
                read[i] += 1;
            }
        }
        let caught_up = [read[0] == inputs[0].len(), read[1] == inputs[1].len()];
        let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
        task.process_pending(&mut env, Some(&caught_up)).unwrap();
        batches += 1;
        let done = caught_up == [true, true] && task.pending_len() == 0;
        if done || batches % feed.commit_every == 0 {
            let prepared = task.prepare_commit(&mut env).unwrap();
            task.complete_commit(prepared, &[]).unwrap();
            for out in outbox.records() {
                if let Dest::Changelog(0, store) = out.dest {
                    let key = out.key.clone().unwrap();
                    match &out.value {
                        Some(v) => changelogs[store].insert(key, v.clone()),
                        None => changelogs[store].remove(&key),
                    };
                }
            }
            ran.take(&mut outbox);
            let before = committed;
            committed = [task.next_offset(0), task.next_offset(1)];
            stream_time = task.stream_time();
            commits += 1;
            // Only after progress: crashing again and again before any would
            // never end.
            if !done && committed != before && feed.crash_every.is_some_and(|n| commits % n == 0) {
                // A crash after this commit, the next batch read but not committed.
                for (i, input) in inputs.iter().enumerate() {
                    if let Some((_, key, value, ts)) = input.get(read[i]) {
                        task.accept(i, read[i] as i64, Some(key.as_bytes()), tombstone_or(value), Some(*ts));
                    }
                }
                let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
                task.process_pending(&mut env, None).unwrap();
                outbox.clear();
                task = start(&mut guest, &changelogs, &committed, stream_time);
                read = committed.map(|c| c.unwrap_or(0) as usize);
            }
        }
        if done {
            break;
        }
    }
    ran.joined = metrics.joined.get();
    ran
}

fn run(
    left: bool,
    profiles: &[Read],
    clicks: &[Read],
    order: &[bool],
    cut: usize,
    commit_every: usize,
    crash_every: Option<usize>,
) -> Ran {
    let make = if left { || enrichment(true) } else { || enrichment(false) };
    let info = PluginInfo::of("enrich".into(), "1".into(), make().describe().clone()).unwrap();
    assert_eq!(info.shape.subs[0].joins.len(), 1);
    assert_eq!(info.shape.subs[0].joins[0].input, 1, "clicks are joined");
    let order = if order.is_empty() { &[true][..] } else { order };
    run_with(make, [profiles, clicks], &Feed { order, cut, commit_every, crash_every })
}

#[derive(Debug, Default)]
struct Ran {
    /// What reached the first sink: key and value (`None`: a tombstone).
    enriched: Vec<(String, Option<String>)>,
    /// The table's last update per key (`None`: deleted).
    updates: HashMap<String, Option<String>>,
    dead: Vec<(String, String)>,
    joined: u64,
}

impl Ran {
    fn take(&mut self, outbox: &mut Outbox) {
        let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8(b.clone()).unwrap());
        for out in outbox.records() {
            let key = || text(&out.key).unwrap_or_default();
            match out.dest {
                Dest::Sink(0) => self.enriched.push((key(), text(&out.value))),
                Dest::Sink(1) => {
                    self.updates.insert(key(), text(&out.value));
                }
                Dest::DeadLetter => {
                    let header = |name: &str| out.headers.iter().find(|h| h.0 == name).unwrap().1.clone();
                    self.dead.push((header("weir.node"), header("weir.source.topic")));
                }
                _ => {}
            }
        }
        outbox.clear();
    }
}

fn topic_records(input: usize, records: Vec<(u8, String)>, parity: i64) -> Vec<Read> {
    // Timestamps move forward by 0..3 steps of 2 and back by one step at
    // times: out of order within a topic, never equal across the two.
    let mut ts = 1_000 + parity;
    records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| {
            ts += 2 * ((i as i64 * 7 + i64::from(key)) % 4) - 2;
            (input, format!("u{key}"), value, ts)
        })
        .collect()
}

fn envelope(op: u8, region: u8) -> String {
    match op % 3 {
        0 => format!(r#"{{"op":"c","after":{{"region":"r{region}"}}}}"#),
        1 => format!(r#"{{"op":"u","after":{{"region":"r{region}"}}}}"#),
        _ => r#"{"op":"d","after":null}"#.to_owned(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn clicks_join_profiles_as_of_their_time_whatever_the_reads(
        profile_updates in proptest::collection::vec((0u8..4, 0u8..3, 0u8..5), 0..30),
        click_keys in proptest::collection::vec((0u8..5, 1u64..100), 0..60),
        order in proptest::collection::vec(any::<bool>(), 0..90),
        cut in 1usize..12,
        commit_every in 1usize..4,
        crash_every in proptest::option::of(1usize..4),
        left in any::<bool>(),
    ) {
        let profiles = topic_records(
            0,
            profile_updates.iter().map(|&(k, op, r)| (k, envelope(op, r))).collect(),
            0,
        );
        let clicks = topic_records(1, click_keys.iter().map(|&(k, n)| (k, n.to_string())).collect(), 1);
        let ran = run(left, &profiles, &clicks, &order, cut, commit_every, crash_every);
        let expected = recompute(&profiles, &clicks, left);
        if crash_every.is_none() {
            prop_assert_eq!(ran.joined, expected.len() as u64, "what was joined, counted");
        }
        prop_assert_eq!(&ran.enriched, &expected);
        prop_assert!(ran.dead.is_empty(), "{:?}", ran.dead);
        // The table's updates end at each key's last state.
        let mut last: HashMap<String, Option<String>> = HashMap::new();
        for (_, key, value, _) in &profiles {
            let e: Envelope = serde_json::from_str(value).unwrap();
            let row = e.after.filter(|_| e.op != "d").map(|p| format!(r#"{{"region":"{}"}}"#, p.region));
            last.insert(key.clone(), row);
        }
        for (key, row) in &ran.updates {
            prop_assert_eq!(last.get(key), Some(row), "key {}", key);
        }
        for (key, row) in &last {
            if row.is_some() {
                prop_assert_eq!(ran.updates.get(key), Some(row), "key {}", key);
            }
        }
    }
}

#[test]
fn bad_profiles_and_keyless_clicks_are_dead_lettered_naming_their_node() {
    let profiles = vec![
        (0, "u1".to_owned(), r#"{"op":"c","after":{"region":"north"}}"#.to_owned(), 10),
        (0, "u2".to_owned(), "not an envelope".to_owned(), 12),
    ];
    let clicks = vec![(1, "u1".to_owned(), "5".to_owned(), 11), (1, "u2".to_owned(), "6".to_owned(), 13)];
    let ran = run(false, &profiles, &clicks, &[false, true, false, true], 4, 1, None);
    assert_eq!(ran.enriched, [("u1".to_owned(), Some("5@north".to_owned()))], "u2 has no row: an inner join drops it");
    assert_eq!(ran.dead, [("row".to_owned(), "profiles".to_owned())]);

    // A table record and a click without a key.
    let built = enrichment(false);
    let info = PluginInfo::of("enrich".into(), "1".into(), built.describe().clone()).unwrap();
    let mut task = task(&info);
    let mut guest = Native(built);
    let topics = topics();
    let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
    let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
    assert!(task.accept(0, 0, None, Some(br#"{"op":"c","after":{"region":"x"}}"#), Some(1)));
    assert!(task.accept(1, 0, None, Some(b"7"), Some(2)));
    task.process_pending(&mut env, None).unwrap();
    let mut ran = Ran::default();
    ran.take(env.outbox);
    assert_eq!(
        ran.dead,
        [("row".to_owned(), "profiles".to_owned()), ("enrich_inner-join".to_owned(), "clicks".to_owned())],
        "the profile's key does not decode; the click reaches the join without one"
    );
    assert!(ran.enriched.is_empty());
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    theme: String,
}

fn both(u: &User, s: &Settings) -> String {
    format!("{}:{}", u.name, s.theme)
}

fn user_maybe(u: &User, s: Option<&Settings>) -> String {
    format!("{}:{}", u.name, s.map_or("-", |s| s.theme.as_str()))
}

fn either(u: Option<&User>, s: Option<&Settings>) -> String {
    format!("{}:{}", u.map_or("-", |u| u.name.as_str()), s.map_or("-", |s| s.theme.as_str()))
}

/// `users ⋈ settings` (tables read from topics) to `joined`.
fn users_settings(kind: weir_abi::topology::JoinKind) -> Built {
    use weir_abi::topology::JoinKind;
    let b = StreamsBuilder::new();
    let users = b.table::<String, User>("users");
    let settings = b.table::<String, Settings>("settings");
    let joined = match kind {
        JoinKind::Inner => users.join(&settings, both),
        JoinKind::Left => users.left_join(&settings, user_maybe),
        JoinKind::Outer => users.outer_join(&settings, either),
    };
    joined.to_stream().to("joined");
    b.build().unwrap()
}

/// The updates of the join, in order, as the recomputation says: both topics
/// merged by timestamp, each table a map; after each change of a row, the
/// key's result if its rows make one, or a tombstone if they made one before.
fn recompute_tables(
    users: &[Read],
    settings: &[Read],
    kind: weir_abi::topology::JoinKind,
) -> Vec<(String, Option<String>)> {
    use weir_abi::topology::JoinKind;
    let (mut left, mut right): (HashMap<String, String>, HashMap<String, String>) = Default::default();
    let result = |l: Option<&String>, r: Option<&String>| -> Option<String> {
        let name = l.map(|v| serde_json::from_str::<User>(v).unwrap().name);
        let theme = r.map(|v| serde_json::from_str::<Settings>(v).unwrap().theme);
        let made = match kind {
            JoinKind::Inner => name.is_some() && theme.is_some(),
            JoinKind::Left => name.is_some(),
            JoinKind::Outer => name.is_some() || theme.is_some(),
        };
        made.then(|| format!("{}:{}", name.as_deref().unwrap_or("-"), theme.as_deref().unwrap_or("-")))
    };
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < users.len() || j < settings.len() {
        let from_users = j >= settings.len() || (i < users.len() && users[i].3 < settings[j].3);
        let (_, key, value, _) = if from_users { &users[i] } else { &settings[j] };
        let before = result(left.get(key), right.get(key));
        let side = if from_users { &mut left } else { &mut right };
        let changed = match value.is_empty() {
            true => side.remove(key).is_some(),
            false => {
                side.insert(key.clone(), value.clone());
                true
            }
        };
        if from_users {
            i += 1
        } else {
            j += 1
        }
        let now = result(left.get(key), right.get(key));
        if changed && (now.is_some() || before.is_some()) {
            out.push((key.clone(), now));
        }
    }
    out
}

fn table_records(input: usize, updates: &[(u8, u8)], parity: i64, what: &str) -> Vec<Read> {
    // Every fifth update deletes the key (a tombstone: an empty value here).
    let values: Vec<(u8, String)> = updates
        .iter()
        .map(|&(k, v)| (k, if v % 5 == 0 { String::new() } else { format!(r#"{{"{what}":"{what}{v}"}}"#) }))
        .collect();
    topic_records(input, values, parity)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn two_tables_join_exactly_as_a_recomputation_whatever_the_reads_commits_and_crashes(
        users in proptest::collection::vec((0u8..5, 0u8..20), 0..40),
        settings in proptest::collection::vec((0u8..5, 0u8..20), 0..40),
        order in proptest::collection::vec(any::<bool>(), 1..60),
        cut in 1usize..10,
        commit_every in 1usize..4,
        crash_every in proptest::option::of(1usize..4),
        kind in 0u8..3,
    ) {
        use weir_abi::topology::JoinKind;
        let (kind, make): (JoinKind, fn() -> Built) = match kind {
            0 => (JoinKind::Inner, || users_settings(JoinKind::Inner)),
            1 => (JoinKind::Left, || users_settings(JoinKind::Left)),
            _ => (JoinKind::Outer, || users_settings(JoinKind::Outer)),
        };
        let users = table_records(0, &users, 0, "name");
        let settings = table_records(1, &settings, 1, "theme");
        let feed = Feed { order: &order, cut, commit_every, crash_every };
        let ran = run_with(make, [&users, &settings], &feed);
        prop_assert!(ran.dead.is_empty(), "{:?}", ran.dead);
        let expected = recompute_tables(&users, &settings, kind);
        // Exactly once: a crash loses only what was not committed, and the
        // task restored from the changelogs goes on as if none had happened.
        prop_assert_eq!(&ran.enriched, &expected);
        // The table each key ends with, as a consumer of the updates sees it.
        let last = |updates: &[(String, Option<String>)]| -> BTreeMap<String, String> {
            let mut table = BTreeMap::new();
            for (k, v) in updates {
                match v {
                    Some(v) => table.insert(k.clone(), v.clone()),
                    None => table.remove(k),
                };
            }
            table
        };
        prop_assert_eq!(last(&ran.enriched), last(&expected));
    }
}

const JOIN_WINDOW_MS: u64 = 30;
const JOIN_GRACE_MS: u64 = 40;

fn pair(search: &String, click: &String) -> String {
    format!("{search}+{click}")
}

fn search_maybe(search: &String, click: Option<&String>) -> String {
    format!("{search}+{}", click.map_or("-", String::as_str))
}

fn either_side(search: Option<&String>, click: Option<&String>) -> String {
    format!("{}+{}", search.map_or("-", String::as_str), click.map_or("-", String::as_str))
}

/// `searches ⋈ clicks` within ±30 ms, grace 40 ms, to `joined`.
fn searches_clicks(kind: weir_abi::topology::JoinKind) -> Built {
    use std::time::Duration;
    use weir_abi::topology::JoinKind;
    use weir_sdk::dsl::join_windows;
    let b = StreamsBuilder::new();
    let searches = b.stream::<String, String>("searches");
    let clicks = b.stream::<String, String>("clicks");
    let windows = join_windows(Duration::from_millis(JOIN_WINDOW_MS)).grace(Duration::from_millis(JOIN_GRACE_MS));
    let joined = match kind {
        JoinKind::Inner => searches.join_windowed(&clicks, windows, pair),
        JoinKind::Left => searches.left_join_windowed(&clicks, windows, search_maybe),
        JoinKind::Outer => searches.outer_join_windowed(&clicks, windows, either_side),
    };
    joined.to("joined");
    b.build().unwrap()
}

/// Records of one stream: the `i`-th at `10 i + jitter` (jitter under the
/// grace: out of order, never late), values unique.
fn stream_records(input: usize, keys: &[(u8, u8)], what: &str) -> Vec<Read> {
    keys.iter()
        .enumerate()
        .map(|(i, &(k, jitter))| (input, format!("k{k}"), format!("{what}{i}"), 10 * i as i64 + i64::from(jitter)))
        .collect()
}

/// What the join must have written, whatever the order records were read
/// in: every pair of a key's records at most the window apart, and — for the
/// kinds that keep them — every record that met none, once its window
/// (`t + window + grace`) is behind the last stream time.
fn recompute_streams(left: &[Read], right: &[Read], kind: weir_abi::topology::JoinKind) -> Vec<(String, String)> {
    use weir_abi::topology::JoinKind;
    let window = JOIN_WINDOW_MS as i64;
    let end = left.iter().chain(right).map(|r| r.3).max().unwrap_or(i64::MIN);
    let closed = |t: i64| t + window + (JOIN_GRACE_MS as i64) < end;
    let meets = |a: &Read, b: &Read| a.1 == b.1 && (a.3 - b.3).abs() <= window;
    let mut out = Vec::new();
    for l in left {
        let mut met = false;
        for r in right.iter().filter(|r| meets(l, r)) {
            met = true;
            out.push((l.1.clone(), format!("{}+{}", l.2, r.2)));
        }
        if !met && kind != JoinKind::Inner && closed(l.3) {
            out.push((l.1.clone(), format!("{}+-", l.2)));
        }
    }
    if kind == JoinKind::Outer {
        for r in right.iter().filter(|r| closed(r.3) && !left.iter().any(|l| meets(l, r))) {
            out.push((r.1.clone(), format!("-+{}", r.2)));
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn two_streams_join_within_the_window_whatever_the_reads_commits_and_crashes(
        searches in proptest::collection::vec((0u8..3, 0u8..25), 0..40),
        clicks in proptest::collection::vec((0u8..3, 0u8..25), 0..40),
        order in proptest::collection::vec(any::<bool>(), 1..60),
        cut in 1usize..10,
        commit_every in 1usize..4,
        crash_every in proptest::option::of(1usize..4),
        kind in 0u8..3,
    ) {
        use weir_abi::topology::JoinKind;
        let (kind, make): (JoinKind, fn() -> Built) = match kind {
            0 => (JoinKind::Inner, || searches_clicks(JoinKind::Inner)),
            1 => (JoinKind::Left, || searches_clicks(JoinKind::Left)),
            _ => (JoinKind::Outer, || searches_clicks(JoinKind::Outer)),
        };
        let searches = stream_records(0, &searches, "s");
        let clicks = stream_records(1, &clicks, "c");
        let feed = Feed { order: &order, cut, commit_every, crash_every };
        let ran = run_with(make, [&searches, &clicks], &feed);
        prop_assert!(ran.dead.is_empty(), "{:?}", ran.dead);
        let mut got: Vec<(String, String)> =
            ran.enriched.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
        got.sort();
        prop_assert_eq!(got, recompute_streams(&searches, &clicks, kind));
    }
}

#[test]
fn records_meet_at_both_ends_of_the_window_whichever_comes_first() {
    use weir_abi::topology::JoinKind;
    let w = JOIN_WINDOW_MS as i64;
    // s0 comes after a later search (of another key) in its topic: it is
    // processed after c1, which it meets at the upper end of its window.
    let left = vec![
        (0, "j".to_owned(), "sx".to_owned(), 140),
        (0, "k".to_owned(), "s0".to_owned(), 100),
        (0, "k".to_owned(), "s1".to_owned(), 200),
    ];
    let right = vec![
        (1, "k".to_owned(), "c0".to_owned(), 100 - w),
        (1, "k".to_owned(), "c1".to_owned(), 100 + w),
        (1, "k".to_owned(), "c3".to_owned(), 200 - w - 11),
        (1, "k".to_owned(), "c2".to_owned(), 200 + w + 1),
    ];
    for kind in [JoinKind::Inner, JoinKind::Left, JoinKind::Outer] {
        let make: fn() -> Built = match kind {
            JoinKind::Inner => || searches_clicks(JoinKind::Inner),
            JoinKind::Left => || searches_clicks(JoinKind::Left),
            JoinKind::Outer => || searches_clicks(JoinKind::Outer),
        };
        for order in [&[true][..], &[false][..]] {
            let ran = run_with(make, [&left, &right], &Feed { order, cut: 2, commit_every: 1, crash_every: None });
            let mut got: Vec<String> = ran.enriched.iter().filter_map(|(_, v)| v.clone()).collect();
            got.sort();
            let mut want = vec!["s0+c0".to_owned(), "s0+c1".to_owned()];
            // sx and c3 met nothing and their windows (140 + w + grace, 159 +
            // w + grace) closed before c2; s1's (200 + w + grace) is still
            // open at the last stream time (c2's, 200 + w + 1).
            if kind != JoinKind::Inner {
                want.push("sx+-".to_owned());
            }
            if kind == JoinKind::Outer {
                want.push("-+c3".to_owned());
            }
            want.sort();
            assert_eq!(got, want, "{kind:?}, reading {order:?} first");
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    product: String,
    qty: u32,
}

fn product_of(_: &String, o: &Order) -> Result<String, String> {
    if o.product.is_empty() { Err("an order without a product".to_owned()) } else { Ok(o.product.clone()) }
}

fn priced(o: &Order, price: Option<&u64>) -> String {
    format!("{}x{}@{}", o.qty, o.product, price.map_or("-".to_owned(), u64::to_string))
}

fn priced_inner(o: &Order, price: &u64) -> String {
    priced(o, Some(price))
}

/// `orders ⋈ products (global, by the order's product)` to `priced`.
fn orders_products(left: bool) -> Built {
    let b = StreamsBuilder::new();
    let products = b.global_table::<String, u64>("products");
    let orders = b.stream::<String, Order>("orders");
    let priced_orders = if left {
        orders.left_join_global(&products, product_of, priced)
    } else {
        orders.join_global(&products, product_of, priced_inner)
    };
    priced_orders.to("priced");
    b.build().unwrap()
}

#[test]
fn orders_join_a_global_table_by_a_key_they_select() {
    for left in [false, true] {
        let built = orders_products(left);
        let info = PluginInfo::of("orders".into(), "1".into(), built.describe().clone()).unwrap();
        assert_eq!((info.shape.subs.len(), info.shape.globals.len()), (1, 1), "{:?}", info.shape);
        assert_eq!(info.shape.subs[0].inputs.len(), 1, "the global table is no input of a task");
        assert_eq!(info.shape.subs[0].global_joins.len(), 1);
        let health = crate::kafka::health::Health::new("test", Default::default());
        let mut globals =
            crate::global::Globals::of_stores(health, vec![("products".into(), Box::new(MemoryStore::default()))]);
        globals.apply(0, b"p1", Some(b"150")).unwrap();
        globals.apply(0, b"p2", Some(b"99")).unwrap();
        let kind = Kind::of(&info.shape.subs[0].stage, 0).unwrap();
        let mut task = Task::new(TaskId { sub: 0, partition: 0 }, kind, 0, vec![], &[None], None, 1);
        let mut guest = Native(built);
        let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
        let topics = ["orders".to_owned()];
        let orders: [&[u8]; 4] = [
            br#"{"product":"p1","qty":2}"#,
            br#"{"product":"p3","qty":1}"#,
            br#"{"product":"","qty":5}"#,
            br#"{"product":"p2","qty":7}"#,
        ];
        for (i, order) in orders.iter().enumerate() {
            assert!(task.accept(0, i as i64, Some(format!("o{i}").as_bytes()), Some(order), Some(i as i64)));
        }
        let policy =
            Policy { retries: 0, probation: false, on_failure: FailurePolicy::DeadLetter, emit: EmitMode::Updates };
        let mut env = Env {
            info: &info,
            guest: &mut guest,
            outbox: &mut outbox,
            metrics: &metrics,
            input_topics: &topics,
            policy,
            globals: &globals,
        };
        task.process_pending(&mut env, None).unwrap();
        let mut ran = Ran::default();
        ran.take(env.outbox);
        let mut want = vec![("o0".to_owned(), Some("2xp1@150".to_owned()))];
        if left {
            want.push(("o1".to_owned(), Some("1xp3@-".to_owned())));
        }
        want.push(("o3".to_owned(), Some("7xp2@99".to_owned())));
        assert_eq!(ran.enriched, want, "left: {left}; each order under its own key");
        assert_eq!(ran.dead, [("product_of".to_owned(), "orders".to_owned())], "the selector refused an order");
        assert_eq!(metrics.join_misses.get(), u64::from(!left));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member {
    name: String,
    active: bool,
}

fn is_active(_: &String, m: &Member) -> bool {
    m.active
}

fn shout(_: &String, m: Member) -> String {
    m.name.to_uppercase()
}

/// A table read from a topic, filtered and mapped before its store, written
/// as its stream of updates: a row that stops passing is a tombstone, one that
/// never passed writes nothing, a deleted row stays deleted.
#[test]
fn a_filtered_and_mapped_table_deletes_the_rows_that_stop_passing() {
    let b = StreamsBuilder::new();
    b.table::<String, Member>("members").filter(is_active).map_values(shout).to_stream().to("active");
    let built = b.build().unwrap();
    let info = PluginInfo::of("members".into(), "1".into(), built.describe().clone()).unwrap();
    assert_eq!(info.shape.subs[0].stores().len(), 1, "one store, of the filtered rows");
    let kind = Kind::of(&info.shape.subs[0].stage, 0).unwrap();
    let mut task =
        Task::new(TaskId { sub: 0, partition: 0 }, kind, 0, vec![Box::new(MemoryStore::default())], &[None], None, 1);
    let mut guest = Native(built);
    let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
    let topics = ["members".to_owned()];
    let updates: [(&str, Option<&str>, Option<&str>); 6] = [
        ("u1", Some(r#"{"name":"ann","active":true}"#), Some("ANN")),
        ("u1", Some(r#"{"name":"ann","active":false}"#), None),
        ("u2", Some(r#"{"name":"bob","active":false}"#), None),
        ("u2", Some(r#"{"name":"bob","active":true}"#), Some("BOB")),
        ("u2", None, None),
        ("u3", None, None),
    ];
    let mut written = Vec::new();
    for (i, (key, value, _)) in updates.iter().enumerate() {
        assert!(task.accept(0, i as i64, Some(key.as_bytes()), value.map(str::as_bytes), Some(i as i64)));
        let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
        task.process_pending(&mut env, None).unwrap();
        let prepared = task.prepare_commit(&mut env).unwrap();
        task.complete_commit(prepared, &[]).unwrap();
        let mut ran = Ran::default();
        ran.take(&mut outbox);
        assert!(ran.dead.is_empty(), "{:?}", ran.dead);
        written.push(ran.enriched);
    }
    let one = |k: &str, v: Option<&str>| vec![(k.to_owned(), v.map(str::to_owned))];
    assert_eq!(
        written,
        [one("u1", Some("ANN")), one("u1", None), vec![], one("u2", Some("BOB")), one("u2", None), vec![]],
        "a row that stops passing is deleted; one that never passed, or an unknown key's deletion, writes nothing"
    );
}

/// A table something reads already, and an aggregated one, filtered and
/// mapped on their updates: an update that passes is written mapped, one that
/// does not is a tombstone (Kafka Streams' behaviour for a table it does not
/// materialise), and the table's own stream of updates is unchanged.
#[test]
fn tables_filtered_and_mapped_after_their_store_write_each_update_or_a_tombstone() {
    fn at_least_two(_: &String, n: &u64) -> bool {
        *n >= 2
    }
    fn tens(_: &String, n: u64) -> u64 {
        n * 10
    }
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8(b.clone()).unwrap());
    let sunk = |outs: &[Out], sink: usize| -> Vec<(String, Option<String>)> {
        let to_sink = outs.iter().filter(|o| o.dest == Dest::Sink(sink));
        to_sink.map(|o| (text(&o.key).unwrap(), text(&o.value))).collect()
    };
    let one = |k: &str, v: Option<&str>| (k.to_owned(), v.map(str::to_owned));

    let b = StreamsBuilder::new();
    let members = b.table::<String, Member>("members");
    members.to_stream().to("all");
    members.filter(is_active).map_values(shout).to_stream().to("active");
    let updates = [
        ("u1", Some(r#"{"name":"ann","active":true}"#)),
        ("u1", Some(r#"{"name":"ann","active":false}"#)),
        ("u2", Some(r#"{"name":"bob","active":false}"#)),
        ("u2", None),
    ];
    let outs = commit_each(b.build().unwrap(), "members", &updates);
    let all: Vec<bool> = sunk(&outs, 0).into_iter().map(|(_, v)| v.is_some()).collect();
    assert_eq!(all, [true, true, true, false], "every update of the table itself");
    assert_eq!(sunk(&outs, 1), [one("u1", Some("ANN")), one("u1", None), one("u2", None), one("u2", None)]);

    // An aggregation's table.
    let b = StreamsBuilder::new();
    let counts = b.stream::<String, String>("in").group_by_key().count().named("counts");
    counts.filter(at_least_two).map_values(tens).to_stream().to("busy");
    let outs = commit_each(
        b.build().unwrap(),
        "in",
        &[("a", Some("x")), ("a", Some("x")), ("b", Some("x")), ("a", Some("x"))],
    );
    assert_eq!(sunk(&outs, 0), [one("a", None), one("a", Some("20")), one("b", None), one("a", Some("30"))]);
}

/// Runs `records` (key, value) of topic `topic` through one task of `built`,
/// committing after each; returns everything the commits wrote, in order.
fn commit_each(built: Built, topic: &str, records: &[(&str, Option<&str>)]) -> Vec<Out> {
    let info = PluginInfo::of(topic.into(), "1".into(), built.describe().clone()).unwrap();
    let kind = Kind::of(&info.shape.subs[0].stage, 0).unwrap();
    let mut task =
        Task::new(TaskId { sub: 0, partition: 0 }, kind, 0, vec![Box::new(MemoryStore::default())], &[None], None, 1);
    let mut guest = Native(built);
    let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
    let topics = [topic.to_owned()];
    let mut written = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        assert!(task.accept(0, i as i64, Some(key.as_bytes()), value.map(str::as_bytes), Some(i as i64)));
        let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
        task.process_pending(&mut env, None).unwrap();
        let prepared = task.prepare_commit(&mut env).unwrap();
        task.complete_commit(prepared, &[]).unwrap();
        written.extend(outbox.records().iter().cloned());
        outbox.clear();
    }
    written
}

#[test]
fn a_record_meeting_more_than_the_fan_out_limit_is_dead_lettered_naming_the_join() {
    use weir_abi::topology::JoinKind;
    // 1,030 clicks of one key within a search's window.
    let clicks: Vec<Read> = (0..1_030).map(|i| (1, "k".to_owned(), format!("c{i}"), 100)).collect();
    let searches = vec![(0, "k".to_owned(), "s".to_owned(), 101)];
    let ran = run_with(
        || searches_clicks(JoinKind::Inner),
        [&searches, &clicks],
        &Feed { order: &[false], cut: 2_000, commit_every: 1, crash_every: None },
    );
    assert!(ran.enriched.is_empty(), "nothing joined for the flooding search");
    assert_eq!(ran.dead, [("pair-join".to_owned(), "profiles".to_owned())], "topic names are the harness's");
}
