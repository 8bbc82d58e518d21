//! Issue 14 item 1 on a real nats-server: a job whose first partition is slow (its IDs cost
//! ~1 ms each, the rest almost nothing) on four idle-able workers. Once the fast partitions are
//! done, the assigner revokes the straggler, re-cuts what lies above its checkpoint into pieces
//! and grants them to the idle workers. Every ID is processed exactly once (the processor
//! checkpoints every ID and stops at the revoke, so the remainder starts right after what it
//! finished), with invariants 1–5 under the ownership auditor.

use elk_assigner::{AssignerMetrics, TailSettings};
use elk_integration_tests::{Ledger, Stack, assert_invariants};
use elk_types::IdRange;
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor};
use std::sync::Arc;
use std::time::Duration;

/// IDs up to `slow_last` cost about 1 ms each (a 5 ms sleep every 5 IDs); the rest are free.
#[derive(Clone)]
struct SkewedProcessor {
    ledger: Arc<Ledger>,
    slow_last: u64,
}

impl Processor for SkewedProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            self.ledger.record(id);
            work.checkpoint(id);
            if id <= self.slow_last && id % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            } else if id % 512 == 0 {
                tokio::task::yield_now().await;
            }
        }
        Ok(ProcessOutcome::Completed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_partition_is_split_over_idle_workers_and_every_id_runs_once() {
    let stack = Stack::new().await.unwrap();
    let audit = elk_testkit::OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let metrics = Arc::new(AssignerMetrics::default());
    let assigner =
        stack.assigner_configured(&stack.url(), "assigner-1", metrics.clone(), |settings| {
            settings.tails = TailSettings {
                split: true,
                split_min_remaining: Duration::from_secs(2),
                observe_min: Duration::from_millis(600),
                split_min_ids: 200,
                ..TailSettings::default()
            };
        });
    // Four partitions of 10,000 IDs; the first takes ~10 s alone, the others well under 1 s.
    let range = IdRange::new(1, 40_000).unwrap();
    let ledger = Ledger::new(range);
    let processor = SkewedProcessor {
        ledger: ledger.clone(),
        slow_last: 10_000,
    };
    let mut workers = Vec::new();
    for index in 1..=4 {
        let worker = stack
            .worker_with(&format!("worker-{index}"), 1, &[], processor.clone())
            .await
            .unwrap();
        workers.push(worker);
    }
    stack.create_job("skewed", range, 10_000).await.unwrap();
    let job = stack
        .wait_job_completed("skewed", Duration::from_secs(120))
        .await
        .unwrap();

    // The straggler was split: revoked once at least, and its remainder cut into new partitions.
    assert!(metrics.revocations_by("split") >= 1, "no split revocation");
    assert!(
        job.partitions_total > 4,
        "no piece was cut: {} partitions",
        job.partitions_total
    );
    assert_eq!(job.partitions_completed, job.partitions_total);
    assert_eq!(job.ids_completed, 40_000);
    // The pieces ran on other workers than the straggler's.
    let busy = workers
        .iter()
        .filter(|worker| worker.stats().partitions_completed > 1)
        .count();
    assert!(busy >= 2, "pieces spread over the idle workers");
    // Exactly once: the remainder started right after the released checkpoint.
    assert!(
        ledger.missing().is_empty(),
        "missing {:?}",
        &ledger.missing()[..]
    );
    assert!(
        ledger.duplicates().is_empty(),
        "repeated {} ids",
        ledger.duplicates().len()
    );
    // The auditor saw the straggler's release (the split's hand-over) and every completion.
    let report = audit.check().await;
    assert!(report.releases_seen >= 1, "no release seen");
    assert_eq!(report.completions_seen, job.partitions_total);
    assert_invariants(&audit, "skewed", &ledger).await;

    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    assigner.stop().await;
    election.stop().await;
}
