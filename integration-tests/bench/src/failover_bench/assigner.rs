//! `assigner_kill_10k`, `assigner_kill_100k`, `graceful_handoff` and `leader_transfer`: two
//! assigner replicas, one election replica, 4 workers (capacity 2, holding their grants) and one
//! job of `partitions` partitions of one ID each, created once for all trials.
//!
//! Each trial takes the leading replica down (`ServiceHandle::abort`: its task is dropped
//! mid-flight and its member key expires by TTL; or `ServiceHandle::stop`: graceful) or asks the
//! election to hand the role to the standby (`elkctl transfer assigner --to <standby>`, through
//! the admin client), and measures until `leases/role.assigner` names the standby **and** an
//! assignment record written under the standby's epoch appears (the new leader has loaded the
//! state from KV and is granting). A downed replica is then restarted under the same id and
//! becomes the standby (after a transfer the old leader stays up as the standby), so the next
//! trial takes down the other one.

use super::mirror::KvMirror;
use super::{HoldProcessor, Measured, Settings, fault_phase, log_trial, start_worker};
use crate::follow::Follows;
use anyhow::Context;
use elk_integration_tests::{ServiceHandle, Stack};
use elk_protocol::messages::{AssignmentRecord, MemberRole, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, VIEW_KEY};
use elk_types::{IdRange, MemberId};
use elk_worker::WorkerHandle;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const REPLICAS: [&str; 2] = ["assigner-a", "assigner-b"];
const WORKERS: usize = 4;
const CAPACITY: u32 = 2;
const JOB: &str = "failover-assigner";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `ServiceHandle::abort`: no leave, the member key expires by TTL.
    Abort,
    /// `ServiceHandle::stop`: the leader task is awaited and the member key deleted.
    GracefulStop,
    /// A leadership transfer to the standby, requested from the election (no replica stops).
    Transfer,
}

