//! `elkctl demo`: the whole stack on one machine. Starts (or uses) a nats-server, runs election,
//! assigner and scaler in-process, starts N workers whose processor folds each ID into a checksum,
//! runs one job to completion with a live progress bar, and prints one summary line computed from
//! what the workers actually processed (not from the coordinator's state).

use crate::connect::TargetArgs;
use anyhow::{Context, bail};
use elk_protocol::decode;
use elk_protocol::messages::{JobRecord, JobSpec, JobState};
use elk_types::{IdRange, JobName, MemberId, Namespace};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// NATS to use instead of a private server started for the demo (`--nats-url` and the
    /// credentials and TLS flags of every ELK binary; the demo's components all use them, so
    /// they need an admin identity on a server with auth).
    #[command(flatten)]
    pub nats: elk_runtime::NatsArgs,
    /// Namespace of the demo deployment.
    #[arg(long, default_value = "demo")]
    pub namespace: String,
    /// First ID of the job's range.
    #[arg(long, default_value_t = 1)]
    pub start: u64,
    /// Last ID of the job's range (inclusive).
    #[arg(long, default_value_t = 1_000_000)]
    pub end: u64,
    /// IDs per partition.
    #[arg(long, default_value_t = 10_000)]
    pub partition_size: u64,
    /// Number of workers.
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Partitions each worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
    /// Cost of processing one ID, in rounds of a 64-bit mixing function.
    #[arg(long, default_value_t = 200)]
    pub per_id_cost: u32,
    /// Member TTL of workers and services, in seconds.
    #[arg(long, default_value_t = 3)]
    pub member_ttl_secs: u64,
    /// Give up if the job has not completed after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// What the workers really did: a processing count per ID.
struct Ledger {
    start: u64,
    counts: Vec<AtomicU32>,
    processed: AtomicU64,
    checksum: AtomicU64,
}

impl Ledger {
    fn new(range: IdRange) -> Self {
        let len = usize::try_from(range.len()).expect("demo range fits in memory");
        Self {
            start: range.first(),
            counts: (0..len).map(|_| AtomicU32::new(0)).collect(),
            processed: AtomicU64::new(0),
            checksum: AtomicU64::new(0),
        }
    }

    fn record(&self, id: u64) {
        if let Some(count) = self.counts.get((id - self.start) as usize) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    /// (distinct processed, IDs processed more than once, IDs never processed)
    fn summary(&self) -> (u64, u64, u64) {
        let mut distinct = 0;
        let mut duplicates = 0;
        let mut missing = 0;
        for count in &self.counts {
            match count.load(Ordering::Relaxed) {
                0 => missing += 1,
                1 => distinct += 1,
                _ => {
                    distinct += 1;
                    duplicates += 1;
                }
            }
        }
        (distinct, duplicates, missing)
    }
}

/// The demo's processor: folds every ID into a checksum with a configurable cost.
struct ChecksumProcessor {
    ledger: Arc<Ledger>,
    rounds: u32,
}

fn mix(mut value: u64, rounds: u32) -> u64 {
    for _ in 0..rounds {
        value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^= value >> 31;
    }
    value
}

impl Processor for ChecksumProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let mut checksum = 0u64;
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                self.ledger.checksum.fetch_xor(checksum, Ordering::Relaxed);
                return Ok(ProcessOutcome::Interrupted);
            }
            checksum ^= mix(id, self.rounds);
            self.ledger.record(id);
            work.checkpoint(id);
            if id % 256 == 0 {
                // Share the runtime fairly among the demo's processors (the workers' renewals run
                // on their own threads and need no help).
                tokio::task::yield_now().await;
            }
        }
        self.ledger.checksum.fetch_xor(checksum, Ordering::Relaxed);
        Ok(ProcessOutcome::Completed)
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let range = IdRange::new(args.start, args.end).context("--start/--end")?;
    if args.partition_size == 0 {
        bail!("--partition-size must be at least 1");
    }
    if args.workers == 0 || args.capacity == 0 {
        bail!("--workers and --capacity must be at least 1");
    }
    let namespace = Namespace::new(&args.namespace).context("--namespace")?;
    let started = Instant::now();

    // A private nats-server unless one was given; kept alive until the end of the demo.
    let mut nats = args.nats.clone();
    let _server = match &args.nats.url {
        Some(_) => None,
        None => {
            let server = elk_nats_server::NatsServer::builder()
                .start()
                .context("starting a local nats-server")?;
            nats.url = Some(server.url().to_owned());
            Some(server)
        }
    };
    let nats_config = nats.config("elk-demo");
    eprintln!("nats-server at {}, namespace {namespace}", nats_config.url);
    let target = TargetArgs {
        nats,
        namespace: namespace.to_string(),
    };
    let resources = target.provision(None).await?;

    let services = CancellationToken::new();
    let member_ttl = Duration::from_secs(args.member_ttl_secs.max(1));
    let service_tasks =
        crate::stack::start_services(&nats_config, &namespace, member_ttl, &services);

    let ledger = Arc::new(Ledger::new(range));
    let mut workers = Vec::new();
    for index in 1..=args.workers {
        let id = MemberId::new(format!("worker-{index}"))?;
        let worker = Worker::builder(namespace.clone(), id.clone())
            .nats(nats_config.clone().named(id.as_str()))
            .capacity(args.capacity)
            .member_ttl(member_ttl)
            .start(ChecksumProcessor {
                ledger: ledger.clone(),
                rounds: args.per_id_cost,
            })
            .await
            .context("starting a worker")?;
        workers.push(worker);
    }

    let job = JobName::new(format!(
        "checksum-{}",
        elk_protocol::messages::unix_ms_now()
    ))?;
    let admin = elk_nats::AdminClient::new(resources.client.clone(), resources.names.clone())
        .with_patience(Duration::from_secs(30));
    let created = admin
        .create_job(job.clone(), JobSpec::fixed(range, args.partition_size))
        .await
        .context("creating the demo job")?;
    let partitions = range.len().div_ceil(args.partition_size);
    eprintln!(
        "job {job}: {} ids in {partitions} partitions, {} workers",
        range.len(),
        args.workers
    );

    let bar = ProgressBar::new(range.len());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ids ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut record = created;
    loop {
        bar.set_position(ledger.processed.load(Ordering::Relaxed).min(range.len()));
        bar.set_message(format!(
            "partitions {}/{}",
            record.partitions_completed, partitions
        ));
        if record.state == JobState::Completed {
            break;
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!("job did not complete within {}s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(entry) = elk_nats::read_entry(&resources.jobs, job.as_str()).await?
            && let Ok(latest) = decode::<JobRecord>(&entry.value)
        {
            record = latest;
        }
    }
    bar.finish();

    for worker in workers {
        worker.shutdown().await.context("worker shutdown")?;
    }
    services.cancel();
    for task in service_tasks {
        let _ = task.await;
    }

    let (processed, duplicates, missing) = ledger.summary();
    println!(
        "demo-summary ids={} processed={processed} duplicates={duplicates} missing={missing} partitions={} workers={} seconds={:.3}",
        range.len(),
        record.partitions_total,
        args.workers,
        started.elapsed().as_secs_f64()
    );
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
