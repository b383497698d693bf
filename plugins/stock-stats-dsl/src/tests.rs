//! Tests of the user functions, of the built topology, and of the equivalence
//! with the shorthand build (`plugins/stock-stats`) through the host's frames.

use weir_abi::Window;
use weir_abi::calls::{Rec, SlotOp};
use weir_abi::topology::{Emit, Op, WindowSpec};
use weir_sdk::Plugin;
use weir_sdk::data::{decode_stored, encode_stored};

use super::*;
use weir_sdk::testing::{Reject, Updates, aggregate, names, rec, run, stores};

fn trade(side: &str, price: f64, size: u64) -> Trade {
    Trade { side: side.into(), ticker: "AAPL".into(), price, size }
}

fn windowed(start: i64) -> Windowed<String> {
    Windowed { key: "AAPL".into(), window: Window { start, end: start + 5_000 } }
}

#[test]
fn asks_are_folded_and_bids_filtered() {
    let k = "AAPL".to_owned();
    assert!(is_ask(&k, &trade("ASK", 1.0, 1)));
    assert!(!is_ask(&k, &trade("BID", 1.0, 1)));
    assert!(!is_ask(&k, &trade("ask", 1.0, 1)));
    let mut acc = Stats::default();
    add(&mut acc, &k, &trade("ASK", 10.5, 100));
    add(&mut acc, &k, &trade("ASK", 9.25, 50));
    add(&mut acc, &k, &trade("ASK", 11.0, 1));
    assert_eq!(acc, Stats { min_price: 9.25, count_trades: 3, volume: 151, sum_price: 30.75 });
    assert_eq!(validate(&k, &trade("BID", -1.0, 0)), Ok(()));
}

#[test]
fn render_computes_the_average_and_skips_empty_windows() {
    let acc = Stats { min_price: 9.25, count_trades: 2, volume: 150, sum_price: 19.75 };
    let out = render(&windowed(1_000), acc).unwrap();
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        r#"{"ticker":"AAPL","window_start":1000,"window_end":6000,"min_price":9.25,"count_trades":2,"volume":150,"sum_price":19.75,"avg_price":9.875}"#
    );
    assert_eq!(render(&windowed(0), Stats::default()), None);
}

