//! `elkctl watch`: live progress bars, one per job, from `list_jobs` polled every 250 ms, until
//! Ctrl-C or until every watched job is over (completed or cancelled).
//!
//! Without `--job` it watches every job that is not over yet when it starts, plus every job
//! created while it runs; with no job at all it waits for the first one. With `--json` it prints
//! a job record (one JSON line) whenever a watched job changes, instead of bars.
//!
//! Exit status: 0 when every watched job completed, 1 when one was cancelled, 130 on Ctrl-C.

use crate::connect::ConnectArgs;
use crate::render;
use anyhow::bail;
use elk_nats::Retryable;
use elk_protocol::messages::{JobRecord, JobState};
use elk_types::JobName;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Watch only this job (repeat for several).
    #[arg(long)]
    pub job: Vec<JobName>,
    /// Poll interval in milliseconds.
    #[arg(long, default_value_t = 250, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(50..))]
    pub interval_ms: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Which jobs are watched: the named ones, or every one not over at the start plus new ones.
#[derive(Debug)]
struct Selection {
    named: Option<BTreeSet<JobName>>,
    /// Jobs already over on the first poll (watching everything): not shown.
    over_at_start: Option<BTreeSet<JobName>>,
}

impl Selection {
    fn new(named: &[JobName]) -> Self {
        Self {
            named: (!named.is_empty()).then(|| named.iter().cloned().collect()),
            over_at_start: None,
        }
    }

    /// Takes the first poll into account; errors for a named job that does not exist.
    fn start(&mut self, jobs: &[JobRecord]) -> anyhow::Result<()> {
        match &self.named {
            Some(named) => {
                for name in named {
                    if !jobs.iter().any(|job| &job.name == name) {
                        bail!("unknown job '{name}'");
                    }
                }
            }
            None => {
                self.over_at_start = Some(
                    jobs.iter()
                        .filter(|job| job.is_terminal())
                        .map(|job| job.name.clone())
                        .collect(),
                );
            }
        }
        Ok(())
    }

    fn includes(&self, job: &JobRecord) -> bool {
        match (&self.named, &self.over_at_start) {
            (Some(named), _) => named.contains(&job.name),
            (None, Some(over)) => !over.contains(&job.name),
            (None, None) => !job.is_terminal(),
        }
    }
}

/// Where the watch stands after a poll.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to watch yet (no job exists).
    Waiting,
    Running,
    /// Every watched job is over; `cancelled` when one of them was cancelled.
    Over {
        cancelled: bool,
    },
    /// Only jobs that were already over exist.
    NothingToWatch,
}

fn verdict(watched: &BTreeMap<JobName, JobRecord>, jobs_exist: bool) -> Verdict {
    if watched.is_empty() {
        return if jobs_exist {
            Verdict::NothingToWatch
        } else {
            Verdict::Waiting
        };
    }
    if watched.values().all(JobRecord::is_terminal) {
        let cancelled = watched.values().any(|job| job.state == JobState::Cancelled);
        return Verdict::Over { cancelled };
    }
    Verdict::Running
}

fn bar_message(job: &JobRecord) -> String {
    let mut message = format!(
        "{} · partitions {}/{}",
        render::state_name(job.state),
        job.partitions_completed,
        job.partitions_total
    );
    if job.partitions_failed > 0 {
        message.push_str(&format!(" · {} failed", job.partitions_failed));
    }
    if job.spec.open_ended {
        match job.known_max {
            Some(max) => message.push_str(&format!(" · planner max {max}")),
            None => message.push_str(" · waiting for the planner"),
        }
    }
    message
}

/// The progress bars, one per watched job, in name order of appearance.
struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    bars: BTreeMap<JobName, ProgressBar>,
}

impl Bars {
    fn new(width: usize) -> Self {
        let template = format!(
            "{{prefix:{width}}} [{{bar:40}}] {{percent:>3}}% {{human_pos}}/{{human_len}} ids \
             (eta {{eta}}) {{msg}}"
        );
        Self {
            multi: MultiProgress::new(),
            style: ProgressStyle::with_template(&template)
                .expect("valid template")
                .progress_chars("=> "),
            bars: BTreeMap::new(),
        }
    }

