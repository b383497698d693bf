//! Tests of the joiner and of the built topology, through the host's frames.

use weir_abi::calls::Rec;
use weir_abi::topology::{JoinKind, Op};
use weir_sdk::Plugin;
use weir_sdk::testing::{names, run, stores};

use super::*;

#[test]
fn the_topology_joins_two_tables_in_one_subtopology() {
    let t = ProductStock::topology().unwrap();
    let names = names(&t);
    for name in ["products-decode", "products-table", "stock-decode", "stock-table", "availability-join"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    assert_eq!(stores(&t), ["products-table", "stock-table"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let op = d.find("availability-join").map(|i| d.node(i).op.clone());
    assert_eq!(op, Some(Op::JoinTables { kind: JoinKind::Left }));
}

#[test]
fn the_joiner_makes_availability_or_a_tombstone() {
    let t = ProductStock::topology().unwrap();
    let (product, stock) = (br#"{"name":"pen","price":150}"#, br#"{"units":7}"#);
    let records = vec![
        Rec { key: Some(b"p1"), value: Some(product), old: Some(stock), timestamp: 1, window: None },
        Rec { key: Some(b"p2"), value: Some(product), old: None, timestamp: 2, window: None },
        Rec { key: Some(b"p3"), value: None, old: None, timestamp: 3, window: None },
    ];
    let (out, rejects) = run(&t, "availability-join", records);
    assert!(rejects.is_empty(), "{rejects:?}");
    let value = |i: usize| out[i].2.as_ref().map(|v| serde_json::from_slice::<Availability>(v).unwrap());
    assert_eq!(value(0).and_then(|a| a.units), Some(7));
    assert_eq!(value(1).map(|a| a.units), Some(None));
    assert_eq!(out[2].2, None, "a match that ended is a tombstone");
}

#[test]
fn a_product_that_does_not_decode_is_rejected_by_its_decoder() {
    let t = ProductStock::topology().unwrap();
    let (out, rejects) = run(&t, "products", vec![weir_sdk::testing::rec(b"p1", b"{\"name\":", 1)]);
    assert!(out.is_empty());
    assert_eq!(rejects.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(), ["products-decode"]);
}
