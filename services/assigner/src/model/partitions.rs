//! The partition lifecycle (diagram in the module header of `model`): the one transition function,
//! the indexes it keeps in step, and the events that move partitions — progress reports, reclaims
//! of departed owners, and unanswered revokes.

use super::live::LivePartition;
use super::{AssignerState, PartitionKey, Rejection, Stored};
use elk_protocol::messages::{
    MemberRef, PartitionRecord, PartitionStatus, ProgressEvent, ProgressReport,
};
use elk_types::{PartitionLeaseToken, Revision};

/// Whether the lifecycle allows a live partition to go from `from` to `to` (a status kept is a
/// change of its other fields: a checkpoint, the end of a retry's back-off).
pub(super) fn transition_allowed(from: PartitionStatus, to: PartitionStatus) -> bool {
    use PartitionStatus::{Completed, Failed, Granted, Pending, Revoking};
    matches!(
        (from, to),
        (Pending, Pending | Granted)
            | (Granted, Granted | Revoking)
            | (Revoking, Revoking)
            | (Granted | Revoking, Pending | Completed | Failed)
            | (Failed, Pending)
    )
}

impl AssignerState {
    /// Adds a partition loaded from KV (completed ones are not kept).
    pub(super) fn load_partition(&mut self, record: PartitionRecord, revision: Revision) {
        if record.status == PartitionStatus::Completed {
            return;
        }
        let key = PartitionKey::of(&record);
        let record = LivePartition::from(record);
        self.index(&key, &record);
        self.partitions.insert(key, Stored::at(record, revision));
        self.note_inserted();
    }

    /// Adds a partition just created (pending, not stored yet).
    pub(super) fn insert_new_partition(&mut self, record: PartitionRecord) {
        debug_assert_eq!(record.status, PartitionStatus::Pending);
        let key = PartitionKey::of(&record);
        let record = LivePartition::from(record);
        self.index(&key, &record);
        self.partitions.insert(key.clone(), Stored::new(record));
        self.dirty_partitions.insert(key);
        self.note_inserted();
    }

    fn index(&mut self, key: &PartitionKey, record: &LivePartition) {
        match record.status {
            PartitionStatus::Pending => {
                self.pending_since.entry(key.clone()).or_insert(self.now_ms);
                match record.not_before_unix_ms() {
                    Some(due) => {
                        self.delayed.insert(key.clone(), due);
                    }
                    None => {
                        self.pending.insert(key.clone());
                    }
                }
            }
            PartitionStatus::Granted => {
                if let Some(owner) = &record.owner {
                    self.grants_by_worker
                        .entry(owner.id.clone())
                        .or_default()
                        .insert(key.clone());
                    self.note_inserted();
                }
            }
            PartitionStatus::Revoking => {
                self.revoking_since
                    .entry(key.clone())
                    .or_insert((self.now_ms, false));
            }
            PartitionStatus::Completed | PartitionStatus::Failed => {}
        }
    }

    fn unindex(&mut self, key: &PartitionKey, record: &LivePartition, next: PartitionStatus) {
        self.pending.remove(key);
        self.delayed.remove(key);
        if next != PartitionStatus::Pending {
            // A pending partition keeps waiting from the same moment while its fields change.
            self.pending_since.remove(key);
        }
        if next != PartitionStatus::Revoking {
            // A revoke stays timed from its start while its checkpoints come in.
            self.revoking_since.remove(key);
        }
        if let Some(owner) = &record.owner
            && let Some(set) = self.grants_by_worker.get_mut(&owner.id)
        {
            set.remove(key);
        }
    }

