//! `compaction`: one job of 100,000 one-ID partitions (`--compaction-partitions`), a no-op
//! processor on 16 workers of capacity 4, run to completion. Then the live keys of the partitions
//! bucket are counted (`keys()`, which skips delete and purge markers) every 250 ms until the count
//! is 0 or has not changed for 5 s (at most 60 s): `kv_partition_keys_after`. Also reported: the
//! peak of live partition keys during the run (`partitions_total − partitions_compacted` of the
//! job record, read every 100 ms), the keys left at the moment the job completed, and how long
//! compaction took to settle after that.

use super::monitor::{job_seconds, run_job};
use super::{CAPACITY, Services, Settings, print_line, round};
use anyhow::Context;
use elk_integration_tests::Stack;
use futures::StreamExt;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    partitions: u64,
    kv_partition_keys_after: u64,
    seconds: f64,
    peak_live_partition_keys: u64,
    keys_at_completion: u64,
    settle_s: f64,
    partitions_compacted: u64,
    completions_per_s: f64,
    workers: usize,
    capacity: u32,
    quick: bool,
}

pub(crate) async fn run(
    settings: &Settings,
    assigner_runtime: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let stack = Stack::new().await?.with_member_ttl(super::MEMBER_TTL);
    let workers = settings.compaction_workers;
    let partitions = settings.compaction_partitions;
    let services = Services::start(&stack, assigner_runtime, workers).await?;
    eprintln!("compaction: {partitions} partitions, {workers} workers");
    let outcome = async {
        let run = run_job(&stack, &services.metrics, partitions).await?;
        let completed_at = Instant::now();
        let keys_at_completion = count_keys(&stack).await?;
        let (keys_after, settled_at) = settle(&stack, keys_at_completion).await?;
        Ok::<_, anyhow::Error>((
            run,
            keys_at_completion,
            keys_after,
            settled_at - completed_at,
        ))
    }
    .await;
    services.stop().await;
    let (run, keys_at_completion, keys_after, settle) = outcome?;
    let seconds = job_seconds(&run.job).unwrap_or_else(|| run.started.elapsed().as_secs_f64());
    let peak = run.samples.iter().map(|s| s.live_keys).max().unwrap_or(0);
    let line = Line {
        bench: "compaction",
        partitions,
        kv_partition_keys_after: keys_after,
        seconds: round(seconds, 2),
        peak_live_partition_keys: peak,
        keys_at_completion,
        settle_s: round(settle.as_secs_f64(), 2),
        partitions_compacted: run.job.partitions_compacted,
        completions_per_s: round(partitions as f64 / seconds.max(1e-9), 1),
        workers,
        capacity: CAPACITY,
        quick: settings.quick,
    };
    eprintln!(
        "  completed in {:.1} s; {} keys at completion, {} after {:.1} s; peak {}",
        line.seconds, keys_at_completion, keys_after, line.settle_s, peak
    );
    print_line(&line)
}

/// Live keys of the partitions bucket.
async fn count_keys(stack: &Stack) -> anyhow::Result<u64> {
    let keys = stack
        .resources
        .partitions
        .keys()
        .await
        .context("list partition keys")?;
    Ok(keys
        .filter(|key| std::future::ready(key.is_ok()))
        .count()
        .await as u64)
}

/// Polls the key count until it is 0 or unchanged for 5 s (at most 60 s); returns the last count
/// and when it was first seen.
async fn settle(stack: &Stack, mut count: u64) -> anyhow::Result<(u64, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut since = Instant::now();
    while count > 0 && since.elapsed() < Duration::from_secs(5) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = count_keys(stack).await?;
        if now != count {
            count = now;
            since = Instant::now();
        }
    }
    Ok((count, since))
}
