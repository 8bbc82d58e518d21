//! How the model holds a live partition: [`LivePartition`], the fields of its
//! [`PartitionRecord`] that most partitions use, without the job name and partition id (its
//! [`PartitionKey`] in the table says them), and the fields set only after a failure, a holder's
//! death or when tracing in one boxed [`Rare`] (absent for most). 72 bytes against the record's
//! 224 (the checkpoint is a value and a flag: `Option<u64>` would take 16 bytes, half of them
//! padding); a record is rebuilt from it whenever one is written or changed
//! (`partitions.rs`, `transition`).

use super::PartitionKey;
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::messages::{HolderDeath, MemberRef, PartitionRecord, PartitionStatus};
use elk_types::{Epoch, IdRange, PartitionLeaseToken};

/// A live partition in the model (see the module header); field meanings as in
/// [`PartitionRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LivePartition {
    pub range: IdRange,
    pub owner: Option<MemberRef>,
    pub token: PartitionLeaseToken,
    /// The checkpoint when `checkpointed` (see [`LivePartition::checkpoint`]).
    checkpoint_value: u64,
    pub epoch: Epoch,
    pub attempts: u32,
    pub status: PartitionStatus,
    pub unsampled: bool,
    pub quarantined: bool,
    checkpointed: bool,
    rare: Option<Box<Rare>>,
}

/// The record's fields that most partitions leave empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Rare {
    /// The record's schema when it is not this build's (a record loaded from an older writer).
    schema: Option<u16>,
    error: Option<String>,
    not_before_unix_ms: Option<u64>,
    traceparent: Option<String>,
    grant_traceparent: Option<String>,
    holder_deaths: Vec<HolderDeath>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        *self == Rare::default()
    }
}

impl From<PartitionRecord> for LivePartition {
    fn from(record: PartitionRecord) -> Self {
        let rare = Rare {
            schema: (record.schema != SCHEMA_VERSION).then_some(record.schema),
            error: record.error,
            not_before_unix_ms: record.not_before_unix_ms,
            traceparent: record.traceparent,
            grant_traceparent: record.grant_traceparent,
            holder_deaths: record.holder_deaths,
        };
        Self {
            range: record.range,
            owner: record.owner,
            token: record.token,
            checkpoint_value: record.checkpoint.unwrap_or_default(),
            checkpointed: record.checkpoint.is_some(),
            epoch: record.epoch,
            attempts: record.attempts,
            status: record.status,
            unsampled: record.unsampled,
            quarantined: record.quarantined,
            rare: (!rare.is_empty()).then(|| Box::new(rare)),
        }
    }
}

impl LivePartition {
    /// The full record of the partition at `key`, consuming this one.
    pub(crate) fn into_record(self, key: &PartitionKey) -> PartitionRecord {
        let checkpoint = self.checkpoint();
        let rare = self.rare.map(|rare| *rare).unwrap_or_default();
        PartitionRecord {
            schema: rare.schema.unwrap_or(SCHEMA_VERSION),
            job: key.job.clone(),
            id: key.partition,
            range: self.range,
            status: self.status,
            owner: self.owner,
            token: self.token,
            checkpoint,
            attempts: self.attempts,
            error: rare.error,
            not_before_unix_ms: rare.not_before_unix_ms,
            epoch: self.epoch,
            traceparent: rare.traceparent,
            grant_traceparent: rare.grant_traceparent,
            unsampled: self.unsampled,
            holder_deaths: rare.holder_deaths,
            quarantined: self.quarantined,
        }
    }

    /// The full record of the partition at `key`.
    pub(crate) fn record(&self, key: &PartitionKey) -> PartitionRecord {
        self.clone().into_record(key)
    }

    /// The last ID processed and acknowledged, if any.
    pub(crate) fn checkpoint(&self) -> Option<u64> {
        self.checkpointed.then_some(self.checkpoint_value)
    }

    /// The first ID its next run processes (`workers.rs`, `resume_point`).
    pub(crate) fn resume_point(&self) -> u64 {
        super::workers::resume_after(self.range, self.checkpoint())
    }

    pub(crate) fn not_before_unix_ms(&self) -> Option<u64> {
        self.rare.as_ref()?.not_before_unix_ms
    }

    pub(crate) fn grant_traceparent(&self) -> Option<&str> {
        self.rare.as_ref()?.grant_traceparent.as_deref()
    }

    pub(crate) fn holder_deaths(&self) -> &[HolderDeath] {
        self.rare
            .as_ref()
            .map_or(&[], |rare| rare.holder_deaths.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_types::{Incarnation, JobName, MemberId, PartitionId};

    #[test]
    fn a_record_comes_back_whole_from_its_live_form() {
        let job = JobName::new("j").unwrap();
        let key = PartitionKey::new(job.clone(), PartitionId(7));
        let plain = PartitionRecord::pending(
            job.clone(),
            PartitionId(7),
            IdRange::new(1, 9).unwrap(),
            Epoch(2),
        );
        let mut rich = plain.clone();
        rich.schema = SCHEMA_VERSION + 1;
        rich.status = PartitionStatus::Failed;
        rich.owner = Some(MemberRef {
            id: MemberId::new("w").unwrap(),
            incarnation: Incarnation(4),
        });
        rich.error = Some("boom".to_owned());
        rich.not_before_unix_ms = Some(5);
        rich.traceparent = Some("00-a-b-01".to_owned());
        rich.grant_traceparent = Some("00-c-d-01".to_owned());
        rich.holder_deaths = vec![HolderDeath {
            member: rich.owner.clone().unwrap(),
            at_unix_ms: 3,
            checkpoint: Some(2),
        }];
        rich.quarantined = true;
        rich.unsampled = true;
        for record in [plain, rich] {
            let live = LivePartition::from(record.clone());
            assert_eq!(live.record(&key), record);
            assert_eq!(live.into_record(&key), record);
        }
        assert!(std::mem::size_of::<LivePartition>() <= 72);
    }
}
