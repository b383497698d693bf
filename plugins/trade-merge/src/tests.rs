//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::calls::SlotOp;
use weir_abi::topology::{Op, WindowSpec};
use weir_sdk::Plugin;
use weir_sdk::data::{decode_stored, encode_stored};

use super::*;
use weir_sdk::testing::{aggregate, names, rec, stores};

fn trade(side: &str, size: u64) -> Trade {
    Trade { side: side.into(), ticker: "AAPL".into(), price: 10.5, size }
}

#[test]
fn the_functions_keep_known_trades_and_add_their_shares() {
    assert!(known(&"AAPL".into(), &trade("ASK", 1)) && known(&"AAPL".into(), &trade("BID", 1)));
    assert!(!known(&"AAPL".into(), &trade("SWAP", 1)));
    assert!(is_large(&"AAPL".into(), &trade("ASK", LARGE)) && !is_large(&"AAPL".into(), &trade("ASK", LARGE - 1)));
    let mut v = Volume::default();
    add(&mut v, &"AAPL".into(), &trade("ASK", 7));
    add(&mut v, &"AAPL".into(), &trade("BID", 5));
    assert_eq!(v, Volume { trades: 2, shares: 12 });
}

#[test]
fn the_topology_merges_two_feeds_into_one_subtopology() {
    let t = TradeMerge::topology().unwrap();
    let names = names(&t);
    for name in ["trades-east", "trades-west", "trades", "known", "volume", "to-large-trades", "to-merged-volume"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    assert_eq!(stores(&t), ["volume"]);
    let d = t.describe();
    let subs = d.subtopologies().unwrap();
    assert_eq!((subs.len(), subs[0].sources.len()), (1, 2));
    let op = d.find("volume").map(|i| d.node(i).op.clone());
    let Some(Op::Aggregate { window, .. }) = op else { panic!("{op:?}") };
    assert_eq!(window, Some(WindowSpec::Tumbling { size_ms: 60_000, grace_ms: 3_600_000 }));
}

#[test]
fn a_minute_adds_known_trades_and_a_bad_value_is_rejected_by_the_merge() {
    let t = TradeMerge::topology().unwrap();
    let values = [
        r#"{"type":"ASK","ticker":"AAPL","price":10.0,"size":3}"#,
        r#"{"type":"SWAP","ticker":"AAPL","price":1.0,"size":50}"#,
        "nope",
        r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":4}"#,
    ];
    let stored = encode_stored(&Volume { trades: 1, shares: 10 }).unwrap();
    let records = values.iter().map(|v| (rec(b"AAPL", v.as_bytes(), 5), vec![SlotOp::Add(0)])).collect();
    // Through the operators after the west feed's source, as the host folds them.
    let (updates, rejects) = aggregate(&t, "volume", Some("trades-west"), &[Some(stored)], records);
    assert_eq!(decode_stored::<Volume>(&updates[0].1).unwrap(), Volume { trades: 3, shares: 17 });
    assert_eq!(rejects.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), [(2, "trades")]);
}
