//! Every message survives a MessagePack round trip, is encoded with named fields, and bad input is
//! an error rather than a panic or a misread.

use elk_protocol::admin::{
    AdminCommand, AdminErrorCode, AdminReply, AdminRequest, AdminResult, PlanReply, PlanRequest,
};
use elk_protocol::codec::Message;
use elk_protocol::messages::*;
use elk_protocol::{DecodeError, SCHEMA_VERSION, decode, encode};
use elk_types::*;
use std::collections::BTreeMap;
use std::fmt::Debug;

fn member(id: &str) -> MemberId {
    MemberId::new(id).unwrap()
}

fn job() -> JobName {
    JobName::new("backfill").unwrap()
}

fn round_trip<M: Message + PartialEq + Debug>(message: M) {
    let bytes = encode(&message);
    let back: M = decode(&bytes).unwrap();
    assert_eq!(back, message);
}

/// W3C trace contexts as the assigner writes them.
const ROOT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const GRANT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";

fn sample_partition() -> PartitionRecord {
    PartitionRecord {
        schema: SCHEMA_VERSION,
        job: job(),
        id: PartitionId(7),
        range: IdRange::new(60_001, 70_000).unwrap(),
        status: PartitionStatus::Granted,
        owner: Some(MemberRef {
            id: member("w-1"),
            incarnation: Incarnation(3),
        }),
        token: PartitionLeaseToken(99),
        checkpoint: Some(65_000),
        attempts: 1,
        error: None,
        not_before_unix_ms: None,
        epoch: Epoch(4),
        traceparent: Some(ROOT.to_owned()),
        grant_traceparent: Some(GRANT.to_owned()),
        unsampled: false,
        holder_deaths: vec![HolderDeath {
            member: MemberRef {
                id: member("w-0"),
                incarnation: Incarnation(2),
            },
            at_unix_ms: 1_700_000_000_000,
            checkpoint: Some(64_000),
        }],
        quarantined: false,
    }
}

