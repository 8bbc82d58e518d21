//! Core value types of ELK Coordinator: identifiers, epochs, revisions and ID ranges.
//!
//! Everything here is plain data: no async, no I/O. Identifiers that end up inside NATS subjects or
//! KV keys (namespaces, job names, member ids) are validated at construction as subject tokens
//! (`[A-Za-z0-9_-]`, 1..=64 characters) so that a `.`, `*` or `>` can never turn into a wildcard.

pub mod btree;
mod ids;
mod range;

pub use ids::{
    Capacity, Epoch, Exhausted, Generation, Incarnation, InvalidToken, JobName, MemberId,
    Namespace, PartitionId, PartitionLeaseToken, Revision, ViewSeq,
};
pub use range::{IdRange, InvalidRange};
