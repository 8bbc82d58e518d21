//! The in-process control plane used by `elkctl demo`: one election, one assigner and one scaler
//! replica, all stopped by one cancellation token.

use elk_nats::NatsConfig;
use elk_runtime::ServiceCommon;
use elk_types::{MemberId, Namespace};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn start_services(
    nats: &NatsConfig,
    namespace: &Namespace,
    member_ttl: Duration,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let service = |id: &str| {
        ServiceCommon::new(
            nats.clone().named(format!("elk-demo {id}")),
            namespace.clone(),
            MemberId::new(id).expect("valid id"),
        )
        .with_member_ttl(member_ttl)
    };
    let mut election = elk_election::ElectionConfig::new(service("election-1"));
    election.election.election_ttl = member_ttl;
    let assigner = elk_assigner::AssignerConfig::new(service("assigner-1"));
    let scaler = elk_scaler::ScalerConfig::new(service("scaler-1"));
    let mut tasks = Vec::new();
    let token = stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(error) = elk_election::run(election, token.cancelled_owned()).await {
            eprintln!("election stopped: {error}");
        }
    }));
    let token = stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(error) = elk_assigner::run(assigner, token.cancelled_owned()).await {
            eprintln!("assigner stopped: {error}");
        }
    }));
    let token = stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(error) = elk_scaler::run(scaler, token.cancelled_owned()).await {
            eprintln!("scaler stopped: {error}");
        }
    }));
    tasks
}
