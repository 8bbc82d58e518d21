//! `RoleSupervisor` against a real nats-server, with the role lease written by the test (no
//! election): promotion, demotion that awaits the term before the next one starts, restarts after
//! retryable failures, deposition, and giving the role up after a panic or a terminal error.

use bytes::Bytes;
use elk_nats::{
    CasOutcome, LeaderTerm, LeaderWork, NatsConfig, ProvisionConfig, Resources, RestartPolicy,
    Retryable, RoleSupervisor, TermEnd, cas_write, connect, provision, read_entry,
};
use elk_protocol::messages::{MemberRecord, MemberRef, RoleLease};
use elk_protocol::names::{ControlRole, Names};
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_testkit::{NatsServer, wait_until};
use elk_types::{Epoch, Generation, Incarnation, MemberId, Namespace};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(2);

/// What the scripted work does in one term.
#[derive(Debug, Clone, Copy)]
enum Act {
    RunUntilCancelled,
    FailRetryable,
    FailTerminal,
    Deposed,
    Panic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Started(Epoch, Incarnation),
    /// Sent by the task itself as the last thing it does after its cancel token fired.
    Stopped(Epoch),
}

#[derive(Debug, thiserror::Error)]
#[error("scripted failure (retryable: {0})")]
struct ScriptedError(bool);

impl Retryable for ScriptedError {
    fn is_retryable(&self) -> bool {
        self.0
    }
}

/// Plays one act per term, then runs until cancelled; reports what it does.
struct ScriptedWork {
    script: Mutex<VecDeque<Act>>,
    events: mpsc::UnboundedSender<Event>,
}

impl LeaderWork for ScriptedWork {
    type Error = ScriptedError;

    async fn lead(
        &self,
        term: LeaderTerm,
        cancel: CancellationToken,
    ) -> Result<TermEnd, ScriptedError> {
        let epoch = term.epoch();
        // Checked before reporting the start: the test changes the lease only after that.
        assert!(term.is_current(), "a term starts only while named");
        let _ = self
            .events
            .send(Event::Started(epoch, term.me().incarnation));
        let act = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Act::RunUntilCancelled);
        match act {
            Act::RunUntilCancelled => {
                cancel.cancelled().await;
                // A slow stop: the next term must still wait for it.
                tokio::task::yield_now().await;
                let _ = self.events.send(Event::Stopped(epoch));
                Ok(TermEnd::Cancelled)
            }
            Act::FailRetryable => Err(ScriptedError(true)),
            Act::FailTerminal => Err(ScriptedError(false)),
            Act::Deposed => Ok(TermEnd::Deposed),
            Act::Panic => panic!("scripted leader panic"),
        }
    }
}

struct Fixture {
    _server: NatsServer,
    resources: Resources,
    member_id: MemberId,
    events: mpsc::UnboundedReceiver<Event>,
    stop: CancellationToken,
    supervisor: tokio::task::JoinHandle<()>,
}

async fn start(script: &[Act]) -> Fixture {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "role-test"))
        .await
        .unwrap();
    let names = Names::new(Namespace::new("role").unwrap());
    let resources = provision(client, names, &ProvisionConfig::default())
        .await
        .unwrap();
    let (sender, events) = mpsc::unbounded_channel();
    let work = ScriptedWork {
        script: Mutex::new(script.iter().copied().collect()),
        events: sender,
    };
    let member_id = MemberId::new("replica-1").unwrap();
    let supervisor = RoleSupervisor::new(
        resources.clone(),
        member_id.clone(),
        ControlRole::Scaler,
        TTL,
        work,
    )
    .restart_policy(RestartPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    });
    let stop = CancellationToken::new();
    let run = supervisor.run(stop.clone());
    let supervisor = tokio::spawn(async move { run.await.expect("supervisor starts") });
    Fixture {
        _server: server,
        resources,
        member_id,
        events,
        stop,
        supervisor,
    }
}

impl Fixture {
    async fn incarnation(&self) -> Option<Incarnation> {
        let entry = read_entry(&self.resources.members, self.member_id.as_str())
            .await
            .ok()??;
        if entry.deleted {
            return None;
        }
        decode::<MemberRecord>(&entry.value)
            .ok()
            .map(|record| record.incarnation)
    }

    async fn joined(&self) -> MemberRef {
        wait_until("the replica joined", DEADLINE, || async {
            self.incarnation().await.is_some()
        })
        .await
        .unwrap();
        MemberRef {
            id: self.member_id.clone(),
            incarnation: self.incarnation().await.unwrap(),
        }
    }

