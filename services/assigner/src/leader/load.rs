//! Reading the state a term starts from: snapshots of the jobs, partitions and assignments buckets,
//! decoded (undecodable records are logged and skipped) and handed to the model.

use crate::error::AssignerError;
use crate::model::{AssignerState, Policy, Snapshot};
use crate::store::newer_term_exists;
use elk_nats::{Resources, read_entry, watch_snapshot};
use elk_protocol::decode;
use elk_protocol::messages::{
    AssignmentRecord, JobRecord, PartitionRecord, PlacementControl, unix_ms_now,
};
use elk_protocol::names::PLACEMENT_KEY;
use elk_types::{Epoch, MemberId};

/// The model of a new term under `epoch`. A stored assignment record of a higher epoch means a
/// newer leader exists ([`AssignerError::Deposed`]) if the role lease has reached that epoch;
/// otherwise it is forged and skipped (the next write of its key overwrites it).
pub(super) async fn load_state(
    resources: &Resources,
    epoch: Epoch,
    policy: Policy,
) -> Result<AssignerState, AssignerError> {
    let mut snapshot = Snapshot::default();
    for (key, entry) in watch_snapshot(&resources.jobs).await?.entries {
        match decode::<JobRecord>(&entry.value) {
            Ok(job) => snapshot.jobs.push((job, entry.revision)),
            Err(error) => tracing::warn!(%key, %error, "skipping undecodable job record"),
        }
    }
    let partitions = watch_snapshot(&resources.partitions).await?;
    snapshot.partitions.reserve(partitions.entries.len());
    for (key, entry) in partitions.entries {
        match decode::<PartitionRecord>(&entry.value) {
            Ok(record) => snapshot.partitions.push((record, entry.revision)),
            Err(error) => tracing::warn!(%key, %error, "skipping undecodable partition record"),
        }
    }
    for (key, entry) in watch_snapshot(&resources.assignments).await?.entries {
        let Ok(worker) = MemberId::new(key.clone()) else {
            continue;
        };
        match decode::<AssignmentRecord>(&entry.value) {
            Ok(record) if record.epoch > epoch => {
                if newer_term_exists(resources, record.epoch).await? {
                    return Err(AssignerError::Deposed { epoch });
                }
                // Forged: not loaded; the next write of this key overwrites it.
            }
            Ok(record) => snapshot.assignments.push((worker, record, entry.revision)),
            Err(error) => tracing::warn!(%key, %error, "skipping undecodable assignment record"),
        }
    }
    if let Some(entry) = read_entry(&resources.fleet, PLACEMENT_KEY).await?
        && !entry.deleted
    {
        match decode::<PlacementControl>(&entry.value) {
            Ok(control) if control.epoch > epoch => {
                if newer_term_exists(resources, control.epoch).await? {
                    return Err(AssignerError::Deposed { epoch });
                }
            }
            Ok(control) => snapshot.placement = Some((control, entry.revision)),
            Err(error) => tracing::warn!(%error, "ignoring undecodable placement record"),
        }
    }
    Ok(AssignerState::load(epoch, policy, unix_ms_now(), snapshot))
}
