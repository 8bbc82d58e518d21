//! [`ServiceCommon`]: the `[service]` table every service config starts with — namespace,
//! member id, member TTL and the NATS connection.

use crate::config::ConfigError;
use crate::error::ReplicaError;
use crate::logging::LogFormat;
use crate::telemetry::TracingConfig;
use elk_nats::{MemberLease, NatsConfig, ReplicaStatus, Resources, ServiceMember};
use elk_protocol::messages::MemberRole;
use elk_types::{MemberId, Namespace};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The fields every service shares (`[service]` in TOML, `ELK_SERVICE__*` or the short forms
/// `ELK_NATS_URL`, `ELK_NAMESPACE`, `ELK_MEMBER_ID`, `ELK_MEMBER_TTL`, `ELK_LOG_FORMAT`,
/// `ELK_METRICS_LISTEN`, `ELK_REPLICAS` in the environment; short forms listed in
/// `config::ENV_SHORT_FORMS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCommon {
    /// Deployment namespace: every bucket and subject name carries it.
    pub namespace: Namespace,
    /// This replica's member id (its key in the members bucket), unique per replica. Default:
    /// `<service>-<hostname>-<pid>`, so replicas started without one never collide.
    pub member_id: MemberId,
    /// TTL of this replica's member key (at least 1 s); renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub member_ttl: Duration,
    /// How to reach NATS (`[service.nats]`).
    pub nats: NatsConfig,
    /// `text` (default) or `json` log lines (`--log-format`, `ELK_LOG_FORMAT`).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Trace export (`[service.tracing]`); off unless an OTLP endpoint is configured here or in
    /// the standard `OTEL_EXPORTER_OTLP_*` variables.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`HOST:PORT`, e.g. `0.0.0.0:9464`;
    /// `ELK_METRICS_LISTEN`); nothing is served when unset. See `crate::metrics_http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// How many NATS servers keep a copy of every bucket and of the progress stream (JetStream
    /// replicas, 1 to 5): 1 on a single server, 3 on a cluster of 3. Set, the replica creates
    /// missing resources with it and changes existing ones to it; unset, existing resources keep
    /// theirs and missing ones get 1. More than the cluster's servers is refused at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
}

/// Member TTL of a service replica unless configured.
pub const DEFAULT_MEMBER_TTL: Duration = Duration::from_secs(3);

impl ServiceCommon {
    /// The defaults of `service` (`election`, `assigner`, `scaler`): namespace `default`, a
    /// member id unique to this process, TTL 3 s, NATS on this machine.
    pub fn defaults(service: &str) -> Self {
        Self {
            namespace: Namespace::new("default").expect("valid default namespace"),
            member_id: default_member_id(service),
            member_ttl: DEFAULT_MEMBER_TTL,
            nats: NatsConfig::default(),
            log_format: LogFormat::default(),
            tracing: TracingConfig::default(),
            metrics_listen: None,
            replicas: None,
        }
    }

    /// The common section of a replica `member_id` in `namespace`, reaching NATS at `nats`.
    pub fn new(nats: NatsConfig, namespace: Namespace, member_id: MemberId) -> Self {
        Self {
            namespace,
            member_id,
            member_ttl: DEFAULT_MEMBER_TTL,
            nats,
            log_format: LogFormat::default(),
            tracing: TracingConfig::default(),
            metrics_listen: None,
            replicas: None,
        }
    }

    pub fn with_member_ttl(mut self, member_ttl: Duration) -> Self {
        self.member_ttl = member_ttl;
        self
    }

    /// Serves metrics and probes on `address` (`HOST:PORT`; port 0 picks a free one).
    pub fn with_metrics_listen(mut self, address: impl Into<String>) -> Self {
        self.metrics_listen = Some(address.into());
        self
    }

    /// Provisions every bucket and stream with `replicas` copies.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// The NATS connection of `service` (`elk-assigner`...), named `<service>/<member id>`
    /// unless the config names it.
    pub fn connection(&self, service: &str) -> NatsConfig {
        self.nats
            .clone()
            .named_if_unset(format!("{service}/{}", self.member_id))
    }

