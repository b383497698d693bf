//! Joins on the real broker, each checked against a recomputation in the test
//! through a crash inside a commit, a SIGKILL mid-stream and two restarts on
//! empty state directories.
//!
//! Stream–table: `click-enrich` keeps user profiles
//! in a table fed by a change-data-capture topic (creates, updates, deletes,
//! tombstones, broken envelopes) and enriches a click stream with them. The
//! output is checked against a recomputation that merges the two topics of
//! each partition by timestamp and keeps the profiles in a map: every valid
//! click enriched exactly once with its user's profile as of the click, through
//! a crash inside a commit, a SIGKILL mid-stream and two restarts on empty state
//! directories; every bad record dead-lettered once, naming its node and topic.
//!
//! Table–table: `product-stock` joins a catalogue and stock levels on key:
//! every update of either table gives the product's availability (or a
//! tombstone when it leaves the catalogue) in the order a per-partition
//! time merge of both topics gives.
//!
//! Stream–stream: `search-clicks` joins each search with the clicks within
//! five seconds after it, records out of order within the grace: every
//! meeting once, every search no click followed once its window closed.
//!
//! Foreign key: `order-products` joins orders with the product each names
//! (topics of different partition counts); the output ends as the final rows
//! of both tables make it.
//!
//! Stream–global table: `order-pricing` prices orders (three partitions)
//! from a price topic of one partition that every host reads whole first.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::support::*;
use crate::topologies::{strings, topology_args};

const PARTITIONS: i32 = 2;
const USERS: usize = 40;
const START: i64 = 1_700_000_000_000;
/// The span of event time both topics cover.
const SPAN: i64 = 600_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Profile {
    name: String,
    region: String,
    tier: String,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    op: String,
    after: Option<Profile>,
}

