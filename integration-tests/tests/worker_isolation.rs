//! The worker SDK's coordination is isolated from user code, on the whole in-process stack with
//! the ownership auditor watching:
//!
//! * a processor that blocks its thread for two member TTLs — with the worker started from a
//!   `current_thread` runtime, so nothing else of that runtime runs meanwhile — neither costs the
//!   worker its membership nor lets anyone overlap it;
//! * a worker cut off from NATS while its (blocking) processor sits in a call longer than the TTL
//!   fences on time anyway, the processor sees `is_cancelled()` as soon as it looks, and what it
//!   claims afterwards (a checkpoint, a completion) never reaches the coordinator;
//! * a permanent processor error parks the partition after one attempt.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack, assert_invariants};
use elk_protocol::decode;
use elk_protocol::messages::{JobSpec, PartitionRecord, PartitionStatus, ProgressEvent};
use elk_protocol::names::Names;
use elk_testkit::auditor::AuditEventKind;
use elk_testkit::{OwnershipAuditor, TcpProxy, wait_until};
use elk_worker::{
    BlockingProcessor, IdRange, JobName, MemberId, PartitionId, PartitionWork, ProcessError,
    ProcessOutcome, Processor, Worker, WorkerEvent, WorkerHandle,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

const DEADLINE: Duration = Duration::from_secs(120);

/// The control plane's own runtime, so that a test whose runtime is blocked by a processor only
/// blocks the worker side. Shut down in the background when dropped (dropping a runtime inside
/// another one would panic).
struct ControlPlaneRuntime(Option<tokio::runtime::Runtime>);

impl ControlPlaneRuntime {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("control plane runtime");
        Self(Some(runtime))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running").handle()
    }
}

impl Drop for ControlPlaneRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Checksums IDs like the other scenarios' processors, but blocks its thread once (the first
/// time any partition reaches an ID divisible by 500) for `block_for`, with no await in between.
#[derive(Clone)]
struct BlocksItsThreadOnce {
    ledger: Arc<Ledger>,
    block_for: Duration,
    blocked: Arc<AtomicBool>,
}

impl Processor for BlocksItsThreadOnce {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            self.ledger.record(id);
            work.checkpoint(id);
            if id % 500 == 0 && !self.blocked.swap(true, Ordering::SeqCst) {
                // A synchronous driver call, a long computation: the runtime thread is gone.
                std::thread::sleep(self.block_for);
            } else if id % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(ProcessOutcome::Completed)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_processor_blocking_its_thread_for_two_ttls_keeps_the_membership_and_never_overlaps() {
    let control = ControlPlaneRuntime::new();
    let (stack, audit, election, assigner) = control
        .handle()
        .spawn(async {
            let stack = Stack::new().await.unwrap();
            let audit = OwnershipAuditor::start_on(stack.resources.clone())
                .await
                .unwrap();
            let election = stack.election("election-1");
            let assigner = stack.assigner("assigner-1");
            (stack, audit, election, assigner)
        })
        .await
        .unwrap();
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let blocked = Arc::new(AtomicBool::new(false));
    let blocker = BlocksItsThreadOnce {
        ledger: ledger.clone(),
        block_for: stack.member_ttl * 2,
        blocked: blocked.clone(),
    };
    // Both workers' processors run on this test's single thread; their coordination does not.
    let blocking = stack
        .worker_with("worker-blocking", 2, &[], blocker)
        .await
        .unwrap();
    let steady = stack
        .worker(
            "worker-steady",
            2,
            RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(1)),
        )
        .await
        .unwrap();
    let lives = (blocking.incarnation(), steady.incarnation());

    stack.create_job("blocked", range, 1_000).await.unwrap();
    stack.wait_job_completed("blocked", DEADLINE).await.unwrap();

