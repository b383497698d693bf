//! Trade merge: the trade feeds of two exchanges merged into one stream (the
//! DSL's `merge`), which one sub-topology reads partition by partition.
//!
//! ```text
//! trades-east ┐
//!             ├ trades → known ─ is_large → to-large-trades
//! trades-west ┘               └ volume (aggregate; tumbling 60 s, grace 1 h; store `volume`)
//!                                 → to_stream-1 → render → to-merged-volume
//! ```
//!
//! What it computes, exactly:
//! - **Inputs**: logical topics `trades-east` and `trades-west`, key = ticker
//!   (UTF-8), value = a trade as JSON (`{"type","ticker","price","size"}`), event
//!   time = the record's timestamp. The two must be co-partitioned (the same
//!   number of partitions, keyed alike): a task reads partition `p` of both.
//! - A value that does not decode as a trade is dead-lettered (`invalid value: …`,
//!   naming `trades`, the merge, the first operator reading it).
//! - **`known`** keeps trades whose `type` is `"ASK"` or `"BID"`.
//! - **`large-trades`**: known trades with `size >= 100`, key unchanged, value
//!   the trade re-encoded as JSON (serde_json's form of the same fields).
//! - **`merged-volume`**: per ticker and tumbling minute `[start, start + 60000)`
//!   aligned to the epoch, the number of known trades of either exchange and
//!   their shares, emitting updates (the totals so far) at every commit: value
//!   `{"ticker","window_start","window_end","trades","shares"}`, key = ticker.
//!   Grace is an hour: stream time is the largest event time read from either
//!   input of the task, in the order the host reads them, so one feed may lag
//!   the other by up to an hour without its trades being dropped.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology, tumbling};

#[cfg(test)]
mod tests;

/// Trades of at least this size are large.
pub const LARGE: u64 = 100;

/// A trade as written to either feed (and to `large-trades`).
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

/// A minute's totals, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Trades counted.
    pub trades: u64,
    /// Their shares.
    pub shares: u64,
}

/// What the plugin writes to `merged-volume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteVolume {
    /// The ticker.
    pub ticker: String,
    /// Window start, ms since the epoch (inclusive).
    pub window_start: i64,
    /// Window end, ms since the epoch (exclusive).
    pub window_end: i64,
    /// Trades of either exchange in the minute so far.
    pub trades: u64,
    /// Their shares.
    pub shares: u64,
}

/// Whether the trade is an ask or a bid.
pub fn known(_ticker: &String, trade: &Trade) -> bool {
    trade.side == "ASK" || trade.side == "BID"
}

/// Whether the trade is of at least [`LARGE`] shares.
pub fn is_large(_ticker: &String, trade: &Trade) -> bool {
    trade.size >= LARGE
}

/// Adds a trade to its minute.
pub fn add(acc: &mut Volume, _ticker: &String, trade: &Trade) {
    acc.trades += 1;
    acc.shares += trade.size;
}

/// A minute's totals as output.
pub fn render(key: &Windowed<String>, v: Volume) -> MinuteVolume {
    MinuteVolume {
        ticker: key.key.clone(),
        window_start: key.window.start,
        window_end: key.window.end,
        trades: v.trades,
        shares: v.shares,
    }
}

/// The plugin.
pub struct TradeMerge;

impl weir_sdk::Plugin for TradeMerge {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        let east = b.stream::<String, Trade>("trades-east");
        let trades = east.merge(&b.stream::<String, Trade>("trades-west")).named("trades").filter(known).named("known");
        trades.filter(is_large).to("large-trades");
        trades
            .group_by_key()
            .windowed_by(tumbling(Duration::from_secs(60)).grace(Duration::from_secs(3_600)))
            .aggregate(add)
            .named("volume")
            .to_stream()
            .map_values(render)
            .to("merged-volume");
        b.build()
    }
}

weir_sdk::export!(TradeMerge);
