//! Why a placement problem cannot be solved.

use std::fmt;

/// The input of `solve`, `min_moves` or `verify` is malformed. Terminal: retrying with the same
/// input fails the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// Two workers have the same id.
    DuplicateWorker {
        first_position: usize,
        duplicate_position: usize,
    },
    /// More workers than dense 32-bit indices can address.
    TooManyWorkers { count: usize },
    /// More partitions than dense 32-bit indices can address.
    TooManyPartitions { count: usize },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateWorker {
                first_position,
                duplicate_position,
            } => write!(
                formatter,
                "duplicate worker id: workers[{duplicate_position}] repeats workers[{first_position}]"
            ),
            Self::TooManyWorkers { count } => {
                write!(
                    formatter,
                    "too many workers: {count} (at most {})",
                    crate::index::MAX_WORKERS
                )
            }
            Self::TooManyPartitions { count } => write!(
                formatter,
                "too many partitions: {count} (at most {})",
                crate::index::MAX_PARTITIONS
            ),
        }
    }
}

impl std::error::Error for PlacementError {}
