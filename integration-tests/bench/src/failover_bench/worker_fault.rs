//! `worker_kill` and `worker_cut`: 4 workers (capacity 2) run a job of 12 long-running
//! partitions (one ID checkpointed every 50 ms; no partition ends during the run). Each trial
//! takes down the worker holding the most partitions and measures until every partition it held
//! is `granted` to another worker in the partitions bucket.
//!
//! * `kill`: `WorkerHandle::kill` (tasks aborted, connection dropped, no leave, nothing
//!   published); a fresh worker then replaces it.
//! * `cut`: every worker reaches NATS through its own `elk_testkit::TcpProxy`; the victim's proxy
//!   is cut (connections closed, reconnects held), so the worker stays alive but cannot renew:
//!   it self-fences at TTL × 5/6 and its key expires on the server. After the measurement the
//!   proxy heals and the same worker re-joins as a new incarnation.
//!
//! The next trial starts once every worker (incarnation) holds partitions again and nothing
//! changed for 300 ms.

use super::mirror::KvMirror;
use super::{HoldProcessor, Measured, Settings, fault_phase, log_trial, start_worker};
use crate::follow::Follows;
use async_nats::jetstream::kv::Store;
use elk_integration_tests::Stack;
use elk_protocol::messages::{MemberRef, PartitionRecord, PartitionStatus};
use elk_testkit::TcpProxy;
use elk_types::IdRange;
use elk_worker::WorkerHandle;
use std::time::{Duration, Instant};

const WORKERS: usize = 4;
const CAPACITY: u32 = 2;
const PARTITIONS: u64 = 12;
const PARTITION_SIZE: u64 = 1_000_000;
const JOB: &str = "failover-worker";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Kill,
    Cut,
}

struct LiveWorker {
    handle: WorkerHandle,
    /// The worker's own path to NATS (`Cut` only).
    proxy: Option<TcpProxy>,
}

impl LiveWorker {
    fn member_ref(&self) -> MemberRef {
        MemberRef {
            id: self.handle.id().clone(),
            incarnation: self.handle.incarnation(),
        }
    }
}

pub(crate) async fn run(
    stack: &Stack,
    settings: Settings,
    fault: Fault,
) -> anyhow::Result<Measured> {
    let scenario = match fault {
        Fault::Kill => "worker_kill",
        Fault::Cut => "worker_cut",
    };
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let processor = HoldProcessor {
        step: Some(Duration::from_millis(50)),
    };
    let start = |index: usize| async move {
        let id = format!("worker-{index}");
        let proxy = (fault == Fault::Cut).then(|| TcpProxy::start(stack.url()));
        let url = proxy.as_ref().map_or_else(|| stack.url(), TcpProxy::url);
        let handle = start_worker(stack, &url, &id, CAPACITY, processor).await?;
        anyhow::Ok(LiveWorker { handle, proxy })
    };
    let mut live: Vec<LiveWorker> = Vec::new();
    let mut next_worker = 1;
    for _ in 0..WORKERS {
        live.push(start(next_worker).await?);
        next_worker += 1;
    }
    let mut mirror = KvMirror::follow(&[&stack.resources.partitions]).await?;
    stack
        .create_job(
            JOB,
            IdRange::new(1, PARTITIONS * PARTITION_SIZE)?,
            PARTITION_SIZE,
        )
        .await?;
    let partitions = &stack.resources.partitions;

    let mut durations = Vec::new();
    for trial in 1..=settings.trials {
        // Every partition granted to a live worker, every worker holding some, and nothing
        // changing for a moment (the rebalance after the previous trial is over).
        let current = |live: &[LiveWorker]| -> Vec<MemberRef> {
            live.iter().map(LiveWorker::member_ref).collect()
        };
        let refs = loop {
            // A re-joined worker has a new incarnation: re-read the incarnations while waiting.
            mirror
                .wait_for("a balanced placement", settings.deadline(), |m| {
                    balanced(m, partitions, &current(&live))
                })
                .await?;
            mirror.settle(Duration::from_millis(300)).await?;
            let refs = current(&live);
            if balanced(&mirror, partitions, &refs) {
                break refs;
            }
        };
        tokio::time::sleep(fault_phase(&settings, trial)).await;
        let held_by = |owner: &MemberRef| -> Vec<String> {
            mirror
                .values::<PartitionRecord>(partitions)
                .filter(|(_, record)| record.owner.as_ref() == Some(owner))
                .map(|(key, _)| key.clone())
                .collect()
        };
        let victim_index = (0..live.len())
            .max_by_key(|&index| held_by(&refs[index]).len())
            .expect("workers are live");
        let held = held_by(&refs[victim_index]);
        let victim = refs[victim_index].clone();

        let started = Instant::now();
        let killed = match fault {
            Fault::Kill => {
                let killed = live.swap_remove(victim_index);
                killed.handle.kill().await;
                None
            }
            Fault::Cut => {
                let proxy = live[victim_index]
                    .proxy
                    .as_ref()
                    .expect("cut needs a proxy");
                proxy.cut();
                Some(victim_index)
            }
        };
        let recovered = mirror
            .wait_for(
                "the lost worker's partitions granted elsewhere",
                settings.deadline(),
                |m| {
                    held.iter().all(|key| {
                        m.get::<PartitionRecord>(partitions, key)
                            .is_some_and(|record| {
                                record.status == PartitionStatus::Granted
                                    && record.owner.as_ref().is_some_and(|o| o.id != victim.id)
                            })
                    })
                },
            )
            .await?;
        let duration = recovered - started;
        log_trial(
            scenario,
            trial,
            duration,
            &format!("({} partitions of {})", held.len(), victim.id),
        );
        durations.push(duration);

        match killed {
            None => {
                live.push(start(next_worker).await?);
                next_worker += 1;
            }
            Some(index) => {
                if let Some(proxy) = &live[index].proxy {
                    proxy.heal();
                }
            }
        }
    }

    drop(live);
    assigner.abort().await;
    election.abort().await;
    Ok(Measured {
        durations,
        workers: WORKERS,
        partitions: PARTITIONS,
    })
}

/// Every partition of the job exists and is granted to one of `live`, and each of them holds one.
fn balanced(mirror: &KvMirror, partitions: &Store, live: &[MemberRef]) -> bool {
    let mut held = vec![0usize; live.len()];
    let mut granted = 0;
    for (_, record) in mirror.values::<PartitionRecord>(partitions) {
        if record.status != PartitionStatus::Granted {
            return false;
        }
        let Some(index) = live.iter().position(|r| record.owner.as_ref() == Some(r)) else {
            return false;
        };
        held[index] += 1;
        granted += 1;
    }
    granted == PARTITIONS && held.iter().all(|&count| count > 0)
}
