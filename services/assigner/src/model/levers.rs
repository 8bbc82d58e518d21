//! The operator's (and the scaler's) levers on placement: requested **drains** of single workers
//! and a namespace-wide **freeze** of rebalancing, plus what the `members` command reports.
//!
//! * **Drain** (`drain` / `undrain`): the worker's live incarnation takes no new grants
//!   (`WorkerInfo::takes_grants`), every partition granted to it is revoked (cause `drain`) and
//!   released by the worker with its checkpoint through the ordinary revoke → released → grant
//!   hand-over, and its assignment record carries `drain: true`. Once it holds nothing it is
//!   `drained`: removing it then repeats no work. A drain names an incarnation, so it ends with
//!   that incarnation (a restarted process is a new worker); `undrain` ends it earlier.
//! * **Freeze** (`freeze` / `unfreeze`): no rebalancing revokes while frozen; pending partitions
//!   (new ones, released ones, reclaimed ones of dead workers) are still granted, each to the
//!   least loaded worker with a free slot. Revokes for drains and stopped jobs still happen: they
//!   are explicit requests.
//!
//! Both are kept in one record, `fleet/placement` ([`PlacementControl`]), written through the
//! change set like every other write of the assigner, so a new leader continues them.
//!
//! **Throughput.** Every applied checkpoint or completion moves a partition's checkpoint forward;
//! the IDs it moved are added to its owner's `ids_progressed` (in memory, per leader term). The
//! scaler derives the measured throughput per worker from the growth of these counters.

use super::refusal::AdminRefusal;
use super::{AssignerState, PartitionKey, Put, Stored};
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::admin::{MemberState, MemberStatus};
use elk_protocol::messages::{
    DrainRequest, DrainSource, Freeze, MemberRef, MemberRole, MembershipView, PlacementControl,
    ViewMember,
};
use elk_types::{IdRange, MemberId, Revision};
use std::collections::BTreeMap;

/// The levers' state in the model.
#[derive(Debug)]
pub(crate) struct Levers {
    /// What `fleet/placement` holds (or will hold after the next flush).
    control: Stored<PlacementControl>,
    /// `control` changed since it was last taken for writing.
    dirty: bool,
    /// IDs moved forward per worker during this term (applied checkpoints and completions).
    progressed: BTreeMap<MemberId, u64>,
    /// Every member of the last view (control-plane replicas included), for `members`.
    view_members: Vec<ViewMember>,
}

impl Levers {
    pub fn new() -> Self {
        Self {
            control: Stored::new(PlacementControl {
                schema: SCHEMA_VERSION,
                ..PlacementControl::default()
            }),
            dirty: false,
            progressed: BTreeMap::new(),
            view_members: Vec::new(),
        }
    }

    /// The levers of a new term: the stored record (if any).
    pub fn loaded(stored: Option<(PlacementControl, Revision)>) -> Self {
        let mut levers = Self::new();
        if let Some((control, revision)) = stored {
            levers.control = Stored::at(control, revision);
        }
        levers
    }

    pub fn frozen(&self) -> bool {
        self.control.value.frozen.is_some()
    }

    /// Who asked `worker` (this incarnation) to drain, if anyone.
    pub fn drain_of(&self, worker: &MemberRef) -> Option<DrainSource> {
        self.control
            .value
            .drains
            .iter()
            .find(|drain| drain.worker == *worker)
            .map(|drain| drain.source)
    }
}

impl AssignerState {
    /// Whether placement is frozen (no rebalancing revokes).
    pub(super) fn placement_frozen(&self) -> bool {
        self.levers.frozen()
    }

