//! Progress messages: what any client may publish on `elk.<ns>.progress.<worker>`, decoded by the
//! assigner leader — a single report or a batch of them (`decode_progress`, protocol §4.3).
#![no_main]

use elk_protocol::messages::{ProgressBatch, ProgressReport, decode_progress};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_progress(data);
    elk_fuzz::decode_round_trip::<ProgressReport>(data);
    elk_fuzz::decode_round_trip::<ProgressBatch>(data);
});
