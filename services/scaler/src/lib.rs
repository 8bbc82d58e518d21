//! elk-scaler — the fleet sizer. Every replica joins the members bucket as a scaler and follows
//! `leases/role.scaler`; the one the lease names (id + incarnation) publishes the desired worker
//! count to `fleet/desired` (see [`policy`] for the rule of this slice).
//!
//! ```text
//!   Follower ── lease names (me, my incarnation) ──▶ Leader(task, epoch)
//!      ▲                                                  │
//!      └── another holder / new epoch / member key lost: cancel + AWAIT task
//! ```
//!
//! If its member key is lost the replica demotes itself and re-joins with a new incarnation.
//! [`run`] is cancel-safe: dropping it cancels every task it started.

mod config;
mod leader;
pub mod policy;

pub use config::{ScalerConfig, ScalerSettings};

use elk_nats::{MemberLease, MembershipExit, Resources, Versioned, follow_key};
use elk_protocol::messages::{MemberRef, MemberRole, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, VIEW_KEY};
use elk_runtime::{ReplicaError, Validate};
use elk_types::Epoch;
use leader::{LeaderContext, holds_role, lead};
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Errors of the scaler service: those every replica shares (configuration, membership, NATS).
pub type ScalerError = ReplicaError;

/// Runs one scaler replica until `shutdown` resolves: demotes (awaiting leader work), then
/// leaves the members bucket.
pub async fn run(
    config: ScalerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ScalerError> {
    config.validate()?;
    elk_runtime::serve_until(shutdown, |stop| serve(config, stop)).await
}

/// Leader-only work is a state.
enum LeaderState {
    Follower,
    Leader {
        epoch: Epoch,
        stop: CancellationToken,
        task: JoinHandle<()>,
    },
}

impl LeaderState {
    /// Cancels and awaits the leader task (no-op for a follower).
    async fn demote(self) -> LeaderState {
        if let LeaderState::Leader { epoch, stop, task } = self {
            stop.cancel();
            if let Err(error) = task.await {
                tracing::error!(%error, "scaler leader task panicked");
            }
            tracing::info!(epoch = %epoch, "scaler leader work stopped");
        }
        LeaderState::Follower
    }
}

struct Replica {
    config: ScalerConfig,
    resources: Resources,
    stop: CancellationToken,
    role: watch::Receiver<Option<Versioned<RoleLease>>>,
    view: watch::Receiver<Option<Versioned<MembershipView>>>,
}

async fn serve(config: ScalerConfig, stop: CancellationToken) -> Result<(), ScalerError> {
    let resources = config.service.open("elk-scaler").await?;
    let role = follow_key::<RoleLease>(&resources.leases, ControlRole::Scaler.lease_key()).await?;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY).await?;
    let mut replica = Replica {
        config,
        resources,
        stop,
        role,
        view,
    };
    let (service, resources, stop) = (
        replica.config.service.clone(),
        replica.resources.clone(),
        replica.stop.clone(),
    );
    let retry = replica.config.scaler.interval;
    let member = service.member(&resources, MemberRole::Scaler, retry, &stop);
    // `None`: stopped while waiting for a previous run's key to expire.
    let Some(mut membership) = elk_runtime::join(&member).await? else {
        return Ok(());
    };
    loop {
        let exit = replica.follow_role(&membership).await;
        match member.next(membership, exit).await {
            Some(next) => membership = next,
            None => return Ok(()),
        }
    }
}

impl Replica {
    /// Follows the role lease while `membership` lives, leading when it names this incarnation.
    async fn follow_role(&mut self, membership: &MemberLease) -> MembershipExit {
        let me = MemberRef {
            id: self.config.service.member_id.clone(),
            incarnation: membership.incarnation(),
        };
        let membership_lost = membership.lost();
        let mut state = LeaderState::Follower;
        let mut role_follow_alive = true;
        loop {
            let lease = self.role.borrow_and_update().clone();
            let designated = role_follow_alive
                .then(|| holds_role(lease.as_ref(), &me))
                .flatten();
            state = match (state, designated) {
                (LeaderState::Leader { epoch, stop, task }, Some(current)) if epoch == current => {
                    LeaderState::Leader { epoch, stop, task }
                }
                (state, designated) => {
                    let follower = state.demote().await;
                    match designated {
                        Some(epoch) => self.promote(&me, epoch, &membership_lost),
                        None => follower,
                    }
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => {
                    state.demote().await;
                    return MembershipExit::Shutdown;
                }
                () = membership_lost.cancelled() => {
                    state.demote().await;
                    tracing::warn!("member key lost: demoted, re-joining");
                    return MembershipExit::Lost;
                }
                changed = self.role.changed(), if role_follow_alive => {
                    if changed.is_err() {
                        // Without a follower we cannot see a demotion: stop leading.
                        tracing::error!("role lease follower ended; acting as follower");
                        role_follow_alive = false;
                        state = state.demote().await;
                    }
                }
            }
        }
    }

    fn promote(
        &self,
        me: &MemberRef,
        epoch: Epoch,
        membership_lost: &CancellationToken,
    ) -> LeaderState {
        let stop = self.stop.child_token();
        let context = LeaderContext {
            resources: self.resources.clone(),
            config: self.config.clone(),
            me: me.clone(),
            epoch,
            role: self.role.clone(),
            view: self.view.clone(),
            membership_lost: membership_lost.clone(),
        };
        let task = tokio::spawn(lead(context, stop.clone()));
        LeaderState::Leader { epoch, stop, task }
    }
}
