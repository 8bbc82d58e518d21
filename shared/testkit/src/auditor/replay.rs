//! The replay: turns a recorded event log into an [`AuditReport`] by applying the hold rule
//! (invariant 2) and the durable-progress rule (invariant 3) of the `auditor` module docs.
//!
//! Pure and synchronous: no NATS, no clock, no locks, so it is unit-tested on hand-built logs
//! below. [`AuditReport::from_events`] sorts the events by server time (exact ties: member
//! changes, then progress, then assignment records) and feeds them one by one to [`Replay`], which
//! tracks alive incarnations, the last applied `(epoch, seq)` per holder and the open holds per
//! partition; overlaps are resolved into [`Overlap`]s once every hold's end is known.

use super::events::{AuditEvent, AuditEventKind};
use super::report::{
    AuditReport, DurableCheckpoint, Hold, HoldEnd, Holder, LostCheckpoint, Overlap,
};
use elk_protocol::messages::{ProgressEvent, ProgressReport};
use elk_types::{Epoch, Incarnation, JobName, MemberId, PartitionId, PartitionLeaseToken, ViewSeq};
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

type HoldKey = (Holder, JobName, PartitionId, PartitionLeaseToken);

#[derive(Default)]
struct Replay {
    report: AuditReport,
    /// Alive incarnation per member id that has been seen (`None`: deleted or expired).
    members: HashMap<MemberId, Option<Incarnation>>,
    /// Every incarnation whose member put was seen. A member key keeps one revision: a put
    /// replaced before the watch delivered it is never seen, and its incarnation's records must
    /// still be audited (nats_durability: a re-grant to such an incarnation was ignored, its
    /// repeats "unexplained").
    seen_incarnations: HashSet<(MemberId, Incarnation)>,
    last_applied: HashMap<Holder, (Epoch, ViewSeq)>,
    /// Open holds by key → index into `report.holds`.
    open: HashMap<HoldKey, usize>,
    /// Open hold indices per partition.
    open_by_partition: HashMap<(JobName, PartitionId), Vec<usize>>,
    ended: HashSet<HoldKey>,
    /// Overlaps as (earlier, later, at).
    overlaps: Vec<(usize, usize, SystemTime)>,
    /// Tokens that already had a hold, per partition (first hold of a token checks durability).
    tokens_seen: HashSet<(JobName, PartitionId, PartitionLeaseToken)>,
    /// When each incarnation's lease runs out unless renewed: its last put + the put's TTL.
    lease_ends: HashMap<(MemberId, Incarnation), SystemTime>,
}

impl Replay {
    fn start_hold(&mut self, hold: Hold) {
        let key = (
            hold.holder.clone(),
            hold.job.clone(),
            hold.partition,
            hold.token,
        );
        if self.open.contains_key(&key) || self.ended.contains(&key) {
            return;
        }
        let partition = (hold.job.clone(), hold.partition);
        if self
            .tokens_seen
            .insert((hold.job.clone(), hold.partition, hold.token))
            && let Some(best) = self
                .report
                .checkpoints
                .get(&partition)
                .and_then(|cps| cps.iter().max_by_key(|cp| cp.last_done))
            && hold.resume_from <= best.last_done
        {
            self.report.lost_checkpoints.push(LostCheckpoint {
                job: hold.job.clone(),
                partition: hold.partition,
                hold: hold.clone(),
                checkpoint: best.last_done,
                checkpoint_by: best.holder.clone(),
                checkpoint_at: best.at,
            });
        }
        let index = self.report.holds.len();
        let open = self.open_by_partition.entry(partition).or_default();
        for &other in open.iter() {
            if self.report.holds[other].holder != hold.holder {
                self.overlaps.push((other, index, hold.from));
            }
        }
        open.push(index);
        self.open.insert(key, index);
        self.report.holds.push(hold);
        self.report.grants_seen += 1;
    }

    fn end_hold(&mut self, key: &HoldKey, at: SystemTime, end: HoldEnd) -> bool {
        self.ended.insert(key.clone());
        let Some(index) = self.open.remove(key) else {
            return false;
        };
        self.report.holds[index].until = Some((at, end));
        if let Some(open) = self.open_by_partition.get_mut(&(key.1.clone(), key.2)) {
            open.retain(|&i| i != index);
        }
        true
    }

