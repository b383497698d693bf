//! Trade sessions: per ticker, the number of trades and their total size in each
//! session of activity (trades at most 3 seconds apart).
//!
//! ```text
//! trades → sessions (session, gap 3 s, grace 1 s; adder `add`, merger `merge`; store `sessions`)
//!   → to_stream-1 → render → to-sessions
//! ```
//!
//! What it computes, exactly:
//! - **Input**: logical topic `trades`, key = ticker (UTF-8), value = a trade as JSON
//!   (`{"type","ticker","price","size"}`), event time = the record's timestamp. A value
//!   that does not decode as a trade is dead-lettered (`invalid value: …`); with no
//!   operator before the aggregation, the reject names `sessions`.
//! - **Which trades count**: all, asks and bids.
//! - **Sessions**: a session of a ticker is a run of its trades whose consecutive
//!   timestamps are at most 3000 ms apart (exactly 3000 apart still joins). Kafka
//!   Streams' session `[first, last]` is `[first, last + 1)` here. A trade at `t` joins
//!   every session overlapping `[t - 3000, t + 3000]`; two sessions it bridges are
//!   merged (their accumulators summed by `merge`). Grace 1 s: a trade is dropped if
//!   the merged session's last millisecond is before `stream time - 1000 - 3000`.
//! - **Per (ticker, session)**: the number of trades and the sum of their sizes
//!   (store and changelog `sessions`).
//! - **Output**: logical topic `sessions`. At every commit, one record per (ticker,
//!   session) created or changed since the last: key = ticker, value
//!   `{"ticker","session_start","session_end","count","volume"}`, where
//!   `session_start` is the first trade's timestamp and `session_end` the last
//!   trade's timestamp + 1 (exclusive).
//! - **Merged-away sessions**: when a trade merges sessions, each old session is
//!   deleted and arrives as a tombstone (no value). `render` is not called for it:
//!   `map_values` passes a tombstone through untouched (the DSL does this for every
//!   key-keeping operator), and the sink writes key = ticker with a **null value**.
//!   The tombstone's window travels beside the record to the host, not in the key or
//!   value this plugin writes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology, session};

#[cfg(test)]
mod tests;

/// A trade as written to the `trades` topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trade {
    /// `"ASK"` or `"BID"`; both count.
    #[serde(rename = "type")]
    pub side: String,
    /// The ticker symbol (also the record key).
    pub ticker: String,
    /// Price per share.
    pub price: f64,
    /// Number of shares.
    pub size: u64,
}

/// Trades of one (ticker, session). `Default` (all zero) is the identity of
/// [`merge`], as the host requires of an initializer.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Number of trades.
    pub count: u64,
    /// Sum of their sizes.
    pub volume: u64,
}

/// What the plugin writes to `sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOut {
    /// The ticker.
    pub ticker: String,
    /// Timestamp of the session's first trade.
    pub session_start: i64,
    /// Timestamp of its last trade + 1 (exclusive).
    pub session_end: i64,
    /// Number of trades.
    pub count: u64,
    /// Sum of their sizes.
    pub volume: u64,
}

/// Adder: folds one trade into its session.
pub fn add(acc: &mut Activity, _ticker: &String, trade: &Trade) {
    acc.count += 1;
    acc.volume += trade.size;
}

/// Merger: folds a session merged away into the one that remains.
pub fn merge(acc: &mut Activity, other: Activity) {
    acc.count += other.count;
    acc.volume += other.volume;
}

/// A session as output.
pub fn render(key: &Windowed<String>, acc: Activity) -> SessionOut {
    SessionOut {
        ticker: key.key.clone(),
        session_start: key.window.start,
        session_end: key.window.end,
        count: acc.count,
        volume: acc.volume,
    }
}

/// The plugin.
pub struct TradeSessions;

impl weir_sdk::Plugin for TradeSessions {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        b.stream::<String, Trade>("trades")
            .group_by_key()
            .windowed_by(session(Duration::from_secs(3)).grace(Duration::from_secs(1)))
            .aggregate(add, merge)
            .named("sessions")
            .to_stream()
            .map_values(render)
            .to("sessions");
        b.build()
    }
}

weir_sdk::export!(TradeSessions);
