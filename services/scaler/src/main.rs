//! `elk-scaler`: runs one scaler replica until SIGINT/SIGTERM (flags and config: `--help`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    elk_runtime::service_main(
        "elk-scaler",
        "The ELK Coordinator fleet sizer: publishes the desired worker count while it leads.",
        elk_scaler::run,
    )
    .await
}
