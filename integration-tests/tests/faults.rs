//! Issue 4 scenarios: faults injected into a running job, each checked against invariants 1–5
//! (coverage, no overlap, durable progress, fencing, bounded repetition) by the ownership auditor,
//! which follows grants, releases and member expiries from before the workload starts.

use bytes::Bytes;
use elk_assigner::AssignerMetrics;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack, assert_invariants};
use elk_protocol::messages::{
    AssignmentRecord, Grant, MembershipView, ProgressEvent, ProgressReport, RoleLease,
};
use elk_protocol::names::{ControlRole, VIEW_KEY};
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_testkit::{OwnershipAuditor, TcpProxy, wait_until};
use elk_types::{Epoch, IdRange, JobName, MemberId, PartitionId, PartitionLeaseToken, ViewSeq};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// ~10 ms per 100 IDs: a 1,000-ID partition runs about 100 ms, long enough to be cut mid-way.
fn paced(ledger: &Arc<Ledger>) -> RecordingProcessor {
    RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(10))
}

async fn auditor(stack: &Stack) -> OwnershipAuditor {
    OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap()
}

async fn role_epoch(stack: &Stack) -> Epoch {
    let entry = elk_nats::read_entry(&stack.resources.leases, ControlRole::Assigner.lease_key())
        .await
        .unwrap()
        .unwrap();
    decode::<RoleLease>(&entry.value).unwrap().epoch
}

