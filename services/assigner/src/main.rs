//! `elk-assigner` binary: loads the layered config and runs one replica until SIGINT/SIGTERM.

use clap::Parser;
use elk_assigner::AssignerConfig;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Parser, Serialize)]
#[command(
    name = "elk-assigner",
    about = "ELK Coordinator partition authority",
    version
)]
struct Flags {
    /// TOML config file (defaults → file → ELK_* env → flags).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    member_id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config: AssignerConfig = elk_runtime::load_config(flags.config.as_deref(), &flags)?;
    if flags.print_config {
        println!("{}", toml_like(&config));
        return Ok(());
    }
    elk_runtime::init_logging();
    elk_assigner::run(config, elk_runtime::shutdown_signal()).await?;
    Ok(())
}

fn toml_like(config: &AssignerConfig) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|error| format!("# cannot render: {error}"))
}
