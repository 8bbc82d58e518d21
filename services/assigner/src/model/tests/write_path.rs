//! The logical cost of a completion on each write path (issue 10 item 4,
//! docs/decisions/lean-write-path.md): the KV writes a round's change set holds, replayed into an
//! in-memory KV; and a takeover on the lean path, whose completions live in the job record only
//! until compaction, loses none and reports no overlap.

use super::*;
use crate::model::{ChangeSet, WritePath, Written};
use elk_protocol::messages::{AssignmentRecord, JobState, PartitionStatus};
use std::collections::BTreeMap;

fn policy_on(write_path: WritePath) -> Policy {
    Policy {
        write_path,
        ..policy()
    }
}

/// The writes of one change set, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Costs {
    partition_creates: usize,
    partition_updates: usize,
    completed_records: usize,
    purges: usize,
    range_purges: usize,
    job_records: usize,
    assignment_records: usize,
}

impl Costs {
    fn of(changes: &ChangeSet) -> Self {
        let creates = changes
            .partitions
            .iter()
            .filter(|put| put.expected.is_none())
            .count();
        Self {
            partition_creates: creates,
            partition_updates: changes.partitions.len() - creates,
            completed_records: changes.completed.len(),
            purges: changes.purges.len(),
            range_purges: changes.range_purges.len(),
            job_records: changes.jobs.len(),
            assignment_records: changes.assignments.len(),
        }
    }

    fn total(self) -> usize {
        self.partition_creates
            + self.partition_updates
            + self.completed_records
            + self.purges
            + self.range_purges
            + self.job_records
            + self.assignment_records
    }
}

/// The buckets as the store would leave them: every change set applied in order.
#[derive(Default)]
struct Kv {
    partitions: BTreeMap<PartitionKey, (PartitionRecord, Revision)>,
    jobs: BTreeMap<JobName, (JobRecord, Revision)>,
    assignments: BTreeMap<MemberId, (AssignmentRecord, Revision)>,
    revision: u64,
}

impl Kv {
    fn next_revision(&mut self) -> Revision {
        self.revision += 1;
        Revision(self.revision)
    }

    /// Takes the round's changes, stores them and reports the revisions back.
    fn flush(&mut self, state: &mut AssignerState) -> Costs {
        let changes = state.take_changes();
        let costs = Costs::of(&changes);
        let mut written = Written::default();
        for put in changes.partitions.iter().chain(&changes.completed) {
            let revision = self.next_revision();
            self.partitions
                .insert(put.key.clone(), (put.value.clone(), revision));
            written.partitions.push((put.key.clone(), revision));
        }
        for put in &changes.jobs {
            let revision = self.next_revision();
            self.jobs
                .insert(put.key.clone(), (put.value.clone(), revision));
            written.jobs.push((put.key.clone(), revision));
        }
        for key in &changes.purges {
            self.partitions.remove(key);
        }
        self.partitions
            .retain(|key, (_, revision)| !range_purged(&changes, key, *revision));
        for put in &changes.assignments {
            let revision = self.next_revision();
            self.assignments
                .insert(put.key.clone(), (put.value.clone(), revision));
            written
                .assignments
                .push((put.key.clone(), put.value.clone(), revision));
        }
        state.record_written(written);
        costs
    }

    /// What a new leader reads at its takeover.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            jobs: self.jobs.values().cloned().collect(),
            partitions: self.partitions.values().cloned().collect(),
            assignments: self
                .assignments
                .iter()
                .map(|(worker, (record, revision))| (worker.clone(), record.clone(), *revision))
                .collect(),
            placement: None,
        }
    }

    fn job(&self) -> &JobRecord {
        &self.jobs[&job_name()].0
    }
}

/// Two workers of capacity 4 (16 grant slots) and a job of 64 one-ID partitions after its first
/// round: the lean path cut the 16 partitions the workers can take, the baseline path all 64.
fn running(write_path: WritePath) -> (AssignerState, Kv, Costs) {
    let mut state = AssignerState::load(EPOCH, policy_on(write_path), 0, Snapshot::default());
    state
        .create_job(
            &job_name(),
            &JobSpec::fixed(IdRange::new(1, 64).unwrap(), 1),
        )
        .unwrap();
    state.apply_view(&view(&[("a", 1, 4), ("b", 1, 4)]));
    state.reconcile(1);
    let mut kv = Kv::default();
    let costs = kv.flush(&mut state);
    (state, kv, costs)
}

/// Completes `partitions` (granted, with their current tokens) in one round.
fn complete(state: &mut AssignerState, partitions: impl IntoIterator<Item = u64>, now: u64) {
    for partition in partitions {
        let (owner, token) = owner_and_token(state, partition);
        let owner = owner.expect("granted");
        state
            .apply_progress(&report(
                owner.id.as_str(),
                owner.incarnation.get(),
                partition,
                token,
                ProgressEvent::Completed,
            ))
            .unwrap();
    }
    state.reconcile(now);
}

