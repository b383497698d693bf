//! Stock-stats written with the topology DSL; its output is byte for byte that of
//! `plugins/stock-stats` (the `Aggregator` shorthand), and its state is the same.
//!
//! ```text
//! trades → validate → is_ask → windows (hopping 5 s / 1 s, store `windows`) → to_stream-1 → render → to-stockstats-output
//! ```
//!
//! What it computes, exactly:
//! - **Input**: logical topic `trades`, key = ticker (UTF-8), value = a trade as JSON,
//!   `{"type":"ASK"|"BID","ticker":…,"price":<number>,"size":<unsigned integer>}`;
//!   event time = the record's timestamp.
//! - **Rejects**: a value that does not decode as a trade (not JSON, a field missing or
//!   of the wrong type) goes to the dead-letter topic with the reason
//!   `invalid value: <serde_json's message>`, naming the node `validate` — the first
//!   operator after the source, which is where the DSL reports undecodable values, and
//!   the node the shorthand names too. Every trade that decodes is valid.
//! - **Which trades count**: asks only (`type == "ASK"`, case-sensitive).
//! - **Windows**: hopping, 5 s long, one starting every second, aligned to the epoch,
//!   half-open `[start, end)`; a trade at `t` is in the 5 windows with
//!   `start <= t < start + 5000`. Grace 0 (a pipeline's config may override it).
//! - **Per (ticker, window)**: the lowest ask price, the number of asks, the sum of
//!   their sizes and the sum of their prices (store and changelog `windows`, the
//!   shorthand's store name, with the same encoding).
//! - **Output**: logical topic `stockstats-output`. At every commit, one record per
//!   (ticker, window) that changed since the last commit: key = ticker, value =
//!   [`StatsOut`] as JSON, fields in the order `ticker, window_start, window_end,
//!   min_price, count_trades, volume, sum_price, avg_price`, where
//!   `avg_price = sum_price / count_trades`. A window with no ask writes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology, hopping};

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

/// Running statistics of one (ticker, window): the shorthand's accumulator, field
/// for field, so the stored bytes are the same.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Lowest ask price seen.
    pub min_price: f64,
    /// Number of asks.
    pub count_trades: u64,
    /// Sum of sizes.
    pub volume: u64,
    /// Sum of prices.
    pub sum_price: f64,
}

/// What the plugin writes to `stockstats-output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsOut {
    /// The ticker.
    pub ticker: String,
    /// Window start, ms since the epoch (inclusive).
    pub window_start: i64,
    /// Window end, ms since the epoch (exclusive).
    pub window_end: i64,
    /// Lowest ask price.
    pub min_price: f64,
    /// Number of asks.
    pub count_trades: u64,
    /// Sum of sizes.
    pub volume: u64,
    /// Sum of prices.
    pub sum_price: f64,
    /// `sum_price / count_trades`.
    pub avg_price: f64,
}

/// Accepts every trade that decodes: it is here so that undecodable values are
/// rejected naming `validate`, as the shorthand does.
pub fn validate(_ticker: &String, _trade: &Trade) -> Result<(), String> {
    Ok(())
}

/// Whether the trade is an ask.
pub fn is_ask(_ticker: &String, trade: &Trade) -> bool {
    trade.side == "ASK"
}

/// Folds one ask into a window's statistics.
pub fn add(acc: &mut Stats, _ticker: &String, trade: &Trade) {
    acc.min_price = if acc.count_trades == 0 { trade.price } else { acc.min_price.min(trade.price) };
    acc.count_trades += 1;
    acc.volume += trade.size;
    acc.sum_price += trade.price;
}

/// A window's statistics as output; `None` (nothing written) for a window with no ask.
pub fn render(key: &Windowed<String>, acc: Stats) -> Option<StatsOut> {
    (acc.count_trades > 0).then(|| StatsOut {
        ticker: key.key.clone(),
        window_start: key.window.start,
        window_end: key.window.end,
        min_price: acc.min_price,
        count_trades: acc.count_trades,
        volume: acc.volume,
        sum_price: acc.sum_price,
        avg_price: acc.sum_price / acc.count_trades as f64,
    })
}

/// The plugin.
pub struct StockStatsDsl;

impl weir_sdk::Plugin for StockStatsDsl {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        b.stream::<String, Trade>("trades")
            .validate(validate)
            .filter(is_ask)
            .group_by_key()
            .windowed_by(hopping(Duration::from_secs(5), Duration::from_secs(1)))
            .aggregate(add)
            .named("windows")
            .to_stream()
            .flat_map_values(render)
            .to("stockstats-output");
        b.build()
    }
}

weir_sdk::export!(StockStatsDsl);
