//! Fault injection for tests: `WEIR_TEST_FAIL=<phase>:<count>` makes the named
//! phase of a commit fail its next `count` times (`<phase>` alone: always). The
//! phases are `render`, `changelog`, `flush`, `offsets`, `commit`, `commit-ack`
//! (the commit goes through but its answer is lost) and `store` (the local store
//! write after a commit). Unset, every check is one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable read once per process.
pub const FAIL_ENV: &str = "WEIR_TEST_FAIL";

struct Plan {
    phase: String,
    left: AtomicU64,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var(FAIL_ENV).ok()?;
        let (phase, count) = match spec.split_once(':') {
            Some((phase, count)) => (phase, count.parse().unwrap_or(u64::MAX)),
            None => (spec.as_str(), u64::MAX),
        };
        tracing::warn!(phase, count, "{FAIL_ENV}: failures will be injected");
        Some(Plan { phase: phase.to_owned(), left: AtomicU64::new(count) })
    })
    .as_ref()
}

/// Whether the test asked `phase` to fail now (consuming one failure).
pub fn hit(phase: &str) -> bool {
    let Some(plan) = plan() else { return false };
    if plan.phase != phase {
        return false;
    }
    let taken = plan.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
    if taken {
        tracing::warn!(phase, "{FAIL_ENV}: injecting a failure");
    }
    taken
}
