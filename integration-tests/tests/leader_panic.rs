//! A leader task that dies gives the role up: the assigner leader's task is made to panic through
//! the `test-hooks` fault injection; its replica leaves at once, the election names the standby,
//! and the standby serves admin requests and grants within the member TTL + 1 s. The job then
//! completes with invariants 1, 2, 3 and 5 intact, and the replica that panicked comes back as a
//! standby under a new incarnation.

use elk_assigner::AssignerMetrics;
use elk_assigner::test_hooks::LeaderFaults;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack, assert_invariants};
use elk_nats::NatsConfig;
use elk_runtime::ServiceCommon;
use elk_testkit::{OwnershipAuditor, wait_until};
use elk_types::{IdRange, MemberId};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(120);

/// An assigner replica with its fault hooks and counters.
struct Replica {
    faults: Arc<LeaderFaults>,
    metrics: Arc<AssignerMetrics>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn start_assigner(stack: &Stack, id: &str) -> Replica {
    let service = ServiceCommon::new(
        NatsConfig::new(stack.url(), id),
        stack.namespace.clone(),
        MemberId::new(id).unwrap(),
    )
    .with_member_ttl(stack.member_ttl);
    let config = elk_assigner::AssignerConfig::new(service);
    let faults = Arc::new(LeaderFaults::default());
    let metrics = Arc::new(AssignerMetrics::default());
    let stop = CancellationToken::new();
    let run = elk_assigner::run_with_faults(
        config,
        metrics.clone(),
        faults.clone(),
        stop.clone().cancelled_owned(),
    );
    let task = tokio::spawn(async move { run.await.expect("assigner replica runs") });
    Replica {
        faults,
        metrics,
        stop,
        task,
    }
}

impl Replica {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// Timeout of one `stats` request.
const STATS_TIMEOUT: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_task_hands_the_role_to_a_standby_within_a_ttl() {
    let stack = Stack::new().await.unwrap();
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let first = start_assigner(&stack, "assigner-1");
    wait_until("assigner-1 leads", DEADLINE, || async {
        let Some(me) = stack.member_ref("assigner-1").await else {
            return false;
        };
        stack.assigner_lease().await.and_then(|lease| lease.holder) == Some(me)
    })
    .await
    .unwrap();
    let standby = start_assigner(&stack, "assigner-2");
    let standby_member = async || stack.member_ref("assigner-2").await;
    wait_until("assigner-2 joined as a standby", DEADLINE, || async {
        standby_member().await.is_some()
    })
    .await
    .unwrap();
    let range = IdRange::new(1, 40_000).unwrap();
    let ledger = Ledger::new(range);
    let paced = RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(10));
    let worker = stack.worker("worker-a", 2, paced).await.unwrap();
    stack.create_job("panic", range, 1_000).await.unwrap();
    wait_until("processing started", DEADLINE, || async {
        ledger.processed() > 1_000
    })
    .await
    .unwrap();
    let first_epoch = stack.assigner_lease().await.unwrap().epoch;
    let first_incarnation = stack
        .member_ref("assigner-1")
        .await
        .map(|member| member.incarnation)
        .unwrap();

    first.faults.panic_next_round();
    // Within one TTL + 1 s: the lease names the standby under a new epoch, and it answers.
    wait_until(
        "the standby leads and serves",
        stack.member_ttl + Duration::from_secs(1),
        || async {
            let Some(standby) = standby_member().await else {
                return false;
            };
            let Some(lease) = stack.assigner_lease().await else {
                return false;
            };
            let named = lease.holder == Some(standby) && lease.epoch > first_epoch;
            named
                && stack
                    .assigner_stats_once(STATS_TIMEOUT)
                    .await
                    .is_some_and(|stats| stats.epoch == lease.epoch)
        },
    )
    .await
    .unwrap();

    // The new leader grants: the job completes, with the invariants intact.
    stack.wait_job_completed("panic", DEADLINE).await.unwrap();
    assert_invariants(&audit, "panic", &ledger).await;
    assert_eq!(
        first.metrics.leader_terms.get(),
        1,
        "a panicked term is not restarted"
    );
    assert!(standby.metrics.leader_terms.get() >= 1);
    // The replica that panicked came back as a standby (new incarnation); the role stays put.
    wait_until("assigner-1 re-joined", DEADLINE, || async {
        stack
            .member_ref("assigner-1")
            .await
            .map(|member| member.incarnation)
            .is_some_and(|incarnation| incarnation != first_incarnation)
    })
    .await
    .unwrap();
    let holder = stack.assigner_lease().await.unwrap().holder.unwrap();
    assert_eq!(holder.id.as_str(), "assigner-2");

    worker.shutdown().await.unwrap();
    first.stop().await;
    standby.stop().await;
    election.stop().await;
}
