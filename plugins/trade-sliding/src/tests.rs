//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::Window;
use weir_abi::calls::{Rec, SlotOp};
use weir_abi::topology::{Emit, Op, WindowSpec};
use weir_sdk::Plugin;
use weir_sdk::data::{decode_stored, encode_stored};

use super::*;
use weir_sdk::testing::{aggregate, names, rec, run, stores};

#[test]
fn add_counts_asks_and_sums_sizes() {
    let k = "AAPL".to_owned();
    let mut acc = Volume::default();
    for size in [100, 50, 1] {
        add(&mut acc, &k, &Trade { side: "ASK".into(), ticker: k.clone(), price: 1.0, size });
    }
    assert_eq!(acc, Volume { count: 3, volume: 151 });
    assert!(!is_ask(&k, &Trade { side: "BID".into(), ticker: k.clone(), price: 1.0, size: 1 }));
}

#[test]
fn render_writes_the_bounds_as_given() {
    let key = Windowed { key: "AAPL".to_owned(), window: Window { start: 1_000, end: 6_001 } };
    assert_eq!(
        serde_json::to_string(&render(&key, Volume { count: 2, volume: 150 })).unwrap(),
        r#"{"ticker":"AAPL","window_start":1000,"window_end":6001,"count":2,"volume":150}"#
    );
}

#[test]
fn the_topology_is_one_sliding_window_store() {
    let t = TradeSliding::topology().unwrap();
    assert_eq!(names(&t), ["trades", "is_ask", "volume", "to_stream-1", "render", "to-sliding-volume"]);
    assert_eq!(stores(&t), ["volume"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let op = d.find("volume").map(|i| d.node(i).op.clone());
    let Some(Op::Aggregate { window, emit, .. }) = op else { panic!("{op:?}") };
    assert_eq!(window, Some(WindowSpec::Sliding { difference_ms: 5_000, grace_ms: 2_000 }));
    assert_eq!(emit, Emit::Updates);
}

#[test]
fn a_new_window_is_seeded_by_a_copy_before_the_ask_is_added() {
    let t = TradeSliding::topology().unwrap();
    // The host's plan for an ask landing in an existing window: copy it into a new
    // window (slot 1, the ask's right window), then add the ask to the existing one.
    let existing = encode_stored(&Volume { count: 1, volume: 10 }).unwrap();
    let ask = r#"{"type":"ASK","ticker":"AAPL","price":1.0,"size":5}"#;
    let bid = r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":7}"#;
    let (updates, rejects) = aggregate(
        &t,
        "volume",
        Some("trades"),
        &[Some(existing), None],
        vec![
            (rec(b"AAPL", ask.as_bytes(), 3_000), vec![SlotOp::Copy { into: 1, from: 0 }, SlotOp::Add(0)]),
            (rec(b"AAPL", bid.as_bytes(), 3_000), vec![SlotOp::Add(0)]),
        ],
    );
    assert!(rejects.is_empty(), "{rejects:?}");
    let got: Vec<(u32, Volume)> = updates.iter().map(|(s, v)| (*s, decode_stored(v).unwrap())).collect();
    assert_eq!(got, [(0, Volume { count: 2, volume: 15 }), (1, Volume { count: 1, volume: 10 })]);

    let stored = encode_stored(&Volume { count: 2, volume: 15 }).unwrap();
    let w = Window { start: 0, end: 5_001 };
    let r = Rec { key: Some(b"AAPL"), value: Some(&stored), old: None, timestamp: 3_000, window: Some(w) };
    let (out, _) = run(&t, "to_stream-1", vec![r]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        std::str::from_utf8(out[0].2.as_deref().unwrap()).unwrap(),
        r#"{"ticker":"AAPL","window_start":0,"window_end":5001,"count":2,"volume":15}"#
    );
}
