//! Admin commands on the model and their typed refusals (the wire codes clients act on).

use super::*;
use crate::model::{AdminRefusal, JobCommand, SpecProblem};
use elk_protocol::admin::{AdminErrorCode, IdState};
use elk_protocol::messages::{JobState, PartitionStatus};

#[test]
fn job_commands_are_refused_with_a_code() {
    let mut state = state_with_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    let spec = JobSpec::fixed(IdRange::new(1, 10).unwrap(), 5);
    let nope = JobName::new("nope").unwrap();

    let exists = state.create_job(&job_name(), &spec).unwrap_err();
    assert_eq!(exists, AdminRefusal::AlreadyExists(job_name()));
    assert_eq!(exists.code(), AdminErrorCode::AlreadyExists);
    assert_eq!(exists.to_string(), "job 'j' already exists");

    let unknown = state.pause_job(&nope).unwrap_err();
    assert_eq!(unknown.code(), AdminErrorCode::UnknownJob);
    assert_eq!(unknown.to_string(), "unknown job 'nope'");
    for refused in [
        state.get_job(&nope).map(drop),
        state.resume_job(&nope).map(drop),
        state.cancel_job(&nope).map(drop),
        state.retry(Some(&nope), None).map(drop),
        state.id_status(&nope, 1).map(drop),
        state
            .list_partitions(Some(&nope), &[], None, None, usize::MAX)
            .map(drop),
    ] {
        assert_eq!(refused, Err(AdminRefusal::UnknownJob(nope.clone())));
    }

    state.cancel_job(&job_name()).unwrap();
    let resumed = state.resume_job(&job_name()).unwrap_err();
    assert_eq!(
        resumed,
        AdminRefusal::InvalidJobState {
            job: job_name(),
            state: JobState::Cancelled,
            command: JobCommand::Resume,
        }
    );
    assert_eq!(resumed.code(), AdminErrorCode::InvalidState);
    assert!(resumed.to_string().contains("cannot be resumed"));
}

#[test]
fn invalid_specs_are_refused_before_anything_is_created() {
    let mut state = loaded(Snapshot::default());
    let name = JobName::new("bad").unwrap();
    let range = IdRange::new(1, 10).unwrap();
    let cases = [
        (
            JobSpec::fixed(range, 0),
            SpecProblem::PartitionSize { max: 1 << 40 },
        ),
        (
            JobSpec::fixed(IdRange::new(1, u64::MAX).unwrap(), 5),
            SpecProblem::RangeEndsAtMax,
        ),
        (
            JobSpec {
                max_attempts: 0,
                ..JobSpec::fixed(range, 5)
            },
            SpecProblem::NoAttempts,
        ),
        (
            JobSpec {
                lookahead: 0,
                ..JobSpec::open_ended(1, 5)
            },
            SpecProblem::NoLookahead,
        ),
    ];
    for (spec, problem) in cases {
        let refused = state.create_job(&name, &spec).unwrap_err();
        assert_eq!(refused.code(), AdminErrorCode::InvalidSpec);
        assert_eq!(refused, AdminRefusal::InvalidSpec(problem));
    }
    assert_eq!(state.job_count(), 0);
    assert!(state.take_changes().is_empty(), "nothing to write");
}

#[test]
fn retry_refusals_name_the_partition() {
    let mut state = state_with_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.reconcile(1);
    let without_job = state.retry(None, Some(PartitionId(1))).unwrap_err();
    assert_eq!(without_job.code(), AdminErrorCode::BadRequest);
    let not_failed = state
        .retry(Some(&job_name()), Some(PartitionId(1)))
        .unwrap_err();
    assert_eq!(
        not_failed,
        AdminRefusal::PartitionNotFailed {
            key: key(1),
            status: PartitionStatus::Pending
        }
    );
    assert_eq!(not_failed.code(), AdminErrorCode::InvalidState);
    let unknown = state
        .retry(Some(&job_name()), Some(PartitionId(9)))
        .unwrap_err();
    assert_eq!(unknown, AdminRefusal::UnknownPartition(key(9)));
    assert_eq!(unknown.code(), AdminErrorCode::UnknownPartition);
    assert_eq!(unknown.to_string(), "partition j.9 is not a live partition");
    assert_eq!(
        state.retry(None, None),
        Ok(0),
        "nothing failed: nothing to do"
    );
}

#[test]
fn listings_page_in_key_order_and_ids_are_located() {
    let mut state = state_with_job(IdRange::new(1, 5_000).unwrap(), 1_000);
    state.reconcile(1);
    let (page, next) = state
        .list_partitions(Some(&job_name()), &[], None, Some(2), usize::MAX)
        .unwrap();
    assert_eq!(page.iter().map(|p| p.id.get()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(next, Some(key(2)));
    let (page, next) = state
        .list_partitions(
            None,
            &[PartitionStatus::Pending],
            next.as_ref(),
            Some(10),
            usize::MAX,
        )
        .unwrap();
    assert_eq!(
        page.iter().map(|p| p.id.get()).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(next, None);
    match state.id_status(&job_name(), 2_500).unwrap() {
        IdState::InPartition { partition } => assert_eq!(partition.id, PartitionId(3)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(state.partition_counts()["pending"], 5);
}
