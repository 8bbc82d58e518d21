//! Role supervision: the one loop every role-following service replica (assigner, scaler) runs.
//!
//! The replica is a member (`members/<id>`, capacity 0) and follows `leases/role.<role>`, which
//! the election writes. While the lease names this replica's *current incarnation* under epoch
//! `e`, the replica runs its [`LeaderWork`] for the term `e` as a task of its own; it stops that
//! task — cancel, then **await** it — before anything else happens (following again, re-joining,
//! leaving), so no two terms of one replica ever run at once and nothing is written after a
//! demotion completes.
//!
//! ```text
//!                 lease names (me, e)                      lease moves on / other epoch /
//!   Follower ──────────────────────────▶ Leader(e) ───────  lease follower lost ──────────┐
//!    ▲  ▲  ▲                              │  │  │                                        │
//!    │  │  │   task ended: Cancelled or   │  │  │ task failed, retryable:                 │
//!    │  │  └── Deposed (e is declined) ◀──┘  │  └──────────▶ BackingOff(e, until) ──────┤
//!    │  │                                    │    still named under e when the delay is   │
//!    │  │                                    │    over ─▶ Leader(e) (same epoch, restart) │
//!    │  └──────────── cancel + AWAIT task ◀──┼────────────────────────────────────────────┘
//!    │                                       │ task failed, terminal; or task PANICKED
//!    │                                       ▼
//!    │   GivingUp: leave the member key ─▶ wait until the lease names someone else (at most
//!    └── `give_up_hold_off`) ─▶ re-join as a new incarnation
//!
//!   any state ── member key lost ──▶ cancel + await task ─▶ re-join as a new incarnation
//!   any state ── shutdown        ──▶ cancel + await task ─▶ leave the member key
//! ```
//!
//! **Restart policy** (explicit, see [`RestartPolicy`]): a leader task that fails with a
//! [`Retryable`] error is restarted under the same term after an exponential back-off
//! (`initial × 2^(failures − 1)`, capped at `max`; the count starts again with every new term), as
//! long as the lease still names this incarnation under that epoch. A task that ends with
//! [`TermEnd::Deposed`] (it found a newer leader) or on its own is not restarted under that epoch;
//! a later epoch naming this replica starts a new term. A task that fails with a **terminal** error
//! or **panics** gives the role up: the replica leaves the members bucket at once (the election
//! sees the delete and designates another replica, typically well within one TTL), waits until the
//! lease names someone else, then re-joins as a new incarnation and follows as a standby. Without
//! that, a replica whose leader work is dead would keep the role while doing nothing.
//!
//! Dropping [`RoleSupervisor::run`] (e.g. its task is aborted) aborts the leader task at once, like
//! a killed process: no leader work outlives the replica.

use crate::error::{NatsError, Retryable};
use crate::follow::{Versioned, follow_key};
use crate::membership::{JoinError, MemberLease, ServiceMember};
use crate::provision::Resources;
use crate::status::ReplicaStatus;
use elk_protocol::messages::{MemberRef, MemberRole, RoleLease};
use elk_protocol::names::ControlRole;
use elk_types::{Epoch, MemberId};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The work a replica does while it holds the role.
pub trait LeaderWork: Send + Sync + 'static {
    /// Classified: retryable errors restart the term after a back-off, terminal ones give the role
    /// up.
    type Error: std::error::Error + Retryable + Send + Sync + 'static;

    /// Leads for `term` until `cancel` fires (return [`TermEnd::Cancelled`]) or the work finds it
    /// has been deposed ([`TermEnd::Deposed`]). Must check [`LeaderTerm::is_current`] before every
    /// write it makes on behalf of the role.
    fn lead(
        &self,
        term: LeaderTerm,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<TermEnd, Self::Error>> + Send;
}

/// How a leader task ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermEnd {
    /// Its cancel token fired (or it had nothing more to do).
    Cancelled,
    /// It found a newer leader (e.g. a record written under a higher epoch): this term is over
    /// even if the lease this replica follows has not caught up yet.
    Deposed,
}

