//! The HTTP JSON API of the assigner: REST in, the NATS admin request/reply
//! (`elk.<ns>.admin.assigner.<verb>`) out. Every replica serves it, leader or not: a request is
//! forwarded to whichever replica leads (queue group `assigner`), so a load balancer can point at
//! all of them.
//!
//! | route | admin command |
//! |---|---|
//! | `GET /v1/jobs?after=&limit=` | `list_jobs` (one page) |
//! | `POST /v1/jobs` (JSON body) | `create_job` → `201 Created` |
//! | `GET /v1/jobs/{name}` | `get_job` |
//! | `POST /v1/jobs/{name}/pause`, `/resume`, `/cancel` | `pause_job`, `resume_job`, `cancel_job` |
//! | `GET /v1/jobs/{name}/ids/{id}` | `id_status` |
//! | `GET /v1/partitions?job=&status=&after_job=&after_id=&limit=` | `list_partitions` |
//! | `POST /v1/retry` (JSON body `{job?, partition?}`, may be empty) | `retry` |
//! | `GET /v1/stats` | `stats` |
//! | `GET /v1/workers` | — (live workers with grants, capacity, load and state; read from KV) |
//! | `GET /v1/roles` | — (role leaders with their epochs, the view generation; read from KV) |
//! | `GET /status`, `GET /` | — (the live status page, HTML; see `status.rs`) |
//! | `GET /healthz` | — (this process and its NATS connection) |
//!
//! A successful response is the JSON of the [`AdminResult`] (tagged by `kind`). Every error is
//! `{"error": {"code": "...", "message": "..."}}`. A refusal of the assigner keeps its
//! [`AdminErrorCode`](elk_protocol::admin::AdminErrorCode) and gets that code's status
//! ([`http_status`](elk_protocol::admin::AdminErrorCode::http_status): `unknown_job` 404,
//! `already_exists`/`invalid_state` 409, `invalid_spec` 422, ...). The bridge's own errors:
//! `bad_request` 400 (input refused before anything is sent), `not_found` 404 (no such route),
//! `method_not_allowed` 405, `no_leader` 503 (no assigner answered within the patience),
//! `timed_out` 504 (the leader did not answer in time), `transport` 502 (NATS failed),
//! `internal` 500.
//!
//! Every request first passes the guard (`guard`: Host, Origin, bearer token and scope,
//! JSON on mutations, body limits: `unauthorized` 401, `forbidden` 403, `unsupported_media_type`
//! 415, `misdirected_request` 421, `request_timeout` 408, `payload_too_large` 413), and
//! connections are served with a header timeout, a connection limit and optional TLS
//! (`serve`).

use crate::config::HttpSettings;
mod guard;
mod serve;

use crate::status;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use elk_nats::{AdminClient, AdminClientError, Resources};
use elk_protocol::admin::{AdminCommand, MAX_PAGE};
use elk_protocol::messages::{JobSpec, PartitionStatus};
use elk_types::{IdRange, JobName, PartitionId};
use guard::Guard;
pub use guard::{ADMIN_TOKENS_ENV, READ_TOKENS_ENV};
use serde::Deserialize;
use serve::ServeOptions;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the HTTP API is protected: the request guard and the connection limits (from
/// `[assigner.http]` and the token environment variables).
#[derive(Debug, Clone)]
pub struct HttpSecurity {
    guard: Arc<Guard>,
    serve: ServeOptions,
}

impl HttpSecurity {
    /// Loads the tokens (file, `ELK_HTTP_ADMIN_TOKENS`, `ELK_HTTP_READ_TOKENS`) and the TLS
    /// certificate; refuses to serve without tokens unless `allow_unauthenticated`.
    pub fn load(settings: &HttpSettings) -> Result<Self, String> {
        Self::load_with_env(settings, |name| std::env::var(name).ok())
    }

    /// Like [`HttpSecurity::load`] with another environment (tests).
    pub fn load_with_env(
        settings: &HttpSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let guard = Arc::new(Guard::load(settings, env)?);
        let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => Some(serve::tls_acceptor(cert, key)?),
            _ => None,
        };
        Ok(Self {
            guard,
            serve: ServeOptions {
                max_connections: settings.max_connections,
                header_timeout: settings.header_timeout,
                tls,
            },
        })
    }
}

