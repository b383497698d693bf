use super::*;

fn node(name: &str, inputs: &[u32], op: Op) -> Node {
    Node { name: name.into(), inputs: inputs.iter().map(|&node| Edge { node, port: 0 }).collect(), op }
}

fn store(name: &str) -> StoreSpec {
    StoreSpec { name: name.into(), schema: 1, migrates_from: vec![], changelog: true }
}

fn hopping() -> Option<WindowSpec> {
    Some(WindowSpec::Hopping { size_ms: 5_000, advance_ms: 1_000, grace_ms: 2_000 })
}

/// trades → filter → windowed aggregate → to_stream → map_values → sink.
fn stock_stats() -> Topology {
    Topology {
        nodes: vec![
            node("trades", &[], Op::Source { topic: "trades".into() }),
            node("asks", &[0], Op::Filter),
            node(
                "stats",
                &[1],
                Op::Aggregate { store: store("stats"), fold: Fold::Aggregate, window: hopping(), emit: Emit::Updates },
            ),
            node("stats-stream", &[2], Op::ToStream),
            node("render", &[3], Op::MapValues),
            node("out", &[4], Op::Sink { topic: "stockstats-output".into() }),
        ],
    }
}

/// The seed's top 10: daily change per stock, re-grouped to one key, top-N.
fn top10() -> Topology {
    Topology {
        nodes: vec![
            node("trades", &[], Op::Source { topic: "trades".into() }),
            node(
                "daily",
                &[0],
                Op::Aggregate { store: store("daily"), fold: Fold::Aggregate, window: None, emit: Emit::Updates },
            ),
            node("by-day", &[1], Op::TableGroupBy),
            node("by-day-repartition", &[2], Op::Repartition { partitions: Some(1) }),
            node("top", &[3], Op::TableAggregate { store: store("top"), fold: Fold::Aggregate }),
            node("top-stream", &[4], Op::ToStream),
            node("render", &[5], Op::MapValues),
            node("out", &[6], Op::Sink { topic: "top10".into() }),
        ],
    }
}

fn refused(t: &Topology) -> TopologyError {
    t.validate().expect_err("the topology should be refused")
}

#[test]
fn good_topologies_pass() {
    stock_stats().validate().unwrap();
    top10().validate().unwrap();
}

#[test]
fn a_cycle_is_refused_with_a_node_on_it() {
    let mut t = stock_stats();
    // asks reads render: render → asks → stats → … → render.
    t.nodes[1].inputs = vec![Edge { node: 4, port: 0 }];
    let e = refused(&t);
    assert!(e.reason.contains("cycle"), "{e}");
    assert!(["asks", "stats", "stats-stream", "render", "out"].contains(&e.node.as_deref().unwrap()), "{e}");
}

#[test]
fn a_store_without_a_changelog_is_refused() {
    let mut t = stock_stats();
    if let Op::Aggregate { store, .. } = &mut t.nodes[2].op {
        store.changelog = false;
    }
    let e = refused(&t);
    assert_eq!(e.node.as_deref(), Some("stats"));
    assert!(e.reason.contains("no changelog"), "{e}");
}

#[test]
fn unusable_windows_are_refused() {
    for (window, says) in [
        (WindowSpec::Tumbling { size_ms: 0, grace_ms: 0 }, "window size is 0 ms"),
        (WindowSpec::Hopping { size_ms: 1_000, advance_ms: 5_000, grace_ms: 0 }, "larger than its size"),
        (WindowSpec::Hopping { size_ms: 1_000, advance_ms: 0, grace_ms: 0 }, "window advance is 0 ms"),
        (WindowSpec::Sliding { difference_ms: 0, grace_ms: 0 }, "time difference is 0 ms"),
        (WindowSpec::Session { gap_ms: 0, grace_ms: 10 }, "session gap is 0 ms"),
        (WindowSpec::Tumbling { size_ms: 10, grace_ms: u64::MAX }, "grace is"),
    ] {
        let mut t = stock_stats();
        if let Op::Aggregate { window: w, .. } = &mut t.nodes[2].op {
            *w = Some(window);
        }
        let e = refused(&t);
        assert_eq!(e.node.as_deref(), Some("stats"), "{e}");
        assert!(e.reason.contains(says), "{window:?}: {e}");
    }
}

