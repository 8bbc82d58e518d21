//! Crash-loop containment end to end (issue 14 item 3), on a real nats-server: worker
//! *processes* (`elk-node`) whose processor aborts the process (`std::process::abort`: no report,
//! no release) when it reaches one "key of death" ID, restarted as they die under new member ids.
//! The assigner (in this process, `quarantine_after_deaths = 3`) must park that partition after 3
//! deaths, with the holders that died on record, while the rest of the job completes; every other
//! ID is processed exactly once, by the workers' own record files; `retry` releases the partition
//! (and the next holder dies on it again).
//!
//! One grant per capacity: a worker with a queue starts its next grant as soon as the previous one
//! returns, before that one's `completed` report is out, and dying right then repeats the
//! completed partition (the at-least-once window of a crash); with no queue, a worker is granted
//! the poison only after its previous completion was applied, so "exactly once" is exact.

use elk_integration_tests::Stack;
use elk_integration_tests::nodes::{Node, NodeTarget};
use elk_nats::PartitionQuery;
use elk_protocol::admin::IdState;
use elk_protocol::messages::{PartitionRecord, PartitionStatus};
use elk_testkit::wait_until;
use elk_types::{IdRange, JobName, PartitionId};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const JOB: &str = "poisoned";
const IDS: u64 = 2_000;
const PARTITION_SIZE: u64 = 100;
/// The first ID of the job: whatever partition sizes are cut, it is the first ID of the first
/// partition, so its holders die before processing anything of it.
const POISON: u64 = 1;
const DEATHS: u32 = 3;
const WORKERS: usize = 3;
const DEADLINE: Duration = Duration::from_secs(120);

/// Worker processes kept at [`WORKERS`]: one that exits is replaced at once by a new one (a new
/// member id: a crash-looping deployment's next pod). Member ids of the processes that aborted.
struct Fleet {
    aborted: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Fleet {
    fn start(binary: &'static str, nats_url: String, namespace: String, records: PathBuf) -> Self {
        let aborted = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen, stopped) = (aborted.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let target = NodeTarget {
                binary,
                nats_url: &nats_url,
                namespace: &namespace,
            };
            let mut started = 0usize;
            let spawn = |started: &mut usize| {
                *started += 1;
                let member = format!("worker-{started}");
                let record = records.join(format!("{member}.log"));
                let env = [
                    ("ELK_NODE_CAPACITY", "1"),
                    ("ELK_NODE_ID_DELAY_MS", "2"),
                    ("ELK_NODE_RECORD_FILE", record.to_str().expect("utf-8 path")),
                    ("ELK_NODE_ABORT_ON_ID", &POISON.to_string()),
                ];
                (member.clone(), Node::start(target, "worker", &member, &env))
            };
            let mut nodes: Vec<(String, Node)> =
                (0..WORKERS).map(|_| spawn(&mut started)).collect();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for slot in &mut nodes {
                    let Some(status) = slot.1.exited() else {
                        continue;
                    };
                    assert_eq!(
                        status.signal(),
                        Some(libc_sigabrt()),
                        "{} ended with {status}, not by the poison ID",
                        slot.0
                    );
                    seen.lock().unwrap().push(slot.0.clone());
                    *slot = spawn(&mut started);
                }
            }
            // Killed on drop: a process restarted a moment ago may not handle SIGTERM yet, and
            // how the fleet leaves is not what this test is about.
            drop(nodes);
        });
        Self {
            aborted,
            stop,
            task,
        }
    }

    fn aborted(&self) -> Vec<String> {
        self.aborted.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the fleet task ends cleanly");
    }
}

/// SIGABRT (6 on every platform this runs on).
fn libc_sigabrt() -> i32 {
    6
}

/// How often each ID of `1..=IDS` was processed, from every record file in `dir`.
fn processed_counts(dir: &Path) -> Vec<u32> {
    let mut counts = vec![0u32; IDS as usize + 1];
    for entry in std::fs::read_dir(dir).expect("record dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("record file");
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 3, "malformed record line {line:?}");
            assert_eq!(fields[0], JOB);
            let (first, last): (u64, u64) =
                (fields[1].parse().unwrap(), fields[2].parse().unwrap());
            for id in first..=last {
                counts[id as usize] += 1;
            }
        }
    }
    counts
}

