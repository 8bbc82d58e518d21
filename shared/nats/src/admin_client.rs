//! The one client of the admin surface: an [`AdminCommand`] out on
//! `elk.<ns>.admin.<service>.<verb>` (core NATS request/reply; the service is the assigner, or the
//! election for `transfer`: [`AdminCommand::service`]), an [`AdminResult`] or a coded
//! [`AdminError`] back. `elkctl`, the HTTP bridge, the scaler and the tests all use it.
//!
//! While nobody serves the subject (*no responders*: no assigner leads right now, e.g. during a
//! failover or before the election designated one) the request is sent again with a backoff of
//! 50 ms doubling to 500 ms, for at most the client's *patience*; then it fails with
//! [`AdminClientError::NoLeader`]. A request that reached a leader is never repeated: a leader
//! that does not answer within the request timeout is [`AdminClientError::TimedOut`], and the
//! command may or may not have been applied (creating the job again would be refused as
//! `already_exists`).
//!
//! Every request is a span `elk.admin.request` (kind client, a child of the caller's current
//! span); when it has a trace context (this process exports traces), the request carries it as
//! W3C `traceparent`/`tracestate` headers, and the assigner's handling continues the trace.

use crate::error::{BoxError, NatsErrorKind, Retryable, classify};
use elk_protocol::admin::{
    AdminCommand, AdminError, AdminReply, AdminRequest, AdminResult, AdminStats, IdState,
    MemberStatus, Transferred,
};
use elk_protocol::messages::{
    DrainSource, JobRecord, JobSpec, PartitionRecord, PartitionStatus, PlacementControl,
};
use elk_protocol::names::{ControlRole, Names};
use elk_protocol::{decode, encode};
use elk_types::{Epoch, JobName, MemberId, Namespace, PartitionId};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long a request waits for an assigner leader by default.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(5);
/// How long a leader that received a request may take to answer, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why an admin request did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Nobody served the subject for the whole patience: no assigner leads the namespace (no
    /// active election replica, for `transfer`).
    #[error(
        "no {service} answered {verb} within {patience:?}: no {service} leads namespace \
         '{namespace}' right now"
    )]
    NoLeader {
        service: &'static str,
        verb: &'static str,
        namespace: Namespace,
        patience: Duration,
    },
    /// A leader received the request but did not answer in time; it may have been applied.
    #[error("the {service} leader did not answer {verb} within {timeout:?}")]
    TimedOut {
        service: &'static str,
        verb: &'static str,
        timeout: Duration,
    },
    /// The leader refused the command; the code says why.
    #[error("the {service} refused {verb}: {error}")]
    Refused {
        service: &'static str,
        verb: &'static str,
        #[source]
        error: AdminError,
    },
    /// The request could not be sent, or the reply was not an admin reply.
    #[error("admin request {verb} failed: {source}")]
    Transport {
        verb: &'static str,
        kind: NatsErrorKind,
        #[source]
        source: BoxError,
    },
    /// The leader answered with a result of another kind than the command produces.
    #[error("unexpected reply to {verb}: {kind}")]
    UnexpectedResult {
        verb: &'static str,
        kind: &'static str,
    },
}

impl AdminClientError {
    /// A short machine-readable code: the refusal's [`elk_protocol::admin::AdminErrorCode`], or
    /// `no_leader`, `timed_out`, `transport`, `internal` for failures of the client itself.
    pub fn code(&self) -> &'static str {
        match self {
            AdminClientError::NoLeader { .. } => "no_leader",
            AdminClientError::TimedOut { .. } => "timed_out",
            AdminClientError::Refused { error, .. } => error.code.as_str(),
            AdminClientError::Transport { .. } => "transport",
            AdminClientError::UnexpectedResult { .. } => "internal",
        }
    }

    /// The refusal, when the leader refused.
    pub fn refusal(&self) -> Option<&AdminError> {
        match self {
            AdminClientError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// No leader and a timed-out leader may be different later (a failover ends); a refusal is
/// retryable only when its code says so (`unavailable`).
impl Retryable for AdminClientError {
    fn is_retryable(&self) -> bool {
        match self {
            AdminClientError::NoLeader { .. } | AdminClientError::TimedOut { .. } => true,
            AdminClientError::Refused { error, .. } => error.code.is_retryable(),
            AdminClientError::Transport { kind, .. } => *kind == NatsErrorKind::Unavailable,
            AdminClientError::UnexpectedResult { .. } => false,
        }
    }
}

/// Which live partitions `list_partitions` returns, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionQuery {
    /// Only this job's partitions.
    pub job: Option<JobName>,
    /// Only these statuses (empty: every status).
    pub statuses: Vec<PartitionStatus>,
    /// Continue after this partition (the previous page's `next_after`).
    pub after: Option<(JobName, PartitionId)>,
    /// Page size (default 100, at most [`elk_protocol::admin::MAX_PAGE`]).
    pub limit: Option<u32>,
}

/// One page of partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPage {
    pub partitions: Vec<PartitionRecord>,
    /// Pass as [`PartitionQuery::after`] for the next page; `None` on the last page.
    pub next_after: Option<(JobName, PartitionId)>,
}

