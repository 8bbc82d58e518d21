//! elk-assigner — the partition authority.
//!
//! Every replica joins the members bucket as an `assigner` and follows `leases/role.assigner`.
//! The replica named there (member id + incarnation) leads under the lease's epoch: it owns the
//! `jobs`, `partitions` and `assignments` buckets (single writer, compare-and-set on every key),
//! creates the partitions of jobs, grants them to live workers, ingests progress from the
//! progress stream (durable consumer, acked after the KV write) and completes jobs.
//!
//! ```text
//!   Follower ──lease names me (epoch e)──▶ Leader(e) ──lease names another / epoch changes──▶
//!      ▲                                       │        cancel the leader task, AWAIT it,
//!      └───────────────────────────────────────┘        then follow again
//! ```
//! Losing the member key (renewal failed) also demotes at once, then the replica re-joins as a new
//! incarnation.

mod admin;
mod config;
mod flush;
pub mod http;
mod leader;
mod state;

pub use config::{AssignerConfig, AssignerSettings};
pub use leader::AssignerMetrics;

use elk_nats::{ServiceMember, Versioned, follow_key};
use elk_protocol::messages::{MemberRef, MemberRole, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, VIEW_KEY};
use elk_runtime::Validate;
use elk_types::{Epoch, MemberId};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Errors of the assigner service.
#[derive(Debug, thiserror::Error)]
pub enum AssignerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Nats(#[from] elk_nats::NatsError),
    #[error(transparent)]
    Join(#[from] elk_nats::JoinError),
    #[error("{operation}: {message}")]
    NatsOperation {
        operation: &'static str,
        message: String,
    },
    #[error("deposed: a newer assigner than epoch {epoch} exists")]
    Deposed { epoch: Epoch },
    #[error("leader loop stopped: {0}")]
    Stopped(String),
}

impl AssignerError {
    pub(crate) fn nats(operation: &'static str, error: impl std::fmt::Display) -> Self {
        AssignerError::NatsOperation {
            operation,
            message: error.to_string(),
        }
    }
}

/// Runs one assigner replica until `shutdown` resolves.
pub async fn run(
    config: AssignerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AssignerError> {
    run_with_metrics(config, Arc::new(AssignerMetrics::default()), shutdown).await
}

/// Like [`run`], exposing the replica's counters.
pub async fn run_with_metrics(
    config: AssignerConfig,
    metrics: Arc<AssignerMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AssignerError> {
    config
        .validate()
        .map_err(|e| AssignerError::Config(e.to_string()))?;
    let member_id = config.service.member_id.clone();
    let resources = config.service.open("elk-assigner").await?;
    let role =
        follow_key::<RoleLease>(&resources.leases, ControlRole::Assigner.lease_key()).await?;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY).await?;
    let policy = state::Policy {
        grants_per_capacity: config.assigner.grants_per_capacity,
        partitions_per_round: config.assigner.partitions_per_round,
        revoke_timeout_ms: config.assigner.revoke_timeout.as_millis() as u64,
    };
    let http = match &config.assigner.http_listen {
        Some(address) => Some(spawn_http(address, &resources).await?),
        None => None,
    };
    let replica = Replica {
        config,
        resources,
        member_id,
        role,
        view,
        policy,
        metrics,
    };
    let outcome = replica.run(shutdown).await;
    if let Some((stop, task)) = http {
        stop.cancel();
        let _ = task.await;
    }
    outcome
}

/// Binds the HTTP admin API and serves it until the returned token is cancelled.
async fn spawn_http(
    address: &str,
    resources: &elk_nats::Resources,
) -> Result<(CancellationToken, JoinHandle<()>), AssignerError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| AssignerError::Config(format!("http_listen {address}: {e}")))?;
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP admin API listening");
    let stop = CancellationToken::new();
    let serve = http::serve_http(
        listener,
        resources.client.clone(),
        resources.names.clone(),
        stop.clone(),
    );
    let task = tokio::spawn(async move {
        if let Err(error) = serve.await {
            tracing::warn!(%error, "HTTP admin API stopped");
        }
    });
    Ok((stop, task))
}

struct Replica {
    config: AssignerConfig,
    resources: elk_nats::Resources,
    member_id: MemberId,
    role: watch::Receiver<Option<Versioned<RoleLease>>>,
    view: watch::Receiver<Option<Versioned<MembershipView>>>,
    policy: state::Policy,
    metrics: Arc<AssignerMetrics>,
}

