//! Tests of the functions and of the built topology, through the host's frames.

use weir_abi::calls::Rec;
use weir_abi::topology::Op;
use weir_sdk::Plugin;
use weir_sdk::testing::{names, rec, run, stores};

use super::*;

#[test]
fn the_topology_joins_orders_with_a_global_table_of_prices() {
    let t = OrderPricing::topology().unwrap();
    let names = names(&t);
    for name in ["prices-global", "orders", "product_of", "priced-join", "priced", "to-priced-orders"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    assert_eq!(stores(&t), ["prices-global"]);
    let d = t.describe();
    assert_eq!(d.find("priced-join").map(|i| d.node(i).op.clone()), Some(Op::JoinGlobal { left: true }));
}

#[test]
fn the_selector_keys_orders_by_product_and_keeps_their_own_key_beside() {
    let t = OrderPricing::topology().unwrap();
    let records = vec![rec(b"o1", br#"{"product":"p9","qty":3}"#, 1), rec(b"o2", br#"{"product":"","qty":1}"#, 2)];
    let (out, rejects) = run(&t, "orders", records);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.as_str(), out[0].1.as_deref()), ("product_of", Some(&b"p9"[..])));
    assert_eq!(rejects.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), [(1, "product_of")]);
}

#[test]
fn the_joiner_prices_an_order_or_leaves_it_unpriced() {
    let t = OrderPricing::topology().unwrap();
    let order = br#"{"product":"p1","qty":3}"#;
    let records = vec![
        Rec { key: Some(b"o1"), value: Some(order), old: Some(br#"{"cents":250}"#), timestamp: 1, window: None },
        Rec { key: Some(b"o2"), value: Some(order), old: None, timestamp: 2, window: None },
    ];
    let (out, rejects) = run(&t, "priced-join", records);
    assert!(rejects.is_empty(), "{rejects:?}");
    let priced: Vec<Priced> = out.iter().map(|o| serde_json::from_slice(o.2.as_ref().unwrap()).unwrap()).collect();
    assert_eq!((priced[0].total, priced[1].total), (Some(750), None));
}