/// A typed handle on the admin surface of one namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminClient {
    client: async_nats::Client,
    names: Names,
    patience: Duration,
    request_timeout: Duration,
}

impl AdminClient {
    /// A client on an existing connection, with [`DEFAULT_PATIENCE`] and
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(client: async_nats::Client, names: Names) -> Self {
        Self {
            client,
            names,
            patience: DEFAULT_PATIENCE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// How long to keep asking while no assigner leads.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// How long a leader that received a request may take to answer.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// Sends `command` to the assigner leader and returns its result (see the module docs).
    pub async fn request(&self, command: AdminCommand) -> Result<AdminResult, AdminClientError> {
        let verb = command.verb();
        let span = tracing::info_span!(
            "elk.admin.request",
            otel.kind = "client",
            elk.verb = verb,
            elk.namespace = %self.names.namespace(),
            otel.status_code = tracing::field::Empty,
            elk.error_code = tracing::field::Empty,
        );
        let headers = crate::trace::headers_for(&crate::trace::span_context(&span));
        let outcome = self.send(command, headers).instrument(span.clone()).await;
        if let Err(error) = &outcome {
            span.record("otel.status_code", "ERROR");
            span.record("elk.error_code", error.code());
        }
        outcome
    }

    async fn send(
        &self,
        command: AdminCommand,
        headers: Option<async_nats::HeaderMap>,
    ) -> Result<AdminResult, AdminClientError> {
        use async_nats::RequestErrorKind;
        let verb = command.verb();
        let service = command.service();
        let subject = self.names.admin_subject(service, verb);
        let payload = bytes::Bytes::from(encode(&AdminRequest::new(command)));
        let deadline = Instant::now() + self.patience;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(self.request_timeout));
            if let Some(headers) = &headers {
                request = request.headers(headers.clone());
            }
            let error = match self.client.send_request(subject.clone(), request).await {
                Ok(message) => return service_reply_result(service, verb, &message.payload),
                Err(error) => error,
            };
            match error.kind() {
                RequestErrorKind::NoResponders => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(AdminClientError::NoLeader {
                            service,
                            verb,
                            namespace: self.names.namespace().clone(),
                            patience: self.patience,
                        });
                    }
                    tokio::time::sleep(backoff.min(deadline - now)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                RequestErrorKind::TimedOut => {
                    return Err(AdminClientError::TimedOut {
                        service,
                        verb,
                        timeout: self.request_timeout,
                    });
                }
                _ => return Err(transport(verb, error.into())),
            }
        }
    }

    pub async fn create_job(
        &self,
        name: JobName,
        spec: JobSpec,
    ) -> Result<JobRecord, AdminClientError> {
        let command = AdminCommand::CreateJob { name, spec };
        self.job_command(command).await
    }

    /// Every job, in name order: follows the pages of `list_jobs` to the last one.
    pub async fn list_jobs(&self) -> Result<Vec<JobRecord>, AdminClientError> {
        let mut jobs = Vec::new();
        let mut after = None;
        loop {
            let (page, next_after) = self.list_jobs_page(after, None).await?;
            jobs.extend(page);
            match next_after {
                Some(next) => after = Some(next),
                None => return Ok(jobs),
            }
        }
    }