    assert!(blocked.load(Ordering::SeqCst), "the processor did block");
    assert_eq!(
        (blocking.incarnation(), steady.incarnation()),
        lives,
        "both workers kept their first membership"
    );
    assert_eq!(blocking.stats().fences + steady.stats().fences, 0);
    assert_invariants(&audit, "blocked", &ledger).await;
    assert!(
        ledger.duplicates().is_empty(),
        "no crash, so no ID processed twice"
    );
    assert_eq!(
        audit.check().await.expiries_seen,
        0,
        "no member key expired"
    );
    blocking.shutdown().await.unwrap();
    steady.shutdown().await.unwrap();
    control
        .handle()
        .spawn(async move {
            assigner.stop().await;
            election.stop().await;
            audit.stop().await;
            drop(stack);
        })
        .await
        .unwrap();
}

/// A blocking processor that, in the first partition it runs, enters a blocking call after 100
/// IDs and stays in it until the test releases it. Then it misbehaves on purpose: whatever
/// `is_cancelled` says, it claims the whole range (checkpoint and `Completed`).
struct StubbornInALongCall {
    ledger: Arc<Ledger>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
    /// Partition id of the blocked run (0 until it blocks).
    blocked_partition: AtomicU64,
    returned: AtomicBool,
    saw_cancelled: AtomicBool,
}

impl BlockingProcessor for StubbornInALongCall {
    fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            self.ledger.record(id);
            work.checkpoint(id);
            if id == work.resume_from() + 100
                && let Some(release) = self.release.lock().unwrap().take()
            {
                self.blocked_partition
                    .store(work.partition().get(), Ordering::SeqCst);
                let _ = release.recv();
                self.saw_cancelled
                    .store(work.is_cancelled(), Ordering::SeqCst);
                work.checkpoint(work.range().last());
                self.returned.store(true, Ordering::SeqCst);
                return Ok(ProcessOutcome::Completed);
            }
            if id % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(ProcessOutcome::Completed)
    }
}

async fn partition_record(stack: &Stack, job: &str, partition: u64) -> Option<PartitionRecord> {
    let key = Names::partition_key(&JobName::new(job).unwrap(), PartitionId(partition));
    let entry = elk_nats::read_entry(&stack.resources.partitions, &key)
        .await
        .unwrap()?;
    (!entry.deleted).then(|| decode(&entry.value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_during_a_long_blocking_call_fences_on_time_and_its_late_claims_are_refused()
 {
    let stack = Stack::new().await.unwrap();
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let steady = stack
        .worker(
            "worker-steady",
            2,
            RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(5)),
        )
        .await
        .unwrap();
    let proxy = TcpProxy::start(stack.server.url());
    let (release, released) = mpsc::channel();
    let stubborn = Arc::new(StubbornInALongCall {
        ledger: ledger.clone(),
        release: Mutex::new(Some(released)),
        blocked_partition: AtomicU64::new(0),
        returned: AtomicBool::new(false),
        saw_cancelled: AtomicBool::new(false),
    });
    let victim: WorkerHandle = Worker::builder(
        stack.namespace.clone(),
        MemberId::new("worker-cut").unwrap(),
    )
    .nats_url(proxy.url())
    .capacity(1)
    .member_ttl(stack.member_ttl)
    .checkpoint_interval(Duration::from_millis(200))
    .start_blocking(ArcProcessor(stubborn.clone()))
    .await
    .unwrap();
    let mut events = victim.events();
    let first_life = victim.incarnation();

    stack.create_job("cut", range, 1_000).await.unwrap();
    wait_until(
        "the victim's processor is inside its long call",
        DEADLINE,
        || async { stubborn.blocked_partition.load(Ordering::SeqCst) != 0 },
    )
    .await
    .unwrap();
    let partition = stubborn.blocked_partition.load(Ordering::SeqCst);

    proxy.cut();
    let fenced_at = loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(WorkerEvent::Fenced { incarnation, at })) => {
                assert_eq!(incarnation, first_life);
                break at;
            }
            Ok(Some(_)) => continue,
            other => panic!("no fence: {other:?}"),
        }
    };
    // The call outlasts the TTL: it ends only once the partition is someone else's.
    wait_until("the partition moved on", DEADLINE, || async {
        partition_record(&stack, "cut", partition)
            .await
            .is_none_or(|record| {
                record
                    .owner
                    .is_none_or(|owner| owner.incarnation != first_life)
                    && record.status != PartitionStatus::Revoking
            })
    })
    .await
    .unwrap();
    release.send(()).unwrap();
    wait_until("the long call returned", DEADLINE, || async {
        stubborn.returned.load(Ordering::SeqCst)
    })
    .await
    .unwrap();
    assert!(
        stubborn.saw_cancelled.load(Ordering::SeqCst),
        "the processor saw is_cancelled() the first time it looked"
    );

    proxy.heal();
    wait_until("the victim re-joined", DEADLINE, || async {
        victim.incarnation() != first_life
    })
    .await
    .unwrap();
    stack.wait_job_completed("cut", DEADLINE).await.unwrap();
    assert_invariants(&audit, "cut", &ledger).await;

    let events = audit.events();
    let victim_id = MemberId::new("worker-cut").unwrap();
    let expired_at = events
        .iter()
        .find_map(|event| match &event.kind {
            AuditEventKind::MemberExpired { member } if *member == victim_id => Some(event.at),
            _ => None,
        })
        .expect("the victim's first member key expired");
    assert!(
        fenced_at < expired_at,
        "fenced before the server expired its key: fenced {:?}, expired {:?}",
        since(fenced_at),
        since(expired_at)
    );
    let late_claims: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.kind {
            AuditEventKind::Progress(report)
                if report.worker == victim_id
                    && report.incarnation == first_life
                    && report.partition.get() == partition =>
            {
                Some(report.event.clone())
            }
            _ => None,
        })
        .filter(|event| match event {
            ProgressEvent::Completed => true,
            ProgressEvent::Checkpoint { last_done } => *last_done > 1_000 * partition - 500,
            _ => false,
        })
        .collect();
    assert!(
        late_claims.is_empty(),
        "nothing the processor claimed after the fence was published: {late_claims:?}"
    );
    assert_eq!(victim.stats().fences, 1);
    victim.shutdown().await.unwrap();
    steady.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

