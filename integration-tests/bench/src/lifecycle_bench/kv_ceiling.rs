//! `kv_ceiling`: what the nats-server of this machine accepts when nothing else runs, with the
//! assigner's own write path (`elk_nats::cas_write`, 256 in flight like its flush). `writes` keys
//! of the partitions bucket are created (CAS, expected revision 0), then updated (CAS on the
//! revision just returned), then purged with a 60 s marker (compaction's delete); and 500 writes
//! are made one at a time for the round-trip latency of a single write.

use super::{Settings, print_line, round};
use bytes::Bytes;
use elk_integration_tests::Stack;
use elk_types::Revision;
use futures::StreamExt;
use serde::Serialize;
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 256;
const SEQUENTIAL: usize = 500;

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    in_flight: usize,
    writes: usize,
    cas_creates_per_s: f64,
    cas_updates_per_s: f64,
    purges_per_s: f64,
    single_write_ms: f64,
    quick: bool,
}

pub(crate) async fn run(settings: &Settings) -> anyhow::Result<()> {
    let stack = Stack::new().await?;
    let writes = if settings.quick { 2_000 } else { 20_000 };
    let jetstream = &stack.resources.jetstream;
    let store = &stack.resources.partitions;
    // ~60 bytes, the size of a partition record.
    let value = Bytes::from(vec![0x5a; 60]);
    let key = |n: usize| format!("kvbench.{n}");

    let started = Instant::now();
    let created: Vec<anyhow::Result<(usize, Revision)>> = futures::stream::iter(0..writes)
        .map(|n| {
            let value = value.clone();
            async move {
                match elk_nats::cas_write(jetstream, store, &key(n), value, None, None).await? {
                    elk_nats::CasOutcome::Written(revision) => Ok((n, revision)),
                    elk_nats::CasOutcome::Conflict { .. } => anyhow::bail!("conflict on create"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let create_time = started.elapsed();
    let created: Vec<(usize, Revision)> = created.into_iter().collect::<anyhow::Result<_>>()?;

    let started = Instant::now();
    let updated: Vec<anyhow::Result<()>> = futures::stream::iter(created)
        .map(|(n, revision)| {
            let value = value.clone();
            async move {
                match elk_nats::cas_write(jetstream, store, &key(n), value, Some(revision), None)
                    .await?
                {
                    elk_nats::CasOutcome::Written(_) => Ok(()),
                    elk_nats::CasOutcome::Conflict { .. } => anyhow::bail!("conflict on update"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let update_time = started.elapsed();
    updated.into_iter().collect::<anyhow::Result<()>>()?;

    let started = Instant::now();
    let purged: Vec<anyhow::Result<()>> = futures::stream::iter(0..writes)
        .map(|n| async move {
            store
                .purge_with_ttl(key(n), Duration::from_secs(60))
                .await
                .map_err(anyhow::Error::from)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let purge_time = started.elapsed();
    purged.into_iter().collect::<anyhow::Result<()>>()?;

    let started = Instant::now();
    let mut revision = None;
    for _ in 0..SEQUENTIAL {
        match elk_nats::cas_write(
            jetstream,
            store,
            "kvbench.single",
            value.clone(),
            revision,
            None,
        )
        .await?
        {
            elk_nats::CasOutcome::Written(written) => revision = Some(written),
            elk_nats::CasOutcome::Conflict { .. } => anyhow::bail!("conflict on single write"),
        }
    }
    let single = started.elapsed() / SEQUENTIAL as u32;

    let rate = |time: Duration| round(writes as f64 / time.as_secs_f64().max(1e-9), 0);
    let line = Line {
        bench: "kv_ceiling",
        in_flight: IN_FLIGHT,
        writes,
        cas_creates_per_s: rate(create_time),
        cas_updates_per_s: rate(update_time),
        purges_per_s: rate(purge_time),
        single_write_ms: round(single.as_secs_f64() * 1_000.0, 3),
        quick: settings.quick,
    };
    print_line(&line)
}

/// One emulated flush per line: `{"bench":"flush_model","completions_per_round":c,...}`.
#[derive(Debug, Serialize)]
struct FlushLine {
    bench: &'static str,
    completions_per_round: usize,
    rounds: usize,
    partition_writes_ms: f64,
    job_write_ms: f64,
    purges_ms: f64,
    assignment_writes_ms: f64,
    flush_ms: f64,
    flush_us_per_completion: f64,
    quick: bool,
}

/// Emulates the KV side of one leader round that completes `c` partitions, with the assigner's
/// flush order and write path on an otherwise idle nats-server: `2c` partition CAS writes (the
/// completed record of `c` partitions and the grant of `c` new ones), one job record, `c`
/// compaction purges, then 16 assignment records, each phase waiting for the previous one. What
/// the real round spends beyond this is its CPU work and the load of everything else.
pub(crate) async fn run_flush_model(settings: &Settings) -> anyhow::Result<()> {
    let stack = Stack::new().await?;
    let jetstream = &stack.resources.jetstream;
    let store = &stack.resources.partitions;
    let value = Bytes::from(vec![0x5a; 60]);
    let rounds = if settings.quick { 10 } else { 50 };
    for completions in [16usize, 64] {
        let keys: Vec<String> = (0..2 * completions)
            .map(|n| format!("flush.{completions}.p.{n}"))
            .collect();
        let mut revisions: Vec<Option<Revision>> = vec![None; keys.len()];
        let mut job_revision = None;
        let mut assignment_revisions: Vec<Option<Revision>> = vec![None; 16];
        let mut phases = [Duration::ZERO; 4];
        for round_number in 0..=rounds {
            let mut times = [Duration::ZERO; 4];
            let started = Instant::now();
            revisions = cas_phase(jetstream, store, &keys, &revisions, &value).await?;
            times[0] = started.elapsed();
            let started = Instant::now();
            job_revision = cas_phase(
                jetstream,
                &stack.resources.jobs,
                &[format!("flush-job-{completions}")],
                &[job_revision],
                &value,
            )
            .await?[0];
            times[1] = started.elapsed();
            let started = Instant::now();
            let purged: Vec<anyhow::Result<()>> = futures::stream::iter(0..completions)
                .map(|n| async move {
                    store
                        .purge_with_ttl(
                            format!("flush.{completions}.c.{round_number}.{n}"),
                            Duration::from_secs(60),
                        )
                        .await
                        .map_err(anyhow::Error::from)
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            purged.into_iter().collect::<anyhow::Result<()>>()?;
            times[2] = started.elapsed();
            let started = Instant::now();
            let workers: Vec<String> = (0..16)
                .map(|n| format!("flush-{completions}-w{n}"))
                .collect();
            assignment_revisions = cas_phase(
                jetstream,
                &stack.resources.assignments,
                &workers,
                &assignment_revisions,
                &value,
            )
            .await?;
            times[3] = started.elapsed();
            // The first round creates the keys: a warm-up, not counted.
            if round_number > 0 {
                for (total, time) in phases.iter_mut().zip(times) {
                    *total += time;
                }
            }
        }
        let ms = |total: Duration| round(total.as_secs_f64() * 1_000.0 / rounds as f64, 3);
        let flush: Duration = phases.iter().sum();
        print_line(&FlushLine {
            bench: "flush_model",
            completions_per_round: completions,
            rounds,
            partition_writes_ms: ms(phases[0]),
            job_write_ms: ms(phases[1]),
            purges_ms: ms(phases[2]),
            assignment_writes_ms: ms(phases[3]),
            flush_ms: ms(flush),
            flush_us_per_completion: round(
                flush.as_secs_f64() * 1e6 / (rounds * completions) as f64,
                1,
            ),
            quick: settings.quick,
        })?;
    }
    Ok(())
}

/// CAS-writes every key at its known revision, 256 in flight; returns the new revisions.
async fn cas_phase(
    jetstream: &async_nats::jetstream::Context,
    store: &async_nats::jetstream::kv::Store,
    keys: &[String],
    revisions: &[Option<Revision>],
    value: &Bytes,
) -> anyhow::Result<Vec<Option<Revision>>> {
    let written: Vec<anyhow::Result<(usize, Revision)>> =
        futures::stream::iter(keys.iter().zip(revisions).enumerate())
            .map(|(index, (key, revision))| async move {
                match elk_nats::cas_write(jetstream, store, key, value.clone(), *revision, None)
                    .await?
                {
                    elk_nats::CasOutcome::Written(revision) => Ok((index, revision)),
                    elk_nats::CasOutcome::Conflict { .. } => anyhow::bail!("conflict on {key}"),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
    let mut revisions = vec![None; keys.len()];
    for outcome in written {
        let (index, revision) = outcome?;
        revisions[index] = Some(revision);
    }
    Ok(revisions)
}
