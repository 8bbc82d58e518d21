//! Progress reports: what any client may publish on `elk.<ns>.progress.<worker>`, decoded by the
//! assigner leader.
#![no_main]

use elk_protocol::messages::ProgressReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    elk_fuzz::decode_round_trip::<ProgressReport>(data);
});
