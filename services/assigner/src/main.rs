//! `elk-assigner`: runs one assigner replica until SIGINT/SIGTERM (flags and config: `--help`).

fn main() -> std::process::ExitCode {
    // Before the runtime's threads exist: may replace this process with itself under glibc
    // malloc settings that return a round's freed memory (elk_assigner::malloc_tuning).
    elk_assigner::malloc_tuning::reexec_with_malloc_tunables();
    run()
}

#[tokio::main]
async fn run() -> std::process::ExitCode {
    elk_runtime::service_main(
        "elk-assigner",
        "The ELK Coordinator partition authority.",
        elk_assigner::run,
    )
    .await
}