#[test]
fn all_messages_round_trip() {
    round_trip(MemberRecord {
        schema: SCHEMA_VERSION,
        role: MemberRole::Worker,
        incarnation: Incarnation(1),
        capacity: Capacity(4),
        jobs: vec![job()],
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        version: "0.1.0".to_owned(),
    });
    round_trip(ElectionLease {
        schema: SCHEMA_VERSION,
        holder: member("election-1"),
        incarnation: Incarnation(2),
    });
    round_trip(MembershipView {
        schema: SCHEMA_VERSION,
        generation: Generation(12),
        members: vec![ViewMember {
            id: member("w-1"),
            role: MemberRole::Worker,
            incarnation: Incarnation(1),
            capacity: Capacity(2),
            jobs: vec![],
        }],
    });
    round_trip(RoleLease {
        schema: SCHEMA_VERSION,
        holder: Some(MemberRef {
            id: member("assigner-1"),
            incarnation: Incarnation(5),
        }),
        epoch: Epoch(3),
        generation: Generation(9),
    });
    let mut job_record = JobRecord::new(
        job(),
        JobSpec::fixed(IdRange::new(1, 1_000_000).unwrap(), 10_000),
        Epoch(2),
        1,
    );
    job_record.cursor = 500_001;
    job_record.partitions_total = 50;
    job_record.low_watermark = Some(100_000);
    job_record.completed_above_watermark = vec![IdRange::new(200_001, 210_000).unwrap()];
    job_record.traceparent = Some(ROOT.to_owned());
    round_trip(job_record);
    round_trip(sample_partition());
    round_trip(AssignmentRecord {
        schema: SCHEMA_VERSION,
        incarnation: Incarnation(3),
        epoch: Epoch(4),
        seq: ViewSeq(10),
        grants: vec![Grant {
            job: job(),
            partition: PartitionId(7),
            range: IdRange::new(60_001, 70_000).unwrap(),
            resume_from: 65_001,
            token: PartitionLeaseToken(99),
            traceparent: Some(GRANT.to_owned()),
            unsampled: false,
        }],
        drain: false,
        revoking: vec![Grant {
            job: job(),
            partition: PartitionId(8),
            range: IdRange::new(70_001, 80_000).unwrap(),
            resume_from: 70_001,
            token: PartitionLeaseToken(100),
            traceparent: None,
            unsampled: false,
        }],
        progress_batches: true,
    });
    for event in [
        ProgressEvent::Checkpoint { last_done: 5 },
        ProgressEvent::Completed,
        ProgressEvent::Failed {
            error: "boom".to_owned(),
            last_done: Some(3),
            permanent: false,
        },
        ProgressEvent::Failed {
            error: "poison".to_owned(),
            last_done: None,
            permanent: true,
        },
        ProgressEvent::Released { last_done: None },
    ] {
        round_trip(ProgressReport {
            schema: SCHEMA_VERSION,
            worker: member("w-1"),
            incarnation: Incarnation(3),
            job: job(),
            partition: PartitionId(7),
            token: PartitionLeaseToken(99),
            event,
        });
    }
    round_trip(DesiredWorkers {
        schema: SCHEMA_VERSION,
        epoch: Epoch(2),
        desired: 5,
        live_workers: 3,
        backlog_ids: 10,
        backlog_partitions: 1,
        computed_unix_ms: 7,
        replicas: 6,
        draining: vec![member("w-2")],
        retire: vec![member("w-3")],
        worker_ids_per_second: Some(250),
    });
    round_trip(PlacementControl {
        schema: SCHEMA_VERSION,
        epoch: Epoch(4),
        frozen: Some(Freeze {
            reason: Some("incident 42".to_owned()),
            since_unix_ms: 9,
        }),
        drains: vec![DrainRequest {
            worker: MemberRef {
                id: member("w-2"),
                incarnation: Incarnation(5),
            },
            source: DrainSource::Scaler,
            since_unix_ms: 8,
        }],
    });
    for command in [
        AdminCommand::CreateJob {
            name: job(),
            spec: JobSpec::open_ended(1, 500),
        },
        AdminCommand::ListJobs {
            after: None,
            limit: None,
        },
        AdminCommand::ListJobs {
            after: Some(job()),
            limit: Some(10),
        },
        AdminCommand::PauseJob { name: job() },
        AdminCommand::ListPartitions {
            job: Some(job()),
            statuses: vec![PartitionStatus::Failed],
            after: Some((job(), PartitionId(3))),
            limit: Some(50),
        },
        AdminCommand::Retry {
            job: None,
            partition: None,
        },
        AdminCommand::Stats,
        AdminCommand::Members,
        AdminCommand::Drain {
            worker: member("w-2"),
            source: DrainSource::Operator,
        },
        AdminCommand::Undrain {
            worker: member("w-2"),
        },
        AdminCommand::Freeze {
            reason: Some("incident".to_owned()),
        },
        AdminCommand::Unfreeze,
        AdminCommand::Transfer {
            role: elk_protocol::names::ControlRole::Scaler,
            to: Some(member("s-2")),
        },
    ] {
        round_trip(AdminRequest::new(command));
    }
    round_trip(AdminReply::error(AdminErrorCode::UnknownJob, "nope"));
    round_trip(AdminReply::ok(AdminResult::Retried { count: 2 }));
    round_trip(PlanRequest {
        schema: SCHEMA_VERSION,
        job: job(),
        cursor: 10,
        wanted: 100,
    });
    round_trip(PlanReply {
        schema: SCHEMA_VERSION,
        max_id: Some(99),
    });
}

#[test]
fn fields_are_named_and_events_tagged() {
    let report = ProgressReport {
        schema: SCHEMA_VERSION,
        worker: member("w-1"),
        incarnation: Incarnation(3),
        job: job(),
        partition: PartitionId(7),
        token: PartitionLeaseToken(99),
        event: ProgressEvent::Checkpoint { last_done: 42 },
    };
    let bytes = encode(&report);
    // Decode as a generic MessagePack value: a map with string keys, as another language sees it.
    let value: rmpv_like::Value = rmp_serde::from_slice(&bytes).unwrap();
    let rendered = format!("{value:?}");
    for field in [
        "schema",
        "worker",
        "incarnation",
        "job",
        "partition",
        "token",
        "event",
        "kind",
    ] {
        assert!(rendered.contains(field), "missing {field} in {rendered}");
    }
    assert!(rendered.contains("checkpoint"), "{rendered}");
}

