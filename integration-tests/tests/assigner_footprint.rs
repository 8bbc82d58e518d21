//! What a live partition costs the assigner's model in heap bytes (issue 10 item 3: at most 300
//! bytes of assigner RSS per live partition). A logical cost, counted by a global allocator that
//! tracks the bytes allocated and not yet freed: deterministic, as this binary runs this one test
//! only (no other test allocates meanwhile). No NATS: the model is pure.

use cap::Cap;
use elk_assigner::test_hooks::ModelFixture;
use std::alloc::System;

#[global_allocator]
static HEAP: Cap<System> = Cap::new(System, usize::MAX);

const WORKERS: usize = 1_000;
const PARTITIONS: u64 = 100_000;
/// The bound: the heap the model holds per live granted partition, measured at 142.4 bytes
/// (200.8 with 16-byte names, a 16-byte `Option<u64>` checkpoint and revision and the job's
/// live ranges not repacked; 332.5 with whole `PartitionRecord`s in the table, 576.7 before the
/// tables were repacked).
const MAX_BYTES_PER_PARTITION: f64 = 160.0;

#[test]
fn a_live_granted_partition_costs_the_model_less_heap_than_the_bound() {
    let mut model = ModelFixture::new(WORKERS, PARTITIONS);
    let before = HEAP.allocated();
    // Until a round writes no partition (the cold start cuts and grants the job in one).
    while model.round() > 0 {}
    let after = HEAP.allocated();
    assert_eq!(model.live_partitions() as u64, PARTITIONS);
    let per_partition = after.saturating_sub(before) as f64 / PARTITIONS as f64;
    eprintln!(
        "model heap: {per_partition:.1} bytes per live partition ({} bytes for {PARTITIONS} partitions over {WORKERS} workers)",
        after.saturating_sub(before)
    );
    assert!(
        per_partition <= MAX_BYTES_PER_PARTITION,
        "{per_partition:.1} bytes per live partition, more than {MAX_BYTES_PER_PARTITION}"
    );
}
