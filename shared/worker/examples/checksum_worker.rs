//! A complete worker process, ready to run as a container: joins a namespace, folds every ID of its
//! partitions into a checksum (CPU-bound, so it is a `BlockingProcessor`), logs its lifecycle,
//! and on SIGTERM or SIGINT hands everything back and leaves within the shutdown grace; a second
//! signal exits at once.
//!
//! ```text
//! cargo run -p elk-worker --example checksum_worker -- --nats-url nats://127.0.0.1:4222 \
//!     --namespace prod --capacity 4
//! ELK_NATS_URL=nats://nats:4222 ELK_NAMESPACE=prod ELK_CAPACITY=4 checksum_worker
//! ```
//! On a secured deployment add the credentials and TLS flags every ELK binary takes, e.g.
//! `--nats-credentials-file worker-7.creds --nats-tls-ca-file ca.pem --nats-tls-required` (the
//! credentials' name must be the member id: `elkctl auth creds --role worker --name worker-7`).
//! Every flag has an `ELK_*` environment variable (`--help` lists them); `ELK_METRICS_LISTEN`
//! serves the SDK's metrics (plus this example's own `checksum_worker_ids_folded_total`) and the
//! probes. The member id defaults to
//! `<hostname>-<pid>`, unique per process (in Kubernetes the hostname is the pod name). The older
//! positional form `checksum_worker <url> <namespace> <member-id> <capacity>` still works.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` (and `OTEL_EXPORTER_OTLP_PROTOCOL`) set, the
//! worker exports its spans as `service.name` `elk-worker` (`--service-name` or
//! `OTEL_SERVICE_NAME` to change it): each partition's `elk.partition.process` span, with the
//! checksum loop as a span of its own inside, continues the trace the assigner started for the
//! partition. `--log-format json` writes JSON log lines with their trace and span ids.

use clap::Parser;
use elk_worker::prometheus_client::metrics::counter::Counter;
use elk_worker::{
    BlockingProcessor, JobName, MemberId, Namespace, NatsConfig, PartitionWork, ProcessError,
    ProcessOutcome, Worker, WorkerEvent,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An ELK Coordinator worker that checksums the IDs of its partitions.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "On SIGTERM or SIGINT the worker hands its partitions back (with their checkpoints) \
                  and leaves within --shutdown-grace; a second signal exits at once. The older \
                  positional form `checksum_worker <url> <namespace> <member-id> <capacity>` is \
                  still accepted."
)]
struct Args {
    /// NATS connection: URL, credentials, TLS (the flags every ELK binary shares).
    #[command(flatten)]
    nats: elk_runtime::NatsArgs,
    /// Older name of --nats-credentials-file.
    #[arg(long = "nats-credentials", env = "ELK_NATS_CREDENTIALS", hide = true)]
    legacy_credentials: Option<PathBuf>,
    /// Namespace (deployment) to join.
    #[arg(long, env = "ELK_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Member id; must be unique among live members [default: <hostname>-<pid>].
    #[arg(long, env = "ELK_MEMBER_ID")]
    member_id: Option<String>,
    /// Partitions processed at once.
    #[arg(long, env = "ELK_CAPACITY", default_value_t = 4)]
    capacity: u32,
    /// Only process these jobs (comma-separated) [default: every job].
    #[arg(long, env = "ELK_JOBS", value_delimiter = ',')]
    jobs: Vec<String>,
    /// Member key TTL, whole seconds (e.g. 3s).
    #[arg(long, env = "ELK_MEMBER_TTL", default_value = "3s", value_parser = parse_duration)]
    member_ttl: Duration,
    /// How long a graceful shutdown may take in total, releases and leave included (e.g. 30s).
    #[arg(long, env = "ELK_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Serve /metrics, /healthz and /readyz on HOST:PORT, e.g. 0.0.0.0:9464 [default: off].
    #[arg(long, env = "ELK_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Simulated CPU work per ID (busy loop), e.g. 20us; 0 for none.
    #[arg(long, env = "ELK_ID_COST", default_value = "0", value_parser = parse_duration)]
    id_cost: Duration,
    /// Log lines as text or json (JSON lines carry trace_id and span_id inside a traced span).
    #[arg(long, env = "ELK_LOG_FORMAT", default_value = "text")]
    log_format: elk_runtime::LogFormat,
    /// `service.name` of the exported spans [default: OTEL_SERVICE_NAME, else elk-worker].
    #[arg(long)]
    service_name: Option<String>,
    /// Older positional form: <url> <namespace> <member-id> <capacity>, each optional.
    #[arg(hide = true, num_args = 0..=4)]
    positional: Vec<String>,
}

