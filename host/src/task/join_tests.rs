//! Stream–table joins through a task, with the SDK itself (natively) as the
//! guest: profiles read as a table from change-data-capture envelopes and
//! clicks joined with them. Whatever the interleaving of the two topics' reads
//! and however batches and commits are cut, each click is joined with the
//! profile as of its place in timestamp order across the topics — checked
//! against a recomputation that merges the two topics by timestamp and keeps
//! the table in a map. Bad records are dead-lettered naming their node.

use std::collections::HashMap;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use weir_sdk::dsl::{StreamsBuilder, Topology as Built};

use super::planned_tests::{Native, native_env};
use super::*;
use crate::state::MemoryStore;

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
    Task::new(TaskId { sub: 0, partition: 0 }, kind, 0, Box::new(MemoryStore::default()), &[None, None], None, 1)
}

const TOPICS: [&str; 2] = ["profiles", "clicks"];

fn topics() -> [String; 2] {
    TOPICS.map(str::to_owned)
}

/// The joined clicks, in order, as the recomputation says: both topics merged
/// by timestamp (each in its own order), the table a map.
fn recompute(profiles: &[Read], clicks: &[Read], left: bool) -> Vec<(String, String)> {
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
                Some(region) => out.push((key.clone(), format!("{value}@{region}"))),
                None if left => out.push((key.clone(), format!("{value}@-"))),
                None => {}
            }
            c += 1;
        }
    }
    out
}

/// Reads `order` (which topic's next record comes next) in batches of `cut`,
/// processing each batch as the engine does (an input with nothing buffered
/// is waited for unless all of it was read) and committing every `commit_every`
/// batches. Returns what reached `enriched`, in order.
fn run(left: bool, profiles: &[Read], clicks: &[Read], order: &[bool], cut: usize, commit_every: usize) -> Ran {
    let built = enrichment(left);
    let info = PluginInfo::of("enrich".into(), "1".into(), built.describe().clone()).unwrap();
    assert_eq!(info.shape.subs.len(), 1, "{:?}", info.shape);
    assert_eq!(info.shape.subs[0].joins.len(), 1);
    assert_eq!(info.shape.subs[0].joins[0].input, 1, "clicks are joined");
    let mut task = task(&info);
    let mut guest = Native(built);
    let topics = topics();
    let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
    let mut read = [0usize; 2];
    let inputs = [profiles, clicks];
    let mut ran = Ran::default();
    let mut batches = 0;
    let mut order = order.iter().copied().chain(std::iter::repeat(true)).take(profiles.len() + clicks.len() + 64);
    loop {
        for _ in 0..cut {
            let Some(clicks_next) = order.next() else { break };
            let mut i = usize::from(clicks_next);
            if read[i] == inputs[i].len() {
                i = 1 - i;
            }
            if let Some((_, key, value, ts)) = inputs[i].get(read[i]) {
                assert!(task.accept(i, read[i] as i64, Some(key.as_bytes()), Some(value.as_bytes()), Some(*ts)));
                read[i] += 1;
            }
        }
        let caught_up = [read[0] == profiles.len(), read[1] == clicks.len()];
        let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
        task.process_pending(&mut env, Some(&caught_up)).unwrap();
        batches += 1;
        let done = caught_up == [true, true];
        if done || batches % commit_every == 0 {
            let prepared = task.prepare_commit(&mut env).unwrap();
            task.complete_commit(prepared, None).unwrap();
            ran.take(&mut outbox);
        }
        if done {
            assert_eq!(task.pending_len(), 0, "everything read is processed once every input is caught up");
            break;
        }
    }
    ran.joined = metrics.joined.get();
    ran
}

#[derive(Debug, Default)]
struct Ran {
    enriched: Vec<(String, String)>,
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
                Dest::Sink(0) => self.enriched.push((key(), text(&out.value).unwrap())),
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
        left in any::<bool>(),
    ) {
        let profiles = topic_records(
            0,
            profile_updates.iter().map(|&(k, op, r)| (k, envelope(op, r))).collect(),
            0,
        );
        let clicks = topic_records(1, click_keys.iter().map(|&(k, n)| (k, n.to_string())).collect(), 1);
        let ran = run(left, &profiles, &clicks, &order, cut, commit_every);
        let expected = recompute(&profiles, &clicks, left);
        prop_assert_eq!(ran.joined, expected.len() as u64);
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
    let ran = run(false, &profiles, &clicks, &[false, true, false, true], 4, 1);
    assert_eq!(ran.enriched, [("u1".to_owned(), "5@north".to_owned())], "u2 has no row: an inner join drops it");
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
