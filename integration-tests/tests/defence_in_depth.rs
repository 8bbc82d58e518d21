//! Issue 9 item 4 (defence in depth), the assigner's part: what a misconfigured server lets any
//! client write must not stop the leader or corrupt a job. Hostile writes are plain KV puts from a
//! raw client (the stack's own connection, no credentials needed on this server), against real
//! services on a real nats-server:
//!
//! * assignment records stamped with an epoch the assigner role never had, written before a
//!   leader starts and over a live worker's key while it runs: neither deposes the rightful leader
//!   (it re-reads the role lease, finds the epoch forged, and overwrites the record).
//!
//! The election's part (epochs, TTL-less keys, garbled leases) is
//! `services/election/tests/misconfigured.rs`.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::messages::{AssignmentRecord, RoleLease};
use elk_protocol::names::ControlRole;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_testkit::wait_until;
use elk_types::{Epoch, IdRange, Incarnation, ViewSeq};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn forged_record(epoch: u64) -> AssignmentRecord {
    AssignmentRecord {
        schema: SCHEMA_VERSION,
        incarnation: Incarnation(1),
        epoch: Epoch(epoch),
        seq: ViewSeq(1),
        grants: Vec::new(),
        drain: false,
    }
}

async fn assigner_epoch(stack: &Stack) -> Option<Epoch> {
    let entry = stack
        .resources
        .leases
        .entry(ControlRole::Assigner.lease_key())
        .await
        .ok()??;
    decode::<RoleLease>(&entry.value)
        .ok()
        .map(|lease| lease.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_a_forged_epoch_do_not_depose_the_leader() -> anyhow::Result<()> {
    let stack = Stack::new().await?;
    // Before any leader: a record "from the future" under a key no worker uses.
    let forged = encode(&forged_record(1 << 40));
    stack
        .resources
        .assignments
        .put("ghost", forged.clone().into())
        .await?;
    let _election = stack.election("election-1");
    let _assigner = stack.assigner("assigner-1");
    let ledger = Ledger::new(IdRange::new(1, 2_000)?);
    let _worker = stack
        .worker("worker-1", 2, RecordingProcessor::new(ledger.clone()))
        .await?;
    stack
        .create_job("first", IdRange::new(1, 1_000)?, 100)
        .await?;
    stack.wait_job_completed("first", DEADLINE).await?;
    let epoch = assigner_epoch(&stack)
        .await
        .expect("a leader was designated");
    assert!(epoch < Epoch(1 << 40));

    // While it leads: a forged record over the live worker's key (another incarnation, so the
    // worker ignores it). The leader's next write of that key meets it and must overwrite it.
    stack
        .resources
        .assignments
        .put("worker-1", forged.into())
        .await?;
    stack
        .create_job("second", IdRange::new(1_001, 2_000)?, 100)
        .await?;
    stack.wait_job_completed("second", DEADLINE).await?;
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());
    wait_until("the forged record is overwritten", DEADLINE, || async {
        let entry = stack.resources.assignments.entry("worker-1").await;
        entry.ok().flatten().is_some_and(|entry| {
            decode::<AssignmentRecord>(&entry.value).is_ok_and(|record| record.epoch == epoch)
        })
    })
    .await?;
    assert_eq!(
        assigner_epoch(&stack).await,
        Some(epoch),
        "the same term led throughout"
    );
    Ok(())
}
