//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::Window;
use weir_abi::calls::{Rec, SlotOp};
use weir_abi::topology::{Emit, Op, WindowSpec};
use weir_sdk::Plugin;
use weir_sdk::data::{decode_stored, encode_stored};

use super::*;
use weir_sdk::testing::{aggregate, names, rec, run, stores};

#[test]
fn add_and_merge_sum_counts_and_volumes() {
    let k = "AAPL".to_owned();
    let mut a = Activity::default();
    add(&mut a, &k, &Trade { side: "ASK".into(), ticker: k.clone(), price: 1.0, size: 100 });
    add(&mut a, &k, &Trade { side: "BID".into(), ticker: k.clone(), price: 1.0, size: 5 });
    assert_eq!(a, Activity { count: 2, volume: 105 });
    merge(&mut a, Activity { count: 3, volume: 7 });
    assert_eq!(a, Activity { count: 5, volume: 112 });
    let mut empty = Activity::default();
    merge(&mut empty, a.clone());
    assert_eq!(empty, a, "the initializer is the merger's identity");
}

#[test]
fn render_writes_the_session_bounds() {
    let key = Windowed { key: "AAPL".to_owned(), window: Window { start: 1_000, end: 4_501 } };
    assert_eq!(
        serde_json::to_string(&render(&key, Activity { count: 2, volume: 105 })).unwrap(),
        r#"{"ticker":"AAPL","session_start":1000,"session_end":4501,"count":2,"volume":105}"#
    );
}

#[test]
fn the_topology_is_one_session_store() {
    let t = TradeSessions::topology().unwrap();
    assert_eq!(names(&t), ["trades", "sessions", "to_stream-1", "render", "to-sessions"]);
    assert_eq!(stores(&t), ["sessions"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let op = d.find("sessions").map(|i| d.node(i).op.clone());
    let Some(Op::Aggregate { window, emit, .. }) = op else { panic!("{op:?}") };
    assert_eq!(window, Some(WindowSpec::Session { gap_ms: 3_000, grace_ms: 1_000 }));
    assert_eq!(emit, Emit::Updates);
}

#[test]
fn a_bridging_trade_merges_two_sessions() {
    let t = TradeSessions::topology().unwrap();
    let s1 = encode_stored(&Activity { count: 1, volume: 10 }).unwrap();
    let s2 = encode_stored(&Activity { count: 2, volume: 20 }).unwrap();
    let bid = r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":5}"#;
    let (updates, rejects) = aggregate(
        &t,
        "sessions",
        None,
        &[Some(s1), Some(s2), None],
        vec![
            (
                rec(b"AAPL", bid.as_bytes(), 2_000),
                vec![SlotOp::Merge { into: 2, from: 0 }, SlotOp::Merge { into: 2, from: 1 }, SlotOp::Add(2)],
            ),
            (rec(b"AAPL", b"{}", 2_000), vec![SlotOp::Add(2)]),
        ],
    );
    let got: Vec<(u32, Activity)> = updates.iter().map(|(s, v)| (*s, decode_stored(v).unwrap())).collect();
    assert_eq!(got, [(2, Activity { count: 4, volume: 35 })]);
    assert_eq!(rejects.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), [(1, "sessions")]);
}

#[test]
fn a_merged_away_session_reaches_the_sink_as_a_null() {
    let t = TradeSessions::topology().unwrap();
    let merged = encode_stored(&Activity { count: 4, volume: 35 }).unwrap();
    let records = vec![
        Rec { key: Some(b"AAPL"), value: None, old: None, timestamp: 2_000, window: Some(Window { start: 0, end: 1 }) },
        Rec {
            key: Some(b"AAPL"),
            value: Some(&merged),
            old: None,
            timestamp: 2_000,
            window: Some(Window { start: 0, end: 4_001 }),
        },
    ];
    let (out, rejects) = run(&t, "to_stream-1", records);
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], ("render".to_owned(), Some(b"AAPL".to_vec()), None, Some(Window { start: 0, end: 1 })));
    assert_eq!(
        std::str::from_utf8(out[1].2.as_deref().unwrap()).unwrap(),
        r#"{"ticker":"AAPL","session_start":0,"session_end":4001,"count":4,"volume":35}"#
    );
}
