//! Order lines, the seed's foreign-key join of two tables: orders (keyed by
//! order id) name a product; the product catalogue (keyed by product id)
//! changes under them. Each order is joined with its product's current row,
//! and re-joined whenever the order or that product changes.
//!
//! ```text
//! orders   → orders-decode   → orders-table ──→ lines-foreign-key → lines-subscription-repartition ─┐
//!                                   ↑                                                             │
//!                                   └── lines-response-join ← lines-response-repartition ← lines ←┤
//! products → products-decode → products-table ────────────────────────────────────────────────────┘
//!            lines-response-join → lines-joiner → to_stream → to-order-lines
//! ```
//!
//! What it computes, exactly:
//! - **Inputs**: logical topics `orders` (value `{"product","qty"}`, keyed by
//!   order id) and `products` (value `{"name","cents"}`, keyed by product id),
//!   UTF-8 keys; the two need not be partitioned alike. A null value deletes
//!   the key's row. A value that does not decode is dead-lettered naming
//!   `orders-decode` or `products-decode`.
//! - **`order-lines`**: for every order whose product has a row (an inner
//!   join), `{"product","qty","name","cents","total"}` with `total = qty ×
//!   cents`, after every change of the order or of its product; a tombstone
//!   after a change that leaves an order without a line (deleted, its product
//!   deleted, moved to a product without a row — also for an order that
//!   never had a line). An order with an empty `product` has no foreign key
//!   and no line. Keyed by order id.

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::dsl::{StreamsBuilder, Topology};

#[cfg(test)]
mod tests;

/// An order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The product's id; empty: none.
    pub product: String,
    /// Units ordered.
    pub qty: u64,
}

/// A product of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub cents: u64,
}

/// An order with its product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The product's id.
    pub product: String,
    /// Units ordered.
    pub qty: u64,
    /// The product's name.
    pub name: String,
    /// Its price in cents.
    pub cents: u64,
    /// `qty × cents`.
    pub total: u64,
}

/// The product an order names, if any.
pub fn product_of(o: &Order) -> Option<String> {
    (!o.product.is_empty()).then(|| o.product.clone())
}

/// An order and its product.
pub fn line(o: &Order, p: &Product) -> Line {
    Line {
        product: o.product.clone(),
        qty: o.qty,
        name: p.name.clone(),
        cents: p.cents,
        total: o.qty.saturating_mul(p.cents),
    }
}

/// The plugin.
pub struct OrderProducts;

impl weir_sdk::Plugin for OrderProducts {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        let orders = b.table::<String, Order>("orders");
        let products = b.table::<String, Product>("products");
        orders.join_foreign("lines", &products, product_of, line).to_stream().to("order-lines");
        b.build()
    }
}

weir_sdk::export!(OrderProducts);
