//! The HTTP endpoint every ELK process can serve on `metrics_listen` (`--metrics-listen`,
//! `ELK_METRICS_LISTEN`): Prometheus metrics and the two Kubernetes probes.
//!
//! | route | answers |
//! |---|---|
//! | `GET /metrics` | the instance's [`Registry`] in the Prometheus text format (0.0.4) |
//! | `GET /healthz` | liveness: `200 ok` whenever the process's async runtime answers HTTP. It checks nothing else on purpose: a NATS outage must not get every pod restarted, and a process that lost its membership re-joins by itself |
//! | `GET /readyz` | readiness: `200` when the NATS connection is up (`async_nats` state `connected`) **and** the process holds a live membership (joined, last renewal within its fence deadline: [`ReplicaStatus::is_member`]); otherwise `503`. The JSON body names both checks |
//!
//! One endpoint per instance: the tests and `elkctl demo` run election, assigner and scaler in one
//! process, each with its own registry and port (no global state).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use elk_nats::ReplicaStatus;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The metrics endpoint could not listen where it was told to.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (metrics_listen)")]
pub struct MetricsListenError {
    pub address: String,
    #[source]
    pub source: std::io::Error,
}

/// A taken port or a bad address does not go away by retrying.
impl elk_nats::Retryable for MetricsListenError {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// What the readiness probe checks: the NATS connection and the membership.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    replica: ReplicaStatus,
    connection: OnceLock<async_nats::Client>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("readiness", &self.readiness())
            .finish()
    }
}

impl Health {
    /// Readiness follows `replica`'s membership (and the connection, once given).
    pub fn new(replica: ReplicaStatus) -> Self {
        Self {
            inner: Arc::new(HealthInner {
                replica,
                connection: OnceLock::new(),
            }),
        }
    }

    /// The connection whose state readiness checks (the first one given).
    pub fn watch_connection(&self, client: &async_nats::Client) {
        let _ = self.inner.connection.set(client.clone());
    }

    /// The result of both checks now.
    pub fn readiness(&self) -> Readiness {
        let nats = match self.inner.connection.get().map(|c| c.connection_state()) {
            None => "not connected yet",
            Some(async_nats::connection::State::Connected) => "connected",
            Some(async_nats::connection::State::Disconnected) => "disconnected",
            Some(async_nats::connection::State::Pending) => "connecting",
        };
        let member = self.inner.replica.is_member();
        Readiness {
            ready: nats == "connected" && member,
            nats,
            member,
        }
    }
}

/// The readiness probe's answer (its JSON body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Both checks pass.
    pub ready: bool,
    /// The NATS connection's state: `connected`, `connecting`, `disconnected` or `not connected
    /// yet`.
    pub nats: &'static str,
    /// The process holds a live membership (member key renewed within its fence deadline).
    pub member: bool,
}

/// Where a listener of an instance (its metrics endpoint, the assigner's HTTP API) is bound, once
/// it is (set by the service; read by whoever started it, e.g. a test that asked for port 0).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct BoundAddress {
    bound: Arc<watch::Sender<Option<SocketAddr>>>,
}

