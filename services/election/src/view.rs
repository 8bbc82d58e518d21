//! The membership view: the table of live members built from the members bucket, and the writer
//! of `leases/view` whose generation only grows (also across failovers of the active replica, and
//! after the view key was deleted or garbled: see `ViewWriter::load`) and never wraps.
//!
//! A change is a join, a leave, an expiry (delete marker) or a change of what the view shows of a
//! member (incarnation, role, capacity, jobs). A renewal rewrites the same record and is not a
//! change, so heartbeats cost one map lookup and a comparison, never a view write.

use crate::ElectionError;
use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use elk_nats::{CasOutcome, KvEntry, Resources, cas_write, last_revision, read_entry};
use elk_protocol::messages::{MemberRecord, MembershipView, ViewMember};
use elk_protocol::names::VIEW_KEY;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::{Capacity, Generation, MemberId, Revision};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Member keys ignored (not a member id, undecodable), by key: one warning per minute each, as a
/// garbage key is seen again at every snapshot.
static IGNORED_KEYS: elk_runtime::RepeatLimiter =
    elk_runtime::RepeatLimiter::new(Duration::from_secs(60));

/// Live members by id, as the view lists them.
///
/// A member key that stops holding a member record (garbage written over it) drops the member, and
/// so does a key not rewritten for longer than the silence limit ([`MemberTable::sweep`]): a live
/// member renews every third of its TTL, and no TTL is above [`elk_nats::MAX_LEASE_TTL`], so only
/// a key written without a TTL (which never expires) stays silent that long.
///
/// A member announcing a capacity above the configured maximum is listed with the maximum: a
/// member (real or forged) can never draw more than that share of the partitions.
#[derive(Debug)]
pub(crate) struct MemberTable {
    members: BTreeMap<MemberId, ViewMember>,
    /// When each member's key was last written (seen by this replica).
    written: BTreeMap<MemberId, Instant>,
    max_capacity: Capacity,
}

impl MemberTable {
    /// An empty table listing capacities up to `max_capacity`.
    pub(crate) fn new(max_capacity: Capacity) -> Self {
        Self {
            members: BTreeMap::new(),
            written: BTreeMap::new(),
            max_capacity,
        }
    }

    /// Builds the table from a snapshot of the members bucket.
    pub(crate) fn from_entries<'a>(
        max_capacity: Capacity,
        entries: impl IntoIterator<Item = &'a KvEntry>,
    ) -> Self {
        let mut table = MemberTable::new(max_capacity);
        for entry in entries {
            table.apply_put(&entry.key, &entry.value);
        }
        table
    }

    /// Applies one watch event; returns whether the view changed.
    pub(crate) fn apply(&mut self, key: &str, operation: Operation, value: &[u8]) -> bool {
        match operation {
            Operation::Put => self.apply_put(key, value),
            Operation::Delete | Operation::Purge => self.apply_removal(key),
        }
    }

    fn apply_put(&mut self, key: &str, value: &[u8]) -> bool {
        let id = match MemberId::new(key) {
            Ok(id) => id,
            Err(error) => {
                if let Some(suppressed) = IGNORED_KEYS.check(key) {
                    tracing::warn!(%key, %error, suppressed, "ignoring member key that is not a valid member id");
                }
                return false;
            }
        };
        let record = match decode::<MemberRecord>(value) {
            Ok(record) => record,
            Err(error) => {
                // The key no longer holds this member's record: it is not live any more.
                if let Some(suppressed) = IGNORED_KEYS.check(key) {
                    tracing::warn!(member = %id, %error, suppressed, "undecodable member record: member left out of the view");
                }
                self.written.remove(&id);
                return self.members.remove(&id).is_some();
            }
        };
        self.written.insert(id.clone(), Instant::now());
        let member = ViewMember {
            id: id.clone(),
            role: record.role,
            incarnation: record.incarnation,
            capacity: record.capacity.min(self.max_capacity),
            jobs: record.jobs,
        };
        if self.members.get(&id) == Some(&member) {
            return false;
        }
        if record.capacity > self.max_capacity {
            tracing::warn!(member = %id, announced = %record.capacity, listed = %self.max_capacity, "member capacity above election.max_member_capacity: listed with the maximum");
        }
        self.members.insert(id, member);
        true
    }

    fn apply_removal(&mut self, key: &str) -> bool {
        let Ok(id) = MemberId::new(key) else {
            return false;
        };
        self.written.remove(&id);
        self.members.remove(&id).is_some()
    }

    /// Drops `id` (its key is not honoured); returns whether the view changed.
    pub(crate) fn drop_member(&mut self, id: &MemberId) -> bool {
        self.written.remove(id);
        self.members.remove(id).is_some()
    }

    /// Drops every member whose key was not written for longer than `limit`; returns whether the
    /// view changed.
    pub(crate) fn sweep(&mut self, now: Instant, limit: Duration) -> bool {
        let silent: Vec<MemberId> = self
            .written
            .iter()
            .filter(|(_, written)| now.saturating_duration_since(**written) > limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &silent {
            tracing::warn!(member = %id, ?limit, "member key not renewed within the silence limit (written without a TTL?): left out of the view");
            self.drop_member(id);
        }
        !silent.is_empty()
    }

    /// The live members sorted by id.
    pub(crate) fn members(&self) -> Vec<ViewMember> {
        self.members.values().cloned().collect()
    }
}

