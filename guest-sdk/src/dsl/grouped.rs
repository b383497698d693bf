//! Grouped streams and their aggregations: per key for ever (a table), or per
//! key and window (tumbling, hopping, sliding, session).

// Type-erased closures over boxed records are what this module is made of.
#![allow(clippy::type_complexity)]

use std::rc::Rc;

use weir_abi::topology::{Edge, Emit, Fold as FoldKind, Op, WindowSpec};

use super::codec::{KeyCodec, ValueCodec};
use super::{Fold, Item, KStream, KTable, NewNode, Run, SessionWindows, Windows, cast, cast_mut, fn_name, store_spec};
use crate::Data;
use crate::data::{decode_stored, encode_stored};

/// A stream grouped by key, ready to aggregate.
pub struct KGroupedStream<K, V> {
    stream: KStream<K, V>,
}

/// Builds the type-erased fold over slot values of type `S`.
pub(crate) struct FoldOf<S> {
    pub init: Box<dyn Fn() -> S>,
    pub decode: Box<dyn Fn(&[u8]) -> Result<S, String>>,
    pub encode: Box<dyn Fn(&S) -> Result<Option<Vec<u8>>, String>>,
    pub add: Box<dyn Fn(&mut S, &Item) -> Result<(), String>>,
    pub subtract: Box<dyn Fn(&mut S, &Item) -> Result<(), String>>,
    pub merge: Box<dyn Fn(&mut S, &S) -> Result<(), String>>,
}

impl<S: Clone + 'static> FoldOf<S> {
    pub fn erase(self) -> Fold {
        self.erase_with(|s| Ok(s.clone()))
    }
}

impl<S: 'static> FoldOf<S> {
    /// Type-erases the fold; `copy` copies a slot's value (sliding windows).
    pub fn erase_with(self, copy: fn(&S) -> Result<S, String>) -> Fold {
        let FoldOf { init, decode, encode, add, subtract, merge } = self;
        Fold {
            init: Box::new(move || Box::new(init())),
            decode: Box::new(move |b| Ok(Box::new(decode(b)?))),
            encode: Box::new(move |s| encode(cast::<S>(s)?)),
            add: Box::new(move |s, item| add(cast_mut::<S>(s.as_mut())?, item)),
            subtract: Box::new(move |s, item| subtract(cast_mut::<S>(s.as_mut())?, item)),
            merge: Box::new(move |s, other| merge(cast_mut::<S>(s.as_mut())?, cast::<S>(other)?)),
            clone: Box::new(move |s| Ok(Box::new(copy(cast::<S>(s)?)?))),
            migrate: None,
        }
    }
}

pub(crate) fn no_subtract<S>(kind: &'static str) -> Box<dyn Fn(&mut S, &Item) -> Result<(), String>> {
    Box::new(move |_, _| Err(format!("internal: a {kind} of a stream has no subtractor")))
}

pub(crate) fn no_merge<S>() -> Box<dyn Fn(&mut S, &S) -> Result<(), String>> {
    Box::new(|_, _| Err("internal: only sessions merge".to_owned()))
}

/// The parts of a stream record an adder sees: key and value (`None` for a
/// deletion, which aggregations skip).
fn parts<K: Data, V: Data>(item: &Item) -> Result<Option<(&K, &V)>, String> {
    match &item.value {
        Some(v) => Ok(Some((cast::<K>(item.key.as_ref())?, cast::<V>(v.as_ref())?))),
        None => Ok(None),
    }
}

pub(crate) fn count_fold<K: Data, V: Data>() -> FoldOf<u64> {
    FoldOf {
        init: Box::new(|| 0),
        decode: Box::new(decode_stored::<u64>),
        encode: Box::new(|n| encode_stored(n).map(Some)),
        add: Box::new(|n, item| {
            if parts::<K, V>(item)?.is_some() {
                *n += 1;
            }
            Ok(())
        }),
        subtract: no_subtract("count"),
        merge: Box::new(|n, other| {
            *n += other;
            Ok(())
        }),
    }
}