/// Serves the HTTP API on `listener` until `shutdown` is cancelled (then finishes the requests in
/// flight and returns). Requests wait up to the admin client's default patience (5 s) for a
/// leader.
pub async fn serve_http(
    listener: TcpListener,
    resources: Resources,
    security: HttpSecurity,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let bridge = Bridge {
        admin: AdminClient::new(resources.client.clone(), resources.names.clone()),
        resources,
    };
    if let Ok(address) = listener.local_addr() {
        let tls = security.serve.tls.is_some();
        tracing::info!(%address, tls, "admin HTTP API listening");
    }
    let app = router(bridge).layer(axum::middleware::from_fn_with_state(
        security.guard,
        guard::guard,
    ));
    serve::serve(listener, app, security.serve, shutdown).await
}

/// Forwards admin commands to the assigner leader over NATS; reads the status routes from KV.
#[derive(Clone)]
struct Bridge {
    admin: AdminClient,
    resources: Resources,
}

/// An error response: `{"error": {"code": code, "message": message}}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// The HTTP status of an assigner's refusal, from its code.
fn refusal_status(code: elk_protocol::admin::AdminErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<AdminClientError> for ApiError {
    fn from(error: AdminClientError) -> Self {
        let status = match &error {
            AdminClientError::Refused { error, .. } => refusal_status(error.code),
            AdminClientError::NoLeader { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AdminClientError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            AdminClientError::Transport { .. } => StatusCode::BAD_GATEWAY,
            AdminClientError::UnexpectedResult { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // A refusal's message is the operator's sentence; the client's own errors say more.
        let message = match error.refusal() {
            Some(refusal) => refusal.message.clone(),
            None => elk_nats::report(&error),
        };
        ApiError::new(status, error.code(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, error = %self.message, "admin HTTP request failed");
        }
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

fn router(bridge: Bridge) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{name}", get(get_job))
        .route("/v1/jobs/{name}/pause", post(pause_job))
        .route("/v1/jobs/{name}/resume", post(resume_job))
        .route("/v1/jobs/{name}/cancel", post(cancel_job))
        .route("/v1/jobs/{name}/ids/{id}", get(id_status))
        .route("/v1/partitions", get(list_partitions))
        .route("/v1/retry", post(retry))
        .route("/v1/stats", get(stats))
        .route("/v1/workers", get(workers))
        .route("/v1/roles", get(roles))
        .route("/status", get(status_page))
        .route("/", get(status_page))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(crate::http_trace::traced))
        .with_state(bridge)
}

type ApiResult = Result<Response, ApiError>;

async fn forward(bridge: &Bridge, command: AdminCommand, status: StatusCode) -> ApiResult {
    let result = bridge.admin.request(command).await?;
    Ok((status, axum::Json(result)).into_response())
}

async fn healthz(State(bridge): State<Bridge>) -> ApiResult {
    match bridge.admin.nats().connection_state() {
        async_nats::connection::State::Connected => Ok(axum::Json(
            serde_json::json!({"status": "ok", "nats": "connected"}),
        )
        .into_response()),
        state => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("not connected to NATS ({state})"),
        )),
    }
}

async fn list_jobs(
    State(bridge): State<Bridge>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult {
    forward(&bridge, jobs_command(&params)?, StatusCode::OK).await
}

async fn create_job(State(bridge): State<Bridge>, body: Bytes) -> ApiResult {
    let command = create_job_command(&body)?;
    forward(&bridge, command, StatusCode::CREATED).await
}

async fn get_job(State(bridge): State<Bridge>, Path(name): Path<String>) -> ApiResult {
    let name = job_name(&name)?;
    forward(&bridge, AdminCommand::GetJob { name }, StatusCode::OK).await
}

async fn pause_job(State(bridge): State<Bridge>, Path(name): Path<String>) -> ApiResult {
    let name = job_name(&name)?;
    forward(&bridge, AdminCommand::PauseJob { name }, StatusCode::OK).await
}

async fn resume_job(State(bridge): State<Bridge>, Path(name): Path<String>) -> ApiResult {
    let name = job_name(&name)?;
    forward(&bridge, AdminCommand::ResumeJob { name }, StatusCode::OK).await
}

async fn cancel_job(State(bridge): State<Bridge>, Path(name): Path<String>) -> ApiResult {
    let name = job_name(&name)?;
    forward(&bridge, AdminCommand::CancelJob { name }, StatusCode::OK).await
}

async fn id_status(
    State(bridge): State<Bridge>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    let job = job_name(&name)?;
    let id = parse_u64("id", &id)?;
    forward(&bridge, AdminCommand::IdStatus { job, id }, StatusCode::OK).await
}

async fn list_partitions(
    State(bridge): State<Bridge>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult {
    let command = partitions_command(&params)?;
    forward(&bridge, command, StatusCode::OK).await
}

async fn retry(State(bridge): State<Bridge>, body: Bytes) -> ApiResult {
    let command = retry_command(&body)?;
    forward(&bridge, command, StatusCode::OK).await
}

async fn stats(State(bridge): State<Bridge>) -> ApiResult {
    forward(&bridge, AdminCommand::Stats, StatusCode::OK).await
}

async fn workers(State(bridge): State<Bridge>) -> ApiResult {
    let workers = status::read_workers(&bridge.resources)
        .await
        .map_err(read_failed)?;
    Ok(axum::Json(workers).into_response())
}

async fn roles(State(bridge): State<Bridge>) -> ApiResult {
    let roles = status::read_roles(&bridge.resources)
        .await
        .map_err(read_failed)?;
    Ok(axum::Json(roles).into_response())
}

/// A KV read of a status route failed.
fn read_failed(error: elk_nats::NatsError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "transport",
        elk_nats::report(&error),
    )
}

async fn status_page() -> Response {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, status::STATUS_PAGE_CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        status::STATUS_PAGE,
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {method} {}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn job_name(raw: &str) -> Result<JobName, ApiError> {
    JobName::new(raw).map_err(|error| ApiError::bad_request(error.to_string()))
}

fn parse_u64(what: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!("{what} '{raw}' is not an unsigned 64-bit integer"))
    })
}

/// Body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJobBody {
    name: String,
    start: u64,
    /// Last ID (inclusive); omitted for an open-ended job.
    #[serde(default)]
    end: Option<u64>,
    partition_size: u64,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    retry_backoff_ms: Option<u64>,
    #[serde(default)]
    lookahead: Option<u32>,
}

