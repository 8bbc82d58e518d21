//! The assigner's effects on KV: writing a round's [`crate::model::ChangeSet`] (`flush.rs`).
//! Reading the state a term starts from is the leader's (`crate::leader::load`).

mod flush;

pub(crate) use flush::{newer_term_exists, write_changes};
