//! elk-worker's observable lifecycle and its blocking processors, against a real nats-server with
//! the test playing the assigner.

mod support;

use elk_protocol::messages::ProgressEvent;
use elk_testkit::{TcpProxy, wait_until};
use elk_worker::{
    BlockingProcessor, CoordinationRuntime, DrainCause, PartitionId, PartitionWork, ProcessError,
    ProcessOutcome, WorkerEvent, WorkerEvents,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{DEADLINE, Harness, RecordingProcessor, grant, job, record};

async fn next_event(events: &mut WorkerEvents) -> WorkerEvent {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("an event within the deadline")
        .expect("the worker is still there")
}

#[tokio::test]
async fn lifecycle_events_follow_join_revoke_drain_fence_rejoin_and_leave() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(1));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .member_ttl(Duration::from_secs(1))
        .start(processor)
        .await
        .unwrap();
    let mut events = worker.events();
    let first_life = worker.incarnation();
    assert_eq!(
        next_event(&mut events).await,
        WorkerEvent::Joined {
            incarnation: first_life
        },
        "the first subscription sees the join that happened during start"
    );

    harness
        .assign(
            "w1",
            &record(first_life, 1, 1, vec![grant(1, 1, 1_000_000, 1)]),
        )
        .await;
    wait_until("partition 1 running", DEADLINE, || async {
        recorder.processed_count(1) > 10
    })
    .await
    .unwrap();
    harness
        .assign("w1", &record(first_life, 1, 2, Vec::new()))
        .await;
    assert_eq!(
        next_event(&mut events).await,
        WorkerEvent::Revoked {
            job: job(),
            partition: PartitionId(1),
            token: grant(1, 1, 1_000_000, 1).token,
        }
    );
    let mut drain = record(first_life, 1, 3, Vec::new());
    drain.drain = true;
    harness.assign("w1", &drain).await;
    assert_eq!(
        next_event(&mut events).await,
        WorkerEvent::Draining {
            cause: DrainCause::Assigner
        }
    );

    harness.resources.members.delete("w1").await.unwrap();
    let WorkerEvent::Fenced { incarnation, .. } = next_event(&mut events).await else {
        panic!("expected a fence");
    };
    assert_eq!(incarnation, first_life);
    let WorkerEvent::Rejoined {
        incarnation: second_life,
        previous,
    } = next_event(&mut events).await
    else {
        panic!("expected a re-join");
    };
    assert_eq!(previous, first_life);
    assert_eq!(second_life, worker.incarnation());

    // A later subscriber sees only what happens from now on.
    let mut late = worker.events();
    let stats = worker.shutdown().await.unwrap();
    assert_eq!(stats.fences, 1);
    for subscriber in [&mut events, &mut late] {
        assert_eq!(
            next_event(subscriber).await,
            WorkerEvent::Draining {
                cause: DrainCause::Shutdown
            }
        );
        assert_eq!(next_event(subscriber).await, WorkerEvent::Left);
        assert_eq!(
            subscriber.recv().await,
            None,
            "the stream ends with the worker"
        );
    }
}

/// Processes IDs with blocking sleeps (as a synchronous driver would), recording each ID and the
/// thread it ran on.
#[derive(Default)]
struct BlockingRecorder {
    processed: Mutex<HashMap<u64, Vec<u64>>>,
    threads: Mutex<Vec<String>>,
}

struct Sleepy(Arc<BlockingRecorder>);

impl BlockingProcessor for Sleepy {
    fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        self.0.threads.lock().unwrap().push(thread);
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(1));
            let mut processed = self.0.processed.lock().unwrap();
            processed
                .entry(work.partition().get())
                .or_default()
                .push(id);
            work.checkpoint(id);
        }
        Ok(ProcessOutcome::Completed)
    }
}

#[tokio::test]
async fn a_blocking_processor_completes_checkpoints_and_stops_on_revoke() {
    let harness = Harness::start().await;
    let recorder = Arc::new(BlockingRecorder::default());
    let worker = harness
        .builder("w1")
        .capacity(2)
        .start_blocking(Sleepy(recorder.clone()))
        .await
        .unwrap();
    let incarnation = worker.incarnation();
    let grants = vec![grant(1, 1, 40, 1), grant(2, 1, 1_000_000, 1)];
    harness
        .assign("w1", &record(incarnation, 1, 1, grants))
        .await;
    harness.wait_for_terminal(&[1]).await;
    wait_until("partition 2 checkpointed", DEADLINE, || async {
        harness
            .events(2)
            .iter()
            .any(|event| matches!(event, ProgressEvent::Checkpoint { .. }))
    })
    .await
    .unwrap();
    harness
        .assign("w1", &record(incarnation, 1, 2, vec![grant(1, 1, 40, 1)]))
        .await;
    harness.wait_for_terminal(&[2]).await;

    assert_eq!(harness.terminal(1), Some(ProgressEvent::Completed));
    let processed = recorder.processed.lock().unwrap().clone();
    assert_eq!(processed[&1], (1..=40).collect::<Vec<_>>());
    let last = *processed[&2].last().unwrap();
    assert_eq!(processed[&2], (1..=last).collect::<Vec<_>>(), "no gap");
    assert_eq!(
        harness.terminal(2),
        Some(ProgressEvent::Released {
            last_done: Some(last)
        }),
        "released with exactly what it finished"
    );
    let threads = recorder.threads.lock().unwrap().clone();
    assert!(
        threads.iter().all(|name| name != "elk-worker"),
        "processors never run on the coordination thread: {threads:?}"
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn workers_sharing_a_coordination_runtime_stop_independently() {
    let harness = Harness::start().await;
    let shared = CoordinationRuntime::start("elk-shared").unwrap();
    let proxy = TcpProxy::start(harness.server.url());
    let victim = harness
        .builder("victim")
        .nats_url(proxy.url())
        .coordination_runtime(shared.clone())
        .start(RecordingProcessor::new(Duration::ZERO))
        .await
        .unwrap();
    let processor = RecordingProcessor::new(Duration::ZERO);
    let recorder = processor.recorder.clone();
    let survivor = harness
        .builder("survivor")
        .coordination_runtime(shared.clone())
        .start(processor)
        .await
        .unwrap();
    drop(shared);
    assert_eq!(proxy.open_connections(), 1);

    victim.kill().await;
    wait_until(
        "the killed worker's connection closed",
        DEADLINE,
        || async { proxy.open_connections() == 0 },
    )
    .await
    .unwrap();
    harness
        .assign(
            "survivor",
            &record(survivor.incarnation(), 1, 1, vec![grant(1, 1, 30, 1)]),
        )
        .await;
    harness.wait_for_terminal(&[1]).await;
    assert_eq!(recorder.processed(1), (1..=30).collect::<Vec<_>>());
    survivor.shutdown().await.unwrap();
}
