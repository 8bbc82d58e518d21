//! MessagePack encoding with named fields, plus schema-version checking on decode.

use crate::SCHEMA_VERSION;
use serde::{Serialize, de::DeserializeOwned};

/// A message of the protocol: it knows its schema version and how to name itself in errors.
pub trait Message: Serialize + DeserializeOwned {
    /// Short name used in logs and errors.
    const KIND: &'static str;
    /// Schema version carried by this instance.
    fn schema(&self) -> u16;
    /// Newest schema version of this message kind this build understands (and writes).
    const MAX_SCHEMA: u16 = SCHEMA_VERSION;
}

/// Why bytes could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed {kind} message: {source}")]
    Malformed {
        kind: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("{kind} message has schema version {found}; this build understands 1..={supported}")]
    UnsupportedSchema {
        kind: &'static str,
        found: u16,
        supported: u16,
    },
}

/// Encodes a message as MessagePack with named fields (a map), so fields can be added later.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    // Serializing plain data structs into a Vec cannot fail: no I/O, no non-string map keys.
    rmp_serde::to_vec_named(message).expect("protocol messages always serialize")
}

/// Deepest nesting of arrays and maps a decoder follows. The deepest message (an admin reply
/// listing partitions with their owners) nests 5 levels; rmp-serde's own limit (1,024) lets a
/// payload of nested arrays in an ignored field overflow a 2 MiB task stack in a debug build and
/// abort the process, so a message nested deeper than this is refused as malformed instead.
pub const MAX_NESTING: usize = 32;

/// Decodes and validates a message; any problem is an error, never a panic.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(MAX_NESTING);
    let message = M::deserialize(&mut deserializer).map_err(|source| DecodeError::Malformed {
        kind: M::KIND,
        source,
    })?;
    let found = message.schema();
    if found == 0 || found > M::MAX_SCHEMA {
        return Err(DecodeError::UnsupportedSchema {
            kind: M::KIND,
            found,
            supported: M::MAX_SCHEMA,
        });
    }
    Ok(message)
}
