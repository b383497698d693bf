//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::Window;
use weir_abi::calls::{Rec, SlotOp};
use weir_abi::topology::{Op, WindowSpec};
use weir_sdk::Plugin;
use weir_sdk::data::{decode_stored, encode_stored};

use super::*;
use weir_sdk::testing::{aggregate, names, rec, run, stores};

fn ask(price: f64) -> Trade {
    Trade { side: "ASK".into(), ticker: "AAPL".into(), price, size: 1 }
}

fn day(changes: &[(&str, f64)]) -> BTreeMap<String, f64> {
    changes.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect()
}

#[test]
fn open_is_the_first_ask_and_last_the_latest() {
    let k = "AAPL".to_owned();
    let mut acc = OpenLast::default();
    for p in [10.0, 8.0, 12.5] {
        open_last(&mut acc, &k, &ask(p));
    }
    assert_eq!(acc, OpenLast { open: 10.0, last: 12.5, asks: 3 });
    assert_eq!(acc.change_pct(), 25.0);
    let w = Windowed { key: k.clone(), window: Window { start: 86_400_000, end: 172_800_000 } };
    assert_eq!(by_day(&w, &acc), (86_400_000, ("AAPL".to_owned(), 25.0)));
    assert!(positive_price(&k, &ask(0.01)).is_ok());
    assert_eq!(positive_price(&k, &ask(0.0)), Err("price 0 is not above 0".to_owned()));
    assert!(positive_price(&k, &ask(-1.0)).is_err());
    assert!(!is_ask(&k, &Trade { side: "BID".into(), ..ask(1.0) }));
}

#[test]
fn the_adder_replaces_and_the_subtractor_removes_only_its_own_entry() {
    let mut d = day(&[("AAPL", 1.0)]);
    add_change(&mut d, &0, &("AAPL".to_owned(), 2.0));
    add_change(&mut d, &0, &("MSFT".to_owned(), -3.0));
    assert_eq!(d, day(&[("AAPL", 2.0), ("MSFT", -3.0)]));
    remove_change(&mut d, &0, &("AAPL".to_owned(), 1.0));
    assert_eq!(d, day(&[("AAPL", 2.0), ("MSFT", -3.0)]), "a stale entry is not removed");
    remove_change(&mut d, &0, &("AAPL".to_owned(), 2.0));
    remove_change(&mut d, &0, &("GOOG".to_owned(), 2.0));
    assert_eq!(d, day(&[("MSFT", -3.0)]));
}

#[test]
fn render_keeps_ten_by_change_descending_then_ticker() {
    let mut changes: Vec<(String, f64)> = (0..12).map(|i| (format!("T{i:02}"), f64::from(i))).collect();
    changes.push(("A".into(), 5.0));
    changes.push(("Z".into(), 5.0));
    changes.push(("NEG".into(), -50.0));
    let out = render(&86_400_000, changes.into_iter().collect());
    let got: Vec<(&str, f64)> = out.top.iter().map(|e| (e.ticker.as_str(), e.change_pct)).collect();
    assert_eq!(
        got,
        [
            ("T11", 11.0),
            ("T10", 10.0),
            ("T09", 9.0),
            ("T08", 8.0),
            ("T07", 7.0),
            ("T06", 6.0),
            ("A", 5.0),
            ("T05", 5.0),
            ("Z", 5.0),
            ("T04", 4.0)
        ]
    );
    let small = render(&0, day(&[("B", 1.5), ("A", -2.0)]));
    assert_eq!(
        serde_json::to_string(&small).unwrap(),
        r#"{"day_start":0,"top":[{"ticker":"B","change_pct":1.5},{"ticker":"A","change_pct":-2.0}]}"#
    );
}

