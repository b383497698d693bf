//! Stock-stats 0.3.0: the same contract, plus the highest ask price, which needs a
//! new accumulator — state schema 2 — with a different field order and a new field.
//! It migrates schema-1 state (stock-stats 0.1/0.2): the counts, sums and minimum
//! carry over; the maximum of trades seen before the migration is unknown, so a
//! migrated window never reports one (rather than a wrong one).

#[path = "../../stock-stats/src/stats.rs"]
pub mod stats;

use serde::{Deserialize, Serialize};
use weir_sdk::{Aggregator, Window, Windowing};

use crate::stats::{Stats, StatsOut, StockStats, Trade};

/// Schema 2: running statistics of one (ticker, window).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct WideStats {
    /// Number of asks.
    pub count_trades: u64,
    /// Sum of sizes.
    pub volume: u64,
    /// Sum of prices.
    pub sum_price: f64,
    /// Lowest ask price seen.
    pub min_price: f64,
    /// Highest ask price, if every ask of the window was seen by schema 2.
    pub max_price: Option<f64>,
}

/// The contract's output plus `max_price` when it is known.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WideOut {
    /// The contract fields.
    #[serde(flatten)]
    pub stats: StatsOut,
    /// Highest ask price; absent for windows migrated from schema 1.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_price: Option<f64>,
}

/// The aggregator.
pub struct WideStockStats;

impl Aggregator for WideStockStats {
    const WINDOWING: Windowing = StockStats::WINDOWING;
    const STATE_SCHEMA: u32 = 2;
    const MIGRATES_FROM: &'static [u32] = &[1];
    type Input = Trade;
    type Acc = WideStats;
    type Output = WideOut;

    fn filter(trade: &Trade) -> bool {
        StockStats::filter(trade)
    }

    fn add(acc: &mut WideStats, trade: &Trade) {
        if acc.count_trades == 0 {
            acc.min_price = trade.price;
            acc.max_price = Some(trade.price);
        } else {
            acc.min_price = acc.min_price.min(trade.price);
            acc.max_price = acc.max_price.map(|m| m.max(trade.price));
        }
        acc.count_trades += 1;
        acc.volume += trade.size;
        acc.sum_price += trade.price;
    }

    fn finish(ticker: &str, window: Window, acc: &WideStats) -> Option<WideOut> {
        let narrow = Stats {
            min_price: acc.min_price,
            count_trades: acc.count_trades,
            volume: acc.volume,
            sum_price: acc.sum_price,
        };
        let stats = StockStats::finish(ticker, window, &narrow)?;
        Some(WideOut { stats, max_price: acc.max_price })
    }

    fn migrate(from: u32, _ticker: &str, _window: Window, stored: &[u8]) -> Result<Option<WideStats>, String> {
        match from {
            1 => {
                let old: Stats = weir_sdk::decode_state(stored)?;
                Ok(Some(WideStats {
                    count_trades: old.count_trades,
                    volume: old.volume,
                    sum_price: old.sum_price,
                    min_price: old.min_price,
                    max_price: None,
                }))
            }
            other => Err(format!("unknown state schema {other}")),
        }
    }
}

weir_sdk::export!(WideStockStats);

#[cfg(test)]
mod tests {
    use weir_sdk::testing;

    use super::*;

    const W: Window = Window { start: 0, end: 5_000 };

    fn ask(price: f64, size: u64) -> String {
        format!(r#"{{"type":"ASK","ticker":"T","price":{price},"size":{size}}}"#)
    }

    #[test]
    fn fresh_windows_know_their_maximum() {
        let acc = testing::fold::<WideStockStats>(&[&ask(3.0, 1), &ask(5.0, 2), &ask(4.0, 3)]).unwrap();
        assert_eq!((acc.count_trades, acc.volume, acc.min_price, acc.max_price), (3, 6, 3.0, Some(5.0)));
    }

    #[test]
    fn schema_1_state_migrates_and_keeps_the_contract_fields() {
        let old = Stats { min_price: 2.5, count_trades: 4, volume: 40, sum_price: 12.0 };
        let acc = testing::migrate::<WideStockStats>(1, "T", W, &old).unwrap().unwrap();
        assert_eq!(acc, WideStats { count_trades: 4, volume: 40, sum_price: 12.0, min_price: 2.5, max_price: None });
        let out = testing::finish::<WideStockStats>("T", W, &acc).unwrap().unwrap();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["avg_price"], 3.0);
        assert!(json.get("max_price").is_none(), "a migrated window must not claim a maximum: {out}");
    }

    #[test]
    fn unknown_schemas_are_refused() {
        let old = Stats::default();
        assert!(testing::migrate::<WideStockStats>(7, "T", W, &old).is_err());
    }
}
