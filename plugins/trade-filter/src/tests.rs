//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::topology::Op;
use weir_sdk::Plugin;

use super::*;
use weir_sdk::testing::{names, rec, run, stores};

fn trade(side: &str, price: f64, size: u64) -> Trade {
    Trade { side: side.into(), ticker: "AAPL".into(), price, size }
}

#[test]
fn the_predicates_and_the_map() {
    let k = "AAPL".to_owned();
    assert!(is_ask(&k, &trade("ASK", 1.0, 1)) && !is_ask(&k, &trade("BID", 1.0, 1)));
    assert!(is_bid(&k, &trade("BID", 1.0, 1)) && !is_bid(&k, &trade("bid", 1.0, 1)));
    assert!(is_large(&k, &trade("ASK", 1.0, 100)) && !is_large(&k, &trade("ASK", 1.0, 99)));
    assert_eq!(
        with_notional(&k, trade("ASK", 10.5, 200)),
        LargeAsk { ticker: "AAPL".into(), price: 10.5, size: 200, notional: 2100.0 }
    );
}

#[test]
fn the_topology_splits_into_two_sinks_without_state() {
    let t = TradeFilter::topology().unwrap();
    assert_eq!(names(&t), ["trades", "sides", "is_large", "with_notional", "to-large-asks", "to-bids"]);
    assert!(stores(&t).is_empty());
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    assert_eq!(d.segments().unwrap().len(), 1, "one guest call per batch");
    let sides = d.find("sides").map(|i| d.node(i).op.clone());
    assert_eq!(sides, Some(Op::Split { branches: vec!["asks".into(), "bids".into()], default_branch: false }));
}

#[test]
fn records_reach_their_sinks() {
    let t = TradeFilter::topology().unwrap();
    let values = [
        r#"{"type":"ASK","ticker":"AAPL","price":10.50,"size":100}"#,
        r#"{"type":"ASK","ticker":"AAPL","price":10.5,"size":99}"#,
        r#"{"type":"BID","ticker":"AAPL","price":3,"size":1,"venue":"X"}"#,
        r#"{"type":"HOLD","ticker":"AAPL","price":1.0,"size":500}"#,
        r#"{"type":"BID","ticker":"AAPL"}"#,
        r#"{"type":"ASK","ticker":"AAPL","price":0.1,"size":300}"#,
    ];
    let (out, rejects) = run(&t, "trades", values.iter().map(|v| rec(b"AAPL", v.as_bytes(), 42)).collect());
    let got: Vec<(&str, &str)> =
        out.iter().map(|o| (o.0.as_str(), std::str::from_utf8(o.2.as_deref().unwrap()).unwrap())).collect();
    assert_eq!(
        got,
        [
            ("with_notional", r#"{"ticker":"AAPL","price":10.5,"size":100,"notional":1050.0}"#),
            ("sides", r#"{"type":"BID","ticker":"AAPL","price":3.0,"size":1}"#),
            ("with_notional", r#"{"ticker":"AAPL","price":0.1,"size":300,"notional":30.0}"#),
        ]
    );
    assert!(out.iter().all(|o| o.1.as_deref() == Some(&b"AAPL"[..]) && o.3.is_none()));
    assert_eq!(rejects.len(), 1);
    assert_eq!((rejects[0].0, rejects[0].1.as_str()), (4, "sides"));
    assert!(rejects[0].2.contains("missing field `price`"), "{rejects:?}");
}
