//! Trade filter (seed pattern (a), single-event map and filter): large asks with
//! their notional value to one topic, bids to another. No state.
//!
//! ```text
//! trades → sides ─ asks → is_large → with_notional → to-large-asks
//!                └ bids → to-bids
//! ```
//!
//! What it computes, exactly, for each record of the logical topic `trades` (key =
//! ticker, value = a trade as JSON `{"type","ticker","price","size"}`):
//! - A value that does not decode as a trade is dead-lettered
//!   (`invalid value: <serde_json's message>`, naming `sides`, the first operator).
//! - `sides` splits by `type`: `"ASK"` to branch `asks`, `"BID"` to branch `bids`;
//!   any other type is dropped (there is no default branch).
//! - **`large-asks`**: asks with `size >= 100`, key unchanged, value
//!   `{"ticker","price","size","notional"}` with `notional = price * size` (as `f64`).
//! - **`bids`**: every bid, key unchanged, value the trade re-encoded as JSON
//!   `{"type","ticker","price","size"}`: same fields and values, but unknown fields
//!   are dropped and numbers are written in serde_json's form (`10.50` → `10.5`,
//!   `3` as a price → `3.0`), so the bytes may differ from the input's.
//!
//! Every output record keeps its input's timestamp. Nothing is windowed or stored.

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::dsl::{StreamsBuilder, Topology};

#[cfg(test)]
mod tests;

/// Asks of at least this size are large.
pub const LARGE: u64 = 100;

/// A trade as written to the `trades` topic (and, for bids, to `bids`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// `"ASK"` or `"BID"`.
    #[serde(rename = "type")]
    pub side: String,
    /// The ticker symbol (also the record key).
    pub ticker: String,
    /// Price per share.
    pub price: f64,
    /// Number of shares.
    pub size: u64,
}

/// What the plugin writes to `large-asks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LargeAsk {
    /// The ticker.
    pub ticker: String,
    /// Price per share.
    pub price: f64,
    /// Number of shares.
    pub size: u64,
    /// `price * size`.
    pub notional: f64,
}

/// Whether the trade is an ask.
pub fn is_ask(_ticker: &String, trade: &Trade) -> bool {
    trade.side == "ASK"
}

/// Whether the trade is a bid.
pub fn is_bid(_ticker: &String, trade: &Trade) -> bool {
    trade.side == "BID"
}

/// Whether the trade is of at least [`LARGE`] shares.
pub fn is_large(_ticker: &String, trade: &Trade) -> bool {
    trade.size >= LARGE
}

/// The ask with its notional value.
pub fn with_notional(_ticker: &String, trade: Trade) -> LargeAsk {
    LargeAsk { notional: trade.price * trade.size as f64, ticker: trade.ticker, price: trade.price, size: trade.size }
}

/// The plugin.
pub struct TradeFilter;

impl weir_sdk::Plugin for TradeFilter {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        let sides = b.stream::<String, Trade>("trades").split("sides").branch("asks", is_ask).branch("bids", is_bid);
        let branches = sides.branches();
        let [asks, bids] = branches.as_slice() else {
            return Err(TopologyError { node: Some("sides".into()), reason: "expected two branches".into() });
        };
        asks.filter(is_large).map_values(with_notional).to("large-asks");
        bids.to("bids");
        b.build()
    }
}

weir_sdk::export!(TradeFilter);
