//! Daily stats (seed pattern (b), local-state aggregation): per ticker and UTC
//! day, the lowest, highest and average ask price and the number of asks.
//!
//! ```text
//! trades → is_ask → daily (tumbling 1 day, grace 1 h; store `daily`) → to_stream-1 → render → to-daily-stats
//! ```
//!
//! What it computes, exactly:
//! - **Input**: logical topic `trades`, key = ticker (UTF-8), value = a trade as JSON
//!   (`{"type","ticker","price","size"}`), event time = the record's timestamp. A value
//!   that does not decode as a trade is dead-lettered (`invalid value: …`, naming
//!   `is_ask`, the first operator).
//! - **Which trades count**: asks (`type == "ASK"`).
//! - **Windows**: tumbling, one UTC day (86 400 000 ms) aligned to the epoch,
//!   `[day_start, day_start + 86400000)`; grace 1 hour: an ask is still folded into its
//!   day while stream time (the task's: the largest timestamp read from the input
//!   partition, bids included) is below
//!   `day_start + 86400000 + 3600000`; later, the host drops it.
//! - **Per (ticker, day)**: the minimum and maximum price, the number of asks and
//!   the sum of their prices (store and changelog `daily`).
//! - **Output**: logical topic `daily-stats`. At every commit, one record per
//!   (ticker, day) that changed since the last: key = ticker, value
//!   `{"ticker","day_start","min_price","max_price","count","avg_price"}` with
//!   `avg_price = sum of prices / count`. A day with no ask writes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology, tumbling};

#[cfg(test)]
mod tests;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

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

/// Running statistics of one (ticker, day).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayStats {
    /// Lowest ask price.
    pub min_price: f64,
    /// Highest ask price.
    pub max_price: f64,
    /// Number of asks.
    pub count: u64,
    /// Sum of ask prices.
    pub sum_price: f64,
}

/// What the plugin writes to `daily-stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyOut {
    /// The ticker.
    pub ticker: String,
    /// Start of the UTC day, ms since the epoch.
    pub day_start: i64,
    /// Lowest ask price.
    pub min_price: f64,
    /// Highest ask price.
    pub max_price: f64,
    /// Number of asks.
    pub count: u64,
    /// Sum of ask prices divided by `count`.
    pub avg_price: f64,
}

/// Whether the trade is an ask.
pub fn is_ask(_ticker: &String, trade: &Trade) -> bool {
    trade.side == "ASK"
}

/// Folds one ask into its day.
pub fn add(acc: &mut DayStats, _ticker: &String, trade: &Trade) {
    if acc.count == 0 {
        acc.min_price = trade.price;
        acc.max_price = trade.price;
    } else {
        acc.min_price = acc.min_price.min(trade.price);
        acc.max_price = acc.max_price.max(trade.price);
    }
    acc.count += 1;
    acc.sum_price += trade.price;
}

/// A day's statistics as output; `None` (nothing written) for a day with no ask.
pub fn render(key: &Windowed<String>, acc: DayStats) -> Option<DailyOut> {
    (acc.count > 0).then(|| DailyOut {
        ticker: key.key.clone(),
        day_start: key.window.start,
        min_price: acc.min_price,
        max_price: acc.max_price,
        count: acc.count,
        avg_price: acc.sum_price / acc.count as f64,
    })
}

/// The plugin.
pub struct DailyStats;

impl weir_sdk::Plugin for DailyStats {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        b.stream::<String, Trade>("trades")
            .filter(is_ask)
            .group_by_key()
            .windowed_by(tumbling(Duration::from_millis(DAY_MS)).grace(Duration::from_secs(3_600)))
            .aggregate(add)
            .named("daily")
            .to_stream()
            .flat_map_values(render)
            .to("daily-stats");
        b.build()
    }
}

weir_sdk::export!(DailyStats);
