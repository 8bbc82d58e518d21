//! `elk-election`: runs one election replica until SIGINT/SIGTERM (flags and config: `--help`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    elk_runtime::service_main(
        "elk-election",
        "The ELK Coordinator group coordinator: membership view and role leaders.",
        elk_election::run,
    )
    .await
}
