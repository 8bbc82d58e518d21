//! `throughput`: `partitions` one-ID partitions with a no-op processor, at each worker count
//! (capacity 4 each), each on a fresh nats-server. Completions per second are measured between
//! the samples where 10 % and 90 % of the partitions were completed (the job record is read every
//! 100 ms), so start-up and the tail are left out. Over the same window the line reports where
//! the time goes:
//!
//! - `kv_writes_per_completion`: the assigner's KV writes (CAS puts and compaction purges) per
//!   completed partition;
//! - `rounds_per_s`, `completions_per_round`, `round_ms_p50`: leader rounds that completed
//!   something (each writes the job record once; the bench watches that key);
//! - `cpu_*_cores`: CPU used by nats-server, the assigner's runtime, the rest of this process
//!   (workers, election, sampler) and the whole machine, in cores (this machine has 2);
//! - `probe_write_ms_p50`/`_p99`: latency of a single KV put issued every 100 ms meanwhile.

use super::monitor::{JobRun, Sample, job_seconds, run_job};
use super::{CAPACITY, Services, Settings, print_line, round};
use elk_integration_tests::Stack;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    workers: usize,
    partitions: u64,
    completions_per_s: f64,
    runs: usize,
    completions_per_s_min: f64,
    completions_per_s_max: f64,
    capacity: u32,
    window_s: f64,
    seconds: f64,
    kv_writes_per_completion: f64,
    reports_per_completion: f64,
    rounds_per_s: f64,
    completions_per_round: f64,
    round_ms_p50: f64,
    round_ms_p90: f64,
    cpu_nats_server_cores: f64,
    cpu_assigner_cores: f64,
    cpu_workers_cores: f64,
    cpu_machine_cores: f64,
    nats_server_cpu_us_per_completion: f64,
    assigner_cpu_us_per_completion: f64,
    assigner_cpu_ms_per_round: f64,
    probe_write_ms_p50: f64,
    probe_write_ms_p99: f64,
    quick: bool,
}

pub(crate) async fn run(
    settings: &Settings,
    assigner_runtime: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    for &workers in &settings.throughput_workers {
        let partitions = settings.throughput_partitions;
        let mut lines = Vec::with_capacity(settings.runs);
        for run_number in 1..=settings.runs {
            let stack = Stack::new().await?.with_member_ttl(super::MEMBER_TTL);
            let services = Services::start(&stack, assigner_runtime, workers).await?;
            eprintln!("throughput: {workers} workers, {partitions} partitions, run {run_number}");
            let outcome = run_job(&stack, &services.metrics, partitions).await;
            services.stop().await;
            let line = summarize(&outcome?, workers, partitions, settings.quick)?;
            eprintln!(
                "  {:.0} completions/s, {:.2} KV writes per completion, {:.1} completions per round, round p50 {:.2} ms",
                line.completions_per_s,
                line.kv_writes_per_completion,
                line.completions_per_round,
                line.round_ms_p50
            );
            lines.push(line);
        }
        lines.sort_by(|a, b| a.completions_per_s.total_cmp(&b.completions_per_s));
        let (min, max) = (
            lines[0].completions_per_s,
            lines[lines.len() - 1].completions_per_s,
        );
        let runs = lines.len();
        let mut median = lines.swap_remove(runs / 2);
        median.runs = runs;
        median.completions_per_s_min = min;
        median.completions_per_s_max = max;
        print_line(&median)?;
    }
    Ok(())
}

/// The first sample with at least `fraction` of the partitions completed.
fn first_at(samples: &[Sample], partitions: u64, fraction: f64) -> Option<usize> {
    let threshold = (partitions as f64 * fraction).ceil() as u64;
    samples.iter().position(|s| s.completed >= threshold)
}

fn summarize(run: &JobRun, workers: usize, partitions: u64, quick: bool) -> anyhow::Result<Line> {
    let samples = &run.samples;
    let (Some(low), Some(high)) = (
        first_at(samples, partitions, 0.10),
        first_at(samples, partitions, 0.90),
    ) else {
        anyhow::bail!("the job never reached 90 %");
    };
    let (low, high) = if high > low {
        (low, high)
    } else {
        // A run shorter than two samples between 10 % and 90 %: use the whole run.
        (0, samples.len() - 1)
    };
    let (a, b) = (&samples[low], &samples[high]);
    let window = (b.cpu.at - a.cpu.at).as_secs_f64().max(1e-9);
    let completed = b.completed.saturating_sub(a.completed).max(1) as f64;
    let cpu = b.cpu.since(&a.cpu);
    let rate = completed / window;

    let rounds: Vec<&(Instant, u64)> = run
        .rounds
        .iter()
        .filter(|(at, _)| *at >= a.cpu.at && *at <= b.cpu.at)
        .collect();
    let mut intervals: Vec<Duration> = rounds.windows(2).map(|w| w[1].0 - w[0].0).collect();
    intervals.sort();
    let round_completions: u64 = rounds
        .windows(2)
        .map(|w| w[1].1.saturating_sub(w[0].1))
        .sum();
    let mut probes = run.probes.clone();
    probes.sort();
    let millis = |d: Option<&Duration>| round(d.map_or(0.0, |d| d.as_secs_f64() * 1_000.0), 2);
    Ok(Line {
        bench: "throughput",
        workers,
        partitions,
        completions_per_s: round(rate, 1),
        runs: 1,
        completions_per_s_min: round(rate, 1),
        completions_per_s_max: round(rate, 1),
        capacity: CAPACITY,
        window_s: round(window, 2),
        seconds: round(
            job_seconds(&run.job).unwrap_or_else(|| run.started.elapsed().as_secs_f64()),
            2,
        ),
        kv_writes_per_completion: round(
            b.kv_writes.saturating_sub(a.kv_writes) as f64 / completed,
            2,
        ),
        reports_per_completion: round(
            b.progress_applied.saturating_sub(a.progress_applied) as f64 / completed,
            2,
        ),
        rounds_per_s: round(rounds.len() as f64 / window, 1),
        completions_per_round: round(
            round_completions as f64 / (rounds.len().saturating_sub(1).max(1)) as f64,
            1,
        ),
        round_ms_p50: millis(percentile(&intervals, 50.0)),
        round_ms_p90: millis(percentile(&intervals, 90.0)),
        cpu_nats_server_cores: round(cpu.nats_server, 2),
        cpu_assigner_cores: round(cpu.assigner, 2),
        cpu_workers_cores: round(cpu.workers, 2),
        cpu_machine_cores: round(cpu.machine, 2),
        nats_server_cpu_us_per_completion: round(cpu.nats_server / rate * 1e6, 1),
        assigner_cpu_us_per_completion: round(cpu.assigner / rate * 1e6, 1),
        assigner_cpu_ms_per_round: round(
            cpu.assigner / (rounds.len() as f64 / window).max(1e-9) * 1e3,
            3,
        ),
        probe_write_ms_p50: millis(percentile(&probes, 50.0)),
        probe_write_ms_p99: millis(percentile(&probes, 99.0)),
        quick,
    })
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Option<&Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1)
}
