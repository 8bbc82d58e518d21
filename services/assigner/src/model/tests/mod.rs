//! Unit tests of the model (no NATS, no clock: the tests pass `now`). `decisions.rs`: what rounds
//! decide (cutting, grants, revokes, progress, reclaims, retries, planners, audits); `changes.rs`:
//! the change set and the lifecycle checks; `admin.rs`: commands and their typed refusals;
//! `levers.rs`: drain, undrain, freeze and the progress counters; `churn.rs`: the churn budget
//! (rebalancing moves per round, convergence, the fewest moves); `tail_hold.rs`: a job's end on
//! an unchanged fleet moves no running grant, queued ones only to idle slots; `write_path.rs`:
//! the KV writes of a completion on the lean and baseline write paths, and a lean takeover.

mod admin;
mod bounded;
mod changes;
mod churn;
mod cold_start;
mod decisions;
mod gauges;
mod levers;
mod quarantine;
mod split;
mod tail_hold;
mod write_path;

use super::{AssignerState, PartitionKey, Policy, Snapshot};
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::messages::{
    JobRecord, JobSpec, MemberRef, MemberRole, MembershipView, PartitionRecord, PartitionStatus,
    ProgressEvent, ProgressReport, ViewMember,
};
use elk_types::{
    Capacity, Epoch, Generation, IdRange, Incarnation, JobName, MemberId, PartitionId,
    PartitionLeaseToken, Revision,
};

const EPOCH: Epoch = Epoch(3);

fn job_name() -> JobName {
    JobName::new("j").unwrap()
}

fn key(partition: u64) -> PartitionKey {
    PartitionKey::new(job_name(), PartitionId(partition))
}

fn policy() -> Policy {
    Policy {
        grants_per_capacity: 2,
        partitions_per_round: 10_000,
        max_fill_cut: super::MAX_FILL_CUT,
        max_job_backlog: 100_000,
        finished_job_retention_ms: 3_600_000,
        revoke_timeout_ms: 5_000,
        tails: super::TailPolicy::default(),
        rebalance: super::RebalancePolicy::default(),
        quarantine_after_deaths: 3,
        write_path: super::WritePath::Lean,
    }
}

/// `policy` on the baseline write path, which cuts fixed jobs ahead of their grants (up to
/// `partitions_per_round` a round) also while workers are live: for the tests of what waits.
fn cut_ahead(policy: Policy) -> Policy {
    Policy {
        write_path: super::WritePath::Baseline,
        ..policy
    }
}

/// `state_with_job` with fixed jobs cut ahead of their grants ([`cut_ahead`]).
fn cut_ahead_state_with_job(range: IdRange, partition_size: u64) -> AssignerState {
    AssignerState::load(
        EPOCH,
        cut_ahead(policy()),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, partition_size), Revision(1))],
            ..Snapshot::default()
        },
    )
}

/// A model loaded from `snapshot` at time 0.
fn loaded(snapshot: Snapshot) -> AssignerState {
    AssignerState::load(EPOCH, policy(), 0, snapshot)
}

/// A model holding `job` (stored at revision 1) and nothing else.
fn state_with(job: JobRecord) -> AssignerState {
    loaded(Snapshot {
        jobs: vec![(job, Revision(1))],
        ..Snapshot::default()
    })
}

fn fixed_job(range: IdRange, partition_size: u64) -> JobRecord {
    JobRecord::new(job_name(), JobSpec::fixed(range, partition_size), EPOCH, 0)
}

fn state_with_job(range: IdRange, partition_size: u64) -> AssignerState {
    state_with(fixed_job(range, partition_size))
}

fn view(workers: &[(&str, u64, u32)]) -> MembershipView {
    let mut members: Vec<ViewMember> = workers
        .iter()
        .map(|(id, incarnation, capacity)| ViewMember {
            id: MemberId::new(*id).unwrap(),
            role: MemberRole::Worker,
            incarnation: Incarnation(*incarnation),
            capacity: Capacity(*capacity),
            jobs: vec![],
        })
        .collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    MembershipView {
        schema: SCHEMA_VERSION,
        generation: Generation(1),
        members,
    }
}

fn report(
    worker: &str,
    incarnation: u64,
    partition: u64,
    token: PartitionLeaseToken,
    event: ProgressEvent,
) -> ProgressReport {
    ProgressReport {
        schema: SCHEMA_VERSION,
        worker: MemberId::new(worker).unwrap(),
        incarnation: Incarnation(incarnation),
        job: job_name(),
        partition: PartitionId(partition),
        token,
        event,
    }
}

/// The record of a live partition as it would be written.
fn record(state: &AssignerState, partition: u64) -> PartitionRecord {
    let key = key(partition);
    state.partitions[&key].value.record(&key)
}

/// The partitions (numbers) in `status`, in key order.
fn partitions_in(state: &AssignerState, status: PartitionStatus) -> Vec<u64> {
    state
        .partitions
        .iter()
        .filter(|(_, stored)| stored.value.status == status)
        .map(|(key, _)| key.partition.get())
        .collect()
}

fn owner_and_token(
    state: &AssignerState,
    partition: u64,
) -> (Option<MemberRef>, PartitionLeaseToken) {
    let record = record(state, partition);
    (record.owner.clone(), record.token)
}

fn failed(error: &str, last_done: Option<u64>, permanent: bool) -> ProgressEvent {
    ProgressEvent::Failed {
        error: error.to_owned(),
        last_done,
        permanent,
    }
}

impl AssignerState {
    fn granted_to(&self, worker: &str) -> usize {
        let worker = MemberId::new(worker).unwrap();
        self.grants_by_worker
            .get(&worker)
            .map_or(0, |keys| keys.len())
    }

    fn pending_count(&self) -> usize {
        self.pending.len()
    }
}

/// Whether a range purge of `changes` removes `key` stored at `revision` (the stream purge of the
/// job's subjects below a sequence, `range_purge.rs`).
fn range_purged(changes: &super::ChangeSet, key: &PartitionKey, revision: Revision) -> bool {
    changes
        .range_purges
        .iter()
        .any(|range| range.job == key.job && revision < range.below)
}
