//! Byte strings written as bytes. serde writes a `[u8]` as a sequence, one
//! element at a time; postcard writes a sequence of `u8` and a byte string the
//! same way (a varint length, then the bytes), so writing them as bytes changes
//! no frame, only the time it takes. Reading borrows either way.

use serde::{Serialize, Serializer};

/// A byte slice serialized as bytes.
pub struct Bytes<'a>(pub &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// For `#[serde(serialize_with)]` on a `&[u8]`.
pub fn one<S: Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// For `#[serde(serialize_with)]` on an `Option<&[u8]>`.
pub fn opt<S: Serializer>(v: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_some(&Bytes(b)),
        None => s.serialize_none(),
    }
}

/// For `#[serde(serialize_with)]` on a `Vec<Option<&[u8]>>`.
pub fn opts<S: Serializer>(v: &[Option<&[u8]>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|o| o.map(Bytes)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Bytes written as bytes are the frame a sequence of `u8` makes.
        #[test]
        fn bytes_are_written_as_the_sequence_was(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let as_seq = postcard::to_allocvec(&v).unwrap();
            let as_bytes = postcard::to_allocvec(&super::Bytes(&v)).unwrap();
            prop_assert_eq!(as_seq, as_bytes);
        }
    }
}