/// The running leader loop. Dropping it (the replica's `run` future was dropped, as when its
/// task is aborted) aborts the loop at once, like a killed process: no leader work survives the
/// replica.
struct LeaderTask {
    epoch: Epoch,
    cancel: CancellationToken,
    /// Cancelled by the task itself when the leader loop returns (for any reason).
    finished: CancellationToken,
    handle: Option<JoinHandle<Result<(), AssignerError>>>,
}

impl LeaderTask {
    fn is_finished(&self) -> bool {
        self.finished.is_cancelled()
    }

    /// Graceful stop: cancel and await the loop.
    async fn stop(mut self) {
        self.cancel.cancel();
        let Some(handle) = self.handle.take() else {
            return;
        };
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::info!(%error, "leader task ended"),
            Err(error) => tracing::warn!(%error, "leader task panicked"),
        }
    }
}

impl Drop for LeaderTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

impl Replica {
    /// This replica's membership; re-joins retry every 250 ms until they work (shutdown is
    /// watched by the caller).
    fn member<'a>(&'a self, never: &'a CancellationToken) -> ServiceMember<'a> {
        ServiceMember {
            resources: &self.resources,
            id: &self.member_id,
            role: MemberRole::Assigner,
            ttl: self.config.service.member_ttl,
            retry: Duration::from_millis(250),
            stop: never,
        }
    }

    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AssignerError> {
        let never = CancellationToken::new();
        let Some(mut lease) = self.member(&never).join().await? else {
            return Ok(());
        };
        let mut leader: Option<LeaderTask> = None;
        tokio::pin!(shutdown);
        loop {
            let me = MemberRef {
                id: self.member_id.clone(),
                incarnation: lease.incarnation(),
            };
            let named_epoch = self.role.borrow().as_ref().and_then(|lease| {
                (lease.value.holder.as_ref() == Some(&me)).then_some(lease.value.epoch)
            });
            let finished = leader.as_ref().is_some_and(|task| task.is_finished());
            let keep = matches!((&leader, named_epoch), (Some(task), Some(epoch)) if task.epoch == epoch && !finished);
            if !keep {
                if let Some(task) = leader.take() {
                    task.stop().await;
                }
                if finished {
                    // The loop ended on an error while still named: back off, then lead again
                    // (a deposed loop finds the lease moved on and is not restarted).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                if let Some(epoch) = named_epoch {
                    leader = Some(self.start_leader(me.clone(), epoch));
                }
            }
            let lost = lease.lost();
            let leader_done = async {
                match &leader {
                    Some(task) => task.finished.cancelled().await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                changed = self.role.changed() => {
                    if changed.is_err() {
                        return Err(AssignerError::Stopped("role lease follower ended".into()));
                    }
                }
                _ = lost.cancelled() => {
                    tracing::warn!("membership lost: stopping leader work and re-joining");
                    if let Some(task) = leader.take() {
                        task.stop().await;
                    }
                    let member = self.member(&never);
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        rejoined = member.rejoin() => match rejoined {
                            Some(rejoined) => lease = rejoined,
                            None => return Ok(()),
                        },
                    }
                }
                // Handled at the top of the loop (stop, back off, lead again if still named).
                _ = leader_done => {}
            }
        }
        if let Some(task) = leader.take() {
            task.stop().await;
        }
        lease.leave().await?;
        Ok(())
    }

    fn start_leader(&self, me: MemberRef, epoch: Epoch) -> LeaderTask {
        let cancel = CancellationToken::new();
        let inputs = leader::LeaderInputs {
            resources: self.resources.clone(),
            me,
            epoch,
            policy: self.policy.clone(),
            tick: self.config.assigner.tick,
            view: self.view.clone(),
            role: self.role.clone(),
            cancel: cancel.clone(),
            metrics: self.metrics.clone(),
        };
        let finished = CancellationToken::new();
        let signal = finished.clone();
        let handle = tokio::spawn(async move {
            let outcome = leader::lead(inputs).await;
            signal.cancel();
            outcome
        });
        LeaderTask {
            epoch,
            cancel,
            finished,
            handle: Some(handle),
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod state_tests;
