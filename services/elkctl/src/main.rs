//! `elkctl` — the operator CLI of ELK Coordinator, and the local all-in-one runner (`demo`).

mod demo;
mod stack;
mod status;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "elkctl",
    about = "Operate an ELK Coordinator namespace",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack locally on a real nats-server and process one job end to end.
    Demo(demo::DemoArgs),
    /// Show members, role leaders with epochs, and jobs with progress.
    Status(status::StatusArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Status(args) => status::run(args).await,
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
