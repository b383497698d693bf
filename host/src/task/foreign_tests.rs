//! Foreign-key joins through tasks of both halves, with the SDK itself
//! (natively) as the guest and the topics simulated: each task's output
//! becomes readable when it commits (as a transaction's would), partitions
//! are assigned by key, a crash loses what a task had not committed and a new
//! task starts from stores rebuilt from their changelogs.
//!
//! However the tasks of both halves are scheduled, batched, committed and
//! crashed, the joined table ends as a recomputation over the final rows of
//! both tables says — every order with its product's row (inner: only those
//! that have one), nothing left from a row or a foreign key since changed.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use weir_abi::topology::JoinKind;
use weir_sdk::dsl::{StreamsBuilder, Topology as Built};

use super::planned_tests::{Native, native_env};
use super::*;
use crate::state::{Change, MemoryStore, Store};
use crate::topology::Input;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    product: String,
    qty: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    cents: u64,
}

fn product_of(o: &Order) -> Option<String> {
    (!o.product.is_empty()).then(|| o.product.clone())
}

fn line(o: &Order, p: &Product) -> String {
    format!("{}x{}", o.qty, p.cents)
}

fn line_maybe(o: &Order, p: Option<&Product>) -> String {
    format!("{}x{}", o.qty, p.map_or_else(|| "-".to_owned(), |p| p.cents.to_string()))
}

/// `orders ⋈fk products` to `lines`.
fn orders_products(kind: JoinKind) -> Built {
    let b = StreamsBuilder::new();
    let orders = b.table::<String, Order>("orders");
    let products = b.table::<String, Product>("products");
    let lines = match kind {
        JoinKind::Left => orders.left_join_foreign("lines", &products, product_of, line_maybe),
        _ => orders.join_foreign("lines", &products, product_of, line),
    };
    lines.to_stream().to("lines");
    b.build().unwrap()
}

const PARTITIONS: usize = 2;

/// A record on a simulated topic: key, value, timestamp.
type Rec3 = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// Where the producer's partitioner puts `key`.
fn partition_of(key: Option<&[u8]>) -> usize {
    key.map_or(0, |k| k.iter().map(|&b| usize::from(b)).sum::<usize>() % PARTITIONS)
}

/// A changelog's last value per key.
type Changelog = BTreeMap<Vec<u8>, Vec<u8>>;

/// A task's committed offsets (per input) and stream time.
type Committed = (Vec<Option<i64>>, Option<i64>);

/// One simulated task: the task, its uncommitted output, where it is in
/// each input, what it committed.
struct Sim {
    task: Task,
    outbox: Outbox,
    read: Vec<usize>,
}

struct World {
    info: PluginInfo,
    guest: Native,
    metrics: Metrics,
    /// Topic name → partitions → records (committed ones only).
    logs: HashMap<String, Vec<Vec<Rec3>>>,
    /// (sub, partition, store) → the changelog's last value per key.
    changelogs: HashMap<(usize, usize, usize), Changelog>,
    /// (sub, partition) → committed offsets and stream time.
    committed: HashMap<(usize, usize), Committed>,
    tasks: Vec<((usize, usize), Sim)>,
    /// The sink's records, in the order they were committed.
    lines: Vec<(String, Option<String>)>,
    dead: usize,
}

impl World {
    fn new(kind: JoinKind, orders: &[Rec3], products: &[Rec3]) -> Self {
        let info = PluginInfo::of("fk".into(), "1".into(), orders_products(kind).describe().clone()).unwrap();
        let mut logs: HashMap<String, Vec<Vec<Rec3>>> = HashMap::new();
        for (topic, records) in [("orders", orders), ("products", products)] {
            let log = logs.entry(topic.to_owned()).or_insert_with(|| vec![Vec::new(); PARTITIONS]);
            for r in records {
                log[partition_of(r.0.as_deref())].push(r.clone());
            }
        }
        for r in 0..info.shape.repartitions.len() {
            logs.insert(format!("rep{r}"), vec![Vec::new(); PARTITIONS]);
        }
        let mut world = Self {
            guest: Native(orders_products(kind)),
            info,
            metrics: Metrics::default(),
            logs,
            changelogs: HashMap::new(),
            committed: HashMap::new(),
            tasks: Vec::new(),
            lines: Vec::new(),
            dead: 0,
        };
        for sub in 0..world.info.shape.subs.len() {
            for p in 0..PARTITIONS {
                let sim = world.start(sub, p);
                world.tasks.push(((sub, p), sim));
            }
        }
        world
    }

