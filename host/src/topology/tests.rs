use weir_abi::topology::{Fold, Node, StoreSpec};

use super::*;

fn node(name: &str, inputs: &[u32], op: Op) -> Node {
    Node { name: name.into(), inputs: inputs.iter().map(|&node| Edge { node, port: 0 }).collect(), op }
}

fn aggregate(window: WindowSpec) -> Op {
    let store = StoreSpec { name: "windows".into(), schema: 1, migrates_from: vec![], changelog: true };
    Op::Aggregate { store, fold: Fold::Count, window: Some(window), emit: Emit::Updates }
}

fn one_stage(window: WindowSpec) -> Topology {
    Topology {
        nodes: vec![
            node("trades", &[], Op::Source { topic: "trades".into() }),
            node("asks", &[0], Op::Filter),
            node("windows", &[1], aggregate(window)),
            node("rows", &[2], Op::ToStream),
            node("render", &[3], Op::MapValues),
            node("out", &[4], Op::Sink { topic: "out".into() }),
        ],
    }
}

const HOPPING: WindowSpec = WindowSpec::Hopping { size_ms: 5_000, advance_ms: 1_000, grace_ms: 2_000 };

#[test]
fn a_one_stage_topology_fuses_the_steps_before_its_aggregation() {
    let s = shape(&one_stage(HOPPING)).unwrap();
    let w = s.windowed().unwrap();
    assert_eq!((w.node, w.via, w.render_from), (2, Some(Edge { node: 0, port: 0 }), Edge { node: 3, port: 0 }));
    assert_eq!((w.grace_ms, w.emit, w.store.name.as_str()), (2_000, Emit::Updates, "windows"));
    assert_eq!(s.sinks_of(4, 0), &[0]);
    assert_eq!(s.sinks[0].topic, "out");
}

#[test]
fn what_this_host_cannot_run_yet_is_refused_naming_the_node() {
    assert!(shape(&one_stage(WindowSpec::Session { gap_ms: 10, grace_ms: 0 })).is_ok());
    let mut t = one_stage(HOPPING);
    t.nodes[2].op = Op::Aggregate {
        store: StoreSpec { name: "windows".into(), schema: 1, migrates_from: vec![], changelog: true },
        fold: Fold::Count,
        window: None,
        emit: Emit::Updates,
    };
    let e = shape(&t).unwrap_err();
    assert_eq!(e.node.as_deref(), Some("windows"));
    assert!(e.reason.contains("tables run in the next"), "{e}");
    // A second aggregation.
    let mut t = one_stage(HOPPING);
    t.nodes.push(node("again", &[1], aggregate(HOPPING)));
    if let Op::Aggregate { store, .. } = &mut t.nodes[6].op {
        store.name = "again".into();
    }
    t.nodes.push(node("again-rows", &[6], Op::ToStream));
    t.nodes.push(node("again-render", &[7], Op::MapValues));
    t.nodes.push(node("again-out", &[8], Op::Sink { topic: "again".into() }));
    let e = shape(&t).unwrap_err();
    assert!(e.node.is_some(), "{e}");
}

fn logical(s: &Shape) -> (String, Vec<String>) {
    (s.source.topic.clone(), s.sinks.iter().map(|e| e.topic.clone()).collect())
}

#[test]
fn swaps_keep_stores_windows_and_topics() {
    let old = shape(&one_stage(HOPPING)).unwrap();
    // Another stateless step is fine.
    let mut t = one_stage(HOPPING);
    t.nodes.insert(2, node("peek", &[1], Op::Peek));
    for n in &mut t.nodes[3..] {
        for e in &mut n.inputs {
            e.node += 1;
        }
    }
    assert_eq!(shape(&t).unwrap().swap_difference(&old, logical), None);
    // Other windows are not.
    let other = shape(&one_stage(WindowSpec::Tumbling { size_ms: 5_000, grace_ms: 0 })).unwrap();
    let why = other.swap_difference(&old, logical).unwrap();
    assert!(why.contains("windows of `windows`"), "{why}");
    // Another sink is not, unless the pipeline maps it to the same topic.
    let mut t = one_stage(HOPPING);
    t.nodes[5].op = Op::Sink { topic: "elsewhere".into() };
    let moved = shape(&t).unwrap();
    assert!(moved.swap_difference(&old, logical).unwrap().contains("elsewhere"));
    let mapped = |s: &Shape| (s.source.topic.clone(), vec!["real-out".to_owned(); s.sinks.len()]);
    assert_eq!(moved.swap_difference(&old, mapped), None);
}

#[test]
fn stateless_topologies_run_from_the_source_to_sinks() {
    let t = Topology {
        nodes: vec![
            node("in", &[], Op::Source { topic: "in".into() }),
            node("big", &[0], Op::Filter),
            node("to-big", &[1], Op::Sink { topic: "big".into() }),
            node("to-all", &[0], Op::Sink { topic: "all".into() }),
        ],
    };
    let s = shape(&t).unwrap();
    assert_eq!(s.stage, Stage::Stateless);
    assert_eq!((s.sinks_of(1, 0), s.sinks_of(0, 0)), (&[0][..], &[1][..]));
}

#[test]
fn descriptions_name_segments_stores_and_internal_topics() {
    let t = one_stage(HOPPING);
    let text = describe::text("p", "1", &t, Some("app")).unwrap();
    assert!(text.contains("[asks] → windows"), "{text}");
    assert!(text.contains("changelog `app-windows-changelog`"), "{text}");
    let json = describe::json("p", "1", &t, Some("app")).unwrap();
    assert_eq!(json["stores"][0]["changelog"], "app-windows-changelog");
    assert_eq!(json["segments"][1]["nodes"][0], "render");
    assert_eq!(json["subtopologies"][0]["reads"][0], "trades");
}
