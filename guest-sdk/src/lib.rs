//! Write Weir stream processors in Rust.
//!
//! A plugin is a type implementing [`Aggregator`] plus one [`export!`] line. The host
//! owns Kafka, windows, state stores, event time and transactions; the plugin says
//! how to read a record, which records count, how one record changes an
//! accumulator, and how an accumulator becomes an output value.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use weir_sdk::{Aggregator, Window, Windowing};
//!
//! #[derive(Deserialize)]
//! struct Click { page: String }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Count { n: u64 }
//!
//! #[derive(Serialize)]
//! struct PageViews { page: String, start: i64, views: u64 }
//!
//! struct Views;
//! impl Aggregator for Views {
//!     const WINDOWING: Windowing = Windowing::tumbling_ms(60_000);
//!     type Input = Click;
//!     type Acc = Count;
//!     type Output = PageViews;
//!     fn add(acc: &mut Count, _click: &Click) { acc.n += 1 }
//!     fn finish(key: &str, w: Window, acc: &Count) -> Option<PageViews> {
//!         Some(PageViews { page: key.to_owned(), start: w.start, views: acc.n })
//!     }
//! }
//! weir_sdk::export!(Views);
//!
//! // Plain `cargo test` runs the same code path the host calls:
//! let acc = weir_sdk::testing::fold::<Views>(&[r#"{"page":"/"}"#, r#"{"page":"/a"}"#]).unwrap();
//! assert_eq!(acc.n, 2);
//! ```
//!
//! Build for the host with `cargo build --release --target wasm32-wasip2`.
#![deny(missing_docs)]

pub mod data;
pub mod dsl;
mod graph;
mod shorthand;
pub mod testing;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use data::Data;
pub use weir_abi::topology::TopologyError;

pub use weir_abi::Window;

#[doc(hidden)]
pub use weir_abi as __abi;

pub use graph::FrameError;

#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::{aggregate, describe, migrate, run};
}

/// A plugin: a topology of operators with user functions. Implement it with the
/// [`dsl`], or implement [`Aggregator`] (which makes a one-aggregation topology),
/// and export it with [`export!`].
pub trait Plugin {
    /// Builds the plugin's topology (called once per instance).
    fn topology() -> Result<dsl::Topology, weir_abi::topology::TopologyError>;
}

impl<A: Aggregator + 'static> Plugin for A {
    fn topology() -> Result<dsl::Topology, weir_abi::topology::TopologyError> {
        shorthand::topology::<A>()
    }
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        world: "processor",
        path: "../wit",
        default_bindings_module: "weir_sdk::wit",
        pub_export_macro: true,
        export_macro_name: "__export_processor",
    });
}

#[cfg(target_arch = "wasm32")]
mod wasm;

/// The key of a windowed table's row: the grouping key and the window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Windowed<K> {
    /// The grouping key.
    pub key: K,
    /// The window (half-open, `[start, end)`).
    pub window: Window,
}

/// An update of a table's row: the new row and the one it replaces (`None`
/// when the row is new, or deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change<V> {
    /// The row after the update.
    pub new: Option<V>,
    /// The row before it.
    pub old: Option<V>,
}

/// How the host groups a plugin's records into accumulators by event time.
/// Windows are aligned to the Unix epoch; a window contains `start <= t < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windowing {
    /// Windows `size_ms` long starting every `advance_ms` (they overlap when
    /// `advance_ms < size_ms`).
    Hopping {
        /// Window length in milliseconds.
        size_ms: u64,
        /// Distance between window starts in milliseconds.
        advance_ms: u64,
    },
    /// Back-to-back windows `size_ms` long.
    Tumbling {
        /// Window length in milliseconds.
        size_ms: u64,
    },
}

impl Windowing {
    /// Hopping windows, e.g. `Windowing::hopping_ms(5_000, 1_000)`.
    pub const fn hopping_ms(size_ms: u64, advance_ms: u64) -> Self {
        Self::Hopping { size_ms, advance_ms }
    }

    /// Tumbling windows, e.g. `Windowing::tumbling_ms(86_400_000)` for days.
    pub const fn tumbling_ms(size_ms: u64) -> Self {
        Self::Tumbling { size_ms }
    }
}