fn create_job_command(body: &[u8]) -> Result<AdminCommand, ApiError> {
    let body: CreateJobBody = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid job body: {error}")))?;
    let name = job_name(&body.name)?;
    if body.partition_size == 0 {
        return Err(ApiError::bad_request("partition_size must be at least 1"));
    }
    let mut spec = match body.end {
        Some(end) => {
            if end < body.start {
                return Err(ApiError::bad_request(format!(
                    "end {end} is below start {}",
                    body.start
                )));
            }
            if end == u64::MAX {
                return Err(ApiError::bad_request(format!(
                    "end must be below {}",
                    u64::MAX
                )));
            }
            if body.lookahead.is_some() {
                return Err(ApiError::bad_request(
                    "lookahead applies to open-ended jobs only (omit end)",
                ));
            }
            let range = IdRange::new(body.start, end).expect("checked: start <= end");
            JobSpec::fixed(range, body.partition_size)
        }
        None => {
            if body.start == u64::MAX {
                return Err(ApiError::bad_request(format!(
                    "start must be below {}",
                    u64::MAX
                )));
            }
            JobSpec::open_ended(body.start, body.partition_size)
        }
    };
    if let Some(max_attempts) = body.max_attempts {
        if max_attempts == 0 {
            return Err(ApiError::bad_request("max_attempts must be at least 1"));
        }
        spec.max_attempts = max_attempts;
    }
    if let Some(backoff) = body.retry_backoff_ms {
        spec.retry_backoff_ms = backoff;
    }
    if let Some(lookahead) = body.lookahead {
        if lookahead == 0 {
            return Err(ApiError::bad_request("lookahead must be at least 1"));
        }
        spec.lookahead = lookahead;
    }
    Ok(AdminCommand::CreateJob { name, spec })
}

