//! Pure, deterministic placement of partitions on workers: balanced by capacity, sticky, and
//! moving the fewest partitions possible. No I/O, no clock, no async.
//!
//! The goals, the definitions (quota, target, move, minimum moves) and the four phases of the
//! algorithm are described in the crate `README.md`, which is included below.
//!
//! Entry points:
//! - [`solve`]: the placement itself, `O(P + W log W)`;
//! - [`min_moves`]: the fewest moves any balanced solution needs, for benchmarks and tests;
//! - [`verify`]: every post-condition, checked after each `solve` in debug builds;
//! - [`quota`]: the integer bounds of one worker's quota.
//!
//! ```
//! use elk_placement::{Partition, Worker, solve};
//!
//! // Members and partition records as the assigner holds them.
//! let members: Vec<(String, u32)> = vec![("worker-1".into(), 1), ("worker-2".into(), 1)];
//! let records: Vec<(u64, Option<String>)> =
//!     vec![(10, Some("worker-1".into())), (11, Some("worker-1".into())), (12, None)];
//!
//! let workers: Vec<Worker<&str>> =
//!     members.iter().map(|(id, capacity)| Worker::new(id.as_str(), *capacity)).collect();
//! let partitions: Vec<Partition<&str>> =
//!     records.iter().map(|(id, owner)| Partition::new(*id, owner.as_deref())).collect();
//!
//! let assignment = solve(&workers, &partitions).unwrap();
//! for change in assignment.changes() {
//!     let partition_id = partitions[change.partition].id;
//!     let owner = change.owner.map(|position| workers[position].id);
//!     // revoke from change.previous_owner (if any), then grant to owner
//!     assert_eq!((partition_id, owner), (12, Some("worker-2")));
//! }
//! ```
//!
#![doc = include_str!("../README.md")]

mod assignment;
mod check;
mod error;
mod hash;
mod index;
mod model;
mod solve;

pub use assignment::{Assignment, Change, PreviousOwner};
pub use check::{Violation, min_moves, verify};
pub use error::PlacementError;
pub use model::{Partition, Quota, Worker, quota};
pub use solve::solve;
