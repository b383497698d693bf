//! The stock-stats aggregation (shared by the stock-stats builds): for every ticker and every 5-second
//! window advancing by 1 second, the lowest ask price, the number of trades, the
//! total size and the average ask price. Bids are ignored.

use serde::{Deserialize, Serialize};
use weir_sdk::{Aggregator, Window, Windowing};

/// A trade as written to the `trades` topic.
#[derive(Debug, Deserialize)]
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

/// Running statistics of one (ticker, window).
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
#[derive(Debug, Serialize, Deserialize, PartialEq)]
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

/// The aggregator.
pub struct StockStats;

impl Aggregator for StockStats {
    const WINDOWING: Windowing = Windowing::hopping_ms(5_000, 1_000);
    type Input = Trade;
    type Acc = Stats;
    type Output = StatsOut;

    fn filter(trade: &Trade) -> bool {
        trade.side == "ASK"
    }

    fn add(acc: &mut Stats, trade: &Trade) {
        acc.min_price = if acc.count_trades == 0 { trade.price } else { acc.min_price.min(trade.price) };
        acc.count_trades += 1;
        acc.volume += trade.size;
        acc.sum_price += trade.price;
    }

    fn finish(ticker: &str, window: Window, acc: &Stats) -> Option<StatsOut> {
        (acc.count_trades > 0).then(|| StatsOut {
            ticker: ticker.to_owned(),
            window_start: window.start,
            window_end: window.end,
            min_price: acc.min_price,
            count_trades: acc.count_trades,
            volume: acc.volume,
            sum_price: acc.sum_price,
            avg_price: acc.sum_price / acc.count_trades as f64,
        })
    }
}
