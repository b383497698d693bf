//! Search click-through, the seed's stream–stream join: each search joined
//! with the clicks that follow it within five seconds.
//!
//! ```text
//! searches → valid_search ─┐
//!                          ├ click_through-join (left join, 0 s before to 5 s after, grace 3 s; store `click_through-join`)
//! clicks   → valid_click ──┘   → click_through → with_session → to-search-results
//! ```
//!
//! What it computes, exactly:
//! - **Inputs**: logical topics `searches` and `clicks`, both keyed by session id
//!   (UTF-8) and co-partitioned. Values: a search `{"query","results"}`, a click
//!   `{"url","position"}`; event time = the record's timestamp. A value that
//!   does not decode, a search with an empty query or a click with an empty
//!   url is dead-lettered naming `valid_search` or `valid_click`.
//! - **`search-results`**: for each search at `t` and each click of its session
//!   at `t ..= t + 5000` ms, one record `{"session","query","url","position"}`
//!   with the later timestamp (the click's); for a search that no click
//!   followed, one record with `url` and `position` null, written once its
//!   window has closed (stream time past `t + 5000 + 3000`). Records arriving
//!   out of order by up to the grace (3 s) are joined as if in order; a record
//!   whose window closed before it arrived is dropped as late (counted).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::dsl::{StreamsBuilder, Topology, join_windows};

#[cfg(test)]
mod tests;

/// A search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// What was searched for.
    pub query: String,
    /// How many results it showed.
    pub results: u32,
}

/// A click on a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Click {
    /// The result clicked.
    pub url: String,
    /// Its position in the results.
    pub position: u32,
}

/// A search with a click that followed it, or none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// The session (the record's key).
    pub session: String,
    /// What was searched for.
    pub query: String,
    /// The result clicked, if any.
    pub url: Option<String>,
    /// Its position, if any.
    pub position: Option<u32>,
}

/// A search must say what it searched for.
pub fn valid_search(_session: &String, s: &Search) -> Result<(), String> {
    if s.query.is_empty() { Err("a search without a query".to_owned()) } else { Ok(()) }
}

/// A click must say what it clicked.
pub fn valid_click(_session: &String, c: &Click) -> Result<(), String> {
    if c.url.is_empty() { Err("a click without a url".to_owned()) } else { Ok(()) }
}

/// A search and the click that followed it, if any.
pub fn click_through(search: &Search, click: Option<&Click>) -> SearchResult {
    SearchResult {
        session: String::new(),
        query: search.query.clone(),
        url: click.map(|c| c.url.clone()),
        position: click.map(|c| c.position),
    }
}

/// Names the session in a result.
#[allow(clippy::ptr_arg)] // the SDK hands operators the key as `&K`
pub fn with_session(session: &String, r: SearchResult) -> SearchResult {
    SearchResult { session: session.clone(), ..r }
}

/// The plugin.
pub struct SearchClicks;

impl weir_sdk::Plugin for SearchClicks {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        let searches = b.stream::<String, Search>("searches").validate(valid_search);
        let clicks = b.stream::<String, Click>("clicks").validate(valid_click);
        let window = join_windows(Duration::ZERO).after(Duration::from_secs(5)).grace(Duration::from_secs(3));
        searches.left_join_windowed(&clicks, window, click_through).map_values(with_session).to("search-results");
        b.build()
    }
}

weir_sdk::export!(SearchClicks);
