//! A test fixture. It counts records per key in 1-second tumbling windows. A
//! record's `act` field makes it misbehave:
//!
//! | `act` | what the plugin does |
//! |---|---|
//! | `count` | counts the record (the healthy path) |
//! | `trap` | panics (a wasm trap) |
//! | `loop` | spins forever (stopped by the host's CPU budget) |
//! | `oom` | allocates until linear memory runs out |
//! | `huge` | grows its accumulator by 4 MiB |
//! | `fs` | tries to read `/etc/hostname` and reports what happened |
//! | `env` | tries to read the environment and reports what it saw |
//! | `clock` | reports whether the wall clock reads a real time |
//!
//! The last three reject the record with a reason, so what the sandbox allowed
//! ends up in the dead-letter topic for the test to read.

use serde::{Deserialize, Serialize};
use weir_sdk::{Aggregator, Window, Windowing};

/// A record value.
#[derive(Debug, Deserialize)]
pub struct Act {
    /// What to do.
    pub act: String,
}

/// Per-window state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Count {
    /// Records counted.
    pub count: u64,
    /// Ballast for `huge`.
    pub ballast: Vec<u8>,
}

/// Output value.
#[derive(Debug, Serialize)]
pub struct CountOut {
    /// The key.
    pub key: String,
    /// Window start.
    pub window_start: i64,
    /// Records counted.
    pub count: u64,
}

/// The fixture.
pub struct Hostile;

impl Aggregator for Hostile {
    const WINDOWING: Windowing = Windowing::tumbling_ms(1_000);
    type Input = Act;
    type Acc = Count;
    type Output = CountOut;

    fn validate(input: &Act) -> Result<(), String> {
        match input.act.as_str() {
            "fs" => match std::fs::read_to_string("/etc/hostname") {
                Ok(text) => Err(format!("SANDBOX BREACH: read /etc/hostname = {text:?}")),
                Err(e) => Err(format!("file access denied: {e}")),
            },
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                if vars.is_empty() {
                    Err("environment is empty".into())
                } else {
                    Err(format!("SANDBOX BREACH: environment has {vars:?}"))
                }
            }
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if now < 1_000_000 {
                    Err(format!("clock is frozen at {now} s"))
                } else {
                    Err(format!("SANDBOX BREACH: wall clock reads {now} s"))
                }
            }
            _ => Ok(()),
        }
    }

    fn add(acc: &mut Count, input: &Act) {
        match input.act.as_str() {
            #[allow(clippy::panic)] // The point of this fixture.
            "trap" => panic!("poison record"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "huge" => acc.ballast.resize(acc.ballast.len() + (4 << 20), 7),
            _ => acc.count += 1,
        }
    }

    fn finish(key: &str, window: Window, acc: &Count) -> Option<CountOut> {
        Some(CountOut { key: key.to_owned(), window_start: window.start, count: acc.count })
    }
}

weir_sdk::export!(Hostile);
