//! The change set: everything a round decided that KV must hold, taken from the model in one piece
//! and written by the store (`crate::store`) in this order — partitions (completed ones included),
//! job records, purges of compacted or cancelled partition keys, purges of expired jobs' records,
//! assignment records, then deletes
//! of departed workers' empty records — so a worker never sees a grant whose partition record is
//! not stored and a key is purged only after the job record accounting for it. The store reports
//! the new revisions back through [`AssignerState::record_written`].

use super::range_purge::RangePurge;
use super::{AssignerState, PartitionKey, Stored};
use elk_protocol::messages::{AssignmentRecord, JobRecord, PartitionRecord, PlacementControl};
use elk_types::{JobName, MemberId, Revision};
use std::collections::BTreeSet;

/// A compare-and-set write of `value` at `key`, expecting `expected` (`None`: create).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Put<K, V> {
    pub key: K,
    pub value: V,
    pub expected: Option<Revision>,
}

/// The delete of a departed worker's empty assignment record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prune {
    pub worker: MemberId,
    /// The revision to delete at; `None`: the one its put in the same change set wrote.
    pub expected: Option<Revision>,
}

/// What one round writes (see the module header for the order).
#[derive(Debug, Default)]
pub(crate) struct ChangeSet {
    pub partitions: Vec<Put<PartitionKey, PartitionRecord>>,
    /// Completed partitions: written once, then forgotten by the model.
    pub completed: Vec<Put<PartitionKey, PartitionRecord>>,
    pub jobs: Vec<Put<JobName, JobRecord>>,
    /// Partition keys to purge one by one (compacted below the watermark, or of a cancelled job).
    pub purges: Vec<PartitionKey>,
    /// Compacted partition keys purged together, one request per job (lean path only).
    pub range_purges: Vec<RangePurge>,
    /// Records of finished jobs past their retention, to purge after the partition keys.
    pub job_deletes: Vec<JobName>,
    pub assignments: Vec<Put<MemberId, AssignmentRecord>>,
    pub prunes: Vec<Prune>,
    /// `fleet/placement`, when a lever changed (at most one).
    pub placement: Vec<Put<(), PlacementControl>>,
}

impl ChangeSet {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
            && self.completed.is_empty()
            && self.jobs.is_empty()
            && self.purges.is_empty()
            && self.range_purges.is_empty()
            && self.job_deletes.is_empty()
            && self.assignments.is_empty()
            && self.prunes.is_empty()
            && self.placement.is_empty()
    }
}

/// What the store wrote: the new revisions, and the assignment records as written.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub partitions: Vec<(PartitionKey, Revision)>,
    pub jobs: Vec<(JobName, Revision)>,
    pub assignments: Vec<(MemberId, AssignmentRecord, Revision)>,
    /// Departed workers whose record was deleted.
    pub pruned: Vec<MemberId>,
    /// The new revision of `fleet/placement`, if it was written.
    pub placement: Option<Revision>,
}

impl AssignerState {
    /// Takes everything changed since the last call. Job records are stamped with this epoch.
    #[cfg(test)]
    pub(crate) fn take_changes(&mut self) -> ChangeSet {
        self.take_changes_bounded(usize::MAX)
    }

    /// Whether changed partitions wait for [`Self::take_changes_bounded`] (a round's change
    /// set taken in slices).
    pub(crate) fn changes_pending(&self) -> bool {
        !self.dirty_partitions.is_empty() || !self.dirty_assignments.is_empty()
    }