    /// Ends the open holds of `member` by every incarnation but `keep` (an incarnation whose put
    /// was never seen can hold too, so the holder recorded as alive is not the only candidate).
    fn end_member_holds(
        &mut self,
        member: &MemberId,
        keep: Option<Incarnation>,
        at: SystemTime,
        end: HoldEnd,
    ) {
        let keys: Vec<HoldKey> = self
            .open
            .keys()
            .filter(|key| &key.0.worker == member && Some(key.0.incarnation) != keep)
            .cloned()
            .collect();
        for key in keys {
            // A lease that ran out before the key was seen gone ended the hold then: the worker
            // had fenced itself, and the election could drop it (see `LeaseTtls`).
            let lease_end = self
                .lease_ends
                .get(&(key.0.worker.clone(), key.0.incarnation))
                .copied()
                .filter(|lease_end| *lease_end < at);
            match lease_end {
                // An expiry comes a little after the lease's end anyway: still an expiry.
                Some(lease_end) if end == HoldEnd::MemberExpired => {
                    self.end_hold(&key, lease_end, end.clone())
                }
                Some(lease_end) => self.end_hold(&key, lease_end, HoldEnd::LeaseRanOut),
                None => self.end_hold(&key, at, end.clone()),
            };
        }
    }

    fn holds(&self, key: &HoldKey) -> bool {
        self.open.contains_key(key)
    }

    fn apply(&mut self, event: AuditEvent) {
        let at = event.at;
        let expired = matches!(event.kind, AuditEventKind::MemberExpired { .. });
        match event.kind {
            AuditEventKind::MemberPut {
                member,
                incarnation,
                ttl,
            } => {
                match ttl {
                    Some(ttl) => self
                        .lease_ends
                        .insert((member.clone(), incarnation), at + ttl),
                    None => self.lease_ends.remove(&(member.clone(), incarnation)),
                };
                self.members.insert(member.clone(), Some(incarnation));
                self.seen_incarnations.insert((member.clone(), incarnation));
                let end = HoldEnd::Replaced { by: incarnation };
                self.end_member_holds(&member, Some(incarnation), at, end);
            }
            AuditEventKind::MemberDeleted { member } | AuditEventKind::MemberExpired { member } => {
                let end = if expired {
                    self.report.expiries_seen += 1;
                    HoldEnd::MemberExpired
                } else {
                    self.report.member_deletes_seen += 1;
                    HoldEnd::MemberDeleted
                };
                self.members.insert(member.clone(), None);
                self.end_member_holds(&member, None, at, end);
            }
            AuditEventKind::Assignment { worker, record } => {
                let holder = Holder {
                    worker: worker.clone(),
                    incarnation: record.incarnation,
                };
                // Alive: the current incarnation, or one whose put was never seen and that is newer
                // than the current one (incarnations grow; a never-seen older one was replaced).
                let unseen = !self
                    .seen_incarnations
                    .contains(&(worker.clone(), record.incarnation));
                let current = self.members.get(&worker).copied();
                let newer_unseen =
                    unseen && current.is_some_and(|c| c.is_none_or(|c| record.incarnation > c));
                let alive = match current {
                    None => true,
                    Some(current) => current == Some(record.incarnation) || newer_unseen,
                };
                if newer_unseen {
                    // Its put must have happened: the same as seeing it now.
                    self.members
                        .insert(worker.clone(), Some(record.incarnation));
                    self.seen_incarnations
                        .insert((worker.clone(), record.incarnation));
                    let end = HoldEnd::Replaced {
                        by: record.incarnation,
                    };
                    self.end_member_holds(&worker, Some(record.incarnation), at, end);
                }
                let version = (record.epoch, record.seq);
                let fresh = self
                    .last_applied
                    .get(&holder)
                    .is_none_or(|last| version > *last);
                if !alive || !fresh {
                    self.report.records_ignored += 1;
                    return;
                }
                self.last_applied.insert(holder.clone(), version);
                for grant in record.grants {
                    self.start_hold(Hold {
                        holder: holder.clone(),
                        job: grant.job,
                        partition: grant.partition,
                        token: grant.token,
                        range: grant.range,
                        resume_from: grant.resume_from,
                        epoch: record.epoch,
                        from: at,
                        until: None,
                    });
                }
            }
            AuditEventKind::Progress(report) => self.apply_progress(at, report),
        }
    }