impl Default for BoundAddress {
    fn default() -> Self {
        Self {
            bound: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl BoundAddress {
    /// The bound address, if the listener is up.
    pub fn get(&self) -> Option<SocketAddr> {
        *self.bound.borrow()
    }

    /// Waits until the listener is bound.
    pub async fn wait(&self) -> SocketAddr {
        let mut receiver = self.bound.subscribe();
        let bound = receiver.wait_for(Option::is_some).await;
        bound
            .ok()
            .and_then(|address| *address)
            .expect("the sender lives in self")
    }

    /// Records where the listener is bound (`None`: it stopped).
    pub fn set(&self, address: Option<SocketAddr>) {
        self.bound.send_replace(address);
    }
}

/// A running endpoint; stopped (gracefully) by [`MetricsEndpoint::stop`], aborted when dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    address: SocketAddr,
    published: BoundAddress,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `address` (`HOST:PORT`; port 0 picks a free one) and serves `registry` and `health`
    /// there on the current runtime; the bound address is also reported to `published`.
    pub async fn start(
        address: &str,
        registry: Arc<Registry>,
        health: Health,
        published: &BoundAddress,
    ) -> Result<Self, MetricsListenError> {
        let listen_error = |source| MetricsListenError {
            address: address.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(listen_error)?;
        let bound = listener.local_addr().map_err(listen_error)?;
        tracing::info!(address = %bound, "metrics endpoint listening (/metrics, /healthz, /readyz)");
        let stop = CancellationToken::new();
        let app = router(Endpoint { registry, health });
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(%error, "metrics endpoint stopped");
            }
        });
        published.set(Some(bound));
        Ok(Self {
            address: bound,
            published: published.clone(),
            stop,
            task: Some(task),
        })
    }

    /// [`MetricsEndpoint::start`] when `address` is set (`metrics_listen`), else nothing.
    pub async fn start_if_configured(
        address: Option<&str>,
        registry: Arc<Registry>,
        health: Health,
        published: &BoundAddress,
    ) -> Result<Option<Self>, MetricsListenError> {
        match address {
            Some(address) => Self::start(address, registry, health, published)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, finishes the requests in flight, and returns.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.published.set(None);
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Endpoint {
    registry: Arc<Registry>,
    health: Health,
}

fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(endpoint)
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &endpoint.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

async fn readyz(State(endpoint): State<Endpoint>) -> Response {
    let readiness = endpoint.health.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

/// Refuses a listen address that is not `HOST:PORT` (`key` names the setting in the error).
pub fn validate_listen_address(key: &str, address: &str) -> Result<(), crate::ConfigError> {
    let port = address
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    if matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
        Ok(())
    } else {
        Err(crate::ConfigError::invalid(format!(
            "{key} '{address}' is not HOST:PORT (e.g. 0.0.0.0:9464)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_need_a_host_and_a_port() {
        assert!(validate_listen_address("service.metrics_listen", "0.0.0.0:9464").is_ok());
        assert!(validate_listen_address("service.metrics_listen", "[::1]:0").is_ok());
        let error = validate_listen_address("service.metrics_listen", "9464").unwrap_err();
        assert!(error.to_string().contains("service.metrics_listen"));
        assert!(validate_listen_address("k", ":80").is_err());
        assert!(validate_listen_address("k", "host:http").is_err());
    }

    #[test]
    fn readiness_needs_a_connection_and_a_membership() {
        let health = Health::new(ReplicaStatus::default());
        let readiness = health.readiness();
        assert!(!readiness.ready);
        assert_eq!(readiness.nats, "not connected yet");
        assert!(!readiness.member);
    }

    #[tokio::test]
    async fn serves_metrics_and_probes_on_a_free_port() {
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        registry.register(
            "elk_test_events",
            "Events seen by the test",
            counter.clone(),
        );
        counter.inc();
        let published = BoundAddress::default();
        let endpoint = MetricsEndpoint::start(
            "127.0.0.1:0",
            Arc::new(registry),
            Health::new(ReplicaStatus::default()),
            &published,
        )
        .await
        .unwrap();
        assert_eq!(published.wait().await, endpoint.local_addr());
        let address = endpoint.local_addr();
        let (status, body) = http_get(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE elk_test_events_total counter"),
            "{body}"
        );
        assert!(body.contains("elk_test_events_total 1"), "{body}");
        assert_eq!(
            http_get(address, "/healthz").await,
            (200, "ok\n".to_owned())
        );
        let (status, body) = http_get(address, "/readyz").await;
        assert_eq!(status, 503, "no connection, no membership");
        assert!(body.contains("\"member\":false"), "{body}");
        endpoint.stop().await;
        assert_eq!(published.get(), None, "a stopped endpoint is not published");
    }

    /// A minimal HTTP/1.0 GET: status code and body.
    async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}
