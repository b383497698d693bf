//! Trade sliding: per ticker, the number of asks and their total size in Kafka
//! Streams–style sliding windows of 5 seconds.
//!
//! ```text
//! trades → is_ask → volume (sliding, difference 5 s, grace 2 s; store `volume`) → to_stream-1 → render → to-sliding-volume
//! ```
//!
//! What it computes, exactly:
//! - **Input**: logical topic `trades`, key = ticker (UTF-8), value = a trade as JSON
//!   (`{"type","ticker","price","size"}`), event time = the record's timestamp. A value
//!   that does not decode as a trade is dead-lettered (`invalid value: …`, naming
//!   `is_ask`, the first operator).
//! - **Which trades count**: asks (`type == "ASK"`).
//! - **Windows**: sliding with time difference `D` = 5000 ms, half-open. Kafka Streams'
//!   window `[s, s + D]` is `[s, s + D + 1)` here, so every window is 5001 ms long.
//!   Windows exist where the set of asks changes: an ask at `t` has a left window
//!   `[t - 5000, t + 1)` (an ask at `t < 5000` shares `[0, 5001)`), and a right
//!   window `[t + 1, t + 5002)` once some ask of the ticker lies in it. A window's
//!   value covers every ask of the ticker with `start <= timestamp < end` (exact as
//!   long as no record arrived beyond grace; see the host's `window/sliding.rs`).
//!   Grace 2 s: a record is dropped if `t + 5000 < stream time - 2000`.
//! - **Per (ticker, window)**: the number of asks and the sum of their sizes (store
//!   and changelog `volume`).
//! - **Output**: logical topic `sliding-volume`. At every commit, one record per
//!   (ticker, window) created or changed since the last: key = ticker, value
//!   `{"ticker","window_start","window_end","count","volume"}` with the window's
//!   bounds as above (`window_end` exclusive).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology, sliding};

#[cfg(test)]
mod tests;

/// A trade as written to the `trades` topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trade {
    /// `"ASK"` or `"BID"`; only asks count.
    #[serde(rename = "type")]
    pub side: String,
    /// The ticker symbol (also the record key).
    pub ticker: String,
    /// Price per share.
    pub price: f64,
    /// Number of shares.
    pub size: u64,
}

/// Asks of one (ticker, window).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Number of asks.
    pub count: u64,
    /// Sum of their sizes.
    pub volume: u64,
}

/// What the plugin writes to `sliding-volume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeOut {
    /// The ticker.
    pub ticker: String,
    /// Window start, ms since the epoch (inclusive).
    pub window_start: i64,
    /// Window end, ms since the epoch (exclusive): `window_start + 5001`.
    pub window_end: i64,
    /// Number of asks.
    pub count: u64,
    /// Sum of their sizes.
    pub volume: u64,
}

/// Whether the trade is an ask.
pub fn is_ask(_ticker: &String, trade: &Trade) -> bool {
    trade.side == "ASK"
}

/// Folds one ask into a window.
pub fn add(acc: &mut Volume, _ticker: &String, trade: &Trade) {
    acc.count += 1;
    acc.volume += trade.size;
}

/// A window's asks as output.
pub fn render(key: &Windowed<String>, acc: Volume) -> VolumeOut {
    VolumeOut {
        ticker: key.key.clone(),
        window_start: key.window.start,
        window_end: key.window.end,
        count: acc.count,
        volume: acc.volume,
    }
}

/// The plugin.
pub struct TradeSliding;

impl weir_sdk::Plugin for TradeSliding {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        b.stream::<String, Trade>("trades")
            .filter(is_ask)
            .group_by_key()
            .windowed_by(sliding(Duration::from_secs(5)).grace(Duration::from_secs(2)))
            .aggregate(add)
            .named("volume")
            .to_stream()
            .map_values(render)
            .to("sliding-volume");
        b.build()
    }
}

weir_sdk::export!(TradeSliding);