async fn view(stack: &Stack) -> MembershipView {
    let entry = elk_nats::read_entry(&stack.resources.leases, VIEW_KEY)
        .await
        .unwrap()
        .unwrap();
    decode(&entry.value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_partitions_resume_elsewhere_from_the_last_checkpoint() {
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 30_000).unwrap();
    let ledger = Ledger::new(range);
    let survivor_a = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let survivor_b = stack.worker("worker-b", 2, paced(&ledger)).await.unwrap();
    let victim = stack.worker("worker-c", 2, paced(&ledger)).await.unwrap();
    stack.create_job("crash", range, 1_000).await.unwrap();
    wait_until("the victim has processed work", DEADLINE, || async {
        victim.stats().partitions_completed > 0 && victim.stats().reports_published > 3
    })
    .await
    .unwrap();

    victim.kill().await;
    stack.wait_job_completed("crash", DEADLINE).await.unwrap();
    assert_invariants(&audit, "crash", &ledger).await;
    let report = audit.check().await;
    assert!(report.expiries_seen >= 1, "the victim's member key expired");
    survivor_a.shutdown().await.unwrap();
    survivor_b.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_worker_self_fences_and_rejoins_as_a_new_incarnation() {
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 30_000).unwrap();
    let ledger = Ledger::new(range);
    let proxy = TcpProxy::start(stack.server.url());
    let steady = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let cut = stack
        .worker_at(&proxy.url(), "worker-c", 2, &[], paced(&ledger))
        .await
        .unwrap();
    let first_incarnation = cut.incarnation();
    stack.create_job("partition", range, 1_000).await.unwrap();
    wait_until("the cut worker is processing", DEADLINE, || async {
        cut.stats().partitions_started > 0
    })
    .await
    .unwrap();

    proxy.cut();
    wait_until("the cut worker fenced itself", DEADLINE, || async {
        cut.stats().fences >= 1
    })
    .await
    .unwrap();
    proxy.heal();
    wait_until("it re-joined as a new incarnation", DEADLINE, || async {
        cut.incarnation() != first_incarnation
    })
    .await
    .unwrap();
    stack
        .wait_job_completed("partition", DEADLINE)
        .await
        .unwrap();
    assert_invariants(&audit, "partition", &ledger).await;
    steady.shutdown().await.unwrap();
    cut.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_assigner_resumes_a_rebalance_under_a_higher_epoch() {
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election = stack.election("election-1");
    let first_metrics = Arc::new(AssignerMetrics::default());
    let first = stack.assigner_with_metrics("assigner-1", first_metrics.clone());
    let standby_metrics = Arc::new(AssignerMetrics::default());
    let range = IdRange::new(1, 40_000).unwrap();
    let ledger = Ledger::new(range);
    let a = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let b = stack.worker("worker-b", 2, paced(&ledger)).await.unwrap();
    // 8 partitions fill the 8 slots of a and b: the newcomer's share can only come from revokes.
    stack.create_job("rebalance", range, 5_000).await.unwrap();
    let first_epoch = role_epoch(&stack).await;
    let standby = stack.assigner_with_metrics("assigner-2", standby_metrics.clone());
    wait_until("processing started", DEADLINE, || async {
        ledger.processed() > 500
    })
    .await
    .unwrap();

    let newcomer = stack.worker("worker-c", 2, paced(&ledger)).await.unwrap();
    // The leader has issued its first revokes (written before its next round starts).
    wait_until("the rebalance started", DEADLINE, || async {
        first_metrics.revocations() > 0
    })
    .await
    .unwrap();
    first.abort().await;

    stack
        .wait_job_completed("rebalance", DEADLINE)
        .await
        .unwrap();
    assert!(
        role_epoch(&stack).await > first_epoch,
        "the standby leads under a higher epoch"
    );
    assert!(standby_metrics.leader_terms.get() >= 1);
    assert_invariants(&audit, "rebalance", &ledger).await;
    for worker in [a, b, newcomer] {
        worker.shutdown().await.unwrap();
    }
    standby.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_assigner_s_late_writes_have_no_effect() {
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election = stack.election("election-1");
    let first = stack.assigner("assigner-1");
    let metrics = Arc::new(AssignerMetrics::default());
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let worker_a = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let worker_b = stack.worker("worker-b", 2, paced(&ledger)).await.unwrap();
    stack.create_job("fenced", range, 1_000).await.unwrap();
    let old_epoch = role_epoch(&stack).await;
    let second = stack.assigner_with_metrics("assigner-2", metrics.clone());
    wait_until("processing started", DEADLINE, || async {
        ledger.processed() > 500
    })
    .await
    .unwrap();
    let applied_before = worker_a.stats().records_applied;
    first.abort().await;
    // The standby leads and worker-a has applied its record under the new epoch.
    wait_until("worker-a follows the new epoch", DEADLINE, || async {
        let entry = elk_nats::read_entry(&stack.resources.assignments, "worker-a").await;
        let restamped = entry.ok().flatten().is_some_and(|entry| {
            decode::<AssignmentRecord>(&entry.value).is_ok_and(|record| record.epoch > old_epoch)
        });
        restamped && worker_a.stats().records_applied > applied_before
    })
    .await
    .unwrap();

    // The deposed assigner's late write: an assignment record under its old epoch granting
    // worker-a a partition with a made-up token, and a report completing it under that token.
    let ignored_before = worker_a.stats().records_ignored;
    let job = JobName::new("fenced").unwrap();
    let zombie_token = PartitionLeaseToken(old_epoch.get() << 32 | 9_999);
    let grant = Grant {
        job: job.clone(),
        partition: PartitionId(20),
        range: IdRange::new(19_001, 20_000).unwrap(),
        resume_from: 19_001,
        token: zombie_token,
        traceparent: None,
        unsampled: false,
    };
    let record = AssignmentRecord {
        schema: SCHEMA_VERSION,
        incarnation: worker_a.incarnation(),
        epoch: old_epoch,
        seq: ViewSeq(1_000_000),
        grants: vec![grant],
        drain: false,
        revoking: Vec::new(),
        progress_batches: false,
    };
    stack
        .resources
        .assignments
        .put("worker-a", Bytes::from(encode(&record)))
        .await
        .unwrap();
    let forged = ProgressReport {
        schema: SCHEMA_VERSION,
        worker: MemberId::new("worker-a").unwrap(),
        incarnation: worker_a.incarnation(),
        job: job.clone(),
        partition: PartitionId(20),
        token: zombie_token,
        event: ProgressEvent::Completed,
    };
    let subject = stack
        .resources
        .names
        .progress_subject(&MemberId::new("worker-a").unwrap());
    stack
        .resources
        .jetstream
        .publish(subject, Bytes::from(encode(&forged)))
        .await
        .unwrap()
        .await
        .unwrap();

    // A report naming another worker than the subject it came from is refused outright.
    let mut spoofed = forged.clone();
    spoofed.worker = MemberId::new("worker-b").unwrap();
    let subject = stack
        .resources
        .names
        .progress_subject(&MemberId::new("worker-a").unwrap());
    stack
        .resources
        .jetstream
        .publish(subject, Bytes::from(encode(&spoofed)))
        .await
        .unwrap()
        .await
        .unwrap();
    wait_until("the spoofed report was refused", DEADLINE, || async {
        metrics.progress_reports("malformed") >= 1
    })
    .await
    .unwrap();

    wait_until("the worker ignored the stale record", DEADLINE, || async {
        worker_a.stats().records_ignored > ignored_before
    })
    .await
    .unwrap();
    wait_until("the forged report was rejected", DEADLINE, || async {
        metrics.progress_reports("rejected") >= 1
    })
    .await
    .unwrap();
    stack.wait_job_completed("fenced", DEADLINE).await.unwrap();
    // Partition 20 was really processed, not completed by the forged report.
    assert!(ledger.counts()[19_500] >= 1);
    assert_invariants(&audit, "fenced", &ledger).await;
    worker_a.shutdown().await.unwrap();
    worker_b.shutdown().await.unwrap();
    second.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_election_continues_the_view_after_a_kill() {
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let first = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let worker = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    stack.create_job("election", range, 1_000).await.unwrap();
    let standby = stack.election("election-2");
    wait_until("processing started", DEADLINE, || async {
        ledger.processed() > 500
    })
    .await
    .unwrap();
    let generation_before = view(&stack).await.generation;
    first.abort().await;
    // A worker joining after the kill is seen only through the standby's view.
    let late = stack
        .worker("worker-late", 2, paced(&ledger))
        .await
        .unwrap();
    wait_until(
        "the standby's view lists the late worker",
        DEADLINE,
        || async {
            let current = view(&stack).await;
            current.generation > generation_before
                && current
                    .member(&MemberId::new("worker-late").unwrap())
                    .is_some()
        },
    )
    .await
    .unwrap();
    stack
        .wait_job_completed("election", DEADLINE)
        .await
        .unwrap();
    assert_invariants(&audit, "election", &ledger).await;
    worker.shutdown().await.unwrap();
    late.shutdown().await.unwrap();
    assigner.stop().await;
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_no_acknowledged_checkpoint() {
    let mut stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let a = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let b = stack.worker("worker-b", 2, paced(&ledger)).await.unwrap();
    stack.create_job("restart", range, 1_000).await.unwrap();
    wait_until("checkpoints are flowing", DEADLINE, || async {
        ledger.processed() > 3_000
    })
    .await
    .unwrap();

    stack.server.restart().unwrap();
    stack.wait_job_completed("restart", DEADLINE).await.unwrap();
    assert_invariants(&audit, "restart", &ledger).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_hands_off_gracefully_mid_job() {
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election_1 = stack.election("election-1");
    let assigner_1 = stack.assigner("assigner-1");
    let scaler_1 = stack.scaler("scaler-1");
    let range = IdRange::new(1, 30_000).unwrap();
    let ledger = Ledger::new(range);
    let a = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let b = stack.worker("worker-b", 2, paced(&ledger)).await.unwrap();
    stack.create_job("handoff", range, 1_000).await.unwrap();
    let first_epoch = role_epoch(&stack).await;
    let election_2 = stack.election("election-2");
    let assigner_2 = stack.assigner("assigner-2");
    let scaler_2 = stack.scaler("scaler-2");
    wait_until("processing started", DEADLINE, || async {
        ledger.processed() > 500
    })
    .await
    .unwrap();

    election_1.stop().await;
    assigner_1.stop().await;
    scaler_1.stop().await;
    wait_until("the second assigner leads", DEADLINE, || async {
        role_epoch(&stack).await > first_epoch
    })
    .await
    .unwrap();
    stack.wait_job_completed("handoff", DEADLINE).await.unwrap();
    assert_invariants(&audit, "handoff", &ledger).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    scaler_2.stop().await;
    assigner_2.stop().await;
    election_2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_assigner_is_replaced_and_rejoins_as_standby() {
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election = stack.election("election-1");
    let proxy = TcpProxy::start(stack.server.url());
    let cut_metrics = Arc::new(AssignerMetrics::default());
    let cut = stack.assigner_at(&proxy.url(), "assigner-1", cut_metrics.clone());
    let range = IdRange::new(1, 30_000).unwrap();
    let ledger = Ledger::new(range);
    let a = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let b = stack.worker("worker-b", 2, paced(&ledger)).await.unwrap();
    stack
        .create_job("cut-assigner", range, 1_000)
        .await
        .unwrap();
    let first_epoch = role_epoch(&stack).await;
    let standby = stack.assigner("assigner-2");
    wait_until("processing started", DEADLINE, || async {
        ledger.processed() > 500
    })
    .await
    .unwrap();

    proxy.cut();
    wait_until("the standby leads", DEADLINE, || async {
        role_epoch(&stack).await > first_epoch
    })
    .await
    .unwrap();
    proxy.heal();
    stack
        .wait_job_completed("cut-assigner", DEADLINE)
        .await
        .unwrap();
    assert_invariants(&audit, "cut-assigner", &ledger).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    standby.stop().await;
    cut.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scaler_is_replaced_under_a_higher_epoch() {
    use elk_protocol::messages::DesiredWorkers;
    use elk_protocol::names::DESIRED_WORKERS_KEY;
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let first = stack.scaler("scaler-1");
    stack
        .create_job("sized", IdRange::new(1, 100_000).unwrap(), 1_000)
        .await
        .unwrap();
    let desired = || async {
        let entry = elk_nats::read_entry(&stack.resources.fleet, DESIRED_WORKERS_KEY).await;
        entry
            .ok()
            .flatten()
            .and_then(|e| decode::<DesiredWorkers>(&e.value).ok())
    };
    wait_until("the first scaler publishes", DEADLINE, || async {
        desired().await.is_some()
    })
    .await
    .unwrap();
    let first_epoch = desired().await.unwrap().epoch;
    let standby = stack.scaler("scaler-2");
    first.abort().await;
    wait_until(
        "the standby scaler publishes under a higher epoch",
        DEADLINE,
        || async { desired().await.is_some_and(|d| d.epoch > first_epoch) },
    )
    .await
    .unwrap();
    standby.stop().await;
    assigner.stop().await;
    election.stop().await;
}

/// Holds the partition starting at ID 1 until the gate opens (cancellable), then records like
/// `inner`: every partition above it completes first, so the job's low watermark stays at 0.
struct HoldFirst {
    inner: RecordingProcessor,
    gate: tokio::sync::watch::Receiver<bool>,
}

impl elk_worker::Processor for HoldFirst {
    async fn process(
        &self,
        work: elk_worker::PartitionWork,
    ) -> Result<elk_worker::ProcessOutcome, elk_worker::ProcessError> {
        if work.range().first() == 1 {
            let mut gate = self.gate.clone();
            let cancelled = work.cancellation();
            tokio::select! {
                _ = gate.wait_for(|open| *open) => {}
                () = cancelled.cancelled() => return Ok(elk_worker::ProcessOutcome::Interrupted),
            }
        }
        self.inner.process(work).await
    }
}

/// Issue 10 item 4: on the lean write path a completion is stored in the job record only (the
/// partition key keeps its `granted` status until compaction). A leader killed while such keys
/// exist — the first partition held back, so every completion lies above the low watermark —
/// is replaced by one that loses none of them, re-runs none and reports no overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lean_leader_killed_mid_job_loses_no_completion_and_sees_no_overlap() {
    use elk_protocol::messages::{JobRecord, PartitionRecord, PartitionStatus};
    let stack = Stack::new().await.unwrap();
    let audit = auditor(&stack).await;
    let election = stack.election("election-1");
    let first_metrics = Arc::new(AssignerMetrics::default());
    let first = stack.assigner_with_metrics("assigner-1", first_metrics.clone());
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for id in ["worker-a", "worker-b"] {
        let processor = HoldFirst {
            inner: paced(&ledger),
            gate: gate.clone(),
        };
        workers.push(stack.worker_with(id, 2, &[], processor).await.unwrap());
    }
    stack.create_job("lean", range, 500).await.unwrap();
    let first_epoch = role_epoch(&stack).await;
    let standby_metrics = Arc::new(AssignerMetrics::default());
    let standby = stack.assigner_with_metrics("assigner-2", standby_metrics.clone());
    let completed_above_watermark = || async {
        stack
            .job("lean")
            .await
            .unwrap()
            .is_some_and(|job: JobRecord| {
                job.low_watermark.is_none() && job.partitions_completed >= 10
            })
    };
    wait_until(
        "10 partitions completed above the watermark",
        DEADLINE,
        completed_above_watermark,
    )
    .await
    .unwrap();
    first.abort().await;

    // What the standby loads: completed ranges in the job record whose keys still say granted.
    let job = stack.job("lean").await.unwrap().unwrap();
    let mut completed_keys_left_granted = 0;
    let mut keys = stack.resources.partitions.keys().await.unwrap();
    while let Some(key) = futures::StreamExt::next(&mut keys).await {
        let entry = elk_nats::read_entry(&stack.resources.partitions, &key.unwrap())
            .await
            .unwrap();
        let Some(record) = entry
            .filter(|entry| !entry.deleted)
            .and_then(|entry| decode::<PartitionRecord>(&entry.value).ok())
        else {
            continue;
        };
        assert_ne!(
            record.status,
            PartitionStatus::Completed,
            "no completed record is written"
        );
        let counted = job
            .completed_above_watermark
            .iter()
            .any(|done| done.first() <= record.range.first() && record.range.last() <= done.last());
        completed_keys_left_granted += u64::from(counted);
    }
    assert!(
        completed_keys_left_granted >= 10,
        "the takeover must meet completions held by the job record only ({completed_keys_left_granted})"
    );
    wait_until("the standby leads", DEADLINE, || async {
        role_epoch(&stack).await > first_epoch
    })
    .await
    .unwrap();
    open_gate.send(true).unwrap();
    stack.wait_job_completed("lean", DEADLINE).await.unwrap();

    let job = stack.job("lean").await.unwrap().unwrap();
    assert_eq!(job.partitions_completed, job.partitions_total);
    assert_eq!(job.ids_completed, range.len());
    for metrics in [&first_metrics, &standby_metrics] {
        assert_eq!(metrics.overlaps_detected.get(), 0, "no false overlap");
        assert_eq!(metrics.gaps_detected.get(), 0);
        assert_eq!(metrics.partition_writes_of("completed"), 0);
    }
    assert!(standby_metrics.leader_terms.get() >= 1);
    // Nothing completed ran again: each ID processed exactly once (no worker crashed).
    assert_invariants(&audit, "lean", &ledger).await;
    assert_eq!(
        ledger.duplicates(),
        Vec::<u64>::new(),
        "a completed partition was granted again"
    );
    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    standby.stop().await;
    election.stop().await;
}
