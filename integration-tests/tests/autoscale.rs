//! Issue 13 in the running system: an in-process fleet follows the scaler as the worker
//! Deployment would (`elk_integration_tests::fleet`), and a scale-in drains first — the scaler
//! asks the assigner to drain the workers it removes, they hand their partitions back with
//! checkpoints, and only drained workers are stopped — so the job finishes with nothing repeated
//! or missing under the ownership auditor.

use elk_integration_tests::fleet::Fleet;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_scaler::{ScalerMetrics, ScalerSettings};
use elk_testkit::OwnershipAuditor;
use elk_types::IdRange;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fast scaler settings for a job of seconds: decide every 100 ms, drain the backlog within 3 s,
/// scale down to the highest recommendation of the last 1 s (none within 1 s of a scale-up), from
/// 0 up to 4 workers.
pub fn fast_scaler(max_workers: u32) -> ScalerSettings {
    ScalerSettings {
        interval: Duration::from_millis(100),
        min_workers: 0,
        max_workers,
        target_drain: Duration::from_secs(3),
        scale_down_window: Duration::from_secs(1),
        rate_smoothing: Duration::from_secs(2),
        ..ScalerSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_following_the_scaler_drains_before_removing_and_repeats_nothing() {
    let stack = Stack::new().await.unwrap();
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let scaler_metrics = Arc::new(ScalerMetrics::default());
    let scaler = stack.scaler_with("scaler-1", fast_scaler(4), scaler_metrics.clone());
    let range = IdRange::new(1, 120_000).unwrap();
    let ledger = Ledger::new(range);
    // ~2,000 IDs/s per running partition (5 ms every 10 IDs), 2 at once per worker.
    let processor = RecordingProcessor::paced(ledger.clone(), 10, Duration::from_millis(5));
    let mut fleet = Fleet::new("worker", 2, processor);
    stack.create_job("autoscaled", range, 1_000).await.unwrap();

    // The fleet's controller loop: follow fleet/desired until the job is done and the fleet is
    // back at zero (min_workers 0: the drained workers were retired).
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut completed = false;
    loop {
        tick.tick().await;
        fleet.follow(&stack).await.unwrap();
        if !completed {
            completed = stack
                .job("autoscaled")
                .await
                .unwrap()
                .is_some_and(|job| job.state == elk_protocol::messages::JobState::Completed);
        }
        if completed && fleet.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done in time: completed {completed}, {:?}",
            fleet.stats()
        );
    }
    let history: Vec<u32> = fleet.history().iter().map(|(_, n)| *n).collect();
    // One job, created before the first change: every reversal would be on the same load.
    let flaps = elk_integration_tests::fleet::flaps(fleet.history(), Duration::from_secs(1), &[]);
    let stats = fleet.shutdown().await.unwrap();
    println!("fleet: {stats:?}, replicas {history:?}");
    // Up while the backlog lasts, down after it: no reversal within a scale-down window.
    assert_eq!(flaps, 0, "the fleet flapped: replicas {history:?}");
    assert!(
        stats.peak >= 3,
        "the backlog scaled the fleet up: {stats:?}"
    );
    assert_eq!(
        stats.retired_stops, stats.started,
        "every worker left drained: {stats:?}"
    );
    assert_eq!(stats.unplanned_stops, 0, "no worker removed before drained");
    assert!(
        scaler_metrics
            .drain_requests
            .get_or_create(&[("op", "drain")])
            .get()
            >= stats.started
    );
    assert!(
        ledger.missing().is_empty(),
        "missing {}",
        ledger.missing().len()
    );
    assert!(
        ledger.duplicates().is_empty(),
        "repeated {} ids",
        ledger.duplicates().len()
    );
    elk_integration_tests::assert_invariants(&audit, "autoscaled", &ledger).await;
    scaler.stop().await;
    assigner.stop().await;
    election.stop().await;
}
