//! Host bindings of the `weir:processor` world — the only place `bindgen!` runs.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "processor",
    path: "../wit",
});

pub use self::weir::processor::types;