    /// Connects to NATS as `<service>/<member id>` (refusing servers ELK cannot run on) and binds
    /// the namespace's buckets and stream, provisioning them only if they are missing or their
    /// replica count is not the configured one, and this identity may ([`elk_nats::open`]; with
    /// ELK's permission model a service never may: an admin runs `elkctl provision` first).
    pub async fn open(&self, service: &str) -> Result<elk_nats::Resources, elk_nats::NatsError> {
        let client = elk_nats::connect(&self.connection(service)).await?;
        let names = elk_protocol::names::Names::new(self.namespace.clone());
        let provisioning = elk_nats::ProvisionConfig {
            replicas: self.replicas,
            ..elk_nats::ProvisionConfig::default()
        };
        // Boxed: opening (and maybe provisioning) awaits many requests, a large future that
        // unoptimised builds would otherwise keep on the polling task's stack.
        Box::pin(elk_nats::open(client, names, &provisioning)).await
    }

    /// This replica's membership in `resources`' namespace under `role`: re-joins retry every
    /// `retry`, `stop` ends joining (also waiting for a previous run's key to expire), and every
    /// membership is reported to `status`.
    pub fn member<'a>(
        &'a self,
        resources: &'a Resources,
        role: MemberRole,
        retry: Duration,
        stop: &'a CancellationToken,
        status: &'a ReplicaStatus,
    ) -> ServiceMember<'a> {
        ServiceMember {
            resources,
            id: &self.member_id,
            role,
            ttl: self.member_ttl,
            retry,
            stop,
            status,
        }
    }

    /// Refuses values no service can run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.member_ttl < Duration::from_secs(1) || self.member_ttl > elk_nats::MAX_LEASE_TTL {
            return Err(ConfigError::invalid(format!(
                "service.member_ttl must be between 1s and {:?} (a longer TTL is not honoured), got {:?}",
                elk_nats::MAX_LEASE_TTL,
                self.member_ttl
            )));
        }
        if self.nats.url.trim().is_empty() {
            return Err(ConfigError::invalid("service.nats.url must not be empty"));
        }
        self.nats
            .validate()
            .map_err(|reason| ConfigError::invalid(format!("service.{reason}")))?;
        self.tracing
            .validate()
            .map_err(|error| ConfigError::invalid(error.to_string()))?;
        if let Some(address) = &self.metrics_listen {
            crate::metrics_http::validate_listen_address("service.metrics_listen", address)?;
        }
        if let Some(replicas) = self.replicas
            && !(1..=elk_nats::MAX_REPLICAS).contains(&replicas)
        {
            return Err(ConfigError::invalid(format!(
                "service.replicas must be between 1 and {}, got {replicas}",
                elk_nats::MAX_REPLICAS
            )));
        }
        Ok(())
    }
}

/// Joins as `member` (waiting out a previous run's live key); `None` if its `stop` fired first.
pub async fn join(member: &ServiceMember<'_>) -> Result<Option<MemberLease>, ReplicaError> {
    member.join().await.map_err(|source| ReplicaError::Join {
        id: member.id.clone(),
        source,
    })
}

/// `<service>-<hostname>-<pid>`, made a valid member id (`[A-Za-z0-9_-]{1,64}`): other
/// characters become `-`, and the host name is shortened to fit.
pub fn default_member_id(service: &str) -> MemberId {
    member_id_from(service, &host_name(), std::process::id())
}

fn member_id_from(service: &str, host: &str, pid: u32) -> MemberId {
    const MAX: usize = 64;
    let sanitize = |text: &str| -> String {
        text.chars()
            .map(|c| match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => c,
                _ => '-',
            })
            .collect()
    };
    let service = sanitize(service);
    let suffix = format!("-{pid}");
    let room = MAX.saturating_sub(service.len() + suffix.len() + 1);
    let host: String = sanitize(host).chars().take(room).collect();
    let id = if host.is_empty() {
        format!("{service}{suffix}")
    } else {
        format!("{service}-{host}{suffix}")
    };
    let id: String = id.chars().take(MAX).collect();
    MemberId::new(&id).unwrap_or_else(|_| MemberId::new(format!("member{suffix}")).expect("valid"))
}

