//! A topology as people read it (`weir describe`) and as programs read it (the
//! admin API's JSON): sub-topologies and their nodes, the segments that cross
//! into wasm, the stores with their changelogs, and the internal topics.

use serde_json::{Value, json};
use weir_abi::topology::{Node, Op, Topology, TopologyError, changelog_topic, repartition_topic};

/// Names of the internal topics of application `app` (`<application-id>` when unknown).
fn internal(app: Option<&str>, name: &str, suffix: &str) -> String {
    let app = app.unwrap_or("<application-id>");
    match suffix {
        "repartition" => repartition_topic(app, name),
        _ => changelog_topic(app, name),
    }
}

fn details(node: &Node, app: Option<&str>) -> String {
    match &node.op {
        Op::Source { topic } => format!("reads `{topic}`"),
        Op::Sink { topic } => format!("writes `{topic}`"),
        Op::Split { branches, default_branch } => {
            format!("branches {}{}", branches.join(", "), if *default_branch { " (last is the default)" } else { "" })
        }
        Op::Repartition { partitions } => format!(
            "through `{}`{}",
            internal(app, &node.name, "repartition"),
            partitions.map(|p| format!(", {p} partitions")).unwrap_or_default()
        ),
        Op::Aggregate { store, fold, window, emit } => format!(
            "{fold:?}{}, emit {emit:?}; store `{}` (schema {})",
            window.map(|w| format!(", {w}")).unwrap_or_default(),
            store.name,
            store.schema
        ),
        Op::TableAggregate { store, fold } => format!("{fold:?}; store `{}` (schema {})", store.name, store.schema),
        Op::ToTable { store } => format!("latest value per key (a null value deletes); store `{}`", store.name),
        Op::JoinTable { .. } => "looks each record's key up in the table".to_owned(),
        Op::JoinTables { kind } => format!("{kind:?} join on key; each update joined with the other side's row"),
        Op::JoinStreams { kind, window, store } => format!("{kind:?}, {window}; store `{}`", store.name),
        Op::GlobalTable { topic, store } => {
            format!("reads `{topic}` whole on every host; store `{}`, restored from its topic", store.name)
        }
        Op::JoinGlobal { .. } => "looks the selected key up in the global table".to_owned(),
        Op::ForeignKey => "each left row's foreign key, subscribing the row to it".to_owned(),
        Op::JoinForeign { kind, store } => format!(
            "{kind:?}; answers each subscription, and every subscriber of a right row that changes; subscriptions \
             in store `{}`",
            store.name
        ),
        Op::ForeignResponse { .. } => {
            "joins each answer with the left row it answers (dropped if the row has changed since)".to_owned()
        }
        _ => String::new(),
    }
}

/// The stores of tables restored from their source topics: store name →
/// logical topic (none if the host cannot run the topology).
fn source_backed(t: &Topology) -> std::collections::HashMap<String, String> {
    let Ok(shape) = super::shape(t) else { return Default::default() };
    let mut out = std::collections::HashMap::new();
    for sub in &shape.subs {
        let stores = sub.stores();
        for table in sub.source_tables() {
            let topic = match sub.inputs.get(table.input).map(|i| i.input) {
                Some(super::Input::Source(s)) => shape.sources.get(s).map(|e| e.topic.clone()),
                _ => None,
            };
            if let (Some(store), Some(topic)) = (stores.get(table.store), topic) {
                out.insert(store.name.clone(), topic);
            }
        }
    }
    out
}

/// Whether a part of the graph is a global table (read by every task, run by none).
fn is_global(t: &Topology, nodes: &[u32]) -> bool {
    nodes.iter().all(|&n| matches!(t.node(n).op, Op::GlobalTable { .. }))
}

