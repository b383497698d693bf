//! Late counts (seed pattern (g), out-of-order events): trades per ticker in
//! 10-second windows that accept records up to 5 seconds late.
//!
//! ```text
//! trades → counts (count; tumbling 10 s, grace 5 s; store `counts`) → to_stream-1 → render → to-late-counts
//! ```
//!
//! What it computes, exactly:
//! - **Input**: logical topic `trades`, key = ticker (UTF-8), value = a trade as JSON
//!   (`{"type","ticker","price","size"}`), event time = the record's timestamp. A value
//!   that does not decode as a trade is dead-lettered (`invalid value: …`) and not
//!   counted; with no operator before the aggregation, the reject names `counts`.
//! - **Which trades count**: all, asks and bids.
//! - **Windows**: tumbling, 10 000 ms aligned to the epoch, `[start, start + 10000)`.
//!   Grace 5 s: stream time is the task's, the largest timestamp read from the input
//!   partition (this record included); a record whose window has `end + 5000 <= stream time` is late
//!   beyond grace and the host drops and counts it. Any record arriving before that,
//!   in or out of timestamp order, is counted in its window.
//! - **Output**: logical topic `late-counts`, emitting updates: at every commit, one
//!   record per (ticker, window) whose count changed since the last, key = ticker,
//!   value `{"ticker","window_start","window_end","count"}` (the count so far, so a
//!   window re-emits when a late record lands in it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology, tumbling};

#[cfg(test)]
mod tests;

/// A trade as written to the `trades` topic. Only its shape matters here: every
/// trade counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// What the plugin writes to `late-counts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowCount {
    /// The ticker.
    pub ticker: String,
    /// Window start, ms since the epoch (inclusive).
    pub window_start: i64,
    /// Window end, ms since the epoch (exclusive).
    pub window_end: i64,
    /// Trades in the window so far.
    pub count: u64,
}

/// A window's count as output.
pub fn render(key: &Windowed<String>, count: u64) -> WindowCount {
    WindowCount { ticker: key.key.clone(), window_start: key.window.start, window_end: key.window.end, count }
}

/// The plugin.
pub struct LateCounts;

impl weir_sdk::Plugin for LateCounts {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        b.stream::<String, Trade>("trades")
            .group_by_key()
            .windowed_by(tumbling(Duration::from_secs(10)).grace(Duration::from_secs(5)))
            .count()
            .named("counts")
            .to_stream()
            .map_values(render)
            .to("late-counts");
        b.build()
    }
}

weir_sdk::export!(LateCounts);
