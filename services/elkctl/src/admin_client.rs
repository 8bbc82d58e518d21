//! The admin client shared by every elkctl command that talks to the assigner: one
//! [`AdminCommand`] out on `elk.<ns>.admin.assigner.<verb>` (core NATS request/reply), one
//! [`AdminResult`] (or the assigner's refusal as an error) back.
//!
//! While nobody serves the subject ("no responders": no assigner leads right now, e.g. during a
//! failover) the request is retried with a short backoff for `patience`, then fails with an error
//! that says so. A request that reached a leader is never repeated (creating a job twice would be
//! refused as "already exists").

use anyhow::{Context, bail};
use elk_nats::{NatsConfig, Resources};
use elk_protocol::admin::{ASSIGNER_SERVICE, AdminCommand, AdminReply, AdminRequest, AdminResult};
use elk_protocol::messages::JobRecord;
use elk_protocol::names::Names;
use elk_protocol::{decode, encode};
use elk_types::Namespace;
use std::time::{Duration, Instant};

/// How long a command waits for an assigner leader by default.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(5);
/// How long one request may take once a leader received it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection flags of every admin command.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URL.
    #[arg(long, env = "ELK_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Namespace of the deployment.
    #[arg(long, env = "ELK_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Seconds to keep retrying while no assigner leads (e.g. during a failover).
    #[arg(long, default_value_t = DEFAULT_PATIENCE.as_secs(), value_name = "SECS")]
    pub wait: u64,
    /// Print JSON (the admin API's result objects) instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl ConnectArgs {
    /// The namespace, validated (before any network call).
    pub fn namespace(&self) -> anyhow::Result<Namespace> {
        Namespace::new(&self.namespace).context("--namespace")
    }

    /// Connects to NATS (nothing is provisioned: admin commands only need the assigner).
    pub async fn connect(&self) -> anyhow::Result<AdminClient> {
        let names = Names::new(self.namespace()?);
        let client = elk_nats::connect(&NatsConfig::new(&self.nats_url, "elkctl")).await?;
        Ok(AdminClient {
            client,
            names,
            patience: Duration::from_secs(self.wait),
        })
    }
}

/// A connection to the admin surface of one namespace.
#[derive(Debug, Clone)]
pub struct AdminClient {
    client: async_nats::Client,
    names: Names,
    patience: Duration,
}

impl AdminClient {
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Sends `command` to the assigner leader; see the module docs.
    pub async fn request(&self, command: AdminCommand) -> anyhow::Result<AdminResult> {
        request_on(&self.client, &self.names, command, self.patience).await
    }
}

/// Sends `command` to the assigner leader of `resources`' namespace, waiting up to `patience`
/// for a leader.
pub async fn request(
    resources: &Resources,
    command: AdminCommand,
    patience: Duration,
) -> anyhow::Result<AdminResult> {
    request_on(&resources.client, &resources.names, command, patience).await
}

async fn request_on(
    client: &async_nats::Client,
    names: &Names,
    command: AdminCommand,
    patience: Duration,
) -> anyhow::Result<AdminResult> {
    use async_nats::RequestErrorKind;
    let verb = command.verb();
    let subject = names.admin_subject(ASSIGNER_SERVICE, verb);
    let payload = bytes::Bytes::from(encode(&AdminRequest::new(command)));
    let deadline = Instant::now() + patience;
    let mut backoff = Duration::from_millis(50);
    loop {
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(REQUEST_TIMEOUT));
        match client.send_request(subject.clone(), request).await {
            Ok(message) => return reply_result(&message.payload),
            Err(error) if error.kind() == RequestErrorKind::NoResponders => {
                let now = Instant::now();
                if now >= deadline {
                    bail!(
                        "no assigner answered {verb} within {patience:?}: no assigner leads \
                         namespace '{}' right now (is one running? `elkctl status` shows the \
                         leaders; --wait waits longer)",
                        names.namespace()
                    );
                }
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(error) if error.kind() == RequestErrorKind::TimedOut => {
                bail!("the assigner did not answer {verb} within {REQUEST_TIMEOUT:?}")
            }
            Err(error) => bail!("admin request on {subject} failed: {error}"),
        }
    }
}

/// The result of a reply, or the assigner's refusal as the error.
pub fn reply_result(payload: &[u8]) -> anyhow::Result<AdminResult> {
    let reply: AdminReply = decode(payload).context("undecodable assigner reply")?;
    match (reply.result, reply.error) {
        (Some(result), _) => Ok(result),
        (None, Some(error)) => bail!("{}", error.message),
        (None, None) => bail!("the assigner replied with neither a result nor an error"),
    }
}

/// The job of a `job` result (create, get, pause, resume, cancel).
pub fn into_job(result: AdminResult) -> anyhow::Result<JobRecord> {
    match result {
        AdminResult::Job { job } => Ok(job),
        other => bail!("unexpected assigner reply: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::messages::JobSpec;
    use elk_types::{Epoch, IdRange, JobName};

    #[test]
    fn replies_become_results_or_errors() {
        let job = JobRecord::new(
            JobName::new("j").unwrap(),
            JobSpec::fixed(IdRange::new(1, 10).unwrap(), 5),
            Epoch(1),
            0,
        );
        let ok = encode(&AdminReply::ok(AdminResult::Job { job: job.clone() }));
        assert_eq!(into_job(reply_result(&ok).unwrap()).unwrap(), job);
        let refused = encode(&AdminReply::error(
            elk_protocol::admin::AdminErrorCode::UnknownJob,
            "unknown job 'x'",
        ));
        assert_eq!(
            reply_result(&refused).unwrap_err().to_string(),
            "unknown job 'x'"
        );
        assert!(reply_result(b"garbage").is_err());
        assert!(into_job(AdminResult::Retried { count: 1 }).is_err());
    }
}
