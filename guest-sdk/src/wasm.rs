//! The wasm-only glue between the generated WIT bindings and [`crate::graph`].

use weir_abi::topology::TopologyError;

use crate::dsl::Topology;
use crate::graph::FrameError;
use crate::wit::weir::processor::types::{PluginInfo, ProcessorError};

impl From<FrameError> for ProcessorError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::BadFrame(m) => ProcessorError::BadFrame(m),
            FrameError::Fatal(m) => ProcessorError::Fatal(m),
        }
    }
}

fn built(topology: &Result<Topology, TopologyError>) -> Result<&Topology, ProcessorError> {
    topology.as_ref().map_err(|e| ProcessorError::Fatal(format!("the plugin's topology does not build: {e}")))
}

/// `describe`.
pub fn describe(name: &str, version: &str, topology: &Result<Topology, TopologyError>) -> Result<PluginInfo, String> {
    let t = topology.as_ref().map_err(|e| format!("the plugin's topology does not build: {e}"))?;
    let bytes = t.describe().encode().map_err(|e| format!("the topology does not encode: {e}"))?;
    Ok(PluginInfo { name: name.to_owned(), version: version.to_owned(), topology: bytes })
}

/// `run`.
pub fn run(topology: &Result<Topology, TopologyError>, batch: &[u8]) -> Result<Vec<u8>, ProcessorError> {
    built(topology)?.run_frame(batch).map_err(Into::into)
}

/// `aggregate`.
pub fn aggregate(topology: &Result<Topology, TopologyError>, batch: &[u8]) -> Result<Vec<u8>, ProcessorError> {
    built(topology)?.aggregate_frame(batch).map_err(Into::into)
}

/// `migrate`.
pub fn migrate(topology: &Result<Topology, TopologyError>, batch: &[u8]) -> Result<Vec<u8>, ProcessorError> {
    built(topology)?.migrate_frame(batch).map_err(Into::into)
}
