//! The scaler's Kubernetes actuation against a real kube-apiserver (1.20, built from Debian's
//! source by `scripts/ensure-kube-apiserver.sh`; `elk_testkit::KubeApiServer`): the worker
//! Deployment's `scale` follows the scaler, and a scale-in marks exactly the retired workers'
//! pods with the lowest `controller.kubernetes.io/pod-deletion-cost` before lowering the
//! replicas. Without the binaries the tests skip, except under CI (`CI` set), where they fail.

use bytes::Bytes;
use elk_nats::{
    CasOutcome, NatsConfig, ProvisionConfig, Resources, cas_write, connect, provision, read_entry,
};
use elk_protocol::codec::Message;
use elk_protocol::messages::{JobRecord, JobSpec, MemberRecord, MemberRef, RoleLease};
use elk_protocol::names::{ControlRole, Names};
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_runtime::ServiceCommon;
use elk_scaler::kube::{KubeActuator, POD_DELETION_COST, RETIRED_COST};
use elk_scaler::{KubernetesSettings, ScalerConfig, ScalerSettings};
use elk_testkit::{KubeApiServer, NatsServer, wait_until};
use elk_types::{Epoch, Generation, IdRange, JobName, MemberId, Namespace, PartitionId};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::oneshot;

const NAMESPACE: &str = "elk";
const DEPLOYMENT: &str = "workers";
const DEADLINE: Duration = Duration::from_secs(30);

/// The server, or `None` (skip) when its binaries are missing outside CI.
fn server() -> Option<KubeApiServer> {
    if KubeApiServer::binaries().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "kube-apiserver/etcd missing and CI is set: source scripts/ensure-kube-apiserver.sh"
        );
        eprintln!("skipping: no kube-apiserver (source scripts/ensure-kube-apiserver.sh)");
        return None;
    }
    Some(KubeApiServer::start().expect("kube-apiserver starts"))
}

fn settings(server: &KubeApiServer) -> KubernetesSettings {
    KubernetesSettings {
        namespace: NAMESPACE.to_owned(),
        deployment: DEPLOYMENT.to_owned(),
        api_server: Some(server.url().to_owned()),
        token_file: Some(server.token_file().to_path_buf()),
        insecure_skip_tls_verify: true,
    }
}

async fn client(server: &KubeApiServer) -> kube::Client {
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.accept_invalid_certs = true;
    config.auth_info.token_file = Some(server.token_file().display().to_string());
    kube::Client::try_from(config).unwrap()
}

