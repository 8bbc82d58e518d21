//! `throughput`: `partitions` one-ID partitions with a no-op processor, at each worker count
//! (capacity 4 each), each on a fresh nats-server, on each `--write-path` of the assigner (by
//! default `lean` and `baseline`, interleaved run by run; the line is lean's median run and
//! carries baseline's median as `baseline_completions_per_s`, so both come from one invocation).
//! Completions per second are measured between the samples where 10 % and 90 % of the partitions
//! were completed (the job record is read every 100 ms), so start-up and the tail are left out.
//! Over the same window the line reports where the time goes:
//!
//! - `kv_writes_per_completion`: the assigner's KV writes (CAS puts, compaction purges, deletes)
//!   per completed partition, and `kv_writes_breakdown` by kind;
//! - `messages_per_completion`: messages clients published into nats-server (its `varz`
//!   `in_msgs`), and `server_messages_out_per_completion` what it delivered (`out_msgs`);
//! - `rounds_per_s`, `completions_per_round`, `round_ms_p50`: leader rounds that completed
//!   something (each writes the job record once; the bench watches that key);
//! - `cpu_*_cores`: CPU used by nats-server, the assigner's runtime, the rest of this process
//!   (workers, election, sampler) and the whole machine, in cores (this machine has 2);
//! - `probe_write_ms_p50`/`_p99`: latency of a single KV put issued every 100 ms meanwhile.

use super::monitor::{JobRun, Sample, WRITE_KINDS, job_seconds, run_job};
use super::{CAPACITY, Services, Settings, print_line, round, write_path_name};
use elk_assigner::WritePath;
use elk_integration_tests::Stack;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    workers: usize,
    partitions: u64,
    /// The assigner's write path of this line's numbers (`lean` unless asked otherwise).
    write_path: &'static str,
    completions_per_s: f64,
    /// The median of the baseline write path's runs, interleaved with these in the same
    /// invocation (each on a fresh server).
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_completions_per_s: Option<f64>,
    /// `completions_per_s ÷ baseline_completions_per_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup: Option<f64>,
    runs: usize,
    completions_per_s_min: f64,
    completions_per_s_max: f64,
    capacity: u32,
    window_s: f64,
    seconds: f64,
    kv_writes_per_completion: f64,
    /// Of `kv_writes_per_completion`, by kind (partition creates, updates — grants, revokes,
    /// releases —, completed records, compaction purges, job records, assignment records).
    kv_writes_breakdown: BTreeMap<&'static str, f64>,
    /// Messages clients published into nats-server per completion (`varz` `in_msgs`): progress
    /// reports, their acks, KV writes, JetStream API requests, heartbeats — everything.
    messages_per_completion: f64,
    /// Messages nats-server delivered per completion (`varz` `out_msgs`): publish acks,
    /// consumer deliveries, KV watch updates, API replies.
    server_messages_out_per_completion: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_kv_writes_per_completion: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_kv_writes_breakdown: Option<BTreeMap<&'static str, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_messages_per_completion: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_server_messages_out_per_completion: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_nats_server_cpu_us_per_completion: Option<f64>,
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
    let paths = &settings.write_paths;
    for &workers in &settings.throughput_workers {
        let partitions = settings.throughput_partitions;
        let mut lines: Vec<Vec<Line>> = paths.iter().map(|_| Vec::new()).collect();
        for run_number in 0..settings.runs {
            // Interleaved, each run starting with the next path: neither always goes first on a
            // machine whose other tenants come and go.
            for offset in 0..paths.len() {
                let index = (run_number + offset) % paths.len();
                let path = paths[index];
                let stack = Stack::new().await?.with_member_ttl(super::MEMBER_TTL);
                let services =
                    Services::start_with(&stack, assigner_runtime, workers, path).await?;
                eprintln!(
                    "throughput: {workers} workers, {partitions} partitions, run {}, write path {}",
                    run_number + 1,
                    write_path_name(path)
                );
                let outcome = run_job(&stack, &services.metrics, partitions).await;
                services.stop().await;
                let line = summarize(&outcome?, workers, partitions, path, settings.quick)?;
                eprintln!(
                    "  {:.0} completions/s, {:.2} KV writes and {:.2} messages per completion, {:.1} completions per round, round p50 {:.2} ms",
                    line.completions_per_s,
                    line.kv_writes_per_completion,
                    line.messages_per_completion,
                    line.completions_per_round,
                    line.round_ms_p50
                );
                lines[index].push(line);
            }
        }
        let mut medians: Vec<Line> = lines.into_iter().map(median_line).collect();
        let baseline = paths
            .iter()
            .position(|path| *path == WritePath::Baseline)
            .filter(|&index| index > 0)
            .map(|index| medians.swap_remove(index));
        let mut main = medians.swap_remove(0);
        if let Some(baseline) = baseline {
            main.baseline_completions_per_s = Some(baseline.completions_per_s);
            main.speedup = Some(round(
                main.completions_per_s / baseline.completions_per_s.max(1e-9),
                2,
            ));
            main.baseline_kv_writes_per_completion = Some(baseline.kv_writes_per_completion);
            main.baseline_kv_writes_breakdown = Some(baseline.kv_writes_breakdown);
            main.baseline_messages_per_completion = Some(baseline.messages_per_completion);
            main.baseline_server_messages_out_per_completion =
                Some(baseline.server_messages_out_per_completion);
            main.baseline_nats_server_cpu_us_per_completion =
                Some(baseline.nats_server_cpu_us_per_completion);
        }
        print_line(&main)?;
    }
    Ok(())
}

/// The median run of one write path, with the spread of all its runs.
fn median_line(mut lines: Vec<Line>) -> Line {
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
    median
}

/// The first sample with at least `fraction` of the partitions completed.
fn first_at(samples: &[Sample], partitions: u64, fraction: f64) -> Option<usize> {
    let threshold = (partitions as f64 * fraction).ceil() as u64;
    samples.iter().position(|s| s.completed >= threshold)
}

fn summarize(
    run: &JobRun,
    workers: usize,
    partitions: u64,
    write_path: WritePath,
    quick: bool,
) -> anyhow::Result<Line> {
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
    let kv_writes_breakdown = WRITE_KINDS
        .iter()
        .enumerate()
        .map(|(index, kind)| {
            let writes = b.kv_writes_by_kind[index].saturating_sub(a.kv_writes_by_kind[index]);
            (*kind, round(writes as f64 / completed, 3))
        })
        .collect();
    let (messages_in, messages_out) = match (a.server_messages, b.server_messages) {
        (Some((in_a, out_a)), Some((in_b, out_b))) => (
            in_b.saturating_sub(in_a) as f64 / completed,
            out_b.saturating_sub(out_a) as f64 / completed,
        ),
        _ => (0.0, 0.0),
    };
    Ok(Line {
        bench: "throughput",
        workers,
        partitions,
        write_path: write_path_name(write_path),
        completions_per_s: round(rate, 1),
        baseline_completions_per_s: None,
        speedup: None,
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
        kv_writes_breakdown,
        messages_per_completion: round(messages_in, 2),
        server_messages_out_per_completion: round(messages_out, 2),
        baseline_kv_writes_per_completion: None,
        baseline_kv_writes_breakdown: None,
        baseline_messages_per_completion: None,
        baseline_server_messages_out_per_completion: None,
        baseline_nats_server_cpu_us_per_completion: None,
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
