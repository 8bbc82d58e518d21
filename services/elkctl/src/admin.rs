//! The admin commands of elkctl: `job create|list|get|pause|resume|cancel`, `partitions`,
//! `retry`, `id-status` and `stats`. Arguments are checked before any network call; everything
//! then goes through the typed [`elk_nats::AdminClient`] to the assigner leader. A failure is
//! reported by `crate::failure` (message, code, hint, exit status).

use crate::connect::{ConnectArgs, into_job};
use crate::render;
use anyhow::bail;
use elk_protocol::admin::{AdminCommand, AdminResult, MAX_PAGE};
use elk_protocol::messages::{JobSpec, PartitionStatus};
use elk_types::{IdRange, JobName, PartitionId};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Create a job over a fixed ID range (--end) or an open-ended one (--open-ended).
    Create(CreateArgs),
    /// List every job with its progress.
    List(ListArgs),
    /// Show one job in detail.
    Get(JobArgs),
    /// Stop granting the job's partitions and take back the granted ones.
    Pause(JobArgs),
    /// Grant a paused job's partitions again.
    Resume(JobArgs),
    /// End the job for good: nothing more is planned or granted.
    Cancel(JobArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Job name: letters, digits, '_' and '-' (at most 64).
    pub name: JobName,
    /// First ID of the job.
    #[arg(long)]
    pub start: u64,
    /// Last ID of a fixed-range job (inclusive).
    #[arg(long, conflicts_with = "open_ended")]
    pub end: Option<u64>,
    /// The ID space grows: a planner (`elk.<ns>.plan.<job>`) says how far it goes.
    #[arg(long)]
    pub open_ended: bool,
    /// IDs per partition.
    #[arg(long)]
    pub partition_size: u64,
    /// Attempts of a partition before it is parked as failed (default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry of a failed partition, doubled per attempt (default 1000).
    #[arg(long, value_name = "MS")]
    pub retry_backoff_ms: Option<u64>,
    /// Open-ended jobs: pending partitions kept per unit of live worker capacity (default 4).
    #[arg(long)]
    pub lookahead: Option<u32>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl CreateArgs {
    /// The `create_job` command, or what is wrong with the arguments.
    pub fn command(&self) -> anyhow::Result<AdminCommand> {
        if self.partition_size == 0 {
            bail!("--partition-size must be at least 1");
        }
        let mut spec = match (self.end, self.open_ended) {
            (Some(_), true) => bail!("--end and --open-ended exclude each other"),
            (None, false) => {
                bail!("give --end N for a fixed range, or --open-ended for a planner-driven job")
            }
            (Some(end), false) => {
                if end < self.start {
                    bail!("--end {end} is below --start {}", self.start);
                }
                if end == u64::MAX {
                    bail!("--end must be below {}", u64::MAX);
                }
                if self.lookahead.is_some() {
                    bail!("--lookahead only applies to --open-ended jobs");
                }
                let range = IdRange::new(self.start, end).expect("checked: start <= end");
                JobSpec::fixed(range, self.partition_size)
            }
            (None, true) => {
                if self.start == u64::MAX {
                    bail!("--start must be below {}", u64::MAX);
                }
                JobSpec::open_ended(self.start, self.partition_size)
            }
        };
        if let Some(max_attempts) = self.max_attempts {
            if max_attempts == 0 {
                bail!("--max-attempts must be at least 1");
            }
            spec.max_attempts = max_attempts;
        }
        if let Some(backoff) = self.retry_backoff_ms {
            spec.retry_backoff_ms = backoff;
        }
        if let Some(lookahead) = self.lookahead {
            if lookahead == 0 {
                bail!("--lookahead must be at least 1");
            }
            spec.lookahead = lookahead;
        }
        Ok(AdminCommand::CreateJob {
            name: self.name.clone(),
            spec,
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Job name.
    pub name: JobName,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PartitionsArgs {
    /// Only this job's partitions.
    #[arg(long)]
    pub job: Option<JobName>,
    /// Only these statuses, comma-separated: pending, granted, revoking, completed, failed.
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    pub status: Vec<PartitionStatus>,
    /// Page size (1 to 1000; default 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE)))]
    pub limit: Option<u32>,
    /// Continue after this partition (the previous page's hint), as JOB:ID.
    #[arg(long, value_name = "JOB:ID", value_parser = parse_after)]
    pub after: Option<(JobName, PartitionId)>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl PartitionsArgs {
    pub fn command(&self) -> AdminCommand {
        AdminCommand::ListPartitions {
            job: self.job.clone(),
            statuses: self.status.clone(),
            after: self.after.clone(),
            limit: self.limit,
        }
    }

    /// The command line that fetches the page after `next`.
    fn next_page_hint(&self, next: &(JobName, PartitionId)) -> String {
        let mut hint = "elkctl partitions".to_owned();
        if let Some(job) = &self.job {
            hint.push_str(&format!(" --job {job}"));
        }
        if !self.status.is_empty() {
            let names: Vec<&str> = self
                .status
                .iter()
                .map(|s| render::status_name(*s))
                .collect();
            hint.push_str(&format!(" --status {}", names.join(",")));
        }
        if let Some(limit) = self.limit {
            hint.push_str(&format!(" --limit {limit}"));
        }
        hint.push_str(&format!(" --after {}:{}", next.0, next.1));
        hint
    }
}

/// Parses a partition status by its wire name.
pub fn parse_status(raw: &str) -> Result<PartitionStatus, String> {
    let name = raw.trim().to_ascii_lowercase();
    serde_json::from_value(serde_json::Value::String(name)).map_err(|_| {
        format!("unknown status '{raw}' (expected pending, granted, revoking, completed, failed)")
    })
}

/// Parses `JOB:ID` (also `JOB.ID`, the partition's key).
pub fn parse_after(raw: &str) -> Result<(JobName, PartitionId), String> {
    let (job, id) = raw
        .split_once([':', '.'])
        .ok_or_else(|| format!("'{raw}' is not JOB:ID (e.g. backfill:40)"))?;
    let job = JobName::new(job).map_err(|e| e.to_string())?;
    let id = id
        .parse::<u64>()
        .map_err(|_| format!("partition id '{id}' is not a number"))?;
    Ok((job, PartitionId(id)))
}

#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// Only this job's failed partitions (default: every failed partition of every job).
    #[arg(long)]
    pub job: Option<JobName>,
    /// Only this partition of --job.
    #[arg(long, requires = "job")]
    pub partition: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct IdStatusArgs {
    /// Job name.
    pub job: JobName,
    /// The ID to look up.
    pub id: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Sends `command` and returns its result, or prints it as JSON (`--json`) and returns `None`.
pub(crate) async fn ask(
    connect: &ConnectArgs,
    command: AdminCommand,
) -> anyhow::Result<Option<AdminResult>> {
    let result = connect.admin().await?.request(command).await?;
    if connect.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(None);
    }
    Ok(Some(result))
}

pub async fn run_job(command: JobCommand) -> anyhow::Result<ExitCode> {
    if let JobCommand::List(args) = &command {
        return list_jobs(&args.connect).await;
    }
    let (admin_command, verb) = command.admin_command()?;
    let connect = command.connect();
    let Some(result) = ask(connect, admin_command).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let job = into_job(result)?;
    if verb.is_empty() {
        print!("{}", render::job_details(&job));
    } else {
        println!(
            "job {} {verb} (state {}, {})",
            job.name,
            render::state_name(job.state),
            render::job_range(&job)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `elkctl job list`: every job, following the assigner's pages (one page is at most
/// `MAX_PAGE` jobs and one NATS message).
async fn list_jobs(connect: &ConnectArgs) -> anyhow::Result<ExitCode> {
    let jobs = connect.admin().await?.list_jobs().await?;
    if connect.json {
        let result = AdminResult::Jobs {
            jobs,
            next_after: None,
        };
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", render::jobs_table(&jobs));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_partitions(args: PartitionsArgs) -> anyhow::Result<ExitCode> {
    let Some(result) = ask(&args.connect, args.command()).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::Partitions {
        partitions,
        next_after,
    } = result
    else {
        bail!("unexpected assigner reply: {result:?}");
    };
    print!("{}", render::partitions_table(&partitions));
    if let Some(next) = next_after {
        println!("\nnext page: {}", args.next_page_hint(&next));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_retry(args: RetryArgs) -> anyhow::Result<ExitCode> {
    let command = AdminCommand::Retry {
        job: args.job.clone(),
        partition: args.partition.map(PartitionId),
    };
    let Some(result) = ask(&args.connect, command).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::Retried { count } = result else {
        bail!("unexpected assigner reply: {result:?}");
    };
    let scope = match (&args.job, args.partition) {
        (Some(job), Some(id)) => format!(" (partition {job}.{id})"),
        (Some(job), None) => format!(" of job {job}"),
        _ => String::new(),
    };
    match count {
        0 => println!("no failed partitions{scope} to retry"),
        1 => println!("re-queued 1 failed partition{scope}"),
        n => println!("re-queued {n} failed partitions{scope}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_id_status(args: IdStatusArgs) -> anyhow::Result<ExitCode> {
    let command = AdminCommand::IdStatus {
        job: args.job.clone(),
        id: args.id,
    };
    let Some(result) = ask(&args.connect, command).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::IdStatus { id, status } = result else {
        bail!("unexpected assigner reply: {result:?}");
    };
    print!("{}", render::id_status(args.job.as_str(), id, &status));
    Ok(ExitCode::SUCCESS)
}

pub async fn run_stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let Some(result) = ask(&args.connect, AdminCommand::Stats).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::Stats { stats } = result else {
        bail!("unexpected assigner reply: {result:?}");
    };
    print!("{}", render::stats(&stats));
    Ok(ExitCode::SUCCESS)
}

impl JobCommand {
    /// The admin command, and the verb that reports its success ("" for reads).
    fn admin_command(&self) -> anyhow::Result<(AdminCommand, &'static str)> {
        let name = |args: &JobArgs| args.name.clone();
        Ok(match self {
            JobCommand::Create(args) => (args.command()?, "created"),
            JobCommand::List(_) => (
                AdminCommand::ListJobs {
                    after: None,
                    limit: None,
                },
                "",
            ),
            JobCommand::Get(args) => (AdminCommand::GetJob { name: name(args) }, ""),
            JobCommand::Pause(args) => (AdminCommand::PauseJob { name: name(args) }, "paused"),
            JobCommand::Resume(args) => (AdminCommand::ResumeJob { name: name(args) }, "resumed"),
            JobCommand::Cancel(args) => (AdminCommand::CancelJob { name: name(args) }, "cancelled"),
        })
    }

    /// The command's name (its span's).
    pub fn name(&self) -> &'static str {
        match self {
            JobCommand::Create(_) => "elkctl job create",
            JobCommand::List(_) => "elkctl job list",
            JobCommand::Get(_) => "elkctl job get",
            JobCommand::Pause(_) => "elkctl job pause",
            JobCommand::Resume(_) => "elkctl job resume",
            JobCommand::Cancel(_) => "elkctl job cancel",
        }
    }

    /// The admin flags of this command.
    pub fn connect(&self) -> &ConnectArgs {
        match self {
            JobCommand::Create(args) => &args.connect,
            JobCommand::List(args) => &args.connect,
            JobCommand::Get(args)
            | JobCommand::Pause(args)
            | JobCommand::Resume(args)
            | JobCommand::Cancel(args) => &args.connect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("elkctl").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    fn create(args: &[&str]) -> anyhow::Result<AdminCommand> {
        let mut full = vec!["job", "create"];
        full.extend_from_slice(args);
        match parse(&full)? {
            Command::Job(JobCommand::Create(args)) => args.command(),
            other => panic!("not a create: {other:?}"),
        }
    }

    fn create_error(args: &[&str]) -> String {
        format!("{:#}", create(args).unwrap_err())
    }

    #[test]
    fn create_builds_fixed_and_open_ended_jobs() {
        let fixed = create(&[
            "b",
            "--start",
            "1",
            "--end",
            "100",
            "--partition-size",
            "10",
        ]);
        assert_eq!(
            fixed.unwrap(),
            AdminCommand::CreateJob {
                name: JobName::new("b").unwrap(),
                spec: JobSpec::fixed(IdRange::new(1, 100).unwrap(), 10),
            }
        );
        let open = create(&[
            "e",
            "--start",
            "5",
            "--open-ended",
            "--partition-size",
            "50",
            "--max-attempts",
            "7",
            "--retry-backoff-ms",
            "20",
            "--lookahead",
            "2",
        ])
        .unwrap();
        let AdminCommand::CreateJob { spec, .. } = open else {
            panic!("{open:?}")
        };
        assert!(spec.open_ended);
        assert_eq!(
            (spec.range.first(), spec.partition_size),
            (5, 50),
            "{spec:?}"
        );
        assert_eq!(
            (spec.max_attempts, spec.retry_backoff_ms, spec.lookahead),
            (7, 20, 2)
        );
    }

    #[test]
    fn create_refuses_bad_arguments_before_any_network_call() {
        let size = ["--partition-size", "10"];
        let with = |extra: &[&'static str]| {
            let mut args = vec!["j", "--start", "50"];
            args.extend_from_slice(extra);
            args
        };
        assert!(create_error(&with(&["--end", "10", "--partition-size", "5"])).contains("below"));
        assert!(
            create_error(&with(&["--end", "60", "--partition-size", "0"]))
                .contains("--partition-size must be at least 1")
        );
        assert!(create_error(&with(&size)).contains("--open-ended"));
        let both = create_error(&with(&[
            "--end",
            "60",
            "--open-ended",
            "--partition-size",
            "5",
        ]));
        assert!(both.contains("--open-ended"), "{both}");
        assert!(
            create_error(&with(&[
                "--end",
                "60",
                "--partition-size",
                "5",
                "--lookahead",
                "3"
            ]))
            .contains("--lookahead only applies")
        );
        assert!(
            create_error(&with(&[
                "--end",
                "60",
                "--partition-size",
                "5",
                "--max-attempts",
                "0"
            ]))
            .contains("--max-attempts")
        );
        let bad_name =
            create_error(&["a.b", "--start", "1", "--end", "2", "--partition-size", "1"]);
        assert!(bad_name.contains("'.'"), "{bad_name}");
        assert!(create_error(&with(&["--end", "x", "--partition-size", "5"])).contains("invalid"));
    }

    #[test]
    fn partitions_arguments_parse_statuses_paging_and_limits() {
        let Command::Partitions(args) = parse(&[
            "partitions",
            "--job",
            "b",
            "--status",
            "failed,pending",
            "--limit",
            "20",
            "--after",
            "b:40",
        ])
        .unwrap() else {
            panic!()
        };
        let b = JobName::new("b").unwrap();
        assert_eq!(
            args.command(),
            AdminCommand::ListPartitions {
                job: Some(b.clone()),
                statuses: vec![PartitionStatus::Failed, PartitionStatus::Pending],
                after: Some((b.clone(), PartitionId(40))),
                limit: Some(20),
            }
        );
        assert_eq!(
            args.next_page_hint(&(b, PartitionId(60))),
            "elkctl partitions --job b --status failed,pending --limit 20 --after b:60"
        );
        for bad in [
            &["partitions", "--status", "done"][..],
            &["partitions", "--limit", "0"],
            &["partitions", "--limit", "1001"],
            &["partitions", "--after", "b"],
            &["partitions", "--after", "b:x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            parse_after("b.7").unwrap(),
            (JobName::new("b").unwrap(), PartitionId(7))
        );
    }

    #[test]
    fn retry_and_other_commands_parse() {
        assert!(
            parse(&["retry", "--partition", "3"]).is_err(),
            "needs --job"
        );
        let Command::Retry(args) = parse(&["retry", "--job", "b", "--partition", "3"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((args.job.unwrap().as_str(), args.partition), ("b", Some(3)));
        assert!(parse(&["id-status", "b", "-1"]).is_err());
        assert!(parse(&["id-status", "b", "17", "--json"]).is_ok());
        assert!(parse(&["job", "pause", "b", "--namespace", "prod"]).is_ok());
        assert!(parse(&["stats", "--wait", "1"]).is_ok());
        let Command::Stats(stats) = parse(&["stats", "--namespace", "a.b"]).unwrap() else {
            panic!()
        };
        assert!(stats.connect.namespace().is_err());
    }
}
