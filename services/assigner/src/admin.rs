//! The admin surface of the leader: one [`AdminRequest`] in, one [`AdminReply`] out. Commands act
//! on the model only (job creation included); the leader loop writes the round's change set before
//! it sends the reply, so a reply means the change is stored. Refusals carry the model's typed
//! reason as a wire code ([`AdminRefusal::code`]).

use crate::metrics::AssignerMetrics;
use crate::model::{AdminRefusal, AssignerState, PartitionKey};
use elk_protocol::admin::{
    AdminCommand, AdminErrorCode, AdminReply, AdminRequest, AdminResult, AdminStats,
};
use elk_protocol::decode;
use elk_protocol::messages::unix_ms_now;

/// Room left in a reply for the envelope around a listing's records (reply, result and page
/// fields; a few dozen bytes in practice).
const REPLY_ENVELOPE_BYTES: usize = 4 * 1024;

/// Handles one encoded request; `traceparent` is the (sampled) span handling it, which a created
/// job records so that its partitions' traces link to it. Listings are cut so that the encoded
/// reply stays within `max_reply_bytes` (the server's maximum payload).
pub(crate) fn handle(
    state: &mut AssignerState,
    metrics: &AssignerMetrics,
    payload: &[u8],
    traceparent: Option<String>,
    max_reply_bytes: usize,
) -> AdminReply {
    let request: AdminRequest = match decode(payload) {
        Ok(request) => request,
        Err(error) => {
            return AdminReply::error(AdminErrorCode::BadRequest, format!("bad request: {error}"));
        }
    };
    let listing_bytes = max_reply_bytes.saturating_sub(REPLY_ENVELOPE_BYTES);
    match execute(state, metrics, request.command, traceparent, listing_bytes) {
        Ok(result) => AdminReply::ok(result),
        Err(refusal) => AdminReply::error(refusal.code(), refusal.to_string()),
    }
}

fn execute(
    state: &mut AssignerState,
    metrics: &AssignerMetrics,
    command: AdminCommand,
    traceparent: Option<String>,
    listing_bytes: usize,
) -> Result<AdminResult, AdminRefusal> {
    let job = |job| AdminResult::Job { job };
    Ok(match command {
        AdminCommand::CreateJob { name, spec } => {
            job(state.create_traced_job(&name, &spec, traceparent)?)
        }
        AdminCommand::ListJobs { after, limit } => {
            let (jobs, next_after) = state.list_jobs(after.as_ref(), limit, listing_bytes);
            AdminResult::Jobs { jobs, next_after }
        }
        AdminCommand::GetJob { name } => job(state.get_job(&name)?),
        AdminCommand::PauseJob { name } => job(state.pause_job(&name)?),
        AdminCommand::ResumeJob { name } => job(state.resume_job(&name)?),
        AdminCommand::CancelJob { name } => job(state.cancel_job(&name)?),
        AdminCommand::ListPartitions {
            job,
            statuses,
            after,
            limit,
        } => {
            let after = after.map(|(job, partition)| PartitionKey::new(job, partition));
            let (partitions, next_after) = state.list_partitions(
                job.as_ref(),
                &statuses,
                after.as_ref(),
                limit,
                listing_bytes,
            )?;
            AdminResult::Partitions {
                partitions,
                next_after: next_after.map(|key| (key.job, key.partition)),
            }
        }
        AdminCommand::Retry { job, partition } => AdminResult::Retried {
            count: state.retry(job.as_ref(), partition)?,
        },
        AdminCommand::IdStatus { job, id } => AdminResult::IdStatus {
            id,
            status: state.id_status(&job, id)?,
        },
        AdminCommand::Stats => AdminResult::Stats {
            stats: stats(state, metrics),
        },
        AdminCommand::Members => {
            let (frozen, members) = state.members();
            AdminResult::Members {
                epoch: state.epoch(),
                now_unix_ms: unix_ms_now(),
                frozen,
                members,
            }
        }
        AdminCommand::Drain { worker, source } => AdminResult::Member {
            member: state.drain(&worker, source)?,
        },
        AdminCommand::Undrain { worker } => AdminResult::Member {
            member: state.undrain(&worker)?,
        },
        AdminCommand::Freeze { reason } => AdminResult::Placement {
            placement: state.freeze(reason),
        },
        AdminCommand::Unfreeze => AdminResult::Placement {
            placement: state.unfreeze(),
        },
        // Served by the election; a request on the assigner's subject is a client's mistake.
        AdminCommand::Transfer { .. } => return Err(AdminRefusal::WrongService("election")),
    })
}

/// The model's counters of this term, plus the replica's I/O-edge counters.
fn stats(state: &AssignerState, metrics: &AssignerMetrics) -> AdminStats {
    let counters = state.counters();
    AdminStats {
        epoch: state.epoch(),
        jobs: state.job_count() as u64,
        live_workers: state.live_worker_count() as u64,
        partitions: state.partition_counts(),
        progress_applied: metrics.progress_reports("applied"),
        progress_rejected: counters.progress_rejected,
        progress_malformed: metrics.progress_reports("malformed"),
        gaps_detected: counters.gaps_detected,
        gaps_repaired: counters.gaps_repaired,
        overlaps_detected: counters.overlaps_detected,
        revocations: counters.revocations,
        revokes_overdue: counters.revokes_overdue,
        retries_scheduled: counters.retries_scheduled,
        partitions_compacted: counters.partitions_compacted,
    }
}