    /// Takes what changed since the last call, at most `max_partitions` partition puts at a time
    /// so that a round that changed 100,000 partitions never holds all their records (and their
    /// writes' results) at once. While changed partitions remain ([`Self::changes_pending`]) the
    /// slice holds partition puts only (and the placement levers, which go first): job records,
    /// purges and assignment records come after the last of them, so they are written after every
    /// partition record they account for or point at, as in one change set (`store/flush.rs`).
    /// Assignment records then come about `max_partitions` grants at a time (live workers first;
    /// departed workers' records and the deletes that follow them in the last slice).
    pub(crate) fn take_changes_bounded(&mut self, max_partitions: usize) -> ChangeSet {
        let slice = if self.dirty_partitions.len() > max_partitions {
            let first_left = self
                .dirty_partitions
                .iter()
                .nth(max_partitions)
                .cloned()
                .expect("more dirty partitions than the bound");
            let rest = self.dirty_partitions.split_off(&first_left);
            std::mem::replace(&mut self.dirty_partitions, rest)
        } else {
            std::mem::take(&mut self.dirty_partitions)
        };
        let partitions = slice
            .into_iter()
            .filter_map(|key| {
                let stored = self.partitions.get(&key)?;
                Some(Put {
                    value: stored.value.record(&key),
                    expected: stored.revision(),
                    key,
                })
            })
            .collect();
        if !self.dirty_partitions.is_empty() {
            return ChangeSet {
                partitions,
                placement: self.take_placement_change().into_iter().collect(),
                ..ChangeSet::default()
            };
        }
        let completed = std::mem::take(&mut self.completed_to_write)
            .into_iter()
            .map(|stored| Put {
                key: PartitionKey::of(&stored.value),
                expected: stored.revision(),
                value: stored.value,
            })
            .collect();
        let epoch = self.epoch;
        let jobs = std::mem::take(&mut self.dirty_jobs)
            .into_iter()
            .filter_map(|name| {
                let stored = self.jobs.get_mut(&name)?;
                stored.value.epoch = epoch;
                Some(Put {
                    value: stored.value.clone(),
                    expected: stored.revision(),
                    key: name,
                })
            })
            .collect();
        let (purges, range_purges) = self.take_purges();
        let job_deletes = std::mem::take(&mut self.job_deletes);
        let dirty = self.assignment_slice(max_partitions);
        let last = self.dirty_assignments.is_empty();
        let revoking_by_owner = self.revoking_by_owner();
        let assignments: Vec<Put<MemberId, AssignmentRecord>> = dirty
            .into_iter()
            .filter_map(|worker| {
                let value = self.desired_assignment_among(&worker, &revoking_by_owner)?;
                let expected = self.assignments.get(&worker).and_then(|s| s.revision());
                Some(Put {
                    key: worker,
                    value,
                    expected,
                })
            })
            .collect();
        let prunes = if last {
            self.departed_records(&assignments)
        } else {
            Vec::new()
        };
        let placement = self.take_placement_change().into_iter().collect();
        ChangeSet {
            partitions,
            completed,
            jobs,
            purges,
            range_purges,
            job_deletes,
            assignments,
            prunes,
            placement,
        }
    }

    /// The workers whose records the next slice rewrites: live ones until their grants reach
    /// `max_grants` (at least one worker), then, once no live one is left, the departed ones.
    /// The others stay dirty for the next slice.
    fn assignment_slice(&mut self, max_grants: usize) -> BTreeSet<MemberId> {
        let dirty = std::mem::take(&mut self.dirty_assignments);
        let (live, departed): (BTreeSet<MemberId>, BTreeSet<MemberId>) = dirty
            .into_iter()
            .partition(|worker| self.workers.contains_key(worker));
        let mut slice = BTreeSet::new();
        let mut grants = 0_usize;
        let mut live = live.into_iter();
        for worker in live.by_ref() {
            grants += 1 + self.grants_by_worker.get(&worker).map_or(0, BTreeSet::len);
            slice.insert(worker);
            if grants >= max_grants {
                break;
            }
        }
        self.dirty_assignments.extend(live);
        if self.dirty_assignments.is_empty() {
            slice.extend(departed);
        } else {
            self.dirty_assignments.extend(departed);
        }
        slice
    }

    /// The empty records of workers that left, as they will stand after `puts`: deleted so the
    /// bucket holds one key per live worker, not one per worker id ever seen.
    fn departed_records(&self, puts: &[Put<MemberId, AssignmentRecord>]) -> Vec<Prune> {
        let mut prunes = Vec::new();
        for (worker, stored) in &self.assignments {
            if self.workers.contains_key(worker) {
                continue;
            }
            let put = puts.iter().find(|put| put.key == *worker);
            let grants_empty =
                put.map_or(stored.value.no_grants(), |put| put.value.grants.is_empty());
            if !grants_empty {
                continue;
            }
            match (put, stored.revision()) {
                (Some(_), _) => prunes.push(Prune {
                    worker: worker.clone(),
                    expected: None,
                }),
                (None, Some(revision)) => prunes.push(Prune {
                    worker: worker.clone(),
                    expected: Some(revision),
                }),
                (None, None) => {}
            }
        }
        prunes
    }

    /// Records what the store wrote (see [`Written`]).
    pub(crate) fn record_written(&mut self, written: Written) {
        for (key, revision) in written.partitions {
            if let Some(stored) = self.partitions.get_mut(&key) {
                stored.set_revision(revision);
            }
        }
        for (name, revision) in written.jobs {
            if let Some(stored) = self.jobs.get_mut(&name) {
                stored.set_revision(revision);
            }
        }
        for (worker, record, revision) in written.assignments {
            let summary = super::assignment::RecordSummary::of(&record);
            self.assignments
                .insert(worker, Stored::at(summary, revision));
        }
        for worker in written.pruned {
            self.assignments.remove(&worker);
        }
        if let Some(revision) = written.placement {
            self.placement_written(revision);
        }
    }
}
