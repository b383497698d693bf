//! A stock-stats build that declares the same windows and state as stock-stats but
//! traps: on its first record, or, when the environment variable `TRAP_TICKER` is
//! granted, only on that ticker's trades (a version that fails late). The hot-swap
//! tests' broken upgrades.

#[path = "../../stock-stats/src/stats.rs"]
pub mod stats;

use stats::{Stats, StatsOut, StockStats, Trade};
use weir_sdk::{Aggregator, Window, Windowing};

/// The broken build.
pub struct Broken;

impl Aggregator for Broken {
    const WINDOWING: Windowing = StockStats::WINDOWING;
    type Input = Trade;
    type Acc = Stats;
    type Output = StatsOut;

    fn filter(trade: &Trade) -> bool {
        StockStats::filter(trade)
    }

    fn add(acc: &mut Stats, trade: &Trade) {
        match std::env::var("TRAP_TICKER") {
            Ok(ticker) if ticker != trade.ticker => StockStats::add(acc, trade),
            #[allow(clippy::panic)] // The point of this fixture.
            _ => panic!("this build is broken"),
        }
    }

    fn finish(ticker: &str, window: Window, acc: &Stats) -> Option<StatsOut> {
        StockStats::finish(ticker, window, acc)
    }
}

weir_sdk::export!(Broken);
