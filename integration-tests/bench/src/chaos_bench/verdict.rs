//! The end of a chaos run: what the workers' own record files say was processed, checked against
//! what the ownership auditor saw and against the faults the run injected.
//!
//! - **Missing**: an ID of a completed job that no record file lists.
//! - **Repeated**: an ID listed more than once (in any files).
//! - **Unexplained repeats**: the auditor derives a *repeat window* for every new hold of a
//!   partition whose previous hold ended without a clean hand-back (member expired, deleted or
//!   replaced, a failure): the IDs from the new hold's `resume_from` to the partition's end. Its
//!   `resume_from` is above every checkpoint acknowledged before (invariant 3, checked by the
//!   auditor), so a window never reaches below the last acknowledged checkpoint. A window counts
//!   here only if a fault of this run explains the lost hold: a kill or cut of that very worker,
//!   or a nats-server restart, while the fault could still end a membership (from the fault to
//!   its end plus one TTL plus a second). An ID processed more often than `1 + counted windows
//!   covering it` is unexplained.

use super::faults::FaultRecord;
use anyhow::{Context, bail};
use elk_testkit::AuditReport;
use elk_testkit::auditor::Hold;
use elk_types::{IdRange, JobName};
use std::collections::BTreeMap;
use std::path::Path;

/// Processing counts of one job, from the record files.
pub(crate) struct JobCounts {
    pub range: IdRange,
    /// `counts[i]`: times ID `range.first() + i` was recorded.
    pub counts: Vec<u32>,
}

/// Reads every `*.rec` file of `dir` into per-job counters. Lines are `<job> <first> <last>`; a
/// line for a job not in `jobs` or outside its range is an error (the record is not trusted).
pub(crate) fn read_records(
    dir: &Path,
    jobs: &[(JobName, IdRange)],
) -> anyhow::Result<BTreeMap<JobName, JobCounts>> {
    let mut counts: BTreeMap<JobName, JobCounts> = jobs
        .iter()
        .map(|(job, range)| {
            let counts = vec![0u32; range.len() as usize];
            (
                job.clone(),
                JobCounts {
                    range: *range,
                    counts,
                },
            )
        })
        .collect();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "rec") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), number + 1);
            let mut fields = line.split_whitespace();
            let (Some(job), Some(first), Some(last), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                bail!("{}: malformed record line '{line}'", at());
            };
            let job = JobName::new(job).with_context(at)?;
            let first: u64 = first.parse().with_context(at)?;
            let last: u64 = last.parse().with_context(at)?;
            let Some(entry) = counts.get_mut(&job) else {
                bail!("{}: record of unknown job {job}", at());
            };
            if first > last || first < entry.range.first() || last > entry.range.last() {
                bail!("{}: {first}-{last} outside {}", at(), entry.range);
            }
            let offset = entry.range.first();
            for count in &mut entry.counts[(first - offset) as usize..=(last - offset) as usize] {
                *count += 1;
            }
        }
    }
    Ok(counts)
}

/// The figures of the final line.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub ids_missing: u64,
    pub ids_repeated: u64,
    /// Processings beyond the first, summed over every ID.
    pub extra_processings: u64,
    pub repeats_unexplained: u64,
    /// Repeat windows the auditor derived / those a fault of this run explains.
    pub repeat_windows: u64,
    pub repeat_windows_explained: u64,
    /// Extra processings inside explained windows, by the kind of the explaining fault.
    pub repeats_by_cause: BTreeMap<String, u64>,
    pub overlaps: u64,
    pub lost_checkpoints: u64,
    /// First unexplained IDs, for the log.
    pub unexplained_sample: Vec<(JobName, u64, u32)>,
}

pub(crate) fn judge(
    counts: &BTreeMap<JobName, JobCounts>,
    report: &AuditReport,
    faults: &[FaultRecord],
) -> Verdict {
    let mut verdict = Verdict {
        overlaps: report.overlaps.len() as u64,
        lost_checkpoints: report.lost_checkpoints.len() as u64,
        ..Verdict::default()
    };
    for (job, job_counts) in counts {
        let first_id = job_counts.range.first();
        let mut allowed = vec![1u32; job_counts.counts.len()];
        let mut cause_of = vec![None::<&str>; job_counts.counts.len()];
        for window in report.repeat_windows(job) {
            verdict.repeat_windows += 1;
            let holds = report.holds_of(job, window.partition);
            let Some(position) = holds.iter().position(|hold| hold.token == window.token) else {
                continue;
            };
            if position == 0 {
                continue;
            }
            let Some(cause) = explaining_fault(holds[position - 1], holds[position], faults) else {
                eprintln!(
                    "unexplained repeat window: job {job} partition {} ids {}-{} after {:?}",
                    window.partition, window.first_id, window.last_id, window.after
                );
                continue;
            };
            verdict.repeat_windows_explained += 1;
            let from = window.first_id.saturating_sub(first_id) as usize;
            let to = (window.last_id.saturating_sub(first_id) as usize).min(allowed.len() - 1);
            for index in from..=to {
                allowed[index] += 1;
                cause_of[index].get_or_insert(cause);
            }
        }
        for (index, (&count, &allowed)) in job_counts.counts.iter().zip(&allowed).enumerate() {
            match count {
                0 => verdict.ids_missing += 1,
                1 => {}
                _ => {
                    verdict.ids_repeated += 1;
                    verdict.extra_processings += u64::from(count - 1);
                    if count > allowed {
                        verdict.repeats_unexplained += 1;
                        if verdict.unexplained_sample.len() < 10 {
                            let id = first_id + index as u64;
                            verdict.unexplained_sample.push((job.clone(), id, count));
                        }
                    }
                    if let Some(cause) = cause_of[index] {
                        *verdict
                            .repeats_by_cause
                            .entry(cause.to_owned())
                            .or_default() += u64::from(count.min(allowed) - 1);
                    }
                }
            }
        }
    }
    verdict
}

/// The fault that explains why `previous` ended without a hand-back before `next` started: the
/// latest kill or cut of its worker whose effect overlaps the previous hold, else a nats-server
/// restart that does.
fn explaining_fault<'a>(
    previous: &Hold,
    next: &Hold,
    faults: &'a [FaultRecord],
) -> Option<&'a str> {
    let worker = previous.holder.worker.as_str();
    let overlapping =
        |fault: &&FaultRecord| fault.at <= next.from && fault.effect_until >= previous.from;
    let own = faults
        .iter()
        .filter(overlapping)
        .filter(|fault| {
            matches!(fault.kind.as_str(), "worker_kill" | "network_cut_worker")
                && fault.target.as_deref() == Some(worker)
        })
        .max_by_key(|fault| fault.at);
    own.or_else(|| {
        faults
            .iter()
            .filter(overlapping)
            .find(|fault| fault.kind == "nats_restart")
    })
    .map(|fault| fault.kind.as_str())
}
