//! `elkctl` — the operator CLI of ELK Coordinator, and the local all-in-one runner (`demo`).
//!
//! Every admin command goes to the assigner leader over NATS request/reply
//! (`elk.<ns>.admin.assigner.<verb>`; `transfer` to the active election replica,
//! `elk.<ns>.admin.election.transfer`; see `docs/admin-api.md`); arguments are checked before any
//! network call, output is an aligned table (or `--json`). A failure prints its message, code
//! and a hint, and exits with a status per kind of failure (see `failure`).
//!
//! Each command is one span (`elkctl <command>`, the root of its trace) when traces are exported
//! (the standard `OTEL_EXPORTER_OTLP_*` variables, `service.name` `elkctl`): an admin command's
//! request carries its context, so the assigner's handling is part of the same trace. Logs go to
//! stderr only when `RUST_LOG` asks for them.

mod admin;
mod auth;
mod connect;
mod demo;
mod failure;
mod levers;
mod render;
mod stack;
mod status;
mod watch;

use clap::{Parser, Subcommand};
use tracing::Instrument;

#[derive(Debug, Parser)]
#[command(
    name = "elkctl",
    about = "Operate an ELK Coordinator namespace",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines (on stderr, when RUST_LOG enables them) as text or json.
    #[arg(long, global = true, env = "ELK_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<elk_runtime::LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack locally on a real nats-server and process one job end to end.
    Demo(demo::DemoArgs),
    /// Show members, role leaders with epochs, and jobs with progress.
    Status(status::StatusArgs),
    /// Create, list, inspect, pause, resume and cancel jobs.
    #[command(subcommand)]
    Job(admin::JobCommand),
    /// List live partitions, filtered by job and status, a page at a time.
    Partitions(admin::PartitionsArgs),
    /// Re-queue failed partitions: every one, one job's (--job) or one (--job --partition).
    Retry(admin::RetryArgs),
    /// Where one ID of a job stands: in which partition, completed, or not planned yet.
    IdStatus(admin::IdStatusArgs),
    /// The assigner leader's counters.
    Stats(admin::StatsArgs),
    /// Live progress bars per job until every watched job is over (or Ctrl-C).
    Watch(watch::WatchArgs),
    /// NATS authorization: deployment keys, server configuration, credentials per identity.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Create or update every bucket, the progress stream and its consumer (admin identity).
    Provision(auth::ProvisionArgs),
    /// Every live member: role, capacity, load, drain state (and whether placement is frozen).
    Members(levers::MembersArgs),
    /// Stop granting to a worker and take its partitions back (released with checkpoints).
    Drain(levers::WorkerArgs),
    /// Let a drained worker take partitions again.
    Undrain(levers::WorkerArgs),
    /// Freeze placement: no rebalancing moves (new and reclaimed partitions are still granted).
    Freeze(levers::FreezeArgs),
    /// Resume rebalancing.
    Unfreeze(levers::UnfreezeArgs),
    /// Hand a role's leadership (assigner, scaler) to another live member now.
    Transfer(levers::TransferArgs),
}

impl Command {
    /// Whether the command was asked for JSON output (failures are then JSON too).
    fn json(&self) -> bool {
        match self {
            Command::Job(command) => command.connect().json,
            Command::Partitions(args) => args.connect.json,
            Command::Retry(args) => args.connect.json,
            Command::IdStatus(args) => args.connect.json,
            Command::Stats(args) => args.connect.json,
            Command::Watch(args) => args.connect.json,
            Command::Members(args) => args.connect.json,
            Command::Drain(args) | Command::Undrain(args) => args.connect.json,
            Command::Freeze(args) => args.connect.json,
            Command::Unfreeze(args) => args.connect.json,
            Command::Transfer(args) => args.connect.json,
            Command::Demo(_) | Command::Status(_) | Command::Auth(_) | Command::Provision(_) => {
                false
            }
        }
    }

    /// The command's name, as its span is called.
    fn name(&self) -> &'static str {
        match self {
            Command::Demo(_) => "elkctl demo",
            Command::Status(_) => "elkctl status",
            Command::Job(command) => command.name(),
            Command::Partitions(_) => "elkctl partitions",
            Command::Retry(_) => "elkctl retry",
            Command::IdStatus(_) => "elkctl id-status",
            Command::Stats(_) => "elkctl stats",
            Command::Watch(_) => "elkctl watch",
            Command::Auth(_) => "elkctl auth",
            Command::Provision(_) => "elkctl provision",
            Command::Members(_) => "elkctl members",
            Command::Drain(_) => "elkctl drain",
            Command::Undrain(_) => "elkctl undrain",
            Command::Freeze(_) => "elkctl freeze",
            Command::Unfreeze(_) => "elkctl unfreeze",
            Command::Transfer(_) => "elkctl transfer",
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.command.json();
    let tracing_config = elk_runtime::TracingConfig::default();
    let mut options = elk_runtime::TelemetryOptions::new("elkctl", &tracing_config);
    options.log_format = cli.log_format.unwrap_or_default();
    options.default_log_filter = "off";
    let telemetry = match elk_runtime::telemetry::init(options) {
        Ok(telemetry) => telemetry,
        Err(error) => return failure::Failure::of(&error.into()).report(json),
    };
    let span = tracing::info_span!(
        "elkctl",
        otel.name = cli.command.name(),
        otel.status_code = tracing::field::Empty,
    );
    let command = async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Job(command) => admin::run_job(command).await,
            Command::Partitions(args) => admin::run_partitions(args).await,
            Command::Retry(args) => admin::run_retry(args).await,
            Command::IdStatus(args) => admin::run_id_status(args).await,
            Command::Stats(args) => admin::run_stats(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Auth(command) => auth::run(command),
            Command::Provision(args) => auth::provision(args).await,
            Command::Members(args) => levers::run_members(args).await,
            Command::Drain(args) => levers::run_drain(args, true).await,
            Command::Undrain(args) => levers::run_drain(args, false).await,
            Command::Freeze(args) => {
                let command = elk_protocol::admin::AdminCommand::Freeze {
                    reason: args.reason.clone(),
                };
                levers::run_freeze(&args.connect, command).await
            }
            Command::Unfreeze(args) => {
                let command = elk_protocol::admin::AdminCommand::Unfreeze;
                levers::run_freeze(&args.connect, command).await
            }
            Command::Transfer(args) => levers::run_transfer(args).await,
        }
    };
    let outcome = command.instrument(span.clone()).await;
    if outcome.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    drop(span);
    telemetry.shutdown().await;
    match outcome {
        Ok(code) => code,
        Err(error) => failure::Failure::of(&error).report(json),
    }
}