#[test]
fn a_sink_no_path_reaches_is_refused() {
    let mut t = stock_stats();
    t.nodes.push(node("orphan", &[], Op::Sink { topic: "elsewhere".into() }));
    let e = refused(&t);
    assert_eq!(e.node.as_deref(), Some("orphan"));
    assert!(e.reason.contains("no path reaches"), "{e}");
}

#[test]
fn names_must_be_unique_and_usable() {
    let mut t = stock_stats();
    t.nodes[4].name = "asks".into();
    assert!(refused(&t).reason.contains("unique"));
    let mut t = stock_stats();
    t.nodes[4].name = "bad name".into();
    assert!(refused(&t).reason.contains("' '"));
    let mut t = top10();
    if let Op::TableAggregate { store, .. } = &mut t.nodes[4].op {
        store.name = "daily".into();
    }
    let e = refused(&t);
    assert_eq!(e.node.as_deref(), Some("top"));
    assert!(e.reason.contains("also the store of `daily`"), "{e}");
}

#[test]
fn grouping_a_rekeyed_stream_needs_a_repartition() {
    let mut t = stock_stats();
    t.nodes[1].op = Op::SelectKey;
    let e = refused(&t);
    assert_eq!(e.node.as_deref(), Some("stats"));
    assert!(e.reason.contains("without a repartition"), "{e}");
    // With one in between it is fine, and makes two sub-topologies.
    t.nodes.insert(2, node("rekeyed-repartition", &[1], Op::Repartition { partitions: None }));
    for n in &mut t.nodes[3..] {
        for e in &mut n.inputs {
            e.node += 1;
        }
    }
    t.validate().unwrap();
    assert_eq!(t.subtopologies().unwrap().len(), 2);
    // A table aggregate must read a repartition.
    let mut t = top10();
    t.nodes[4].inputs = vec![Edge { node: 2, port: 0 }];
    assert_eq!(refused(&t).node.as_deref(), Some("top"));
}

#[test]
fn operators_read_only_what_they_can() {
    // A sink fed a table directly.
    let mut t = stock_stats();
    t.nodes[5].inputs = vec![Edge { node: 2, port: 0 }];
    let e = refused(&t);
    assert_eq!(e.node.as_deref(), Some("out"));
    assert!(e.reason.contains("reads a stream, but its input carries a windowed table"), "{e}");
    // A port that does not exist.
    let mut t = stock_stats();
    t.nodes[2].inputs = vec![Edge { node: 1, port: 1 }];
    assert!(refused(&t).reason.contains("output 1"));
}

#[test]
fn split_branches_are_ports() {
    let t = Topology {
        nodes: vec![
            node("in", &[], Op::Source { topic: "in".into() }),
            node("split", &[0], Op::Split { branches: vec!["big".into(), "small".into()], default_branch: true }),
            Node {
                name: "to-big".into(),
                inputs: vec![Edge { node: 1, port: 0 }],
                op: Op::Sink { topic: "big".into() },
            },
            Node { name: "rest".into(), inputs: vec![Edge { node: 1, port: 2 }], op: Op::MapValues },
            node("both", &[3], Op::Merge),
            node("to-rest", &[4], Op::Sink { topic: "rest".into() }),
        ],
    };
    t.validate().unwrap();
    let segments = t.segments().unwrap();
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].entries, vec![1]);
    assert_eq!(segments[0].nodes, vec![1, 3, 4]);
    assert_eq!(segments[0].exits, vec![2, 5]);
}

#[test]
fn segments_and_subtopologies_of_top10() {
    let t = top10();
    let subs = t.subtopologies().unwrap();
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[0].nodes, vec![0, 1, 2, 3]);
    assert_eq!(subs[0].writes_repartitions, vec![3]);
    assert_eq!(subs[1].nodes, vec![4, 5, 6, 7]);
    assert_eq!(subs[1].reads_repartitions, vec![3]);
    let segs = t.segments().unwrap();
    assert_eq!(segs.iter().map(|s| s.nodes.clone()).collect::<Vec<_>>(), vec![vec![2], vec![6]]);
}

