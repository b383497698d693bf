//! End-to-end tests of Weir against the real Kafka broker started by
//! `scripts/kafka start` (127.0.0.1:9092 unless `WEIR_TEST_BOOTSTRAP` says otherwise).
//!
//! Every test uses topics and an application id of its own, so tests can run
//! together and be rerun against the same broker.

mod support;

mod admin;
mod commit_failures;
mod compression;
mod dead_letter;
mod group;
mod hostile_matrix;
mod hot_swap;
mod joins;
mod merge;
mod multi_host;
mod sandbox;
mod serve;
mod soak;
mod standby;
mod state_evolution;
mod stock_stats;
mod top10;
mod topologies;
mod window_kinds;