    fn apply_progress(&mut self, at: SystemTime, report: ProgressReport) {
        let holder = Holder {
            worker: report.worker,
            incarnation: report.incarnation,
        };
        let key: HoldKey = (holder, report.job, report.partition, report.token);
        let held = self.holds(&key);
        let range_end = self
            .open
            .get(&key)
            .map(|&i| self.report.holds[i].range.last());
        let (durable, end) = match &report.event {
            ProgressEvent::Checkpoint { last_done } => {
                self.report.checkpoints_seen += 1;
                (Some(*last_done), None)
            }
            ProgressEvent::Completed => {
                self.report.completions_seen += 1;
                (range_end, Some(HoldEnd::Completed))
            }
            ProgressEvent::Failed { last_done, .. } => {
                self.report.failures_seen += 1;
                (
                    *last_done,
                    Some(HoldEnd::Failed {
                        last_done: *last_done,
                    }),
                )
            }
            ProgressEvent::Released { last_done } => {
                self.report.releases_seen += 1;
                (
                    *last_done,
                    Some(HoldEnd::Released {
                        last_done: *last_done,
                    }),
                )
            }
        };
        if !held {
            self.report.unheld_reports += 1;
        } else if let Some(last_done) = durable {
            self.report
                .checkpoints
                .entry((key.1.clone(), key.2))
                .or_default()
                .push(DurableCheckpoint {
                    at,
                    holder: key.0.clone(),
                    token: key.3,
                    last_done,
                });
        }
        if let Some(end) = end {
            self.end_hold(&key, at, end);
        }
    }
}