    fn topics(&self, sub: usize) -> Vec<String> {
        self.info.shape.subs[sub]
            .inputs
            .iter()
            .map(|i| match i.input {
                Input::Source(s) => self.info.shape.sources[s].topic.clone(),
                Input::Repartition(r) => format!("rep{r}"),
            })
            .collect()
    }

    /// A task as it starts after a crash (or the first time): from its
    /// changelogs, or — a table read from a topic — from that topic up to
    /// the committed offset.
    fn start(&mut self, sub: usize, p: usize) -> Sim {
        let (offsets, stream_time) = self.committed.get(&(sub, p)).cloned().unwrap_or((vec![None, None], None));
        let id = TaskId { sub, partition: p as i32 };
        let topics = self.topics(sub);
        let mut stores: Vec<Box<dyn Store>> = Vec::new();
        for s in 0..self.info.shape.subs[sub].stores().len() {
            let mut store = MemoryStore::default();
            let rows: Vec<Change> = match self.info.shape.subs[sub].source_table(s) {
                Some(table) => {
                    let upto = offsets[table.input].unwrap_or(0) as usize;
                    let records: Vec<Change> = self.logs[&topics[table.input]][p][..upto]
                        .iter()
                        .filter_map(|(k, v, _)| Some((k.clone()?, v.clone())))
                        .collect();
                    let (mut discard, metrics) = (Outbox::default(), Metrics::default());
                    let mut env = native_env(&self.info, &mut self.guest, &mut discard, &metrics, &topics);
                    Task::table_rows(&mut env, id, table, records).unwrap()
                }
                None => self
                    .changelogs
                    .get(&(sub, p, s))
                    .map(|log| log.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect())
                    .unwrap_or_default(),
            };
            store.write(rows, None).unwrap();
            stores.push(Box::new(store));
        }
        let stage = &self.info.shape.subs[sub].stage;
        let task = Task::new(id, Kind::of(stage, 0).unwrap(), 0, stores, &offsets, stream_time, 1);
        Sim { task, outbox: Outbox::default(), read: offsets.iter().map(|o| o.unwrap_or(0) as usize).collect() }
    }

    /// Task `t` reads up to `cut` records and processes them; then commits,
    /// or crashes, or neither.
    fn step(&mut self, t: usize, cut: usize, then: u8) {
        let ((sub, p), _) = self.tasks[t];
        let topics = self.topics(sub);
        let sim = &mut self.tasks[t].1;
        for _ in 0..cut {
            let Some(i) = (0..topics.len()).find(|&i| sim.read[i] < self.logs[&topics[i]][p].len()) else { break };
            // Alternate inputs: the one read least so far first.
            let i = (0..topics.len())
                .filter(|&j| sim.read[j] < self.logs[&topics[j]][p].len())
                .min_by_key(|&j| sim.read[j])
                .unwrap_or(i);
            let (key, value, ts) = &self.logs[&topics[i]][p][sim.read[i]];
            sim.task.accept(i, sim.read[i] as i64, key.as_deref(), value.as_deref(), Some(*ts));
            sim.read[i] += 1;
        }
        let caught_up: Vec<bool> = (0..topics.len()).map(|i| sim.read[i] == self.logs[&topics[i]][p].len()).collect();
        let mut env = native_env(&self.info, &mut self.guest, &mut sim.outbox, &self.metrics, &topics);
        sim.task.process_pending(&mut env, Some(&caught_up)).unwrap();
        match then % 4 {
            0 | 1 => self.commit(t),
            2 => self.crash(t),
            _ => {}
        }
    }

