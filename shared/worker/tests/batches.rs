//! Progress batches: a worker coalesces the reports queued at the same moment into one message
//! only once its assignment record says the assigner accepts batches (`progress_batches`).

mod support;

use elk_protocol::messages::ProgressEvent;
use elk_testkit::wait_until;
use std::collections::BTreeSet;
use std::time::Duration;
use support::{DEADLINE, Harness, RecordingProcessor, grant, record};

const PARTITIONS: u64 = 8;

/// Runs `PARTITIONS` long partitions on one worker (record with `progress_batches` as given),
/// shuts it down and returns the stream sequences of the messages that carried its releases,
/// and the worker's (reports published, messages published).
async fn releases_at_shutdown(progress_batches: bool) -> (BTreeSet<u64>, (u64, u64)) {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(1));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(PARTITIONS as u32)
        .start(processor)
        .await
        .unwrap();
    let grants = (1..=PARTITIONS)
        .map(|partition| grant(partition, 1, 1_000_000, 1))
        .collect();
    let mut assignment = record(worker.incarnation(), 1, 1, grants);
    assignment.progress_batches = progress_batches;
    harness.assign("w1", &assignment).await;
    wait_until("every partition running", DEADLINE, || async {
        (1..=PARTITIONS).all(|partition| recorder.processed_count(partition) > 0)
    })
    .await
    .unwrap();

    let stats = worker.shutdown().await.unwrap();
    let partitions: Vec<u64> = (1..=PARTITIONS).collect();
    harness.wait_for_terminal(&partitions).await;
    let carriers = harness
        .reports()
        .into_iter()
        .filter(|received| matches!(received.report.event, ProgressEvent::Released { .. }))
        .map(|received| received.message_seq)
        .collect();
    (carriers, (stats.reports_published, stats.progress_messages))
}

#[tokio::test]
async fn with_batches_accepted_the_releases_at_shutdown_travel_in_one_message() {
    let (carriers, (reports, messages)) = releases_at_shutdown(true).await;
    assert_eq!(carriers.len(), 1, "one message carried every release");
    assert!(
        messages < reports,
        "fewer messages ({messages}) than reports ({reports})"
    );
}

#[tokio::test]
async fn without_batches_accepted_every_report_is_its_own_message() {
    let (carriers, (reports, messages)) = releases_at_shutdown(false).await;
    assert_eq!(
        carriers.len(),
        PARTITIONS as usize,
        "one message per release"
    );
    assert_eq!(messages, reports);
}
