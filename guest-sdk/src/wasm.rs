//! The wasm-only glue between the generated WIT bindings and [`crate::runtime`].

use crate::runtime::{FrameError, finish_frame, migrate_frame, process_frame};
use crate::wit::weir::processor::types::{
    HoppingWindows, PluginInfo, ProcessorError, TumblingWindows, Windowing as WitWindowing,
};
use crate::{Aggregator, Windowing};

impl From<FrameError> for ProcessorError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::BadFrame(m) => ProcessorError::BadFrame(m),
            FrameError::Fatal(m) => ProcessorError::Fatal(m),
        }
    }
}

/// `describe` for an aggregator.
pub fn describe<A: Aggregator>(name: &str, version: &str) -> PluginInfo {
    let windowing = match A::WINDOWING {
        Windowing::Hopping { size_ms, advance_ms } => WitWindowing::Hopping(HoppingWindows { size_ms, advance_ms }),
        Windowing::Tumbling { size_ms } => WitWindowing::Tumbling(TumblingWindows { size_ms }),
    };
    PluginInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        windowing,
        state_schema: A::STATE_SCHEMA,
        migrates_from: A::MIGRATES_FROM.to_vec(),
    }
}

/// `process` for an aggregator.
pub fn process<A: Aggregator>(batch: &[u8]) -> Result<Vec<u8>, ProcessorError> {
    process_frame::<A>(batch).map_err(Into::into)
}

/// `finish` for an aggregator.
pub fn finish<A: Aggregator>(slots: &[u8]) -> Result<Vec<u8>, ProcessorError> {
    finish_frame::<A>(slots).map_err(Into::into)
}

/// `migrate` for an aggregator.
pub fn migrate<A: Aggregator>(from: u32, slots: &[u8]) -> Result<Vec<u8>, ProcessorError> {
    migrate_frame::<A>(from, slots).map_err(Into::into)
}
