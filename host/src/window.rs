//! Event-time windows: which windows a timestamp falls into. Pure arithmetic, no I/O.
//!
//! Windows are aligned to the Unix epoch and half-open: a window contains
//! `start <= t < end`. Tumbling windows are hopping windows whose advance equals
//! their size. Negative timestamps have no windows (records without a usable event
//! time are rejected before they get here).

use thiserror::Error;
pub use weir_abi::Window;

/// A window definition that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WindowError {
    /// Size or advance is zero or too large.
    #[error("window size and advance must be between 1 ms and {max} ms (size {size}, advance {advance})")]
    OutOfRange {
        /// Requested size.
        size: u64,
        /// Requested advance.
        advance: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// Windows would leave gaps.
    #[error("window advance ({advance} ms) must not exceed its size ({size} ms)")]
    Gaps {
        /// Requested size.
        size: u64,
        /// Requested advance.
        advance: u64,
    },
}

/// Fixed-size windows starting every `advance` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    size: i64,
    advance: i64,
}

/// Upper bound on sizes, so that `start + size` never overflows: ~292 years.
const MAX_MS: u64 = 1 << 53;

impl Windowing {
    /// Hopping windows of `size_ms`, one starting every `advance_ms`.
    pub fn hopping(size_ms: u64, advance_ms: u64) -> Result<Self, WindowError> {
        if size_ms == 0 || advance_ms == 0 || size_ms > MAX_MS || advance_ms > MAX_MS {
            return Err(WindowError::OutOfRange { size: size_ms, advance: advance_ms, max: MAX_MS });
        }
        if advance_ms > size_ms {
            return Err(WindowError::Gaps { size: size_ms, advance: advance_ms });
        }
        Ok(Self { size: size_ms as i64, advance: advance_ms as i64 })
    }

    /// Back-to-back windows of `size_ms`.
    pub fn tumbling(size_ms: u64) -> Result<Self, WindowError> {
        Self::hopping(size_ms, size_ms)
    }

    /// Window length in milliseconds.
    pub fn size_ms(&self) -> i64 {
        self.size
    }

    /// Distance between window starts in milliseconds.
    pub fn advance_ms(&self) -> i64 {
        self.advance
    }

    /// The windows containing `ts`, in ascending order of start.
    pub fn windows_for(&self, ts: i64) -> impl Iterator<Item = Window> + use<> {
        let (size, advance) = (self.size, self.advance);
        let last_start = if ts < 0 { -1 } else { ts - ts.rem_euclid(advance) };
        // The earliest start still containing ts, clamped at the epoch.
        let lowest = (ts - size + 1).max(0);
        let first_start = if last_start < 0 { 0 } else { last_start - ((last_start - lowest) / advance) * advance };
        let count = if last_start < first_start { 0 } else { (last_start - first_start) / advance + 1 };
        (0..count).map(move |i| {
            let start = first_start + i * advance;
            Window { start, end: start + size }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stock_stats_windows() {
        let w = Windowing::hopping(5_000, 1_000).unwrap();
        let got: Vec<_> = w.windows_for(12_345).map(|w| (w.start, w.end)).collect();
        assert_eq!(got, vec![(8_000, 13_000), (9_000, 14_000), (10_000, 15_000), (11_000, 16_000), (12_000, 17_000)]);
        // Start inclusive, end exclusive.
        let at_boundary: Vec<_> = w.windows_for(13_000).map(|w| w.start).collect();
        assert_eq!(at_boundary, vec![9_000, 10_000, 11_000, 12_000, 13_000]);
    }

    #[test]
    fn windows_do_not_start_before_the_epoch() {
        let w = Windowing::hopping(5_000, 1_000).unwrap();
        let got: Vec<_> = w.windows_for(1_500).map(|w| w.start).collect();
        assert_eq!(got, vec![0, 1_000]);
        assert_eq!(w.windows_for(-1).count(), 0);
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert_eq!(Windowing::hopping(1_000, 5_000), Err(WindowError::Gaps { size: 1_000, advance: 5_000 }));
        assert!(matches!(Windowing::hopping(0, 0), Err(WindowError::OutOfRange { .. })));
    }

    proptest! {
        /// Compared with a brute-force scan of every epoch-aligned start.
        #[test]
        fn windows_match_brute_force(size in 1i64..5_000, advance_frac in 1i64..=100, ts in 0i64..100_000) {
            let advance = (size * advance_frac / 100).max(1);
            let w = Windowing::hopping(size as u64, advance as u64).unwrap();
            let got: Vec<_> = w.windows_for(ts).collect();
            let mut want = Vec::new();
            let mut start = 0;
            while start <= ts {
                if start + size > ts {
                    want.push(Window { start, end: start + size });
                }
                start += advance;
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn tumbling_windows_partition_time(size in 1i64..10_000, ts in 0i64..1_000_000_000) {
            let w = Windowing::tumbling(size as u64).unwrap();
            let got: Vec<_> = w.windows_for(ts).collect();
            prop_assert_eq!(got.len(), 1);
            prop_assert!(got[0].start <= ts && ts < got[0].end);
            prop_assert_eq!(got[0].start % size, 0);
        }
    }
}
