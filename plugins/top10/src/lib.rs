//! Top 10: per UTC day, the ten tickers whose ask price rose most since their
//! first ask of the day — a two-stage topology, re-grouped through a repartition.
//!
//! ```text
//! trades → is_ask → positive_price → open-last (tumbling 1 day, grace 1 h; store `open-last`)
//!   → by_day (table group_by) → top10-repartition
//!   → top10 (adder `add_change`, subtractor `remove_change`; store `top10`)
//!   → to_stream-1 → render → to-top10
//! ```
//!
//! What it computes, exactly:
//! - **Input**: logical topic `trades`, key = ticker (UTF-8), value = a trade as JSON
//!   (`{"type","ticker","price","size"}`), event time = the record's timestamp. A value
//!   that does not decode as a trade is dead-lettered (`invalid value: …`, naming
//!   `is_ask`, the first operator).
//! - **Which trades count**: asks (`type == "ASK"`). An ask whose price is not above
//!   0 is dead-lettered by `positive_price` (its change would not be a number).
//! - **Per (ticker, UTC day)** — tumbling windows of 86 400 000 ms aligned to the
//!   epoch, `[day_start, day_start + 86400000)`, grace 1 hour — `open` is the price of
//!   the first ask folded into the day and `last` the price of the latest one, in the
//!   order the host folds records (offset order within a partition, not timestamp
//!   order). `change_pct = (last - open) / open * 100`.
//! - **Per day**: every ticker's latest `change_pct`. Each update of a (ticker, day)
//!   row is re-grouped under its day: the subtractor takes the old row out (if it is
//!   still the one recorded), the adder puts the new one in.
//! - **Output**: logical topic `top10`, at every commit one record per day that
//!   changed: key = `day_start` in ms as decimal text, value
//!   `{"day_start":<ms>,"top":[{"ticker":…,"change_pct":…},…]}` with at most 10
//!   entries, by `change_pct` descending, ties by ticker ascending (byte order).
//!
//! The `top10` store keeps one row per day for ever (the windowed store expires
//! closed days; a table does not).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology, tumbling};

#[cfg(test)]
mod tests;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// At most this many tickers per day are written.
pub const TOP: usize = 10;

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

/// The first and the latest ask price of one (ticker, day).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenLast {
    /// Price of the first ask folded in.
    pub open: f64,
    /// Price of the latest ask folded in.
    pub last: f64,
    /// Asks folded in (0: `open` and `last` are not set yet).
    pub asks: u64,
}

impl OpenLast {
    /// `(last - open) / open * 100`.
    pub fn change_pct(&self) -> f64 {
        (self.last - self.open) / self.open * 100.0
    }
}

/// One entry of a day's ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The ticker.
    pub ticker: String,
    /// Its change since the day's first ask, in percent.
    pub change_pct: f64,
}

/// What the plugin writes to `top10`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopOut {
    /// Start of the UTC day, ms since the epoch.
    pub day_start: i64,
    /// At most [`TOP`] entries, by `change_pct` descending, ties by ticker ascending.
    pub top: Vec<Entry>,
}

/// Whether the trade is an ask.
pub fn is_ask(_ticker: &String, trade: &Trade) -> bool {
    trade.side == "ASK"
}

/// Refuses an ask whose price is not above 0.
pub fn positive_price(_ticker: &String, trade: &Trade) -> Result<(), String> {
    if trade.price > 0.0 { Ok(()) } else { Err(format!("price {} is not above 0", trade.price)) }
}

/// Folds one ask into its day: the first sets `open`, every one sets `last`.
pub fn open_last(acc: &mut OpenLast, _ticker: &String, trade: &Trade) {
    if acc.asks == 0 {
        acc.open = trade.price;
    }
    acc.last = trade.price;
    acc.asks += 1;
}

/// Re-groups a (ticker, day)'s prices under its day, with the ticker's change.
pub fn by_day(key: &Windowed<String>, prices: &OpenLast) -> (i64, (String, f64)) {
    (key.window.start, (key.key.clone(), prices.change_pct()))
}

/// Adder: records (or replaces) the ticker's change in its day.
pub fn add_change(day: &mut BTreeMap<String, f64>, _day_start: &i64, row: &(String, f64)) {
    day.insert(row.0.clone(), row.1);
}

/// Subtractor: removes the ticker's entry if it is still the one subtracted.
pub fn remove_change(day: &mut BTreeMap<String, f64>, _day_start: &i64, row: &(String, f64)) {
    if day.get(&row.0).is_some_and(|c| c.to_bits() == row.1.to_bits()) {
        day.remove(&row.0);
    }
}

/// A day's changes as its ranking.
pub fn render(day_start: &i64, day: BTreeMap<String, f64>) -> TopOut {
    // The map iterates by ticker, and the sort is stable: ties stay by ticker.
    let mut top: Vec<Entry> = day.into_iter().map(|(ticker, change_pct)| Entry { ticker, change_pct }).collect();
    top.sort_by(|a, b| b.change_pct.total_cmp(&a.change_pct));
    top.truncate(TOP);
    TopOut { day_start: *day_start, top }
}

/// The plugin.
pub struct Top10;

impl weir_sdk::Plugin for Top10 {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        b.stream::<String, Trade>("trades")
            .filter(is_ask)
            .validate(positive_price)
            .group_by_key()
            .windowed_by(tumbling(Duration::from_millis(DAY_MS)).grace(Duration::from_secs(3_600)))
            .aggregate(open_last)
            .named("open-last")
            .group_by(by_day)
            .aggregate(add_change, remove_change)
            .named("top10")
            .to_stream()
            .map_values(render)
            .to("top10");
        b.build()
    }
}

weir_sdk::export!(Top10);
