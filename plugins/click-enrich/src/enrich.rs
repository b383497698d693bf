//! The click-enrichment topology and its user functions, shared by the
//! plugin's builds (`click-enrich`, and `click-enrich-next`, whose joiner
//! differs, for hot-swap tests).

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::dsl::{StreamsBuilder, Topology};

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

/// The topology, with `joiner` (a named function: the join is named after
/// it) making each enriched click.
pub fn topology<F>(joiner: F) -> Result<Topology, TopologyError>
where
    F: Fn(&String, &Click, Option<&Profile>) -> EnrichedClick + 'static,
{
    let b = StreamsBuilder::new();
    let profiles = b.table_with("profiles-cdc", profile);
    b.stream::<String, Click>("clicks")
        .validate(valid_click)
        .left_join_with_key(&profiles, joiner)
        .to("enriched-clicks");
    b.build()
}
