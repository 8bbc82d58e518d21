//! The wire contract of ELK Coordinator: every subject, bucket and key name ([`names`]) and every
//! message exchanged over NATS ([`messages`]), encoded as MessagePack with named fields
//! ([`codec`]).
//!
//! Every message carries a `schema` field. Fields may be added within a schema version (decoders
//! ignore unknown fields and new fields get defaults); an incompatible change bumps
//! [`SCHEMA_VERSION`] and older decoders refuse the message instead of misreading it.

pub mod admin;
pub mod codec;
pub mod messages;
pub mod names;

pub use codec::{DecodeError, decode, encode};

/// Schema version written into every message by this build.
pub const SCHEMA_VERSION: u16 = 1;