/// One term of leadership: who leads, under which epoch, and whether that still holds.
#[derive(Debug, Clone)]
pub struct LeaderTerm {
    me: MemberRef,
    epoch: Epoch,
    role: watch::Receiver<Option<Versioned<RoleLease>>>,
    membership_lost: CancellationToken,
}

impl LeaderTerm {
    /// This replica's member id and incarnation.
    pub fn me(&self) -> &MemberRef {
        &self.me
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Whether the lease (as last seen) still names this incarnation under this term's epoch and
    /// the membership is not lost. Check it before writing anything on behalf of the role.
    pub fn is_current(&self) -> bool {
        !self.membership_lost.is_cancelled()
            && designated_epoch(self.role.borrow().as_ref(), &self.me) == Some(self.epoch)
    }
}

/// The epoch under which `lease` names `me` (id and incarnation), if it does.
pub fn designated_epoch(lease: Option<&Versioned<RoleLease>>, me: &MemberRef) -> Option<Epoch> {
    let lease = &lease?.value;
    (lease.holder.as_ref() == Some(me)).then_some(lease.epoch)
}

/// When a leader task that failed with a retryable error is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay after the first failure of a term.
    pub initial: Duration,
    /// Longest delay; reached by doubling.
    pub max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// The delay before the restart that follows `failures` consecutive failures (≥ 1) of a term.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.initial
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(self.initial.min(self.max))
    }
}

/// Why a supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// Joining the members bucket failed at start-up (on NATS: a live holder of the id is
    /// waited for, not an error).
    #[error("cannot join as member '{id}'")]
    Join {
        id: MemberId,
        #[source]
        source: JoinError,
    },
    /// The role lease could not be followed at start-up.
    #[error("cannot follow the {role} role lease")]
    Follow {
        role: &'static str,
        #[source]
        source: NatsError,
    },
}

impl Retryable for RoleError {
    fn is_retryable(&self) -> bool {
        match self {
            RoleError::Join { source, .. } => source.is_retryable(),
            RoleError::Follow { source, .. } => source.is_retryable(),
        }
    }
}

/// Follows one control-plane role and runs `work` while holding it (see the module header).
pub struct RoleSupervisor<W: LeaderWork> {
    resources: Resources,
    member_id: MemberId,
    role: ControlRole,
    ttl: Duration,
    rejoin_retry: Duration,
    restart: RestartPolicy,
    give_up_hold_off: Duration,
    work: Arc<W>,
    status: ReplicaStatus,
}

impl<W: LeaderWork> RoleSupervisor<W> {
    /// A supervisor for `role` with the default [`RestartPolicy`], re-join attempts every 250 ms
    /// and a give-up hold-off of two member TTLs.
    pub fn new(
        resources: Resources,
        member_id: MemberId,
        role: ControlRole,
        ttl: Duration,
        work: W,
    ) -> Self {
        Self {
            resources,
            member_id,
            role,
            ttl,
            rejoin_retry: Duration::from_millis(250),
            restart: RestartPolicy::default(),
            give_up_hold_off: ttl.saturating_mul(2),
            work: Arc::new(work),
            status: ReplicaStatus::default(),
        }
    }

    /// Reports membership, leadership and the lease's epoch to `status` (readiness, metrics).
    pub fn status(mut self, status: ReplicaStatus) -> Self {
        self.status = status;
        self
    }