#[test]
fn the_topology_is_one_subtopology_with_the_shorthands_store() {
    let t = StockStatsDsl::topology().unwrap();
    assert_eq!(names(&t), ["trades", "validate", "is_ask", "windows", "to_stream-1", "render", "to-stockstats-output"]);
    assert_eq!(stores(&t), ["windows"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let Some(Op::Aggregate { window, emit, store, .. }) = d.find("windows").map(|i| &d.node(i).op) else {
        panic!("no aggregation `windows`")
    };
    assert_eq!(*window, Some(WindowSpec::Hopping { size_ms: 5_000, advance_ms: 1_000, grace_ms: 0 }));
    assert_eq!(*emit, Emit::Updates);
    assert_eq!((store.schema, store.changelog), (1, true));
    // The shorthand's store is the same, so a switch between the builds keeps the state.
    let shorthand = stock_stats::StockStats::topology().unwrap();
    let s = shorthand.describe();
    assert_eq!(s.find("windows").map(|i| s.node(i).op.store().cloned()), Some(Some(store.clone())));
}

const BATCH: [&str; 6] = [
    r#"{"type":"ASK","ticker":"AAPL","price":10.5,"size":100}"#,
    r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":999}"#,
    "not json",
    r#"{"type":"ASK","ticker":"AAPL","size":1}"#,
    r#"{"type":"ASK","ticker":"AAPL","price":9.25,"size":50}"#,
    r#"{"type":"ASK","ticker":"AAPL","price":1e-7,"size":3,"extra":true}"#,
];

/// Folds `BATCH` into two slots (an empty one and a stored one) of `agg`.
fn fold(t: &Topology, via: &str) -> (Updates, Vec<Reject>) {
    let stored = encode_stored(&Stats { min_price: 9.5, count_trades: 1, volume: 7, sum_price: 9.5 }).unwrap();
    let records: Vec<(Rec<'_>, Vec<SlotOp>)> =
        BATCH.iter().map(|v| (rec(b"AAPL", v.as_bytes(), 1_000), vec![SlotOp::Add(0), SlotOp::Add(1)])).collect();
    aggregate(t, "windows", Some(via), &[None, Some(stored)], records)
}

#[test]
fn aggregates_and_rejects_exactly_as_the_shorthand() {
    let dsl = StockStatsDsl::topology().unwrap();
    let shorthand = stock_stats::StockStats::topology().unwrap();
    let (updates, rejects) = fold(&dsl, "trades");
    let (expected_updates, expected_rejects) = fold(&shorthand, "input");
    assert_eq!(updates, expected_updates);
    assert_eq!(rejects, expected_rejects);
    // And what that is:
    let slot0: Stats = decode_stored(&updates[0].1).unwrap();
    assert_eq!(slot0, Stats { min_price: 1e-7, count_trades: 3, volume: 153, sum_price: 10.5 + 9.25 + 1e-7 });
    assert_eq!(rejects.len(), 2);
    assert_eq!((rejects[0].0, rejects[0].1.as_str()), (2, "validate"));
    assert!(rejects[0].2.starts_with("invalid value: "), "{rejects:?}");
    assert_eq!((rejects[1].0, rejects[1].1.as_str()), (3, "validate"));
    assert!(rejects[1].2.contains("missing field `price`"), "{rejects:?}");
}

#[test]
fn renders_byte_for_byte_as_the_shorthand() {
    let dsl = StockStatsDsl::topology().unwrap();
    let shorthand = stock_stats::StockStats::topology().unwrap();
    let accs = [
        Stats { min_price: 9.25, count_trades: 2, volume: 150, sum_price: 19.75 },
        Stats { min_price: 0.1, count_trades: 3, volume: 1, sum_price: 0.1 + 0.2 + 0.3 },
        Stats { min_price: 1e300, count_trades: 7, volume: u64::MAX, sum_price: 7e300 },
        Stats::default(),
    ];
    let encoded: Vec<Vec<u8>> = accs.iter().map(|a| encode_stored(a).unwrap()).collect();
    let records = |keys: &[&'static [u8]]| -> Vec<Rec<'_>> {
        encoded
            .iter()
            .zip(keys)
            .enumerate()
            .map(|(i, (v, k))| {
                let start = 1_000 * i as i64;
                Rec {
                    key: Some(k),
                    value: Some(v),
                    old: None,
                    timestamp: 9,
                    window: Some(Window { start, end: start + 5_000 }),
                }
            })
            .collect()
    };
    let keys: [&'static [u8]; 4] = [b"AAPL", b"MSFT", "\u{e9}t\u{e9}".as_bytes(), b"GOOG"];
    let (got, rejects) = run(&dsl, "to_stream-1", records(&keys));
    let (expected, expected_rejects) = run(&shorthand, "to_stream-1", records(&keys));
    assert!(rejects.is_empty() && expected_rejects.is_empty(), "{rejects:?} {expected_rejects:?}");
    let parts = |v: &[weir_sdk::testing::Out]| v.iter().map(|o| (o.1.clone(), o.2.clone(), o.3)).collect::<Vec<_>>();
    assert_eq!(parts(&got), parts(&expected));
    assert_eq!(got.len(), 3, "the empty window writes nothing");
    assert!(got.iter().all(|o| o.0 == "render"));
    assert_eq!(got[0].1.as_deref(), Some(&b"AAPL"[..]));
    let out: StatsOut = serde_json::from_slice(got[0].2.as_deref().unwrap()).unwrap();
    assert_eq!((out.window_start, out.window_end, out.avg_price), (0, 5_000, 9.875));
}
