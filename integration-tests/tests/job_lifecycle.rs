//! Issue 5 scenarios on real NATS: retries with backoff, a poison partition parked as failed and
//! re-queued by `retry`, pause / resume / cancel, several jobs with workers declaring theirs, and
//! compaction of completed partitions.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::admin::{AdminCommand, AdminErrorCode, AdminResult, IdState};
use elk_protocol::messages::{JobSpec, JobState, PartitionStatus};
use elk_testkit::wait_until;
use elk_types::{IdRange, JobName};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// Fails chosen partitions: `fail_first[p]` attempts of partition `p`, or every attempt while
/// `poison` names it and `fixed` is false. Everything else is processed and recorded.
#[derive(Clone)]
struct FlakyProcessor {
    inner: RecordingProcessor,
    fail_first: HashMap<u64, u64>,
    poison: Option<u64>,
    fixed: Arc<AtomicBool>,
    attempts: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Processor for FlakyProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let partition = work.partition().get();
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let count = attempts.entry(partition).or_insert(0);
            *count += 1;
            *count
        };
        if self.poison == Some(partition) && !self.fixed.load(Ordering::SeqCst) {
            return Err(ProcessError::new("poison record"));
        }
        if self
            .fail_first
            .get(&partition)
            .is_some_and(|failures| attempt <= *failures)
        {
            return Err(ProcessError::new(format!("transient failure {attempt}")));
        }
        self.inner.process(work).await
    }
}

fn flaky(ledger: Arc<Ledger>, fail_first: &[(u64, u64)], poison: Option<u64>) -> FlakyProcessor {
    FlakyProcessor {
        inner: RecordingProcessor::new(ledger),
        fail_first: fail_first.iter().copied().collect(),
        poison,
        fixed: Arc::new(AtomicBool::new(false)),
        attempts: Arc::new(Mutex::new(HashMap::new())),
    }
}

fn spec(range: IdRange, partition_size: u64, max_attempts: u32) -> JobSpec {
    JobSpec {
        max_attempts,
        retry_backoff_ms: 50,
        ..JobSpec::fixed(range, partition_size)
    }
}

