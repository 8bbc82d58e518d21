//! Every KV record a component reads: members, the election lease, the membership view, role
//! leases, jobs, partitions, assignment records and the fleet's desired count. The first byte
//! picks the record kind.
#![no_main]

use elk_fuzz::{decode_round_trip, select};
use elk_protocol::messages::{
    AssignmentRecord, DesiredWorkers, ElectionLease, JobRecord, MemberRecord, MembershipView,
    PartitionRecord, RoleLease,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 8) else {
        return;
    };
    match kind {
        0 => decode_round_trip::<MemberRecord>(bytes),
        1 => decode_round_trip::<ElectionLease>(bytes),
        2 => decode_round_trip::<MembershipView>(bytes),
        3 => decode_round_trip::<RoleLease>(bytes),
        4 => decode_round_trip::<JobRecord>(bytes),
        5 => decode_round_trip::<PartitionRecord>(bytes),
        6 => decode_round_trip::<AssignmentRecord>(bytes),
        _ => decode_round_trip::<DesiredWorkers>(bytes),
    }
});
