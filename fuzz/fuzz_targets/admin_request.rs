//! Admin requests: what any client may send on `elk.<ns>.admin.assigner.<verb>`, decoded by the
//! assigner leader (every command and its fields).
#![no_main]

use elk_protocol::admin::AdminRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    elk_fuzz::decode_round_trip::<AdminRequest>(data);
});
