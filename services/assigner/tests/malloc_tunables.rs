//! The `elk-assigner` binary re-executes itself once, before anything else, under the glibc
//! malloc settings of `elk_assigner::malloc_tuning` (same pid, same arguments), and keeps an
//! operator's own `GLIBC_TUNABLES` — an empty one included — as it is.
//!
//! The process is pointed at a listener that accepts and never answers, so it stays up retrying
//! its connection while its environment is read from `/proc/<pid>/environ`.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use elk_assigner::malloc_tuning::{ASSIGNER_TUNABLES, TUNABLES_VARIABLE};
use elk_testkit::wait_until;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

/// The assigner process, killed on drop.
struct Assigner(Child);

impl Drop for Assigner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(nats: &TcpListener, tunables: Option<&str>) -> Assigner {
    let mut command = Command::new(env!("CARGO_BIN_EXE_elk-assigner"));
    command
        .arg("--nats-url")
        .arg(format!("nats://{}", nats.local_addr().unwrap()))
        .arg("--namespace")
        .arg("malloc-tunables")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove(TUNABLES_VARIABLE);
    if let Some(tunables) = tunables {
        command.env(TUNABLES_VARIABLE, tunables);
    }
    Assigner(command.spawn().unwrap())
}

/// `GLIBC_TUNABLES` in the process's current environment (`None` while it is not there).
fn tunables_of(assigner: &mut Assigner) -> Option<String> {
    assert!(
        assigner.0.try_wait().unwrap().is_none(),
        "the assigner exited"
    );
    let environ = std::fs::read(format!("/proc/{}/environ", assigner.0.id())).ok()?;
    let prefix = format!("{TUNABLES_VARIABLE}=");
    environ
        .split(|byte| *byte == 0)
        .map(String::from_utf8_lossy)
        .find_map(|entry| entry.strip_prefix(&prefix).map(str::to_owned))
}

/// Waits until `listener` has a connection: the process ran far enough to dial NATS.
async fn await_connection(listener: &TcpListener) {
    listener.set_nonblocking(true).unwrap();
    wait_until("the assigner's connection attempt", DEADLINE, || {
        let connected = listener.accept().is_ok();
        async move { connected }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_binary_runs_under_its_malloc_tunables_unless_the_environment_names_some() {
    // Nothing set: the same pid is soon running with the assigner's tunables. glibc may cut the
    // variable it exposes at the first `:` after reading it, so only the first setting is
    // compared whole.
    let nats = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut assigner = start(&nats, None);
    let first_setting = ASSIGNER_TUNABLES.split(':').next().unwrap();
    wait_until(
        "the assigner re-executed with its tunables",
        DEADLINE,
        || {
            let seen = tunables_of(&mut assigner);
            async move { seen.is_some_and(|seen| seen.starts_with(first_setting)) }
        },
    )
    .await
    .unwrap();
    drop(assigner);

    // An operator's value, and an empty one (the opt-out), are kept. Read once the process has
    // dialled NATS, well after the point where it would have re-executed.
    for preset in ["glibc.malloc.arena_max=8", ""] {
        let nats = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut assigner = start(&nats, Some(preset));
        await_connection(&nats).await;
        assert_eq!(tunables_of(&mut assigner).as_deref(), Some(preset));
    }
}