/// The namespace, a worker Deployment of `replicas` and one pod per worker (pods are plain
/// objects here: no controller or kubelet acts on them).
async fn fleet(client: &kube::Client, replicas: i32, workers: &[&str]) {
    let namespaces: Api<KubeNamespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": NAMESPACE}
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": DEPLOYMENT},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "elk-worker"}},
            "template": {
                "metadata": {"labels": {"app": "elk-worker"}},
                "spec": {"containers": [{"name": "worker", "image": "elk-worker:test"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for worker in workers {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": worker, "labels": {"app": "elk-worker"}},
            "spec": {"containers": [{"name": "worker", "image": "elk-worker:test"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
}

async fn deletion_cost(client: &kube::Client, pod: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    pods.get(pod)
        .await
        .unwrap()
        .metadata
        .annotations
        .and_then(|annotations| annotations.get(POD_DELETION_COST).cloned())
}

fn ids(workers: &[&str]) -> Vec<MemberId> {
    workers
        .iter()
        .map(|id| MemberId::new(*id).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_marks_exactly_the_retired_pods_then_lowers_the_replicas() {
    let Some(server) = server() else { return };
    let client = client(&server).await;
    fleet(&client, 3, &["w-1", "w-2", "w-3"]).await;
    let mut actuator = KubeActuator::connect(&settings(&server)).await.unwrap();
    assert_eq!(actuator.replicas().await.unwrap(), 3);

    // w-2 was drained: its pod gets the lowest deletion cost, the others none, then 3 → 2.
    assert_eq!(actuator.actuate(2, &ids(&["w-2"])).await.unwrap(), 2);
    assert_eq!(actuator.replicas().await.unwrap(), 2);
    assert_eq!(
        deletion_cost(&client, "w-2").await,
        Some(RETIRED_COST.to_string())
    );
    assert_eq!(deletion_cost(&client, "w-1").await, None);
    assert_eq!(deletion_cost(&client, "w-3").await, None);

    // The load came back before the controller removed w-2: the mark is taken off again.
    assert_eq!(actuator.actuate(3, &[]).await.unwrap(), 3);
    assert_eq!(actuator.replicas().await.unwrap(), 3);
    assert_eq!(deletion_cost(&client, "w-2").await, None);

    // A retired worker without a pod of its name cannot be marked: its replica stays, so the
    // ReplicaSet cannot remove a worker that still runs something.
    assert_eq!(actuator.actuate(2, &ids(&["ghost"])).await.unwrap(), 3);
    assert_eq!(actuator.replicas().await.unwrap(), 3);
}

async fn put<M: Message>(
    resources: &Resources,
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    value: &M,
) {
    let expected = read_entry(store, key)
        .await
        .unwrap()
        .map(|entry| entry.revision);
    let outcome = cas_write(
        &resources.jetstream,
        store,
        key,
        Bytes::from(encode(value)),
        expected,
        None,
    )
    .await
    .unwrap();
    assert!(matches!(outcome, CasOutcome::Written(_)), "{outcome:?}");
}

fn job(partitions_total: u64, partitions_completed: u64) -> JobRecord {
    let mut record = JobRecord::new(
        JobName::new("backfill").unwrap(),
        JobSpec::fixed(IdRange::new(1, 10_000).unwrap(), 100),
        Epoch(0),
        0,
    );
    record.cursor = 10_001;
    record.next_partition = PartitionId(partitions_total + 1);
    record.partitions_total = partitions_total;
    record.partitions_completed = partitions_completed;
    record.ids_completed = partitions_completed * 100;
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_replicas_follow_the_scalers_desired_count() {
    let Some(kube_server) = server() else { return };
    let kube_client = client(&kube_server).await;
    fleet(&kube_client, 1, &[]).await;
    let deployments: Api<Deployment> = Api::namespaced(kube_client.clone(), NAMESPACE);
    let replicas = || async {
        deployments
            .get_scale(DEPLOYMENT)
            .await
            .unwrap()
            .spec
            .and_then(|spec| spec.replicas)
    };

    let nats = NatsServer::start();
    let namespace = Namespace::new("kube").unwrap();
    let connection = connect(&NatsConfig::new(nats.url(), "kube-test"))
        .await
        .unwrap();
    let resources = provision(
        connection,
        Names::new(namespace.clone()),
        &ProvisionConfig::default(),
    )
    .await
    .unwrap();
    let member_id = MemberId::new("scaler-1").unwrap();
    let service = ServiceCommon::new(
        NatsConfig::new(nats.url(), member_id.as_str()),
        namespace,
        member_id.clone(),
    )
    .with_member_ttl(Duration::from_secs(2));
    let config = ScalerConfig {
        service,
        scaler: ScalerSettings {
            interval: Duration::from_millis(100),
            min_workers: 1,
            max_workers: 20,
            scale_down_window: Duration::from_millis(300),
            kubernetes: Some(settings(&kube_server)),
            ..ScalerSettings::default()
        },
    };
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let scaler = tokio::spawn(elk_scaler::run(config, async move {
        let _ = shutdown_signal.await;
    }));
    // 100 partitions of 100 IDs, 40 done: 60 open → 6 workers (10 per worker before a rate is
    // measured).
    put(&resources, &resources.jobs, "backfill", &job(100, 40)).await;
    let incarnation = || async {
        let entry = read_entry(&resources.members, member_id.as_str())
            .await
            .ok()??;
        decode::<MemberRecord>(&entry.value)
            .ok()
            .map(|record| record.incarnation)
    };
    wait_until("scaler joined", DEADLINE, || async {
        incarnation().await.is_some()
    })
    .await
    .unwrap();
    let lease = RoleLease {
        schema: SCHEMA_VERSION,
        holder: Some(MemberRef {
            id: member_id.clone(),
            incarnation: incarnation().await.unwrap(),
        }),
        epoch: Epoch(1),
        generation: Generation(1),
    };
    put(
        &resources,
        &resources.leases,
        ControlRole::Scaler.lease_key(),
        &lease,
    )
    .await;
    wait_until("the Deployment scaled to 6", DEADLINE, || async {
        replicas().await == Some(6)
    })
    .await
    .unwrap();
    // Nearly done: after the stabilization window the Deployment follows down to 1.
    put(&resources, &resources.jobs, "backfill", &job(100, 99)).await;
    wait_until("the Deployment scaled to 1", DEADLINE, || async {
        replicas().await == Some(1)
    })
    .await
    .unwrap();

    shutdown.send(()).unwrap();
    scaler.await.unwrap().unwrap();
}