    fn update(&mut self, job: &JobRecord) {
        let bar = self.bars.entry(job.name.clone()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(job.ids_total()));
            bar.set_style(self.style.clone());
            bar.set_prefix(job.name.to_string());
            bar
        });
        if bar.is_finished() {
            return;
        }
        bar.set_length(job.ids_total().max(job.ids_completed));
        bar.set_position(job.ids_completed);
        bar.set_message(bar_message(job));
        match job.state {
            JobState::Completed => bar.finish(),
            JobState::Cancelled => bar.abandon(),
            JobState::Active | JobState::Paused => {}
        }
    }

    fn note(&self, line: &str) {
        if self.multi.println(line).is_err() {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = args.connect.admin().await?;
    let json = args.connect.json;
    let mut selection = Selection::new(&args.job);
    let mut watched: BTreeMap<JobName, JobRecord> = BTreeMap::new();
    let width = args
        .job
        .iter()
        .map(|j| j.as_str().len())
        .max()
        .unwrap_or(20);
    let mut bars = Bars::new(width.clamp(8, 32));
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut first = true;
    let mut waiting_noted = false;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                bars.finish();
                return Ok(ExitCode::from(130));
            }
            _ = ticker.tick() => {}
        }
        let jobs = match client.list_jobs().await {
            Ok(jobs) => {
                if failing {
                    bars.note("assigner answering again");
                    failing = false;
                }
                jobs
            }
            Err(error) if first || !error.is_retryable() => return Err(error.into()),
            Err(error) => {
                // Keep watching through a failover; say so once.
                if !failing {
                    bars.note(&format!("still trying: {}", elk_nats::report(&error)));
                    failing = true;
                }
                continue;
            }
        };
        if first {
            selection.start(&jobs)?;
            first = false;
        }
        let jobs_exist = !jobs.is_empty();
        for job in jobs.into_iter().filter(|job| selection.includes(job)) {
            let changed = watched.get(&job.name) != Some(&job);
            if !changed {
                continue;
            }
            if json {
                println!("{}", serde_json::to_string(&job)?);
            } else {
                bars.update(&job);
            }
            watched.insert(job.name.clone(), job);
        }
        match verdict(&watched, jobs_exist) {
            Verdict::Running => {}
            Verdict::Waiting => {
                if !waiting_noted && !json {
                    bars.note(&format!(
                        "no jobs in namespace '{}' yet; waiting for one (Ctrl-C to stop)",
                        client.names().namespace()
                    ));
                    waiting_noted = true;
                }
            }
            Verdict::NothingToWatch => {
                if !json {
                    eprintln!("every job is already over (`elkctl job list` shows them)");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Verdict::Over { cancelled } => {
                bars.finish();
                if !json {
                    let over: Vec<JobRecord> = watched.into_values().collect();
                    print!("{}", render::jobs_table(&over));
                }
                return Ok(if cancelled {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::messages::JobSpec;
    use elk_types::{Epoch, IdRange};

    fn job(name: &str, state: JobState) -> JobRecord {
        let mut record = JobRecord::new(
            JobName::new(name).unwrap(),
            JobSpec::fixed(IdRange::new(1, 100).unwrap(), 10),
            Epoch(1),
            0,
        );
        record.state = state;
        record
    }

    #[test]
    fn watching_everything_skips_jobs_over_at_start_but_takes_new_ones() {
        let mut selection = Selection::new(&[]);
        let old = job("old", JobState::Completed);
        let running = job("running", JobState::Active);
        selection.start(&[old.clone(), running.clone()]).unwrap();
        assert!(!selection.includes(&old));
        assert!(selection.includes(&running));
        assert!(
            selection.includes(&job("new", JobState::Completed)),
            "created and done between two polls"
        );
    }

    #[test]
    fn named_jobs_must_exist() {
        let mut selection = Selection::new(&[JobName::new("a").unwrap()]);
        let error = selection.start(&[job("b", JobState::Active)]).unwrap_err();
        assert_eq!(error.to_string(), "unknown job 'a'");
        assert!(selection.start(&[job("a", JobState::Completed)]).is_ok());
        assert!(selection.includes(&job("a", JobState::Completed)));
        assert!(!selection.includes(&job("b", JobState::Active)));
    }

    #[test]
    fn verdicts() {
        let mut watched = BTreeMap::new();
        assert_eq!(verdict(&watched, false), Verdict::Waiting);
        assert_eq!(verdict(&watched, true), Verdict::NothingToWatch);
        watched.insert(JobName::new("a").unwrap(), job("a", JobState::Active));
        assert_eq!(verdict(&watched, true), Verdict::Running);
        watched.insert(JobName::new("a").unwrap(), job("a", JobState::Completed));
        assert_eq!(verdict(&watched, true), Verdict::Over { cancelled: false });
        watched.insert(JobName::new("b").unwrap(), job("b", JobState::Cancelled));
        assert_eq!(verdict(&watched, true), Verdict::Over { cancelled: true });
    }

    #[test]
    fn bar_messages_mention_failures_and_the_planner() {
        let mut record = job("a", JobState::Active);
        record.partitions_failed = 2;
        assert!(bar_message(&record).contains("2 failed"));
        let mut open = JobRecord::new(
            JobName::new("e").unwrap(),
            JobSpec::open_ended(1, 10),
            Epoch(1),
            0,
        );
        assert!(bar_message(&open).contains("waiting for the planner"));
        open.known_max = Some(99);
        assert!(bar_message(&open).contains("planner max 99"));
    }
}
