//! A stock-stats build that declares the same windows and state as stock-stats but
//! traps on its first record: the hot-swap test's broken upgrade.

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

    fn add(_acc: &mut Stats, _trade: &Trade) {
        #[allow(clippy::panic)] // The point of this fixture.
        {
            panic!("this build is broken");
        }
    }

    fn finish(ticker: &str, window: Window, acc: &Stats) -> Option<StatsOut> {
        StockStats::finish(ticker, window, acc)
    }
}

weir_sdk::export!(Broken);
