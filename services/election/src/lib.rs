//! elk-election — the group coordinator: owns *who is alive* and *who leads*.
//!
//! Replicas elect one active instance through the `leases/election` key (create-if-absent,
//! CAS renewal, per-key TTL). The active instance follows the members bucket, keeps the
//! membership view (`leases/view`, generation only grows) and designates one leader per
//! control-plane role with an epoch (`leases/role.*`, see [`roles`]).
//!
//! ```text
//!            join members bucket
//!                    │
//!                    ▼
//!   ┌──────────▶ Standby ── election key absent / retry tick ──▶ acquire ──┐
//!   │                                                           (taken: stay)│
//!   │                                                                       ▼
//!   └── lease lost: cancel + await active task ◀──────────────────────── Active
//!                                                   shutdown: cancel + await task,
//!                                                   delete election key, leave members
//! ```
//!
//! If the replica's own member key is lost it steps down and re-joins with a new incarnation.
//! [`run`] is cancel-safe: dropping it stops renewals (the keys expire) and cancels every task.

mod active;
mod config;
mod metrics;
pub mod roles;
pub mod transfer;
mod view;

pub use config::{DEFAULT_MAX_MEMBER_CAPACITY, ElectionConfig, ElectionSettings};
pub use metrics::ElectionMetrics;

use bytes::Bytes;
use elk_nats::{
    JoinError, MemberLease, MembershipExit, NatsError, Resources, Retryable, Versioned, follow_key,
};
use elk_protocol::messages::{ElectionLease, MemberRole};
use elk_protocol::names::ELECTION_KEY;
use elk_protocol::{SCHEMA_VERSION, encode};
use elk_runtime::metrics::open_replica;
use elk_runtime::{ConfigError, ReplicaError, Validate};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors of the election service.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// Configuration, membership or NATS, as for every replica.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// Retryable: other writers kept changing the view key.
    #[error("membership view kept changing under us ({attempts} attempts)")]
    ViewContended { attempts: usize },
    /// Retryable: other writers kept changing a role lease.
    #[error("role lease {role} kept changing under us ({attempts} attempts)")]
    RoleContended { role: &'static str, attempts: usize },
    /// Not retryable: an epoch or generation is at `u64::MAX` (only a forged record gets there);
    /// the write is refused instead of wrapping to a value below every earlier one.
    #[error("{role}: {source}")]
    Exhausted {
        role: &'static str,
        source: elk_types::Exhausted,
    },
}

impl From<NatsError> for ElectionError {
    fn from(error: NatsError) -> Self {
        ElectionError::Replica(error.into())
    }
}

impl From<elk_runtime::MetricsListenError> for ElectionError {
    fn from(error: elk_runtime::MetricsListenError) -> Self {
        ElectionError::Replica(error.into())
    }
}

impl From<ConfigError> for ElectionError {
    fn from(error: ConfigError) -> Self {
        ElectionError::Replica(error.into())
    }
}

impl Retryable for ElectionError {
    fn is_retryable(&self) -> bool {
        match self {
            ElectionError::Replica(error) => error.is_retryable(),
            ElectionError::ViewContended { .. } | ElectionError::RoleContended { .. } => true,
            ElectionError::Exhausted { .. } => false,
        }
    }
}

