//! The [`Aggregator`] shorthand as a topology: one windowed aggregation, so every
//! plugin written before topologies keeps working, with the same state.
//!
//! ```text
//! input → validate → filter → windows (hopping/tumbling, store "windows") → to_stream → finish → output
//! ```
//!
//! The store keeps the name `windows` (changelog `<application-id>-windows-changelog`,
//! as before topologies), so a pipeline upgraded to this SDK restores the state it
//! had. The aggregator's input and accumulator types need not be `Clone`: nothing
//! in this graph copies them.

use std::rc::Rc;

use weir_abi::topology::{Edge, Emit, Fold as FoldKind, Op, StoreSpec, TopologyError, WindowSpec};

use crate::data::{decode_stored, encode_stored};
use crate::dsl::{
    Codec, FoldOf, Item, KeyCodec, NewNode, Run, StreamsBuilder, Topology, ValueCodec, cast, no_merge, no_subtract,
};
use crate::{Aggregator, Windowed, Windowing};

/// The store (and changelog) name of an aggregator's windows.
pub const STORE: &str = "windows";

fn edge(node: u32) -> Vec<Edge> {
    vec![Edge { node, port: 0 }]
}

fn input_value<A: Aggregator + 'static>(item: &Item) -> Result<Option<&A::Input>, String> {
    item.value.as_ref().map(|v| cast::<A::Input>(v.as_ref())).transpose()
}

/// The one-aggregation topology of `A`.
pub fn topology<A: Aggregator + 'static>() -> Result<Topology, TopologyError> {
    let b = StreamsBuilder::new();
    {
        let mut g = b.g.borrow_mut();
        let key = Rc::new(KeyCodec::plain::<String>());
        let input = Codec::new(key.clone(), ValueCodec::read_only::<A::Input>());
        let source = g.add(NewNode {
            fn_name: None,
            inputs: vec![],
            op: Op::Source { topic: "input".into() },
            output: Some(input.clone()),
            run: Run::Host,
        });
        let validate = g.add(NewNode {
            fn_name: Some("validate".into()),
            inputs: edge(source),
            op: Op::Validate,
            output: Some(input.clone()),
            run: Run::Step(Box::new(|item, out| {
                if let Some(v) = input_value::<A>(&item)? {
                    A::validate(v)?;
                }
                out.push((0, item));
                Ok(())
            })),
        });
        let filter = g.add(NewNode {
            fn_name: Some("filter".into()),
            inputs: edge(validate),
            op: Op::Filter,
            output: Some(input),
            run: Run::Step(Box::new(move |item, out| {
                if input_value::<A>(&item)?.is_none_or(A::filter) {
                    out.push((0, item));
                }
                Ok(())
            })),
        });
        let fold = FoldOf::<A::Acc> {
            init: Box::new(A::Acc::default),
            decode: Box::new(decode_stored::<A::Acc>),
            encode: Box::new(|a| encode_stored(a).map(Some)),
            add: Box::new(move |acc, item| {
                if let Some(v) = input_value::<A>(item)? {
                    A::add(acc, v);
                }
                Ok(())
            }),
            subtract: no_subtract("windowed aggregation"),
            merge: no_merge(),
        };
        let mut fold = fold.erase_with(|_| Err("an aggregator's accumulators are never copied".to_owned()));
        fold.migrate = Some(Box::new(|from, key, window, stored| {
            let key = String::from_utf8_lossy(key.unwrap_or_default());
            let window = window.ok_or("a stored window without its window")?;
            A::migrate(from, &key, window, stored)?.map(|a| encode_stored(&a)).transpose()
        }));
        let window = match A::WINDOWING {
            Windowing::Hopping { size_ms, advance_ms } => WindowSpec::Hopping { size_ms, advance_ms, grace_ms: 0 },
            Windowing::Tumbling { size_ms } => WindowSpec::Tumbling { size_ms, grace_ms: 0 },
        };
        let windowed = Rc::new(KeyCodec::windowed::<String>());
        let rows = Codec::new(windowed.clone(), ValueCodec::stored_read_only::<A::Acc>());
        let windows = g.add(NewNode {
            fn_name: Some(STORE.into()),
            inputs: edge(filter),
            op: Op::Aggregate {
                store: StoreSpec {
                    name: String::new(),
                    schema: A::STATE_SCHEMA,
                    migrates_from: A::MIGRATES_FROM.to_vec(),
                    changelog: true,
                },
                fold: FoldKind::Aggregate,
                window: Some(window),
                emit: Emit::Updates,
            },
            output: Some(rows.clone()),
            run: Run::Fold(fold),
        });
        let stream = g.add(NewNode {
            fn_name: None,
            inputs: edge(windows),
            op: Op::ToStream,
            output: Some(rows),
            run: Run::Host,
        });
        let finish = g.add(NewNode {
            fn_name: Some("finish".into()),
            inputs: edge(stream),
            op: Op::FlatMapValues,
            output: Some(Codec::new(windowed, ValueCodec::text::<String>())),
            run: Run::Step(Box::new(|item, out| {
                let Some(acc) = &item.value else { return Ok(()) };
                let k = cast::<Windowed<String>>(item.key.as_ref())?;
                let Some(output) = A::finish(&k.key, k.window, cast::<A::Acc>(acc.as_ref())?) else { return Ok(()) };
                let json = serde_json::to_string(&output).map_err(|e| format!("cannot encode the result: {e}"))?;
                out.push((0, Item { key: item.key, value: Some(Box::new(json)), timestamp: item.timestamp }));
                Ok(())
            })),
        });
        g.add(NewNode {
            fn_name: None,
            inputs: edge(finish),
            op: Op::Sink { topic: "output".into() },
            output: None,
            run: Run::Host,
        });
    }
    b.build()
}
