//! Test harness: a real nats-server, the namespace's resources, a collector of every progress
//! report (through our own ordered consumer), and a recording processor.

#![allow(dead_code)]

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use elk_nats::{NatsConfig, Resources};
use elk_protocol::messages::{
    AssignmentRecord, Grant, ProgressEvent, ProgressReport, decode_progress,
};
use elk_protocol::names::Names;
use elk_protocol::{SCHEMA_VERSION, encode};
use elk_testkit::{NatsServer, wait_until};
use elk_types::{
    Epoch, IdRange, Incarnation, JobName, MemberId, Namespace, PartitionId, PartitionLeaseToken,
    ViewSeq,
};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker, WorkerBuilder};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// A progress report with the stream's publish time (ns since the Unix epoch).
#[derive(Debug, Clone)]
pub struct Received {
    pub report: ProgressReport,
    pub published_ns: i128,
    /// The stream sequence of the message that carried it (a batch carries several).
    pub message_seq: u64,
}

pub struct Harness {
    pub server: NatsServer,
    pub resources: Resources,
    reports: Arc<Mutex<Vec<Received>>>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Harness {
    pub async fn start() -> Harness {
        init_tracing();
        let server = NatsServer::start();
        let client = elk_nats::connect(&NatsConfig::new(server.url(), "test"))
            .await
            .expect("connect");
        let names = Names::new(Namespace::new("test").unwrap());
        let resources = elk_nats::provision(client, names, &Default::default())
            .await
            .expect("provision");
        let reports = Arc::new(Mutex::new(Vec::new()));
        let consumer = resources
            .progress
            .create_consumer(pull::OrderedConfig {
                filter_subject: resources.names.progress_subjects(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("progress consumer");
        let mut messages = consumer.messages().await.expect("progress messages");
        let sink = reports.clone();
        tokio::spawn(async move {
            while let Some(next) = messages.next().await {
                // An ordered consumer reports errors (e.g. across a server restart) and goes on.
                let Ok(message) = next else { continue };
                let (published_ns, message_seq) = message
                    .info()
                    .map(|info| (info.published.unix_timestamp_nanos(), info.stream_sequence))
                    .unwrap_or((0, 0));
                let reports = decode_progress(&message.payload).expect("valid report or batch");
                sink.lock()
                    .unwrap()
                    .extend(reports.into_iter().map(|report| Received {
                        report,
                        published_ns,
                        message_seq,
                    }));
            }
        });
        Harness {
            server,
            resources,
            reports,
        }
    }

    pub fn builder(&self, id: &str) -> WorkerBuilder {
        Worker::builder(
            self.resources.names.namespace().clone(),
            MemberId::new(id).unwrap(),
        )
        .nats_url(self.server.url())
        .checkpoint_interval(Duration::from_millis(50))
        .stop_grace(Duration::from_secs(5))
    }

    pub async fn assign(&self, worker: &str, record: &AssignmentRecord) {
        self.resources
            .assignments
            .put(worker, encode(record).into())
            .await
            .expect("write assignment");
    }

    pub fn reports(&self) -> Vec<Received> {
        self.reports.lock().unwrap().clone()
    }

    /// Every event reported for `partition`, in stream order.
    pub fn events(&self, partition: u64) -> Vec<ProgressEvent> {
        self.reports()
            .into_iter()
            .filter(|received| received.report.partition == PartitionId(partition))
            .map(|received| received.report.event)
            .collect()
    }

    pub fn terminal(&self, partition: u64) -> Option<ProgressEvent> {
        self.events(partition)
            .into_iter()
            .find(|event| !matches!(event, ProgressEvent::Checkpoint { .. }))
    }

    pub async fn wait_for_terminal(&self, partitions: &[u64]) {
        wait_until("terminal events of every partition", DEADLINE, || async {
            partitions.iter().all(|p| self.terminal(*p).is_some())
        })
        .await
        .unwrap();
    }

    /// The member key's last entry (`deleted` for delete/expiry markers).
    pub async fn member_entry(&self, id: &str) -> Option<elk_nats::KvEntry> {
        elk_nats::read_entry(&self.resources.members, id)
            .await
            .expect("read member")
    }

    pub async fn member_is_live(&self, id: &str) -> bool {
        self.member_entry(id)
            .await
            .is_some_and(|entry| !entry.deleted)
    }
}

pub fn job() -> JobName {
    JobName::new("job").unwrap()
}

pub fn grant(partition: u64, first: u64, last: u64, resume_from: u64) -> Grant {
    Grant {
        job: job(),
        partition: PartitionId(partition),
        range: IdRange::new(first, last).unwrap(),
        resume_from,
        token: PartitionLeaseToken(1000 + partition),
        traceparent: None,
        unsampled: false,
    }
}

pub fn record(
    incarnation: Incarnation,
    epoch: u64,
    seq: u64,
    grants: Vec<Grant>,
) -> AssignmentRecord {
    AssignmentRecord {
        schema: SCHEMA_VERSION,
        incarnation,
        epoch: Epoch(epoch),
        seq: ViewSeq(seq),
        grants,
        drain: false,
        revoking: Vec::new(),
        progress_batches: false,
    }
}

/// What the recording processor saw.
#[derive(Debug, Default)]
pub struct Recorder {
    processed: Mutex<HashMap<u64, Vec<u64>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Recorder {
    pub fn processed(&self, partition: u64) -> Vec<u64> {
        self.processed
            .lock()
            .unwrap()
            .get(&partition)
            .cloned()
            .unwrap_or_default()
    }

    pub fn processed_count(&self, partition: u64) -> usize {
        self.processed
            .lock()
            .unwrap()
            .get(&partition)
            .map_or(0, Vec::len)
    }

    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }
}

/// Processes IDs one by one (optionally sleeping per ID), checkpointing each; fails a chosen
/// partition after a chosen ID.
#[derive(Clone)]
pub struct RecordingProcessor {
    pub recorder: Arc<Recorder>,
    pub per_id_delay: Duration,
    /// `(partition, after_id)`: return an error once `after_id` is processed.
    pub fail: Option<(u64, u64)>,
    /// `(partition, after_id)`: panic once `after_id` is processed.
    pub panic: Option<(u64, u64)>,
}

impl RecordingProcessor {
    pub fn new(per_id_delay: Duration) -> Self {
        Self {
            recorder: Arc::new(Recorder::default()),
            per_id_delay,
            fail: None,
            panic: None,
        }
    }
}

impl Processor for RecordingProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let recorder = &self.recorder;
        let now_running = recorder.running.fetch_add(1, Ordering::SeqCst) + 1;
        recorder
            .max_running
            .fetch_max(now_running, Ordering::SeqCst);
        let outcome = self.run(&work).await;
        recorder.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

impl RecordingProcessor {
    async fn run(&self, work: &PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let partition = work.partition().get();
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            if self.per_id_delay.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(self.per_id_delay).await;
            }
            self.recorder
                .processed
                .lock()
                .unwrap()
                .entry(partition)
                .or_default()
                .push(id);
            work.checkpoint(id);
            if self.fail == Some((partition, id)) {
                return Err(ProcessError::new(format!("boom at {id}")));
            }
            if self.panic == Some((partition, id)) {
                panic!("kaboom at {id}");
            }
        }
        Ok(ProcessOutcome::Completed)
    }
}