    /// One page of jobs after `after` (name order) and the name to continue after (`None`: the
    /// last page).
    pub async fn list_jobs_page(
        &self,
        after: Option<JobName>,
        limit: Option<u32>,
    ) -> Result<(Vec<JobRecord>, Option<JobName>), AdminClientError> {
        match self
            .request(AdminCommand::ListJobs { after, limit })
            .await?
        {
            AdminResult::Jobs { jobs, next_after } => Ok((jobs, next_after)),
            other => Err(unexpected("list_jobs", &other)),
        }
    }

    pub async fn get_job(&self, name: JobName) -> Result<JobRecord, AdminClientError> {
        self.job_command(AdminCommand::GetJob { name }).await
    }

    pub async fn pause_job(&self, name: JobName) -> Result<JobRecord, AdminClientError> {
        self.job_command(AdminCommand::PauseJob { name }).await
    }

    pub async fn resume_job(&self, name: JobName) -> Result<JobRecord, AdminClientError> {
        self.job_command(AdminCommand::ResumeJob { name }).await
    }

    pub async fn cancel_job(&self, name: JobName) -> Result<JobRecord, AdminClientError> {
        self.job_command(AdminCommand::CancelJob { name }).await
    }

    pub async fn list_partitions(
        &self,
        query: PartitionQuery,
    ) -> Result<PartitionPage, AdminClientError> {
        let command = AdminCommand::ListPartitions {
            job: query.job,
            statuses: query.statuses,
            after: query.after,
            limit: query.limit,
        };
        match self.request(command).await? {
            AdminResult::Partitions {
                partitions,
                next_after,
            } => Ok(PartitionPage {
                partitions,
                next_after,
            }),
            other => Err(unexpected("list_partitions", &other)),
        }
    }

    /// Re-queues failed partitions: every one (`job` `None`), one job's, or one partition.
    /// Returns how many were re-queued.
    pub async fn retry(
        &self,
        job: Option<JobName>,
        partition: Option<PartitionId>,
    ) -> Result<u64, AdminClientError> {
        match self.request(AdminCommand::Retry { job, partition }).await? {
            AdminResult::Retried { count } => Ok(count),
            other => Err(unexpected("retry", &other)),
        }
    }

    /// Where one ID of a job stands.
    pub async fn id_status(&self, job: JobName, id: u64) -> Result<IdState, AdminClientError> {
        match self.request(AdminCommand::IdStatus { job, id }).await? {
            AdminResult::IdStatus { status, .. } => Ok(status),
            other => Err(unexpected("id_status", &other)),
        }
    }

