//! `throughput` with tracing off and at given sampling ratios, side by side
//! (`--trace-sampling off --trace-sampling 0.01 --trace-sampling 1`): what exporting traces
//! costs the coordinator (issue 11, item 7).
//!
//! Each run of each variant is a child process of this benchmark (`elk-bench lifecycle
//! --scenario throughput --runs 1 ...`), so each sets up its telemetry once, from the standard
//! environment, exactly as a service does: `off` gets no `OTEL_*` variable (no exporter, no
//! layer); a ratio gets `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a real OTLP receiver in this
//! process (`elk-otlp-receiver`, decoding every request), `OTEL_TRACES_SAMPLER=
//! parentbased_traceidratio` with the ratio as its argument, and a batch queue large enough that
//! 100 % sampling drops nothing (`OTEL_BSP_MAX_QUEUE_SIZE=65536`). The variants of one run are
//! interleaved, their order rotating from run to run, so drifts of a shared machine hit every
//! variant alike; each variant's line is its median run, and the overhead is reported both
//! between the medians and as the median of the per-run (paired) overheads. Because other
//! tenants of a shared machine change the throughput far more than tracing does, the CPU the
//! benchmark's own processes spend per completion (nats-server + assigner + workers, from
//! `/proc`) is compared as well: it measures what tracing costs even when the machine is busy.

use super::{Settings, print_line, round};
use anyhow::Context;
use elk_otlp_receiver::OtlpReceiver;
use serde::Serialize;
use serde_json::Value;
use std::process::Stdio;

/// One variant: tracing off, or a parent-based sampling ratio.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Variant {
    Off,
    Ratio(f64),
}

impl Variant {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(Variant::Off);
        }
        match text.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(Variant::Ratio(ratio)),
            _ => Err(format!("'{text}': use off or a ratio between 0 and 1")),
        }
    }

    fn label(&self) -> String {
        match self {
            Variant::Off => "off".to_owned(),
            Variant::Ratio(ratio) => ratio.to_string(),
        }
    }
}

/// What one child run reported.
struct RunResult {
    line: Value,
    completions_per_s: f64,
    /// CPU of nats-server, the assigner and the workers per completion, in µs.
    cpu_us_per_completion: f64,
    completed: f64,
    spans: u64,
}

#[derive(Debug, Serialize)]
struct VariantSummary {
    trace_sampling: String,
    completions_per_s: f64,
    completions_per_s_min: f64,
    completions_per_s_max: f64,
    spans_per_completion: f64,
    overhead_pct: f64,
    overhead_pct_paired: f64,
    cpu_us_per_completion: f64,
    cpu_overhead_pct: f64,
    cpu_overhead_pct_paired: f64,
    machine_cores: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    bench: &'static str,
    workers: usize,
    partitions: u64,
    runs: usize,
    protocol: String,
    variants: Vec<VariantSummary>,
    quick: bool,
}

/// Runs every variant `settings.runs` times per worker count, interleaved; prints one
/// `throughput` line per variant (the median run, with `trace_sampling`, `spans_per_completion`
/// and `overhead_pct`) and one `trace_overhead` summary line.
pub(crate) async fn run(
    settings: &Settings,
    variants: &[Variant],
    protocol: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        variants.contains(&Variant::Off),
        "--trace-sampling needs an `off` variant to compare with"
    );
    let receiver = OtlpReceiver::counting().await.context("OTLP receiver")?;
    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        "http/protobuf" => receiver.http_endpoint(),
        other => anyhow::bail!("--trace-protocol {other}: use grpc or http/protobuf"),
    };
    for &workers in &settings.throughput_workers {
        let mut results: Vec<Vec<RunResult>> = variants.iter().map(|_| Vec::new()).collect();
        for run_number in 0..settings.runs {
            for offset in 0..variants.len() {
                let index = (run_number + offset) % variants.len();
                let variant = &variants[index];
                eprintln!(
                    "trace overhead: {workers} workers, run {}, tracing {}",
                    run_number + 1,
                    variant.label()
                );
                let before = receiver.span_count();
                let mut result = run_child(settings, workers, variant, &endpoint, protocol).await?;
                result.spans = receiver.span_count() - before;
                results[index].push(result);
            }
        }
        report(settings, workers, variants, protocol, results)?;
    }
    receiver.stop().await;
    Ok(())
}

