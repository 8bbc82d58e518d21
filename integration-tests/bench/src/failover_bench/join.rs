//! `join_first_grant_500`: one election and one assigner replica, `workers` live workers of
//! capacity 1 whose processor only holds its partition (no CPU, no progress), each holding its
//! two grants (capacity × grants_per_capacity), and a job with a backlog of pending partitions.
//!
//! Each trial starts one more worker and measures from its `start()` returning to the first
//! assignment record for its incarnation with a grant in it (watched on the assignments bucket).
//! The newcomer then leaves gracefully, and the next trial starts once the view has dropped it.

use super::mirror::KvMirror;
use super::{HoldProcessor, Measured, Settings, log_trial, start_worker};
use crate::follow::Follows;
use elk_integration_tests::Stack;
use elk_protocol::messages::{AssignmentRecord, MembershipView};
use elk_protocol::names::VIEW_KEY;
use elk_types::{IdRange, MemberId};
use elk_worker::WorkerHandle;
use std::time::{Duration, Instant};

const JOB: &str = "failover-join";
/// Workers started at once while building the live fleet.
const START_BATCH: usize = 25;

pub(crate) async fn run(stack: &Stack, settings: Settings) -> anyhow::Result<Measured> {
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let processor = HoldProcessor { step: None };
    let live_count = settings.workers;
    // Two grants per live worker, two per newcomer, and some spare.
    let partitions = (2 * live_count + 2 * settings.trials + 100) as u64;
    stack
        .create_job(JOB, IdRange::new(1, partitions)?, 1)
        .await?;

    let leases = &stack.resources.leases;
    let assignments = &stack.resources.assignments;
    let mut mirror = KvMirror::follow(&[leases, assignments]).await?;

    let setup = Instant::now();
    let mut live: Vec<WorkerHandle> = Vec::with_capacity(live_count);
    for batch_start in (0..live_count).step_by(START_BATCH) {
        let batch_end = (batch_start + START_BATCH).min(live_count);
        let started =
            futures::future::try_join_all((batch_start..batch_end).map(|index| async move {
                start_worker(stack, &stack.url(), &format!("live-{index}"), 1, processor).await
            }))
            .await?;
        live.extend(started);
        if batch_end.is_multiple_of(100) || batch_end == live_count {
            eprintln!("  {batch_end} of {live_count} workers started");
        }
    }
    let fleet: Vec<(MemberId, elk_types::Incarnation)> = live
        .iter()
        .map(|worker| (worker.id().clone(), worker.incarnation()))
        .collect();
    mirror
        .wait_for(
            "every live worker holding two grants",
            settings.deadline() * 4,
            |m| {
                fleet.iter().all(|(id, incarnation)| {
                    m.get::<AssignmentRecord>(assignments, id.as_str())
                        .is_some_and(|record| {
                            record.incarnation == *incarnation && record.grants.len() == 2
                        })
                })
            },
        )
        .await?;
    eprintln!(
        "join_first_grant: {live_count} workers live and granted in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let mut durations = Vec::new();
    for trial in 1..=settings.trials {
        mirror.settle(Duration::from_millis(300)).await?;
        let id = format!("newcomer-{trial}");
        let starting = Instant::now();
        let newcomer = start_worker(stack, &stack.url(), &id, 1, processor).await?;
        let started = Instant::now();
        let incarnation = newcomer.incarnation();
        let granted = mirror
            .wait_for("the newcomer's first grant", settings.deadline(), |m| {
                m.get::<AssignmentRecord>(assignments, &id)
                    .is_some_and(|record| {
                        record.incarnation == incarnation && !record.grants.is_empty()
                    })
            })
            .await?;
        let duration = granted.saturating_duration_since(started);
        log_trial(
            "join_first_grant",
            trial,
            duration,
            &format!(
                "(start() itself took {:.1} ms)",
                (started - starting).as_secs_f64() * 1_000.0
            ),
        );
        durations.push(duration);

        newcomer.shutdown().await?;
        let member = MemberId::new(id.as_str())?;
        mirror
            .wait_for(
                "the newcomer gone from the view",
                settings.deadline(),
                |m| {
                    m.get::<MembershipView>(leases, VIEW_KEY)
                        .is_some_and(|view| view.member(&member).is_none())
                },
            )
            .await?;
    }

    drop(live);
    assigner.abort().await;
    election.abort().await;
    Ok(Measured {
        durations,
        workers: live_count,
        partitions,
    })
}
