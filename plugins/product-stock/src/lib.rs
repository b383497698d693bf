//! Product availability, the seed's join of two tables on key: a product
//! catalogue and the stock levels of a warehouse, both kept current from
//! topics, joined into each product's availability as either changes.
//!
//! ```text
//! products → products-decode → products-table ─┐
//!                                              ├ availability-join (left join) → availability → to-availability
//! stock    → stock-decode    → stock-table ────┘
//! ```
//!
//! What it computes, exactly:
//! - **Inputs**: logical topics `products` (value `{"name","price"}`) and
//!   `stock` (value `{"units"}`), both keyed by product id (UTF-8) and
//!   co-partitioned. A null value deletes the key's row. A value that does
//!   not decode is dead-lettered naming `products-decode` or `stock-decode`.
//! - **`availability`**: for every product in the catalogue, after every
//!   change of its row or of its stock, `{"product","name","price","units"}`
//!   (`units` null while the warehouse has no row for it); when a product
//!   leaves the catalogue, a tombstone (null value). Stock of products not in
//!   the catalogue writes nothing. Timestamp: the change's.

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::dsl::{StreamsBuilder, Topology};

#[cfg(test)]
mod tests;

/// A product of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: u64,
}

/// A product's stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    /// Units in the warehouse.
    pub units: u64,
}

/// A product with its stock, if known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: u64,
    /// Units in the warehouse, if the warehouse has a row for it.
    pub units: Option<u64>,
}

/// A product and its stock.
pub fn availability(p: &Product, s: Option<&Stock>) -> Availability {
    Availability { name: p.name.clone(), price: p.price, units: s.map(|s| s.units) }
}

/// The plugin.
pub struct ProductStock;

impl weir_sdk::Plugin for ProductStock {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        let products = b.table::<String, Product>("products");
        let stock = b.table::<String, Stock>("stock");
        products.left_join(&stock, availability).to_stream().to("availability");
        b.build()
    }
}

weir_sdk::export!(ProductStock);
