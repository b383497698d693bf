//! Test fixture: a processor built against `weir:processor@0.1.0`, the world
//! before state evolution (no `migrate` export, no `migrates-from`). A host of a
//! later world version must refuse it and name both versions.

// The generated bindings are the only unsafe code here.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod component {
    wit_bindgen::generate!({
        inline: "
            package weir:processor@0.1.0;

            interface types {
                variant windowing { hopping(hopping-windows), tumbling(tumbling-windows) }
                record hopping-windows { size-ms: u64, advance-ms: u64 }
                record tumbling-windows { size-ms: u64 }
                record plugin-info { name: string, version: string, windowing: windowing, state-schema: u32 }
                variant processor-error { bad-frame(string), fatal(string) }
            }

            world processor {
                use types.{plugin-info, processor-error};
                export describe: func() -> plugin-info;
                export process: func(batch: list<u8>) -> result<list<u8>, processor-error>;
                export finish: func(slots: list<u8>) -> result<list<u8>, processor-error>;
            }
        ",
    });

    use weir::processor::types::{TumblingWindows, Windowing};

    struct Old;

    impl Guest for Old {
        fn describe() -> PluginInfo {
            PluginInfo {
                name: "old-world".into(),
                version: "0.1.0".into(),
                windowing: Windowing::Tumbling(TumblingWindows { size_ms: 1_000 }),
                state_schema: 1,
            }
        }

        fn process(_batch: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            Err(ProcessorError::Fatal("fixture: never runs".into()))
        }

        fn finish(_slots: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            Err(ProcessorError::Fatal("fixture: never runs".into()))
        }
    }

    export!(Old);
}
