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

use weir_abi::topology::TopologyError;
use weir_sdk::dsl::Topology;

pub mod enrich;
pub use enrich::*;

#[cfg(test)]
mod tests;

/// The plugin.
pub struct ClickEnrich;

impl weir_sdk::Plugin for ClickEnrich {
    fn topology() -> Result<Topology, TopologyError> {
        enrich::topology(enrich::enrich)
    }
}

weir_sdk::export!(ClickEnrich);