/// A tiny self-describing value type, so the test does not need the `rmpv` crate.
mod rmpv_like {
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)] // Fields are read through Debug only.
    pub enum Value {
        Int(u64),
        Text(String),
        Map(BTreeMap<String, Value>),
        Nil(Option<()>),
    }
}

#[test]
fn garbage_is_a_decode_error() {
    let error = decode::<PartitionRecord>(&[0xc1, 0x00, 0x12]).unwrap_err();
    assert!(
        matches!(
            error,
            DecodeError::Malformed {
                kind: "partition",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn newer_schema_is_refused() {
    let mut record = sample_partition();
    record.schema = SCHEMA_VERSION + 1;
    let error = decode::<PartitionRecord>(&encode(&record)).unwrap_err();
    assert!(
        matches!(error, DecodeError::UnsupportedSchema { found, .. } if found == SCHEMA_VERSION + 1)
    );
    assert!(error.to_string().contains("schema version"));
}

#[test]
fn wildcard_member_id_inside_a_message_is_refused() {
    // Build a report whose worker id is "a.>" by encoding a look-alike struct.
    #[derive(serde::Serialize)]
    struct Raw<'a> {
        schema: u16,
        worker: &'a str,
        incarnation: u64,
        job: &'a str,
        partition: u64,
        token: u64,
        event: ProgressEvent,
    }
    let bytes = rmp_serde::to_vec_named(&Raw {
        schema: 1,
        worker: "a.>",
        incarnation: 1,
        job: "j",
        partition: 1,
        token: 1,
        event: ProgressEvent::Completed,
    })
    .unwrap();
    let error = decode::<ProgressReport>(&bytes).unwrap_err();
    assert!(error.to_string().contains("member id"), "{error}");
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    #[derive(serde::Serialize)]
    struct Future<'a> {
        schema: u16,
        holder: &'a str,
        incarnation: u64,
        added_later: &'a str,
    }
    let bytes = rmp_serde::to_vec_named(&Future {
        schema: 1,
        holder: "e-1",
        incarnation: 4,
        added_later: "x",
    })
    .unwrap();
    let lease: ElectionLease = decode(&bytes).unwrap();
    assert_eq!(lease.incarnation, Incarnation(4));
}

#[test]
fn inverted_range_inside_a_message_is_refused() {
    #[derive(serde::Serialize)]
    struct Range {
        min: u64,
        max: u64,
    }
    #[derive(serde::Serialize)]
    struct RawSpec {
        range: Range,
        partition_size: u64,
    }
    let bytes = rmp_serde::to_vec_named(&RawSpec {
        range: Range { min: 10, max: 1 },
        partition_size: 5,
    })
    .unwrap();
    let error = rmp_serde::from_slice::<JobSpec>(&bytes).unwrap_err();
    assert!(error.to_string().contains("invalid id range"), "{error}");
}

#[test]
fn open_ended_jobs_plan_up_to_the_known_max() {
    let mut record = JobRecord::new(job(), JobSpec::open_ended(100, 10), Epoch(1), 0);
    assert_eq!(record.planning_limit(), None);
    assert_eq!(record.ids_total(), 0);
    record.known_max = Some(149);
    assert_eq!(record.planning_limit(), Some(149));
    assert_eq!(record.ids_total(), 50);
    record.low_watermark = Some(120);
    record.completed_above_watermark = vec![IdRange::new(130, 139).unwrap()];
    assert!(record.id_completed(100) && record.id_completed(120) && record.id_completed(135));
    assert!(!record.id_completed(125) && !record.id_completed(99));
}

#[test]
fn schema_1_admin_replies_with_a_bare_error_string_still_decode() {
    #[derive(serde::Serialize)]
    struct LegacyReply {
        schema: u16,
        result: Option<()>,
        error: Option<String>,
    }
    let legacy = rmp_serde::to_vec_named(&LegacyReply {
        schema: 1,
        result: None,
        error: Some("unknown job 'x'".to_owned()),
    })
    .unwrap();
    let reply: AdminReply = elk_protocol::decode(&legacy).unwrap();
    let error = reply.error.unwrap();
    assert_eq!(error.code, AdminErrorCode::Internal);
    assert_eq!(error.message, "unknown job 'x'");
    // A reply from a newer schema than this build knows is refused, not misread.
    let mut future = AdminReply::error(AdminErrorCode::UnknownJob, "x");
    future.schema = elk_protocol::admin::ADMIN_REPLY_SCHEMA + 1;
    assert!(elk_protocol::decode::<AdminReply>(&elk_protocol::encode(&future)).is_err());
}

#[test]
fn a_failed_event_without_permanent_is_a_retryable_failure() {
    #[derive(serde::Serialize)]
    struct OlderFailed<'a> {
        kind: &'a str,
        error: &'a str,
        last_done: Option<u64>,
    }
    let bytes = rmp_serde::to_vec_named(&OlderFailed {
        kind: "failed",
        error: "boom",
        last_done: Some(7),
    })
    .unwrap();
    let event: ProgressEvent = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(
        event,
        ProgressEvent::Failed {
            error: "boom".to_owned(),
            last_done: Some(7),
            permanent: false,
        }
    );
}

#[test]
fn trace_contexts_are_optional_and_absent_when_not_traced() {
    // A record written without tracing carries no trace field at all (the bytes are those of a
    // build without tracing), and one written with it is read by decoders that ignore it.
    let mut untraced = sample_partition();
    untraced.traceparent = None;
    untraced.grant_traceparent = None;
    let bytes = encode(&untraced);
    assert!(!bytes.windows(11).any(|w| w == b"traceparent"));
    let traced = encode(&sample_partition());
    assert!(traced.windows(11).any(|w| w == b"traceparent"));
    let back: PartitionRecord = decode(&traced).unwrap();
    assert_eq!(back.traceparent.as_deref(), Some(ROOT));
    assert_eq!(back.grant_traceparent.as_deref(), Some(GRANT));
    let grant = Grant {
        job: job(),
        partition: PartitionId(1),
        range: IdRange::new(1, 10).unwrap(),
        resume_from: 1,
        token: PartitionLeaseToken(5),
        traceparent: None,
        unsampled: false,
    };
    let plain = rmp_serde::to_vec_named(&grant).unwrap();
    assert!(!plain.windows(11).any(|w| w == b"traceparent"));
    assert!(!plain.windows(9).any(|w| w == b"unsampled"));
    // An unsampled partition says so with one flag, far shorter than a traceparent.
    let unsampled_grant = Grant {
        unsampled: true,
        ..grant
    };
    let flagged = rmp_serde::to_vec_named(&unsampled_grant).unwrap();
    assert_eq!(
        flagged.len(),
        plain.len() + 11,
        "one key of 9 bytes and a bool"
    );
    assert_eq!(decode_grant(&flagged), unsampled_grant);
    let mut unsampled_partition = untraced;
    unsampled_partition.unsampled = true;
    let back: PartitionRecord = decode(&encode(&unsampled_partition)).unwrap();
    assert!(back.unsampled);
    assert!(back.traceparent.is_none() && back.grant_traceparent.is_none());
}

fn decode_grant(bytes: &[u8]) -> Grant {
    rmp_serde::from_slice(bytes).unwrap()
}

/// `{"schema": 1, "nested": [[[...nil...]]]}` with `depth` nested one-element arrays: an unknown
/// field, so a decoder must skip it.
fn deeply_nested_unknown_field(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x82];
    bytes.extend(rmp_serde::to_vec(&"schema").unwrap());
    bytes.push(0x01);
    bytes.extend(rmp_serde::to_vec(&"nested").unwrap());
    bytes.extend(std::iter::repeat_n(0x91, depth));
    bytes.push(0xc0);
    bytes
}

#[test]
fn deep_nesting_is_refused_within_a_small_stack() {
    // Service tasks run on 2 MiB tokio worker stacks; the decoder must not need more than a small
    // part of one, whatever the nesting (found by the hostile-input scenario: a debug build
    // overflowed its stack on 1,000 nested arrays in an ignored field and aborted the process).
    let decoded = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let deep = deeply_nested_unknown_field(100_000);
            let shallow = deeply_nested_unknown_field(8);
            (
                decode::<PlanReply>(&deep).is_err(),
                decode::<PlanReply>(&shallow).map(|reply| reply.max_id),
            )
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(decoded.0, "deep nesting is an error");
    assert_eq!(
        decoded.1.unwrap(),
        None,
        "shallow nesting in an unknown field is skipped"
    );
}