    /// Pause between failed re-join attempts.
    pub fn rejoin_retry(mut self, retry: Duration) -> Self {
        self.rejoin_retry = retry;
        self
    }

    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Joins, follows the role until `stop` fires, then demotes (awaiting the leader task) and
    /// leaves. Errors only at start-up; afterwards every failure is handled by the policy.
    pub async fn run(self, stop: CancellationToken) -> Result<(), RoleError> {
        let lease_key = self.role.lease_key();
        let mut role = follow_key::<RoleLease>(&self.resources.leases, lease_key)
            .await
            .map_err(|source| RoleError::Follow {
                role: self.role.as_str(),
                source,
            })?;
        let member = ServiceMember {
            resources: &self.resources,
            id: &self.member_id,
            role: member_role(self.role),
            ttl: self.ttl,
            retry: self.rejoin_retry,
            stop: &stop,
            status: &self.status,
        };
        self.status.follows(self.role);
        let joined = member.join().await.map_err(|source| RoleError::Join {
            id: self.member_id.clone(),
            source,
        })?;
        // `None`: stopped while waiting for a previous run's key to expire.
        let Some(mut membership) = joined else {
            return Ok(());
        };
        loop {
            let exit = self.follow(&membership, &mut role, &stop).await;
            self.status.set_leading(None);
            let next = match exit {
                Exit::Shutdown => {
                    leave(membership).await;
                    return Ok(());
                }
                Exit::Lost => {
                    drop(membership);
                    member.rejoin().await
                }
                Exit::GiveUp => {
                    let me = self.me(&membership);
                    leave(membership).await;
                    if !self.await_role_moved_from(&me, &mut role, &stop).await {
                        return Ok(());
                    }
                    member.rejoin().await
                }
            };
            match next {
                Some(rejoined) => membership = rejoined,
                None => return Ok(()),
            }
        }
    }

    fn me(&self, membership: &MemberLease) -> MemberRef {
        MemberRef {
            id: self.member_id.clone(),
            incarnation: membership.incarnation(),
        }
    }

    /// Follows the lease while `membership` lives; returns how that life ended. The leader task
    /// has always ended (awaited) when this returns.
    async fn follow(
        &self,
        membership: &MemberLease,
        role: &mut watch::Receiver<Option<Versioned<RoleLease>>>,
        stop: &CancellationToken,
    ) -> Exit {
        let me = self.me(membership);
        let membership_lost = membership.lost();
        let mut state = RoleState::<W::Error>::Follower { declined: None };
        // Consecutive failures of one term: (epoch, count).
        let mut failures: (Epoch, u32) = (Epoch(0), 0);
        loop {
            let designated = {
                let lease = role.borrow_and_update();
                if let Some(lease) = lease.as_ref() {
                    self.status.set_lease_epoch(lease.value.epoch);
                }
                designated_epoch(lease.as_ref(), &me)
            };
            state = match decide(state.phase(Instant::now()), designated) {
                Step::Stay => state,
                Step::Demote => state.demote().await,
                Step::Promote(epoch) => {
                    state.demote().await;
                    self.promote(LeaderTerm {
                        me: me.clone(),
                        epoch,
                        role: role.clone(),
                        membership_lost: membership_lost.clone(),
                    })
                }
            };
            self.status.set_leading(state.leading());
            tokio::select! {
                () = stop.cancelled() => {
                    state.demote().await;
                    return Exit::Shutdown;
                }
                () = membership_lost.cancelled() => {
                    state.demote().await;
                    tracing::warn!(role = self.role.as_str(), "member key lost: demoted, re-joining");
                    return Exit::Lost;
                }
                changed = role.changed() => {
                    if changed.is_err() {
                        // Without a follower a demotion cannot be seen: stop leading first.
                        tracing::error!(role = self.role.as_str(), "role lease follower ended: demoting and following again");
                        state = state.demote().await;
                        match self.follow_again(stop).await {
                            Some(followed) => *role = followed,
                            None => return Exit::Shutdown,
                        }
                    }
                }
                event = state.next_event() => {
                    let (epoch, ended) = match event {
                        StateEvent::BackoffOver => continue,
                        StateEvent::TaskEnded { epoch, outcome } => (epoch, outcome),
                    };
                    failures = if failures.0 == epoch { (epoch, failures.1 + 1) } else { (epoch, 1) };
                    let outcome = describe(&ended);
                    match after_task(&ended, failures.1, &self.restart) {
                        AfterTask::Decline => {
                            tracing::info!(role = self.role.as_str(), %epoch, %outcome, "leader term over: not restarted under this epoch");
                            state = RoleState::Follower { declined: Some(epoch) };
                        }
                        AfterTask::Restart(delay) => {
                            tracing::warn!(role = self.role.as_str(), %epoch, %outcome, failures = failures.1, ?delay, "leader task failed: restarting after a back-off");
                            state = RoleState::BackingOff { epoch, until: Instant::now() + delay };
                        }
                        AfterTask::GiveUp => {
                            tracing::error!(role = self.role.as_str(), %epoch, %outcome, "leader task failed for good: giving the role up (leaving, then re-joining as a standby)");
                            return Exit::GiveUp;
                        }
                    }
                }
            }
        }
    }

