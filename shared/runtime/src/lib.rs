//! Process plumbing shared by the service binaries: layered configuration with one common
//! section, the connection flags every binary shares, logging and trace export ([`telemetry`]),
//! and shutdown signals.
//!
//! Services are libraries (`run(config, shutdown)`); their thin `main` is one call to
//! [`service_main`], which parses [`ServiceFlags`], loads the config (defaults → TOML file →
//! `ELK_*` environment → flags, then [`Validate`]; see [`config`] for the environment scheme),
//! prints it (`--print-config`) or starts telemetry (logs, and traces when an OTLP endpoint is
//! configured) and turns SIGINT / SIGTERM into the `shutdown` future. A second signal exits the
//! process at once. Queued spans are exported before `main` returns.
//!
//! Observability: [`telemetry`] (logs and traces), [`metrics`] (one `prometheus-client` registry
//! per instance, the membership and role gauges every process exports) and [`metrics_http`]
//! (`/metrics`, `/healthz`, `/readyz` on `metrics_listen`); [`RepeatLimiter`] keeps warnings that
//! can repeat per message or per round to one per interval.

mod common;
pub mod config;
mod error;
mod flags;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
mod repeat;
mod signal;
pub mod telemetry;

pub use common::{DEFAULT_MEMBER_TTL, ServiceCommon, default_member_id, join};
pub use config::{
    ConfigError, ServiceConfig, Validate, load_config, load_config_from, load_config_toml,
};
pub use error::ReplicaError;
pub use flags::{NatsArgs, ServiceFlags, service_main};
pub use logging::LogFormat;
pub use metrics_http::{BoundAddress, Health, MetricsEndpoint, MetricsListenError, Readiness};
pub use prometheus_client;
pub use repeat::RepeatLimiter;
pub use signal::{serve_until, shutdown_signal};
pub use telemetry::{Telemetry, TelemetryOptions, TracingConfig};
