//! `elk-bench`: the project's benchmark scenarios. Every scenario prints one JSON object per line
//! on stdout (progress goes to stderr), so results can be piped to `jq` or diffed across runs.
//!
//! One module per benchmark family; `main` only parses the command line and dispatches.

mod autoscale_bench;
mod chaos_bench;
mod failover_bench;
mod follow;
mod kv_reads;
mod lifecycle_bench;
mod measure;
mod memory_bench;
mod overhead_bench;
mod placement_bench;
mod procs;
mod rollout_bench;
mod scale_bench;
mod tails_bench;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "elk-bench",
    about = "ELK Coordinator benchmarks (one JSON object per line)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Assignment (`elk-placement::solve`) and gap detection (`elk-coverage`) against the
    /// predecessor's naive algorithms, in one process.
    Placement(placement_bench::PlacementArgs),
    /// Recovery latencies on a real nats-server with the services in-process: worker kill and
    /// cut, assigner kill (10k/100k partitions), graceful hand-off, join → first grant.
    Failover(failover_bench::FailoverArgs),
    /// Job lifecycle on a real nats-server: compaction of a 100,000-partition job, completions
    /// per second of no-op partitions at several worker counts, and the KV write ceiling.
    Lifecycle(lifecycle_bench::LifecycleArgs),
    /// The real binaries as separate processes (2 replicas of every service, 5 recording
    /// workers) under random kills, nats-server restarts and network cuts; checks every ID.
    Chaos(chaos_bench::ChaosArgs),
    /// 500 and 1,000 live workers (each with its own connection) and a 100,000-partition job:
    /// cold start, a 10 % join and a 10 % kill under load, completion, assigner RSS per partition.
    Scale(scale_bench::ScaleArgs),
    /// RSS of separate processes: an idle worker, the assigner and workers across 1,000,000
    /// processed partitions, and both assigner replicas across 1,000 leader switches.
    Memory(memory_bench::MemoryArgs),
    /// Makespan of a job of 1 s partitions against the ideal `total work ÷ capacity`.
    Overhead(overhead_bench::OverheadArgs),
    /// A bursty backlog trace run by a fleet following the scaler and by a fixed fleet at the
    /// maximum: completion and worker-seconds ratios, replica changes.
    Autoscale(autoscale_bench::AutoscaleArgs),
    /// Restart every worker of a running fleet one by one (as `kubectl rollout restart`): IDs
    /// repeated and missing, throughput dip.
    Rollout(rollout_bench::RolloutArgs),
    /// A job with skewed per-ID cost (a few dense ranges at 50×) on a fixed fleet, straggler
    /// splitting and adaptive partition size on and off: makespan ÷ ideal for each.
    Tails(tails_bench::TailsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Placement(arguments) => placement_bench::run(&arguments),
        Command::Failover(arguments) => failover_bench::run(&arguments),
        Command::Lifecycle(arguments) => lifecycle_bench::run(&arguments),
        Command::Chaos(arguments) => chaos_bench::run(&arguments),
        Command::Scale(arguments) => scale_bench::run(&arguments),
        Command::Memory(arguments) => memory_bench::run(&arguments),
        Command::Overhead(arguments) => overhead_bench::run(&arguments),
        Command::Autoscale(arguments) => autoscale_bench::run(&arguments),
        Command::Rollout(arguments) => rollout_bench::run(&arguments),
        Command::Tails(arguments) => tails_bench::run(&arguments),
    }
}

/// Logs of the benchmark process itself go to stderr, errors only unless `RUST_LOG` says more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,async_nats=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
