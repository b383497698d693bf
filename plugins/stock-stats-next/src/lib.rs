//! Stock-stats built a second time (version 0.2.0, same logic and state), so hot
//! swaps have two real builds to move between.

#[path = "../../stock-stats/src/stats.rs"]
pub mod stats;

weir_sdk::export!(stats::StockStats);
