//! `elk-scaler`: runs one scaler replica until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use elk_scaler::ScalerConfig;
use serde::Serialize;
use std::path::PathBuf;

/// The ELK Coordinator fleet sizer: publishes the desired worker count while it leads.
#[derive(Debug, Parser)]
#[command(name = "elk-scaler", version)]
struct Flags {
    /// TOML config file (defaults → file → ELK_* environment → flags).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS server URL.
    #[arg(long)]
    nats_url: Option<String>,
    /// Deployment namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// This replica's member id (unique per replica).
    #[arg(long)]
    member_id: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

/// The flags that override the configuration (only those given).
#[derive(Serialize)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member_id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let overrides = Overrides {
        nats_url: flags.nats_url,
        namespace: flags.namespace,
        member_id: flags.member_id,
    };
    let config: ScalerConfig = elk_runtime::load_config(flags.config.as_deref(), overrides)?;
    if flags.print_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    elk_runtime::init_logging();
    elk_scaler::run(config, elk_runtime::shutdown_signal())
        .await
        .context("elk-scaler failed")
}