async fn partitions(stack: &Stack, job: &str, statuses: Vec<PartitionStatus>) -> Vec<u64> {
    let command = AdminCommand::ListPartitions {
        job: Some(JobName::new(job).unwrap()),
        statuses,
        after: None,
        limit: Some(1_000),
    };
    match stack.admin(command).await.unwrap() {
        AdminResult::Partitions { partitions, .. } => {
            partitions.iter().map(|p| p.id.get()).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_failing_twice_is_retried_and_completes() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 10_000).unwrap();
    let ledger = Ledger::new(range);
    let processor = flaky(ledger.clone(), &[(3, 2)], None);
    let attempts = processor.attempts.clone();
    let worker = stack
        .worker_with("worker-a", 2, &[], processor)
        .await
        .unwrap();

    stack
        .create_job_with("flaky", spec(range, 1_000, 3))
        .await
        .unwrap();
    let job = stack
        .wait_job_completed("flaky", Duration::from_secs(60))
        .await
        .unwrap();

    assert_eq!(job.partitions_failed, 0);
    assert_eq!(
        attempts.lock().unwrap()[&3],
        3,
        "two failures, then success"
    );
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());
    assert_eq!(worker.stats().partitions_failed, 2);
    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_partition_is_parked_then_retried_after_the_fix() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 10_000).unwrap();
    let ledger = Ledger::new(range);
    let processor = flaky(ledger.clone(), &[], Some(5));
    let fixed = processor.fixed.clone();
    let worker = stack
        .worker_with("worker-a", 2, &[], processor)
        .await
        .unwrap();

    stack
        .create_job_with("poison", spec(range, 1_000, 2))
        .await
        .unwrap();
    // Every other partition completes although partition 5 keeps failing.
    wait_until(
        "nine partitions done and one parked",
        Duration::from_secs(60),
        || async {
            let job = stack.job("poison").await.unwrap().unwrap();
            job.partitions_completed == 9 && job.partitions_failed == 1
        },
    )
    .await
    .unwrap();
    assert_eq!(
        partitions(&stack, "poison", vec![PartitionStatus::Failed]).await,
        vec![5]
    );
    let job = stack.job("poison").await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Active,
        "a parked partition keeps the job open"
    );

    // The operator fixes the fault and retries the failed partitions of the job.
    fixed.store(true, Ordering::SeqCst);
    let job_name = JobName::new("poison").unwrap();
    let retried = stack
        .admin(AdminCommand::Retry {
            job: Some(job_name),
            partition: None,
        })
        .await;
    assert!(matches!(
        retried.unwrap(),
        AdminResult::Retried { count: 1 }
    ));
    let done = stack
        .wait_job_completed("poison", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.partitions_failed, 0);
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());

    let nothing = stack
        .admin(AdminCommand::Retry {
            job: None,
            partition: None,
        })
        .await
        .unwrap();
    assert!(matches!(nothing, AdminResult::Retried { count: 0 }));
    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    // ~10 ms per 100 IDs: each 1,000-ID partition runs ~100 ms.
    let processor = RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(10));
    let worker = stack.worker("worker-a", 2, processor).await.unwrap();
    stack.create_job("pausable", range, 1_000).await.unwrap();
    wait_until("processing started", Duration::from_secs(30), || async {
        ledger.processed() > 500
    })
    .await
    .unwrap();

    let name = JobName::new("pausable").unwrap();
    stack
        .admin(AdminCommand::PauseJob { name: name.clone() })
        .await
        .unwrap();
    wait_until(
        "nothing granted while paused",
        Duration::from_secs(30),
        || async {
            partitions(
                &stack,
                "pausable",
                vec![PartitionStatus::Granted, PartitionStatus::Revoking],
            )
            .await
            .is_empty()
        },
    )
    .await
    .unwrap();
    let processed_when_paused = ledger.processed();
    let job = stack.job("pausable").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Paused);
    assert!(job.partitions_completed < 20);

    stack
        .admin(AdminCommand::ResumeJob { name: name.clone() })
        .await
        .unwrap();
    wait_until("processing resumed", Duration::from_secs(30), || async {
        ledger.processed() > processed_when_paused
    })
    .await
    .unwrap();
    let done = stack
        .wait_job_completed("pausable", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.partitions_completed, 20);
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());

    // Cancel a second job: nothing of it is processed afterwards and it stays cancelled.
    let other = IdRange::new(1, 1_000_000).unwrap();
    stack.create_job("cancelled", other, 1_000).await.unwrap();
    let cancelled = JobName::new("cancelled").unwrap();
    let reply = stack
        .admin(AdminCommand::CancelJob {
            name: cancelled.clone(),
        })
        .await
        .unwrap();
    assert!(matches!(reply, AdminResult::Job { job } if job.state == JobState::Cancelled));
    wait_until(
        "nothing of the cancelled job is granted",
        Duration::from_secs(30),
        || async {
            partitions(
                &stack,
                "cancelled",
                vec![PartitionStatus::Granted, PartitionStatus::Revoking],
            )
            .await
            .is_empty()
        },
    )
    .await
    .unwrap();
    let resumed = stack
        .admin_client()
        .resume_job(cancelled)
        .await
        .unwrap_err();
    let refusal = resumed.refusal().expect("refused by the assigner");
    assert_eq!(refusal.code, AdminErrorCode::InvalidState, "{resumed}");
    assert!(refusal.message.contains("cannot be resumed"), "{resumed}");
    // What is left of the cancelled job is deleted from the partitions bucket.
    wait_until(
        "the cancelled job's partitions are deleted",
        DEADLINE,
        || async {
            let keys = stack.resources.partitions.keys().await.unwrap();
            let keys: Vec<String> = futures::TryStreamExt::try_collect(keys).await.unwrap();
            !keys.iter().any(|key| key.starts_with("cancelled."))
        },
    )
    .await
    .unwrap();
    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_only_get_the_jobs_they_declare() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 10_000).unwrap();
    let ledger_a = Ledger::new(range);
    let ledger_b = Ledger::new(range);
    let worker_a = stack.worker_with(
        "worker-a",
        2,
        &["alpha"],
        RecordingProcessor::new(ledger_a.clone()),
    );
    let worker_a = worker_a.await.unwrap();
    let worker_b = stack
        .worker_with(
            "worker-b",
            2,
            &["beta"],
            RecordingProcessor::new(ledger_b.clone()),
        )
        .await
        .unwrap();
    stack.create_job("alpha", range, 1_000).await.unwrap();
    stack.create_job("beta", range, 1_000).await.unwrap();
    stack
        .wait_job_completed("alpha", Duration::from_secs(60))
        .await
        .unwrap();
    stack
        .wait_job_completed("beta", Duration::from_secs(60))
        .await
        .unwrap();
    // Each ledger saw exactly one job's IDs once: the other job never reached that worker.
    assert!(ledger_a.missing().is_empty() && ledger_a.duplicates().is_empty());
    assert!(ledger_b.missing().is_empty() && ledger_b.duplicates().is_empty());
    assert_eq!(worker_a.stats().partitions_completed, 10);
    assert_eq!(worker_b.stats().partitions_completed, 10);
    worker_a.shutdown().await.unwrap();
    worker_b.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_partitions_are_compacted_and_still_answered() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 50_000).unwrap();
    let ledger = Ledger::new(range);
    let worker = stack
        .worker("worker-a", 4, RecordingProcessor::new(ledger.clone()))
        .await
        .unwrap();
    stack.create_job("compact", range, 500).await.unwrap();
    let job = stack
        .wait_job_completed("compact", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(job.partitions_completed, 100);

    wait_until(
        "completed partition keys are deleted",
        Duration::from_secs(30),
        || async {
            let keys = stack.resources.partitions.keys().await.unwrap();
            futures::StreamExt::count(keys).await == 0
        },
    )
    .await
    .unwrap();
    let job = stack.job("compact").await.unwrap().unwrap();
    assert_eq!(job.partitions_compacted, 100);
    assert_eq!(job.low_watermark, Some(50_000));
    let status = stack
        .admin(AdminCommand::IdStatus {
            job: JobName::new("compact").unwrap(),
            id: 12_345,
        })
        .await
        .unwrap();
    assert!(matches!(
        status,
        AdminResult::IdStatus {
            status: IdState::Completed,
            ..
        }
    ));
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());
    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

