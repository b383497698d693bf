//! Weir: a stream-processing host. Kafka in, sandboxed WebAssembly processors,
//! Kafka out, exactly once.
//!
//! Data flows one way through these modules: Kafka source ([`kafka::source`],
//! driven by the [`pipeline`]) → [`task`] → [`runtime`] (the plugin) →
//! [`window`] / [`state`] → the task's outbox → [`kafka::sink`] (transactions).

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod faults;
pub mod generator;
pub mod global;
pub mod group;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod state;
pub mod task;
pub mod topology;
pub mod window;
