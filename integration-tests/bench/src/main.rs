//! `elk-bench`: the project's benchmark scenarios. Every scenario prints one JSON object per line
//! on stdout (progress goes to stderr), so results can be piped to `jq` or diffed across runs.
//!
//! One module per benchmark family; `main` only parses the command line and dispatches.

mod failover_bench;
mod lifecycle_bench;
mod measure;
mod placement_bench;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Placement(arguments) => placement_bench::run(&arguments),
        Command::Failover(arguments) => failover_bench::run(&arguments),
        Command::Lifecycle(arguments) => lifecycle_bench::run(&arguments),
    }
}
