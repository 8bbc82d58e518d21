//! The admin surface of the leader: one [`AdminCommand`] in, one [`AdminReply`] out. Changes are
//! made on the model; the leader loop flushes them before it sends the reply, so a reply means
//! the change is stored.

use crate::leader::AssignerMetrics;
use crate::state::AssignerState;
use bytes::Bytes;
use elk_nats::{CasOutcome, Resources, cas_write};
use elk_protocol::admin::{
    AdminCommand, AdminErrorCode, AdminReply, AdminRequest, AdminResult, AdminStats,
};
use elk_protocol::{decode, encode};
use std::sync::atomic::Ordering;

pub(crate) async fn handle(
    state: &mut AssignerState,
    resources: &Resources,
    metrics: &AssignerMetrics,
    payload: &[u8],
) -> AdminReply {
    let request: AdminRequest = match decode(payload) {
        Ok(request) => request,
        Err(error) => {
            return AdminReply::error(AdminErrorCode::BadRequest, format!("bad request: {error}"));
        }
    };
    let outcome = match request.command {
        AdminCommand::CreateJob { name, spec } => {
            let record = match state.new_job(&name, &spec) {
                Ok(record) => record,
                Err(error) => return AdminReply::error(classify(&error), error),
            };
            let written = cas_write(
                &resources.jetstream,
                &resources.jobs,
                name.as_str(),
                Bytes::from(encode(&record)),
                None,
                None,
            )
            .await;
            match written {
                Ok(CasOutcome::Written(revision)) => {
                    state.insert_job(record.clone(), revision);
                    Ok(AdminResult::Job { job: record })
                }
                Ok(CasOutcome::Conflict { .. }) => Err(format!("job '{name}' already exists")),
                Err(error) => Err(format!("could not store the job: {error}")),
            }
        }
        AdminCommand::ListJobs => Ok(AdminResult::Jobs {
            jobs: state
                .jobs
                .values()
                .map(|stored| stored.value.clone())
                .collect(),
        }),
        AdminCommand::GetJob { name } => match state.jobs.get(&name) {
            Some(stored) => Ok(AdminResult::Job {
                job: stored.value.clone(),
            }),
            None => Err(format!("unknown job '{name}'")),
        },
        AdminCommand::PauseJob { name } => {
            state.pause_job(&name).map(|job| AdminResult::Job { job })
        }
        AdminCommand::ResumeJob { name } => {
            state.resume_job(&name).map(|job| AdminResult::Job { job })
        }
        AdminCommand::CancelJob { name } => {
            state.cancel_job(&name).map(|job| AdminResult::Job { job })
        }
        AdminCommand::ListPartitions {
            job,
            statuses,
            after,
            limit,
        } => {
            if let Some(job) = &job
                && !state.jobs.contains_key(job)
            {
                return AdminReply::error(
                    AdminErrorCode::UnknownJob,
                    format!("unknown job '{job}'"),
                );
            }
            let (partitions, next_after) =
                state.list_partitions(job.as_ref(), &statuses, after.as_ref(), limit);
            Ok(AdminResult::Partitions {
                partitions,
                next_after,
            })
        }
        AdminCommand::Retry { job, partition } => state
            .retry(job.as_ref(), partition)
            .map(|count| AdminResult::Retried { count }),
        AdminCommand::IdStatus { job, id } => state
            .id_status(&job, id)
            .map(|status| AdminResult::IdStatus { id, status }),
        AdminCommand::Stats => Ok(AdminResult::Stats {
            stats: stats(state, metrics),
        }),
    };
    match outcome {
        Ok(result) => AdminReply::ok(result),
        Err(error) => AdminReply::error(classify(&error), error),
    }
}

/// The code of a refusal the model phrased as text.
// TODO(structure issue): the model returns a typed refusal instead; this goes away then.
fn classify(message: &str) -> AdminErrorCode {
    if message.starts_with("unknown job") {
        AdminErrorCode::UnknownJob
    } else if message.contains("is not a live partition") {
        AdminErrorCode::UnknownPartition
    } else if message.contains("already exists") {
        AdminErrorCode::AlreadyExists
    } else if message.contains("cannot be")
        || message.contains("already completed")
        || message.contains("is not failed")
    {
        AdminErrorCode::InvalidState
    } else if message.starts_with("could not") {
        AdminErrorCode::Unavailable
    } else {
        AdminErrorCode::InvalidSpec
    }
}

fn stats(state: &AssignerState, metrics: &AssignerMetrics) -> AdminStats {
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    AdminStats {
        epoch: state.epoch,
        jobs: state.jobs.len() as u64,
        live_workers: state.workers.len() as u64,
        partitions: state.partition_counts(),
        progress_applied: load(&metrics.progress_applied),
        progress_rejected: state.rejected_progress,
        progress_malformed: load(&metrics.progress_malformed),
        gaps_detected: state.gaps_detected,
        gaps_repaired: state.gaps_repaired,
        overlaps_detected: state.overlaps_detected,
        revocations: state.revocations,
        revokes_overdue: state.revokes_overdue,
        retries_scheduled: state.retries_scheduled,
        partitions_compacted: state.partitions_compacted,
    }
}
