//! The planner exchange: requests a planner (`elk_worker::serve_planner`) decodes from
//! `elk.<ns>.plan.<job>`, and replies the assigner decodes. The first byte picks the kind.
#![no_main]

use elk_fuzz::{decode_round_trip, select};
use elk_protocol::admin::{PlanReply, PlanRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 2) else {
        return;
    };
    match kind {
        0 => decode_round_trip::<PlanRequest>(bytes),
        _ => decode_round_trip::<PlanReply>(bytes),
    }
});
