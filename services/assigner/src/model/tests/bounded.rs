//! Bounded work per request (issue 9 item 5): a fixed job's partition keys stay within
//! `max_job_backlog` whatever its size, and the job is still cut, covered and completed exactly.

use super::*;
use elk_protocol::admin::IdState;
use elk_protocol::messages::JobState;
use std::collections::BTreeMap;

fn bounded_policy(max_job_backlog: u64) -> Policy {
    Policy {
        max_job_backlog,
        ..policy()
    }
}

/// The partition keys KV holds, replayed from the change sets the model hands out.
#[derive(Default)]
struct KvKeys {
    keys: BTreeMap<PartitionKey, Revision>,
    peak: usize,
    revision: u64,
}

impl KvKeys {
    /// Takes the round's changes, applies them to the key set and acknowledges the writes.
    fn flush(&mut self, state: &mut AssignerState) {
        let changes = state.take_changes();
        let mut written = super::super::Written::default();
        for put in changes.partitions.iter().chain(&changes.completed) {
            self.revision += 1;
            self.keys.insert(put.key.clone(), Revision(self.revision));
            written
                .partitions
                .push((put.key.clone(), Revision(self.revision)));
        }
        for put in &changes.jobs {
            self.revision += 1;
            written
                .jobs
                .push((put.key.clone(), Revision(self.revision)));
        }
        for key in &changes.purges {
            self.keys.remove(key);
        }
        self.keys
            .retain(|key, revision| !range_purged(&changes, key, *revision));
        state.record_written(written);
        self.peak = self.peak.max(self.keys.len());
    }
}

/// Completes every partition worker `a` holds, last-granted first (so completed partitions wait
/// above the low watermark for compaction before the earlier ones finish).
fn complete_all_of_a(state: &mut AssignerState) -> usize {
    let a = MemberId::new("a").unwrap();
    let Some(record) = state.desired_assignment(&a) else {
        return 0;
    };
    let grants = record.grants;
    for grant in grants.iter().rev() {
        let report = ProgressReport {
            job: grant.job.clone(),
            ..report(
                "a",
                1,
                grant.partition.get(),
                grant.token,
                ProgressEvent::Completed,
            )
        };
        state.apply_progress(&report).unwrap();
    }
    grants.len()
}

#[test]
fn a_fixed_job_of_a_trillion_ids_holds_no_more_keys_than_the_bound() {
    let range = IdRange::new(1, 1_000_000_000_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        bounded_policy(50),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 1), Revision(1))],
            ..Snapshot::default()
        },
    );
    let mut kv = KvKeys::default();
    for now in 1..=5 {
        state.reconcile(now);
        kv.flush(&mut state);
    }
    assert_eq!(kv.keys.len(), 50, "cut up to the bound, no further");
    assert_eq!(state.partitions.len(), 50, "memory follows the bound too");
    let job = &state.jobs[&job_name()].value;
    assert_eq!((job.partitions_total, job.cursor), (50, 51));
    // IDs beyond the cursor are exactly "not planned", not lost.
    assert!(matches!(
        state.id_status(&job_name(), 51).unwrap(),
        IdState::NotPlanned
    ));

    // A worker completes what it gets: more is cut as completed keys are compacted, never above
    // the bound.
    state.apply_view(&view(&[("a", 1, 4)]));
    let mut completed = 0;
    for now in 10..60 {
        state.reconcile(now);
        kv.flush(&mut state);
        completed += complete_all_of_a(&mut state);
    }
    state.reconcile(100);
    kv.flush(&mut state);
    assert!(completed > 100, "the job kept being cut: {completed}");
    assert!(kv.peak <= 50, "peak of {} keys", kv.peak);
    let job = &state.jobs[&job_name()].value;
    assert_eq!(job.ids_completed, completed as u64);
    assert_eq!(job.low_watermark, Some(completed as u64));
    assert_eq!(job.state, JobState::Active);
}

#[test]
fn a_job_larger_than_the_bound_completes_exactly() {
    let range = IdRange::new(1, 1_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        bounded_policy(8),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 10), Revision(1))],
            ..Snapshot::default()
        },
    );
    state.apply_view(&view(&[("a", 1, 2)]));
    let mut kv = KvKeys::default();
    let mut now = 1;
    while state.jobs[&job_name()].value.state == JobState::Active {
        assert!(now < 1_000, "the job does not complete");
        state.reconcile(now);
        kv.flush(&mut state);
        complete_all_of_a(&mut state);
        now += 1;
    }
    kv.flush(&mut state);
    let job = &state.jobs[&job_name()].value;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!((job.partitions_total, job.partitions_completed), (100, 100));
    assert_eq!(job.ids_completed, 1_000);
    assert_eq!(job.low_watermark, Some(1_000));
    assert!(kv.peak <= 8, "peak of {} keys", kv.peak);
    assert!(matches!(
        state.id_status(&job_name(), 777).unwrap(),
        IdState::Completed
    ));
}