    async fn name(&self, holder: Option<MemberRef>, epoch: u64) {
        let key = ControlRole::Scaler.lease_key();
        let lease = RoleLease {
            schema: SCHEMA_VERSION,
            holder,
            epoch: Epoch(epoch),
            generation: Generation(1),
        };
        let expected = read_entry(&self.resources.leases, key)
            .await
            .unwrap()
            .map(|entry| entry.revision);
        let outcome = cas_write(
            &self.resources.jetstream,
            &self.resources.leases,
            key,
            Bytes::from(encode(&lease)),
            expected,
            None,
        )
        .await
        .unwrap();
        assert!(matches!(outcome, CasOutcome::Written(_)), "{outcome:?}");
    }

    async fn next_event(&mut self) -> Event {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("an event in time")
            .expect("the work is alive")
    }

    async fn shut_down(self) {
        self.stop.cancel();
        self.supervisor.await.unwrap();
        let entry = read_entry(&self.resources.members, self.member_id.as_str())
            .await
            .unwrap();
        assert!(
            entry.is_none_or(|entry| entry.deleted),
            "the member key is deleted on shutdown"
        );
    }
}

fn other() -> MemberRef {
    MemberRef {
        id: MemberId::new("replica-2").unwrap(),
        incarnation: Incarnation(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_awaits_the_term_before_the_next_one_starts() {
    let mut fixture = start(&[]).await;
    let me = fixture.joined().await;
    fixture.name(Some(me.clone()), 1).await;
    assert_eq!(
        fixture.next_event().await,
        Event::Started(Epoch(1), me.incarnation)
    );
    // Named again under a new epoch: the old term has stopped before the new one starts.
    fixture.name(Some(me.clone()), 2).await;
    assert_eq!(fixture.next_event().await, Event::Stopped(Epoch(1)));
    assert_eq!(
        fixture.next_event().await,
        Event::Started(Epoch(2), me.incarnation)
    );
    fixture.name(Some(other()), 3).await;
    assert_eq!(fixture.next_event().await, Event::Stopped(Epoch(2)));
    // A lease naming my id with another incarnation is not mine.
    let stale = MemberRef {
        incarnation: Incarnation(me.incarnation.get() - 1),
        ..me.clone()
    };
    fixture.name(Some(stale), 4).await;
    fixture.name(Some(me.clone()), 5).await;
    assert_eq!(
        fixture.next_event().await,
        Event::Started(Epoch(5), me.incarnation)
    );
    fixture.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_restart_the_same_term_after_a_back_off() {
    let mut fixture = start(&[Act::FailRetryable, Act::FailRetryable]).await;
    let me = fixture.joined().await;
    fixture.name(Some(me.clone()), 1).await;
    for _ in 0..3 {
        assert_eq!(
            fixture.next_event().await,
            Event::Started(Epoch(1), me.incarnation),
            "restarted under the same epoch"
        );
    }
    assert_eq!(fixture.incarnation().await, Some(me.incarnation));
    fixture.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_term_is_not_restarted_until_a_new_epoch() {
    let mut fixture = start(&[Act::Deposed]).await;
    let me = fixture.joined().await;
    fixture.name(Some(me.clone()), 1).await;
    assert_eq!(
        fixture.next_event().await,
        Event::Started(Epoch(1), me.incarnation)
    );
    // The next start is the new epoch's, not a restart of epoch 1.
    fixture.name(Some(me.clone()), 2).await;
    assert_eq!(
        fixture.next_event().await,
        Event::Started(Epoch(2), me.incarnation)
    );
    fixture.shut_down().await;
}

/// A panic or a terminal error: the replica leaves at once, re-joins as a new incarnation only
/// after the lease moved to someone else, and can lead again later.
async fn gives_the_role_up_after(act: Act) {
    let mut fixture = start(&[act]).await;
    let me = fixture.joined().await;
    fixture.name(Some(me.clone()), 1).await;
    assert_eq!(
        fixture.next_event().await,
        Event::Started(Epoch(1), me.incarnation)
    );
    wait_until("the replica left the members bucket", DEADLINE, || async {
        fixture.incarnation().await.is_none()
    })
    .await
    .unwrap();
    fixture.name(Some(other()), 2).await;
    wait_until(
        "the replica re-joined as a new incarnation",
        DEADLINE,
        || async {
            fixture
                .incarnation()
                .await
                .is_some_and(|incarnation| incarnation != me.incarnation)
        },
    )
    .await
    .unwrap();
    let rejoined = fixture.joined().await;
    fixture.name(Some(rejoined.clone()), 3).await;
    assert_eq!(
        fixture.next_event().await,
        Event::Started(Epoch(3), rejoined.incarnation),
        "the new incarnation leads when named (the old term never restarted)"
    );
    fixture.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_task_gives_the_role_up() {
    gives_the_role_up_after(Act::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_error_gives_the_role_up() {
    gives_the_role_up_after(Act::FailTerminal).await;
}