impl AuditReport {
    /// Replays `events` (any order; sorted here by server time) under the hold rule of the module
    /// docs.
    pub fn from_events(mut events: Vec<AuditEvent>) -> AuditReport {
        events.sort_by_key(|event| (event.at, event.kind.rank(), event.seq));
        let mut replay = Replay::default();
        replay.report.origin = events.first().map(|event| event.at);
        replay.report.settled = true;
        for event in events {
            replay.apply(event);
        }
        let Replay {
            mut report,
            overlaps,
            ..
        } = replay;
        report.overlaps = overlaps
            .into_iter()
            // An earlier hold whose end was placed at its lease's end can stop before the later
            // one started: no overlap.
            .filter(|(earlier, later, _)| {
                report.holds[*earlier]
                    .until
                    .as_ref()
                    .is_none_or(|(until, _)| *until > report.holds[*later].from)
            })
            .map(|(earlier, later, at)| {
                let earlier = report.holds[earlier].clone();
                let later = report.holds[later].clone();
                let until = match (&earlier.until, &later.until) {
                    (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
                    (Some((a, _)), None) | (None, Some((a, _))) => Some(*a),
                    (None, None) => None,
                };
                Overlap {
                    job: earlier.job.clone(),
                    partition: earlier.partition,
                    earlier,
                    later,
                    at,
                    until,
                }
            })
            .collect();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::SCHEMA_VERSION;
    use elk_protocol::messages::AssignmentRecord;
    use elk_protocol::messages::Grant;
    use elk_types::IdRange;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn id(name: &str) -> MemberId {
        MemberId::new(name).unwrap()
    }

    fn job() -> JobName {
        JobName::new("job").unwrap()
    }

    fn put(ms: u64, member: &str, incarnation: u64) -> AuditEvent {
        AuditEvent {
            at: at(ms),
            seq: ms,
            kind: AuditEventKind::MemberPut {
                member: id(member),
                incarnation: Incarnation(incarnation),
                ttl: None,
            },
        }
    }

    fn record(
        ms: u64,
        worker: &str,
        incarnation: u64,
        (epoch, seq): (u64, u64),
        grants: &[(u64, u64, u64)],
    ) -> AuditEvent {
        AuditEvent {
            at: at(ms),
            seq: ms,
            kind: AuditEventKind::Assignment {
                worker: id(worker),
                record: AssignmentRecord {
                    schema: SCHEMA_VERSION,
                    incarnation: Incarnation(incarnation),
                    epoch: Epoch(epoch),
                    seq: ViewSeq(seq),
                    grants: grants
                        .iter()
                        .map(|&(partition, token, resume_from)| Grant {
                            job: job(),
                            partition: PartitionId(partition),
                            range: IdRange::new(partition * 100 - 99, partition * 100).unwrap(),
                            resume_from,
                            token: PartitionLeaseToken(token),
                            traceparent: None,
                            unsampled: false,
                        })
                        .collect(),
                    drain: false,
                    revoking: Vec::new(),
                    progress_batches: false,
                },
            },
        }
    }

    fn progress(
        ms: u64,
        worker: &str,
        incarnation: u64,
        (partition, token): (u64, u64),
        event: ProgressEvent,
    ) -> AuditEvent {
        AuditEvent {
            at: at(ms),
            seq: ms,
            kind: AuditEventKind::Progress(ProgressReport {
                schema: SCHEMA_VERSION,
                worker: id(worker),
                incarnation: Incarnation(incarnation),
                job: job(),
                partition: PartitionId(partition),
                token: PartitionLeaseToken(token),
                event,
            }),
        }
    }

    #[test]
    fn a_rejoin_as_a_new_incarnation_ends_the_old_holds() {
        let report = AuditReport::from_events(vec![
            put(0, "a", 1),
            put(1, "b", 1),
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            put(20, "a", 2),
            record(30, "b", 1, (1, 1), &[(1, 101, 1)]),
        ]);
        report.assert_no_overlap();
        assert_eq!(
            report.holds[0].until,
            Some((at(20), HoldEnd::Replaced { by: Incarnation(2) }))
        );
        // The old incarnation was not cleanly handed back: partition 1 may repeat from 1.
        let windows = report.repeat_windows(&job());
        assert_eq!(windows.len(), 1);
        assert_eq!((windows[0].first_id, windows[0].last_id), (1, 100));
    }

    fn put_with_ttl(ms: u64, member: &str, incarnation: u64, ttl_ms: u64) -> AuditEvent {
        let mut event = put(ms, member, incarnation);
        if let AuditEventKind::MemberPut { ttl, .. } = &mut event.kind {
            *ttl = Some(Duration::from_millis(ttl_ms));
        }
        event
    }

    #[test]
    fn a_lease_that_ran_out_before_its_key_was_seen_removed_ends_the_holds_then() {
        // a#1 renews at 0 and 500 (TTL 2 s) and stops: its lease ends at 2,500. The server
        // removes the key late and the watch never sees it; a#2's put at 6,000 replaces it.
        // b's grant at 4,000 comes after the lease ran out: no overlap.
        let events = |ttl: Option<u64>| {
            let put_a = |ms| match ttl {
                Some(ttl) => put_with_ttl(ms, "a", 1, ttl),
                None => put(ms, "a", 1),
            };
            vec![
                put_a(0),
                put(1, "b", 1),
                record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
                put_a(500),
                record(4_000, "b", 1, (2, 1), &[(1, 101, 1)]),
                put(6_000, "a", 2),
            ]
        };
        let report = AuditReport::from_events(events(Some(2_000)));
        report.assert_no_overlap();
        assert_eq!(
            report.holds[0].until,
            Some((at(2_500), HoldEnd::LeaseRanOut))
        );
        // Without a known TTL the hold lasts until the key is seen replaced: an overlap.
        let report = AuditReport::from_events(events(None));
        assert_eq!(report.overlaps.len(), 1);
        assert_eq!(
            report.holds[0].until,
            Some((at(6_000), HoldEnd::Replaced { by: Incarnation(2) }))
        );
        // A key seen removed before its lease ran out ends the hold at the removal.
        let report = AuditReport::from_events(vec![
            put_with_ttl(0, "a", 1, 2_000),
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            put(1_000, "a", 2),
        ]);
        assert_eq!(
            report.holds[0].until,
            Some((at(1_000), HoldEnd::Replaced { by: Incarnation(2) }))
        );
    }

    #[test]
    fn records_of_an_incarnation_whose_put_was_never_seen_are_audited() {
        // a#2's put was replaced by a#3's before the watch delivered it.
        let report = AuditReport::from_events(vec![
            put(0, "a", 1),
            put(1, "b", 1),
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            record(20, "a", 2, (1, 1), &[(2, 200, 1)]),
            record(25, "a", 1, (1, 2), &[(3, 300, 1)]),
            put(30, "a", 3),
            record(40, "b", 1, (1, 1), &[(2, 201, 1)]),
        ]);
        report.assert_no_overlap();
        assert_eq!(
            report.grants_seen, 3,
            "a#2's grant is audited, a#1's late one not"
        );
        let a2 = &report.holds[1];
        assert_eq!(a2.holder.incarnation, Incarnation(2));
        assert_eq!(
            a2.until,
            Some((at(30), HoldEnd::Replaced { by: Incarnation(3) })),
            "ended by the next put, though a#2 was never the recorded incarnation"
        );
    }

    #[test]
    fn stale_records_are_ignored_and_events_are_replayed_in_server_time_order() {
        // Given out of order: sorting by server time matters.
        let report = AuditReport::from_events(vec![
            record(40, "b", 1, (2, 1), &[(1, 201, 51)]),
            put(0, "a", 1),
            put(1, "b", 1),
            record(10, "a", 1, (2, 5), &[(1, 200, 1)]),
            progress(
                20,
                "a",
                1,
                (1, 200),
                ProgressEvent::Released {
                    last_done: Some(50),
                },
            ),
            // An older epoch's late write granting it again: ignored.
            record(30, "a", 1, (1, 9), &[(1, 300, 1)]),
            // Same (epoch, seq) again: ignored too.
            record(35, "a", 1, (2, 5), &[(1, 301, 1)]),
        ]);
        report.assert_no_overlap();
        report.assert_durable_progress();
        assert_eq!(report.records_ignored, 2);
        assert_eq!(report.grants_seen, 2);
    }

    #[test]
    fn records_for_never_seen_members_count_as_held() {
        let report = AuditReport::from_events(vec![
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            record(20, "b", 1, (1, 1), &[(1, 101, 1)]),
        ]);
        assert_eq!(report.overlaps.len(), 1);
        let text = std::panic::catch_unwind(|| report.assert_no_overlap())
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(
            text.contains("from +0.010s to the end of the audit"),
            "{text}"
        );
        assert!(
            text.contains("granted to b (incarnation 1) token 101"),
            "{text}"
        );
    }

    #[test]
    fn a_failure_allows_repetition_after_its_checkpoint_only() {
        let report = AuditReport::from_events(vec![
            put(0, "a", 1),
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            progress(
                20,
                "a",
                1,
                (1, 100),
                ProgressEvent::Checkpoint { last_done: 40 },
            ),
            progress(
                30,
                "a",
                1,
                (1, 100),
                ProgressEvent::Failed {
                    error: "boom".into(),
                    last_done: Some(40),
                    permanent: false,
                },
            ),
            record(40, "a", 1, (1, 2), &[(1, 101, 41)]),
            progress(50, "a", 1, (1, 101), ProgressEvent::Completed),
        ]);
        report.assert_no_overlap();
        report.assert_durable_progress();
        assert_eq!(report.failures_seen, 1);
        assert_eq!(
            report.checkpoints_of(&job(), PartitionId(1)),
            vec![40, 40, 100]
        );
        let mut counts = vec![1u32; 100];
        counts[40..60].fill(2);
        report.assert_bounded_repetition(&job(), 1, &counts);
        counts[39] = 2;
        let repetition = report.repetition(&job(), 1, &counts);
        assert_eq!(repetition.unexplained.first_ranges, vec![(40, 40)]);
    }
}
