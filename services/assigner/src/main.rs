//! `elk-assigner`: runs one assigner replica until SIGINT/SIGTERM (flags and config: `--help`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    elk_runtime::service_main(
        "elk-assigner",
        "The ELK Coordinator partition authority.",
        elk_assigner::run,
    )
    .await
}