impl Args {
    /// Applies the positional form over the flags, for scripts written against the old usage.
    fn with_positional(mut self) -> Result<Self, String> {
        let mut positional = std::mem::take(&mut self.positional).into_iter();
        if let Some(url) = positional.next() {
            self.nats.url = Some(url);
        }
        if self.nats.credentials_file.is_none() {
            self.nats.credentials_file = self.legacy_credentials.take();
        }
        if let Some(namespace) = positional.next() {
            self.namespace = namespace;
        }
        if let Some(id) = positional.next() {
            self.member_id = Some(id);
        }
        if let Some(capacity) = positional.next() {
            self.capacity = capacity
                .parse()
                .map_err(|_| format!("capacity '{capacity}' is not a number"))?;
        }
        Ok(self)
    }
}

/// `30s`, `500ms`, `20us`, `2m`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 30s, 500ms)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use us, ms, s, m, h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("'{text}': {error}"))
}

/// `<hostname>-<pid>`, reduced to the characters a member id allows.
fn default_member_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix = format!("-{}", std::process::id());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64 - suffix.len())
        .collect();
    host + &suffix
}

struct Checksum {
    id_cost: Duration,
    /// The application's own metric, served next to the SDK's.
    ids_folded: Counter,
}

impl BlockingProcessor for Checksum {
    fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        // The user's own span: inside the SDK's `elk.partition.process` span when traced.
        let _checksum = tracing::info_span!("checksum", first = work.resume_from()).entered();
        let mut checksum = 0u64;
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            if !self.id_cost.is_zero() {
                let until = Instant::now() + self.id_cost;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            checksum = checksum.rotate_left(7) ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            work.checkpoint(id);
            self.ids_folded.inc();
        }
        tracing::info!(
            job = %work.job(),
            partition = %work.partition(),
            range = %work.range(),
            checksum = format_args!("{checksum:016x}"),
            "partition done"
        );
        Ok(ProcessOutcome::Completed)
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tracing_config = elk_runtime::TracingConfig {
        service_name: args.service_name.clone(),
        ..elk_runtime::TracingConfig::default()
    };
    let mut options = elk_runtime::TelemetryOptions::new("elk-worker", &tracing_config);
    options.log_format = args.log_format;
    let telemetry = match elk_runtime::telemetry::init(options) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("checksum_worker: {error}");
            std::process::exit(2);
        }
    };
    let code = match run(args).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error}");
            1
        }
    };
    telemetry.shutdown().await;
    // Exit here rather than by returning: dropping the runtime would wait for a processor still
    // spinning on the blocking pool (after a second signal, or a grace that ran out).
    std::process::exit(code);
}

/// Runs the worker until a signal; returns the process exit code.
async fn run(args: Args) -> Result<i32, Box<dyn std::error::Error>> {
    let args = args.with_positional()?;
    let namespace = Namespace::new(&args.namespace)?;
    let id = MemberId::new(args.member_id.clone().unwrap_or_else(default_member_id))?;
    let jobs = args
        .jobs
        .iter()
        .map(JobName::new)
        .collect::<Result<Vec<_>, _>>()?;
    let nats = args
        .nats
        .apply(NatsConfig::new(elk_worker::DEFAULT_NATS_URL, id.as_str()));
    // Processors get most of the grace to return; the rest is for the releases and the leave.
    let reserve = (args.shutdown_grace / 4).min(Duration::from_secs(5));
    let ids_folded = Counter::default();
    let exported = ids_folded.clone();
    let mut builder = Worker::builder(namespace.clone(), id.clone())
        .nats(nats)
        .capacity(args.capacity)
        .jobs(jobs)
        .member_ttl(args.member_ttl)
        .stop_grace(args.shutdown_grace - reserve)
        .register_metrics(move |registry| {
            registry.register(
                "checksum_worker_ids_folded",
                "IDs folded into a checksum by this process",
                exported.clone(),
            );
        });
    if let Some(address) = &args.metrics_listen {
        builder = builder.metrics_listen(address);
    }
    let worker = builder
        .start_blocking(Checksum {
            id_cost: args.id_cost,
            ids_folded,
        })
        .await?;
    if let Some(address) = worker.metrics_address() {
        tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    }
    tracing::info!(
        member = %id,
        %namespace,
        incarnation = %worker.incarnation(),
        capacity = args.capacity,
        "worker joined"
    );
    let mut events = worker.events();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                WorkerEvent::Fenced { incarnation, .. } => {
                    tracing::warn!(%incarnation, "membership lost; re-joining");
                }
                other => tracing::info!(event = ?other, "worker event"),
            }
        }
    });

    termination_signal().await;
    tracing::info!(grace = ?args.shutdown_grace, "signal received: handing partitions back");
    let shutdown = tokio::time::timeout(args.shutdown_grace, worker.shutdown());
    tokio::select! {
        finished = shutdown => match finished {
            Ok(Ok(stats)) => {
                tracing::info!(
                    completed = stats.partitions_completed,
                    released = stats.partitions_released,
                    "left"
                );
                Ok(0)
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => {
                tracing::error!("shutdown exceeded its grace; partitions are reclaimed after the member TTL");
                Ok(1)
            }
        },
        () = termination_signal() => {
            tracing::warn!("second signal: exiting at once");
            Ok(130)
        }
    }
}