fn granted(state: &AssignerState) -> Vec<u64> {
    partitions_in(state, PartitionStatus::Granted)
}

#[test]
fn a_partition_cut_and_granted_in_one_round_is_written_once() {
    for (write_path, cut) in [(WritePath::Lean, 16), (WritePath::Baseline, 64)] {
        let (state, _, costs) = running(write_path);
        // Each key is written once, as created: the 16 granted at once already `granted`.
        assert_eq!(costs.partition_creates, cut, "{write_path:?}");
        assert_eq!(
            costs.partition_updates, 0,
            "{write_path:?}: no create-then-grant"
        );
        assert_eq!(granted(&state).len(), 16);
        assert_eq!(costs.assignment_records, 2, "one record per worker");
    }
}

#[test]
fn the_lean_path_cuts_a_job_only_as_far_as_its_workers_take_it() {
    let (mut state, mut kv, _) = running(WritePath::Lean);
    // Nothing waits: every key is a grant.
    assert_eq!(kv.partitions.len(), 16);
    assert!(
        kv.partitions
            .values()
            .all(|(record, _)| record.status == PartitionStatus::Granted)
    );
    // No slot frees, nothing more is cut.
    state.reconcile(2);
    assert_eq!(kv.flush(&mut state).total(), 0);
    // A job no live worker can take is cut ahead, as on the baseline path (up to the backlog):
    // its partitions are listed before its workers come.
    let mut idle = AssignerState::load(EPOCH, policy_on(WritePath::Lean), 0, Snapshot::default());
    idle.create_job(
        &job_name(),
        &JobSpec::fixed(IdRange::new(1, 64).unwrap(), 1),
    )
    .unwrap();
    idle.reconcile(1);
    assert_eq!(idle.take_changes().partitions.len(), 64);
}

#[test]
fn a_lean_completion_costs_its_purge_and_the_next_grant_only() {
    let (mut lean, mut lean_kv, _) = running(WritePath::Lean);
    let (mut baseline, mut baseline_kv, _) = running(WritePath::Baseline);
    // The 16 granted partitions (1..=16) complete in one round; the next 16 are granted: cut
    // and granted at once on the lean path, pending ones rewritten on the baseline path.
    complete(&mut lean, 1..=16, 2);
    complete(&mut baseline, 1..=16, 2);
    let lean_costs = lean_kv.flush(&mut lean);
    let baseline_costs = baseline_kv.flush(&mut baseline);
    assert_eq!(
        lean_costs,
        Costs {
            partition_creates: 16,
            partition_updates: 0,
            completed_records: 0,
            purges: 0,
            range_purges: 1,
            job_records: 1,
            assignment_records: 2,
        }
    );
    assert_eq!(
        baseline_costs,
        Costs {
            partition_creates: 0,
            partition_updates: 16,
            completed_records: 16,
            purges: 16,
            range_purges: 0,
            job_records: 1,
            assignment_records: 2,
        },
        "the baseline writes each completed record before its purge"
    );
    // Per completion: 20 / 16 = 1.25 writes on the lean path (the 16 compacted keys go in one
    // range purge), 51 / 16 = 3.19 on the baseline (plus, there, the `pending` create of every
    // partition cut ahead: 64 in the first round).
    assert_eq!(lean_costs.total(), 20);
    assert_eq!(baseline_costs.total(), 51);
    // Both leave the same buckets behind: the completed keys gone, the job counting them.
    for kv in [&lean_kv, &baseline_kv] {
        assert_eq!(kv.job().partitions_completed, 16);
        assert_eq!(kv.job().partitions_compacted, 16);
        assert_eq!(kv.job().low_watermark, Some(16));
        assert!((1..=16).all(|id| !kv.partitions.contains_key(&key(id))));
    }
    assert_eq!(lean_kv.partitions.len(), 16, "the next 16, granted");
    assert_eq!(
        baseline_kv.partitions.len(),
        48,
        "the next 16 granted, 32 pending"
    );
}

