//! Stock-stats, the seed's worked example: for every ticker and every 5-second
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

weir_sdk::export!(StockStats);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing;

    #[test]
    fn asks_are_aggregated_and_bids_ignored() {
        let acc = testing::fold::<StockStats>(&[
            r#"{"type":"ASK","ticker":"AAPL","price":10.5,"size":100}"#,
            r#"{"type":"BID","ticker":"AAPL","price":1.0,"size":999}"#,
            r#"{"type":"ASK","ticker":"AAPL","price":9.25,"size":50}"#,
        ])
        .unwrap();
        assert_eq!(acc, Stats { min_price: 9.25, count_trades: 2, volume: 150, sum_price: 19.75 });
    }

    #[test]
    fn finish_computes_the_average() {
        let acc = Stats { min_price: 9.25, count_trades: 2, volume: 150, sum_price: 19.75 };
        let json = testing::finish::<StockStats>("AAPL", Window { start: 1000, end: 6000 }, &acc).unwrap().unwrap();
        let out: StatsOut = serde_json::from_str(&json).unwrap();
        assert_eq!(out.avg_price, 9.875);
        assert_eq!((out.window_start, out.window_end), (1000, 6000));
        assert_eq!(out.ticker, "AAPL");
    }

    #[test]
    fn an_empty_window_emits_nothing() {
        assert_eq!(
            testing::finish::<StockStats>("AAPL", Window { start: 0, end: 5000 }, &Stats::default()).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_values_are_rejected_with_the_reason() {
        let out = testing::process::<StockStats>(&[
            "not json",
            r#"{"type":"ASK","ticker":"AAPL","size":1}"#,
            r#"{"type":"ASK","ticker":"AAPL","price":2.0,"size":1}"#,
        ])
        .unwrap();
        assert_eq!(out.rejects.len(), 2);
        assert_eq!(out.rejects[0].0, 0);
        assert!(out.rejects[0].1.contains("invalid value"), "{}", out.rejects[0].1);
        assert!(out.rejects[1].1.contains("missing field `price`"), "{}", out.rejects[1].1);
        assert_eq!(out.acc.unwrap().count_trades, 1);
    }
}