    fn promote(&self, term: LeaderTerm) -> RoleState<W::Error> {
        let epoch = term.epoch;
        tracing::info!(role = self.role.as_str(), %epoch, "designated: starting leader work");
        let cancel = CancellationToken::new();
        let work = self.work.clone();
        let task_cancel = cancel.clone();
        let handle = tokio::spawn(async move { work.lead(term, task_cancel).await });
        RoleState::Leader {
            epoch,
            cancel,
            task: LeaderTask(handle),
        }
    }

    /// Follows the lease again after its follower ended, retrying until it works or `stop`.
    async fn follow_again(
        &self,
        stop: &CancellationToken,
    ) -> Option<watch::Receiver<Option<Versioned<RoleLease>>>> {
        loop {
            match follow_key::<RoleLease>(&self.resources.leases, self.role.lease_key()).await {
                Ok(followed) => return Some(followed),
                Err(error) => {
                    tracing::warn!(role = self.role.as_str(), %error, "cannot follow the role lease; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(self.rejoin_retry) => {}
            }
        }
    }

    /// After giving the role up: waits until the lease no longer names `me` (the election moved
    /// it), at most `give_up_hold_off`. `false` if `stop` fired.
    async fn await_role_moved_from(
        &self,
        me: &MemberRef,
        role: &mut watch::Receiver<Option<Versioned<RoleLease>>>,
        stop: &CancellationToken,
    ) -> bool {
        let deadline = tokio::time::sleep(self.give_up_hold_off);
        tokio::pin!(deadline);
        loop {
            if designated_epoch(role.borrow_and_update().as_ref(), me).is_none() {
                return true;
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = &mut deadline => return true,
                changed = role.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                }
            }
        }
    }
}

fn member_role(role: ControlRole) -> MemberRole {
    match role {
        ControlRole::Assigner => MemberRole::Assigner,
        ControlRole::Scaler => MemberRole::Scaler,
    }
}

async fn leave(membership: MemberLease) {
    if let Err(error) = membership.leave().await {
        tracing::warn!(%error, "cannot leave membership; the key will expire");
    }
}

/// How one membership's life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Shutdown,
    Lost,
    GiveUp,
}

/// A spawned leader task; dropping it aborts the task (see the module header).
struct LeaderTask<E>(JoinHandle<Result<TermEnd, E>>);

impl<E> Drop for LeaderTask<E> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type TaskOutcome<E> = Result<Result<TermEnd, E>, tokio::task::JoinError>;

/// Leader-only work is a state.
enum RoleState<E> {
    /// Not leading. `declined`: an epoch whose term ended (deposed or finished) and is not led
    /// again.
    Follower { declined: Option<Epoch> },
    /// Leading term `epoch` in `task`.
    Leader {
        epoch: Epoch,
        cancel: CancellationToken,
        task: LeaderTask<E>,
    },
    /// The task of term `epoch` failed (retryable); it is started again at `until` if the lease
    /// still names this incarnation under `epoch`.
    BackingOff { epoch: Epoch, until: Instant },
}

impl<E: std::fmt::Display> RoleState<E> {
    /// The epoch whose leader task is running (not while backing off).
    fn leading(&self) -> Option<Epoch> {
        match self {
            RoleState::Leader { epoch, .. } => Some(*epoch),
            RoleState::Follower { .. } | RoleState::BackingOff { .. } => None,
        }
    }

    fn phase(&self, now: Instant) -> Phase {
        match self {
            RoleState::Follower { declined } => Phase::Follower {
                declined: *declined,
            },
            RoleState::Leader { epoch, .. } => Phase::Leader { epoch: *epoch },
            RoleState::BackingOff { epoch, until } => Phase::BackingOff {
                epoch: *epoch,
                over: now >= *until,
            },
        }
    }