/// This machine's name (a pod's name on Kubernetes): `HOSTNAME`, else the kernel's, else `host`.
fn host_name() -> String {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_kernel = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_env
        .or_else(from_kernel)
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_member_ids_are_valid_and_per_process() {
        assert_eq!(
            member_id_from("assigner", "node-7", 42).as_str(),
            "assigner-node-7-42"
        );
        assert_eq!(
            member_id_from("scaler", "pod.ns.svc.cluster.local", 7).as_str(),
            "scaler-pod-ns-svc-cluster-local-7"
        );
        let long = member_id_from("election", &"h".repeat(200), 4_000_000);
        assert_eq!(long.as_str().len(), 64);
        assert!(long.as_str().starts_with("election-hhh"));
        assert!(long.as_str().ends_with("-4000000"));
        assert_eq!(member_id_from("assigner", "", 9).as_str(), "assigner-9");
        let here = default_member_id("assigner");
        assert!(here.as_str().ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn validation_refuses_short_ttls_and_empty_urls() {
        let mut common = ServiceCommon::defaults("scaler");
        assert!(common.validate().is_ok());
        common.member_ttl = Duration::from_millis(500);
        let error = common.validate().unwrap_err().to_string();
        assert!(error.contains("service.member_ttl"), "{error}");
        common.member_ttl = Duration::from_secs(1);
        common.nats.url = " ".to_owned();
        assert!(common.validate().is_err());
        common.nats.url = "nats://a:1".to_owned();
        common.metrics_listen = Some("9464".to_owned());
        let error = common.validate().unwrap_err().to_string();
        assert!(error.contains("service.metrics_listen"), "{error}");
    }

    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct EchoSettings {
        volume: u32,
    }

    crate::service_config! {
        /// A service config as every service declares one.
        pub struct EchoConfig { echo: EchoSettings }
    }

    impl crate::Validate for EchoConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            self.service.validate()
        }
    }

    #[test]
    fn replicas_come_from_elk_replicas_or_the_file_and_are_checked() {
        let load = |variables: &[(&str, &str)], file: Option<&std::path::Path>| {
            let variables = variables
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()));
            let no_flags = std::collections::BTreeMap::<String, String>::new();
            crate::config::load_config_from::<EchoConfig>(file, variables, no_flags)
        };
        assert_eq!(load(&[], None).unwrap().service.replicas, None);
        let from_env = load(&[("ELK_REPLICAS", "3")], None).unwrap();
        assert_eq!(from_env.service.replicas, Some(3));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.toml");
        std::fs::write(&path, "[service]\nreplicas = 1\n").unwrap();
        assert_eq!(load(&[], Some(&path)).unwrap().service.replicas, Some(1));
        let error = load(&[("ELK_REPLICAS", "7")], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("service.replicas"), "{error}");
        // The effective configuration prints the setting only when it is set.
        let printed = toml::to_string(&from_env).unwrap();
        assert!(printed.contains("replicas = 3"), "{printed}");
        assert!(
            !toml::to_string(&load(&[], None).unwrap())
                .unwrap()
                .contains("replicas")
        );
    }

    #[test]
    fn replicas_are_one_to_five_when_set() {
        let common = ServiceCommon::defaults("assigner");
        assert_eq!(common.replicas, None, "unset by default: keep what exists");
        assert!(common.clone().with_replicas(3).validate().is_ok());
        for wrong in [0, 6] {
            let error = common.clone().with_replicas(wrong).validate().unwrap_err();
            assert!(error.to_string().contains("service.replicas"), "{error}");
        }
    }

    #[test]
    fn connections_are_named_after_the_replica_unless_configured() {
        let common = ServiceCommon::new(
            NatsConfig::default(),
            Namespace::new("prod").unwrap(),
            MemberId::new("assigner-a").unwrap(),
        );
        let name = common.connection("elk-assigner").name;
        assert_eq!(name.as_deref(), Some("elk-assigner/assigner-a"));
        let mut named = common.clone();
        named.nats.name = Some("mine".to_owned());
        assert_eq!(
            named.connection("elk-assigner").name.as_deref(),
            Some("mine")
        );
    }
}
