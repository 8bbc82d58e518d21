//! The in-process control plane used by `elkctl demo`: one election, one assigner and one scaler
//! replica, all stopped by one cancellation token.

use elk_types::{MemberId, Namespace};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn start_services(
    url: &str,
    namespace: &Namespace,
    member_ttl: Duration,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let election = elk_election::ElectionConfig {
        nats_url: url.to_owned(),
        namespace: namespace.clone(),
        member_id: MemberId::new("election-1").expect("valid id"),
        member_ttl,
        election_ttl: member_ttl,
        ..Default::default()
    };
    let assigner = elk_assigner::AssignerConfig {
        nats_url: url.to_owned(),
        namespace: namespace.to_string(),
        member_id: "assigner-1".to_owned(),
        member_ttl,
        ..Default::default()
    };
    let scaler = elk_scaler::ScalerConfig {
        nats_url: url.to_owned(),
        namespace: namespace.clone(),
        member_id: MemberId::new("scaler-1").expect("valid id"),
        member_ttl,
        ..Default::default()
    };
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
