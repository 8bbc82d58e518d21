//! Which ids of a job are done, in progress, or missing: the assigner's gap and overlap
//! detection.
//!
//! A job's id space starts at a known id and grows as the planner creates partitions. Its
//! [`Coverage`] holds:
//! - a **low watermark**: every id from the start up to it is completed;
//! - the **completed intervals** above the watermark, merged, and absorbed into the watermark as
//!   soon as they reach it;
//! - the **live partitions**: created and not yet completed.
//!
//! | operation | cost |
//! |---|---|
//! | [`Coverage::insert_live`], [`Coverage::complete`], [`Coverage::remove_live`] | `O(log n)` |
//! | [`Coverage::check_new`]: gap and overlap detection for a new partition | `O(log n)` |
//! | [`Coverage::audit`]: every gap up to an id | `O(n)` |
//!
//! `n` is the number of entries held: live partitions plus the completed runs they separate, so
//! memory follows live work, not history. The predecessor scanned its whole sorted range list for
//! each new partition (`O(n)` each, quadratic per round) and never forgot a completed range.
//!
//! `Coverage` serializes (serde) as a [`CoverageRecord`] for the assigner's KV record, and
//! refuses to deserialize a record that breaks its invariants; [`CoverageRecord::audit`] then
//! lists the gaps and overlaps of the broken record.
//!
//! ```
//! use elk_coverage::{Coverage, CoverageError, IdRange, IdState};
//!
//! let range = |min, max| IdRange::new(min, max).unwrap();
//! let mut coverage = Coverage::new(0);
//!
//! // The planner creates partitions; each one is checked before it is written.
//! for first in (0..1_000).step_by(100) {
//!     assert_eq!(coverage.insert_live(range(first, first + 99)), Ok(None));
//! }
//! // Workers complete them in any order.
//! coverage.complete(range(100, 199)).unwrap();
//! coverage.complete(range(0, 99)).unwrap();
//! assert_eq!(coverage.low_watermark(), Some(199));
//! assert_eq!(coverage.id_state(150), IdState::Completed);
//! assert_eq!(coverage.id_state(250), IdState::Live);
//!
//! // A partition re-created over processed ids is an overlap, not a duplicate run.
//! let refused = coverage.insert_live(range(150, 249));
//! assert!(matches!(refused, Err(CoverageError::Overlap(_))));
//!
//! // Persisted and restored through serde.
//! let json = serde_json::to_string(&coverage).unwrap();
//! let restored: Coverage = serde_json::from_str(&json).unwrap();
//! assert_eq!(restored, coverage);
//! assert!(restored.audit(999).is_clean());
//! ```

mod audit;
mod coverage;
mod error;
mod range;

pub use audit::{Audit, CoverageRecord};
pub use coverage::{Coverage, IdState};
pub use error::{CoverageError, CoveredBy, InvalidRecord, Overlap};
pub use range::{IdRange, InvalidRange};