/// A planner over a table that keeps growing: it reports the highest ID written so far.
struct GrowingTable {
    max_id: Arc<std::sync::atomic::AtomicU64>,
}

impl elk_worker::Planner for GrowingTable {
    async fn next_max_id(
        &self,
        _job: &JobName,
        _cursor: u64,
        _wanted: u64,
    ) -> Result<Option<u64>, elk_worker::PlanError> {
        let max = self.max_id.load(Ordering::SeqCst);
        Ok((max > 0).then_some(max))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_ended_job_follows_a_growing_planner_and_waits_for_data() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let job = JobName::new("growing").unwrap();
    let max_id = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let planner = elk_worker::serve_planner(
        elk_nats::NatsConfig::new(stack.server.url(), "planner"),
        stack.namespace.clone(),
        job.clone(),
        GrowingTable {
            max_id: max_id.clone(),
        },
    )
    .await
    .unwrap();
    let everything = IdRange::new(1, 30_000).unwrap();
    let ledger = Ledger::new(everything);
    let worker = stack
        .worker("worker-a", 2, RecordingProcessor::new(ledger.clone()))
        .await
        .unwrap();
    let spec = JobSpec {
        lookahead: 2,
        ..JobSpec::open_ended(1, 1_000)
    };
    stack.create_job_with("growing", spec).await.unwrap();

    // No data yet: the job waits. Then the table grows three times while the job runs.
    for max in [10_000, 18_500, 30_000] {
        max_id.store(max, Ordering::SeqCst);
        wait_until(
            "everything written so far is processed",
            DEADLINE,
            || async {
                ledger.counts()[..max as usize]
                    .iter()
                    .all(|count| *count >= 1)
            },
        )
        .await
        .unwrap();
        let record = stack.job("growing").await.unwrap().unwrap();
        assert_eq!(record.known_max, Some(max));
        assert_eq!(
            record.state,
            JobState::Active,
            "an open-ended job stays open"
        );
        assert!(
            ledger.counts()[max as usize..]
                .iter()
                .all(|count| *count == 0),
            "nothing beyond the data"
        );
    }
    assert!(
        ledger.missing().is_empty(),
        "missing {}",
        ledger.missing().len()
    );
    assert!(ledger.duplicates().is_empty(), "every ID processed once");
    // The last completion reaches the job record in the flush after its report.
    wait_until("the watermark reaches the data's end", DEADLINE, || async {
        let record = stack.job("growing").await.unwrap().unwrap();
        record.low_watermark == Some(30_000)
    })
    .await
    .unwrap();
    let record = stack.job("growing").await.unwrap().unwrap();
    // 1,000-ID partitions cut at each max: 10 + 9 (to 18,500) + 12 (to 30,000).
    assert_eq!(record.partitions_total, 31);

    planner.shutdown().await.unwrap();
    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}
