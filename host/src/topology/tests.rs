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
    let w = s.subs[0].aggregation().unwrap();
    assert_eq!((w.node, w.fused, w.render_from), (2, true, Some(Edge { node: 3, port: 0 })));
    assert_eq!((w.grace_ms, w.emit, w.store.name.as_str()), (2_000, Emit::Updates, "windows"));
    assert_eq!(s.exits_of(4, 0), &[Exit::Sink(0)]);
    assert_eq!(s.sinks[0].topic, "out");
}

#[test]
fn what_this_host_cannot_run_yet_is_refused_naming_the_node() {
    assert!(shape(&one_stage(WindowSpec::Session { gap_ms: 10, grace_ms: 0 })).is_ok());
    // A table (an aggregation without windows) runs.
    let mut t = one_stage(HOPPING);
    t.nodes[2].op = Op::Aggregate {
        store: StoreSpec { name: "windows".into(), schema: 1, migrates_from: vec![], changelog: true },
        fold: Fold::Count,
        window: None,
        emit: Emit::Updates,
    };
    assert_eq!(shape(&t).unwrap().subs[0].aggregation().unwrap().folds, Folds::Table);
    // Operators before an aggregation that also lead elsewhere run in a call of
    // their own first; so does an input that also feeds a sink directly.
    let mut t = one_stage(HOPPING);
    t.nodes.push(node("side", &[1], Op::Sink { topic: "side".into() }));
    let s = shape(&t).unwrap();
    let a = s.subs[0].aggregation().unwrap();
    assert!(a.split && !a.fused, "{a:?}");
    assert_eq!(s.exits_of(1, 0), &[Exit::Sink(1)]);
    let mut t = one_stage(HOPPING);
    t.nodes.push(node("copy", &[0], Op::Sink { topic: "copy".into() }));
    assert!(shape(&t).unwrap().subs[0].aggregation().unwrap().split);
    assert!(!shape(&one_stage(HOPPING)).unwrap().subs[0].aggregation().unwrap().split);
    // But not into another host operator: a to_stream reading the filter.
    let mut t = one_stage(HOPPING);
    t.nodes.push(node("odd", &[1], Op::ToStream));
    assert!(shape(&t).is_err());
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

fn logical(s: &Shape) -> (Vec<String>, Vec<String>) {
    (s.sources.iter().map(|e| e.topic.clone()).collect(), s.sinks.iter().map(|e| e.topic.clone()).collect())
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
    assert!(why.contains("`windows` folds into windows tumbling"), "{why}");
    // A renamed store is not: stores are found by name.
    let mut t = one_stage(HOPPING);
    if let Op::Aggregate { store, .. } = &mut t.nodes[2].op {
        store.name = "daily".into();
    }
    let why = shape(&t).unwrap().swap_difference(&old, logical).unwrap();
    assert!(why.contains("named `daily` where the running one is `windows`"), "{why}");
    // Another sink is not, unless the pipeline maps it to the same topic.
    let mut t = one_stage(HOPPING);
    t.nodes[5].op = Op::Sink { topic: "elsewhere".into() };
    let moved = shape(&t).unwrap();
    assert!(moved.swap_difference(&old, logical).unwrap().contains("elsewhere"));
    let mapped = |s: &Shape| (logical(s).0, vec!["real-out".to_owned(); s.sinks.len()]);
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
    assert_eq!(s.subs[0].stage, Stage::Stateless);
    assert_eq!((s.exits_of(1, 0), s.exits_of(0, 0)), (&[Exit::Sink(0)][..], &[Exit::Sink(1)][..]));
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

/// `trades → asks → open (tumbling) → by_day (group_by) → top-repartition → top
/// (table aggregate) → rows → render → out`: the seed's top-N shape.
fn two_stage() -> Topology {
    let store = |name: &str| StoreSpec { name: name.into(), schema: 1, migrates_from: vec![], changelog: true };
    Topology {
        nodes: vec![
            node("trades", &[], Op::Source { topic: "trades".into() }),
            node("asks", &[0], Op::Filter),
            node(
                "open",
                &[1],
                Op::Aggregate {
                    store: store("open"),
                    fold: Fold::Aggregate,
                    window: Some(WindowSpec::Tumbling { size_ms: 1_000, grace_ms: 0 }),
                    emit: Emit::Updates,
                },
            ),
            node("by_day", &[2], Op::TableGroupBy),
            node("top-repartition", &[3], Op::Repartition { partitions: Some(1) }),
            node("top", &[4], Op::TableAggregate { store: store("top"), fold: Fold::Aggregate }),
            node("rows", &[5], Op::ToStream),
            node("render", &[6], Op::MapValues),
            node("out", &[7], Op::Sink { topic: "out".into() }),
        ],
    }
}

#[test]
fn a_regrouped_table_runs_as_two_subtopologies_through_a_repartition() {
    let s = shape(&two_stage()).unwrap();
    assert_eq!(s.subs.len(), 2);
    assert_eq!(
        s.repartitions,
        [Repartition { node: 4, name: "top-repartition".into(), partitions: Some(1), carries: Carries::Changes }]
    );
    let (first, second) = (s.subs[0].aggregation().unwrap(), s.subs[1].aggregation().unwrap());
    assert_eq!((s.subs[0].inputs[0].input, s.subs[1].inputs[0].input), (Input::Source(0), Input::Repartition(0)));
    // The windows' rows go to the group_by with the rows they replace.
    assert_eq!((first.render_from, first.render_old), (Some(Edge { node: 2, port: 0 }), true));
    assert_eq!(s.exits_of(3, 0), &[Exit::Repartition(0)]);
    assert_eq!((second.folds, second.fused, second.render_old), (Folds::Changes, false, false));
    assert_eq!(s.exits_of(7, 0), &[Exit::Sink(0)]);
    // A swap may not change what the repartition topic carries or its stores.
    let mut t = two_stage();
    t.nodes[4].op = Op::Repartition { partitions: Some(2) };
    assert!(shape(&t).unwrap().swap_difference(&s, logical).unwrap().contains("repartition"));
    let mut t = two_stage();
    t.nodes[1].op = Op::Peek;
    assert_eq!(shape(&t).unwrap().swap_difference(&s, logical), None);
    // Sub-topologies keep their places: tasks are (sub-topology, partition).
    let mut swapped = s.clone();
    swapped.subs.swap(0, 1);
    assert!(swapped.swap_difference(&s, logical).unwrap().contains("sub-topologies"));
}

#[test]
fn merged_topics_make_one_subtopology_reading_each() {
    let mut t = one_stage(HOPPING);
    // trades, more → both → asks → windows …
    t.nodes.push(node("more", &[], Op::Source { topic: "more".into() }));
    t.nodes.push(node("both", &[0, 6], Op::Merge));
    t.nodes[1].inputs = vec![Edge { node: 7, port: 0 }];
    let s = shape(&t).unwrap();
    assert_eq!(s.subs.len(), 1);
    let inputs: Vec<(Input, u32)> = s.subs[0].inputs.iter().map(|i| (i.input, i.entry.node)).collect();
    assert_eq!(inputs, [(Input::Source(0), 0), (Input::Source(1), 6)]);
    let a = s.subs[0].aggregation().unwrap();
    assert!(a.fused && !a.split, "{a:?}");
    // A swap may not change what a sub-topology reads.
    let old = shape(&one_stage(HOPPING)).unwrap();
    let real = |s: &Shape| (vec![], s.sinks.iter().map(|e| e.topic.clone()).collect());
    let why = s.swap_difference(&old, real).unwrap();
    assert!(
        why.contains(
            "[0: `trades` + `more` into `windows`] where the running version's are [0: `trades` into `windows`]"
        ),
        "{why}"
    );
}

#[test]
fn merged_topics_without_an_aggregation_are_stateless() {
    let t = Topology {
        nodes: vec![
            node("east", &[], Op::Source { topic: "east".into() }),
            node("west", &[], Op::Source { topic: "west".into() }),
            node("both", &[0, 1], Op::Merge),
            node("all", &[2], Op::Sink { topic: "all".into() }),
            node("raw-east", &[0], Op::Sink { topic: "raw".into() }),
        ],
    };
    let s = shape(&t).unwrap();
    assert_eq!((s.subs.len(), s.subs[0].inputs.len(), &s.subs[0].stage), (1, 2, &Stage::Stateless));
    assert_eq!(s.exits_of(0, 0), [Exit::Sink(1)]);
}

#[test]
fn an_aggregation_reading_one_of_several_inputs_directly_is_refused_naming_it() {
    let mut t = two_stage();
    t.nodes.push(node("more", &[], Op::Source { topic: "more".into() }));
    t.nodes.push(node("both", &[], Op::Merge));
    t.nodes[10].inputs = vec![Edge { node: 7, port: 0 }, Edge { node: 9, port: 0 }];
    t.nodes.push(node("to-both", &[10], Op::Sink { topic: "both".into() }));
    let e = shape(&t).unwrap_err();
    assert_eq!(e.node.as_deref(), Some("top"), "{e}");
    assert!(e.reason.contains("several inputs"), "{e}");
}