/// The topology as text.
pub fn text(name: &str, version: &str, t: &Topology, app: Option<&str>) -> Result<String, TopologyError> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let subs = t.subtopologies()?;
    let segments = t.segments()?;
    let tasks = subs.iter().filter(|s| !is_global(t, &s.nodes)).count();
    let _ = writeln!(out, "{name} {version}: {} nodes, {tasks} sub-topologies", t.nodes.len());
    // Sub-topologies are numbered as their tasks are; global tables have none.
    let mut i = 0;
    for sub in &subs {
        let reads: Vec<String> = sub
            .sources
            .iter()
            .map(|&s| match &t.node(s).op {
                Op::Source { topic } => format!("`{topic}`"),
                _ => String::new(),
            })
            .chain(
                sub.reads_repartitions.iter().map(|&r| format!("`{}`", internal(app, &t.node(r).name, "repartition"))),
            )
            .collect();
        if is_global(t, &sub.nodes) {
            let node = t.node(sub.nodes[0]);
            let _ = writeln!(out, "\nglobal table {}: {}", node.name, details(node, app));
            continue;
        }
        let _ = writeln!(out, "\nsub-topology {i}: one task per partition of {}", reads.join(" and "));
        i += 1;
        for &n in &sub.nodes {
            let node = t.node(n);
            let from: Vec<String> = node
                .inputs
                .iter()
                .map(|e| match e.port {
                    0 => t.node(e.node).name.clone(),
                    p => format!("{}[{p}]", t.node(e.node).name),
                })
                .collect();
            let side = if node.op.is_guest() { "wasm" } else { "host" };
            let arrow = if from.is_empty() { String::new() } else { format!(" ← {}", from.join(", ")) };
            let detail = details(node, app);
            let detail = if detail.is_empty() { String::new() } else { format!("  {detail}") };
            let _ = writeln!(out, "  {side}  {:<20} {}{arrow}{detail}", node.op.kind(), node.name);
        }
    }
    let _ = writeln!(out, "\nsegments (one wasm call per batch each):");
    for s in &segments {
        let names = |ix: &[u32]| ix.iter().map(|&i| t.node(i).name.clone()).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "  [{}] → {}", names(&s.nodes), names(&s.exits));
    }
    let stores: Vec<_> = t.nodes.iter().filter_map(|n| n.op.store().map(|s| (n, s))).collect();
    if !stores.is_empty() {
        let _ = writeln!(out, "\nstores:");
        let from_topics = source_backed(t);
        for (n, s) in stores {
            match &n.op {
                Op::GlobalTable { topic, .. } => {
                    let _ = writeln!(out, "  {}  restored from its topic `{topic}`", s.name);
                }
                _ if let Some(topic) = from_topics.get(&s.name) => {
                    let _ = writeln!(out, "  {}  restored from its source topic `{topic}` (no changelog)", s.name);
                }
                _ => {
                    let _ = writeln!(out, "  {}  changelog `{}`", s.name, internal(app, &s.name, "changelog"));
                }
            }
        }
    }
    Ok(out)
}

/// The topology as JSON.
pub fn json(name: &str, version: &str, t: &Topology, app: Option<&str>) -> Result<Value, TopologyError> {
    let subs = t.subtopologies()?;
    let segments = t.segments()?;
    let names = |ix: &[u32]| ix.iter().map(|&i| t.node(i).name.clone()).collect::<Vec<_>>();
    let node_json = |i: u32| {
        let n = t.node(i);
        json!({
            "name": n.name,
            "operator": n.op.kind(),
            "runs_in": if n.op.is_guest() { "wasm" } else { "host" },
            "inputs": n.inputs.iter().map(|e| json!({"node": t.node(e.node).name, "port": e.port})).collect::<Vec<_>>(),
            "details": details(n, app),
            "op": serde_json::to_value(&n.op).unwrap_or(Value::Null),
        })
    };
    let mut internal_topics = Vec::new();
    let from_topics = source_backed(t);
    let stores: Vec<Value> = t
        .nodes
        .iter()
        .filter_map(|n| n.op.store().map(|s| (n, s)))
        .map(|(n, s)| {
            let changelog = match &n.op {
                // A global table restores from its own topic.
                Op::GlobalTable { topic, .. } => topic.clone(),
                // So does a table read from a topic (through operators that
                // keep or map its records).
                _ if let Some(topic) = from_topics.get(&s.name) => topic.clone(),
                _ => {
                    let changelog = internal(app, &s.name, "changelog");
                    internal_topics.push(json!({"name": changelog, "kind": "changelog", "cleanup_policy": "compact"}));
                    changelog
                }
            };
            json!({"name": s.name, "node": n.name, "schema": s.schema, "migrates_from": s.migrates_from, "changelog": changelog})
        })
        .collect();
    for n in &t.nodes {
        if matches!(n.op, Op::Repartition { .. }) {
            internal_topics.push(json!({"name": internal(app, &n.name, "repartition"), "kind": "repartition", "cleanup_policy": "delete"}));
        }
    }
    Ok(json!({
        "name": name,
        "version": version,
        "global_tables": subs.iter().filter(|s| is_global(t, &s.nodes)).flat_map(|s| s.nodes.iter().map(|&n| node_json(n))).collect::<Vec<_>>(),
        "subtopologies": subs.iter().filter(|s| !is_global(t, &s.nodes)).enumerate().map(|(i, s)| json!({
            "id": i,
            "nodes": s.nodes.iter().map(|&n| node_json(n)).collect::<Vec<_>>(),
            "reads": s.sources.iter().filter_map(|&n| match &t.node(n).op { Op::Source { topic } => Some(topic.clone()), _ => None })
                .chain(s.reads_repartitions.iter().map(|&r| internal(app, &t.node(r).name, "repartition")))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "segments": segments.iter().map(|s| json!({
            "nodes": names(&s.nodes), "entries": names(&s.entries), "exits": names(&s.exits),
        })).collect::<Vec<_>>(),
        "stores": stores,
        "internal_topics": internal_topics,
    }))
}
