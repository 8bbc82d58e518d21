//! `decode_progress`: what a progress subject may carry — one report, or a batch of them — and
//! how a malformed batch is refused.

use elk_protocol::messages::{ProgressBatch, ProgressEvent, ProgressReport, decode_progress};
use elk_protocol::{DecodeError, SCHEMA_VERSION, encode};
use elk_types::{Incarnation, JobName, MemberId, PartitionId, PartitionLeaseToken};

fn report(partition: u64, event: ProgressEvent) -> ProgressReport {
    ProgressReport {
        schema: SCHEMA_VERSION,
        worker: MemberId::new("w1").unwrap(),
        incarnation: Incarnation(7),
        job: JobName::new("job").unwrap(),
        partition: PartitionId(partition),
        token: PartitionLeaseToken(100 + partition),
        event,
    }
}

#[test]
fn a_single_report_decodes_as_a_batch_of_one() {
    let single = report(1, ProgressEvent::Completed);
    assert_eq!(decode_progress(&encode(&single)).unwrap(), vec![single]);
}

#[test]
fn a_batch_decodes_to_its_reports_in_order() {
    let reports = vec![
        report(3, ProgressEvent::Checkpoint { last_done: 5 }),
        report(3, ProgressEvent::Completed),
        report(1, ProgressEvent::Released { last_done: None }),
    ];
    let batch = ProgressBatch {
        schema: SCHEMA_VERSION,
        reports: reports.clone(),
    };
    assert_eq!(decode_progress(&encode(&batch)).unwrap(), reports);
    let empty = ProgressBatch {
        schema: SCHEMA_VERSION,
        reports: Vec::new(),
    };
    assert_eq!(decode_progress(&encode(&empty)).unwrap(), Vec::new());
}

#[test]
fn a_batch_with_a_bad_report_is_refused_whole_with_the_batch_error() {
    // The second report names a wildcard worker: not a token.
    #[derive(serde::Serialize)]
    struct RawReport<'a> {
        worker: &'a str,
        incarnation: u64,
        job: &'a str,
        partition: u64,
        token: u64,
        event: ProgressEvent,
    }
    #[derive(serde::Serialize)]
    struct RawBatch<'a> {
        schema: u16,
        reports: Vec<RawReport<'a>>,
    }
    let raw = |worker| RawReport {
        worker,
        incarnation: 1,
        job: "job",
        partition: 1,
        token: 1,
        event: ProgressEvent::Completed,
    };
    let bytes = rmp_serde::to_vec_named(&RawBatch {
        schema: 1,
        reports: vec![raw("w1"), raw("w.>")],
    })
    .unwrap();
    let error = decode_progress(&bytes).unwrap_err();
    assert!(error.to_string().contains("progress batch"), "{error}");
}

#[test]
fn a_newer_schema_inside_a_batch_is_refused() {
    let mut newer = report(2, ProgressEvent::Completed);
    newer.schema = SCHEMA_VERSION + 1;
    let batch = ProgressBatch {
        schema: SCHEMA_VERSION,
        reports: vec![report(1, ProgressEvent::Completed), newer],
    };
    let error = decode_progress(&encode(&batch)).unwrap_err();
    assert!(
        matches!(error, DecodeError::UnsupportedSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{error}"
    );
}

#[test]
fn garbage_is_refused_as_a_single_report() {
    let error = decode_progress(&[0xc1, 0x00]).unwrap_err();
    assert!(
        error.to_string().contains("malformed progress message"),
        "{error}"
    );
}
