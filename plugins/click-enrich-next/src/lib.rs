//! Click enrichment built a second time with another joiner (it writes the
//! region upper-case), so a hot swap of joiner code has two real builds to
//! move between: same topics, table and join, so it swaps in mid-stream.

use weir_abi::topology::TopologyError;
use weir_sdk::dsl::Topology;

#[path = "../../click-enrich/src/enrich.rs"]
pub mod enrich;

/// The second joiner, named like the first (operator names stay put).
pub mod next {
    use super::enrich::{Click, EnrichedClick, Profile};

    /// The click with the user's profile, its region upper-case.
    #[allow(clippy::ptr_arg)] // the SDK hands a joiner the key as `&K`
    pub fn enrich(user: &String, click: &Click, p: Option<&Profile>) -> EnrichedClick {
        let mut e = super::enrich::enrich(user, click, p);
        e.region = e.region.map(|r| r.to_uppercase());
        e
    }
}

/// The plugin.
pub struct ClickEnrichNext;

impl weir_sdk::Plugin for ClickEnrichNext {
    fn topology() -> Result<Topology, TopologyError> {
        enrich::topology(next::enrich)
    }
}

weir_sdk::export!(ClickEnrichNext);
