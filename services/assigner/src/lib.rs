//! elk-assigner — the partition authority.
//!
//! Every replica joins the members bucket as an `assigner` and follows `leases/role.assigner`
//! through the shared role supervisor (`elk_nats::role`: promotion, demotion that awaits the
//! leader task, re-joining after a lost member key, restarts after retryable errors, giving the
//! role up after a panic or a terminal error). The replica the lease names (member id +
//! incarnation) leads under the lease's epoch: it owns the `jobs`, `partitions` and `assignments`
//! buckets (single writer, compare-and-set on every key), creates the partitions of jobs, grants
//! them to live workers, ingests progress from the progress stream (durable consumer, acked after
//! the KV write) and completes jobs.
//!
//! Modules (dependencies point down the list; no cycles):
//!
//! | module | role |
//! |---|---|
//! | [`http`] | HTTP JSON admin API (a NATS client of whichever replica leads) and the status page; `http_trace`: its spans |
//! | `http::guard` | the checks of every HTTP request: Host, Origin, bearer token and scope, JSON, body limits |
//! | `http::serve` | the HTTP listener: header timeout, connection limit, TLS |
//! | `status` | the status page and its KV-read routes (workers, role leaders) |
//! | `leader` | the leader term: load, event loop, progress and reclaim barrier, planner questions |
//! | `admin` | admin requests → model commands → coded replies |
//! | `store` | writes a round's change set to KV |
//! | `metrics` | [`AssignerMetrics`]: the Prometheus metrics, shared with the caller |
//! | `model` | the pure model: state, `reconcile`, the partition lifecycle, the change set |
//! | `error` | [`AssignerError`], classified retryable / terminal |
//! | `faults` | the leader loop's fault-injection point (`test-hooks` feature; a no-op otherwise) |
//! | [`malloc_tuning`] | the binary's glibc malloc settings (re-executes itself once with `GLIBC_TUNABLES`) |

mod admin;
mod config;
mod error;
mod faults;
pub mod http;
mod http_trace;
mod leader;
pub mod malloc_tuning;
mod metrics;
mod model;
mod status;
mod store;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

pub use config::{
    AssignerConfig, AssignerSettings, HttpSettings, RebalanceSettings, TailSettings, WritePath,
};
pub use error::{AssignerError, Feed, JetstreamOperation};
pub use metrics::AssignerMetrics;

use elk_nats::{RoleSupervisor, follow_key};
use elk_protocol::messages::MembershipView;
use elk_protocol::names::{ControlRole, VIEW_KEY};
use elk_runtime::Validate;
use elk_runtime::metrics::open_replica;
use faults::Faults;
use std::future::Future;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    // Boxed: the replica's future is large, and unoptimised builds copy it through every frame
    // that polls it (the debug tests overflowed a 2 MiB worker thread).
    Box::pin(run_replica(config, metrics, faults::none(), shutdown)).await
}

/// Like [`run_with_metrics`], with fault injection for tests (see [`test_hooks`]).
#[cfg(feature = "test-hooks")]
pub async fn run_with_faults(
    config: AssignerConfig,
    metrics: Arc<AssignerMetrics>,
    faults: Arc<test_hooks::LeaderFaults>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AssignerError> {
    Box::pin(run_replica(config, metrics, faults, shutdown)).await
}

async fn run_replica(
    config: AssignerConfig,
    metrics: Arc<AssignerMetrics>,
    faults: Faults,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AssignerError> {
    config.validate()?;
    let register = |registry: &mut _| metrics.register(registry);
    let (resources, status, _serving) =
        open_replica::<AssignerError>("assigner", &config.service, register, &metrics.endpoint)
            .await?;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY).await?;
    let policy = model::Policy {
        grants_per_capacity: config.assigner.grants_per_capacity,
        partitions_per_round: config.assigner.partitions_per_round,
        max_fill_cut: model::MAX_FILL_CUT,
        max_job_backlog: config.assigner.max_job_backlog,
        finished_job_retention_ms: config.assigner.finished_job_retention.as_millis() as u64,
        revoke_timeout_ms: config.assigner.revoke_timeout.as_millis() as u64,
        tails: config.assigner.tails.policy(),
        rebalance: config.assigner.rebalance.policy(),
        quarantine_after_deaths: config.assigner.quarantine_after_deaths,
        write_path: config.assigner.write_path,
    };
    let http = match &config.assigner.http_listen {
        Some(address) => {
            let settings = &config.assigner.http;
            Some(spawn_http(address, settings, &resources, &metrics.http_api).await?)
        }
        None => None,
    };
    let http_bound = metrics.http_api.clone();
    let leader = leader::AssignerLeader {
        resources: resources.clone(),
        policy,
        tick: config.assigner.tick,
        view,
        metrics,
        faults,
        range_purges_allowed: std::sync::atomic::AtomicBool::new(true),
    };
    let supervisor = RoleSupervisor::new(
        resources,
        config.service.member_id.clone(),
        ControlRole::Assigner,
        config.service.member_ttl,
        leader,
    )
    .status(status);
    let stop = CancellationToken::new();
    let replica = supervisor.run(stop.clone());
    tokio::pin!(replica);
    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        outcome = &mut replica => outcome,
        () = &mut shutdown => {
            stop.cancel();
            replica.await
        }
    };
    if let Some((stop_http, task)) = http {
        stop_http.cancel();
        let _ = task.await;
        http_bound.set(None);
    }
    Ok(outcome?)
}

/// Binds the HTTP admin API and serves it until the returned token is cancelled.
async fn spawn_http(
    address: &str,
    settings: &HttpSettings,
    resources: &elk_nats::Resources,
    bound: &elk_runtime::BoundAddress,
) -> Result<(CancellationToken, JoinHandle<()>), AssignerError> {
    let security =
        http::HttpSecurity::load(settings).map_err(|reason| AssignerError::HttpSetup { reason })?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| AssignerError::HttpListen {
            address: address.to_owned(),
            source,
        })?;
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP admin API listening");
    bound.set(listener.local_addr().ok());
    let stop = CancellationToken::new();
    let serve = http::serve_http(listener, resources.clone(), security, stop.clone());
    let task = tokio::spawn(async move {
        if let Err(error) = serve.await {
            tracing::warn!(%error, "HTTP admin API stopped");
        }
    });
    Ok((stop, task))
}
