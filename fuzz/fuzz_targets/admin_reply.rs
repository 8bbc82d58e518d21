//! Admin replies: what `elkctl`, the HTTP bridge and every `AdminClient` decode from whoever
//! answered on the admin subject (both schema 1 and 2 errors).
#![no_main]

use elk_protocol::admin::AdminReply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    elk_fuzz::decode_round_trip::<AdminReply>(data);
});
