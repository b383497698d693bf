//! Type-erased records inside a plugin, and how they cross the host boundary.
//!
//! Between operators of one segment records stay typed Rust values (boxed, no
//! encoding). Where a record enters from the host or leaves towards it, the
//! stream it belongs to knows how to read and write it: a [`KeyCodec`] (plain
//! keys, or the keys of a windowed table, whose window travels beside the key)
//! and a [`ValueCodec`] (text-or-JSON values, stored values of tables, or table
//! updates carrying old and new rows).

// Type-erased closures over boxed records are what this module is made of.
#![allow(clippy::type_complexity)]

use std::any::Any;
use std::rc::Rc;

use weir_abi::Window;

use crate::data::{Data, decode_stored, decode_text_or_json, encode_stored, encode_text_or_json};
use crate::{Change, Windowed};

/// A boxed key, value or aggregate.
pub(crate) type Obj = Box<dyn Any>;

/// One record inside the plugin. A `None` value is a deletion (a tombstone) of
/// a table's row: operators that keep the key pass it on without calling the
/// user's function; operators that re-key drop it.
pub(crate) struct Item {
    pub key: Obj,
    pub value: Option<Obj>,
    pub timestamp: i64,
}

/// A record's parts as bytes: key, value, old value, window.
pub(crate) type Parts = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, Option<Window>);

pub(crate) fn cast<T: 'static>(o: &dyn Any) -> Result<&T, String> {
    o.downcast_ref::<T>()
        .ok_or_else(|| format!("internal: a record is not the {} this operator takes", std::any::type_name::<T>()))
}

pub(crate) fn cast_mut<T: 'static>(o: &mut dyn Any) -> Result<&mut T, String> {
    o.downcast_mut::<T>()
        .ok_or_else(|| format!("internal: a record is not the {} this operator takes", std::any::type_name::<T>()))
}

pub(crate) fn take<T: 'static>(o: Obj) -> Result<T, String> {
    o.downcast::<T>()
        .map(|b| *b)
        .map_err(|_| format!("internal: a record is not the {} this operator takes", std::any::type_name::<T>()))
}

/// Reads and writes the keys of one stream.
pub(crate) struct KeyCodec {
    decode: Box<dyn for<'a> Fn(Option<&'a [u8]>, Option<Window>) -> Result<Obj, String>>,
    encode: Box<dyn Fn(&dyn Any) -> Result<(Option<Vec<u8>>, Option<Window>), String>>,
    clone: Box<dyn Fn(&dyn Any) -> Result<Obj, String>>,
}

impl KeyCodec {
    /// Keys of type `K`, text-or-JSON.
    pub fn plain<K: Data>() -> Self {
        Self {
            decode: Box::new(|bytes, _| {
                Ok(Box::new(decode_text_or_json::<K>(bytes).map_err(|e| format!("invalid key: {e}"))?))
            }),
            encode: Box::new(|k| Ok((encode_text_or_json(cast::<K>(k)?)?, None))),
            clone: Box::new(|k| Ok(Box::new(cast::<K>(k)?.clone()))),
        }
    }

    /// Keys of a windowed table: `Windowed<K>`, the key text-or-JSON and the
    /// window beside it.
    pub fn windowed<K: Data>() -> Self {
        Self {
            decode: Box::new(|bytes, window| {
                let window = window.ok_or("a record of a windowed table arrived without its window")?;
                let key = decode_text_or_json::<K>(bytes).map_err(|e| format!("invalid key: {e}"))?;
                Ok(Box::new(Windowed { key, window }))
            }),
            encode: Box::new(|k| {
                let w = cast::<Windowed<K>>(k)?;
                Ok((encode_text_or_json(&w.key)?, Some(w.window)))
            }),
            clone: Box::new(|k| Ok(Box::new(cast::<Windowed<K>>(k)?.clone()))),
        }
    }
}

/// How a table's rows are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// The plugin's stored encoding (an aggregation's rows).
    Stored,
    /// Text-or-JSON, as read from a topic (a stream made a table).
    Text,
}

#[derive(Clone, Copy)]
enum Form {
    /// A value, text-or-JSON.
    Text,
    /// A value, stored encoding (a table's rows).
    Stored,
    /// A `Change<V>`, stored encoding (a table's updates with the old row).
    StoredChange,
    /// A `Change<V>`, text-or-JSON (re-grouped updates through a repartition).
    TextChange,
    /// A value, text-or-JSON; no bytes delete (a table's rows as they were read).
    TextRows,
}

/// Reads and writes the values of one stream.
pub(crate) struct ValueCodec {
    decode: Box<dyn for<'a> Fn(Option<&'a [u8]>, Option<&'a [u8]>) -> Result<Obj, String>>,
    encode: Box<dyn Fn(&dyn Any) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), String>>,
    clone: Box<dyn Fn(&dyn Any) -> Result<Obj, String>>,
    /// Whether no bytes mean a deletion rather than a value to decode.
    deletes: bool,
    /// Whether values are in the stored encoding (and must be encoded before
    /// a sink).
    stored: bool,
}

