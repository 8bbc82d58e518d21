//! Why a coverage operation was refused. Every refusal leaves the coverage unchanged.

use crate::range::IdRange;
use std::fmt;

/// What already covers some ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoveredBy {
    /// Every id from the start up to the low watermark is completed.
    Watermark,
    /// A completed interval above the watermark.
    Completed,
    /// A live partition (created, not completed).
    Live,
}

/// A new range would cover ids that are already covered: processing it would duplicate work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Overlap {
    /// The refused range.
    pub range: IdRange,
    /// One existing coverage entry that intersects it.
    pub existing: IdRange,
    pub covered_by: CoveredBy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoverageError {
    /// The range starts before the first id of the job's space.
    BeforeStart { range: IdRange, start: u64 },
    /// The range overlaps existing coverage.
    Overlap(Overlap),
    /// `complete` or `remove_live` of a range that is not exactly a live partition.
    NotLive { range: IdRange },
}

impl fmt::Display for CoverageError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BeforeStart { range, start } => {
                write!(
                    formatter,
                    "range {range} starts before the first id {start}"
                )
            }
            Self::Overlap(overlap) => write!(
                formatter,
                "range {} overlaps {} range {}",
                overlap.range,
                match overlap.covered_by {
                    CoveredBy::Watermark => "watermark",
                    CoveredBy::Completed => "completed",
                    CoveredBy::Live => "live",
                },
                overlap.existing
            ),
            Self::NotLive { range } => write!(formatter, "range {range} is not a live partition"),
        }
    }
}

impl std::error::Error for CoverageError {}

/// A persisted record that breaks the coverage invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidRecord {
    /// The watermark is below the start (it must cover at least the first id).
    WatermarkBeforeStart { low_watermark: u64, start: u64 },
    /// A range starts before the first id.
    BeforeStart { range: IdRange, start: u64 },
    /// Some ids are covered twice (the first such run is reported; `CoverageRecord::audit`
    /// lists all of them).
    Overlap { ids: IdRange },
}

impl fmt::Display for InvalidRecord {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WatermarkBeforeStart {
                low_watermark,
                start,
            } => write!(
                formatter,
                "invalid coverage record: low watermark {low_watermark} is before the first id {start}"
            ),
            Self::BeforeStart { range, start } => write!(
                formatter,
                "invalid coverage record: range {range} starts before the first id {start}"
            ),
            Self::Overlap { ids } => {
                write!(
                    formatter,
                    "invalid coverage record: ids {ids} are covered twice"
                )
            }
        }
    }
}

impl std::error::Error for InvalidRecord {}
