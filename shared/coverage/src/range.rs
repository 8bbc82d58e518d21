//! Inclusive id ranges `[min, max]`: the workspace's [`elk_types::IdRange`], re-exported so users
//! of this crate need no second import.

pub use elk_types::{IdRange, InvalidRange};

/// A range whose bounds the caller has already ordered (`min <= max`).
pub(crate) fn ordered(min: u64, max: u64) -> IdRange {
    debug_assert!(min <= max, "unordered range [{min}, {max}]");
    IdRange::new(min, max).expect("bounds are ordered")
}
