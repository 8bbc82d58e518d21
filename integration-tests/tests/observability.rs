//! Observability of a live stack on real NATS (issue 11): every process — election, assigner,
//! scaler and an SDK worker, in-process, each on its own random port — serves `/metrics` that
//! `promtool check metrics` accepts without a complaint, `/healthz`, and a `/readyz` that turns
//! ready once the process is connected and joined; the series the dashboards and alerts use carry
//! the values the scenario produced (a job in flight, a partition parked as failed). And the
//! assigner's status page, rendered by headless Chromium against the same scenario, shows the job
//! with its progress and ETA, the worker with its load, the leaders with their epochs and the
//! parked partition with its error.
//!
//! `ELK_STATUS_SCREENSHOT=<path.png>` also writes a screenshot of the page (docs/images).

use elk_assigner::AssignerMetrics;
use elk_election::ElectionMetrics;
use elk_integration_tests::Stack;
use elk_integration_tests::browser::Chromium;
use elk_integration_tests::scrape::{http_get, promtool_check_metrics, sample};
use elk_scaler::ScalerMetrics;
use elk_testkit::wait_until;
use elk_types::IdRange;
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, WorkerHandle};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const JOB: &str = "ingest";
/// Partition of [`JOB`] that fails permanently (parked at once).
const POISON_PARTITION: u64 = 2;
/// Partitions of [`JOB`] above this one stop halfway until the gate opens: the job stays in flight.
const HELD_AFTER: u64 = 4;
const PATIENCE: Duration = Duration::from_secs(30);

/// Processes IDs; fails [`POISON_PARTITION`] for good; holds partitions above [`HELD_AFTER`]
/// halfway (checkpointed) until `gate` opens or the partition is revoked.
#[derive(Clone)]
struct ScenarioProcessor {
    gate: CancellationToken,
}

impl Processor for ScenarioProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let partition = work.partition().get();
        if partition == POISON_PARTITION {
            return Err(ProcessError::permanent(format!(
                "checksum mismatch at id {}",
                work.range().first() + 17
            )));
        }
        let range = work.range();
        let halfway = range.first() + range.len() / 2;
        for id in work.resume_from()..=range.last() {
            if id == halfway && partition > HELD_AFTER {
                let revoked = work.cancellation();
                tokio::select! {
                    () = self.gate.cancelled() => {}
                    () = revoked.cancelled() => return Ok(ProcessOutcome::Interrupted),
                }
            }
            work.checkpoint(id);
        }
        Ok(ProcessOutcome::Completed)
    }
}

/// A stack with every endpoint on, a job of 10 partitions of which 1 is parked, 3 completed, 2
/// held in flight by the single worker (capacity 2) and 2 more granted to it (queued there); the
/// last 2 not cut yet (the lean write path cuts a job as far as its workers take it).
struct Observed {
    stack: Stack,
    election: Arc<ElectionMetrics>,
    assigner: Arc<AssignerMetrics>,
    scaler: Arc<ScalerMetrics>,
    worker: WorkerHandle,
    gate: CancellationToken,
    _services: Vec<elk_integration_tests::ServiceHandle>,
}

async fn observed_stack() -> anyhow::Result<Observed> {
    let stack = Stack::new().await?.with_endpoints();
    let election = Arc::new(ElectionMetrics::default());
    let assigner = Arc::new(AssignerMetrics::default());
    let scaler = Arc::new(ScalerMetrics::default());
    let services = vec![
        stack.election_with_metrics("election-1", election.clone()),
        stack.assigner_with_metrics("assigner-1", assigner.clone()),
        stack.scaler_with_metrics("scaler-1", scaler.clone()),
    ];
    let gate = CancellationToken::new();
    let processor = ScenarioProcessor { gate: gate.clone() };
    let worker = stack.worker_with("worker-1", 2, &[], processor).await?;
    stack
        .create_job(JOB, IdRange::new(1, 10_000)?, 1_000)
        .await?;
    wait_until(
        "the job's poison partition parked and 3 completed",
        PATIENCE,
        || async {
            matches!(stack.job(JOB).await, Ok(Some(job))
            if job.partitions_failed == 1 && job.partitions_completed == 3)
        },
    )
    .await?;
    Ok(Observed {
        stack,
        election,
        assigner,
        scaler,
        worker,
        gate,
        _services: services,
    })
}

/// Scrapes `/metrics` of `address` until `check` accepts it; returns the last text.
async fn scrape_until(
    what: &str,
    address: SocketAddr,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let last = std::sync::Mutex::new(String::new());
    let outcome = wait_until(what, PATIENCE, || async {
        match http_get(address, "/metrics", &[]).await {
            Ok(response) if response.status == 200 => {
                let accepted = check(&response.body);
                *last.lock().unwrap() = response.body;
                accepted
            }
            _ => false,
        }
    })
    .await;
    let last = last.into_inner().unwrap();
    outcome.map_err(|error| anyhow::anyhow!("{error}\n--- last scrape ---\n{last}"))?;
    Ok(last)
}