/// One `throughput` run in a child process with `variant`'s telemetry environment.
async fn run_child(
    settings: &Settings,
    workers: usize,
    variant: &Variant,
    endpoint: &str,
    protocol: &str,
) -> anyhow::Result<RunResult> {
    let program = std::env::current_exe().context("this benchmark's path")?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(["lifecycle", "--scenario", "throughput", "--runs", "1"])
        .args(["--write-path", "lean"])
        .args(["--workers", &workers.to_string()])
        .args(["--partitions", &settings.throughput_partitions.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if settings.quick {
        command.arg("--quick");
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    if let Variant::Ratio(ratio) = variant {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", ratio.to_string())
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "65536");
    }
    let output = command.output().await.context("run the child benchmark")?;
    anyhow::ensure!(
        output.status.success(),
        "child run failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: Value = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["bench"] == "throughput")
        .context("the child printed no throughput line")?;
    let number = |key: &str| line[key].as_f64().unwrap_or(0.0);
    let rate = number("completions_per_s");
    let cores = number("cpu_nats_server_cores")
        + number("cpu_assigner_cores")
        + number("cpu_workers_cores");
    Ok(RunResult {
        completions_per_s: rate,
        cpu_us_per_completion: cores / rate.max(1e-9) * 1e6,
        completed: number("partitions"),
        spans: 0,
        line,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn report(
    settings: &Settings,
    workers: usize,
    variants: &[Variant],
    protocol: &str,
    results: Vec<Vec<RunResult>>,
) -> anyhow::Result<()> {
    let off_index = variants
        .iter()
        .position(|variant| *variant == Variant::Off)
        .expect("checked");
    let off_rates: Vec<f64> = results[off_index]
        .iter()
        .map(|run| run.completions_per_s)
        .collect();
    let off_median = median(off_rates.clone());
    let off_cpu: Vec<f64> = results[off_index]
        .iter()
        .map(|run| run.cpu_us_per_completion)
        .collect();
    let off_cpu_median = median(off_cpu.clone());
    let overhead = |rate: f64, base: f64| round((base - rate) / base.max(1e-9) * 100.0, 2);
    let extra = |cost: f64, base: f64| round((cost - base) / base.max(1e-9) * 100.0, 2);
    let mut summaries = Vec::new();
    for (variant, runs) in variants.iter().zip(results) {
        let rates: Vec<f64> = runs.iter().map(|run| run.completions_per_s).collect();
        let paired: Vec<f64> = rates
            .iter()
            .zip(&off_rates)
            .map(|(rate, base)| overhead(*rate, *base))
            .collect();
        let cpu: Vec<f64> = runs.iter().map(|run| run.cpu_us_per_completion).collect();
        let cpu_paired: Vec<f64> = cpu
            .iter()
            .zip(&off_cpu)
            .map(|(cost, base)| extra(*cost, *base))
            .collect();
        let machine: Vec<f64> = runs
            .iter()
            .map(|run| run.line["cpu_machine_cores"].as_f64().unwrap_or(0.0))
            .collect();
        let spans: u64 = runs.iter().map(|run| run.spans).sum();
        let completed: f64 = runs.iter().map(|run| run.completed).sum();
        let median_rate = median(rates.clone());
        let summary = VariantSummary {
            trace_sampling: variant.label(),
            completions_per_s: round(median_rate, 1),
            completions_per_s_min: round(rates.iter().copied().fold(f64::MAX, f64::min), 1),
            completions_per_s_max: round(rates.iter().copied().fold(0.0, f64::max), 1),
            spans_per_completion: round(spans as f64 / completed.max(1.0), 2),
            overhead_pct: overhead(median_rate, off_median),
            overhead_pct_paired: round(median(paired), 2),
            cpu_us_per_completion: round(median(cpu.clone()), 1),
            cpu_overhead_pct: extra(median(cpu), off_cpu_median),
            cpu_overhead_pct_paired: round(median(cpu_paired), 2),
            machine_cores: round(median(machine), 2),
        };
        // The variant's median run, as `throughput` prints it, labelled.
        let mut runs = runs;
        runs.sort_by(|a, b| a.completions_per_s.total_cmp(&b.completions_per_s));
        let count = runs.len();
        let mut line = runs.swap_remove(count / 2).line;
        line["runs"] = count.into();
        line["completions_per_s_min"] = summary.completions_per_s_min.into();
        line["completions_per_s_max"] = summary.completions_per_s_max.into();
        line["trace_sampling"] = summary.trace_sampling.clone().into();
        line["spans_per_completion"] = summary.spans_per_completion.into();
        line["overhead_pct"] = summary.overhead_pct.into();
        line["cpu_overhead_pct"] = summary.cpu_overhead_pct.into();
        print_line(&line)?;
        summaries.push(summary);
    }
    print_line(&Summary {
        bench: "trace_overhead",
        workers,
        partitions: settings.throughput_partitions,
        runs: settings.runs,
        protocol: protocol.to_owned(),
        variants: summaries,
        quick: settings.quick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse() {
        assert_eq!(Variant::parse("off"), Ok(Variant::Off));
        assert_eq!(Variant::parse("0.01"), Ok(Variant::Ratio(0.01)));
        assert_eq!(Variant::parse("1"), Ok(Variant::Ratio(1.0)));
        assert!(Variant::parse("2").is_err());
        assert!(Variant::parse("sometimes").is_err());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