    /// Cancels and awaits the leader task (a follower stays as it is; a back-off is dropped).
    async fn demote(self) -> RoleState<E> {
        match self {
            RoleState::Leader {
                epoch,
                cancel,
                mut task,
            } => {
                cancel.cancel();
                let ended = (&mut task.0).await;
                tracing::info!(%epoch, outcome = %describe(&ended), "leader work stopped");
                RoleState::Follower { declined: None }
            }
            RoleState::BackingOff { .. } => RoleState::Follower { declined: None },
            follower @ RoleState::Follower { .. } => follower,
        }
    }

    /// Resolves when the leader task ends on its own or a back-off is over (never for a
    /// follower).
    async fn next_event(&mut self) -> StateEvent<E> {
        match self {
            RoleState::Leader { epoch, task, .. } => StateEvent::TaskEnded {
                epoch: *epoch,
                outcome: (&mut task.0).await,
            },
            RoleState::BackingOff { until, .. } => {
                tokio::time::sleep_until(*until).await;
                StateEvent::BackoffOver
            }
            RoleState::Follower { .. } => std::future::pending().await,
        }
    }
}

enum StateEvent<E> {
    TaskEnded {
        epoch: Epoch,
        outcome: TaskOutcome<E>,
    },
    BackoffOver,
}

fn describe<E: std::fmt::Display>(ended: &TaskOutcome<E>) -> String {
    match ended {
        Ok(Ok(TermEnd::Cancelled)) => "stopped".to_owned(),
        Ok(Ok(TermEnd::Deposed)) => "deposed".to_owned(),
        Ok(Err(error)) => format!("error: {error}"),
        Err(error) if error.is_panic() => "panicked".to_owned(),
        Err(error) => format!("aborted: {error}"),
    }
}

/// The supervisor's state without its task: what [`decide`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Follower { declined: Option<Epoch> },
    Leader { epoch: Epoch },
    BackingOff { epoch: Epoch, over: bool },
}

/// What to do given the phase and the epoch under which the lease names this incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Stay,
    /// Stop leading (cancel + await), follow.
    Demote,
    /// Stop whatever runs, then lead this epoch.
    Promote(Epoch),
}

fn decide(phase: Phase, designated: Option<Epoch>) -> Step {
    match (phase, designated) {
        (Phase::Leader { epoch }, Some(named)) if named == epoch => Step::Stay,
        (Phase::Leader { .. } | Phase::BackingOff { .. }, None) => Step::Demote,
        (Phase::Leader { .. }, Some(named)) => Step::Promote(named),
        (Phase::BackingOff { epoch, over }, Some(named)) if named == epoch => {
            if over {
                Step::Promote(named)
            } else {
                Step::Stay
            }
        }
        (Phase::BackingOff { .. }, Some(named)) => Step::Promote(named),
        (Phase::Follower { declined }, Some(named)) if declined == Some(named) => Step::Stay,
        (Phase::Follower { .. }, Some(named)) => Step::Promote(named),
        (Phase::Follower { .. }, None) => Step::Stay,
    }
}

/// What follows a leader task that ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterTask {
    /// Follow; this epoch is not led again.
    Decline,
    /// Start the term again after this delay (if still named under the epoch).
    Restart(Duration),
    /// Leave and re-join as a standby.
    GiveUp,
}