/// A windowed aggregation per record key.
///
/// The host calls [`Aggregator::add`] for every record that passes
/// [`Aggregator::filter`], once for each window the record falls into, and keeps the
/// accumulators in its state stores. It calls [`Aggregator::finish`] to turn an
/// accumulator into the value it writes to the output topic.
pub trait Aggregator {
    /// How records are grouped in time.
    const WINDOWING: Windowing;
    /// Version of the accumulator's encoding. Raise it when `Acc` changes shape,
    /// and list the older versions [`Aggregator::migrate`] converts in
    /// [`Aggregator::MIGRATES_FROM`].
    const STATE_SCHEMA: u32 = 1;
    /// Older state schemas this version can take over (see [`Aggregator::migrate`]).
    /// The host refuses to activate a version over state it cannot read, unless
    /// the operator explicitly resets the state.
    const MIGRATES_FROM: &'static [u32] = &[];
    /// A record value, decoded from JSON. A value that does not decode is sent to
    /// the dead-letter topic with the decoder's message.
    type Input: DeserializeOwned;
    /// The per-(key, window) state.
    type Acc: Default + Serialize + DeserializeOwned;
    /// The output value, encoded as JSON.
    type Output: Serialize;

    /// Whether a record counts at all. Defaults to every record.
    fn filter(_input: &Self::Input) -> bool {
        true
    }

    /// Checks a decoded record; an `Err` sends it to the dead-letter topic with
    /// that reason. Defaults to accepting every record that decodes.
    fn validate(_input: &Self::Input) -> Result<(), String> {
        Ok(())
    }

    /// Folds one record into an accumulator.
    fn add(acc: &mut Self::Acc, input: &Self::Input);

    /// Renders an accumulator; `None` writes nothing for it.
    fn finish(key: &str, window: Window, acc: &Self::Acc) -> Option<Self::Output>;

    /// Converts an accumulator stored by a version with state schema `from` (one of
    /// [`Aggregator::MIGRATES_FROM`]) into this version's `Acc`. `stored` is the old
    /// version's encoding: decode it with [`decode_state`] into a copy of the old
    /// type. `Ok(None)` drops the window's state; an `Err` fails the activation and
    /// the host keeps the running version.
    fn migrate(from: u32, key: &str, window: Window, stored: &[u8]) -> Result<Option<Self::Acc>, String> {
        let _ = (key, window, stored);
        Err(format!("no migration from state schema {from}"))
    }
}

/// Decodes an accumulator as a plugin stored it (the SDK's encoding), for use in
/// [`Aggregator::migrate`] with the previous version's accumulator type.
pub fn decode_state<T: DeserializeOwned>(stored: &[u8]) -> Result<T, String> {
    postcard::from_bytes(stored).map_err(|e| format!("stored accumulator does not decode: {e}"))
}

/// Exports a [`Plugin`] (a DSL topology, or an [`Aggregator`]) as the plugin's
/// `weir:processor` implementation.
///
/// Use once per plugin crate: `weir_sdk::export!(MyPlugin);`. The plugin's name
/// and version come from its `Cargo.toml`. Off wasm this expands to nothing, so the
/// plugin's logic can be unit-tested natively.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_export {
            #[allow(unused_imports)]
            use super::*;
            use $crate::wit::weir::processor::types::{PluginInfo, ProcessorError};

            type Built = ::std::result::Result<$crate::dsl::Topology, $crate::__abi::topology::TopologyError>;

            ::std::thread_local! {
                static TOPOLOGY: Built = <$plugin as $crate::Plugin>::topology();
            }

            struct Export;
            impl $crate::wit::Guest for Export {
                fn describe() -> ::std::result::Result<PluginInfo, ::std::string::String> {
                    TOPOLOGY.with(|t| $crate::__private::describe(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), t))
                }
                fn run(batch: ::std::vec::Vec<u8>) -> ::std::result::Result<::std::vec::Vec<u8>, ProcessorError> {
                    TOPOLOGY.with(|t| $crate::__private::run(t, &batch))
                }
                fn aggregate(batch: ::std::vec::Vec<u8>) -> ::std::result::Result<::std::vec::Vec<u8>, ProcessorError> {
                    TOPOLOGY.with(|t| $crate::__private::aggregate(t, &batch))
                }
                fn migrate(batch: ::std::vec::Vec<u8>) -> ::std::result::Result<::std::vec::Vec<u8>, ProcessorError> {
                    TOPOLOGY.with(|t| $crate::__private::migrate(t, &batch))
                }
            }
            $crate::wit::__export_processor!(Export);
        }
    };
}