async fn failed_partitions(stack: &Stack) -> anyhow::Result<Vec<PartitionRecord>> {
    let page = stack
        .admin_client()
        .list_partitions(PartitionQuery {
            job: Some(JobName::new(JOB)?),
            statuses: vec![PartitionStatus::Failed],
            after: None,
            limit: None,
        })
        .await?;
    Ok(page.partitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_kills_its_holders_is_quarantined_and_the_rest_processed_once()
-> anyhow::Result<()> {
    let stack = Stack::new().await?;
    let _election = stack.election("election-1");
    let metrics = Arc::new(elk_assigner::AssignerMetrics::default());
    let _assigner =
        stack.assigner_configured(&stack.url(), "assigner-1", metrics.clone(), |settings| {
            settings.grants_per_capacity = 1;
            settings.quarantine_after_deaths = DEATHS;
        });
    stack
        .create_job(JOB, IdRange::new(1, IDS)?, PARTITION_SIZE)
        .await?;
    let records = tempfile::tempdir()?;
    let fleet = Fleet::start(
        env!("CARGO_BIN_EXE_elk-node"),
        stack.url(),
        stack.namespace.to_string(),
        records.path().to_owned(),
    );

    // The job goes on without the poisoned partition: every other ID completes, one is parked.
    wait_until(
        "every partition but the poisoned one completed, it parked",
        DEADLINE,
        || async {
            matches!(stack.job(JOB).await, Ok(Some(job))
            if job.ids_completed == IDS - PARTITION_SIZE && job.partitions_failed == 1)
        },
    )
    .await?;
    let parked = failed_partitions(&stack).await?;
    assert_eq!(parked.len(), 1, "{parked:?}");
    let parked = &parked[0];
    assert!(parked.quarantined, "{parked:?}");
    assert!(parked.range.contains(POISON));
    assert_eq!(parked.checkpoint, None, "nothing of it was ever processed");
    // Exactly DEATHS workers died, each one holding it, and those are on record in order.
    let aborted = fleet.aborted();
    let died: Vec<String> = parked
        .holder_deaths
        .iter()
        .map(|death| death.member.id.to_string())
        .collect();
    assert_eq!(
        died, aborted,
        "the holders on record are the processes that aborted"
    );
    assert_eq!(died.len(), DEATHS as usize);
    assert_eq!(died.iter().collect::<BTreeSet<_>>().len(), died.len());
    assert!(
        parked
            .holder_deaths
            .windows(2)
            .all(|w| w[0].at_unix_ms <= w[1].at_unix_ms)
    );
    assert_eq!(metrics.partitions_quarantined.get(), 1);
    // No other partition carries a death.
    let page = stack
        .admin_client()
        .list_partitions(PartitionQuery {
            job: Some(JobName::new(JOB)?),
            statuses: vec![],
            after: None,
            limit: None,
        })
        .await?;
    assert!(
        page.partitions
            .iter()
            .all(|p| p.id == parked.id || p.holder_deaths.is_empty()),
        "{:?}",
        page.partitions
    );
    match stack
        .admin_client()
        .id_status(JobName::new(JOB)?, POISON)
        .await?
    {
        IdState::InPartition { partition } => assert!(partition.quarantined),
        other => panic!("id {POISON}: {other:?}"),
    }

    // Every other ID exactly once; none of the poisoned partition (its holders died first).
    let counts = processed_counts(records.path());
    for id in 1..=IDS {
        let expected = u32::from(!parked.range.contains(id));
        assert_eq!(
            counts[id as usize], expected,
            "id {id} processed {} times",
            counts[id as usize]
        );
    }

    // `retry` releases it: it is granted again and kills its next holder.
    let retried = stack
        .admin_client()
        .retry(Some(JobName::new(JOB)?), Some(PartitionId(parked.id.get())))
        .await?;
    assert_eq!(retried, 1);
    wait_until(
        "the retried partition killed one more holder",
        DEADLINE,
        || async { fleet.aborted().len() == DEATHS as usize + 1 },
    )
    .await?;
    fleet.stop().await;
    Ok(())
}
