//! The `elkctl` binary against a real stack: a private nats-server, election and assigner
//! in-process, and one worker whose processor fails partition 2 until the test "fixes the fault".
//! Covers create / list / get / partitions / retry / id-status / stats / pause / resume / watch,
//! `--json` output and the errors for bad arguments and unknown jobs.

use elk_nats::NatsConfig;
use elk_protocol::admin::{AdminResult, MemberState};
use elk_protocol::messages::{DrainSource, JobState, PartitionStatus};
use elk_runtime::ServiceCommon;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{MemberId, Namespace, PartitionId};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "cli";
const DEADLINE: Duration = Duration::from_secs(30);

/// Fails partition 2 while `broken`; completes everything else at once.
struct Flaky {
    broken: Arc<AtomicBool>,
}

impl Processor for Flaky {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        if work.partition() == PartitionId(2) && self.broken.load(Ordering::SeqCst) {
            return Err(ProcessError::new("poison row 150"));
        }
        work.checkpoint(work.range().last());
        Ok(ProcessOutcome::Completed)
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn elkctl(url: &str, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_elkctl"))
        .args(args)
        .env("ELK_NATS_URL", url)
        .env("ELK_NAMESPACE", NAMESPACE)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("elkctl runs");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn ok(url: &str, args: &[&str]) -> String {
    let output = elkctl(url, args).await;
    assert_eq!(output.code, 0, "elkctl {args:?} failed: {}", output.stderr);
    output.stdout
}

async fn json(url: &str, args: &[&str]) -> AdminResult {
    let mut full = args.to_vec();
    full.push("--json");
    let stdout = ok(url, &full).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn start_control_plane(url: &str, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let service = |id: &str| {
        ServiceCommon::new(
            NatsConfig::new(url, id),
            Namespace::new(NAMESPACE).unwrap(),
            MemberId::new(id).unwrap(),
        )
    };
    let election = elk_election::ElectionConfig::new(service("election-1"));
    let assigner = elk_assigner::AssignerConfig::new(service("assigner-1"));
    let (a, b) = (stop.clone(), stop.clone());
    vec![
        tokio::spawn(async move {
            elk_election::run(election, a.cancelled_owned())
                .await
                .expect("election runs");
        }),
        tokio::spawn(async move {
            elk_assigner::run(assigner, b.cancelled_owned())
                .await
                .expect("assigner runs");
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elkctl_covers_the_admin_surface() {
    // Refused before any network call (nothing listens on port 1).
    let dead = "nats://127.0.0.1:1";
    let bad = elkctl(
        dead,
        &[
            "job",
            "create",
            "j",
            "--start",
            "10",
            "--end",
            "5",
            "--partition-size",
            "1",
        ],
    )
    .await;
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("--end 5 is below --start 10"),
        "{}",
        bad.stderr
    );
    let bad = elkctl(dead, &["partitions", "--status", "finished"]).await;
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("unknown status 'finished'"),
        "{}",
        bad.stderr
    );

    let server = NatsServer::start();
    let url = server.url().to_owned();
    // No assigner yet: "try again later", after the --wait patience.
    let no_leader = elkctl(&url, &["stats", "--wait", "0"]).await;
    assert_eq!(no_leader.code, 6, "{}", no_leader.stderr);
    assert!(
        no_leader.stderr.contains("[no_leader]"),
        "{}",
        no_leader.stderr
    );
    let stop = CancellationToken::new();
    let services = start_control_plane(&url, &stop);
    let broken = Arc::new(AtomicBool::new(true));
    let worker = Worker::builder(
        Namespace::new(NAMESPACE).unwrap(),
        MemberId::new("worker-1").unwrap(),
    )
    .nats_url(&url)
    .capacity(2)
    .start(Flaky {
        broken: broken.clone(),
    })
    .await
    .unwrap();

    // Create (waits for the leader), then the table and JSON views.
    let created = ok(
        &url,
        &[
            "job",
            "create",
            "backfill",
            "--start",
            "1",
            "--end",
            "1000",
            "--partition-size",
            "100",
            "--max-attempts",
            "2",
            "--retry-backoff-ms",
            "50",
            "--wait",
            "20",
        ],
    )
    .await;
    assert!(created.contains("job backfill created"), "{created}");
    let list = ok(&url, &["job", "list"]).await;
    assert!(list.starts_with("NAME"), "{list}");
    assert!(list.contains("backfill"), "{list}");

    // Partition 2 fails twice (max 2 attempts), then is parked as failed.
    wait_until("partition 2 parked as failed", DEADLINE, || async {
        let page = json(
            &url,
            &["partitions", "--job", "backfill", "--status", "failed"],
        )
        .await;
        matches!(page, AdminResult::Partitions { partitions, .. }
            if partitions.len() == 1
                && partitions[0].id == PartitionId(2)
                && partitions[0].status == PartitionStatus::Failed)
    })
    .await
    .unwrap();
    let table = ok(&url, &["partitions", "--status", "failed"]).await;
    assert!(table.contains("poison row 150"), "{table}");
    let status = ok(&url, &["id-status", "backfill", "150"]).await;
    assert!(status.contains("in partition 2"), "{status}");
    assert!(status.contains("failed"), "{status}");
    let AdminResult::Job { job } = json(&url, &["job", "get", "backfill"]).await else {
        panic!("not a job")
    };
    assert_eq!(job.partitions_failed, 1);

    // A refusal: its message and code, a hint, and the "not found" exit status.
    let missing = elkctl(&url, &["job", "get", "nope"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(
        missing
            .stderr
            .contains("error: unknown job 'nope' [unknown_job]"),
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("hint: "), "{}", missing.stderr);
    let missing = elkctl(&url, &["job", "get", "nope", "--json"]).await;
    assert_eq!(missing.code, 3);
    let body: serde_json::Value = serde_json::from_str(&missing.stdout).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "unknown_job", "message": "unknown job 'nope'"}})
    );
    let exists = elkctl(
        &url,
        &[
            "job",
            "create",
            "backfill",
            "--start",
            "1",
            "--end",
            "10",
            "--partition-size",
            "5",
        ],
    )
    .await;
    assert_eq!(exists.code, 4, "conflict: {}", exists.stderr);
    assert!(
        exists.stderr.contains("[already_exists]"),
        "{}",
        exists.stderr
    );

    // Pause and resume go through; the fault is fixed, then retry re-queues the partition.
    assert!(
        ok(&url, &["job", "pause", "backfill"])
            .await
            .contains("paused")
    );
    assert!(
        ok(&url, &["job", "resume", "backfill"])
            .await
            .contains("resumed")
    );
    broken.store(false, Ordering::SeqCst);
    let retried = ok(&url, &["retry", "--job", "backfill", "--partition", "2"]).await;
    assert!(
        retried.contains("re-queued 1 failed partition"),
        "{retried}"
    );

    // watch ends by itself once the job completed, with a final table.
    let watched = elkctl(&url, &["watch", "--job", "backfill"]).await;
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    assert!(watched.stdout.contains("completed"), "{}", watched.stdout);
    let AdminResult::Job { job } = json(&url, &["job", "get", "backfill"]).await else {
        panic!("not a job")
    };
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.ids_completed, 1000);
    assert!(
        ok(&url, &["id-status", "backfill", "150"])
            .await
            .contains("150")
    );
    let AdminResult::Stats { stats } = json(&url, &["stats"]).await else {
        panic!("not stats")
    };
    assert_eq!(stats.jobs, 1);
    assert!(stats.retries_scheduled >= 1, "{stats:?}");
    let nothing = ok(&url, &["retry"]).await;
    assert!(nothing.contains("no failed partitions"), "{nothing}");

    // The levers: members, drain / undrain, freeze / unfreeze, transfer.
    let members = ok(&url, &["members"]).await;
    assert!(members.starts_with("ID"), "{members}");
    assert!(members.contains("worker-1"), "{members}");
    assert!(members.contains("assigner-1"), "{members}");
    let drained = ok(&url, &["drain", "worker-1"]).await;
    assert!(
        drained.contains("worker worker-1 drained (0 granted"),
        "the job is over: nothing to hand back: {drained}"
    );
    let AdminResult::Members { members, .. } = json(&url, &["members"]).await else {
        panic!("not members")
    };
    let worker_1 = members
        .iter()
        .find(|m| m.id.as_str() == "worker-1")
        .unwrap();
    assert_eq!(worker_1.state, MemberState::Drained);
    assert_eq!(worker_1.drain, Some(DrainSource::Operator));
    assert!(ok(&url, &["undrain", "worker-1"]).await.contains("active"));
    let frozen = ok(&url, &["freeze", "--reason", "incident 7"]).await;
    assert!(frozen.contains("placement frozen: incident 7"), "{frozen}");
    assert!(ok(&url, &["members"]).await.contains("placement is frozen"));
    assert!(ok(&url, &["unfreeze"]).await.contains("unfrozen"));
    let unknown = elkctl(&url, &["drain", "nope"]).await;
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("[unknown_member]"),
        "{}",
        unknown.stderr
    );
    // One assigner replica: nobody to hand the role to (the election answers, not the assigner).
    let alone = elkctl(&url, &["transfer", "assigner"]).await;
    assert_eq!(alone.code, 4, "{}", alone.stderr);
    assert!(
        alone.stderr.contains("no other live assigner"),
        "{}",
        alone.stderr
    );
    let bad_role = elkctl(&url, &["transfer", "worker"]).await;
    assert_eq!(bad_role.code, 2, "{}", bad_role.stderr);

    worker.shutdown().await.unwrap();
    stop.cancel();
    for task in services {
        task.await.unwrap();
    }
}
