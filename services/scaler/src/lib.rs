//! elk-scaler — the fleet sizer. Every replica joins the members bucket as a scaler and follows
//! `leases/role.scaler` through the shared [`elk_nats::RoleSupervisor`]; the one the lease names
//! (id + incarnation) sizes the fleet every `interval` (`leader.rs`): the [`policy`] decides the
//! desired count from the backlog and the measured [`throughput`], a scale-in drains the workers
//! it removes first ([`fleet`]), the result goes to `fleet/desired` and the
//! `elk_scaler_desired_workers` gauge, and optionally to a Kubernetes Deployment ([`kube`]).
//! Promotion, demotion (cancel + await the leader task), re-joining after a lost member key and
//! the restart policy are the supervisor's (`elk_nats::role`).
//!
//! [`run`] is cancel-safe: dropping it aborts the leader task and stops the member key's renewal.

mod config;
pub mod fleet;
mod jobs;
pub mod kube;
mod leader;
mod metrics;
pub mod policy;
pub mod throughput;

pub use config::{KubernetesSettings, ScalerConfig, ScalerSettings};
pub use metrics::ScalerMetrics;

use elk_nats::{RoleSupervisor, follow_key};
use elk_protocol::messages::MembershipView;
use elk_protocol::names::{ControlRole, VIEW_KEY};
use elk_runtime::metrics::open_replica;
use elk_runtime::{ReplicaError, Validate};
use leader::ScalerLeader;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Errors of the scaler service: those every replica shares (configuration, membership, NATS).
pub type ScalerError = ReplicaError;

/// Runs one scaler replica until `shutdown` resolves: demotes (awaiting leader work), then
/// leaves the members bucket.
pub async fn run(
    config: ScalerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ScalerError> {
    run_with_metrics(config, Arc::default(), shutdown).await
}

/// Like [`run`], exposing the replica's metrics (and where it serves them).
pub async fn run_with_metrics(
    config: ScalerConfig,
    metrics: Arc<ScalerMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ScalerError> {
    config.validate()?;
    // Boxed: see `elk_assigner::run_with_metrics`.
    elk_runtime::serve_until(shutdown, |stop| Box::pin(serve(config, metrics, stop))).await
}

async fn serve(
    config: ScalerConfig,
    metrics: Arc<ScalerMetrics>,
    stop: CancellationToken,
) -> Result<(), ScalerError> {
    let register = |registry: &mut _| metrics.register(registry);
    let (resources, status, _serving) =
        open_replica::<ScalerError>("scaler", &config.service, register, &metrics.endpoint).await?;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY).await?;
    let supervisor = RoleSupervisor::new(
        resources.clone(),
        config.service.member_id.clone(),
        ControlRole::Scaler,
        config.service.member_ttl,
        ScalerLeader {
            resources,
            config: config.clone(),
            view,
            metrics,
        },
    )
    .rejoin_retry(config.scaler.interval)
    .status(status);
    Ok(supervisor.run(stop).await?)
}