#[test]
fn wire_form_round_trips_and_names_unknown_operators() {
    let t = top10();
    let bytes = t.encode().unwrap();
    assert_eq!(Topology::decode(&bytes).unwrap(), t);
    // An operator tag from the future.
    let frame = TopologyFrame { nodes: vec![NodeFrame { name: "from-the-future", inputs: vec![], op: &[200, 1] }] };
    let e = Topology::decode(&crate::encode(&frame).unwrap()).unwrap_err();
    assert_eq!(e.node.as_deref(), Some("from-the-future"));
    assert!(e.reason.contains("unknown operator"), "{e}");
}

#[test]
fn absurd_sizes_are_refused_before_the_graph_is_walked() {
    let mut t = stock_stats();
    t.nodes[5].op = Op::Merge;
    t.nodes[5].inputs = vec![Edge { node: 4, port: 0 }; MAX_EDGES + 1];
    assert!(refused(&t).reason.contains("edges; the limit is"));
    let e = Topology::decode(&t.encode().unwrap()).unwrap_err();
    assert!(e.reason.contains("edges; the limit is"), "{e}");
    let mut t = stock_stats();
    t.nodes[1].op =
        Op::Split { branches: (0..=MAX_BRANCHES).map(|i| format!("b{i}")).collect(), default_branch: false };
    let e = refused(&t);
    assert_eq!(e.node.as_deref(), Some("asks"));
    assert!(e.reason.contains("branches; the limit is 256"), "{e}");
}

#[test]
fn a_repartition_topic_of_absurd_size_is_refused() {
    let mut t = top10();
    let at = t.find("by-day-repartition").unwrap() as usize;
    t.nodes[at].op = Op::Repartition { partitions: Some(u32::MAX) };
    let e = refused(&t);
    assert_eq!(e.node.as_deref(), Some("by-day-repartition"));
    assert!(e.reason.contains("the limit is 1024"), "{e}");
    t.nodes[at].op = Op::Repartition { partitions: Some(MAX_PARTITIONS) };
    assert!(t.validate().is_ok());
}

/// orders ⋈fk products: two tables, the extractor, both repartition topics
/// and both halves of the join, with `kind`.
fn foreign_join(kind: JoinKind) -> Topology {
    Topology {
        nodes: vec![
            node("orders", &[], Op::Source { topic: "orders".into() }),
            node("orders-table", &[0], Op::ToTable { store: store("orders-table") }),
            node("products", &[], Op::Source { topic: "products".into() }),
            node("products-table", &[2], Op::ToTable { store: store("products-table") }),
            node("fk", &[1], Op::ForeignKey),
            node("fk-repartition", &[4], Op::Repartition { partitions: None }),
            node("lines", &[5, 3], Op::JoinForeign { kind, store: store("lines") }),
            node("lines-repartition", &[6], Op::Repartition { partitions: None }),
            node("answers", &[7, 1], Op::ForeignResponse { kind }),
            node("joiner", &[8], Op::Joiner),
            node("out", &[9], Op::Sink { topic: "lines".into() }),
        ],
    }
}

#[test]
fn a_foreign_key_join_is_inner_or_left_and_goes_through_both_repartition_topics() {
    foreign_join(JoinKind::Inner).validate().unwrap();
    foreign_join(JoinKind::Left).validate().unwrap();
    let subs = foreign_join(JoinKind::Inner).subtopologies().unwrap();
    assert_eq!(subs.len(), 2, "the left table's part and the right table's part: {subs:?}");
    let e = refused(&foreign_join(JoinKind::Outer));
    assert_eq!(e.node.as_deref(), Some("lines"));
    assert!(e.reason.contains("no outer kind"), "{e}");
    // The subscriptions read without their repartition topic.
    let mut t = foreign_join(JoinKind::Inner);
    t.nodes[6].inputs[0].node = 4;
    let e = refused(&t);
    assert!(e.reason.contains("through a repartition topic"), "{e}");
}