#[test]
fn the_topology_has_two_subtopologies_and_two_stores() {
    let t = Top10::topology().unwrap();
    assert_eq!(
        names(&t),
        [
            "trades",
            "is_ask",
            "positive_price",
            "open-last",
            "by_day",
            "top10-repartition",
            "top10",
            "to_stream-1",
            "render",
            "to-top10"
        ]
    );
    assert_eq!(stores(&t), ["open-last", "top10"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 2);
    let window = d.nodes.iter().find_map(|n| match &n.op {
        Op::Aggregate { window: Some(w), .. } => Some(*w),
        _ => None,
    });
    assert_eq!(window, Some(WindowSpec::Tumbling { size_ms: DAY_MS, grace_ms: 3_600_000 }));
}

#[test]
fn a_day_flows_through_every_stage() {
    let t = Top10::topology().unwrap();
    // Stage 1: asks fold into the (ticker, day) window; the rest is dropped or rejected.
    let values = [
        r#"{"type":"ASK","ticker":"AAPL","price":10.0,"size":1}"#,
        r#"{"type":"BID","ticker":"AAPL","price":99.0,"size":1}"#,
        r#"{"type":"ASK","ticker":"AAPL","price":0,"size":1}"#,
        r#"{"type":"ASK","ticker":"AAPL","price":11.0}"#,
        r#"{"type":"ASK","ticker":"AAPL","price":12.0,"size":1}"#,
    ];
    let records = values.iter().map(|v| (rec(b"AAPL", v.as_bytes(), 5), vec![SlotOp::Add(0)])).collect();
    let (updates, rejects) = aggregate(&t, "open-last", Some("trades"), &[None], records);
    let acc: OpenLast = decode_stored(&updates[0].1).unwrap();
    assert_eq!(acc, OpenLast { open: 10.0, last: 12.0, asks: 2 });
    let rejects: Vec<(u32, &str)> = rejects.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(rejects, [(2, "positive_price"), (3, "is_ask")]);

    // Stage 2: the window's update (5 % → 20 %) is re-grouped under its day, old and new row together.
    let w = Window { start: 86_400_000, end: 172_800_000 };
    let before = OpenLast { open: 10.0, last: 10.5, asks: 2 };
    let after = OpenLast { open: 10.0, last: 12.0, asks: 3 };
    let (new, old) = (encode_stored(&after).unwrap(), encode_stored(&before).unwrap());
    let r = Rec { key: Some(b"AAPL"), value: Some(&new), old: Some(&old), timestamp: 5, window: Some(w) };
    let (out, rejects) = run(&t, "open-last", vec![r]);
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "by_day");
    assert_eq!(out[0].1.as_deref(), Some(&b"86400000"[..]));
    assert_eq!(out[0].2.as_deref(), Some(&br#"["AAPL",20.0]"#[..]));
    assert_eq!(out[0].3, None);

    // Stage 5: the day's map subtracts the old row, adds the new one.
    let before = encode_stored(&day(&[("AAPL", 5.0), ("MSFT", 7.0)])).unwrap();
    let r = Rec {
        key: Some(b"86400000"),
        value: Some(br#"["AAPL",20.0]"#),
        old: Some(br#"["AAPL",5.0]"#),
        timestamp: 5,
        window: None,
    };
    let (updates, _) =
        aggregate(&t, "top10", None, &[Some(before)], vec![(r, vec![SlotOp::Subtract(0), SlotOp::Add(0)])]);
    let after: BTreeMap<String, f64> = decode_stored(&updates[0].1).unwrap();
    assert_eq!(after, day(&[("AAPL", 20.0), ("MSFT", 7.0)]));

    // Stage 6: rendered for the sink, keyed by the day.
    let stored = encode_stored(&after).unwrap();
    let r = Rec { key: Some(b"86400000"), value: Some(&stored), old: None, timestamp: 5, window: None };
    let (out, rejects) = run(&t, "to_stream-1", vec![r]);
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "render");
    assert_eq!(out[0].1.as_deref(), Some(&b"86400000"[..]));
    assert_eq!(
        String::from_utf8(out[0].2.clone().unwrap()).unwrap(),
        r#"{"day_start":86400000,"top":[{"ticker":"AAPL","change_pct":20.0},{"ticker":"MSFT","change_pct":7.0}]}"#
    );
}