fn named(name: &str) -> JobName {
    JobName::new(name).unwrap()
}

#[test]
fn jobs_are_listed_in_pages_within_the_limit_and_the_byte_budget() {
    let mut state = loaded(Snapshot::default());
    let spec = JobSpec::fixed(IdRange::new(1, 10).unwrap(), 10);
    for index in 0..30 {
        state
            .create_job(&named(&format!("job-{index:02}")), &spec)
            .unwrap();
    }
    let follow = |limit: Option<u32>, max_bytes: usize| {
        let mut names = Vec::new();
        let mut pages = 0;
        let mut after = None;
        loop {
            let (page, next) = state.list_jobs(after.as_ref(), limit, max_bytes);
            pages += 1;
            assert!(!page.is_empty());
            names.extend(page.into_iter().map(|job| job.name.to_string()));
            match next {
                Some(next) => after = Some(next),
                None => return (names, pages),
            }
        }
    };
    let every: Vec<String> = (0..30).map(|index| format!("job-{index:02}")).collect();
    assert_eq!(follow(Some(10), usize::MAX), (every.clone(), 3));
    assert_eq!(
        follow(None, usize::MAX),
        (every.clone(), 1),
        "default page 100"
    );
    // Three records' worth of bytes: pages of three, whatever the limit.
    let record = elk_protocol::encode(&state.get_job(&named("job-00")).unwrap()).len();
    assert_eq!(follow(Some(1_000), 3 * record + 2), (every.clone(), 10));
    // A budget smaller than one record still makes progress, one record per page.
    assert_eq!(follow(None, 1), (every, 30));
}

#[test]
fn finished_jobs_are_removed_after_their_retention() {
    let retention = 3_600_000;
    let mut state = loaded(Snapshot::default());
    let spec = JobSpec::fixed(IdRange::new(1, 20).unwrap(), 10);
    state.create_job(&named("done"), &spec).unwrap();
    state.create_job(&named("stopped"), &spec).unwrap();
    state.apply_view(&view(&[("a", 1, 2)]));
    state.reconcile(1_000);
    let mut kv = KvKeys::default();
    kv.flush(&mut state);
    // `done` completes at 2,000; `stopped` is cancelled at 2,000 with one partition granted.
    let a = MemberId::new("a").unwrap();
    let grants = state.desired_assignment(&a).unwrap().grants;
    let stopped_grants: Vec<_> = grants
        .iter()
        .filter(|g| g.job == named("stopped"))
        .cloned()
        .collect();
    assert_eq!(stopped_grants.len(), 2);
    state.advance_clock(2_000);
    for grant in grants.iter().filter(|g| g.job == named("done")) {
        let report = ProgressReport {
            job: grant.job.clone(),
            ..report(
                "a",
                1,
                grant.partition.get(),
                grant.token,
                ProgressEvent::Completed,
            )
        };
        state.apply_progress(&report).unwrap();
    }
    state.cancel_job(&named("stopped")).unwrap();
    state.reconcile(2_000);
    kv.flush(&mut state);
    assert_eq!(state.jobs[&named("done")].value.state, JobState::Completed);
    assert_eq!(
        state.jobs[&named("stopped")].value.cancelled_unix_ms,
        Some(2_000)
    );

    // Kept, listed and queryable until the retention has passed.
    state.reconcile(2_000 + retention - 1);
    assert!(state.take_changes().job_deletes.is_empty());
    assert!(state.get_job(&named("done")).is_ok());

    // Then `done` goes; `stopped` waits for its granted partition's release and deletion.
    state.reconcile(2_000 + retention);
    let changes = state.take_changes();
    assert_eq!(changes.job_deletes, vec![named("done")]);
    assert!(state.get_job(&named("done")).is_err());
    assert!(
        state.get_job(&named("stopped")).is_ok(),
        "its partitions are still granted"
    );
    for grant in stopped_grants {
        let released = ProgressReport {
            job: grant.job.clone(),
            ..report(
                "a",
                1,
                grant.partition.get(),
                grant.token,
                ProgressEvent::Released { last_done: None },
            )
        };
        state.apply_progress(&released).unwrap();
    }
    state.reconcile(2_000 + retention + 1);
    let changes = state.take_changes();
    assert_eq!(changes.job_deletes, vec![named("stopped")]);
    assert!(
        changes.purges.iter().all(|key| key.job == named("stopped")) && !changes.purges.is_empty(),
        "its partition keys are purged in the same change set, before the record"
    );
    assert_eq!(state.job_count(), 0);
    // The name is free again.
    state.create_job(&named("done"), &spec).unwrap();
}