/// The metric names of docs/observability.md's tables (rows starting with `| \`elk_`).
fn documented_metrics() -> anyhow::Result<BTreeSet<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/observability.md");
    let text = std::fs::read_to_string(&path)?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
        .filter(|name| name.starts_with("elk_"))
        .map(str::to_owned)
        .collect())
}

fn at_least(text: &str, series: &str, minimum: f64) -> bool {
    sample(text, series).is_some_and(|value| value >= minimum)
}

fn equals(text: &str, series: &str, expected: f64) -> bool {
    sample(text, series) == Some(expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_process_serves_clean_metrics_and_probes() -> anyhow::Result<()> {
    let observed = observed_stack().await?;
    let election = observed.election.endpoint.wait().await;
    let assigner = observed.assigner.endpoint.wait().await;
    let scaler = observed.scaler.endpoint.wait().await;
    let worker = observed
        .worker
        .metrics_address()
        .expect("the worker serves metrics");
    let job = |status: &str| format!("elk_job_partitions{{job=\"{JOB}\",status=\"{status}\"}}");

    let election_text = scrape_until("election metrics", election, |text| {
        equals(text, "elk_election_active", 1.0)
            && equals(text, "elk_member_up", 1.0)
            && equals(text, "elk_view_members{role=\"worker\"}", 1.0)
            && equals(text, "elk_view_members{role=\"assigner\"}", 1.0)
            && at_least(text, "elk_view_generation", 1.0)
            && at_least(
                text,
                "elk_election_role_changes_total{role=\"assigner\"}",
                1.0,
            )
    })
    .await?;
    let assigner_text = scrape_until("assigner metrics", assigner, |text| {
        equals(text, "elk_role_holder{role=\"assigner\"}", 1.0)
            && at_least(text, "elk_role_epoch{role=\"assigner\"}", 1.0)
            && equals(text, &job("failed"), 1.0)
            && equals(text, &job("completed"), 3.0)
            // 2 slots per unit of capacity: 2 running and 2 queued on the worker.
            && equals(text, &job("granted"), 4.0)
            // Cut just in time: nothing waits pending, 2 partitions are not cut yet.
            && equals(text, &job("pending"), 0.0)
            && equals(text, &format!("elk_job_ids_remaining{{job=\"{JOB}\"}}"), 7_000.0)
            && equals(text, &format!("elk_job_ids_completed_total{{job=\"{JOB}\"}}"), 3_000.0)
            && at_least(text, &format!("elk_job_backlog_age_seconds{{job=\"{JOB}\"}}"), 0.0)
            && equals(text, &format!("elk_job_state{{job=\"{JOB}\",state=\"active\"}}"), 1.0)
            && equals(text, "elk_assigner_partitions_parked_total", 1.0)
            && at_least(text, "elk_assigner_grants_total", 6.0)
            && at_least(
                text,
                "elk_assigner_progress_reports_total{outcome=\"applied\",reason=\"completed\"}",
                3.0,
            )
            && equals(text, "elk_assigner_live_workers", 1.0)
            && at_least(text, "elk_assigner_round_duration_seconds_count", 1.0)
            && at_least(text, "elk_assigner_kv_writes_total{bucket=\"partitions\",op=\"put\"}", 10.0)
            && at_least(text, "elk_member_renewal_duration_seconds_count", 1.0)
    })
    .await?;
    let scaler_text = scrape_until("scaler metrics", scaler, |text| {
        equals(text, "elk_role_holder{role=\"scaler\"}", 1.0)
            && at_least(text, "elk_scaler_desired_workers", 1.0)
            && equals(text, "elk_scaler_live_workers", 1.0)
            && equals(text, "elk_scaler_backlog_ids", 7_000.0)
            && equals(text, "elk_scaler_backlog_partitions", 7.0)
    })
    .await?;
    let worker_text = scrape_until("worker metrics", worker, |text| {
        equals(text, "elk_worker_capacity", 2.0)
            && equals(text, "elk_worker_running_partitions", 2.0)
            && equals(text, "elk_worker_queued_partitions", 2.0)
            && equals(text, "elk_worker_partitions_total{outcome=\"failed\"}", 1.0)
            && equals(text, "elk_worker_partitions_total{outcome=\"completed\"}", 3.0)
            && equals(text, "elk_worker_fences_total", 0.0)
            && equals(text, "elk_member_up", 1.0)
            && at_least(text, "elk_worker_progress_reports_total{outcome=\"published\"}", 4.0)
            && at_least(text, "elk_member_renewal_duration_seconds_count", 1.0)
            // Both held partitions are checkpointed halfway, and those checkpoints are acked.
            && equals(text, "elk_worker_checkpoint_lag_ids", 0.0)
    })
    .await?;

    // What the processes serve is exactly what docs/observability.md documents.
    let served: BTreeSet<String> = [&election_text, &assigner_text, &scaler_text, &worker_text]
        .into_iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|name| name.starts_with("elk_"))
        .map(str::to_owned)
        .collect();
    let documented = documented_metrics()?;
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "served but not documented in docs/observability.md"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented in docs/observability.md but not served"
    );

    for (source, address, text) in [
        ("election", election, &election_text),
        ("assigner", assigner, &assigner_text),
        ("scaler", scaler, &scaler_text),
        ("worker", worker, &worker_text),
    ] {
        promtool_check_metrics(source, text)?;
        let health = http_get(address, "/healthz", &[]).await?;
        assert_eq!(
            (health.status, health.body.as_str()),
            (200, "ok\n"),
            "{source}"
        );
        let ready = http_get(address, "/readyz", &[]).await?;
        assert_eq!(ready.status, 200, "{source}: {}", ready.body);
        assert!(
            ready.body.contains("\"nats\":\"connected\""),
            "{source}: {}",
            ready.body
        );
    }

    // The worker leaves: its endpoint goes with it, and the election times the view change.
    observed.gate.cancel();
    let _ = observed.worker.shutdown().await?;
    let not_ready = http_get(worker, "/readyz", &[]).await;
    assert!(
        not_ready.map_or(true, |response| response.status != 200),
        "a worker that left is not ready (or no longer serves)"
    );
    scrape_until(
        "the election timed the view without the worker",
        election,
        |text| {
            equals(text, "elk_view_members{role=\"worker\"}", 0.0)
                && at_least(text, "elk_election_view_latency_seconds_count", 1.0)
        },
    )
    .await?;
    drop(observed.stack);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_renders_the_live_stack_in_a_browser() -> anyhow::Result<()> {
    let Some(chromium) = Chromium::find()? else {
        return Ok(());
    };
    let observed = observed_stack().await?;
    let http = observed.assigner.http_api.wait().await;
    // The page takes a bearer token from its fragment (the API ignores it until it checks one).
    let url = format!("http://{http}/status#token=read-only-token");
    // Wait until the KV-read routes show what the page must render: the worker's grants written,
    // the view listing it.
    wait_until("the worker listed with its 4 grants", PATIENCE, || async {
        http_get(http, "/v1/workers", &[])
            .await
            .is_ok_and(|response| response.body.contains("\"grants\":4"))
    })
    .await?;
    // One poll of the page (its first, at load): under 2 s of virtual time.
    let dom = chromium
        .dump_dom(&url, Duration::from_millis(1_500))
        .await?;
    let row = |attribute: &str| -> anyhow::Result<String> {
        let start = dom
            .find(attribute)
            .ok_or_else(|| anyhow::anyhow!("no {attribute} in the page:\n{dom}"))?;
        let end = dom[start..]
            .find("</tr>")
            .map_or(dom.len(), |end| start + end);
        Ok(dom[start..end].to_owned())
    };
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the script rendered once:\n{dom}"
    );
    assert!(!dom.contains("class=\"shown\""), "no error banner:\n{dom}");

    let job = row(&format!("data-job=\"{JOB}\""))?;
    for expected in [
        ">active<",
        "width: 30%",
        ">30.0%<",
        "3,000 / 10,000",
        "3 / 8",
    ] {
        assert!(job.contains(expected), "job row lacks {expected}: {job}");
    }
    let eta = job
        .rsplit_once("class=\"num eta\">")
        .map(|(_, rest)| rest.split('<').next().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        eta.ends_with('s') || eta.ends_with('m') || eta.ends_with('h') || eta.ends_with('d'),
        "an ETA from the job's rate so far: {eta:?} in {job}"
    );
    let worker = row("data-worker=\"worker-1\"")?;
    for expected in [
        ">active<",
        ">2<",
        ">4<",
        "width: 100%",
        "2 / 2 slots",
        "every job",
    ] {
        assert!(
            worker.contains(expected),
            "worker row lacks {expected}: {worker}"
        );
    }
    let leader = row("data-role=\"assigner\"")?;
    for expected in [">assigner-1<", "epoch 1"] {
        assert!(
            leader.contains(expected),
            "assigner row lacks {expected}: {leader}"
        );
    }
    assert!(row("data-role=\"scaler\"")?.contains(">scaler-1<"));
    let failed = row(&format!("data-partition=\"{JOB}.{POISON_PARTITION}\""))?;
    for expected in ["1,001–2,000", "checksum mismatch at id 1018", ">1<"] {
        assert!(
            failed.contains(expected),
            "failed row lacks {expected}: {failed}"
        );
    }
    assert!(dom.contains("namespace it · 1 live workers · assigner assigner-1 (epoch 1)"));

    if let Some(path) = std::env::var_os("ELK_STATUS_SCREENSHOT") {
        let path = std::path::PathBuf::from(path);
        chromium
            .screenshot(&url, &path, (1280, 860), Duration::from_millis(1_500))
            .await?;
        eprintln!("status page screenshot written to {}", path.display());
    }
    observed.gate.cancel();
    Ok(())
}