fn after_task<E: Retryable>(
    ended: &TaskOutcome<E>,
    failures: u32,
    policy: &RestartPolicy,
) -> AfterTask {
    match ended {
        Ok(Ok(TermEnd::Cancelled | TermEnd::Deposed)) => AfterTask::Decline,
        Ok(Err(error)) if error.is_retryable() => AfterTask::Restart(policy.delay(failures)),
        Ok(Err(_)) => AfterTask::GiveUp,
        // A panic, or an abort nobody asked for: the work is broken, let another replica lead.
        Err(_) => AfterTask::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("test error (retryable: {0})")]
    struct TestError(bool);

    impl Retryable for TestError {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    const E1: Epoch = Epoch(1);
    const E2: Epoch = Epoch(2);

    #[test]
    fn a_follower_leads_when_named_unless_it_declined_that_epoch() {
        let fresh = Phase::Follower { declined: None };
        assert_eq!(decide(fresh, None), Step::Stay);
        assert_eq!(decide(fresh, Some(E1)), Step::Promote(E1));
        let declined = Phase::Follower { declined: Some(E1) };
        assert_eq!(decide(declined, Some(E1)), Step::Stay, "deposed under e1");
        assert_eq!(decide(declined, Some(E2)), Step::Promote(E2), "a new term");
    }

    #[test]
    fn a_leader_keeps_its_term_and_stops_when_the_lease_moves() {
        let leader = Phase::Leader { epoch: E1 };
        assert_eq!(decide(leader, Some(E1)), Step::Stay);
        assert_eq!(decide(leader, None), Step::Demote);
        assert_eq!(
            decide(leader, Some(E2)),
            Step::Promote(E2),
            "a new epoch naming me again: stop the old term, start the new one"
        );
    }

    #[test]
    fn a_back_off_restarts_only_when_over_and_still_named() {
        let waiting = Phase::BackingOff {
            epoch: E1,
            over: false,
        };
        let over = Phase::BackingOff {
            epoch: E1,
            over: true,
        };
        assert_eq!(decide(waiting, Some(E1)), Step::Stay);
        assert_eq!(decide(over, Some(E1)), Step::Promote(E1));
        assert_eq!(decide(waiting, None), Step::Demote, "the lease moved on");
        assert_eq!(decide(waiting, Some(E2)), Step::Promote(E2), "a new term");
    }

    #[test]
    fn only_retryable_errors_restart_and_panics_give_the_role_up() {
        let policy = RestartPolicy::default();
        let cancelled: TaskOutcome<TestError> = Ok(Ok(TermEnd::Cancelled));
        let deposed: TaskOutcome<TestError> = Ok(Ok(TermEnd::Deposed));
        let retryable: TaskOutcome<TestError> = Ok(Err(TestError(true)));
        let terminal: TaskOutcome<TestError> = Ok(Err(TestError(false)));
        assert_eq!(after_task(&cancelled, 1, &policy), AfterTask::Decline);
        assert_eq!(after_task(&deposed, 1, &policy), AfterTask::Decline);
        assert_eq!(
            after_task(&retryable, 1, &policy),
            AfterTask::Restart(Duration::from_millis(200))
        );
        assert_eq!(
            after_task(&retryable, 3, &policy),
            AfterTask::Restart(Duration::from_millis(800))
        );
        assert_eq!(after_task(&terminal, 1, &policy), AfterTask::GiveUp);
    }

    #[tokio::test]
    async fn a_panicking_task_gives_the_role_up() {
        let handle = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("leader work bug");
            }
            Ok::<TermEnd, TestError>(TermEnd::Cancelled)
        });
        let ended = handle.await;
        assert!(ended.as_ref().is_err_and(|error| error.is_panic()));
        assert_eq!(
            after_task(&ended, 1, &RestartPolicy::default()),
            AfterTask::GiveUp
        );
        assert_eq!(describe(&ended), "panicked");
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let policy = RestartPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn the_designated_epoch_needs_the_same_incarnation() {
        let me = MemberRef {
            id: MemberId::new("a").unwrap(),
            incarnation: elk_types::Incarnation(7),
        };
        let lease = |holder: Option<MemberRef>| Versioned {
            revision: elk_types::Revision(1),
            value: RoleLease {
                schema: elk_protocol::SCHEMA_VERSION,
                holder,
                epoch: E2,
                generation: elk_types::Generation(1),
            },
        };
        assert_eq!(
            designated_epoch(Some(&lease(Some(me.clone()))), &me),
            Some(E2)
        );
        let older = MemberRef {
            incarnation: elk_types::Incarnation(6),
            ..me.clone()
        };
        assert_eq!(designated_epoch(Some(&lease(Some(older))), &me), None);
        assert_eq!(designated_epoch(Some(&lease(None)), &me), None);
        assert_eq!(designated_epoch(None, &me), None);
    }
}
