//! Compaction by range (lean write path): the compacted keys of a job are removed by one stream
//! purge of the job's subjects below a sequence, instead of one purge message per key.
//!
//! A KV key's value is the stream message at its revision, so purging the subjects
//! `$KV.<partitions bucket>.<job>.>` below sequence `below` removes exactly the keys of the job
//! last written before `below`. That is safe when every key of the job that must stay — a live
//! partition, or a completed one still waiting for the watermark — was last written at or after
//! `below`. So `below` is the lowest revision among those, and never above the highest revision
//! of this round's compacted keys plus one (keys this round creates or rewrites get higher
//! sequences than any existing one; the purge runs after them). A compacted key at or above
//! `below` (a partition rewritten after a live one was last written), or whose revision is not
//! known (completed keys read at load, and every key on the baseline path), is purged by itself,
//! as before.
//!
//! Keys already compacted or purged before (a marker left by a per-key purge, a key whose purge
//! failed) lie below `below` too: purging them again is what compaction wants. Unlike a per-key
//! purge, a range purge leaves no marker: nothing watches the partitions bucket (protocol §2), and
//! a new leader reads what is there.

use super::{AssignerState, PartitionKey, WritePath};
use elk_types::{JobName, Revision};
use std::collections::BTreeMap;

/// One job's compacted keys, purged together: every message of the job's partition keys with a
/// stream sequence below `below`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangePurge {
    pub job: JobName,
    pub below: Revision,
    /// This round's compacted keys it covers: purged one by one instead where range purges are
    /// refused (`crate::store`).
    pub keys: Vec<PartitionKey>,
}

impl AssignerState {
    /// This round's compaction deletes: on the lean path one [`RangePurge`] per job plus the keys
    /// it cannot cover; on the baseline path every key by itself.
    pub(super) fn take_purges(&mut self) -> (Vec<PartitionKey>, Vec<RangePurge>) {
        let deletes = std::mem::take(&mut self.compaction_deletes);
        if self.policy.write_path != WritePath::Lean {
            return (
                deletes.into_iter().map(|(key, _)| key).collect(),
                Vec::new(),
            );
        }
        let mut by_job: BTreeMap<JobName, Vec<(PartitionKey, Revision)>> = BTreeMap::new();
        let mut singles = Vec::new();
        for (key, revision) in deletes {
            match revision {
                Some(revision) => by_job
                    .entry(key.job.clone())
                    .or_default()
                    .push((key, revision)),
                None => singles.push(key),
            }
        }
        let mut ranges = Vec::new();
        for (job, keys) in by_job {
            let highest = keys.iter().map(|(_, revision)| revision.get()).max();
            let below = match (self.lowest_kept_revision(&job), highest) {
                (Some(kept), Some(highest)) => kept.min(highest + 1),
                (None, Some(highest)) => highest + 1,
                (_, None) => continue,
            };
            let (covered, above): (Vec<_>, Vec<_>) = keys
                .into_iter()
                .partition(|(_, revision)| revision.get() < below);
            singles.extend(above.into_iter().map(|(key, _)| key));
            if !covered.is_empty() {
                ranges.push(RangePurge {
                    job,
                    below: Revision(below),
                    keys: covered.into_iter().map(|(key, _)| key).collect(),
                });
            }
        }
        (singles, ranges)
    }

    /// The lowest revision of a key of `job` that must stay: its live partitions (written ones:
    /// unwritten ones get higher sequences) and its completed ones awaiting compaction (an unknown
    /// revision counts as 0: nothing of the job is range-purged while such a key waits).
    fn lowest_kept_revision(&self, job: &JobName) -> Option<u64> {
        let live = self
            .partitions_of(job)
            .filter_map(|(_, stored)| stored.revision())
            .map(Revision::get);
        let awaiting = self
            .awaiting_compaction
            .get(job)
            .into_iter()
            .flat_map(|waiting| waiting.values())
            .map(|(_, revision)| revision.map_or(0, Revision::get));
        live.chain(awaiting).min()
    }
}
