//! Compaction by range (lean write path, `services/assigner/src/model/range_purge.rs`): a job's
//! compacted partition keys are removed by one stream purge below a revision. Against a real
//! nats-server: the purge never takes a live key with it — a new leader taking over right after
//! range purges finds every running grant's key — and the job still completes exactly once with
//! every key gone. Where the server refuses a range purge, the assigner purges the keys one by one
//! and stops trying.

use elk_assigner::AssignerMetrics;
use elk_assigner::test_hooks::LeaderFaults;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack, assert_invariants};
use elk_nats::NatsConfig;
use elk_protocol::decode;
use elk_protocol::messages::{AssignmentRecord, JobRecord, PartitionRecord};
use elk_protocol::names::Names;
use elk_runtime::ServiceCommon;
use elk_testkit::{OwnershipAuditor, wait_until};
use elk_types::{IdRange, MemberId};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

/// Whether the job record counts `range` as completed (below the watermark or above it).
fn counted_completed(job: &JobRecord, range: IdRange) -> bool {
    job.low_watermark.is_some_and(|low| range.last() <= low)
        || job
            .completed_above_watermark
            .iter()
            .any(|done| done.first() <= range.first() && range.last() <= done.last())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_purges_keep_every_live_key_across_a_takeover() {
    let stack = Stack::new().await.unwrap();
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let first_metrics = Arc::new(AssignerMetrics::default());
    let first = stack.assigner_with_metrics("assigner-1", first_metrics.clone());
    let range = IdRange::new(1, 100_000).unwrap();
    let ledger = Ledger::new(range);
    let mut workers = Vec::new();
    for id in ["worker-a", "worker-b"] {
        // A pause per partition of 100 IDs: the job lasts long enough to be interrupted.
        let processor = RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(10));
        workers.push(stack.worker(id, 2, processor).await.unwrap());
    }
    stack.create_job("ranged", range, 100).await.unwrap();
    wait_until("compaction by range under way", DEADLINE, || async {
        first_metrics.kv_writes_of("partitions", "purge_range") >= 3
    })
    .await
    .unwrap();
    first.abort().await;

    // What a new leader reads: every grant of every worker's record still has its key, under
    // the grant's token, unless the job record counts it completed (the flush that purged it
    // may have stopped before the record dropping the grant was written).
    let job = stack.job("ranged").await.unwrap().unwrap();
    assert!(
        job.state != elk_protocol::messages::JobState::Completed,
        "interrupted mid-job"
    );
    let mut checked = 0;
    for worker in ["worker-a", "worker-b"] {
        let entry = elk_nats::read_entry(&stack.resources.assignments, worker)
            .await
            .unwrap()
            .unwrap();
        let record: AssignmentRecord = decode(&entry.value).unwrap();
        for grant in record.grants {
            if counted_completed(&job, grant.range) {
                continue;
            }
            let key = Names::partition_key(&grant.job, grant.partition);
            let stored = elk_nats::read_entry(&stack.resources.partitions, &key)
                .await
                .unwrap()
                .filter(|entry| !entry.deleted)
                .unwrap_or_else(|| panic!("the key of running grant {key} was purged"));
            let stored: PartitionRecord = decode(&stored.value).unwrap();
            assert_eq!(stored.token, grant.token, "{key}");
            checked += 1;
        }
    }
    assert!(checked > 0, "some grants were running at the kill");

    let standby_metrics = Arc::new(AssignerMetrics::default());
    let standby = stack.assigner_with_metrics("assigner-2", standby_metrics.clone());
    let job = stack.wait_job_completed("ranged", DEADLINE).await.unwrap();
    assert_eq!(
        (job.partitions_total, job.partitions_completed),
        (1_000, 1_000)
    );
    assert_eq!(job.ids_completed, range.len());
    for metrics in [&first_metrics, &standby_metrics] {
        assert_eq!(metrics.gaps_detected.get(), 0, "no live key went missing");
        assert_eq!(metrics.overlaps_detected.get(), 0);
    }
    wait_until("every key compacted", DEADLINE, || async {
        let keys = stack.resources.partitions.keys().await.unwrap();
        futures::StreamExt::count(keys).await == 0
    })
    .await
    .unwrap();
    let job = stack.job("ranged").await.unwrap().unwrap();
    assert_eq!(job.partitions_compacted, 1_000);
    assert_invariants(&audit, "ranged", &ledger).await;
    assert_eq!(ledger.duplicates(), Vec::<u64>::new());
    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    standby.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_range_purge_falls_back_to_key_purges_for_good() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let service = ServiceCommon::new(
        NatsConfig::new(stack.url(), "assigner-1"),
        stack.namespace.clone(),
        MemberId::new("assigner-1").unwrap(),
    )
    .with_member_ttl(stack.member_ttl);
    let faults = Arc::new(LeaderFaults::default());
    // As on a server whose permissions predate range purges.
    faults.refuse_range_purges();
    let metrics = Arc::new(AssignerMetrics::default());
    let stop = CancellationToken::new();
    let run = elk_assigner::run_with_faults(
        elk_assigner::AssignerConfig::new(service),
        metrics.clone(),
        faults,
        stop.clone().cancelled_owned(),
    );
    let assigner = tokio::spawn(async move { run.await.expect("assigner runs") });
    let range = IdRange::new(1, 10_000).unwrap();
    let ledger = Ledger::new(range);
    let worker = stack
        .worker("worker-a", 4, RecordingProcessor::new(ledger.clone()))
        .await
        .unwrap();
    stack.create_job("refused", range, 100).await.unwrap();
    stack.wait_job_completed("refused", DEADLINE).await.unwrap();
    wait_until("every key compacted", DEADLINE, || async {
        let keys = stack.resources.partitions.keys().await.unwrap();
        futures::StreamExt::count(keys).await == 0
    })
    .await
    .unwrap();
    // One refused attempt (the first round with compactions, one job), then every compacted key
    // by itself: 100 key purges, the refused range's keys included.
    assert_eq!(metrics.kv_writes_of("partitions", "purge_range"), 1);
    assert_eq!(metrics.kv_writes_of("partitions", "purge"), 100);
    let job = stack.job("refused").await.unwrap().unwrap();
    assert_eq!(job.partitions_compacted, 100);
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());
    worker.shutdown().await.unwrap();
    stop.cancel();
    assigner.await.unwrap();
    election.stop().await;
}
