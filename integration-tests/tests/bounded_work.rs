//! Issue 9 item 5, bounded work per request, on real NATS and a real assigner:
//!
//! * a fixed job over `1..=2^64−2` with partition size 1 holds no more partition keys in KV than
//!   `[assigner] max_job_backlog`, while a smaller fixed job larger than the bound still completes
//!   exactly (every ID once).

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_testkit::wait_until;
use elk_types::IdRange;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// Partition keys of `job` in the partitions bucket (deleted keys are not listed).
async fn partition_keys(stack: &Stack, job: &str) -> usize {
    let keys = stack.resources.partitions.keys().await.unwrap();
    let keys: Vec<String> = futures::TryStreamExt::try_collect(keys).await.unwrap();
    let prefix = format!("{job}.");
    keys.iter().filter(|key| key.starts_with(&prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_fixed_job_holds_at_most_the_backlog_bound_of_keys() {
    const BOUND: u64 = 100;
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner_configured(&stack.url(), "assigner-1", Arc::default(), |s| {
        s.max_job_backlog = BOUND;
    });
    // No worker processes `vast`: nothing of it completes, so its cut partitions all stay. (Its
    // name sorts after `small`: grantable partitions are offered to the fleet in key order, and
    // a job no worker processes would hold the first slots of the round's active set.)
    let vast = stack
        .create_job("vast", IdRange::new(1, u64::MAX - 1).unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(vast.partitions_total, 0);
    wait_until("vast is cut up to the bound", DEADLINE, || async {
        stack
            .job("vast")
            .await
            .unwrap()
            .is_some_and(|job| job.partitions_total == BOUND)
    })
    .await
    .unwrap();

    // A job of 300 partitions, three times the bound, runs meanwhile (and drives many rounds).
    let range = IdRange::new(1, 3_000).unwrap();
    let ledger = Ledger::new(range);
    let worker = stack
        .worker_with("worker-1", 4, &["small"], RecordingProcessor::new(ledger.clone()))
        .await
        .unwrap();
    stack.create_job("small", range, 10).await.unwrap();
    let peak_small = AtomicUsize::new(0);
    wait_until("small completes", DEADLINE, || async {
        peak_small.fetch_max(partition_keys(&stack, "small").await, Ordering::SeqCst);
        let job = stack.job("small").await.unwrap().unwrap();
        job.state == elk_protocol::messages::JobState::Completed
    })
    .await
    .unwrap();
    let small = stack.job("small").await.unwrap().unwrap();
    assert_eq!((small.partitions_total, small.partitions_completed), (300, 300));
    assert_eq!(small.ids_completed, 3_000);
    assert!(ledger.missing().is_empty(), "missing: {:?}", ledger.missing());
    assert!(ledger.duplicates().is_empty(), "{:?}", ledger.duplicates());
    let peak_small = peak_small.into_inner() as u64;
    assert!(peak_small <= BOUND, "small held {peak_small} keys");

    // Dozens of rounds later, `vast` still has exactly the bound: cut no further.
    let vast = stack.job("vast").await.unwrap().unwrap();
    assert_eq!(vast.partitions_total, BOUND);
    assert_eq!(vast.cursor, BOUND + 1);
    assert_eq!(partition_keys(&stack, "vast").await as u64, BOUND);

    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}