    /// The one way a live partition changes: `change` edits its fields (never its status), the
    /// status becomes `to` (checked against the lifecycle), the record is stamped with this epoch
    /// and marked for writing, its owner's assignment record for rewriting, and the indexes follow.
    /// A completed partition leaves memory (on the baseline write path written once first).
    pub(super) fn transition(
        &mut self,
        key: &PartitionKey,
        to: PartitionStatus,
        change: impl FnOnce(&mut PartitionRecord),
    ) {
        let Some(stored) = self.partitions.remove(key) else {
            return;
        };
        let from = stored.value.status;
        debug_assert!(
            transition_allowed(from, to),
            "partition {key}: {from:?} → {to:?} is not in the lifecycle"
        );
        self.unindex(key, &stored.value, to);
        if from == PartitionStatus::Revoking
            && let Some(owner) = &stored.value.owner
        {
            // Its record lists the revoke until the partition leaves `revoking`.
            self.dirty_assignments.insert(owner.id.clone());
        }
        // The change is made on the full record, then kept in the compact form (`live.rs`).
        let revision = stored.revision;
        let mut record = stored.value.into_record(key);
        change(&mut record);
        debug_assert_eq!(record.status, from, "only `to` changes the status");
        record.status = to;
        record.epoch = self.epoch;
        if let Some(owner) = &record.owner {
            self.dirty_assignments.insert(owner.id.clone());
        }
        if to == PartitionStatus::Completed {
            self.dirty_partitions.remove(key);
            // The lean path writes no `completed` record: the job record written this round
            // counts the range as completed (its coverage summary), which a new leader trusts over
            // the key's stale status (`trust_the_job_record`), and compaction purges the key once
            // the low watermark passes it. The baseline path writes it once.
            if self.policy.write_path == super::WritePath::Baseline {
                self.completed_to_write.push(Stored {
                    value: record,
                    revision,
                });
            }
            return;
        }
        let value = LivePartition::from(record);
        self.index(key, &value);
        self.partitions
            .insert(key.clone(), Stored { value, revision });
        self.dirty_partitions.insert(key.clone());
    }

    /// Changes a partition's fields, keeping its status (checkpoints, a retry's back-off ending).
    pub(super) fn update_partition(
        &mut self,
        key: &PartitionKey,
        change: impl FnOnce(&mut PartitionRecord),
    ) {
        if let Some(status) = self.partitions.get(key).map(|stored| stored.value.status) {
            self.transition(key, status, change);
        }
    }

    /// Drops a partition from memory (its key is being deleted).
    pub(super) fn forget_partition(&mut self, key: &PartitionKey) {
        if let Some(stored) = self.partitions.remove(key) {
            self.unindex(key, &stored.value, PartitionStatus::Completed);
            self.dirty_partitions.remove(key);
        }
    }

    /// A fresh grant token: 64 random bits from the thread's CSPRNG (ChaCha, seeded by the OS),
    /// so knowing any number of tokens tells nothing about another (a forged report must guess
    /// one of 2^64). Never 0 (a pending partition's token) nor the partition's previous token.
    pub(super) fn next_token(&mut self, previous: PartitionLeaseToken) -> PartitionLeaseToken {
        loop {
            let token = PartitionLeaseToken(rand::random::<u64>());
            if token.get() != 0 && token != previous {
                return token;
            }
        }
    }