    /// The leader's counters.
    pub async fn stats(&self) -> Result<AdminStats, AdminClientError> {
        match self.request(AdminCommand::Stats).await? {
            AdminResult::Stats { stats } => Ok(stats),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// Every live member and whether placement is frozen.
    pub async fn members(&self) -> Result<Members, AdminClientError> {
        match self.request(AdminCommand::Members).await? {
            AdminResult::Members {
                epoch,
                now_unix_ms,
                frozen,
                members,
            } => Ok(Members {
                epoch,
                now_unix_ms,
                frozen,
                members,
            }),
            other => Err(unexpected("members", &other)),
        }
    }

    /// Asks the assigner to drain `worker` on behalf of `source`; returns the worker as it
    /// stands after the request is stored.
    pub async fn drain(
        &self,
        worker: MemberId,
        source: DrainSource,
    ) -> Result<MemberStatus, AdminClientError> {
        self.member_command(AdminCommand::Drain { worker, source })
            .await
    }

    /// Lets a drained worker take grants again.
    pub async fn undrain(&self, worker: MemberId) -> Result<MemberStatus, AdminClientError> {
        self.member_command(AdminCommand::Undrain { worker }).await
    }

    /// Freezes placement (no rebalancing moves) until [`AdminClient::unfreeze`].
    pub async fn freeze(
        &self,
        reason: Option<String>,
    ) -> Result<PlacementControl, AdminClientError> {
        self.placement_command(AdminCommand::Freeze { reason })
            .await
    }

    pub async fn unfreeze(&self) -> Result<PlacementControl, AdminClientError> {
        self.placement_command(AdminCommand::Unfreeze).await
    }

    /// Asks the active election replica to hand `role` to `to` (or to the next live member of
    /// that role).
    pub async fn transfer(
        &self,
        role: ControlRole,
        to: Option<MemberId>,
    ) -> Result<Transferred, AdminClientError> {
        match self.request(AdminCommand::Transfer { role, to }).await? {
            AdminResult::Transferred { transfer } => Ok(transfer),
            other => Err(unexpected("transfer", &other)),
        }
    }

    async fn member_command(
        &self,
        command: AdminCommand,
    ) -> Result<MemberStatus, AdminClientError> {
        let verb = command.verb();
        match self.request(command).await? {
            AdminResult::Member { member } => Ok(member),
            other => Err(unexpected(verb, &other)),
        }
    }

    async fn placement_command(
        &self,
        command: AdminCommand,
    ) -> Result<PlacementControl, AdminClientError> {
        let verb = command.verb();
        match self.request(command).await? {
            AdminResult::Placement { placement } => Ok(placement),
            other => Err(unexpected(verb, &other)),
        }
    }

    async fn job_command(&self, command: AdminCommand) -> Result<JobRecord, AdminClientError> {
        let verb = command.verb();
        match self.request(command).await? {
            AdminResult::Job { job } => Ok(job),
            other => Err(unexpected(verb, &other)),
        }
    }
}

fn transport(verb: &'static str, source: BoxError) -> AdminClientError {
    let kind = classify(source.as_ref(), NatsErrorKind::Unavailable);
    AdminClientError::Transport { verb, kind, source }
}

fn unexpected(verb: &'static str, result: &AdminResult) -> AdminClientError {
    AdminClientError::UnexpectedResult {
        verb,
        kind: result.kind(),
    }
}

/// The `members` result: every live member as the assigner leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// The leader's epoch: `ids_progressed` restarts from 0 with every leader term.
    pub epoch: Epoch,
    /// The leader's clock when it answered (Unix ms).
    pub now_unix_ms: u64,
    pub frozen: bool,
    pub members: Vec<MemberStatus>,
}

/// The result of an encoded [`AdminReply`] of the assigner, or its refusal as the error.
pub fn reply_result(verb: &'static str, payload: &[u8]) -> Result<AdminResult, AdminClientError> {
    service_reply_result(elk_protocol::admin::ASSIGNER_SERVICE, verb, payload)
}

/// The result of an encoded [`AdminReply`] of `service`, or its refusal as the error.
pub fn service_reply_result(
    service: &'static str,
    verb: &'static str,
    payload: &[u8],
) -> Result<AdminResult, AdminClientError> {
    let reply: AdminReply = decode(payload).map_err(|error| {
        AdminClientError::Transport {
            verb,
            // A reply this client cannot read will not become readable by asking again.
            kind: NatsErrorKind::Refused,
            source: format!("undecodable {service} reply: {error}").into(),
        }
    })?;
    match (reply.result, reply.error) {
        (Some(result), _) => Ok(result),
        (None, Some(error)) => Err(AdminClientError::Refused {
            service,
            verb,
            error,
        }),
        (None, None) => Err(AdminClientError::Transport {
            verb,
            kind: NatsErrorKind::Refused,
            source: format!("the {service} replied with neither a result nor an error").into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::admin::AdminErrorCode;
    use elk_types::{Epoch, IdRange};

    #[test]
    fn replies_become_results_or_coded_refusals() {
        let job = JobRecord::new(
            JobName::new("j").unwrap(),
            JobSpec::fixed(IdRange::new(1, 10).unwrap(), 5),
            Epoch(1),
            0,
        );
        let ok = encode(&AdminReply::ok(AdminResult::Job { job: job.clone() }));
        assert_eq!(
            reply_result("get_job", &ok).unwrap(),
            AdminResult::Job { job }
        );
        let refused = encode(&AdminReply::error(
            AdminErrorCode::UnknownJob,
            "unknown job 'x'",
        ));
        let error = reply_result("get_job", &refused).unwrap_err();
        assert_eq!(error.code(), "unknown_job");
        assert_eq!(error.refusal().unwrap().message, "unknown job 'x'");
        assert!(!error.is_retryable());
        let unavailable = encode(&AdminReply::error(AdminErrorCode::Unavailable, "busy"));
        assert!(
            reply_result("stats", &unavailable)
                .unwrap_err()
                .is_retryable()
        );
        let garbage = reply_result("stats", b"garbage").unwrap_err();
        assert_eq!(garbage.code(), "transport");
        assert!(!garbage.is_retryable());
        let wrong = unexpected("stats", &AdminResult::Retried { count: 1 });
        assert_eq!(wrong.to_string(), "unexpected reply to stats: retried");
    }
}
