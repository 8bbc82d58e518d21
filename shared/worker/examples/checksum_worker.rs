//! A complete worker process: joins a namespace, folds every ID of its partitions into a checksum,
//! and hands everything back on Ctrl-C.
//!
//! ```text
//! cargo run -p elk-worker --example checksum_worker -- nats://127.0.0.1:4222 default worker-1 4
//! ```
//! Arguments: NATS URL, namespace, member id, capacity (all optional, in this order).

use elk_nats::NatsConfig;
use elk_types::{MemberId, Namespace};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};

struct Checksum;

impl Processor for Checksum {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let mut checksum = 0u64;
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            checksum = checksum.rotate_left(7) ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            work.checkpoint(id);
            if id % 1_024 == 0 {
                // CPU-bound work must yield, or membership renewal starves and the worker fences.
                tokio::task::yield_now().await;
            }
        }
        println!(
            "{} partition {} done, checksum {checksum:016x}",
            work.job(),
            work.partition()
        );
        Ok(ProcessOutcome::Completed)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let namespace = Namespace::new(args.next().unwrap_or_else(|| "default".to_owned()))?;
    let id = MemberId::new(args.next().unwrap_or_else(|| "worker-1".to_owned()))?;
    let capacity: u32 = args.next().map_or(Ok(4), |raw| raw.parse())?;

    let worker = Worker::builder(NatsConfig::new(url, id.to_string()), namespace, id)
        .capacity(capacity)
        .start(Checksum)
        .await?;
    println!(
        "worker {} joined (incarnation {})",
        worker.id(),
        worker.incarnation()
    );
    tokio::signal::ctrl_c().await?;
    let stats = worker.shutdown().await?;
    println!(
        "left after {} completed partitions",
        stats.partitions_completed
    );
    Ok(())
}
