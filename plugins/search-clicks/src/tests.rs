//! Tests of the user functions and of the built topology, through the host's frames.

use weir_abi::calls::Rec;
use weir_abi::topology::{JoinKind, JoinWindow, Op};
use weir_sdk::Plugin;
use weir_sdk::testing::{names, run, stores};

use super::*;

#[test]
fn the_functions_check_and_join() {
    let s = Search { query: "rust".into(), results: 10 };
    assert!(valid_search(&"a".into(), &s).is_ok());
    assert!(valid_search(&"a".into(), &Search { query: String::new(), results: 1 }).is_err());
    assert!(valid_click(&"a".into(), &Click { url: String::new(), position: 1 }).is_err());
    let c = Click { url: "u".into(), position: 3 };
    let r = with_session(&"a".into(), click_through(&s, Some(&c)));
    assert_eq!((r.session.as_str(), r.url.as_deref(), r.position), ("a", Some("u"), Some(3)));
    assert_eq!(click_through(&s, None).url, None);
}

#[test]
fn the_topology_joins_searches_with_the_clicks_after_them() {
    let t = SearchClicks::topology().unwrap();
    let names = names(&t);
    for name in ["searches", "clicks", "valid_search", "valid_click", "click_through-join", "click_through"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    assert_eq!(stores(&t), ["click_through-join"]);
    let d = t.describe();
    assert_eq!(d.subtopologies().unwrap().len(), 1);
    let op = d.find("click_through-join").map(|i| d.node(i).op.clone());
    let Some(Op::JoinStreams { kind, window, .. }) = op else { panic!("{op:?}") };
    assert_eq!(kind, JoinKind::Left);
    assert_eq!(window, JoinWindow { before_ms: 0, after_ms: 5_000, grace_ms: 3_000 });
}

#[test]
fn the_joiner_reads_a_search_and_a_click_or_none() {
    let t = SearchClicks::topology().unwrap();
    let (search, click) = (br#"{"query":"rust","results":3}"#, br#"{"url":"https://x","position":1}"#);
    let records = vec![
        Rec { key: Some(b"s1"), value: Some(search), old: Some(click), timestamp: 9, window: None },
        Rec { key: Some(b"s2"), value: Some(search), old: None, timestamp: 10, window: None },
    ];
    let (out, rejects) = run(&t, "click_through-join", records);
    assert!(rejects.is_empty(), "{rejects:?}");
    let results: Vec<SearchResult> =
        out.iter().map(|o| serde_json::from_slice(o.2.as_ref().unwrap()).unwrap()).collect();
    assert_eq!((results[0].session.as_str(), results[0].url.as_deref()), ("s1", Some("https://x")));
    assert_eq!((results[1].session.as_str(), results[1].url.as_deref()), ("s2", None));
}
