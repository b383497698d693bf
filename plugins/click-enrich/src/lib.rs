//! Click enrichment, the seed's stream–table join: a click stream enriched with
//! user profiles that a database's change-data-capture topic keeps current.
//!
//! ```text
//! profiles-cdc → profile (envelope → row or delete) → profiles-cdc-table (table; store `profiles-cdc-table`)
//!                                                            │
//! clicks → valid_click → enrich-join (left join) ────────────┘
//!                          → enrich → to-enriched-clicks
//! ```
//!
//! What it computes, exactly:
//! - **Inputs**: logical topics `profiles-cdc` and `clicks`, both keyed by user
//!   id (UTF-8) and co-partitioned (the same number of partitions, keyed alike:
//!   a task reads partition `p` of both).
//! - **`profiles-cdc`**: values are change-data-capture envelopes as JSON,
//!   `{"op","before","after"}` with `op` one of `c` (create), `r` (snapshot
//!   read), `u` (update) and `d` (delete). `c`, `r` and `u` make `after` the
//!   user's profile (`{"name","region","tier"}`); `d` deletes it, as does a null
//!   value (the tombstone that follows a delete). A value that is no envelope,
//!   or a `c`/`r`/`u` without `after`, is dead-lettered naming `profile`, as is
//!   a record without a key.
//! - **`clicks`**: values are `{"page","ms"}` (the page and the time spent on
//!   it). A value that does not decode, or whose `page` is empty, is
//!   dead-lettered naming `valid_click`.
//! - **`enriched-clicks`**: one record per valid click, key unchanged, value
//!   `{"user","page","ms","name","region","tier"}` where the profile fields are
//!   those of the user's profile as of the click — the table as it is at the
//!   click's place in timestamp order across the two topics of its partition —
//!   or `null` if the user has no profile then (a left join). Timestamp: the
//!   click's.

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::dsl::{StreamsBuilder, Topology};

#[cfg(test)]
mod tests;

/// A user's profile, as the database row reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Display name.
    pub name: String,
    /// Where the user lives.
    pub region: String,
    /// `free`, `pro`, …
    pub tier: String,
}

/// A change-data-capture envelope of the `profiles` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// `c`, `r`, `u` or `d`.
    pub op: String,
    /// The row before the change, if any.
    #[serde(default)]
    pub before: Option<Profile>,
    /// The row after the change (none for a delete).
    #[serde(default)]
    pub after: Option<Profile>,
}

/// A click.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Click {
    /// The page clicked.
    pub page: String,
    /// Time spent on it, in ms.
    pub ms: u64,
}

/// A click with its user's profile as of the click.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedClick {
    /// The user (the record's key).
    pub user: String,
    /// The page clicked.
    pub page: String,
    /// Time spent on it, in ms.
    pub ms: u64,
    /// The user's name, if the user has a profile.
    pub name: Option<String>,
    /// The user's region, if the user has a profile.
    pub region: Option<String>,
    /// The user's tier, if the user has a profile.
    pub tier: Option<String>,
}

/// The profile a change leaves: `after` for a create, read or update; `None`
/// for a delete. An envelope that says neither is refused.
pub fn profile(_user: &String, change: Envelope) -> Result<Option<Profile>, String> {
    match change.op.as_str() {
        "c" | "r" | "u" => change.after.map(Some).ok_or_else(|| format!("a `{}` change without `after`", change.op)),
        "d" => Ok(None),
        other => Err(format!("unknown change `{other}`")),
    }
}

/// A click must name its page.
pub fn valid_click(_user: &String, click: &Click) -> Result<(), String> {
    if click.page.is_empty() { Err("a click without a page".to_owned()) } else { Ok(()) }
}

/// The click with the user's profile, if any.
#[allow(clippy::ptr_arg)] // the SDK hands a joiner the key as `&K`
pub fn enrich(user: &String, click: &Click, p: Option<&Profile>) -> EnrichedClick {
    EnrichedClick {
        user: user.clone(),
        page: click.page.clone(),
        ms: click.ms,
        name: p.map(|p| p.name.clone()),
        region: p.map(|p| p.region.clone()),
        tier: p.map(|p| p.tier.clone()),
    }
}

/// The plugin.
pub struct ClickEnrich;

impl weir_sdk::Plugin for ClickEnrich {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        let profiles = b.table_with("profiles-cdc", profile);
        b.stream::<String, Click>("clicks")
            .validate(valid_click)
            .left_join_with_key(&profiles, enrich)
            .to("enriched-clicks");
        b.build()
    }
}

weir_sdk::export!(ClickEnrich);