impl ValueCodec {
    fn of<V: Data>(form: Form) -> Self {
        let one = move |bytes: Option<&[u8]>, stored: bool| -> Result<Option<V>, String> {
            match (bytes, stored) {
                (None, true) => Ok(None),
                (Some(b), true) => decode_stored::<V>(b).map(Some),
                (b, false) => decode_text_or_json::<V>(b).map(Some),
            }
        };
        let write = move |v: &V, stored: bool| -> Result<Option<Vec<u8>>, String> {
            if stored { encode_stored(v).map(Some) } else { encode_text_or_json(v) }
        };
        let is_change = matches!(form, Form::StoredChange | Form::TextChange);
        let stored = matches!(form, Form::Stored | Form::StoredChange);
        let deletes = matches!(form, Form::Stored | Form::TextRows);
        Self {
            decode: Box::new(move |value, old| {
                if is_change {
                    let text_opt = |b: Option<&[u8]>| match b {
                        None => Ok(None),
                        some => one(some, stored),
                    };
                    let new = text_opt(value).map_err(|e| format!("invalid value: {e}"))?;
                    let old = text_opt(old).map_err(|e| format!("invalid old value: {e}"))?;
                    Ok(Box::new(Change { new, old }) as Obj)
                } else {
                    match one(value, stored).map_err(|e| format!("invalid value: {e}"))? {
                        Some(v) => Ok(Box::new(v) as Obj),
                        None => Err("internal: a deletion reached the value decoder".to_owned()),
                    }
                }
            }),
            encode: Box::new(move |v| {
                if is_change {
                    let c = cast::<Change<V>>(v)?;
                    let new = c.new.as_ref().map(|v| write(v, stored)).transpose()?.flatten();
                    let old = c.old.as_ref().map(|v| write(v, stored)).transpose()?.flatten();
                    Ok((new, old))
                } else {
                    Ok((write(cast::<V>(v)?, stored)?, None))
                }
            }),
            clone: Box::new(move |v| {
                if is_change {
                    Ok(Box::new(cast::<Change<V>>(v)?.clone()) as Obj)
                } else {
                    Ok(Box::new(cast::<V>(v)?.clone()) as Obj)
                }
            }),
            deletes,
            stored,
        }
    }

    /// Values of a stream, text-or-JSON.
    pub fn text<V: Data>() -> Self {
        Self::of::<V>(Form::Text)
    }

    /// Rows of a table (its aggregates), stored encoding; no bytes delete.
    pub fn stored<V: Data>() -> Self {
        Self::of::<V>(Form::Stored)
    }

    /// Updates of a table: `Change<V>` of stored rows.
    pub fn stored_change<V: Data>() -> Self {
        Self::of::<V>(Form::StoredChange)
    }

    /// Re-grouped updates: `Change<V>`, text-or-JSON.
    pub fn text_change<V: Data>() -> Self {
        Self::of::<V>(Form::TextChange)
    }

    /// Values of a stream read as a table's rows: text-or-JSON, no bytes delete.
    pub fn text_rows<V: Data>() -> Self {
        Self::of::<V>(Form::TextRows)
    }

    /// Rows of a table in `rows`' encoding, read as `V`; no bytes delete.
    pub fn rows<V: Data>(rows: Rows) -> Self {
        match rows {
            Rows::Stored => Self::stored::<V>(),
            Rows::Text => Self::text_rows::<V>(),
        }
    }

    /// Stream records joined with a table row: `(V, Option<R>)`, the value
    /// text-or-JSON, the row (beside it, where a table update's old row goes)
    /// in `rows`' encoding. Only a joiner reads them: never written or copied.
    pub fn joined<V: Data, R: Data>(rows: Rows) -> Self {
        Self {
            decode: Box::new(move |value, row| {
                let value = decode_text_or_json::<V>(value).map_err(|e| format!("invalid value: {e}"))?;
                let row = match (row, rows) {
                    (None, _) => None,
                    (Some(b), Rows::Stored) => Some(decode_stored::<R>(b)),
                    (Some(b), Rows::Text) => Some(decode_text_or_json::<R>(Some(b))),
                }
                .transpose()
                .map_err(|e| format!("invalid table row: {e}"))?;
                Ok(Box::new((value, row)) as Obj)
            }),
            encode: Box::new(|_| Err("internal: joined records are never written".to_owned())),
            clone: Box::new(|_| Err("internal: joined records are never copied".to_owned())),
            deletes: false,
            stored: false,
        }
    }

