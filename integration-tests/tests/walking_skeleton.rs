//! Issue 2 scenarios: a job through the whole stack on real NATS, and a graceful worker leave.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::decode;
use elk_protocol::messages::{DesiredWorkers, JobState};
use elk_protocol::names::DESIRED_WORKERS_KEY;
use elk_testkit::wait_until;
use elk_types::IdRange;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_process_every_id_exactly_once() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    // The scaler would drain idle workers before the job exists (scale-in drains first): the
    // fleet's three workers are its lower bound here, as every worker must get work.
    let scaler = stack.scaler_with(
        "scaler-1",
        elk_scaler::ScalerSettings {
            min_workers: 3,
            ..Default::default()
        },
        std::sync::Arc::default(),
    );
    let range = IdRange::new(1, 100_000).unwrap();
    let ledger = Ledger::new(range);
    let mut workers = Vec::new();
    for index in 1..=3 {
        // ~50 ms per partition (5 ms per 100 IDs): the job lasts about a second, so a worker that
        // sees its first assignment record late still gets work (unpaced, the whole job took
        // 0.25 s and a worker slow to start on a container backend got nothing: [96, 0, 4]).
        let processor = RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(5));
        workers.push(
            stack
                .worker(&format!("worker-{index}"), 2, processor)
                .await
                .unwrap(),
        );
    }

    // The job takes a fraction of a second: a worker not yet in the view would get nothing.
    stack
        .wait_workers_in_view(
            &["worker-1", "worker-2", "worker-3"],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let created = stack.create_job("skeleton", range, 1_000).await.unwrap();
    assert_eq!(created.state, JobState::Active);
    // The scaler, once designated, publishes a desired worker count derived from the backlog.
    wait_until("scaler publishes a desired worker count", Duration::from_secs(30), || async {
        let entry = elk_nats::read_entry(&stack.resources.fleet, DESIRED_WORKERS_KEY).await;
        matches!(entry, Ok(Some(ref e)) if decode::<DesiredWorkers>(&e.value).is_ok_and(|d| d.desired >= 1))
    })
    .await
    .unwrap();
    let job = stack
        .wait_job_completed("skeleton", Duration::from_secs(60))
        .await
        .unwrap();

    assert_eq!(job.partitions_total, 100);
    assert_eq!(job.partitions_completed, 100);
    assert_eq!(job.ids_completed, 100_000);
    assert!(
        ledger.missing().is_empty(),
        "missing ids: {:?}",
        &ledger.missing()[..10.min(ledger.missing().len())]
    );
    assert!(
        ledger.duplicates().is_empty(),
        "duplicated ids: {}",
        ledger.duplicates().len()
    );
    let mut completed_per_worker = Vec::new();
    for worker in &workers {
        let stats = worker.stats();
        assert_eq!(stats.partitions_failed, 0);
        completed_per_worker.push(stats.partitions_completed);
    }
    assert_eq!(completed_per_worker.iter().sum::<u64>(), 100);
    assert!(
        completed_per_worker.iter().all(|done| *done > 0),
        "every worker got work: {completed_per_worker:?}"
    );

    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    scaler.stop().await;
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_mid_job_hands_partitions_over_exactly() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 60_000).unwrap();
    let ledger = Ledger::new(range);
    // Paced so the job is still running when a worker leaves: ~10 ms per 100 IDs.
    let processor = || RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(10));
    let staying_a = stack.worker("worker-a", 2, processor()).await.unwrap();
    let staying_b = stack.worker("worker-b", 2, processor()).await.unwrap();
    let leaving = stack.worker("worker-c", 2, processor()).await.unwrap();

    stack.create_job("handover", range, 1_000).await.unwrap();
    wait_until(
        "worker-c is processing",
        Duration::from_secs(30),
        || async { ledger.processed() > 5_000 },
    )
    .await
    .unwrap();
    let leaving_stats_before = leaving.stats();
    leaving.shutdown().await.unwrap();
    assert!(
        leaving_stats_before.partitions_started > 0,
        "worker-c had work when it left"
    );

    // The departed worker's (empty) assignment record is pruned: one key per live worker.
    wait_until(
        "worker-c's assignment record is deleted",
        Duration::from_secs(30),
        || async {
            elk_nats::read_entry(&stack.resources.assignments, "worker-c")
                .await
                .is_ok_and(|entry| entry.is_none_or(|entry| entry.deleted))
        },
    )
    .await
    .unwrap();
    let job = stack
        .wait_job_completed("handover", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(job.ids_completed, 60_000);
    assert!(
        ledger.missing().is_empty(),
        "missing ids: {}",
        ledger.missing().len()
    );
    assert!(
        ledger.duplicates().is_empty(),
        "a graceful hand-over repeated {} ids",
        ledger.duplicates().len()
    );

    staying_a.shutdown().await.unwrap();
    staying_b.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}