    /// Keeps the levers in step with a new view: its members (for `members`), drains only for
    /// incarnations still live, and the drain flags of the live workers.
    pub(super) fn levers_follow_view(&mut self, view: &MembershipView) {
        self.levers.view_members = view.members.clone();
        let live = |drain: &DrainRequest| {
            view.member(&drain.worker.id)
                .is_some_and(|member| member.incarnation == drain.worker.incarnation)
        };
        let before = self.levers.control.value.drains.len();
        self.levers.control.value.drains.retain(live);
        if self.levers.control.value.drains.len() != before {
            self.levers.dirty = true;
        }
        self.levers
            .progressed
            .retain(|worker, _| view.member(worker).is_some());
        for (id, info) in &mut self.workers {
            let me = MemberRef {
                id: id.clone(),
                incarnation: info.incarnation,
            };
            info.drain = self.levers.drain_of(&me);
        }
    }

    /// Revokes whatever is still granted to drained workers (a drain requested this round, or a
    /// grant made before the request).
    pub(super) fn revoke_drained(&mut self) {
        let drained: Vec<MemberId> = self
            .workers
            .iter()
            .filter(|(_, info)| info.drain.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in drained {
            let keys: Vec<PartitionKey> = self
                .grants_by_worker
                .get(&id)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            for key in keys {
                self.revoke(&key, super::grants::RevokeCause::Drain);
            }
        }
    }

    /// Adds the IDs a progress report moved a partition forward by to its owner's count.
    pub(super) fn note_progress(
        &mut self,
        worker: &MemberId,
        range: IdRange,
        before: Option<u64>,
        after: Option<u64>,
    ) {
        let done = |checkpoint: Option<u64>| match checkpoint {
            Some(last) if last >= range.first() => last - range.first() + 1,
            _ => 0,
        };
        let moved = done(after).saturating_sub(done(before));
        if moved > 0 {
            *self.levers.progressed.entry(worker.clone()).or_default() += moved;
        }
    }

    /// `members`: every live member, and whether placement is frozen.
    pub(crate) fn members(&self) -> (bool, Vec<MemberStatus>) {
        let mut revoking: BTreeMap<&MemberId, u32> = BTreeMap::new();
        for key in self.revoking_since.keys() {
            if let Some(owner) = self
                .partitions
                .get(key)
                .and_then(|p| p.value.owner.as_ref())
            {
                *revoking.entry(&owner.id).or_default() += 1;
            }
        }
        let members = self
            .levers
            .view_members
            .iter()
            .map(|member| self.member_status(member, revoking.get(&member.id).copied()))
            .collect();
        (self.levers.frozen(), members)
    }

    fn member_status(&self, member: &ViewMember, revoking: Option<u32>) -> MemberStatus {
        let revoking = revoking.unwrap_or(0);
        let granted = self
            .grants_by_worker
            .get(&member.id)
            .map_or(0, |keys| u32::try_from(keys.len()).unwrap_or(u32::MAX));
        let info = self
            .workers
            .get(&member.id)
            .filter(|info| info.incarnation == member.incarnation);
        let state = match info {
            _ if member.role != MemberRole::Worker => MemberState::Service,
            Some(info) if info.draining => MemberState::Leaving,
            Some(info) if info.drain.is_some() && granted + revoking == 0 => MemberState::Drained,
            Some(info) if info.drain.is_some() => MemberState::Draining,
            _ => MemberState::Active,
        };
        MemberStatus {
            id: member.id.clone(),
            role: member.role,
            incarnation: member.incarnation,
            capacity: member.capacity,
            jobs: member.jobs.clone(),
            granted,
            revoking,
            state,
            drain: info.and_then(|info| info.drain),
            ids_progressed: self.levers.progressed.get(&member.id).copied().unwrap_or(0),
        }
    }

    fn live_worker(&self, worker: &MemberId) -> Result<MemberRef, AdminRefusal> {
        self.workers
            .get(worker)
            .map(|info| MemberRef {
                id: worker.clone(),
                incarnation: info.incarnation,
            })
            .ok_or_else(|| AdminRefusal::UnknownWorker(worker.clone()))
    }

    fn status_of(&self, worker: &MemberId) -> Result<MemberStatus, AdminRefusal> {
        let (_, members) = self.members();
        members
            .into_iter()
            .find(|member| member.id == *worker)
            .ok_or_else(|| AdminRefusal::UnknownWorker(worker.clone()))
    }

    /// `drain`: the worker takes nothing new and hands everything back (revoked this round).
    /// An operator's drain takes over a scaler's (the scaler then leaves it alone); a worker
    /// shutting down on its own is already draining and is refused.
    pub(crate) fn drain(
        &mut self,
        worker: &MemberId,
        source: DrainSource,
    ) -> Result<MemberStatus, AdminRefusal> {
        let me = self.live_worker(worker)?;
        if self.workers[worker].draining {
            return Err(AdminRefusal::WorkerLeaving(worker.clone()));
        }
        let now = self.now_ms;
        let drains = &mut self.levers.control.value.drains;
        match drains.iter_mut().find(|drain| drain.worker == me) {
            Some(existing) if existing.source == source => {}
            Some(existing) => {
                if source == DrainSource::Operator {
                    existing.source = source;
                    self.levers.dirty = true;
                }
            }
            None => {
                drains.push(DrainRequest {
                    worker: me.clone(),
                    source,
                    since_unix_ms: now,
                });
                drains.sort_by(|a, b| a.worker.id.cmp(&b.worker.id));
                self.levers.dirty = true;
            }
        }
        let source = self.levers.drain_of(&me);
        if let Some(info) = self.workers.get_mut(worker) {
            info.drain = source;
        }
        self.dirty_assignments.insert(worker.clone());
        self.revoke_drained();
        self.status_of(worker)
    }

    /// `undrain`: the worker takes grants again (a no-op for a worker that is not drained).
    pub(crate) fn undrain(&mut self, worker: &MemberId) -> Result<MemberStatus, AdminRefusal> {
        let me = self.live_worker(worker)?;
        let drains = &mut self.levers.control.value.drains;
        let before = drains.len();
        drains.retain(|drain| drain.worker != me);
        if drains.len() != before {
            self.levers.dirty = true;
            self.dirty_assignments.insert(worker.clone());
        }
        if let Some(info) = self.workers.get_mut(worker) {
            info.drain = None;
        }
        self.status_of(worker)
    }

    /// `freeze`: no rebalancing moves from now on (a second freeze only updates the reason).
    pub(crate) fn freeze(&mut self, reason: Option<String>) -> PlacementControl {
        let since_unix_ms = self
            .levers
            .control
            .value
            .frozen
            .as_ref()
            .map_or(self.now_ms, |freeze| freeze.since_unix_ms);
        let frozen = Some(Freeze {
            reason,
            since_unix_ms,
        });
        if self.levers.control.value.frozen != frozen {
            self.levers.control.value.frozen = frozen;
            self.levers.dirty = true;
        }
        self.levers.control.value.clone()
    }

    /// `unfreeze`: rebalancing resumes with the next round.
    pub(crate) fn unfreeze(&mut self) -> PlacementControl {
        if self.levers.control.value.frozen.take().is_some() {
            self.levers.dirty = true;
        }
        self.levers.control.value.clone()
    }

    /// The placement record to write, if it changed (stamped with this epoch).
    pub(super) fn take_placement_change(&mut self) -> Option<Put<(), PlacementControl>> {
        if !std::mem::take(&mut self.levers.dirty) {
            return None;
        }
        self.levers.control.value.epoch = self.epoch;
        self.levers.control.value.schema = SCHEMA_VERSION;
        Some(Put {
            key: (),
            value: self.levers.control.value.clone(),
            expected: self.levers.control.revision(),
        })
    }

    pub(super) fn placement_written(&mut self, revision: Revision) {
        self.levers.control.set_revision(revision);
    }

    /// Whether a worker's grants are revoked for a drain (used to keep a requested drain apart
    /// from a worker shutting down when a new leader reads the `drain` flag of its record).
    pub(super) fn drain_requested(&self, worker: &MemberRef) -> bool {
        self.levers.drain_of(worker).is_some()
    }
}
