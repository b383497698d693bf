//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::Window;
use weir_abi::calls::{Rec, SlotOp};
use weir_abi::topology::{Emit, Op, WindowSpec};
use weir_sdk::Plugin;
use weir_sdk::data::{decode_stored, encode_stored};

use super::*;
use weir_sdk::testing::{aggregate, names, rec, run, stores};

fn ask(price: f64) -> Trade {
    Trade { side: "ASK".into(), ticker: "AAPL".into(), price, size: 1 }
}

#[test]
fn add_keeps_min_max_count_and_sum() {
    let k = "AAPL".to_owned();
    let mut acc = DayStats::default();
    for p in [10.0, 12.5, 9.0, 11.0] {
        add(&mut acc, &k, &ask(p));
    }
    assert_eq!(acc, DayStats { min_price: 9.0, max_price: 12.5, count: 4, sum_price: 42.5 });
    let mut one = DayStats::default();
    add(&mut one, &k, &ask(-3.0));
    assert_eq!(one, DayStats { min_price: -3.0, max_price: -3.0, count: 1, sum_price: -3.0 });
    assert!(!is_ask(&k, &Trade { side: "BID".into(), ..ask(1.0) }));
}

#[test]
fn render_averages_and_skips_empty_days() {
    let key = Windowed { key: "AAPL".to_owned(), window: Window { start: 86_400_000, end: 172_800_000 } };
    let out = render(&key, DayStats { min_price: 9.0, max_price: 12.5, count: 4, sum_price: 42.5 }).unwrap();
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        r#"{"ticker":"AAPL","day_start":86400000,"min_price":9.0,"max_price":12.5,"count":4,"avg_price":10.625}"#
    );
    assert_eq!(render(&key, DayStats::default()), None);
}

#[test]
fn the_topology_is_one_daily_window_store() {
    let t = DailyStats::topology().unwrap();
    assert_eq!(names(&t), ["trades", "is_ask", "daily", "to_stream-1", "render", "to-daily-stats"]);
    assert_eq!(stores(&t), ["daily"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let op = d.find("daily").map(|i| d.node(i).op.clone());
    let Some(Op::Aggregate { window, emit, .. }) = op else { panic!("{op:?}") };
    assert_eq!(window, Some(WindowSpec::Tumbling { size_ms: DAY_MS, grace_ms: 3_600_000 }));
    assert_eq!(emit, Emit::Updates);
}

#[test]
fn asks_fold_and_the_day_renders() {
    let t = DailyStats::topology().unwrap();
    let values = [
        r#"{"type":"ASK","ticker":"AAPL","price":10.0,"size":1}"#,
        r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":1}"#,
        r#"{"type":"ASK","ticker":"AAPL","price":12.0,"size":1}"#,
        "[]",
    ];
    let records = values.iter().map(|v| (rec(b"AAPL", v.as_bytes(), 5), vec![SlotOp::Add(0)])).collect();
    let (updates, rejects) = aggregate(&t, "daily", Some("trades"), &[None], records);
    let acc: DayStats = decode_stored(&updates[0].1).unwrap();
    assert_eq!(acc, DayStats { min_price: 10.0, max_price: 12.0, count: 2, sum_price: 22.0 });
    assert_eq!(rejects.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), [(3, "is_ask")]);

    let stored = encode_stored(&acc).unwrap();
    let w = Window { start: 0, end: 86_400_000 };
    let r = Rec { key: Some(b"AAPL"), value: Some(&stored), old: None, timestamp: 5, window: Some(w) };
    let (out, _) = run(&t, "to_stream-1", vec![r]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.as_str(), out[0].1.as_deref()), ("render", Some(&b"AAPL"[..])));
    assert_eq!(
        std::str::from_utf8(out[0].2.as_deref().unwrap()).unwrap(),
        r#"{"ticker":"AAPL","day_start":0,"min_price":10.0,"max_price":12.0,"count":2,"avg_price":11.0}"#
    );
}