    /// The durations (ms) of the hand-overs completed since the last call: from the revoke to the
    /// owner's release.
    pub(crate) fn take_handover_durations(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.handovers_ms)
    }

    /// Partitions being revoked (waiting for their owner's release or expiry).
    pub(super) fn revoking_keys(&self) -> impl Iterator<Item = PartitionKey> + '_ {
        self.revoking_since.keys().cloned()
    }

    /// Reports (once each) revokes unanswered for longer than the revoke timeout. Nothing else
    /// happens to them: they are granted again only after a release or the owner's expiry.
    pub(super) fn report_overdue_revokes(&mut self) {
        let deadline = self.now_ms.saturating_sub(self.policy.revoke_timeout_ms);
        for (key, (since, reported)) in self.revoking_since.iter_mut() {
            if *reported || *since > deadline {
                continue;
            }
            *reported = true;
            self.counters.revokes_overdue += 1;
            let owner = self.partitions.get(key).and_then(|p| p.value.owner.clone());
            tracing::warn!(partition = %key, owner = ?owner.map(|o| o.id), "revoke not answered in time: waiting for the owner's release or member expiry");
        }
    }

    /// Takes back every partition held by `member`, which is gone (its key expired, so it has
    /// fenced itself, or it deleted its key after releasing). They resume from their checkpoint.
    pub(crate) fn reclaim(&mut self, member: &MemberRef) -> usize {
        if self.is_live(member) {
            return 0;
        }
        let keys: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|(_, stored)| {
                stored.value.owner.as_ref() == Some(member)
                    && matches!(
                        stored.value.status,
                        PartitionStatus::Granted | PartitionStatus::Revoking
                    )
            })
            .map(|(key, _)| key.clone())
            .collect();
        // Pending again; those it was running carry its death, and are quarantined when their
        // holders keep dying (`quarantine.rs`).
        let running = self.running_when_departed(member, &keys);
        for key in &keys {
            let death = running.contains(key);
            self.holder_died(key, member, death);
        }
        if let Some(stored) = self.assignments.get(&member.id)
            && stored.value.incarnation == member.incarnation
            && !stored.value.no_grants()
        {
            self.dirty_assignments.insert(member.id.clone());
        }
        keys.len()
    }

    /// Applies one progress report. Stale reports (wrong token or owner) are rejected.
    #[cfg(test)]
    pub(crate) fn apply_progress(&mut self, report: &ProgressReport) -> Result<(), Rejection> {
        self.apply_traced_progress(report, None)
    }

    /// Applies one progress report that carried the trace context `trace` (the `traceparent` of
    /// the worker's publish span, if any): a release or failure keeps it for the next grant to
    /// link to (a hand-over). Stale reports (wrong token or owner) are rejected.
    pub(crate) fn apply_traced_progress(
        &mut self,
        report: &ProgressReport,
        trace: Option<&str>,
    ) -> Result<(), Rejection> {
        let key = PartitionKey::new(report.job.clone(), report.partition);
        let Some(stored) = self.partitions.get(&key) else {
            self.counters.progress_rejected += 1;
            return Err(Rejection::UnknownPartition);
        };
        let record = &stored.value;
        let owner_matches = record.owner.as_ref().is_some_and(|owner| {
            owner.id == report.worker && owner.incarnation == report.incarnation
        });
        let active = matches!(
            record.status,
            PartitionStatus::Granted | PartitionStatus::Revoking
        );
        if !owner_matches || !active || record.token != report.token {
            self.counters.progress_rejected += 1;
            return Err(Rejection::StaleToken);
        }
        let range = record.range;
        let before = record.checkpoint();
        let last_done = match &report.event {
            ProgressEvent::Checkpoint { last_done } => Some(*last_done),
            ProgressEvent::Failed { last_done, .. } | ProgressEvent::Released { last_done } => {
                *last_done
            }
            ProgressEvent::Completed => None,
        };
        if last_done.is_some_and(|done| !range.contains(done)) {
            self.counters.progress_rejected += 1;
            return Err(Rejection::OutOfRange);
        }
        match &report.event {
            ProgressEvent::Checkpoint { last_done } => {
                let last_done = (*last_done).min(range.last());
                self.update_partition(&key, |record| {
                    record.checkpoint = record.checkpoint.max(Some(last_done));
                });
            }
            ProgressEvent::Completed => {
                let completed = record.record(&key);
                // On the lean path the key stays as last written until compaction: its revision
                // lets a range purge remove it (`range_purge.rs`). The baseline rewrites it.
                let revision = self
                    .partitions
                    .get(&key)
                    .and_then(|stored| stored.revision())
                    .filter(|_| self.policy.write_path == super::WritePath::Lean);
                self.transition(&key, PartitionStatus::Completed, |record| {
                    record.checkpoint = Some(range.last());
                });
                self.coverage_completed(&completed, revision);
                if let Some(job) = self.jobs.get_mut(&report.job) {
                    job.value.partitions_completed += 1;
                    job.value.ids_completed += range.len();
                    self.dirty_jobs.insert(report.job.clone());
                }
            }
            ProgressEvent::Failed {
                error,
                last_done,
                permanent,
            } => {
                let last_done = last_done.map(|done| done.min(range.last()));
                self.fail_partition(&key, error.clone(), last_done, *permanent, trace);
                self.dirty_assignments.insert(report.worker.clone());
            }
            ProgressEvent::Released { last_done } => {
                let revoked = record.status == PartitionStatus::Revoking;
                if let Some((since, _)) = self.revoking_since.get(&key) {
                    self.handovers_ms.push(self.now_ms.saturating_sub(*since));
                }
                let last_done = last_done.map(|done| done.min(range.last()));
                self.transition(&key, PartitionStatus::Pending, |record| {
                    record.owner = None;
                    record.checkpoint = record.checkpoint.max(last_done);
                    if let Some(trace) = trace {
                        record.grant_traceparent = Some(trace.to_owned());
                    }
                });
                self.dirty_assignments.insert(report.worker.clone());
                if !revoked {
                    // Released without being asked: the worker is shutting down.
                    if let Some(worker) = self.workers.get_mut(&report.worker) {
                        worker.draining = true;
                    }
                }
            }
        }
        let after = match report.event {
            ProgressEvent::Completed => Some(range.last()),
            _ => self.partitions.get(&key).and_then(|p| p.value.checkpoint()),
        };
        self.note_progress(&report.worker, range, before, after);
        Ok(())
    }
}
