//! Order pricing: a stream joined with a global table by a key computed from
//! each record — every order looks up the price of the product it names in a
//! table of prices that every host reads whole.
//!
//! ```text
//! prices (global table; store `prices-global`) ───────────┐
//! orders → product_of (global key) → priced-join (left) ──┴→ priced → to-priced-orders
//! ```
//!
//! What it computes, exactly:
//! - **Inputs**: `orders`, keyed by order id, value `{"product","qty"}`; `prices`,
//!   keyed by product id, value `{"cents"}` (a null value deletes the price).
//!   The two need not be partitioned alike.
//! - An order that does not decode, or names no product, is dead-lettered
//!   naming `product_of`.
//! - **`priced-orders`**: per order, under its own key,
//!   `{"product","qty","cents","total"}` with the product's price as the
//!   global table has it when the order is processed (`cents` and `total` null
//!   if it has none). At start every host reads the whole price topic before
//!   it processes any order; changes after that reach the table as they come.

use serde::{Deserialize, Serialize};
use weir_abi::topology::TopologyError;
use weir_sdk::dsl::{StreamsBuilder, Topology};

#[cfg(test)]
mod tests;

/// An order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The product ordered.
    pub product: String,
    /// How many.
    pub qty: u64,
}

/// A product's price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// In cents.
    pub cents: u64,
}

/// An order with its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Priced {
    /// The product ordered.
    pub product: String,
    /// How many.
    pub qty: u64,
    /// The unit price in cents, if the product has one.
    pub cents: Option<u64>,
    /// `qty × cents`, if the product has a price.
    pub total: Option<u64>,
}

/// The product an order names.
#[allow(clippy::ptr_arg)] // the SDK hands a key selector the key as `&K`
pub fn product_of(_order: &String, o: &Order) -> Result<String, String> {
    if o.product.is_empty() { Err("an order without a product".to_owned()) } else { Ok(o.product.clone()) }
}

/// The order priced.
pub fn priced(o: &Order, p: Option<&Price>) -> Priced {
    Priced { product: o.product.clone(), qty: o.qty, cents: p.map(|p| p.cents), total: p.map(|p| p.cents * o.qty) }
}

/// The plugin.
pub struct OrderPricing;

impl weir_sdk::Plugin for OrderPricing {
    fn topology() -> Result<Topology, TopologyError> {
        let b = StreamsBuilder::new();
        let prices = b.global_table::<String, Price>("prices");
        b.stream::<String, Order>("orders").left_join_global(&prices, product_of, priced).to("priced-orders");
        b.build()
    }
}

weir_sdk::export!(OrderPricing);
