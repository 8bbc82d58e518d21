//! Fault injection for tests, compiled only with the `test-hooks` feature (the integration tests
//! enable it; the service binary never does): make the running leader task panic, to check that a
//! replica whose leader work died gives the role up instead of holding it while doing nothing; or
//! make one round hold its thread as long as a very large round would, to check that the leader's
//! membership outlives it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Faults a test can inject into one replica's leader task.
#[derive(Debug, Default)]
pub struct LeaderFaults {
    panic_next_round: AtomicBool,
    block_next_round: Mutex<Option<Duration>>,
    rounds_blocked: AtomicU64,
    refuse_range_purges: AtomicBool,
}

impl LeaderFaults {
    /// The leader task panics at the start of its next round (once).
    pub fn panic_next_round(&self) {
        self.panic_next_round.store(true, Ordering::SeqCst);
    }

    /// The next round blocks its thread for `duration` in the model's step (once), as a round
    /// computing over a very large model would (`std::thread::sleep`, not an await).
    pub fn block_next_round(&self, duration: Duration) {
        *self.block_next_round.lock().unwrap() = Some(duration);
    }

    /// Every range purge of compacted keys fails from now on, as on a server that refuses it (an
    /// identity provisioned before range purges), without the request being sent.
    pub fn refuse_range_purges(&self) {
        self.refuse_range_purges.store(true, Ordering::SeqCst);
    }

    /// Whether range purges are to fail (see [`LeaderFaults::refuse_range_purges`]).
    pub(crate) fn range_purges_refused(&self) -> bool {
        self.refuse_range_purges.load(Ordering::SeqCst)
    }

    /// Rounds that have finished blocking (see [`LeaderFaults::block_next_round`]).
    pub fn rounds_blocked(&self) -> u64 {
        self.rounds_blocked.load(Ordering::SeqCst)
    }

    /// Called by the leader loop once per round, in the model's step.
    pub(crate) fn check(&self) {
        if self.panic_next_round.swap(false, Ordering::SeqCst) {
            panic!("test hook: the assigner's leader task panics");
        }
        let block = self.block_next_round.lock().unwrap().take();
        if let Some(duration) = block {
            std::thread::sleep(duration);
            self.rounds_blocked.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The leader's model of one fixed job granted over a fleet, built without NATS, for measuring
/// what a live partition costs in memory (`integration-tests/tests/assigner_footprint.rs` counts
/// the heap bytes it holds).
#[derive(Debug)]
pub struct ModelFixture {
    state: crate::model::AssignerState,
    now_ms: u64,
}

impl ModelFixture {
    /// A model holding a fixed job of `partitions` one-ID partitions (stored, none cut yet) and a
    /// view of `workers` live workers with room for all of them, on the lean write path.
    pub fn new(workers: usize, partitions: u64) -> Self {
        use crate::model::{AssignerState, MAX_FILL_CUT, Policy, Snapshot, WritePath};
        use elk_protocol::SCHEMA_VERSION;
        use elk_protocol::messages::{JobRecord, JobSpec, MemberRole, MembershipView, ViewMember};
        use elk_types::{Capacity, Epoch, Generation, IdRange, Incarnation, JobName, MemberId};

        let policy = Policy {
            grants_per_capacity: 2,
            partitions_per_round: 1_000,
            max_fill_cut: MAX_FILL_CUT,
            max_job_backlog: partitions,
            finished_job_retention_ms: 3_600_000,
            revoke_timeout_ms: 5_000,
            tails: Default::default(),
            rebalance: Default::default(),
            quarantine_after_deaths: 3,
            write_path: WritePath::Lean,
        };
        let epoch = Epoch(1);
        let name = JobName::new("footprint").expect("a valid job name");
        let range = IdRange::new(1, partitions.max(1)).expect("a valid range");
        let job = JobRecord::new(name, JobSpec::fixed(range, 1), epoch, 0);
        let snapshot = Snapshot {
            jobs: vec![(job, elk_types::Revision(1))],
            ..Snapshot::default()
        };
        let mut state = AssignerState::load(epoch, policy, 0, snapshot);
        // Two grants per unit of capacity: room for every partition.
        let capacity = partitions.div_ceil(2 * workers.max(1) as u64).max(1) as u32;
        let mut members: Vec<ViewMember> = (0..workers)
            .map(|index| ViewMember {
                id: MemberId::new(format!("worker-{index}")).expect("a valid member id"),
                role: MemberRole::Worker,
                incarnation: Incarnation(1),
                capacity: Capacity(capacity),
                jobs: vec![],
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        state.apply_view(&MembershipView {
            schema: SCHEMA_VERSION,
            generation: Generation(1),
            members,
        });
        Self { state, now_ms: 0 }
    }

    /// One leader round: reconcile, then the change set "written" a slice at a time as the
    /// leader does (every put acknowledged at a new revision, as the store reports it) and
    /// dropped. Returns the partition puts.
    pub fn round(&mut self) -> usize {
        use crate::model::Written;
        self.now_ms += 1;
        self.state.reconcile(self.now_ms);
        let mut puts = 0;
        loop {
            let changes = self.state.take_changes_bounded(crate::leader::FLUSH_SLICE);
            let mut written = Written::default();
            let revision = elk_types::Revision(self.now_ms + 1);
            for put in &changes.partitions {
                written.partitions.push((put.key.clone(), revision));
            }
            for put in &changes.jobs {
                written.jobs.push((put.key.clone(), revision));
            }
            for put in changes.assignments.iter() {
                written
                    .assignments
                    .push((put.key.clone(), put.value.clone(), revision));
            }
            puts += changes.partitions.len();
            drop(changes);
            self.state.record_written(written);
            if !self.state.changes_pending() {
                return puts;
            }
        }
    }

    /// Partitions the model holds (live: not completed).
    pub fn live_partitions(&self) -> usize {
        self.state.live_partition_count()
    }
}
