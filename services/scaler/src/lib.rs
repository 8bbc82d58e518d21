//! elk-scaler — the fleet sizer. Every replica joins the members bucket as a scaler and follows
//! `leases/role.scaler` through the shared [`elk_nats::RoleSupervisor`]; the one the lease names
//! (id + incarnation) publishes the desired worker count to `fleet/desired` (see [`policy`] for
//! the rule of this slice). Promotion, demotion (cancel + await the leader task), re-joining after
//! a lost member key and the restart policy are the supervisor's (`elk_nats::role`).
//!
//! [`run`] is cancel-safe: dropping it aborts the leader task and stops the member key's renewal.

mod config;
mod leader;
pub mod policy;

pub use config::{ScalerConfig, ScalerSettings};

use elk_nats::{RoleSupervisor, follow_key};
use elk_protocol::messages::MembershipView;
use elk_protocol::names::{ControlRole, VIEW_KEY};
use elk_runtime::{ReplicaError, Validate};
use leader::ScalerLeader;
use std::future::Future;
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

async fn serve(config: ScalerConfig, stop: CancellationToken) -> Result<(), ScalerError> {
    let resources = config.service.open("elk-scaler").await?;
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
        },
    )
    .rejoin_retry(config.scaler.interval);
    Ok(supervisor.run(stop).await?)
}