/// Writes `leases/view` by compare-and-set, continuing the generation found in the bucket.
#[derive(Debug)]
pub(crate) struct ViewWriter {
    /// Generation of the last view written or seen.
    generation: Generation,
    /// Revision of the view key as last written or seen (`None`: absent).
    revision: Option<Revision>,
    current: Option<MembershipView>,
}

/// Conflicting writers in a row before the active replica gives up (and steps down).
const MAX_VIEW_CONFLICTS: usize = 5;

impl ViewWriter {
    /// Reads the stored view so the next write continues its generation.
    pub(crate) async fn load(resources: &Resources) -> Result<Self, ElectionError> {
        let mut writer = ViewWriter {
            generation: Generation(0),
            revision: None,
            current: None,
        };
        let stored = read_entry(&resources.leases, VIEW_KEY).await?;
        let existed = stored.is_some();
        writer.adopt(stored);
        if existed && writer.generation == Generation(0) {
            // No readable view although one was written (deleted or garbled): continue above
            // every generation ever written, as role epochs do (`crate::roles`).
            writer.generation = Generation(last_revision(&resources.leases).await?.get());
        }
        Ok(writer)
    }

    fn adopt(&mut self, stored: Option<KvEntry>) {
        let Some(entry) = stored.filter(|entry| !entry.deleted) else {
            self.revision = None;
            return;
        };
        self.revision = Some(entry.revision);
        match decode::<MembershipView>(&entry.value) {
            Ok(view) => {
                self.generation = self.generation.max(view.generation);
            }
            Err(error) => {
                tracing::error!(%error, "stored membership view is undecodable; overwriting it");
            }
        }
    }

    /// The view last written by this writer.
    pub(crate) fn current(&self) -> Option<&MembershipView> {
        self.current.as_ref()
    }

