//! Tests of the user function and of the built topology, through the host's frames.

use weir_abi::Window;
use weir_abi::calls::{Rec, SlotOp};
use weir_abi::topology::{Emit, Op, WindowSpec};
use weir_sdk::Plugin;
use weir_sdk::data::{decode_stored, encode_stored};

use super::*;
use weir_sdk::testing::{aggregate, names, rec, run, stores};

#[test]
fn render_writes_the_window_and_its_count() {
    let key = Windowed { key: "AAPL".to_owned(), window: Window { start: 20_000, end: 30_000 } };
    assert_eq!(
        serde_json::to_string(&render(&key, 3)).unwrap(),
        r#"{"ticker":"AAPL","window_start":20000,"window_end":30000,"count":3}"#
    );
}

#[test]
fn the_topology_is_one_count_with_grace() {
    let t = LateCounts::topology().unwrap();
    assert_eq!(names(&t), ["trades", "counts", "to_stream-1", "render", "to-late-counts"]);
    assert_eq!(stores(&t), ["counts"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let op = d.find("counts").map(|i| d.node(i).op.clone());
    let Some(Op::Aggregate { window, emit, .. }) = op else { panic!("{op:?}") };
    assert_eq!(window, Some(WindowSpec::Tumbling { size_ms: 10_000, grace_ms: 5_000 }));
    assert_eq!(emit, Emit::Updates);
}

#[test]
fn every_trade_counts_and_a_bad_value_is_rejected_by_the_count() {
    let t = LateCounts::topology().unwrap();
    let values = [
        r#"{"type":"ASK","ticker":"AAPL","price":10.0,"size":1}"#,
        r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":1}"#,
        "nope",
        r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":2}"#,
    ];
    let stored = encode_stored(&4u64).unwrap();
    let records = values.iter().map(|v| (rec(b"AAPL", v.as_bytes(), 5), vec![SlotOp::Add(0)])).collect();
    let (updates, rejects) = aggregate(&t, "counts", None, &[Some(stored)], records);
    assert_eq!(decode_stored::<u64>(&updates[0].1).unwrap(), 7);
    assert_eq!(rejects.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), [(2, "counts")]);
    assert!(rejects[0].2.starts_with("invalid value: "), "{rejects:?}");

    let stored = encode_stored(&7u64).unwrap();
    let w = Window { start: 10_000, end: 20_000 };
    let r = Rec { key: Some(b"AAPL"), value: Some(&stored), old: None, timestamp: 12_000, window: Some(w) };
    let (out, _) = run(&t, "to_stream-1", vec![r]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.as_str(), out[0].1.as_deref()), ("render", Some(&b"AAPL"[..])));
    assert_eq!(
        std::str::from_utf8(out[0].2.as_deref().unwrap()).unwrap(),
        r#"{"ticker":"AAPL","window_start":10000,"window_end":20000,"count":7}"#
    );
}