/// Query of `GET /v1/jobs`: `after` (the previous page's `next_after`), `limit` (1..=1000,
/// default 100).
fn jobs_command(params: &[(String, String)]) -> Result<AdminCommand, ApiError> {
    let mut after = None;
    let mut limit = None;
    for (key, value) in params {
        match key.as_str() {
            "after" => after = Some(job_name(value)?),
            "limit" => limit = Some(page_limit(value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter '{other}' (expected after, limit)"
                )));
            }
        }
    }
    Ok(AdminCommand::ListJobs { after, limit })
}

/// A page size: 1..=[`MAX_PAGE`].
fn page_limit(value: &str) -> Result<u32, ApiError> {
    let parsed = parse_u64("limit", value)?;
    if parsed == 0 || parsed > u64::from(MAX_PAGE) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(parsed as u32)
}

/// Query of `GET /v1/partitions`: `job`, `status` (comma-separated, may repeat), `after_job` with
/// `after_id` (the previous page's `next_after`), `limit` (1..=1000, default 100).
fn partitions_command(params: &[(String, String)]) -> Result<AdminCommand, ApiError> {
    let mut job = None;
    let mut statuses = Vec::new();
    let mut after_job = None;
    let mut after_id = None;
    let mut limit = None;
    for (key, value) in params {
        match key.as_str() {
            "job" => job = Some(job_name(value)?),
            "status" => {
                for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let status = parse_status(name)?;
                    if !statuses.contains(&status) {
                        statuses.push(status);
                    }
                }
            }
            "after_job" => after_job = Some(job_name(value)?),
            "after_id" => after_id = Some(PartitionId(parse_u64("after_id", value)?)),
            "limit" => limit = Some(page_limit(value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter '{other}' (expected job, status, after_job, \
                     after_id, limit)"
                )));
            }
        }
    }
    let after = match (after_job, after_id) {
        (Some(job), Some(id)) => Some((job, id)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "after_job and after_id go together (the previous page's next_after)",
            ));
        }
    };
    Ok(AdminCommand::ListPartitions {
        job,
        statuses,
        after,
        limit,
    })
}

/// Parses a partition status by its wire name (`pending`, `granted`, ...).
fn parse_status(name: &str) -> Result<PartitionStatus, ApiError> {
    serde_json::from_value(serde_json::Value::String(name.to_ascii_lowercase())).map_err(|_| {
        ApiError::bad_request(format!(
            "unknown status '{name}' (expected pending, granted, revoking, completed, failed)"
        ))
    })
}

/// Body of `POST /v1/retry`; an empty body retries every failed partition.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    partition: Option<u64>,
}

fn retry_command(body: &[u8]) -> Result<AdminCommand, ApiError> {
    let body: RetryBody = if body.iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|error| ApiError::bad_request(format!("invalid retry body: {error}")))?
    };
    let job = body.job.as_deref().map(job_name).transpose()?;
    if body.partition.is_some() && job.is_none() {
        return Err(ApiError::bad_request("a partition needs its job"));
    }
    Ok(AdminCommand::Retry {
        job,
        partition: body.partition.map(PartitionId),
    })
}

/// An input of the HTTP API that carries data beyond a path segment, as a client sends it.
#[derive(Debug, Clone, Copy)]
pub enum RequestInput<'a> {
    /// The body of `POST /v1/jobs`.
    CreateJobBody(&'a [u8]),
    /// The body of `POST /v1/retry`.
    RetryBody(&'a [u8]),
    /// The decoded query pairs of `GET /v1/partitions`.
    PartitionsQuery(&'a [(String, String)]),
}

/// The admin command the routes decode `input` into, without sending it anywhere; a refusal is
/// the `bad_request` message the route would answer with. The same decoders the routes use, made
/// reachable for the fuzz targets (`fuzz/`, `scripts/fuzz`).
pub fn decode_request_input(input: RequestInput<'_>) -> Result<AdminCommand, String> {
    match input {
        RequestInput::CreateJobBody(body) => create_job_command(body),
        RequestInput::RetryBody(body) => retry_command(body),
        RequestInput::PartitionsQuery(params) => partitions_command(params),
    }
    .map_err(|error| error.message)
}

#[cfg(test)]
mod tests;