    fn commit(&mut self, t: usize) {
        let ((sub, p), _) = self.tasks[t];
        let topics = self.topics(sub);
        let sim = &mut self.tasks[t].1;
        let mut env = native_env(&self.info, &mut self.guest, &mut sim.outbox, &self.metrics, &topics);
        let prepared = sim.task.prepare_commit(&mut env).unwrap();
        sim.task.complete_commit(prepared, &[]).unwrap();
        let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8(b.clone()).unwrap());
        for out in sim.outbox.records() {
            match out.dest {
                Dest::Sink(_) => self.lines.push((text(&out.key).unwrap_or_default(), text(&out.value))),
                Dest::Repartition(r) => {
                    let at = out.partition.map_or_else(|| partition_of(out.key.as_deref()), |p| p as usize);
                    let log = self.logs.get_mut(&format!("rep{r}")).unwrap();
                    log[at].push((out.key.clone(), out.value.clone(), out.timestamp.unwrap_or(0)));
                }
                Dest::Changelog(s, store) => {
                    assert_eq!((s, out.partition), (sub, Some(p as i32)));
                    let log = self.changelogs.entry((sub, p, store)).or_default();
                    let key = out.key.clone().unwrap();
                    match &out.value {
                        Some(v) => log.insert(key, v.clone()),
                        None => log.remove(&key),
                    };
                }
                Dest::DeadLetter => self.dead += 1,
            }
        }
        sim.outbox.clear();
        let offsets = (0..topics.len()).map(|i| sim.task.next_offset(i)).collect();
        self.committed.insert((sub, p), (offsets, sim.task.stream_time()));
    }

    fn crash(&mut self, t: usize) {
        let ((sub, p), _) = self.tasks[t];
        self.tasks[t].1 = self.start(sub, p);
    }

    /// Whether every task has read, processed and committed everything.
    fn settled(&self) -> bool {
        self.tasks.iter().all(|((sub, p), sim)| {
            let topics = self.topics(*sub);
            sim.task.pending_len() == 0
                && sim.outbox.is_empty()
                && !sim.task.has_progress()
                && (0..topics.len()).all(|i| sim.read[i] == self.logs[&topics[i]][*p].len())
        })
    }

    /// Runs `schedule` (task, records, then), then every task in turn,
    /// committing, until nothing is left to do.
    fn run(&mut self, schedule: &[(usize, usize, u8)]) {
        for &(t, cut, then) in schedule {
            self.step(t % self.tasks.len(), cut, then);
        }
        for _ in 0..1_000 {
            if self.settled() {
                return;
            }
            for t in 0..self.tasks.len() {
                self.step(t, 64, 0);
            }
        }
        panic!("the tasks did not settle");
    }

    /// The joined table: the last result written per key.
    fn table(&self) -> BTreeMap<String, String> {
        let mut table = BTreeMap::new();
        for (key, value) in &self.lines {
            match value {
                Some(v) => table.insert(key.clone(), v.clone()),
                None => table.remove(key),
            };
        }
        table
    }
}

/// The joined table as the tables' final rows make it.
fn recompute(orders: &[Rec3], products: &[Rec3], kind: JoinKind) -> BTreeMap<String, String> {
    let last = |records: &[Rec3]| {
        let mut rows: HashMap<String, Vec<u8>> = HashMap::new();
        for (k, v, _) in records {
            let k = String::from_utf8(k.clone().unwrap()).unwrap();
            match v {
                Some(v) => rows.insert(k, v.clone()),
                None => rows.remove(&k),
            };
        }
        rows
    };
    let products: HashMap<String, Product> =
        last(products).into_iter().map(|(k, v)| (k, serde_json::from_slice(&v).unwrap())).collect();
    let mut out = BTreeMap::new();
    for (key, order) in last(orders) {
        let order: Order = serde_json::from_slice(&order).unwrap();
        let product = product_of(&order).and_then(|p| products.get(&p));
        match (kind, product) {
            (_, Some(p)) => out.insert(key, line(&order, p)),
            (JoinKind::Left, None) => out.insert(key, line_maybe(&order, None)),
            _ => None,
        };
    }
    out
}