pub(crate) fn reduce_fold<K: Data, V: Data>(f: Rc<dyn Fn(V, V) -> V>) -> FoldOf<Option<V>> {
    let merge_f = f.clone();
    FoldOf {
        init: Box::new(|| None),
        decode: Box::new(|b| decode_stored::<V>(b).map(Some)),
        encode: Box::new(|s| s.as_ref().map(encode_stored).transpose()),
        add: Box::new(move |acc, item| {
            if let Some((_, v)) = parts::<K, V>(item)? {
                *acc = Some(match acc.take() {
                    Some(a) => f(a, v.clone()),
                    None => v.clone(),
                });
            }
            Ok(())
        }),
        subtract: no_subtract("reduce"),
        merge: Box::new(move |acc, other| {
            if let Some(o) = other {
                *acc = Some(match acc.take() {
                    Some(a) => merge_f(a, o.clone()),
                    None => o.clone(),
                });
            }
            Ok(())
        }),
    }
}

pub(crate) fn aggregate_fold<K: Data, V: Data, A: Data + Default>(add: Rc<dyn Fn(&mut A, &K, &V)>) -> FoldOf<A> {
    FoldOf {
        init: Box::new(A::default),
        decode: Box::new(decode_stored::<A>),
        encode: Box::new(|a| encode_stored(a).map(Some)),
        add: Box::new(move |acc, item| {
            if let Some((k, v)) = parts::<K, V>(item)? {
                add(acc, k, v);
            }
            Ok(())
        }),
        subtract: no_subtract("aggregate"),
        merge: no_merge(),
    }
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    pub(crate) fn new(stream: KStream<K, V>) -> Self {
        Self { stream }
    }

    /// Adds the aggregation node (after a repartition if keys changed upstream).
    pub(crate) fn aggregate_node<KT: Data, A: Data>(
        &self,
        name: Option<String>,
        fold_kind: FoldKind,
        window: Option<WindowSpec>,
        fold: Fold,
    ) -> KTable<KT, A> {
        let s = &self.stream;
        let mut g = s.g.borrow_mut();
        let mut input = s.from;
        if s.rekeyed {
            let node = g.next_index() + 1;
            let r = g.add_repartition(input, s.codec.clone(), node);
            input = Edge { node: r, port: 0 };
        }
        let key = Rc::new(match window {
            Some(_) => KeyCodec::windowed::<K>(),
            None => KeyCodec::plain::<K>(),
        });
        let output = super::Codec::new(key.clone(), ValueCodec::stored_change::<A>());
        let node = g.add(NewNode {
            fn_name: name,
            inputs: vec![input],
            op: Op::Aggregate { store: store_spec(), fold: fold_kind, window, emit: Emit::Updates },
            output: Some(output),
            run: Run::Fold(fold),
        });
        drop(g);
        KTable::new(s.g.clone(), node, key)
    }

    /// Counts records per key: a table of counts.
    pub fn count(&self) -> KTable<K, u64> {
        self.aggregate_node(None, FoldKind::Count, None, count_fold::<K, V>().erase())
    }

    /// Combines the values of each key with `f`: a table of the result.
    pub fn reduce<F>(&self, f: F) -> KTable<K, V>
    where
        F: Fn(V, V) -> V + 'static,
    {
        self.aggregate_node(fn_name::<F>(), FoldKind::Reduce, None, reduce_fold::<K, V>(Rc::new(f)).erase())
    }

    /// Folds the values of each key into an accumulator (starting from
    /// `A::default()`): a table of accumulators.
    pub fn aggregate<A: Data + Default, F>(&self, add: F) -> KTable<K, A>
    where
        F: Fn(&mut A, &K, &V) + 'static,
    {
        self.aggregate_node(fn_name::<F>(), FoldKind::Aggregate, None, aggregate_fold::<K, V, A>(Rc::new(add)).erase())
    }

    /// Aggregates per key and window.
    pub fn windowed_by<W: Windowing<K, V>>(self, windows: W) -> W::Stream {
        windows.group(self)
    }
}

/// A kind of windows a grouped stream can be windowed by.
pub trait Windowing<K, V> {
    /// The windowed stream it gives.
    type Stream;
    /// Windows `grouped`.
    fn group(self, grouped: KGroupedStream<K, V>) -> Self::Stream;
}

impl<K: Data, V: Data> Windowing<K, V> for Windows {
    type Stream = WindowedStream<K, V>;
    fn group(self, grouped: KGroupedStream<K, V>) -> WindowedStream<K, V> {
        WindowedStream(Windowed { grouped, spec: self.spec(), emit: Emit::Updates })
    }
}

