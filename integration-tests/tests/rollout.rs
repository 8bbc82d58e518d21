//! Issue 13, item 4: a rolling restart loses and repeats nothing. Every worker of a running fleet
//! is replaced one by one as `kubectl rollout restart` does (`maxSurge: 1`: the replacement joins,
//! then the old worker gets its SIGTERM, i.e. a graceful shutdown): the old worker releases its
//! partitions with their checkpoints and deletes its member key, so everything it held is granted
//! elsewhere at once — not after the member TTL — and the job completes with every ID exactly
//! once under the ownership auditor.
//! (`elk-bench rollout` is the measured version.)

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_testkit::{OwnershipAuditor, wait_until};
use elk_types::IdRange;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_repeats_and_loses_nothing() {
    // A long member TTL: a hand-over that waited for an expiry would stall the job visibly.
    let stack = Stack::new()
        .await
        .unwrap()
        .with_member_ttl(Duration::from_secs(10));
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 60_000).unwrap();
    let ledger = Ledger::new(range);
    let processor = RecordingProcessor::paced(ledger.clone(), 10, Duration::from_millis(5));
    let mut fleet = Vec::new();
    for index in 0..3 {
        let id = format!("worker-{index}-a");
        fleet.push(stack.worker(&id, 2, processor.clone()).await.unwrap());
    }
    stack.create_job("rollout", range, 1_000).await.unwrap();
    wait_until("the job is running", Duration::from_secs(60), || async {
        ledger.processed() > 5_000
    })
    .await
    .unwrap();
    let mut released = 0;
    for (index, slot) in fleet.iter_mut().enumerate() {
        let replacement = stack
            .worker(&format!("worker-{index}-b"), 2, processor.clone())
            .await
            .unwrap();
        let old = std::mem::replace(slot, replacement);
        let old_id = old.id().clone();
        released += old.shutdown().await.unwrap().partitions_released;
        // The old worker deleted its member key on the way out: the view drops it (and the
        // assigner re-grants whatever it still owned) well within the 10 s TTL.
        let admin = stack.admin_client();
        wait_until(
            "the old worker left the view",
            Duration::from_secs(5),
            || async {
                admin
                    .members()
                    .await
                    .is_ok_and(|members| members.members.iter().all(|m| m.id != old_id))
            },
        )
        .await
        .unwrap();
    }
    assert!(
        released > 0,
        "the restarted workers were running partitions"
    );
    stack
        .wait_job_completed("rollout", Duration::from_secs(120))
        .await
        .unwrap();
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
    elk_integration_tests::assert_invariants(&audit, "rollout", &ledger).await;
    for worker in fleet {
        worker.shutdown().await.unwrap();
    }
    assigner.stop().await;
    election.stop().await;
}