fn orders(changes: &[(u8, u8, u8)]) -> Vec<Rec3> {
    changes
        .iter()
        .enumerate()
        .map(|(i, &(order, product, qty))| {
            let value = match product {
                0 => None,
                1 => Some(r#"{"product":"","qty":1}"#.to_owned()),
                p => Some(format!(r#"{{"product":"p{}","qty":{qty}}}"#, p - 2)),
            };
            (Some(format!("o{order}").into_bytes()), value.map(String::into_bytes), 1_000 + 2 * i as i64)
        })
        .collect()
}

fn products(changes: &[(u8, u8)]) -> Vec<Rec3> {
    changes
        .iter()
        .enumerate()
        .map(|(i, &(product, cents))| {
            let value = (cents > 0).then(|| format!(r#"{{"cents":{cents}}}"#).into_bytes());
            (Some(format!("p{product}").into_bytes()), value, 1_001 + 2 * i as i64)
        })
        .collect()
}

#[test]
fn the_join_spans_two_sub_topologies_and_two_repartition_topics() {
    let info = PluginInfo::of("fk".into(), "1".into(), orders_products(JoinKind::Inner).describe().clone()).unwrap();
    let shape = &info.shape;
    assert_eq!(shape.subs.len(), 2, "{shape:?}");
    let carries: Vec<_> = shape.repartitions.iter().map(|r| (r.name.as_str(), r.carries)).collect();
    assert_eq!(
        carries,
        [
            ("lines-subscription-repartition", crate::topology::Carries::Subscriptions),
            ("lines-response-repartition", crate::topology::Carries::Responses)
        ]
    );
    let right = shape.subs.iter().find_map(|s| match &s.stage {
        Stage::JoinForeign(j) => Some(j.clone()),
        _ => None,
    });
    let right = right.expect("a sub-topology answers the subscriptions");
    assert_eq!((right.table.store.name.as_str(), right.store.name.as_str()), ("products-table", "lines"));
    let left = shape.subs.iter().find(|s| s.aggregation().is_some()).expect("the orders' sub-topology");
    assert_eq!(left.joins.len(), 1);
    assert!(left.joins[0].foreign && !left.joins[0].left);
    assert_eq!(left.aggregation().and_then(|a| a.render_from).map(|e| e.node), left.aggregation().map(|a| a.node));
}

#[test]
fn a_row_that_changes_its_foreign_key_leaves_no_result_of_the_old_one() {
    // o1 → p0, then → p1 (which has no row: inner drops it), p0 changes after.
    let orders = orders(&[(1, 2, 3), (1, 3, 3)]);
    let products = products(&[(0, 50), (0, 70)]);
    let mut world = World::new(JoinKind::Inner, &orders, &products);
    world.run(&[]);
    assert_eq!(world.table(), BTreeMap::new(), "{:?}", world.lines);
    assert_eq!(world.dead, 0);
    let mut world = World::new(JoinKind::Left, &orders, &products);
    world.run(&[]);
    assert_eq!(world.table(), BTreeMap::from([("o1".to_owned(), "3x-".to_owned())]), "{:?}", world.lines);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_joined_table_ends_as_the_final_rows_make_it_whatever_the_schedule(
        order_changes in proptest::collection::vec((0u8..6, 0u8..6, 1u8..9), 0..30),
        product_changes in proptest::collection::vec((0u8..4, 0u8..4), 0..20),
        schedule in proptest::collection::vec((0usize..4, 1usize..8, any::<u8>()), 0..60),
        left in any::<bool>(),
    ) {
        let kind = if left { JoinKind::Left } else { JoinKind::Inner };
        let (orders, products) = (orders(&order_changes), products(&product_changes));
        let mut world = World::new(kind, &orders, &products);
        world.run(&schedule);
        prop_assert_eq!(world.table(), recompute(&orders, &products, kind), "{:?}", world.lines);
        prop_assert_eq!(world.dead, 0);
    }
}

/// Foreign keys a plugin hands back that do not decode: that row's
/// subscription is dead-lettered with the reason; nothing fails.
#[test]
fn foreign_keys_that_do_not_decode_are_dead_lettered_not_fatal() {
    let info = PluginInfo::of("fk".into(), "1".into(), orders_products(JoinKind::Inner).describe().clone()).unwrap();
    let sub = info.shape.subs.iter().position(|s| s.aggregation().is_some()).unwrap();
    let r = info.shape.repartitions.iter().position(|r| r.carries == crate::topology::Carries::Subscriptions).unwrap();
    let task = Task::new(
        TaskId { sub, partition: 0 },
        Kind::of(&info.shape.subs[sub].stage, 0).unwrap(),
        0,
        vec![Box::new(MemoryStore::default())],
        &[None, None],
        None,
        1,
    );
    let (mut guest, mut outbox, metrics) =
        (Native(orders_products(JoinKind::Inner)), Outbox::default(), Metrics::default());
    let topics = ["orders".to_owned(), "rep1".to_owned()];
    let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
    let mut row_key = Vec::new();
    crate::state::window_key(&mut row_key, TABLE_ROW, b"o1");
    let row = br#"{"product":"p1","qty":1}"#;
    let made = task.subscriptions(&mut env, r, (&row_key, Some(row)), Some(b"\xff\xff\xff")).unwrap();
    assert!(made.is_empty());
    assert_eq!(metrics.plugin_failures.get(), 1);
    let dead: Vec<&Out> = outbox.records().iter().filter(|o| o.dest == Dest::DeadLetter).collect();
    assert_eq!(dead.len(), 1);
    let reason = dead[0].headers.iter().find(|h| h.0 == "weir.error").map(|h| h.1.clone()).unwrap_or_default();
    assert!(reason.contains("foreign keys"), "{:?}", dead[0].headers);
}