#[test]
fn a_lean_takeover_keeps_completions_that_only_the_job_record_holds() {
    let (mut state, mut kv, _) = running(WritePath::Lean);
    // Partitions 2..=16 complete, 1 does not: the low watermark stays below them, so their keys
    // stay in KV — as last written, `granted` — with the completions in the job record only.
    complete(&mut state, 2..=16, 2);
    kv.flush(&mut state);
    assert_eq!(kv.job().low_watermark, None);
    assert_eq!(
        kv.job().completed_above_watermark,
        vec![IdRange::new(2, 16).unwrap()]
    );
    for id in 2..=16 {
        let (record, _) = &kv.partitions[&key(id)];
        assert_eq!(
            record.status,
            PartitionStatus::Granted,
            "no completed record"
        );
    }

    // A new leader takes over from what KV holds.
    let mut next = AssignerState::load(
        Epoch(EPOCH.get() + 1),
        policy_on(WritePath::Lean),
        10,
        kv.snapshot(),
    );
    assert_eq!(next.counters().overlaps_detected, 0, "no false overlap");
    assert_eq!(next.counters().gaps_detected, 0);
    // 16 cut first, 15 more as 2..=16 completed: 31 keys, 15 of them completed.
    let job = &next.jobs[&job_name()].value;
    assert_eq!((job.partitions_total, job.partitions_completed), (31, 15));
    assert_eq!(job.partitions_compacted, 0);
    for id in 2..=16 {
        assert!(
            !next.partitions.contains_key(&key(id)),
            "partition {id} is completed, not live"
        );
    }
    next.apply_view(&view(&[("a", 1, 4), ("b", 1, 4)]));
    next.restamp_all_assignments();
    next.reconcile(11);
    kv.flush(&mut next);
    assert!(next.indexes_consistent());
    // Nothing completed is granted again; partition 1 still runs under its token.
    let regranted: Vec<u64> = granted(&next).into_iter().filter(|id| *id <= 16).collect();
    assert_eq!(regranted, vec![1]);

    // Partition 1 completes under the new leader: the watermark passes 16, and every completed
    // key is purged without being counted twice.
    complete(&mut next, [1], 12);
    let costs = kv.flush(&mut next);
    assert_eq!(costs.completed_records, 0);
    // The 15 keys read at load (revisions not kept) one by one, partition 1 (its revision known)
    // by a range purge below the live partitions' revisions.
    assert_eq!((costs.purges, costs.range_purges), (15, 1));
    let job = kv.job();
    assert_eq!(job.low_watermark, Some(16));
    assert_eq!(
        (job.partitions_completed, job.partitions_compacted),
        (16, 16)
    );
    assert!((1..=16).all(|id| !kv.partitions.contains_key(&key(id))));

    // And the job runs to its end, counted exactly.
    for round in 0..20 {
        let running = granted(&next);
        if running.is_empty() {
            break;
        }
        complete(&mut next, running, 13 + round);
        kv.flush(&mut next);
    }
    let job = kv.job();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!((job.partitions_total, job.partitions_completed), (64, 64));
    assert_eq!(job.ids_completed, 64);
    assert!(kv.partitions.is_empty(), "every key compacted");
    assert_eq!(next.counters().overlaps_detected, 0);
}

#[test]
fn only_the_lean_path_announces_progress_batches_in_every_record() {
    for (write_path, announced) in [(WritePath::Lean, true), (WritePath::Baseline, false)] {
        let (_, kv, _) = running(write_path);
        assert_eq!(kv.assignments.len(), 2, "{write_path:?}");
        for (worker, (record, _)) in &kv.assignments {
            assert_eq!(
                record.progress_batches, announced,
                "{write_path:?} {worker}"
            );
        }
    }
}

#[test]
fn a_compacted_key_written_after_a_live_one_is_purged_by_itself() {
    let (mut state, mut kv, _) = running(WritePath::Lean);
    // Partition 1 checkpoints: its key is rewritten, the newest of the job, above the keys of
    // the partitions still running.
    let (owner, token) = owner_and_token(&state, 1);
    let owner = owner.expect("granted");
    state
        .apply_progress(&report(
            owner.id.as_str(),
            owner.incarnation.get(),
            1,
            token,
            ProgressEvent::Checkpoint { last_done: 1 },
        ))
        .unwrap();
    state.reconcile(2);
    kv.flush(&mut state);
    let running_before: Vec<u64> = granted(&state).into_iter().filter(|id| *id != 1).collect();
    // It completes and is compacted: a range purge below its revision would remove live keys
    // written before it, so it goes by itself.
    complete(&mut state, [1], 3);
    let costs = kv.flush(&mut state);
    assert_eq!((costs.purges, costs.range_purges), (1, 0));
    assert!(!kv.partitions.contains_key(&key(1)));
    assert!(
        running_before
            .iter()
            .all(|id| kv.partitions.contains_key(&key(*id))),
        "every running partition keeps its key"
    );

    // Partition 2 completes next: the watermark passes it, and its key (older than every live
    // one) goes by a range purge that leaves every live key.
    complete(&mut state, [2], 4);
    let costs = kv.flush(&mut state);
    assert_eq!((costs.purges, costs.range_purges), (0, 1));
    assert!(!kv.partitions.contains_key(&key(2)));
    assert!(
        granted(&state)
            .iter()
            .all(|id| kv.partitions.contains_key(&key(*id)))
    );
}