pub(crate) async fn run(
    stack: &Stack,
    settings: Settings,
    partitions: u64,
    fault: Fault,
) -> anyhow::Result<Measured> {
    let scenario = match fault {
        Fault::Abort => "assigner_kill",
        Fault::GracefulStop => "graceful_handoff",
        Fault::Transfer => "leader_transfer",
    };
    let election = stack.election("election-1");
    let mut replicas: HashMap<&str, ServiceHandle> = REPLICAS
        .iter()
        .map(|&id| (id, assigner(stack, id, partitions)))
        .collect();
    let mut workers: Vec<WorkerHandle> = Vec::new();
    for index in 1..=WORKERS {
        workers.push(
            start_worker(
                stack,
                &stack.url(),
                &format!("worker-{index}"),
                CAPACITY,
                HoldProcessor { step: None },
            )
            .await?,
        );
    }
    let setup = Instant::now();
    stack
        .create_job(JOB, IdRange::new(1, partitions)?, 1)
        .await?;
    wait_for_partitions(stack, partitions, settings).await?;
    eprintln!(
        "{scenario}: {partitions} partitions created in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let leases = &stack.resources.leases;
    let assignments = &stack.resources.assignments;
    let mut mirror = KvMirror::follow(&[leases, assignments]).await?;
    let role_key = ControlRole::Assigner.lease_key();
    let admin = stack.admin_client();
    let worker_ids: Vec<(MemberId, elk_types::Incarnation)> = workers
        .iter()
        .map(|worker| (worker.id().clone(), worker.incarnation()))
        .collect();

    let mut durations = Vec::new();
    for trial in 1..=settings.trials {
        // Ready: a leader, the other replica in the view as its standby, and every worker's
        // record rewritten under the leader's epoch.
        let ready = |m: &KvMirror| -> Option<(String, String)> {
            let lease = m.get::<RoleLease>(leases, role_key)?;
            let leader = lease.holder?.id;
            let standby = REPLICAS.iter().find(|&&id| id != leader.as_str())?;
            let view = m.get::<MembershipView>(leases, VIEW_KEY)?;
            let standby_live = view
                .member(&MemberId::new(*standby).ok()?)
                .is_some_and(|member| member.role == MemberRole::Assigner);
            let records_current = worker_ids.iter().all(|(id, incarnation)| {
                m.get::<AssignmentRecord>(assignments, id.as_str())
                    .is_some_and(|record| {
                        record.epoch == lease.epoch
                            && record.incarnation == *incarnation
                            && !record.grants.is_empty()
                    })
            });
            (standby_live && records_current).then(|| (leader.to_string(), (*standby).to_owned()))
        };
        let (leader, standby) = loop {
            mirror
                .wait_for(
                    "a leader, a live standby and current records",
                    settings.deadline(),
                    |m| ready(m).is_some(),
                )
                .await?;
            mirror.settle(Duration::from_millis(300)).await?;
            if let Some(roles) = ready(&mirror) {
                break roles;
            }
        };

        tokio::time::sleep(fault_phase(&settings, trial)).await;
        let started = Instant::now();
        let downed = match fault {
            Fault::Abort | Fault::GracefulStop => {
                let handle = replicas
                    .remove(leader.as_str())
                    .context("the leader is one of our replicas")?;
                if fault == Fault::Abort {
                    handle.abort().await;
                } else {
                    handle.stop().await;
                }
                true
            }
            Fault::Transfer => {
                let to = MemberId::new(standby.as_str())?;
                let transfer = admin
                    .transfer(ControlRole::Assigner, Some(to))
                    .await
                    .context("the election transfers the assigner role")?;
                anyhow::ensure!(
                    transfer.holder.id.as_str() == standby,
                    "the role went to {} instead of {standby}",
                    transfer.holder.id
                );
                false
            }
        };
        let mut new_epoch = None;
        let recovered = mirror
            .wait_for(
                "the standby leading and granting",
                settings.deadline(),
                |m| {
                    let Some(lease) = m.get::<RoleLease>(leases, role_key) else {
                        return false;
                    };
                    if lease.holder.as_ref().map(|h| h.id.as_str()) != Some(standby.as_str()) {
                        return false;
                    }
                    new_epoch = Some(lease.epoch);
                    m.values::<AssignmentRecord>(assignments)
                        .any(|(_, record)| record.epoch >= lease.epoch)
                },
            )
            .await?;
        let duration = recovered - started;
        log_trial(
            scenario,
            trial,
            duration,
            &format!(
                "({leader} {}, {standby} leads at epoch {})",
                if downed { "down" } else { "hands over" },
                new_epoch.map_or(0, |epoch| epoch.0)
            ),
        );
        durations.push(duration);

        if downed {
            let id = REPLICAS
                .iter()
                .find(|&&id| id == leader)
                .expect("a replica id");
            replicas.insert(id, assigner(stack, id, partitions));
        }
    }

    drop(workers);
    for (_, replica) in replicas {
        replica.abort().await;
    }
    election.abort().await;
    Ok(Measured {
        durations,
        workers: WORKERS,
        partitions,
    })
}

/// An assigner replica that cuts the whole job at once: the scenario measures a takeover with
/// `partitions` keys in KV, more than the default `max_job_backlog` in the full run.
fn assigner(stack: &Stack, id: &str, partitions: u64) -> ServiceHandle {
    stack.assigner_configured(&stack.url(), id, Default::default(), |settings| {
        settings.max_job_backlog = settings.max_job_backlog.max(partitions);
    })
}

/// Waits until the assigner has cut the whole job into partitions (setup, not measured).
async fn wait_for_partitions(
    stack: &Stack,
    partitions: u64,
    settings: Settings,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + settings.deadline() + Duration::from_secs(partitions / 100);
    let mut reported = Instant::now();
    loop {
        let created = stack.job(JOB).await?.map_or(0, |job| job.partitions_total);
        if created >= partitions {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {created} of {partitions} partitions created in time"
        );
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!("  {created} of {partitions} partitions created");
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
