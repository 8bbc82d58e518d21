//! What the model keeps of each worker's stored assignment record: not the record (a second copy
//! of every grant — job, range, token, trace context — about 90 bytes per live partition), but
//! what the next record is decided from: whom it is for, its place in the worker's order
//! (epoch, seq), its drain flag, how many grants it lists, and digests of its grants and of its
//! pending revokes. A record is rewritten when the one the partitions call for differs from the
//! stored one (`workers.rs`, `desired_assignment_among`); comparing SHA-256 digests decides that
//! as comparing the lists did (a collision is out of reach), and the record written is always
//! rebuilt from the partition table.

use elk_protocol::messages::{AssignmentRecord, Grant};
use elk_types::{Epoch, Incarnation, ViewSeq};
use sha2::{Digest, Sha256};

/// The model's summary of a stored assignment record (see the module header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordSummary {
    pub incarnation: Incarnation,
    pub epoch: Epoch,
    pub seq: ViewSeq,
    pub drain: bool,
    /// Grants the record lists.
    pub grant_count: usize,
    /// [`grants_digest`] of its grants.
    pub grants: [u8; 32],
    /// [`revokes_digest`] of its pending revokes.
    pub revoking: [u8; 32],
}

impl RecordSummary {
    pub(crate) fn of(record: &AssignmentRecord) -> Self {
        Self {
            incarnation: record.incarnation,
            epoch: record.epoch,
            seq: record.seq,
            drain: record.drain,
            grant_count: record.grants.len(),
            grants: grants_digest(&record.grants),
            revoking: revokes_digest(&record.revoking),
        }
    }

    /// Whether the record lists no grant.
    pub(crate) fn no_grants(&self) -> bool {
        self.grant_count == 0
    }
}

/// Digest of a list of grants, every field of each in order: equal lists, equal digests.
pub(crate) fn grants_digest(grants: &[Grant]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((grants.len() as u64).to_le_bytes());
    for grant in grants {
        let job = grant.job.as_str().as_bytes();
        hash.update((job.len() as u64).to_le_bytes());
        hash.update(job);
        hash.update(grant.partition.get().to_le_bytes());
        hash.update(grant.range.first().to_le_bytes());
        hash.update(grant.range.last().to_le_bytes());
        hash.update(grant.resume_from.to_le_bytes());
        hash.update(grant.token.get().to_le_bytes());
        match &grant.traceparent {
            Some(traceparent) => {
                hash.update([1]);
                hash.update((traceparent.len() as u64).to_le_bytes());
                hash.update(traceparent.as_bytes());
            }
            None => hash.update([0]),
        }
        hash.update([u8::from(grant.unsampled)]);
    }
    hash.finalize().into()
}

/// Digest of pending revokes by job, partition and token only: a revoking partition's
/// checkpoints move its `resume_from`, which is no reason to rewrite the record.
pub(crate) fn revokes_digest(revoking: &[Grant]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((revoking.len() as u64).to_le_bytes());
    for grant in revoking {
        let job = grant.job.as_str().as_bytes();
        hash.update((job.len() as u64).to_le_bytes());
        hash.update(job);
        hash.update(grant.partition.get().to_le_bytes());
        hash.update(grant.token.get().to_le_bytes());
    }
    hash.finalize().into()
}