#[derive(Debug, Deserialize)]
struct Click {
    page: String,
    ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct EnrichedClick {
    user: String,
    page: String,
    ms: u64,
    name: Option<String>,
    region: Option<String>,
    tier: Option<String>,
}

/// `count` event times in `[from, to)` after `START`, each `START + parity +
/// 2k` (so the two topics never share a timestamp), in time order except for
/// neighbours swapped now and then: out of order within a topic.
fn timed(rng: &mut StdRng, count: usize, parity: i64, (from, to): (i64, i64)) -> Vec<i64> {
    let mut ts: Vec<i64> = (0..count).map(|_| START + parity + 2 * rng.random_range(from / 2..to / 2)).collect();
    ts.sort_unstable();
    for i in 1..ts.len() {
        if rng.random_bool(0.05) {
            ts.swap(i - 1, i);
        }
    }
    ts
}

fn user(rng: &mut StdRng) -> String {
    format!("u{:02}", rng.random_range(0..USERS))
}

/// The change-data-capture feed of the profiles table: creates and snapshot
/// reads, updates, deletes followed by tombstones now and then, and some
/// records that are no valid change (not JSON, an update without `after`, no key).
fn profile_changes(seed: u64, count: usize, span: (i64, i64)) -> Vec<RawRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let times = timed(&mut rng, count, 0, span);
    let mut out = Vec::with_capacity(count + count / 20);
    for (i, ts) in times.into_iter().enumerate() {
        let key = user(&mut rng);
        let profile = format!(
            r#"{{"name":"N{i}","region":"{}","tier":"{}"}}"#,
            ["eu", "us", "apac"][rng.random_range(0..3)],
            ["free", "pro"][rng.random_range(0..2)]
        );
        let (key, value) = match (i % 101, rng.random_range(0..10)) {
            (7, _) => (Some(key), Some("{\"op\":\"u\",\"after\":".to_owned())),
            (31, _) => (Some(key), Some(r#"{"op":"u","before":null,"after":null}"#.to_owned())),
            (59, _) => (None, Some(format!(r#"{{"op":"c","after":{profile}}}"#))),
            (_, 0) => {
                // A delete, and (mostly) the tombstone that follows it.
                let delete = format!(r#"{{"op":"d","before":{profile},"after":null}}"#);
                out.push((Some(key.clone().into_bytes()), Some(delete.into_bytes()), ts));
                if rng.random_bool(0.7) {
                    out.push((Some(key.into_bytes()), None, ts));
                }
                continue;
            }
            (_, op) => {
                let op = ["c", "r", "u", "u"][op % 4];
                (Some(key), Some(format!(r#"{{"op":"{op}","before":null,"after":{profile}}}"#)))
            }
        };
        out.push((key.map(String::into_bytes), value.map(String::into_bytes), ts));
    }
    out
}

/// Clicks by the same users (and a few without a profile ever), with some
/// that do not decode and some without a page.
fn clicks(seed: u64, count: usize, span: (i64, i64)) -> Vec<RawRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let times = timed(&mut rng, count, 1, span);
    times
        .into_iter()
        .enumerate()
        .map(|(i, ts)| {
            let key = if rng.random_bool(0.05) { "nobody".to_owned() } else { user(&mut rng) };
            let value = match i % 89 {
                5 => "{\"page\":".to_owned(),
                40 => r#"{"page":"","ms":3}"#.to_owned(),
                _ => format!(r#"{{"page":"/p{}","ms":{}}}"#, rng.random_range(0..20), rng.random_range(1..5_000)),
            };
            (Some(key.into_bytes()), Some(value.into_bytes()), ts)
        })
        .collect()
}

/// Enriched clicks per user, in order.
type PerUser = BTreeMap<String, Vec<EnrichedClick>>;
/// (topic, partition, offset, node) of each record that must be dead-lettered.
type Bad = Vec<(String, i32, i64, String)>;

/// What the two topics say, partition by partition: their records merged by
/// timestamp (each topic's own order kept), profiles applied to a map, each
/// valid click enriched from it.
fn recompute(profiles_topic: &str, profiles: &[Record], clicks_topic: &str, clicks: &[Record]) -> (PerUser, Bad) {
    let (mut per_user, mut bad) = (PerUser::new(), Bad::new());
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    for p in 0..PARTITIONS {
        let ps: Vec<&Record> = profiles.iter().filter(|r| r.partition == p).collect();
        let cs: Vec<&Record> = clicks.iter().filter(|r| r.partition == p).collect();
        let mut table: HashMap<String, Profile> = HashMap::new();
        let (mut i, mut j) = (0, 0);
        while i < ps.len() || j < cs.len() {
            if j >= cs.len() || (i < ps.len() && ps[i].timestamp < cs[j].timestamp) {
                let r = ps[i];
                i += 1;
                let Some(key) = text(&r.key) else {
                    bad.push((profiles_topic.to_owned(), p, r.offset, "profile".to_owned()));
                    continue;
                };
                let Some(value) = &r.value else {
                    table.remove(&key);
                    continue;
                };
                match serde_json::from_slice::<Envelope>(value) {
                    Ok(Envelope { op, after: Some(after) }) if op != "d" => {
                        table.insert(key, after);
                    }
                    Ok(Envelope { op, .. }) if op == "d" => {
                        table.remove(&key);
                    }
                    _ => bad.push((profiles_topic.to_owned(), p, r.offset, "profile".to_owned())),
                }
            } else {
                let r = cs[j];
                j += 1;
                let key = text(&r.key).unwrap_or_default();
                let click = serde_json::from_slice::<Click>(r.value.as_deref().unwrap_or_default());
                let Some(click) = click.ok().filter(|c| !c.page.is_empty()) else {
                    bad.push((clicks_topic.to_owned(), p, r.offset, "valid_click".to_owned()));
                    continue;
                };
                let profile = table.get(&key);
                per_user.entry(key.clone()).or_default().push(EnrichedClick {
                    user: key,
                    page: click.page,
                    ms: click.ms,
                    name: profile.map(|p| p.name.clone()),
                    region: profile.map(|p| p.region.clone()),
                    tier: profile.map(|p| p.tier.clone()),
                });
            }
        }
    }
    bad.sort();
    (per_user, bad)
}

/// A join's pipeline run through failures, as every join test here does: the
/// first part of both input topics written, a host that crashes inside a
/// commit half way, one SIGKILLed once half the first part of `inputs[1]` is
/// committed, the second part written while no host runs, and a third host on
/// another empty state directory to the end (and, once both inputs are
/// committed, until `settled` says what runs through internal topics is done
/// too). Each host but the first starts on an empty state directory, so state
/// comes from the changelogs.
fn through_failures(
    plugin: &str,
    app: &str,
    topics: &[(&str, &str)],
    inputs: [&str; 2],
    parts: [[&[RawRecord]; 2]; 2],
    dead: &str,
    settled: &dyn Fn() -> Result<bool>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let args = |state: &str| -> Result<Vec<String>> {
        let mut args = topology_args(plugin, app, topics, &dir.path().join(state))?;
        args.extend(strings(&["--dead-letter-topic", dead]));
        Ok(args)
    };
    let [first_part, second_part] = parts;
    produce(inputs[0], first_part[0])?;
    produce(inputs[1], first_part[1])?;
    // A crash inside a commit (everything of the transaction written, nothing
    // committed) half way through the first part.
    let crash_at = ((first_part[0].len() + first_part[1].len()) / 2).to_string();
    let mut first = spawn_weir_with_env(&args("a")?, &log, &[("WEIR_TEST_CRASH_AFTER_FLUSH", &crash_at)])?;
    let status = wait_exit(&mut first, Duration::from_secs(180))?;
    assert!(!status.success(), "the first host must die in its commit: {status}");
    // Back on an empty state directory, and SIGKILLed half way.
    let mut second = spawn_weir(&args("b")?, &log)?;
    await_committed_at_least(app, inputs[1], PARTITIONS, first_part[1].len() as i64 / 2, &mut second)?;
    second.kill()?;
    // The second part arrives while no host runs; the third host comes back on
    // another empty state directory.
    produce(inputs[0], second_part[0])?;
    produce(inputs[1], second_part[1])?;
    let mut third = spawn_weir(&args("c")?, &log)?;
    await_caught_up(app, inputs[1], &mut third, Duration::from_secs(240))?;
    await_caught_up(app, inputs[0], &mut third, Duration::from_secs(60))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !settled()? {
        if let Some(status) = third.exited()? {
            return third.fail(format!("weir exited early with {status}"));
        }
        if std::time::Instant::now() > deadline {
            return third.fail("the output did not settle in 180 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    terminate(&mut third)?;
    let text = std::fs::read_to_string(&log)?;
    assert!(restored_records(&text) > 0, "the restarts must restore the join's state from its changelog:\n{text}");
    Ok(())
}

/// (topic, partition, offset, node) of every dead letter in `dead`, sorted.
fn dead_letters(dead: &str) -> Result<Bad> {
    let mut got = Bad::new();
    for letter in read_all(dead)? {
        let header = |name: &str| letter.headers.get(name).cloned().unwrap_or_default();
        got.push((
            header("weir.source.topic"),
            header("weir.source.partition").parse()?,
            header("weir.source.offset").parse()?,
            header("weir.node"),
        ));
    }
    got.sort();
    Ok(got)
}

#[test]
fn clicks_are_enriched_with_profiles_as_of_their_time_through_a_crash_a_sigkill_and_empty_state_dirs() -> Result<()> {
    let app = unique("enrich");
    let (profiles, clicks_topic) = (format!("{app}-profiles"), format!("{app}-clicks"));
    let (enriched, dead) = (format!("{app}-enriched"), format!("{app}-dead"));
    create_topic(&profiles, PARTITIONS)?;
    create_topic(&clicks_topic, PARTITIONS)?;
    let topics = [
        ("profiles-cdc", profiles.as_str()),
        ("clicks", clicks_topic.as_str()),
        ("enriched-clicks", enriched.as_str()),
    ];
    // The stream comes in two parts, the second later in event time than the
    // first, and each is on the broker before a host reads it: which profile a
    // click sees depends only on timestamps, never on when records arrive.
    let half = (0, SPAN / 2);
    let (changes, click_records) = (profile_changes(0xcdc, 1_500, half), clicks(0xc11c, 10_000, half));
    let rest = (SPAN / 2, SPAN);
    let (more_changes, more_clicks) = (profile_changes(0xcdc2, 1_500, rest), clicks(0xc11c2, 10_000, rest));
    let parts = [[&changes[..], &click_records[..]], [&more_changes[..], &more_clicks[..]]];
    through_failures("click-enrich", &app, &topics, [&profiles, &clicks_topic], parts, &dead, &|| Ok(true))?;
    let (changes, click_records) = ([changes, more_changes].concat(), [click_records, more_clicks].concat());

    let (profiles_in, clicks_in) = (read_all(&profiles)?, read_all(&clicks_topic)?);
    assert_eq!((profiles_in.len(), clicks_in.len()), (changes.len(), click_records.len()));
    let (want, want_bad) = recompute(&profiles, &profiles_in, &clicks_topic, &clicks_in);
    let joined: usize = want.values().map(Vec::len).sum();
    let with_profile = want.values().flatten().filter(|c| c.region.is_some()).count();
    assert!(joined > 15_000 && with_profile > joined / 2 && with_profile < joined, "the feeds must make work");

    let mut got = PerUser::new();
    for r in read_all(&enriched)? {
        let c: EnrichedClick =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).context("enriched-clicks value")?;
        assert_eq!(r.key.as_deref(), Some(c.user.as_bytes()), "the key is the user");
        got.entry(c.user.clone()).or_default().push(c);
    }
    for (user, clicks) in &want {
        assert_eq!(got.get(user), Some(clicks), "user {user}: each click once, with the profile as of its time");
    }
    assert_eq!(got.len(), want.len());

    let got_bad = dead_letters(&dead)?;
    assert_eq!(got_bad, want_bad, "each bad record dead-lettered once, naming its node, topic, partition and offset");
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
struct SearchResult {
    session: String,
    query: String,
    url: Option<String>,
    position: Option<u32>,
}

const SESSIONS: usize = 500;
/// How far clicks may follow a search, and the join's grace.
const CLICK_WINDOW: i64 = 5_000;
const GRACE: i64 = 3_000;

/// Searches and clicks over `span` (ms after `START`): each search at a time of
/// its own, most followed by a click or two up to seven seconds later (some
/// outside the window), stray clicks, and some records that are no valid
/// search or click. Each topic is written in arrival order: event time plus
/// a delay of up to two seconds (out of order, within the grace).
fn searches_and_clicks(seed: u64, searches: usize, (from, to): (i64, i64)) -> (Vec<RawRecord>, Vec<RawRecord>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut s, mut c) = (Vec::new(), Vec::new());
    let arrive = |rng: &mut StdRng, out: &mut Vec<(i64, RawRecord)>, key: String, value: String, ts: i64| {
        out.push((ts + rng.random_range(0..2_000), (Some(key.into_bytes()), Some(value.into_bytes()), ts)));
    };
    let (mut s_arrivals, mut c_arrivals) = (Vec::new(), Vec::new());
    for i in 0..searches {
        let session = format!("s{:03}", rng.random_range(0..SESSIONS));
        // Ends of the span are kept clear of the window so parts do not overlap.
        let ts = START + rng.random_range(from..to - 8_000);
        let value = match i % 97 {
            3 => "{\"query\":".to_owned(),
            50 => r#"{"query":"","results":2}"#.to_owned(),
            _ => format!(r#"{{"query":"q{seed}-{i}","results":{}}}"#, rng.random_range(1..50)),
        };
        arrive(&mut rng, &mut s_arrivals, session.clone(), value, ts);
        for k in 0..[0, 1, 1, 2][rng.random_range(0..4)] {
            let at = ts + rng.random_range(0..7_000);
            let value = if (i + k) % 89 == 7 {
                r#"{"url":"","position":1}"#.to_owned()
            } else {
                format!(r#"{{"url":"u{seed}-{i}-{k}","position":{}}}"#, rng.random_range(1..10))
            };
            arrive(&mut rng, &mut c_arrivals, session.clone(), value, at);
        }
        if rng.random_bool(0.1) {
            let at = START + rng.random_range(from..to - 8_000);
            arrive(&mut rng, &mut c_arrivals, session, format!(r#"{{"url":"stray{seed}-{i}","position":0}}"#), at);
        }
    }
    for (arrivals, out) in [(s_arrivals, &mut s), (c_arrivals, &mut c)] {
        let mut arrivals = arrivals;
        arrivals.sort_by_key(|(at, _)| *at);
        out.extend(arrivals.into_iter().map(|(_, r)| r));
    }
    (s, c)
}

#[derive(Debug, Deserialize)]
struct SearchIn {
    query: String,
}

#[derive(Debug, Deserialize)]
struct ClickIn {
    url: String,
    position: u32,
}

/// What the join must write (each result with its timestamp), whatever the
/// order of processing within the grace: every search with every click of
/// its session up to five seconds after it, at the click's time; and each
/// search no click followed, at its own time, if its window (plus grace) is
/// behind its partition's last event time. Plus the dead letters.
fn recompute_clicks(
    searches_topic: &str,
    searches: &[Record],
    clicks_topic: &str,
    clicks: &[Record],
) -> (Vec<(SearchResult, i64)>, Bad) {
    let (mut out, mut bad) = (Vec::new(), Bad::new());
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    let mut valid_clicks = Vec::new();
    for r in clicks {
        match serde_json::from_slice::<ClickIn>(r.value.as_deref().unwrap_or_default()) {
            Ok(c) if !c.url.is_empty() => valid_clicks.push((r, c)),
            _ => bad.push((clicks_topic.to_owned(), r.partition, r.offset, "valid_click".to_owned())),
        }
    }
    let last: HashMap<i32, i64> = searches.iter().chain(clicks).fold(HashMap::new(), |mut m, r| {
        let e = m.entry(r.partition).or_insert(i64::MIN);
        *e = (*e).max(r.timestamp);
        m
    });
    for r in searches {
        let search = match serde_json::from_slice::<SearchIn>(r.value.as_deref().unwrap_or_default()) {
            Ok(s) if !s.query.is_empty() => s,
            _ => {
                bad.push((searches_topic.to_owned(), r.partition, r.offset, "valid_search".to_owned()));
                continue;
            }
        };
        let session = text(&r.key);
        let mut met = false;
        for (c, click) in valid_clicks.iter().filter(|(c, _)| c.key == r.key) {
            if c.timestamp >= r.timestamp && c.timestamp <= r.timestamp + CLICK_WINDOW {
                met = true;
                let result = SearchResult {
                    session: session.clone(),
                    query: search.query.clone(),
                    url: Some(click.url.clone()),
                    position: Some(click.position),
                };
                out.push((result, c.timestamp));
            }
        }
        if !met && r.timestamp + CLICK_WINDOW + GRACE < last[&r.partition] {
            let result = SearchResult { session, query: search.query, url: None, position: None };
            out.push((result, r.timestamp));
        }
    }
    out.sort();
    bad.sort();
    (out, bad)
}

#[test]
fn searches_meet_the_clicks_that_follow_them_through_a_crash_a_sigkill_and_empty_state_dirs() -> Result<()> {
    let app = unique("clickthrough");
    let (searches, clicks_topic) = (format!("{app}-searches"), format!("{app}-clicks"));
    let (results, dead) = (format!("{app}-results"), format!("{app}-dead"));
    create_topic(&searches, PARTITIONS)?;
    create_topic(&clicks_topic, PARTITIONS)?;
    let topics =
        [("searches", searches.as_str()), ("clicks", clicks_topic.as_str()), ("search-results", results.as_str())];
    // Two parts, the second later in event time and written while no host
    // runs (as in the enrichment test above).
    let (s1, c1) = searches_and_clicks(1, 4_000, (0, SPAN / 2));
    let (s2, c2) = searches_and_clicks(2, 4_000, (SPAN / 2, SPAN));
    let parts = [[&c1[..], &s1[..]], [&c2[..], &s2[..]]];
    through_failures("search-clicks", &app, &topics, [&clicks_topic, &searches], parts, &dead, &|| Ok(true))?;

    let (searches_in, clicks_in) = (read_all(&searches)?, read_all(&clicks_topic)?);
    assert_eq!(searches_in.len(), s1.len() + s2.len());
    let (want, want_bad) = recompute_clicks(&searches, &searches_in, &clicks_topic, &clicks_in);
    let unmatched = want.iter().filter(|(r, _)| r.url.is_none()).count();
    assert!(
        want.len() > 6_000 && unmatched > 1_000 && unmatched < want.len() / 2,
        "the feeds must make work: {} results, {unmatched} unmatched",
        want.len()
    );
    let mut got = Vec::new();
    for r in read_all(&results)? {
        let result: SearchResult =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).context("search-results value")?;
        assert_eq!(r.key.as_deref(), Some(result.session.as_bytes()), "the key is the session");
        got.push((result, r.timestamp));
    }
    got.sort();
    assert_eq!(got.len(), want.len(), "each meeting and each unmatched search once");
    assert_eq!(got, want, "each meeting and each unmatched search once, with its timestamp");

    let got_bad = dead_letters(&dead)?;
    assert_eq!(got_bad, want_bad, "each bad record dead-lettered once, naming its node");
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Availability {
    name: String,
    price: u64,
    units: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ProductIn {
    name: String,
    price: u64,
}

#[derive(Debug, Deserialize)]
struct StockIn {
    units: u64,
}

/// Changes of one table: rows of `ids` keys, deleted now and then (a null
/// value), some not decodable, at the times of `parity` (so the two topics
/// never share a timestamp).
fn table_changes(
    seed: u64,
    count: usize,
    ids: usize,
    parity: i64,
    span: (i64, i64),
    row: fn(&mut StdRng) -> String,
) -> Vec<RawRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let times = timed(&mut rng, count, parity, span);
    times
        .into_iter()
        .enumerate()
        .map(|(i, ts)| {
            let key = format!("p{:03}", rng.random_range(0..ids));
            let value = match (i % 83, rng.random_range(0..12)) {
                (17, _) => Some("{\"name\":".to_owned()),
                (_, 0) => None,
                _ => Some(row(&mut rng)),
            };
            (Some(key.into_bytes()), value.map(String::into_bytes), ts)
        })
        .collect()
}

/// Availability updates per product, in order, as a recomputation says: both
/// topics of each partition merged by timestamp, each table a map; after each
/// change of a row, the product's availability if it is in the catalogue, a
/// tombstone if it just left it.
fn recompute_availability(
    products_topic: &str,
    products: &[Record],
    stock_topic: &str,
    stock: &[Record],
) -> (BTreeMap<String, Vec<Option<Availability>>>, Bad) {
    let (mut per_key, mut bad) = (BTreeMap::<String, Vec<Option<Availability>>>::new(), Bad::new());
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    for p in 0..PARTITIONS {
        let ps: Vec<&Record> = products.iter().filter(|r| r.partition == p).collect();
        let ss: Vec<&Record> = stock.iter().filter(|r| r.partition == p).collect();
        let (mut catalogue, mut units): (HashMap<String, ProductIn>, HashMap<String, u64>) = Default::default();
        let (mut i, mut j) = (0, 0);
        while i < ps.len() || j < ss.len() {
            let from_products = j >= ss.len() || (i < ps.len() && ps[i].timestamp < ss[j].timestamp);
            let r = if from_products { ps[i] } else { ss[j] };
            if from_products {
                i += 1
            } else {
                j += 1
            }
            let key = text(&r.key);
            let had = catalogue.contains_key(&key);
            let changed = match (&r.value, from_products) {
                (None, true) => catalogue.remove(&key).is_some(),
                (None, false) => units.remove(&key).is_some(),
                (Some(v), true) => match serde_json::from_slice::<ProductIn>(v) {
                    Ok(product) => {
                        catalogue.insert(key.clone(), product);
                        true
                    }
                    Err(_) => {
                        bad.push((products_topic.to_owned(), p, r.offset, "products-decode".to_owned()));
                        false
                    }
                },
                (Some(v), false) => match serde_json::from_slice::<StockIn>(v) {
                    Ok(s) => {
                        units.insert(key.clone(), s.units);
                        true
                    }
                    Err(_) => {
                        bad.push((stock_topic.to_owned(), p, r.offset, "stock-decode".to_owned()));
                        false
                    }
                },
            };
            if !changed {
                continue;
            }
            match catalogue.get(&key) {
                Some(product) => per_key.entry(key.clone()).or_default().push(Some(Availability {
                    name: product.name.clone(),
                    price: product.price,
                    units: units.get(&key).copied(),
                })),
                None if had => per_key.entry(key).or_default().push(None),
                None => {}
            }
        }
    }
    bad.sort();
    (per_key, bad)
}

fn product_row(rng: &mut StdRng) -> String {
    format!(r#"{{"name":"item{}","price":{}}}"#, rng.random_range(0..1_000), rng.random_range(50..5_000))
}

fn stock_row(rng: &mut StdRng) -> String {
    format!(r#"{{"units":{}}}"#, rng.random_range(0..100))
}

#[test]
fn two_tables_joined_on_key_follow_both_through_a_crash_a_sigkill_and_empty_state_dirs() -> Result<()> {
    let app = unique("availability");
    let (products, stock) = (format!("{app}-products"), format!("{app}-stock"));
    let (out, dead) = (format!("{app}-availability"), format!("{app}-dead"));
    create_topic(&products, PARTITIONS)?;
    create_topic(&stock, PARTITIONS)?;
    let topics = [("products", products.as_str()), ("stock", stock.as_str()), ("availability", out.as_str())];
    // Stock is kept for more products than the catalogue has.
    let part = |seed: u64, span| {
        (table_changes(seed, 2_000, 200, 0, span, product_row), table_changes(seed + 1, 3_000, 250, 1, span, stock_row))
    };
    let (p1, s1) = part(10, (0, SPAN / 2));
    let (p2, s2) = part(20, (SPAN / 2, SPAN));
    through_failures(
        "product-stock",
        &app,
        &topics,
        [&products, &stock],
        [[&p1[..], &s1[..]], [&p2[..], &s2[..]]],
        &dead,
        &|| Ok(true),
    )?;

    let (products_in, stock_in) = (read_all(&products)?, read_all(&stock)?);
    let (want, want_bad) = recompute_availability(&products, &products_in, &stock, &stock_in);
    let updates: usize = want.values().map(Vec::len).sum();
    let tombstones = want.values().flatten().filter(|a| a.is_none()).count();
    assert!(
        updates > 4_000 && tombstones > 100,
        "the feeds must make work: {updates} updates, {tombstones} tombstones"
    );
    let mut got = BTreeMap::<String, Vec<Option<Availability>>>::new();
    for r in read_all(&out)? {
        let key = String::from_utf8(r.key.clone().unwrap_or_default())?;
        let value = r.value.as_deref().map(serde_json::from_slice::<Availability>).transpose()?;
        got.entry(key).or_default().push(value);
    }
    assert_eq!(got.len(), want.len());
    for (key, updates) in &want {
        assert_eq!(got.get(key), Some(updates), "product {key}: every update once, in order");
    }
    let got_bad = dead_letters(&dead)?;
    assert_eq!(got_bad, want_bad, "each bad record dead-lettered once, naming its decoder");
    // Both tables were restored from their topics (the restarts' restored
    // records, asserted above); neither has a changelog.
    assert!(topic_exists(&products)?, "the check sees the topics there are");
    for store in ["products-table", "stock-table"] {
        let changelog = format!("{app}-{store}-changelog");
        assert!(!topic_exists(&changelog)?, "{changelog}: a table read from a topic needs no changelog");
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct OrderIn {
    product: String,
    qty: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct CatalogueIn {
    name: String,
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Line {
    product: String,
    qty: u64,
    name: String,
    cents: u64,
    total: u64,
}

fn order_row(rng: &mut StdRng) -> String {
    let product = match rng.random_range(0..25) {
        0 => String::new(),
        _ => format!("p{:03}", rng.random_range(0..60)),
    };
    format!(r#"{{"product":"{product}","qty":{}}}"#, rng.random_range(1..10))
}

fn catalogue_row(rng: &mut StdRng) -> String {
    format!(r#"{{"name":"item{}","cents":{}}}"#, rng.random_range(0..1_000), rng.random_range(50..5_000))
}

/// The order lines the final rows of both tables make (each table's last
/// valid row per key; a record that does not decode changes nothing and is
/// dead-lettered), and the dead letters.
fn recompute_lines(
    orders_topic: &str,
    orders: &[Record],
    products_topic: &str,
    products: &[Record],
) -> Result<(BTreeMap<String, Line>, Bad)> {
    let mut bad = Bad::new();
    let mut last = |topic: &str, records: &[Record], node: &str| -> Result<HashMap<String, Vec<u8>>> {
        let mut rows = HashMap::new();
        for r in records {
            let key = String::from_utf8(r.key.clone().unwrap_or_default())?;
            match &r.value {
                None => {
                    rows.remove(&key);
                }
                Some(v) if serde_json::from_slice::<serde_json::Value>(v).is_err() => {
                    bad.push((topic.to_owned(), r.partition, r.offset, node.to_owned()));
                }
                Some(v) => {
                    rows.insert(key, v.clone());
                }
            }
        }
        Ok(rows)
    };
    // Records of one partition are in offset order: later offsets win.
    let orders = last(orders_topic, orders, "orders-decode")?;
    let products = last(products_topic, products, "products-decode")?;
    let mut lines = BTreeMap::new();
    for (key, order) in orders {
        let order: OrderIn = serde_json::from_slice(&order)?;
        if order.product.is_empty() {
            continue;
        }
        if let Some(product) = products.get(&order.product) {
            let product: CatalogueIn = serde_json::from_slice(product)?;
            let total = order.qty * product.cents;
            let line = Line { product: order.product, qty: order.qty, name: product.name, cents: product.cents, total };
            lines.insert(key, line);
        }
    }
    bad.sort();
    Ok((lines, bad))
}

/// The orders with a line once `orders` and `products` (as produced, in
/// order) are applied: each table's last decodable row per key.
fn lines_of(orders: &[RawRecord], products: &[RawRecord]) -> Result<std::collections::BTreeSet<String>> {
    fn last<T: serde::de::DeserializeOwned>(records: &[RawRecord]) -> Result<HashMap<String, T>> {
        let mut rows = HashMap::new();
        for (key, value, _) in records {
            let key = String::from_utf8(key.clone().unwrap_or_default())?;
            match value.as_deref().map(serde_json::from_slice::<T>) {
                None => {
                    rows.remove(&key);
                }
                Some(Ok(row)) => {
                    rows.insert(key, row);
                }
                Some(Err(_)) => {}
            }
        }
        Ok(rows)
    }
    let products: HashMap<String, CatalogueIn> = last(products)?;
    let orders: HashMap<String, OrderIn> = last(orders)?;
    Ok(orders.into_iter().filter(|(_, o)| products.contains_key(&o.product)).map(|(k, _)| k).collect())
}

/// The table the output topic holds: the last value per key (a tombstone deletes).
fn final_lines(topic: &str) -> Result<BTreeMap<String, Line>> {
    let mut table = BTreeMap::new();
    for r in read_all(topic)? {
        let key = String::from_utf8(r.key.clone().unwrap_or_default())?;
        match r.value.as_deref() {
            Some(v) => table.insert(key, serde_json::from_slice::<Line>(v)?),
            None => table.remove(&key),
        };
    }
    Ok(table)
}

/// Orders (three partitions) joined by foreign key with products (two: the
/// tables need not be co-partitioned), orders moving between products,
/// products changing and leaving under them: once everything has gone
/// through both repartition topics, the output holds exactly the lines the
/// final rows make — through a crash inside a commit, a SIGKILL mid-stream
/// and two restarts on empty state directories.
#[test]
fn orders_joined_with_products_by_foreign_key_end_exact_through_a_crash_a_sigkill_and_empty_state_dirs() -> Result<()> {
    let app = unique("order-lines");
    let (orders, products) = (format!("{app}-orders"), format!("{app}-products"));
    let (out, dead) = (format!("{app}-lines"), format!("{app}-dead"));
    create_topic(&orders, 3)?;
    create_topic(&products, PARTITIONS)?;
    let topics = [("orders", orders.as_str()), ("products", products.as_str()), ("order-lines", out.as_str())];
    let order_changes = |seed: u64, span| {
        let mut rows = table_changes(seed, 3_000, 400, 0, span, order_row);
        for (key, _, _) in &mut rows {
            if let Some(k) = key {
                k[0] = b'o';
            }
        }
        rows
    };
    let (o1, c1) = (order_changes(30, (0, SPAN / 2)), table_changes(31, 600, 60, 1, (0, SPAN / 2), catalogue_row));
    let (o2, c2) =
        (order_changes(40, (SPAN / 2, SPAN)), table_changes(41, 600, 60, 1, (SPAN / 2, SPAN), catalogue_row));
    let want = || -> Result<_> { recompute_lines(&orders, &read_all(&orders)?, &products, &read_all(&products)?) };
    let settled = || -> Result<bool> { Ok(final_lines(&out)? == want()?.0) };
    through_failures(
        "order-products",
        &app,
        &topics,
        [&orders, &products],
        [[&o1[..], &c1[..]], [&o2[..], &c2[..]]],
        &dead,
        &settled,
    )?;
    let (want, want_bad) = want()?;
    assert!(want.len() > 200, "the feeds must make work: {} lines", want.len());
    // Lines the first part made that the second ends (whether each was
    // written, and so deleted by a tombstone, depends on how commits cut the
    // stream; that none is left is asserted below).
    let first = lines_of(&o1, &c1)?;
    let ended = first.iter().filter(|k| !want.contains_key(*k)).count();
    assert!(ended > 10, "the second part must end lines of the first: {ended}");
    assert_eq!(final_lines(&out)?, want, "the lines the final rows make, after the last host stopped");
    assert_eq!(dead_letters(&dead)?, want_bad, "each bad record dead-lettered once, naming its decoder");
    Ok(())
}

/// A new joiner swapped in while clicks stream through the join: it takes over
/// at a commit — in every partition's output, clicks enriched by the first
/// build, then by the second, never mixed — and every click is enriched once,
/// with the profile as of its time (the table and the join's place in both
/// topics carry over the swap).
#[test]
fn a_joiner_swapped_mid_stream_takes_over_at_a_commit_and_every_click_is_enriched_once() -> Result<()> {
    use weir::config::{RunConfig, StateConfig};
    use weir::metrics::Metrics;
    use weir::pipeline::Pipeline;
    use weir::runtime::{Runtime, Sandbox};

    use crate::hot_swap::{await_committed_all, wait_for, while_running};

    let app = unique("joiner-swap");
    let (profiles, clicks_topic) = (format!("{app}-profiles"), format!("{app}-clicks"));
    let (enriched, dead) = (format!("{app}-enriched"), format!("{app}-dead"));
    create_topic(&profiles, PARTITIONS)?;
    create_topic(&clicks_topic, PARTITIONS)?;
    // The profiles change in the first two thirds of the span, with the
    // clicks of that part; the rest of the clicks (later in event time, so
    // every one of them meets the final profiles whatever the order they are
    // read in) are written only once the swap has taken effect: both builds
    // write, however fast the host reads.
    let cut = SPAN * 2 / 3;
    let (changes, first_clicks) = (profile_changes(0x5a, 1_500, (0, cut)), clicks(0x5b, 14_000, (0, cut)));
    let later_clicks = clicks(0x5c, 6_000, (cut, SPAN));
    produce(&profiles, &changes)?;
    produce(&clicks_topic, &first_clicks)?;
    let state = tempfile::tempdir()?;
    let cfg = RunConfig {
        application_id: app.clone(),
        plugin: plugin("click-enrich")?,
        bootstrap_servers: bootstrap(),
        topics: [("profiles-cdc", &profiles), ("clicks", &clicks_topic), ("enriched-clicks", &enriched)]
            .into_iter()
            .map(|(l, r)| (l.to_owned(), r.clone()))
            .collect(),
        dead_letter_topic: Some(dead.clone()),
        instance_id: Some(format!("{app}-host")),
        state: StateConfig { dir: state.path().to_path_buf(), ..StateConfig::default() },
        ..RunConfig::default()
    };
    let runtime = Runtime::new()?;
    let next = runtime.load(&std::fs::read(plugin("click-enrich-next")?)?, Sandbox::default())?;
    let metrics = Metrics::default();
    let pipeline = Pipeline::new(cfg, &runtime, metrics.clone())?;
    let control = pipeline.control();
    let first_part = (changes.len() + first_clicks.len()) as u64;
    while_running(pipeline, || {
        wait_for("a third of the stream", Duration::from_secs(120), || Ok(metrics.records_in.get() >= first_part / 3))?;
        control.activate("next", next.clone(), false)?;
        wait_for("the swap", Duration::from_secs(30), || Ok(!control.status().history.is_empty()))?;
        wait_for("the first part", Duration::from_secs(120), || Ok(metrics.records_in.get() >= first_part))?;
        produce(&clicks_topic, &later_clicks)?;
        await_committed_all(&app, &clicks_topic, PARTITIONS)?;
        await_committed_all(&app, &profiles, PARTITIONS)
    })?;
    let status = control.status();
    assert_eq!(status.active, "next", "{:#?}", status.history);
    assert!(status.history.iter().all(|e| e.rolled_back.is_none()), "{:#?}", status.history);

    let (want, _) = recompute(&profiles, &read_all(&profiles)?, &clicks_topic, &read_all(&clicks_topic)?);
    let mut got = PerUser::new();
    let mut by_partition: BTreeMap<i32, Vec<bool>> = BTreeMap::new();
    for r in read_all(&enriched)? {
        let mut c: EnrichedClick = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
        if let Some(region) = &c.region {
            // Which build enriched it: the second writes regions upper-case.
            by_partition.entry(r.partition).or_default().push(region.chars().all(|ch| ch.is_ascii_uppercase()));
            c.region = Some(region.to_lowercase());
        }
        got.entry(c.user.clone()).or_default().push(c);
    }
    assert_eq!(got, want, "every click once, with the profile as of its time");
    for (partition, next) in &by_partition {
        let switched = next.iter().position(|n| *n).unwrap_or(next.len());
        assert!(next[switched..].iter().all(|n| *n), "partition {partition}: the first build after the second");
    }
    let next_share = by_partition.values().flatten().filter(|n| **n).count();
    assert!(next_share > 0 && next_share < by_partition.values().map(Vec::len).sum::<usize>(), "both builds wrote");
    Ok(())
}

/// Tables joined on key whose topics have different partition counts: the
/// pipeline is refused at start, naming the topic and both counts.
#[test]
fn tables_that_are_not_co_partitioned_are_refused_at_start() -> Result<()> {
    let app = unique("join-refused");
    let (products, stock) = (format!("{app}-products"), format!("{app}-stock"));
    create_topic(&products, 3)?;
    create_topic(&stock, 2)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let topics = [("products", products.as_str()), ("stock", stock.as_str())];
    let mut weir = spawn_weir(&topology_args("product-stock", &app, &topics, dir.path())?, &log)?;
    let status = wait_exit(&mut weir, Duration::from_secs(60))?;
    let text = std::fs::read_to_string(&log)?;
    assert!(!status.success(), "{status}\n{text}");
    assert!(text.contains(stock.as_str()) && text.contains(&format!("read with {products} (3 partitions)")), "{text}");
    assert!(text.contains("it has 2 partitions") && text.contains("co-partitioned"), "{text}");
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
struct Priced {
    product: String,
    qty: u64,
    cents: Option<u64>,
    total: Option<u64>,
}

/// Orders of `products` products (some never priced, some with no product),
/// keyed by order id.
fn orders(seed: u64, count: usize, products: usize, first: usize) -> Vec<RawRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let product = if i % 71 == 9 { String::new() } else { format!("p{}", rng.random_range(0..products)) };
            let value = format!(r#"{{"product":"{product}","qty":{}}}"#, rng.random_range(1..10));
            (Some(format!("o{}", first + i).into_bytes()), Some(value.into_bytes()), START + i as i64)
        })
        .collect()
}

/// A global table of prices on a topic of one partition, orders on three:
/// every host reads the whole price topic before it processes an order, so
/// each order is priced from the prices written before the host started —
/// through a SIGKILL and a restart on an empty state directory (which reads
/// the prices again), and with prices changed while no host ran.
#[test]
fn orders_are_priced_from_a_global_table_through_a_sigkill_and_an_empty_state_dir() -> Result<()> {
    let app = unique("pricing");
    let (prices, orders_topic, out) = (format!("{app}-prices"), format!("{app}-orders"), format!("{app}-priced"));
    let dead = format!("{app}-dead");
    create_topic(&prices, 1)?;
    create_topic(&orders_topic, 3)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let topics = [("prices", prices.as_str()), ("orders", orders_topic.as_str()), ("priced-orders", out.as_str())];
    let args = |state: &str| -> Result<Vec<String>> {
        let mut args = topology_args("order-pricing", &app, &topics, &dir.path().join(state))?;
        args.extend(strings(&["--dead-letter-topic", &dead]));
        Ok(args)
    };
    // Products p0..p39 priced (p40..p49 never), some priced twice, p7 deleted.
    let price = |p: usize, cents: u64| {
        (Some(format!("p{p}").into_bytes()), Some(format!(r#"{{"cents":{cents}}}"#).into_bytes()), START)
    };
    let mut first_prices: Vec<RawRecord> = (0..40).map(|p| price(p, 100 + p as u64)).collect();
    first_prices.extend((0..10).map(|p| price(p, 1_000 + p as u64)));
    first_prices.push((Some(b"p7".to_vec()), None, START));
    produce(&prices, &first_prices)?;
    let first_orders = orders(1, 6_000, 50, 0);
    produce(&orders_topic, &first_orders)?;
    let mut first = spawn_weir(&args("a")?, &log)?;
    await_committed_at_least(&app, &orders_topic, 3, first_orders.len() as i64 / 2, &mut first)?;
    first.kill()?;
    // While no host runs: p1 and p40 get (new) prices; more orders come.
    produce(&prices, &[price(1, 5_000), price(40, 4_000)])?;
    let more_orders = orders(2, 3_000, 50, first_orders.len());
    produce(&orders_topic, &more_orders)?;
    let mut second = spawn_weir(&args("b")?, &log)?;
    await_caught_up(&app, &orders_topic, &mut second, Duration::from_secs(180))?;
    terminate(&mut second)?;

    // The prices each order may have seen: an order of the first part the old
    // ones (if the first host committed it) or the new; every later order the
    // new ones.
    let table = |changes: &[RawRecord]| -> HashMap<String, u64> {
        let mut t = HashMap::new();
        for (k, v, _) in changes {
            let k = String::from_utf8(k.clone().unwrap_or_default()).unwrap_or_default();
            match v {
                Some(v) => t.insert(
                    k,
                    serde_json::from_slice::<serde_json::Value>(v).ok().and_then(|j| j["cents"].as_u64()).unwrap_or(0),
                ),
                None => t.remove(&k),
            };
        }
        t
    };
    let before = table(&first_prices);
    let after = table(&[first_prices.clone(), vec![price(1, 5_000), price(40, 4_000)]].concat());
    let mut got: BTreeMap<String, Priced> = BTreeMap::new();
    for r in read_all(&out)? {
        let key = String::from_utf8(r.key.clone().unwrap_or_default())?;
        let p: Priced = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
        assert!(got.insert(key.clone(), p).is_none(), "order {key} priced twice");
    }
    let mut unpriced = 0;
    for (i, (k, v, _)) in first_orders.iter().chain(&more_orders).enumerate() {
        let key = String::from_utf8(k.clone().unwrap_or_default())?;
        let order: serde_json::Value = serde_json::from_slice(v.as_deref().unwrap_or_default())?;
        let product = order["product"].as_str().unwrap_or_default().to_owned();
        if product.is_empty() {
            assert!(!got.contains_key(&key), "order {key} names no product: dead-lettered");
            continue;
        }
        let p = got.get(&key).with_context(|| format!("order {key} not priced"))?;
        let qty = order["qty"].as_u64().unwrap_or(0);
        // An order the first host committed saw its prices; the others the new ones.
        let (old, new) = (before.get(&product).copied(), after.get(&product).copied());
        let want = if i < first_orders.len() && old != new { [old, new] } else { [new, new] };
        assert!(want.contains(&p.cents), "order {key} of {product}: {p:?}, want one of {want:?}");
        if i >= first_orders.len() {
            assert_eq!(p.cents, new, "order {key} came after the restart: the new prices");
        }
        assert_eq!(p.total, p.cents.map(|c| c * qty));
        unpriced += usize::from(p.cents.is_none());
    }
    assert!(unpriced > 100, "products without a price (p7 deleted, p41.. never) leave orders unpriced");
    let dead_letters = read_all(&dead)?;
    assert!(
        !dead_letters.is_empty()
            && dead_letters.iter().all(|l| l.headers.get("weir.node").map(String::as_str) == Some("product_of")),
        "orders naming no product are dead-lettered by the selector"
    );
    let text = std::fs::read_to_string(&log)?;
    assert!(text.matches("global tables loaded").count() >= 2, "each host reads the prices first:\n{text}");
    Ok(())
}
