//! Stock-stats, the seed's worked example: for every ticker and every 5-second
//! window advancing by 1 second, the lowest ask price, the number of trades, the
//! total size and the average ask price. Bids are ignored.

mod stats;

pub use stats::*;

weir_sdk::export!(StockStats);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Window;
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
