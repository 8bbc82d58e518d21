//! Kubernetes actuation (optional, `[scaler.kubernetes]`): the worker Deployment's `scale`
//! subresource follows the scaler's `replicas`, and a scale-in removes exactly the drained
//! workers.
//!
//! The member id of a worker is its pod's name (the Deployment's pods set `ELK_MEMBER_ID` from
//! `metadata.name`, `deploy/k8s/base`). Before lowering the replicas, every retired worker's pod
//! is annotated with the lowest `controller.kubernetes.io/pod-deletion-cost` (`i32::MIN`), so the
//! ReplicaSet removes those pods first (Kubernetes ≥ 1.22 by default, 1.21 behind the
//! `PodDeletionCost` gate; older controllers ignore it and pick by readiness and age). A retired
//! worker whose pod cannot be annotated keeps its replica: the count is lowered only by the pods
//! marked. The mark is taken off a pod again if its worker is undrained before the scale-down
//! (the load came back). Client: kube-rs over rustls with ring; `k8s-openapi`'s earliest level,
//! whose `apps/v1` Deployment `scale` and `v1` Pod patches older servers serve as well
//! (`tests/kube_actuation.rs` runs against a real kube-apiserver 1.20).

use crate::config::KubernetesSettings;
use elk_nats::Retryable;
use elk_types::MemberId;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Config};
use std::collections::BTreeSet;

/// The annotation the ReplicaSet controller orders pod deletions by (lowest first).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost given to the pods of retired (drained) workers.
pub const RETIRED_COST: i32 = i32::MIN;

/// Why an actuation failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("invalid Kubernetes settings: {0}")]
    Settings(String),
    #[error("no Kubernetes client configuration: {0}")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("Kubernetes API: {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

impl Retryable for KubeError {
    /// Transport failures and server errors may pass; refusals (403, 404, 422) and bad settings
    /// will not without an operator.
    fn is_retryable(&self) -> bool {
        match self {
            KubeError::Settings(_) => false,
            KubeError::Config(_) => true,
            KubeError::Api { source, .. } => match source {
                kube::Error::Api(status) => status.code >= 500 || status.code == 429,
                _ => true,
            },
        }
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let what = what.into();
    move |source| KubeError::Api { what, source }
}

/// Sizes one Deployment.
pub struct KubeActuator {
    deployment: String,
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    /// Pods this actuator marked with [`RETIRED_COST`] (and has not unmarked).
    marked: BTreeSet<String>,
}

impl std::fmt::Debug for KubeActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeActuator")
            .field("deployment", &self.deployment)
            .field("marked", &self.marked)
            .finish()
    }
}

impl KubeActuator {
    /// A client for `settings` (explicit server, else in-cluster, else the kubeconfig).
    pub async fn connect(settings: &KubernetesSettings) -> Result<Self, KubeError> {
        let config = match &settings.api_server {
            Some(url) => {
                let uri = url
                    .parse()
                    .map_err(|error| KubeError::Settings(format!("api_server {url}: {error}")))?;
                let mut config = Config::new(uri);
                config.accept_invalid_certs = settings.insecure_skip_tls_verify;
                config.auth_info.token_file = settings
                    .token_file
                    .as_ref()
                    .map(|path| path.display().to_string());
                config
            }
            None => Config::infer()
                .await
                .map_err(|error| KubeError::Config(Box::new(error)))?,
        };
        let client = Client::try_from(config).map_err(api("client"))?;
        Ok(Self {
            deployment: settings.deployment.clone(),
            deployments: Api::namespaced(client.clone(), &settings.namespace),
            pods: Api::namespaced(client, &settings.namespace),
            marked: BTreeSet::new(),
        })
    }

    /// The Deployment's replicas as its `scale` subresource says.
    pub async fn replicas(&self) -> Result<u32, KubeError> {
        let scale = self
            .deployments
            .get_scale(&self.deployment)
            .await
            .map_err(api(format!("get scale of {}", self.deployment)))?;
        let replicas = scale.spec.and_then(|spec| spec.replicas).unwrap_or(0);
        Ok(u32::try_from(replicas).unwrap_or(0))
    }

    /// Brings the Deployment to `replicas`, removing the pods of `retire` first. Returns the
    /// replicas written (`replicas` plus the retired workers whose pod could not be marked).
    pub async fn actuate(&mut self, replicas: u32, retire: &[MemberId]) -> Result<u32, KubeError> {
        let wanted: BTreeSet<String> = retire.iter().map(|id| id.as_str().to_owned()).collect();
        let mut unmarked = 0u32;
        for pod in &wanted {
            if self.marked.contains(pod) {
                continue;
            }
            match self.set_cost(pod, Some(RETIRED_COST)).await {
                Ok(true) => {
                    self.marked.insert(pod.clone());
                }
                Ok(false) => {
                    tracing::warn!(%pod, "retired worker has no pod of that name: its replica stays");
                    unmarked += 1;
                }
                Err(error) => {
                    tracing::warn!(%pod, %error, "cannot mark a retired worker's pod: its replica stays");
                    unmarked += 1;
                }
            }
        }
        let stale: Vec<String> = self.marked.difference(&wanted).cloned().collect();
        for pod in stale {
            // Deleted by the scale-down (gone) or undrained (unmark it): either way forget it.
            if let Err(error) = self.set_cost(&pod, None).await {
                tracing::debug!(%pod, %error, "cannot unmark pod");
            }
            self.marked.remove(&pod);
        }
        let target = replicas.saturating_add(unmarked);
        if self.replicas().await? != target {
            let patch = serde_json::json!({ "spec": { "replicas": target } });
            self.deployments
                .patch_scale(
                    &self.deployment,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(api(format!("scale {} to {target}", self.deployment)))?;
            tracing::info!(deployment = %self.deployment, replicas = target, retired = ?wanted, "worker Deployment scaled");
        }
        Ok(target)
    }

    /// Sets (or with `None` removes) a pod's deletion cost; `Ok(false)`: no such pod.
    async fn set_cost(&self, pod: &str, cost: Option<i32>) -> Result<bool, KubeError> {
        let value = cost.map(|cost| cost.to_string());
        let patch =
            serde_json::json!({ "metadata": { "annotations": { POD_DELETION_COST: value } } });
        match self
            .pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(source) => Err(KubeError::Api {
                what: format!("annotate pod {pod}"),
                source,
            }),
        }
    }
}
