//! Issue 12 scenarios: NATS servers crashing (SIGKILL) under a running job.
//!
//! * On a real 3-server JetStream cluster with every bucket and the stream at 3 replicas, the
//!   server leading the partitions bucket is killed mid-job and restarted, then a server that
//!   leads nothing of interest: the job completes and invariants 1–5 hold under the auditor.
//! * On a single server fsyncing every write (`sync_interval: always`, as `deploy/` runs it),
//!   the server is killed three times mid-job: no acknowledged checkpoint is lost (the progress
//!   stream's and the partitions and assignments buckets' last sequences never go back across a
//!   crash, and the progress stream holds at least every report a worker saw acknowledged), and
//!   with every membership outliving the outages no ID is processed twice.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack, assert_invariants};
use elk_testkit::{NatsCluster, NatsServer, OwnershipAuditor, wait_until};
use elk_types::IdRange;
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(180);

/// ~10 ms per 100 IDs: a 1,000-ID partition runs about 100 ms.
fn paced(ledger: &Arc<Ledger>) -> RecordingProcessor {
    RecordingProcessor::paced(ledger.clone(), 100, Duration::from_millis(10))
}

/// The server name of the leader of `stream`'s replicas, once one is elected.
async fn stream_leader(stream: &async_nats::jetstream::stream::Stream) -> Option<String> {
    let mut stream = stream.clone();
    let info = tokio::time::timeout(Duration::from_secs(2), stream.info())
        .await
        .ok()?
        .ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// Whether every replica of `stream` is current (the restarted server caught up).
async fn replicas_current(stream: &async_nats::jetstream::stream::Stream, replicas: usize) -> bool {
    let mut stream = stream.clone();
    let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), stream.info()).await else {
        return false;
    };
    info.cluster.as_ref().is_some_and(|cluster| {
        cluster.leader.is_some()
            && cluster.replicas.len() == replicas - 1
            && cluster
                .replicas
                .iter()
                .all(|peer| peer.current && !peer.offline)
    })
}

