//! How keys, values and aggregates become bytes.
//!
//! Keys and values read from and written to topics use one rule, *text or JSON*:
//! a value whose JSON form is a string is written as that string's UTF-8 bytes
//! (so a `String` key `AAPL` is the four bytes `AAPL`, not `"AAPL"`); anything
//! else is written as JSON; `null` (`None`, `()`) is written as no bytes at all (a
//! Kafka null). Reading tries the text form first where the bytes do not look like
//! JSON, so a `String` reads any UTF-8 text and a number or a struct reads JSON.
//!
//! Aggregates and the values of tables are the plugin's own state: they are
//! stored with postcard, a compact binary encoding (see [`crate::decode_state`]).

use std::any::{Any, TypeId};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type that can be a key or a value of a stream: anything serde can write
/// and read, cloneable (a stream read by two operators gives each a copy).
pub trait Data: Serialize + DeserializeOwned + Clone + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + 'static> Data for T {}

/// Writes a key or value by the text-or-JSON rule; `None` for JSON `null`.
pub fn encode_text_or_json<T: Serialize + 'static>(value: &T) -> Result<Option<Vec<u8>>, String> {
    // The common case, without a trip through JSON: a string is its bytes.
    if let Some(text) = (value as &dyn Any).downcast_ref::<String>() {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    let json = serde_json::to_vec(value).map_err(|e| format!("cannot encode as JSON: {e}"))?;
    match json.first() {
        Some(b'"') => {
            let text: String = serde_json::from_slice(&json).map_err(|e| format!("cannot encode as text: {e}"))?;
            Ok(Some(text.into_bytes()))
        }
        _ if json == b"null" => Ok(None),
        _ => Ok(Some(json)),
    }
}

/// Reads a key or value by the text-or-JSON rule; no bytes read as JSON `null`.
pub fn decode_text_or_json<T: DeserializeOwned + 'static>(bytes: Option<&[u8]>) -> Result<T, String> {
    // The common case, without a trip through JSON: a string is any UTF-8 text.
    if TypeId::of::<T>() == TypeId::of::<String>()
        && let Some(bytes) = bytes
    {
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| format!("not UTF-8 text: {e}"))?;
        let text: Box<dyn Any> = Box::new(text);
        return text.downcast::<T>().map(|t| *t).map_err(|_| "internal: not a string".to_owned());
    }
    let Some(bytes) = bytes else {
        return serde_json::from_slice(b"null").map_err(|e| format!("no bytes (a null) where {e}"));
    };
    let as_text = |bytes: &[u8]| -> Option<T> {
        let text = std::str::from_utf8(bytes).ok()?;
        T::deserialize(serde_json::Value::String(text.to_owned())).ok()
    };
    let looks_like_json = matches!(bytes.first(), Some(b'{' | b'['));
    if !looks_like_json && let Some(v) = as_text(bytes) {
        return Ok(v);
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(e) => as_text(bytes).ok_or_else(|| e.to_string()),
    }
}

/// Writes an aggregate or table value (postcard).
pub fn encode_stored<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| format!("cannot encode state: {e}"))
}

/// Reads an aggregate or table value (postcard).
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("stored value does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Trade {
        ticker: String,
        price: f64,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    enum Side {
        Ask,
        Bid,
    }

    fn round_trip<T: Data + PartialEq + std::fmt::Debug>(value: T) -> Option<Vec<u8>> {
        // The string fast path agrees with the JSON path.
        if let Some(text) = (&value as &dyn Any).downcast_ref::<String>() {
            let json = serde_json::to_vec(text).unwrap();
            let unquoted: String = serde_json::from_slice(&json).unwrap();
            assert_eq!(unquoted.as_bytes(), text.as_bytes());
        }
        let bytes = encode_text_or_json(&value).unwrap();
        assert_eq!(decode_text_or_json::<T>(bytes.as_deref()).unwrap(), value);
        bytes
    }

    #[test]
    fn strings_are_text_and_the_rest_is_json() {
        assert_eq!(round_trip("AAPL".to_owned()).as_deref(), Some(&b"AAPL"[..]));
        assert_eq!(round_trip("\"quoted\"".to_owned()).as_deref(), Some(&b"\"quoted\""[..]));
        assert_eq!(round_trip("{not json".to_owned()).as_deref(), Some(&b"{not json"[..]));
        assert_eq!(round_trip("42".to_owned()).as_deref(), Some(&b"42"[..]));
        assert_eq!(round_trip(42u64).as_deref(), Some(&b"42"[..]));
        assert_eq!(round_trip(Side::Ask).as_deref(), Some(&b"Ask"[..]));
        assert_eq!(
            round_trip(Trade { ticker: "X".into(), price: 1.5 }).as_deref(),
            Some(&br#"{"ticker":"X","price":1.5}"#[..])
        );
        assert_eq!(round_trip(None::<String>), None);
        assert_eq!(round_trip(()), None);
        assert_eq!(round_trip(Some("x".to_owned())).as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn reading_the_wrong_shape_says_why() {
        let e = decode_text_or_json::<Trade>(Some(b"{\"ticker\":1}")).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = decode_text_or_json::<Trade>(None).unwrap_err();
        assert!(e.contains("null"), "{e}");
        assert!(decode_text_or_json::<u64>(Some(b"forty")).is_err());
    }
}