impl<K: Data, V: Data> Windowing<K, V> for SessionWindows {
    type Stream = SessionWindowedStream<K, V>;
    fn group(self, grouped: KGroupedStream<K, V>) -> SessionWindowedStream<K, V> {
        SessionWindowedStream(Windowed { grouped, spec: self.spec(), emit: Emit::Updates })
    }
}

/// What both kinds of windowed streams hold: the grouping, the windows and
/// when rows are emitted.
struct Windowed<K, V> {
    grouped: KGroupedStream<K, V>,
    spec: WindowSpec,
    emit: Emit,
}

impl<K: Data, V: Data> Windowed<K, V> {
    fn node<A: Data>(&self, name: Option<String>, kind: FoldKind, fold: Fold) -> KTable<crate::Windowed<K>, A> {
        let table = self.grouped.aggregate_node(name, kind, Some(self.spec), fold);
        if let Some(Op::Aggregate { emit, .. }) = table.g.borrow_mut().op_mut(table.node) {
            *emit = self.emit;
        }
        table
    }

    fn count(&self) -> KTable<crate::Windowed<K>, u64> {
        self.node(None, FoldKind::Count, count_fold::<K, V>().erase())
    }

    fn reduce<F>(&self, f: F) -> KTable<crate::Windowed<K>, V>
    where
        F: Fn(V, V) -> V + 'static,
    {
        self.node(fn_name::<F>(), FoldKind::Reduce, reduce_fold::<K, V>(Rc::new(f)).erase())
    }
}

/// A grouped stream with time or sliding windows.
pub struct WindowedStream<K, V>(Windowed<K, V>);

impl<K: Data, V: Data> WindowedStream<K, V> {
    /// Emits each window once, when it closes (stream time passed its end and
    /// grace), instead of at every commit it changed.
    pub fn emit_final(mut self) -> Self {
        self.0.emit = Emit::Final;
        self
    }

    /// Counts records per key and window.
    pub fn count(&self) -> KTable<crate::Windowed<K>, u64> {
        self.0.count()
    }

    /// Combines the values of each key and window with `f`.
    pub fn reduce<F>(&self, f: F) -> KTable<crate::Windowed<K>, V>
    where
        F: Fn(V, V) -> V + 'static,
    {
        self.0.reduce(f)
    }

    /// Folds the values of each key and window into an accumulator.
    pub fn aggregate<A: Data + Default, F>(&self, add: F) -> KTable<crate::Windowed<K>, A>
    where
        F: Fn(&mut A, &K, &V) + 'static,
    {
        self.0.node(fn_name::<F>(), FoldKind::Aggregate, aggregate_fold::<K, V, A>(Rc::new(add)).erase())
    }
}

/// A grouped stream with session windows.
pub struct SessionWindowedStream<K, V>(Windowed<K, V>);

impl<K: Data, V: Data> SessionWindowedStream<K, V> {
    /// Emits each session once, when it closes.
    pub fn emit_final(mut self) -> Self {
        self.0.emit = Emit::Final;
        self
    }

    /// Counts records per key and session.
    pub fn count(&self) -> KTable<crate::Windowed<K>, u64> {
        self.0.count()
    }

    /// Combines the values of each session with `f` (also used to merge sessions).
    pub fn reduce<F>(&self, f: F) -> KTable<crate::Windowed<K>, V>
    where
        F: Fn(V, V) -> V + 'static,
    {
        self.0.reduce(f)
    }

    /// Folds the values of each session into an accumulator; `merge` combines
    /// the accumulators of two sessions a record joins together.
    pub fn aggregate<A: Data + Default, F, M>(&self, add: F, merge: M) -> KTable<crate::Windowed<K>, A>
    where
        F: Fn(&mut A, &K, &V) + 'static,
        M: Fn(&mut A, A) + 'static,
    {
        let mut fold = aggregate_fold::<K, V, A>(Rc::new(add));
        fold.merge = Box::new(move |a, b| {
            merge(a, b.clone());
            Ok(())
        });
        self.0.node(fn_name::<F>(), FoldKind::Aggregate, fold.erase())
    }
}