/// Kills node `index` while the job runs, waits until processing went on without it (and, if it led the
/// partitions bucket, until another server leads it), restarts it and waits until it caught up.
async fn kill_and_restart(stack: &mut Stack, ledger: &Ledger, index: usize) {
    let partitions = stack.resources.partitions.stream.clone();
    let name = format!("n{index}");
    let done = ledger.processed();
    // Only "still running" is asserted: how far a restart lets the job get depends on the
    // machine's speed, and the kill tests something only while IDs remain.
    assert!(
        done < ledger.len(),
        "the job is still running: {done} IDs done"
    );
    eprintln!("kill {name} at {done} IDs");
    stack.server.cluster_mut().kill(index);
    wait_until(
        "another server leads the partitions bucket",
        DEADLINE,
        || async {
            stream_leader(&partitions)
                .await
                .is_some_and(|leader| leader != name)
        },
    )
    .await
    .unwrap();
    let before = ledger.processed();
    wait_until("processing goes on without it", DEADLINE, || async {
        ledger.processed() > before + 1_000
    })
    .await
    .unwrap();
    let cluster = stack.server.cluster_mut();
    cluster.restart(index).unwrap();
    cluster.wait_healthy(DEADLINE).unwrap();
    wait_until("the restarted server caught up", DEADLINE, || async {
        replicas_current(&partitions, 3).await
    })
    .await
    .unwrap();
    eprintln!("{name} back at {} IDs", ledger.processed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loses_nothing_when_the_partitions_leader_and_another_server_are_killed() {
    let cluster = NatsCluster::builder()
        .size(3)
        .sync_always(true)
        .start()
        .unwrap();
    let mut stack = Stack::on_cluster(cluster).await.unwrap();
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let standby = stack.assigner("assigner-2");
    let scaler = stack.scaler("scaler-1");
    let range = IdRange::new(1, 600_000).unwrap();
    let ledger = Ledger::new(range);
    let mut workers = Vec::new();
    for id in ["worker-a", "worker-b", "worker-c"] {
        workers.push(stack.worker(id, 2, paced(&ledger)).await.unwrap());
    }
    stack.create_job("replicated", range, 3_000).await.unwrap();
    // Every resource is really replicated 3 ways, the services' setting included (polled: a
    // replica may still be catching up right after creation).
    wait_until("every replica current", DEADLINE, || async {
        replicas_current(&stack.resources.partitions.stream, 3).await
            && replicas_current(&stack.resources.progress, 3).await
    })
    .await
    .unwrap();
    wait_until("processing started", DEADLINE, || async {
        ledger.processed() > 3_000
    })
    .await
    .unwrap();

    // The server leading the partitions bucket (the assigner's busiest writes).
    let leader = stream_leader(&stack.resources.partitions.stream)
        .await
        .expect("the partitions bucket has a leader");
    let leader_index = stack
        .server
        .cluster_mut()
        .index_of(&leader)
        .expect("the leader is a node of the cluster");
    kill_and_restart(&mut stack, &ledger, leader_index).await;
    // Then another server, which does not lead the partitions bucket now.
    let leader = stream_leader(&stack.resources.partitions.stream)
        .await
        .unwrap();
    let follower = (0..3)
        .find(|index| *index != leader_index && format!("n{index}") != leader)
        .unwrap();
    kill_and_restart(&mut stack, &ledger, follower).await;

    let job = stack
        .wait_job_completed("replicated", DEADLINE)
        .await
        .unwrap();
    assert_eq!(job.ids_completed, range.len());
    assert_invariants(&audit, "replicated", &ledger).await;
    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    scaler.stop().await;
    standby.stop().await;
    assigner.stop().await;
    election.stop().await;
}

/// The streams whose last sequence the single-server test compares across each crash.
const STORED_STREAMS: [&str; 3] = ["progress stream", "partitions bucket", "assignments bucket"];

/// The last sequence of each of [`STORED_STREAMS`], read once the server answers again.
async fn last_sequences(stack: &Stack) -> [u64; 3] {
    let streams = [
        stack.resources.progress.clone(),
        stack.resources.partitions.stream.clone(),
        stack.resources.assignments.stream.clone(),
    ];
    let mut last = [0; 3];
    for (slot, stream) in last.iter_mut().zip(streams) {
        let read = std::sync::Mutex::new(None);
        wait_until("the server answers stream info", DEADLINE, || async {
            let mut stream = stream.clone();
            if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), stream.info()).await
            {
                *read.lock().unwrap() = Some(info.state.last_sequence);
            }
            read.lock().unwrap().is_some()
        })
        .await
        .unwrap();
        *slot = read
            .into_inner()
            .unwrap()
            .expect("read before the wait ended");
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_syncing_every_write_loses_no_acknowledged_checkpoint() {
    let server = NatsServer::builder().sync_always(true).start().unwrap();
    // Memberships outlive the outages (a restart takes well under a second), so no worker
    // fences and nothing is re-granted: any ID processed twice would come from a lost write.
    let mut stack = Stack::on_server(server)
        .await
        .unwrap()
        .with_member_ttl(Duration::from_secs(6));
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let range = IdRange::new(1, 40_000).unwrap();
    let ledger = Ledger::new(range);
    let a = stack.worker("worker-a", 2, paced(&ledger)).await.unwrap();
    let b = stack.worker("worker-b", 2, paced(&ledger)).await.unwrap();
    stack.create_job("synced", range, 1_000).await.unwrap();
    for kill in 1..=3u64 {
        wait_until("checkpoints are flowing", DEADLINE, || async {
            ledger.processed() > kill * 8_000
        })
        .await
        .unwrap();
        // Every write JetStream acknowledged before this point (a worker's checkpoint report,
        // the assigner's partition and assignment records) has a sequence at or below its
        // stream's last one now, and each acknowledged progress message (one report, or a
        // batch of them) took a sequence of its own.
        let acknowledged_messages = a.stats().progress_messages + b.stats().progress_messages;
        let before = last_sequences(&stack).await;
        assert!(
            before[0] >= acknowledged_messages,
            "{before:?} {acknowledged_messages}"
        );
        // SIGKILL, then the same port and store.
        eprintln!(
            "kill at {} IDs, last sequences {before:?}",
            ledger.processed()
        );
        stack.server.restart().unwrap();
        // None of those writes is gone after the crash.
        let after = last_sequences(&stack).await;
        for (stream, (before, after)) in STORED_STREAMS.iter().zip(before.iter().zip(after)) {
            assert!(
                after >= *before,
                "kill {kill}: the {stream} lost acknowledged writes: last sequence {before} before, {after} after"
            );
        }
    }

    let job = stack.wait_job_completed("synced", DEADLINE).await.unwrap();
    assert_eq!(job.ids_completed, range.len());
    assert_invariants(&audit, "synced", &ledger).await;
    elk_testkit::assert_exact_coverage(ledger.first(), &ledger.counts());
    let report = audit.check().await;
    assert_eq!(report.expiries_seen, 0, "no membership was lost");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}