    /// Values that are only read (the input of an [`crate::Aggregator`], which
    /// need not be `Clone` or `Serialize`): writing or copying one is refused.
    pub fn read_only<V: serde::de::DeserializeOwned + 'static>() -> Self {
        Self {
            decode: Box::new(|value, _| {
                Ok(Box::new(decode_text_or_json::<V>(value).map_err(|e| format!("invalid value: {e}"))?) as Obj)
            }),
            encode: Box::new(|_| Err("internal: values of this stream are never written".to_owned())),
            clone: Box::new(|_| Err("internal: values of this stream are never copied".to_owned())),
            deletes: false,
            stored: false,
        }
    }

    /// Stored values that are only read (an [`crate::Aggregator`]'s
    /// accumulators, which need not be `Clone`).
    pub fn stored_read_only<V: serde::de::DeserializeOwned + 'static>() -> Self {
        Self {
            decode: Box::new(|value, _| match value {
                Some(b) => Ok(Box::new(decode_stored::<V>(b).map_err(|e| format!("invalid value: {e}"))?) as Obj),
                None => Err("internal: a deletion reached the value decoder".to_owned()),
            }),
            encode: Box::new(|_| Err("internal: values of this stream are never written".to_owned())),
            clone: Box::new(|_| Err("internal: values of this stream are never copied".to_owned())),
            deletes: true,
            stored: true,
        }
    }

    /// Rows of two joined tables: `(Option<L>, Option<R>)`, the left row as
    /// the value, the right one beside it, both text-or-JSON (either may be
    /// missing). Only a joiner reads them.
    pub fn joined_rows<L: Data, R: Data>() -> Self {
        Self {
            decode: Box::new(|left, right| {
                let left = left.map(|b| decode_text_or_json::<L>(Some(b))).transpose();
                let right = right.map(|b| decode_text_or_json::<R>(Some(b))).transpose();
                let left = left.map_err(|e| format!("invalid left row: {e}"))?;
                let right = right.map_err(|e| format!("invalid right row: {e}"))?;
                Ok(Box::new((left, right)) as Obj)
            }),
            encode: Box::new(|_| Err("internal: joined records are never written".to_owned())),
            clone: Box::new(|_| Err("internal: joined records are never copied".to_owned())),
            deletes: false,
            stored: false,
        }
    }

    /// Records keyed for a global table: `(K, V)`, their own key and value;
    /// written as the value with the own key beside it (where a table update's
    /// old row goes). Only the host reads them.
    pub fn with_own_key<K: Data, V: Data>() -> Self {
        Self {
            decode: Box::new(|_, _| Err("internal: records keyed for a global table are never read".to_owned())),
            encode: Box::new(|pair| {
                let (key, value) = cast::<(K, V)>(pair)?;
                Ok((encode_text_or_json(value)?, encode_text_or_json(key)?))
            }),
            clone: Box::new(|pair| Ok(Box::new(cast::<(K, V)>(pair)?.clone()) as Obj)),
            deletes: false,
            stored: false,
        }
    }

    /// A foreign-key extractor's output: `(Option<Vec<u8>>, Option<Vec<u8>>)`,
    /// the encoded foreign keys of an update's new and old row, written as a
    /// [`weir_abi::calls::ForeignKeys`]. Only the host reads them.
    pub fn foreign_keys() -> Self {
        Self {
            decode: Box::new(|_, _| Err("internal: foreign keys are never read".to_owned())),
            encode: Box::new(|keys| {
                let (new, old) = cast::<(Option<Vec<u8>>, Option<Vec<u8>>)>(keys)?;
                let frame = weir_abi::calls::ForeignKeys { new: new.as_deref(), old: old.as_deref() };
                Ok((Some(weir_abi::encode(&frame).map_err(|e| e.to_string())?), None))
            }),
            clone: Box::new(|keys| Ok(Box::new(cast::<(Option<Vec<u8>>, Option<Vec<u8>>)>(keys)?.clone()) as Obj)),
            deletes: false,
            stored: false,
        }
    }

    /// Whether values are in the stored encoding.
    pub fn is_stored(&self) -> bool {
        self.stored
    }
}

/// How one stream's records cross the boundary.
#[derive(Clone)]
pub(crate) struct Codec {
    pub key: Rc<KeyCodec>,
    pub value: Rc<ValueCodec>,
}

impl Codec {
    pub fn new(key: Rc<KeyCodec>, value: ValueCodec) -> Self {
        Self { key, value: Rc::new(value) }
    }

    /// Reads a record arriving from the host.
    pub fn decode(&self, rec: &weir_abi::calls::Rec<'_>) -> Result<Item, String> {
        let key = (self.key.decode)(rec.key, rec.window)?;
        let value = if rec.value.is_none() && self.value.deletes {
            None
        } else {
            Some((self.value.decode)(rec.value, rec.old)?)
        };
        Ok(Item { key, value, timestamp: rec.timestamp })
    }

    /// Writes a record leaving for the host.
    pub fn encode(&self, item: &Item) -> Result<Parts, String> {
        let (key, window) = (self.key.encode)(item.key.as_ref())?;
        let (value, old) = match &item.value {
            Some(v) => (self.value.encode)(v.as_ref())?,
            None => (None, None),
        };
        Ok((key, value, old, window))
    }

    /// A copy of a record, for a stream read by several operators.
    pub fn clone_item(&self, item: &Item) -> Result<Item, String> {
        Ok(Item {
            key: (self.key.clone)(item.key.as_ref())?,
            value: item.value.as_ref().map(|v| (self.value.clone)(v.as_ref())).transpose()?,
            timestamp: item.timestamp,
        })
    }
}
