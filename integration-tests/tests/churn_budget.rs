//! Issue 14 item 4 on a real nats-server: the churn budget. Two workers hold every slot of a
//! 16-partition job when two more join; with `max_moves_per_round = 2` the assigner hands the
//! newcomers their share in waves of at most 2 revokes (read from the exported
//! `elk_assigner_rebalance_moves` histogram), defers the rest (`..._deferred_total`), ends with
//! the fleet balanced, and the job completes with every ID exactly once under the ownership
//! auditor.

use elk_assigner::{AssignerMetrics, RebalanceSettings};
use elk_integration_tests::scrape::{http_get, sample};
use elk_integration_tests::{Ledger, RecordingProcessor, Stack, assert_invariants};
use elk_nats::PartitionQuery;
use elk_protocol::messages::PartitionStatus;
use elk_testkit::wait_until;
use elk_types::{IdRange, JobName};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const JOB: &str = "churn";
const CAP: u64 = 2;

/// Granted partitions per owner and how many are pending or revoking, read through the admin API.
async fn placement(stack: &Stack) -> anyhow::Result<(BTreeMap<String, u64>, usize)> {
    let page = stack
        .admin_client()
        .list_partitions(PartitionQuery {
            job: Some(JobName::new(JOB)?),
            statuses: vec![
                PartitionStatus::Pending,
                PartitionStatus::Granted,
                PartitionStatus::Revoking,
            ],
            after: None,
            limit: None,
        })
        .await?;
    let mut held = BTreeMap::new();
    let mut moving = 0;
    for partition in page.partitions {
        match (partition.status, partition.owner) {
            (PartitionStatus::Granted, Some(owner)) => {
                *held.entry(owner.id.to_string()).or_insert(0) += 1;
            }
            _ => moving += 1,
        }
    }
    Ok((held, moving))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_under_a_churn_budget_moves_at_most_the_cap_per_round() {
    let stack = Stack::new().await.unwrap().with_endpoints();
    let audit = elk_testkit::OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let metrics = Arc::new(AssignerMetrics::default());
    let assigner =
        stack.assigner_configured(&stack.url(), "assigner-1", metrics.clone(), |settings| {
            settings.rebalance = RebalanceSettings {
                max_moves_per_round: Some(CAP),
                max_moves_fraction: None,
            };
        });
    // 16 partitions = the 16 slots of two workers of capacity 4 (× 2 grants each): nothing is
    // pending when the newcomers join, so their share can only come from rebalancing moves —
    // 8 of them, at least 4 waves under the cap.
    let range = IdRange::new(1, 160_000).unwrap();
    let ledger = Ledger::new(range);
    // ~1,000 IDs a second per partition: a partition takes ~10 s, far longer than the waves.
    let processor = || RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(100));
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        workers.push(stack.worker(name, 4, processor()).await.unwrap());
    }
    stack.create_job(JOB, range, 10_000).await.unwrap();
    wait_until("the job is running", Duration::from_secs(30), || async {
        ledger.processed() > 1_000
    })
    .await
    .unwrap();

    for name in ["worker-c", "worker-d"] {
        workers.push(stack.worker(name, 4, processor()).await.unwrap());
    }
    // Balanced: every live partition granted, none in a hand-over, the four workers within one
    // partition of each other (equal capacities), before the job's partitions start completing.
    wait_until("the fleet is balanced", Duration::from_secs(60), || async {
        let Ok((held, moving)) = placement(&stack).await else {
            return false;
        };
        let total: u64 = held.values().sum();
        let (low, high) = (held.values().min(), held.values().max());
        moving == 0
            && held.len() == 4
            && total >= 12
            && high.zip(low).is_some_and(|(high, low)| high - low <= 1)
    })
    .await
    .unwrap();

    // Every round that moved, moved at most CAP: the exported histogram's samples all fall in
    // the `le="2"` bucket, and its sum is every rebalancing revoke.
    let address = metrics.endpoint.wait().await;
    let text = http_get(address, "/metrics", &[]).await.unwrap().body;
    let series = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"));
    let rounds = series("elk_assigner_rebalance_moves_count");
    let moved = metrics.revocations_by("rebalance");
    assert!(moved >= 8, "the newcomers' share came by moves: {moved}");
    assert_eq!(series("elk_assigner_rebalance_moves_sum") as u64, moved);
    assert_eq!(
        series(&format!(
            "elk_assigner_rebalance_moves_bucket{{le=\"{CAP}\"}}"
        )),
        rounds,
        "a round moved more than {CAP}"
    );
    assert!(
        moved as f64 <= CAP as f64 * rounds,
        "{moved} moves in {rounds} rounds"
    );
    assert!(
        metrics.rebalance_moves_deferred.get() > 0,
        "nothing deferred"
    );
    assert_eq!(
        series("elk_assigner_rebalance_moves_deferred_total") as u64,
        metrics.rebalance_moves_deferred.get()
    );
    eprintln!(
        "churn budget: {moved} rebalancing moves in {rounds} rounds (cap {CAP}), {} deferred",
        metrics.rebalance_moves_deferred.get()
    );

    let job = stack
        .wait_job_completed(JOB, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(job.ids_completed, 160_000);
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
    assert_eq!(metrics.progress_reports("rejected"), 0);
    assert_invariants(&audit, JOB, &ledger).await;
    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    assigner.stop().await;
    election.stop().await;
}
