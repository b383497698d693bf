//! Tests of the extractor, the joiner and the built topology, through the
//! host's frames.

use weir_abi::calls::{ForeignKeys, Rec};
use weir_abi::topology::{JoinKind, Op};
use weir_sdk::Plugin;
use weir_sdk::testing::{names, run, stores};

use super::*;

#[test]
fn the_topology_spans_two_sub_topologies_through_two_repartition_topics() {
    let t = OrderProducts::topology().unwrap();
    let names = names(&t);
    for name in [
        "orders-table",
        "products-table",
        "lines-foreign-key",
        "lines-subscription-repartition",
        "lines",
        "lines-response-repartition",
        "lines-response-join",
        "lines-joiner",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    assert_eq!(stores(&t), ["orders-table", "products-table", "lines"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 2);
    let op = d.find("lines").map(|i| d.node(i).op.clone());
    assert!(matches!(op, Some(Op::JoinForeign { kind: JoinKind::Inner, .. })), "{op:?}");
}

#[test]
fn the_extractor_hands_back_the_foreign_keys_of_both_rows() {
    let t = OrderProducts::topology().unwrap();
    let (new, old) = (br#"{"product":"p2","qty":1}"#, br#"{"product":"","qty":1}"#);
    let records = vec![Rec { key: Some(b"o1"), value: Some(new), old: Some(old), timestamp: 1, window: None }];
    let (out, rejects) = run(&t, "orders-table", records);
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(out.len(), 1);
    let keys: ForeignKeys<'_> = weir_abi::decode(out[0].2.as_deref().unwrap()).unwrap();
    assert_eq!((keys.new, keys.old), (Some(&b"p2"[..]), None));
}

#[test]
fn the_joiner_makes_a_line_or_a_tombstone() {
    let t = OrderProducts::topology().unwrap();
    let (order, product) = (br#"{"product":"p2","qty":3}"#, br#"{"name":"pen","cents":150}"#);
    let records = vec![
        Rec { key: Some(b"o1"), value: Some(order), old: Some(product), timestamp: 1, window: None },
        Rec { key: Some(b"o2"), value: None, old: None, timestamp: 2, window: None },
    ];
    let (out, rejects) = run(&t, "lines-response-join", records);
    assert!(rejects.is_empty(), "{rejects:?}");
    let line: Line = serde_json::from_slice(out[0].2.as_deref().unwrap()).unwrap();
    assert_eq!((line.name.as_str(), line.total), ("pen", 450));
    assert_eq!(out[1].2, None, "a line that ended is a tombstone");
}
