use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::calls::{Rec, RunIn, RunOut, SlotOp};
use weir_abi::topology::{Edge, Emit, Op, WindowSpec};

use super::*;
use crate::{Change, Windowed, decode_state};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Trade {
    ticker: String,
    side: String,
    price: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Stats {
    n: u64,
    sum: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Out {
    ticker: String,
    start: i64,
    n: u64,
}

fn is_ask(_: &String, t: &Trade) -> bool {
    t.side == "ask"
}

fn add(s: &mut Stats, _: &String, t: &Trade) {
    s.n += 1;
    s.sum += t.price;
}

fn render(k: &Windowed<String>, s: Stats) -> Out {
    Out { ticker: k.key.clone(), start: k.window.start, n: s.n }
}

fn stock_stats() -> Topology {
    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades")
        .filter(is_ask)
        .group_by_key()
        .windowed_by(hopping(Duration::from_secs(5), Duration::from_secs(1)).grace(Duration::from_secs(2)))
        .aggregate(add)
        .to_stream()
        .map_values(render)
        .to("stockstats-output");
    b.build().unwrap()
}

fn names(t: &Topology) -> Vec<String> {
    t.describe().nodes.iter().map(|n| n.name.clone()).collect()
}

fn trade(ticker: &str, side: &str, price: f64) -> Vec<u8> {
    serde_json::to_vec(&Trade { ticker: ticker.into(), side: side.into(), price }).unwrap()
}

/// What a `run` call gave back, owned: (source, node name, port, key, value, old, window).
type Emitted = (u32, String, u32, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, Option<weir_abi::Window>);

fn run(
    t: &Topology,
    from: &str,
    records: &[(Option<&[u8]>, Option<&[u8]>)],
) -> (Vec<Emitted>, Vec<(u32, String, String)>) {
    let node = t.describe().find(from).unwrap();
    let frame = RunIn {
        from: Edge { node, port: 0 },
        records: records
            .iter()
            .map(|(k, v)| Rec { key: *k, value: *v, old: None, timestamp: 7, window: None })
            .collect(),
    };
    let out = t.run_frame(&weir_abi::encode(&frame).unwrap()).unwrap();
    let out: RunOut<'_> = weir_abi::decode(&out).unwrap();
    let name = |i: u32| t.describe().node(i).name.clone();
    (
        out.emitted
            .iter()
            .map(|e| {
                let r = &e.record;
                assert_eq!(r.timestamp, 7, "operators keep the input's timestamp");
                (
                    e.source,
                    name(e.node),
                    e.port,
                    r.key.map(<[u8]>::to_vec),
                    r.value.map(<[u8]>::to_vec),
                    r.old.map(<[u8]>::to_vec),
                    r.window,
                )
            })
            .collect(),
        out.rejects.iter().map(|r| (r.record, name(r.node), r.reason.to_owned())).collect(),
    )
}

#[test]
fn the_doc_example_is_one_subtopology_with_named_nodes() {
    let t = stock_stats();
    assert_eq!(names(&t), vec!["trades", "is_ask", "add", "to_stream-1", "render", "to-stockstats-output"]);
    let d = t.describe();
    let Op::Aggregate { store, window, emit, .. } = &d.nodes[2].op else { panic!("{:?}", d.nodes[2]) };
    assert_eq!(store.name, "add");
    assert_eq!(*window, Some(WindowSpec::Hopping { size_ms: 5_000, advance_ms: 1_000, grace_ms: 2_000 }));
    assert_eq!(*emit, Emit::Updates);
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    // Two segments: the filter before the aggregation, the render after it.
    let segments = d.segments().unwrap();
    assert_eq!(segments.iter().map(|s| s.nodes.clone()).collect::<Vec<_>>(), vec![vec![1], vec![4]]);
}

#[test]
fn adding_a_stateless_step_keeps_every_stateful_name() {
    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades")
        .peek(|_, _| {})
        .filter(is_ask)
        .map_values(|_, t: Trade| t)
        .group_by_key()
        .windowed_by(hopping(Duration::from_secs(5), Duration::from_secs(1)))
        .aggregate(add)
        .to_stream()
        .map_values(render)
        .to("stockstats-output");
    let t = b.build().unwrap();
    let stores: Vec<_> = t.describe().nodes.iter().filter_map(|n| n.op.store()).map(|s| s.name.clone()).collect();
    assert_eq!(stores, vec!["add"]);
    assert!(names(&t).contains(&"peek-1".to_owned()) && names(&t).contains(&"map_values-1".to_owned()));
}

#[test]
fn a_stateful_closure_needs_a_name() {
    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades").group_by_key().count().to_stream().to("counts");
    let e = b.build().unwrap_err();
    assert!(e.reason.contains("has no name") && e.reason.contains(".named("), "{e}");

    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades").group_by_key().count().named("counts").to_stream().to("counts");
    let t = b.build().unwrap();
    // The table's rows are stored values: an encode step writes them for the sink.
    assert_eq!(names(&t), vec!["trades", "counts", "to_stream-1", "to-counts-encode", "to-counts"]);
}

#[test]
fn regrouping_adds_a_named_repartition_and_a_second_subtopology() {
    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades")
        .group_by(|_, t: &Trade| t.side.clone())
        .aggregate(add)
        .named("by-side")
        .to_stream()
        .to("sides");
    let t = b.build().unwrap();
    assert_eq!(
        names(&t),
        vec!["trades", "select_key-1", "by-side-repartition", "by-side", "to_stream-1", "to-sides-encode", "to-sides"]
    );
    let subs = t.describe().subtopologies().unwrap();
    assert_eq!(subs.len(), 2);
    // Grouping by the same key needs no repartition.
    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades").filter(is_ask).group_by_key().aggregate(add).to_stream().to("x");
    assert_eq!(b.build().unwrap().describe().subtopologies().unwrap().len(), 1);
}

#[test]
fn a_segment_runs_every_operator_in_one_call() {
    let b = StreamsBuilder::new();
    let s = b
        .stream::<String, Trade>("trades")
        .validate(|_, t: &Trade| if t.price < 0.0 { Err(format!("negative price {}", t.price)) } else { Ok(()) });
    let branches = s
        .split("sides")
        .branch("asks", |_, t: &Trade| t.side == "ask")
        .branch("bids", |_, t: &Trade| t.side == "bid")
        .branches();
    branches[0].map_values(|_, t: Trade| t.price).to("ask-prices");
    branches[1]
        .flat_map_values(|_, t: Trade| vec![t.price, t.price * 2.0])
        .merge(&branches[0].map_values(|_, t: Trade| -t.price))
        .to("mixed");
    let t = b.build().unwrap();
    let (emitted, rejects) = run(
        &t,
        "trades",
        &[
            (Some(b"A"), Some(&trade("A", "ask", 1.5))),
            (Some(b"B"), Some(&trade("B", "bid", 2.0))),
            (Some(b"C"), Some(b"{not json")),
            (Some(b"D"), Some(&trade("D", "ask", -1.0))),
            (Some(b"E"), Some(&trade("E", "none", 3.0))),
        ],
    );
    let by_node = |name: &str| -> Vec<(u32, String)> {
        emitted
            .iter()
            .filter(|e| e.1 == name)
            .map(|e| (e.0, String::from_utf8(e.4.clone().unwrap()).unwrap()))
            .collect()
    };
    assert_eq!(by_node("map_values-1"), vec![(0, "1.5".to_owned())]);
    assert_eq!(by_node("merge-1"), vec![(0, "-1.5".to_owned()), (1, "2.0".to_owned()), (1, "4.0".to_owned())]);
    assert_eq!(emitted.len(), 4, "{emitted:?}");
    assert!(emitted.iter().all(|e| e.3.is_some() && e.6.is_none()));
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert_eq!(rejects[0].0, 2);
    assert_eq!(rejects[0].1, "validate-1");
    assert!(rejects[0].2.contains("invalid value:"), "{rejects:?}");
    assert_eq!((rejects[1].0, rejects[1].1.as_str(), rejects[1].2.as_str()), (3, "validate-1", "negative price -1"));
}

/// `crate::testing::aggregate`, its updates and rejects by name.
fn aggregate(
    t: &Topology,
    node: &str,
    via: Option<&str>,
    slots: Vec<Option<Vec<u8>>>,
    records: Vec<(Rec<'_>, Vec<SlotOp>)>,
) -> AggregateOutOwned {
    let (updates, rejects) = crate::testing::aggregate(t, node, via, &slots, records);
    AggregateOutOwned { updates, rejects: rejects.into_iter().map(|(record, _, reason)| (record, reason)).collect() }
}

struct AggregateOutOwned {
    updates: Vec<(u32, Vec<u8>)>,
    rejects: Vec<(u32, String)>,
}

fn rec<'a>(key: &'a [u8], value: &'a [u8]) -> Rec<'a> {
    Rec { key: Some(key), value: Some(value), old: None, timestamp: 1_000, window: None }
}

#[test]
fn a_fused_aggregation_runs_the_filter_and_folds_in_one_call() {
    let t = stock_stats();
    let (ask, bid, bad) = (trade("A", "ask", 2.0), trade("A", "bid", 5.0), b"nope".to_vec());
    let out = aggregate(
        &t,
        "add",
        Some("trades"),
        vec![None, Some(crate::data::encode_stored(&Stats { n: 1, sum: 1.0 }).unwrap())],
        vec![
            (rec(b"A", &ask), vec![SlotOp::Add(0), SlotOp::Add(1)]),
            (rec(b"A", &bid), vec![SlotOp::Add(0), SlotOp::Add(1)]),
            (rec(b"A", &bad), vec![SlotOp::Add(0)]),
        ],
    );
    let stats: Vec<(u32, Stats)> = out.updates.iter().map(|(s, v)| (*s, decode_state(v).unwrap())).collect();
    assert_eq!(stats, vec![(0, Stats { n: 1, sum: 2.0 }), (1, Stats { n: 2, sum: 3.0 })]);
    assert_eq!(out.rejects.len(), 1);
    assert_eq!(out.rejects[0].0, 2);
}

#[test]
fn rendering_a_windowed_table_reads_stored_rows_and_windows() {
    let t = stock_stats();
    let stats = crate::data::encode_stored(&Stats { n: 3, sum: 6.0 }).unwrap();
    let w = weir_abi::Window { start: 5_000, end: 10_000 };
    let frame = RunIn {
        from: Edge { node: t.describe().find("to_stream-1").unwrap(), port: 0 },
        records: vec![Rec { key: Some(b"AAPL"), value: Some(&stats), old: None, timestamp: 9, window: Some(w) }],
    };
    let out = t.run_frame(&weir_abi::encode(&frame).unwrap()).unwrap();
    let out: RunOut<'_> = weir_abi::decode(&out).unwrap();
    assert_eq!(out.emitted.len(), 1);
    let r = &out.emitted[0].record;
    assert_eq!(r.key, Some(&b"AAPL"[..]));
    assert_eq!(r.window, Some(w));
    let v: Out = serde_json::from_slice(r.value.unwrap()).unwrap();
    assert_eq!(v, Out { ticker: "AAPL".into(), start: 5_000, n: 3 });
}

#[test]
fn deletions_pass_key_keeping_operators_as_tombstones() {
    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades")
        .group_by_key()
        .windowed_by(session(Duration::from_secs(1)))
        .count()
        .named("sessions")
        .to_stream()
        .map_values(|_, n: u64| n * 10)
        .to("sessions");
    let t = b.build().unwrap();
    let w = weir_abi::Window { start: 0, end: 10 };
    let frame = RunIn {
        from: Edge { node: t.describe().find("to_stream-1").unwrap(), port: 0 },
        records: vec![Rec { key: Some(b"k"), value: None, old: None, timestamp: 9, window: Some(w) }],
    };
    let out = t.run_frame(&weir_abi::encode(&frame).unwrap()).unwrap();
    let out: RunOut<'_> = weir_abi::decode(&out).unwrap();
    assert_eq!(out.emitted.len(), 1, "{out:?}");
    assert_eq!(out.emitted[0].record.value, None);
    assert_eq!(out.emitted[0].record.window, Some(w));
}

#[test]
fn sessions_merge_and_tables_subtract() {
    let b = StreamsBuilder::new();
    let daily = b.stream::<String, Trade>("trades").group_by_key().aggregate(add).named("daily");
    daily
        .group_by(|k: &String, s: &Stats| ("all".to_owned(), (k.clone(), s.n)))
        .aggregate(
            |top: &mut Vec<(String, u64)>, _: &String, row: &(String, u64)| top.push(row.clone()),
            |top: &mut Vec<(String, u64)>, _: &String, row: &(String, u64)| top.retain(|r| r != row),
        )
        .named("top")
        .to_stream()
        .to("top");
    b.stream::<String, Trade>("clicks")
        .group_by_key()
        .windowed_by(session(Duration::from_secs(1)))
        .aggregate(add, |a: &mut Stats, b: Stats| {
            a.n += b.n;
            a.sum += b.sum;
        })
        .named("visits")
        .to_stream()
        .to("visits");
    let t = b.build().unwrap();
    assert_eq!(t.describe().subtopologies().unwrap().len(), 3);

    // The table group_by: same new key → one update; the host then subtracts and adds.
    let old = crate::data::encode_stored(&Stats { n: 1, sum: 1.0 }).unwrap();
    let new = crate::data::encode_stored(&Stats { n: 2, sum: 3.0 }).unwrap();
    let frame = RunIn {
        from: Edge { node: t.describe().find("daily").unwrap(), port: 0 },
        records: vec![Rec { key: Some(b"AAPL"), value: Some(&new), old: Some(&old), timestamp: 1, window: None }],
    };
    let out = t.run_frame(&weir_abi::encode(&frame).unwrap()).unwrap();
    let out: RunOut<'_> = weir_abi::decode(&out).unwrap();
    assert_eq!(out.emitted.len(), 1);
    let r = &out.emitted[0].record;
    assert_eq!(r.key, Some(&b"all"[..]));
    assert_eq!(r.value, Some(&br#"["AAPL",2]"#[..]));
    assert_eq!(r.old, Some(&br#"["AAPL",1]"#[..]));

    // The table aggregate: subtract the old row, add the new one.
    let top = vec![("AAPL".to_owned(), 1u64), ("MSFT".to_owned(), 5)];
    let out = aggregate(
        &t,
        "top",
        None,
        vec![Some(crate::data::encode_stored(&top).unwrap())],
        vec![(
            Rec { key: Some(b"all"), value: r.value, old: r.old, timestamp: 1, window: None },
            vec![SlotOp::Subtract(0), SlotOp::Add(0)],
        )],
    );
    let top: Vec<(String, u64)> = decode_state(&out.updates[0].1).unwrap();
    assert_eq!(top, vec![("MSFT".to_owned(), 5), ("AAPL".to_owned(), 2)]);

    // Sessions: two stored sessions merged into a new one, then the record.
    let s1 = crate::data::encode_stored(&Stats { n: 1, sum: 1.0 }).unwrap();
    let s2 = crate::data::encode_stored(&Stats { n: 2, sum: 2.0 }).unwrap();
    let click = trade("k", "ask", 4.0);
    let out = aggregate(
        &t,
        "visits",
        None,
        vec![Some(s1), Some(s2), None],
        vec![(
            rec(b"k", &click),
            vec![SlotOp::Merge { into: 2, from: 0 }, SlotOp::Merge { into: 2, from: 1 }, SlotOp::Add(2)],
        )],
    );
    assert_eq!(out.updates.len(), 1);
    assert_eq!(decode_state::<Stats>(&out.updates[0].1).unwrap(), Stats { n: 4, sum: 7.0 });
    let _ = Change::<u8> { new: None, old: None };
}

#[test]
fn sliding_windows_copy_a_slot_before_adding() {
    let b = StreamsBuilder::new();
    b.stream::<String, Trade>("trades")
        .group_by_key()
        .windowed_by(sliding(Duration::from_secs(5)).grace(Duration::from_secs(1)))
        .aggregate(add)
        .to_stream()
        .to("out");
    let t = b.build().unwrap();
    let x = trade("k", "ask", 1.0);
    let out = aggregate(
        &t,
        "add",
        None,
        vec![Some(crate::data::encode_stored(&Stats { n: 1, sum: 5.0 }).unwrap()), None],
        vec![(rec(b"k", &x), vec![SlotOp::Copy { into: 1, from: 0 }, SlotOp::Add(0)])],
    );
    let got: Vec<(u32, Stats)> = out.updates.iter().map(|(s, v)| (*s, decode_state(v).unwrap())).collect();
    assert_eq!(got, vec![(0, Stats { n: 2, sum: 6.0 }), (1, Stats { n: 1, sum: 5.0 })]);
}
