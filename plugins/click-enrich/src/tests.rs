//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::calls::Rec;
use weir_abi::topology::Op;
use weir_sdk::Plugin;
use weir_sdk::testing::{names, rec, run, stores};

use super::*;

fn ada() -> Profile {
    Profile { name: "Ada".into(), region: "eu".into(), tier: "pro".into() }
}

#[test]
fn changes_become_rows_or_deletes_and_odd_ones_are_refused() {
    let change = |op: &str, after: Option<Profile>| Envelope { op: op.into(), before: None, after };
    for op in ["c", "r", "u"] {
        assert_eq!(profile(&"u1".into(), change(op, Some(ada()))), Ok(Some(ada())));
        assert!(profile(&"u1".into(), change(op, None)).unwrap_err().contains("without `after`"));
    }
    assert_eq!(profile(&"u1".into(), change("d", None)), Ok(None));
    assert!(profile(&"u1".into(), change("t", None)).unwrap_err().contains("unknown change"));
    assert!(valid_click(&"u1".into(), &Click { page: String::new(), ms: 1 }).is_err());
    let e = enrich(&"u1".into(), &Click { page: "/a".into(), ms: 5 }, Some(&ada()));
    assert_eq!((e.user.as_str(), e.region.as_deref(), e.ms), ("u1", Some("eu"), 5));
    assert_eq!(enrich(&"u1".into(), &Click { page: "/a".into(), ms: 5 }, None).name, None);
}

#[test]
fn the_topology_joins_clicks_with_a_table_of_profiles_in_one_subtopology() {
    let t = ClickEnrich::topology().unwrap();
    let names = names(&t);
    for name in ["profiles-cdc", "profile", "profiles-cdc-table", "clicks", "valid_click", "enrich-join", "enrich"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    assert_eq!(stores(&t), ["profiles-cdc-table"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let join = d.find("enrich-join").map(|i| d.node(i).op.clone());
    assert_eq!(join, Some(Op::JoinTable { left: true }));
}

#[test]
fn envelopes_reach_the_table_and_bad_ones_are_rejected_by_profile() {
    let t = ClickEnrich::topology().unwrap();
    let values: [&[u8]; 4] = [
        br#"{"op":"c","before":null,"after":{"name":"Ada","region":"eu","tier":"pro"}}"#,
        br#"{"op":"d","before":{"name":"Ada","region":"eu","tier":"pro"},"after":null}"#,
        b"nope",
        br#"{"op":"u","before":null,"after":null}"#,
    ];
    let records = values.iter().map(|v| rec(b"u1", v, 5)).collect();
    let (out, rejects) = run(&t, "profiles-cdc", records);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| o.0 == "profile"));
    assert!(out[0].2.as_deref().is_some_and(|v| v.starts_with(b"{\"name\":\"Ada\"")), "{out:?}");
    assert_eq!(out[1].2, None, "a delete is a null row");
    assert_eq!(rejects.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), [(2, "profile"), (3, "profile")]);
}

#[test]
fn the_joiner_reads_the_row_the_host_found_beside_the_click() {
    let t = ClickEnrich::topology().unwrap();
    let row = br#"{"name":"Ada","region":"eu","tier":"pro"}"#;
    let click = br#"{"page":"/home","ms":42}"#;
    let records = vec![
        Rec { key: Some(b"u1"), value: Some(click), old: Some(row), timestamp: 9, window: None },
        Rec { key: Some(b"u2"), value: Some(click), old: None, timestamp: 10, window: None },
    ];
    let (out, rejects) = run(&t, "enrich-join", records);
    assert!(rejects.is_empty(), "{rejects:?}");
    let values: Vec<EnrichedClick> =
        out.iter().map(|o| serde_json::from_slice(o.2.as_ref().unwrap()).unwrap()).collect();
    assert_eq!(values[0].region.as_deref(), Some("eu"));
    assert_eq!((values[1].user.as_str(), values[1].region.as_deref()), ("u2", None));
}
