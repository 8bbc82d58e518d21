//! Shared checks of the fuzz targets (`fuzz_targets/`): every decoder of untrusted input must
//! return an error for bad bytes, never panic, and what it accepts must survive a round trip.

use elk_protocol::codec::Message;
use elk_protocol::{decode, encode};
use std::fmt::Debug;

/// Decodes `bytes` as `M`; whatever decodes must encode and decode again to the same value (a
/// message the coordinator accepts is one it can also write back unchanged).
pub fn decode_round_trip<M: Message + PartialEq + Debug>(bytes: &[u8]) {
    let Ok(message) = decode::<M>(bytes) else {
        return;
    };
    let again = decode::<M>(&encode(&message))
        .unwrap_or_else(|error| panic!("{} re-encoded does not decode: {error}", M::KIND));
    assert_eq!(message, again, "{} changed in a round trip", M::KIND);
}

/// Splits the first byte off as a selector among `choices` decoders (each target covers several
/// message kinds without giving each its own binary).
pub fn select(data: &[u8], choices: usize) -> Option<(usize, &[u8])> {
    let (first, rest) = data.split_first()?;
    Some((usize::from(*first) % choices, rest))
}
