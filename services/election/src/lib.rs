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
pub mod roles;
mod view;

pub use config::ElectionConfig;

use bytes::Bytes;
use elk_nats::{
    JoinError, MemberLease, MembershipExit, NatsConfig, NatsError, ProvisionConfig, Resources,
    Retryable, ServiceMember, Versioned, connect, follow_key, provision,
};
use elk_protocol::messages::{ElectionLease, MemberRole};
use elk_protocol::names::{ELECTION_KEY, Names};
use elk_protocol::{SCHEMA_VERSION, encode};
use elk_types::MemberId;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors of the election service.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// Terminal: fix the configuration.
    #[error("invalid election configuration: {0}")]
    Config(String),
    /// Joining the members bucket failed (a NATS failure: a live holder of the id is waited
    /// for, not an error).
    #[error("cannot join as member '{id}': {source}")]
    Join {
        id: MemberId,
        #[source]
        source: JoinError,
    },
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// Retryable: other writers kept changing the view key.
    #[error("membership view kept changing under us ({attempts} attempts)")]
    ViewContended { attempts: usize },
    /// Retryable: other writers kept changing a role lease.
    #[error("role lease {role} kept changing under us ({attempts} attempts)")]
    RoleContended { role: &'static str, attempts: usize },
}

impl ElectionError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ElectionError::Config(_) => false,
            ElectionError::Join { source, .. } => source.is_retryable(),
            ElectionError::Nats(error) => error.is_retryable(),
            ElectionError::ViewContended { .. } | ElectionError::RoleContended { .. } => true,
        }
    }
}

impl Retryable for ElectionError {
    fn is_retryable(&self) -> bool {
        ElectionError::is_retryable(self)
    }
}

/// Runs one election replica until `shutdown` resolves, then stops in order: active tasks,
/// `election` key (so a standby takes over at once), membership.
pub async fn run(
    config: ElectionConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ElectionError> {
    config.validate().map_err(ElectionError::Config)?;
    let stop = CancellationToken::new();
    // Dropping `run` (e.g. an aborted task) cancels everything it spawned.
    let _cancel_on_drop = stop.clone().drop_guard();
    let replica = serve(config, stop.clone());
    tokio::pin!(replica);
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut replica => return result,
        () = &mut shutdown => stop.cancel(),
    }
    replica.await
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
    resources: Resources,
    stop: CancellationToken,
    election_lease: watch::Receiver<Option<Versioned<ElectionLease>>>,
    election_follow_alive: bool,
}

async fn serve(config: ElectionConfig, stop: CancellationToken) -> Result<(), ElectionError> {
    let mut nats = NatsConfig::new(
        config.nats_url.clone(),
        format!("elk-election/{}", config.member_id),
    );
    nats.credentials_file = config.credentials_file.clone();
    let client = connect(&nats).await?;
    let names = Names::new(config.namespace.clone());
    let resources = provision(client, names, &ProvisionConfig::default()).await?;
    let election_lease = follow_key::<ElectionLease>(&resources.leases, ELECTION_KEY).await?;
    let mut replica = Replica {
        config,
        resources,
        stop,
        election_lease,
        election_follow_alive: true,
    };
    let resources = replica.resources.clone();
    let member_id = replica.config.member_id.clone();
    let stop = replica.stop.clone();
    let member = ServiceMember {
        resources: &resources,
        id: &member_id,
        role: MemberRole::Election,
        ttl: replica.config.member_ttl,
        retry: replica.config.standby_retry,
        stop: &stop,
    };
    let joined = member.join().await.map_err(|source| ElectionError::Join {
        id: member_id.clone(),
        source,
    })?;
    // `None`: stopped while waiting for a previous run's key to expire.
    let Some(mut membership) = joined else {
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
        let mut retry = tokio::time::interval(self.config.standby_retry);
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
            holder: self.config.member_id.clone(),
            incarnation: membership.incarnation(),
        };
        let attempt = MemberLease::acquire(
            &self.resources,
            self.resources.leases.clone(),
            ELECTION_KEY,
            membership.incarnation(),
            Bytes::from(encode(&value)),
            self.config.election_ttl,
        )
        .await;
        match attempt {
            Ok(lease) => {
                tracing::info!(member = %self.config.member_id, "became the active election replica");
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
            task_stop.clone(),
        ));
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