/// Runs one election replica until `shutdown` resolves, then stops in order: active tasks,
/// `election` key (so a standby takes over at once), membership.
pub async fn run(
    config: ElectionConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ElectionError> {
    run_with_metrics(config, Arc::default(), shutdown).await
}

/// Like [`run`], exposing the replica's metrics (and where it serves them).
pub async fn run_with_metrics(
    config: ElectionConfig,
    metrics: Arc<ElectionMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ElectionError> {
    config.validate()?;
    // Boxed: see `elk_assigner::run_with_metrics`.
    elk_runtime::serve_until(shutdown, |stop| Box::pin(serve(config, metrics, stop))).await
}

/// Outcome of the standby phase.
enum Standby {
    /// Boxed: a lease carries the whole `Resources` (several kilobytes).
    Acquired(Box<MemberLease>),
    Exit(MembershipExit),
}

/// Pause after the active task failed before competing for the lease again.
const STEP_DOWN_PAUSE: Duration = Duration::from_millis(500);

struct Replica {
    config: ElectionConfig,
    metrics: Arc<ElectionMetrics>,
    resources: Resources,
    stop: CancellationToken,
    election_lease: watch::Receiver<Option<Versioned<ElectionLease>>>,
    election_follow_alive: bool,
}

async fn serve(
    config: ElectionConfig,
    metrics: Arc<ElectionMetrics>,
    stop: CancellationToken,
) -> Result<(), ElectionError> {
    let register = |registry: &mut _| metrics.register(registry);
    let (resources, status, _serving) =
        open_replica::<ElectionError>("election", &config.service, register, &metrics.endpoint)
            .await?;
    let election_lease = follow_key::<ElectionLease>(&resources.leases, ELECTION_KEY).await?;
    let mut replica = Replica {
        config,
        metrics,
        resources,
        stop,
        election_lease,
        election_follow_alive: true,
    };
    let (service, resources, stop) = (
        replica.config.service.clone(),
        replica.resources.clone(),
        replica.stop.clone(),
    );
    let retry = replica.config.election.standby_retry;
    let member = service.member(&resources, MemberRole::Election, retry, &stop, &status);
    // `None`: stopped while waiting for a previous run's key to expire.
    let Some(mut membership) = elk_runtime::join(&member).await? else {
        return Ok(());
    };
    loop {
        let exit = replica.serve_membership(&membership).await?;
        match member.next(membership, exit).await {
            Some(next) => membership = next,
            None => return Ok(()),
        }
    }
}

impl Replica {
    /// Alternates standby and active phases while `membership` lives.
    async fn serve_membership(
        &mut self,
        membership: &MemberLease,
    ) -> Result<MembershipExit, ElectionError> {
        let membership_lost = membership.lost();
        loop {
            let election = match self.standby(membership, &membership_lost).await {
                Standby::Acquired(lease) => lease,
                Standby::Exit(exit) => return Ok(exit),
            };
            if let Some(exit) = self.active(*election, &membership_lost).await {
                return Ok(exit);
            }
        }
    }

    async fn standby(
        &mut self,
        membership: &MemberLease,
        membership_lost: &CancellationToken,
    ) -> Standby {
        let mut retry = tokio::time::interval(self.config.election.standby_retry);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let holder_absent = self.election_lease.borrow_and_update().is_none();
            if holder_absent && let Some(lease) = self.try_acquire(membership).await {
                return Standby::Acquired(Box::new(lease));
            }
            tokio::select! {
                () = self.stop.cancelled() => return Standby::Exit(MembershipExit::Shutdown),
                () = membership_lost.cancelled() => return Standby::Exit(MembershipExit::Lost),
                changed = self.election_lease.changed(), if self.election_follow_alive => {
                    if changed.is_err() {
                        tracing::warn!("election key follower ended; relying on periodic retries");
                        self.election_follow_alive = false;
                    }
                }
                _ = retry.tick() => {
                    if let Some(lease) = self.try_acquire(membership).await {
                        return Standby::Acquired(Box::new(lease));
                    }
                }
            }
        }
    }

    async fn try_acquire(&self, membership: &MemberLease) -> Option<MemberLease> {
        let value = ElectionLease {
            schema: SCHEMA_VERSION,
            holder: self.config.service.member_id.clone(),
            incarnation: membership.incarnation(),
        };
        let attempt = MemberLease::acquire(
            &self.resources.lease_keys,
            ELECTION_KEY,
            membership.incarnation(),
            Bytes::from(encode(&value)),
            self.config.election.election_ttl,
        )
        .await;
        match attempt {
            Ok(lease) => {
                tracing::info!(member = %self.config.service.member_id, "became the active election replica");
                Some(lease)
            }
            Err(JoinError::KeyTaken { .. } | JoinError::IdTaken { .. }) => None,
            Err(JoinError::Nats(error)) => {
                tracing::warn!(%error, "cannot try the election lease; retrying");
                None
            }
        }
    }

    /// Runs the active task until the lease is lost (→ `None`: back to standby) or the replica
    /// stops or loses its membership. The task is always cancelled and awaited first.
    async fn active(
        &mut self,
        election: MemberLease,
        membership_lost: &CancellationToken,
    ) -> Option<MembershipExit> {
        let election_lost = election.lost();
        let task_stop = self.stop.child_token();
        let mut task = tokio::spawn(active::run_active(
            self.resources.clone(),
            self.config.clone(),
            self.metrics.clone(),
            task_stop.clone(),
        ));
        self.metrics.active.set(1);
        enum Reason {
            Shutdown,
            ElectionLost,
            MembershipLost,
            TaskEnded(Result<Result<(), ElectionError>, tokio::task::JoinError>),
        }
        let reason = tokio::select! {
            () = self.stop.cancelled() => Reason::Shutdown,
            () = election_lost.cancelled() => Reason::ElectionLost,
            () = membership_lost.cancelled() => Reason::MembershipLost,
            ended = &mut task => Reason::TaskEnded(ended),
        };
        task_stop.cancel();
        if !matches!(reason, Reason::TaskEnded(_))
            && let Err(error) = task.await
        {
            tracing::error!(%error, "active task panicked");
        }
        self.metrics.active.set(0);
        match reason {
            Reason::ElectionLost => {
                tracing::warn!("election lease lost: active work stopped, back to standby");
                drop(election);
                None
            }
            Reason::Shutdown => {
                release(election).await;
                Some(MembershipExit::Shutdown)
            }
            Reason::MembershipLost => {
                tracing::warn!("member key lost: stepping down to re-join");
                release(election).await;
                Some(MembershipExit::Lost)
            }
            Reason::TaskEnded(ended) => {
                match ended {
                    Ok(Ok(())) => tracing::warn!("active task ended; stepping down"),
                    Ok(Err(error)) => tracing::error!(%error, "active task failed; stepping down"),
                    Err(error) => tracing::error!(%error, "active task panicked; stepping down"),
                }
                release(election).await;
                tokio::select! {
                    () = self.stop.cancelled() => return Some(MembershipExit::Shutdown),
                    () = tokio::time::sleep(STEP_DOWN_PAUSE) => {}
                }
                None
            }
        }
    }
}

/// Deletes the `election` key (if still ours) so a standby takes over at once.
async fn release(election: MemberLease) {
    if let Err(error) = election.leave().await {
        tracing::warn!(%error, "cannot delete the election key; it will expire");
    }
}