/// Shares the stubborn processor with the test.
struct ArcProcessor(Arc<StubbornInALongCall>);

impl BlockingProcessor for ArcProcessor {
    fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        self.0.process(work)
    }
}

fn since(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Fails one chosen partition permanently at its 10th ID; processes and records everything else.
#[derive(Clone)]
struct PoisonOnce {
    inner: RecordingProcessor,
    poison: u64,
}

impl Processor for PoisonOnce {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        if work.partition().get() == self.poison {
            let at = work.resume_from() + 9;
            work.checkpoint(at);
            let corrupt: Result<u64, _> = "row 7 is garbage".parse::<u64>();
            // `?` would make it transient; poison data is permanent.
            return Err(ProcessError::from(corrupt.unwrap_err()).into_permanent());
        }
        self.inner.process(work).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_parks_the_partition_after_one_attempt() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 5_000).unwrap();
    let ledger = Ledger::new(range);
    let processor = PoisonOnce {
        inner: RecordingProcessor::new(ledger.clone()),
        poison: 3,
    };
    let worker = stack
        .worker_with("worker-a", 2, &[], processor)
        .await
        .unwrap();
    let spec = JobSpec {
        max_attempts: 5,
        retry_backoff_ms: 50,
        ..JobSpec::fixed(range, 1_000)
    };
    stack.create_job_with("poisoned", spec).await.unwrap();

    wait_until(
        "four partitions done, the poisoned one parked",
        DEADLINE,
        || async {
            let job = stack.job("poisoned").await.unwrap().unwrap();
            job.partitions_completed == 4 && job.partitions_failed == 1
        },
    )
    .await
    .unwrap();
    let parked = partition_record(&stack, "poisoned", 3).await.unwrap();
    assert_eq!(
        parked.status,
        PartitionStatus::Failed,
        "parked, not retried"
    );
    assert_eq!(
        parked.attempts, 1,
        "after a single attempt of the 5 allowed"
    );
    assert_eq!(parked.checkpoint, Some(2_010), "with its checkpoint");
    assert_eq!(
        parked.error.as_deref(),
        Some("invalid digit found in string")
    );
    assert_eq!(worker.stats().partitions_failed, 1);
    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}
