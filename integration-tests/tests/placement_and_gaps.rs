//! Issue 3 in the running system: the assigner balances with the sticky placement engine (a
//! worker joining mid-job gets its share through revoke → release → grant, repeating nothing)
//! and audits coverage when it takes over (a partition key deleted by hand is re-created).

use elk_assigner::AssignerMetrics;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::names::Names;
use elk_testkit::wait_until;
use elk_types::{IdRange, JobName, PartitionId};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_mid_job_gets_its_share_without_repeats() {
    let stack = Stack::new().await.unwrap();
    // Follows every grant, release and expiry from before the workload starts.
    let audit = elk_testkit::OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let metrics = Arc::new(AssignerMetrics::default());
    let assigner = stack.assigner_with_metrics("assigner-1", metrics.clone());
    // 8 partitions = exactly the 8 slots of two workers (capacity 2 × 2 grants each): nothing is
    // pending when the newcomer joins, so its share can only come from revocations.
    let range = IdRange::new(1, 40_000).unwrap();
    let ledger = Ledger::new(range);
    // Paced (~10 ms per 100 IDs) so partitions are mid-flight when the newcomer joins.
    let processor = || RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(10));
    let first = stack.worker("worker-a", 2, processor()).await.unwrap();
    let second = stack.worker("worker-b", 2, processor()).await.unwrap();
    stack.create_job("scale-up", range, 5_000).await.unwrap();
    wait_until("the job is running", Duration::from_secs(30), || async {
        ledger.processed() > 500
    })
    .await
    .unwrap();

    let newcomer = stack.worker("worker-c", 2, processor()).await.unwrap();
    wait_until(
        "the newcomer is processing",
        Duration::from_secs(30),
        || async { newcomer.stats().partitions_started > 0 },
    )
    .await
    .unwrap();
    stack
        .wait_job_completed("scale-up", Duration::from_secs(120))
        .await
        .unwrap();

    assert!(
        ledger.missing().is_empty(),
        "missing {} ids",
        ledger.missing().len()
    );
    assert!(
        ledger.duplicates().is_empty(),
        "repeated {} ids",
        ledger.duplicates().len()
    );
    assert!(metrics.revocations() > 0, "the join rebalanced by revoking");
    assert_eq!(metrics.progress_reports("rejected"), 0);
    let released: u64 = [&first, &second]
        .iter()
        .map(|w| w.stats().partitions_released)
        .sum();
    assert!(
        released > 0,
        "revoked partitions were released by their owners"
    );

    // Every move was the placement engine's, and none overlapped or lost a checkpoint.
    elk_integration_tests::assert_invariants(&audit, "scale-up", &ledger).await;
    for worker in [first, second, newcomer] {
        worker.shutdown().await.unwrap();
    }
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_partition_key_is_found_by_the_audit_and_recreated() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let first_assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 10_000).unwrap();
    stack.create_job("repair", range, 1_000).await.unwrap();
    let job = JobName::new("repair").unwrap();
    let deleted_key = Names::partition_key(&job, PartitionId(4));
    wait_until(
        "partitions are created",
        Duration::from_secs(30),
        || async {
            elk_nats::read_entry(&stack.resources.partitions, &deleted_key)
                .await
                .is_ok_and(|e| e.is_some())
        },
    )
    .await
    .unwrap();
    // An operator deletes a partition key by hand, then the assigner fails over.
    stack
        .resources
        .partitions
        .purge(&deleted_key)
        .await
        .unwrap();
    let metrics = Arc::new(AssignerMetrics::default());
    let second_assigner = stack.assigner_with_metrics("assigner-2", metrics.clone());
    first_assigner.stop().await;
    wait_until(
        "the new leader repairs the gap",
        Duration::from_secs(30),
        || async { metrics.gaps_repaired.get() == 1 },
    )
    .await
    .unwrap();
    assert_eq!(metrics.gaps_detected.get(), 1);

    let ledger = Ledger::new(range);
    let worker = stack
        .worker("worker-a", 2, RecordingProcessor::new(ledger.clone()))
        .await
        .unwrap();
    let done = stack
        .wait_job_completed("repair", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        done.partitions_total, 10,
        "nine partitions left plus the repair"
    );
    assert!(
        ledger.missing().is_empty(),
        "missing {} ids",
        ledger.missing().len()
    );
    assert!(
        ledger.duplicates().is_empty(),
        "repeated {} ids",
        ledger.duplicates().len()
    );
    assert_eq!(metrics.overlaps_detected.get(), 0);

    worker.shutdown().await.unwrap();
    second_assigner.stop().await;
    election.stop().await;
}