    /// Writes a new view listing `members` at the next generation.
    pub(crate) async fn publish(
        &mut self,
        resources: &Resources,
        members: Vec<ViewMember>,
    ) -> Result<&MembershipView, ElectionError> {
        for _ in 0..MAX_VIEW_CONFLICTS {
            let generation = self
                .generation
                .next()
                .map_err(|source| ElectionError::Exhausted {
                    role: "membership view",
                    source,
                })?;
            let view = MembershipView {
                schema: SCHEMA_VERSION,
                generation,
                members: members.clone(),
            };
            debug_assert!(view.members.windows(2).all(|pair| pair[0].id < pair[1].id));
            let outcome = cas_write(
                &resources.jetstream,
                &resources.leases,
                VIEW_KEY,
                Bytes::from(encode(&view)),
                self.revision,
                None,
            )
            .await?;
            match outcome {
                CasOutcome::Written(revision) => {
                    tracing::debug!(generation = %view.generation, members = view.members.len(), "membership view written");
                    self.generation = view.generation;
                    self.revision = Some(revision);
                    return Ok(self.current.insert(view));
                }
                CasOutcome::Conflict { current } => {
                    tracing::warn!(
                        generation = %view.generation,
                        "membership view changed under us; continuing from the stored one"
                    );
                    self.adopt(current);
                }
            }
        }
        Err(ElectionError::ViewContended {
            attempts: MAX_VIEW_CONFLICTS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::messages::MemberRole;
    use elk_types::Incarnation;

    fn record(role: MemberRole, incarnation: u64) -> Vec<u8> {
        encode(&MemberRecord {
            schema: SCHEMA_VERSION,
            role,
            incarnation: Incarnation(incarnation),
            capacity: Capacity(2),
            jobs: Vec::new(),
            labels: Default::default(),
            version: String::new(),
        })
    }

    #[test]
    fn renewal_is_not_a_change_but_join_leave_and_new_incarnation_are() {
        let mut table = MemberTable::new(Capacity(100));
        assert!(table.apply("w-2", Operation::Put, &record(MemberRole::Worker, 1)));
        assert!(!table.apply("w-2", Operation::Put, &record(MemberRole::Worker, 1)));
        assert!(table.apply("w-1", Operation::Put, &record(MemberRole::Worker, 1)));
        assert!(table.apply("w-2", Operation::Put, &record(MemberRole::Worker, 2)));
        let ids: Vec<_> = table.members().iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["w-1", "w-2"]);
        assert!(table.apply("w-2", Operation::Purge, &[]));
        assert!(!table.apply("w-2", Operation::Delete, &[]));
        assert_eq!(table.members().len(), 1);
    }

    #[test]
    fn bad_keys_and_records_are_skipped() {
        let mut table = MemberTable::new(Capacity(100));
        assert!(!table.apply("w-1", Operation::Put, b"not msgpack"));
        assert!(!table.apply("a.b", Operation::Put, &record(MemberRole::Worker, 1)));
        assert!(table.members().is_empty());
    }

    #[test]
    fn capacity_is_listed_up_to_the_maximum() {
        let mut table = MemberTable::new(Capacity(1));
        assert!(table.apply("w-1", Operation::Put, &record(MemberRole::Worker, 1)));
        assert_eq!(table.members()[0].capacity, Capacity(1), "announced 2");
    }

    #[test]
    fn garbage_over_a_member_key_drops_the_member() {
        let mut table = MemberTable::new(Capacity(100));
        assert!(table.apply("w-1", Operation::Put, &record(MemberRole::Worker, 1)));
        assert!(table.apply("w-1", Operation::Put, b"garbage"));
        assert!(table.members().is_empty());
    }

    #[test]
    fn a_member_silent_beyond_the_limit_is_swept() {
        let mut table = MemberTable::new(Capacity(100));
        let limit = Duration::from_secs(10);
        let start = Instant::now();
        assert!(table.apply("w-1", Operation::Put, &record(MemberRole::Worker, 1)));
        assert!(!table.sweep(start + Duration::from_secs(5), limit));
        assert_eq!(table.members().len(), 1);
        assert!(table.sweep(start + Duration::from_secs(11), limit));
        assert!(table.members().is_empty());
        // A renewal (even an unchanged record) restarts the clock.
        assert!(table.apply("w-1", Operation::Put, &record(MemberRole::Worker, 1)));
        let renewed = Instant::now();
        assert!(!table.apply("w-1", Operation::Put, &record(MemberRole::Worker, 1)));
        assert!(!table.sweep(renewed + Duration::from_secs(9), limit));
    }
}
