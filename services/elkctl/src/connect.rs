//! Where elkctl connects: the NATS flags every ELK binary shares ([`NatsArgs`]: `--nats-url`,
//! credentials and TLS, with their `ELK_*` variables), the namespace, and for admin commands the
//! typed [`AdminClient`] with `--wait` as its patience and `--json` output.

use anyhow::Context;
use elk_nats::{AdminClient, ProvisionConfig, Resources};
use elk_protocol::admin::AdminResult;
use elk_protocol::messages::JobRecord;
use elk_protocol::names::Names;
use elk_runtime::NatsArgs;
use elk_types::Namespace;
use std::time::Duration;

/// Connection name elkctl shows in the server's monitoring.
const CONNECTION_NAME: &str = "elkctl";

/// NATS and the namespace: what every command that talks to a deployment needs.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Namespace of the deployment.
    #[arg(long, env = "ELK_NAMESPACE", default_value = "default")]
    pub namespace: String,
}

impl TargetArgs {
    /// The namespace, validated (before any network call).
    pub fn namespace(&self) -> anyhow::Result<Namespace> {
        Namespace::new(&self.namespace).context("--namespace")
    }

    /// Connects to NATS (refusing servers ELK cannot run on).
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(elk_nats::connect(&self.nats.config(CONNECTION_NAME)).await?)
    }

    /// Connects and binds the namespace's existing buckets, for commands that read them (an
    /// operator or observer identity may; it creates nothing).
    pub async fn open(&self) -> anyhow::Result<Resources> {
        let names = Names::new(self.namespace()?);
        let client = self.connect().await?;
        Ok(elk_nats::bind(client, names).await?)
    }

    /// Connects and creates or updates every resource of the namespace (an admin identity), with
    /// `replicas` copies (`None`: existing resources keep theirs, new ones get 1).
    pub async fn provision(&self, replicas: Option<usize>) -> anyhow::Result<Resources> {
        let names = Names::new(self.namespace()?);
        let client = self.connect().await?;
        let config = ProvisionConfig {
            replicas,
            ..ProvisionConfig::default()
        };
        Ok(elk_nats::provision(client, names, &config).await?)
    }
}

/// Connection flags of every admin command.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Seconds to keep retrying while no assigner leads (e.g. during a failover).
    #[arg(long, default_value_t = elk_nats::admin_client::DEFAULT_PATIENCE.as_secs(),
          value_name = "SECS")]
    pub wait: u64,
    /// Print JSON (the admin API's result objects) instead of tables; a failure prints
    /// `{"error": {"code": ..., "message": ...}}`.
    #[arg(long)]
    pub json: bool,
}

impl ConnectArgs {
    /// The namespace, validated (before any network call).
    pub fn namespace(&self) -> anyhow::Result<Namespace> {
        self.target.namespace()
    }

    /// The admin client of the namespace (nothing is provisioned: admin commands only need the
    /// assigner).
    pub async fn admin(&self) -> anyhow::Result<AdminClient> {
        let names = Names::new(self.namespace()?);
        let client = self.target.connect().await?;
        Ok(AdminClient::new(client, names).with_patience(Duration::from_secs(self.wait)))
    }
}

/// The job of a `job` result (create, get, pause, resume, cancel).
pub fn into_job(result: AdminResult) -> anyhow::Result<JobRecord> {
    match result {
        AdminResult::Job { job } => Ok(job),
        other => anyhow::bail!("unexpected assigner reply: {other:?}"),
    }
}
