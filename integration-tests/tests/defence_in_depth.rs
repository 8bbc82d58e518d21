//! Issue 9 item 4 (defence in depth), the assigner's part: what a misconfigured server lets any
//! client write must not stop the leader or corrupt a job. Hostile writes are plain KV puts from a
//! raw client (the stack's own connection, no credentials needed on this server), against real
//! services on a real nats-server:
//!
//! * assignment records stamped with an epoch the assigner role never had, written before a
//!   leader starts and over a live worker's key while it runs: neither deposes the rightful leader
//!   (it re-reads the role lease, finds the epoch forged, and overwrites the record);
//! * grant tokens: random (no two of a run close to each other), so a `completed` forged with a
//!   token next to an observed one is rejected;
//! * progress moving a checkpoint outside its grant's range (`checkpoint`, `released`, `failed`
//!   with the real token): refused and counted (`rejected`, `out_of_range`); the job completes
//!   with every ID processed exactly once.
//!
//! The election's part (epochs, TTL-less keys, garbled leases) is
//! `services/election/tests/misconfigured.rs`.

use elk_assigner::AssignerMetrics;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::messages::{AssignmentRecord, Grant, ProgressEvent, ProgressReport};
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_testkit::wait_until;
use elk_types::{Epoch, IdRange, Incarnation, MemberId, PartitionLeaseToken, ViewSeq};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
        revoking: Vec::new(),
        progress_batches: false,
    }
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
    let epoch = stack
        .assigner_epoch()
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
        stack.assigner_epoch().await,
        Some(epoch),
        "the same term led throughout"
    );
    Ok(())
}

/// Records every ID into a ledger, but only once the gate is open: until then its grants stay
/// granted, with their tokens, for the forged reports to aim at.
#[derive(Clone)]
struct Gated {
    ledger: Arc<Ledger>,
    gate: Arc<AtomicBool>,
}

impl Processor for Gated {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        for id in work.resume_from()..=work.range().last() {
            while !self.gate.load(Ordering::SeqCst) {
                if work.is_cancelled() {
                    return Ok(ProcessOutcome::Interrupted);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            self.ledger.record(id);
            work.checkpoint(id);
        }
        Ok(ProcessOutcome::Completed)
    }
}

async fn assignment(stack: &Stack, worker: &str) -> Option<AssignmentRecord> {
    let entry = stack.resources.assignments.entry(worker).await.ok()??;
    decode(&entry.value).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_unguessable_and_checkpoints_stay_inside_their_grant() -> anyhow::Result<()> {
    let stack = Stack::new().await?;
    let metrics = Arc::new(AssignerMetrics::default());
    // Every grant token written during the run.
    let tokens = Arc::new(Mutex::new(BTreeSet::new()));
    let mut watch = stack.resources.assignments.watch_all().await?;
    let seen = tokens.clone();
    let collector = tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            if let Ok(record) = decode::<AssignmentRecord>(&entry.value) {
                let mut seen = seen.lock().unwrap();
                seen.extend(record.grants.iter().map(|grant| grant.token.get()));
            }
        }
    });
    let _election = stack.election("election-1");
    let _assigner = stack.assigner_with_metrics("assigner-1", metrics.clone());
    let ledger = Ledger::new(IdRange::new(1, 2_000)?);
    let gate = Arc::new(AtomicBool::new(false));
    let processor = Gated {
        ledger: ledger.clone(),
        gate: gate.clone(),
    };
    let _worker = stack.worker_with("worker-1", 2, &[], processor).await?;
    stack
        .create_job("held", IdRange::new(1, 2_000)?, 100)
        .await?;
    wait_until("two grants held", DEADLINE, || async {
        assignment(&stack, "worker-1")
            .await
            .is_some_and(|record| record.grants.len() >= 2)
    })
    .await?;
    let record = assignment(&stack, "worker-1").await.unwrap();
    let (first, second): (&Grant, &Grant) = (&record.grants[0], &record.grants[1]);
    let names = &stack.resources.names;
    let subject = names.progress_subject(&MemberId::new("worker-1")?);
    let forge = |grant: &Grant, token: PartitionLeaseToken, event: ProgressEvent| ProgressReport {
        schema: SCHEMA_VERSION,
        worker: MemberId::new("worker-1").unwrap(),
        incarnation: record.incarnation,
        job: grant.job.clone(),
        partition: grant.partition,
        token,
        event,
    };
    let range = first.range;
    let mut forged = vec![
        // The real token, checkpoints outside the grant's range: refused.
        forge(
            first,
            first.token,
            ProgressEvent::Checkpoint {
                last_done: range.last() + 1,
            },
        ),
        forge(
            first,
            first.token,
            ProgressEvent::Checkpoint {
                last_done: range.first() - 1,
            },
        ),
        forge(
            first,
            first.token,
            ProgressEvent::Released {
                last_done: Some(u64::MAX),
            },
        ),
        forge(
            first,
            first.token,
            ProgressEvent::Failed {
                error: "forged".to_owned(),
                last_done: Some(range.last() + 100),
                permanent: true,
            },
        ),
    ];
    // Tokens next to an observed one, for the other held partition: with sequential tokens one
    // of them was that partition's.
    for guess in [
        first.token.get().wrapping_add(1),
        first.token.get().wrapping_sub(1),
    ] {
        forged.push(forge(
            second,
            PartitionLeaseToken(guess),
            ProgressEvent::Completed,
        ));
    }
    for report in &forged {
        stack
            .resources
            .jetstream
            .publish(subject.clone(), encode(report).into())
            .await?
            .await?;
    }
    wait_until("forged reports counted", DEADLINE, || async {
        metrics.progress_reason("rejected", "out_of_range") == 4
            && metrics.progress_reason("rejected", "stale_token") >= 2
    })
    .await?;
    assert_eq!(metrics.progress_reason("applied", "completed"), 0);
    let still = assignment(&stack, "worker-1").await.unwrap();
    assert!(
        still.grants.iter().any(|grant| grant.token == first.token)
            && still.grants.iter().any(|grant| grant.token == second.token),
        "both grants still held with their tokens"
    );

    gate.store(true, Ordering::SeqCst);
    stack.wait_job_completed("held", DEADLINE).await?;
    assert!(
        ledger.missing().is_empty(),
        "missing {:?}",
        ledger.missing()
    );
    assert!(ledger.duplicates().is_empty());
    collector.abort();
    let tokens: Vec<u64> = tokens.lock().unwrap().iter().copied().collect();
    assert!(tokens.len() >= 20, "one token per grant: {}", tokens.len());
    let closest = tokens
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .min()
        .unwrap();
    assert!(
        closest > 1 << 32,
        "grant tokens too close to each other ({closest}): guessable"
    );
    Ok(())
}
