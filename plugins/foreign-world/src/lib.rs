//! Test fixture: a well-formed WebAssembly component that implements some other
//! world than `weir:processor`. Uploading it must be refused as not implementing
//! the Weir world.

// The generated bindings are the only unsafe code here.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod component {
    wit_bindgen::generate!({
        inline: "
            package acme:greeter@1.0.0;
            world greeter {
                export greet: func(name: string) -> string;
            }
        ",
    });

    struct Greeter;

    impl Guest for Greeter {
        fn greet(name: String) -> String {
            format!("hello, {name}")
        }
    }

    export!(Greeter);
}
