//! The real binaries as separate OS processes, for the benchmarks that must kill a component with
//! SIGKILL or attribute memory to it (`chaos`, `scale`, `memory`): finding the binaries (building
//! them first, so they match the source), spawning them with their output in a log file, killing
//! them, telling a process that was killed from one that exited by itself, and reading RSS.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::SystemTime;
use tokio::sync::{oneshot, watch};

pub(crate) const ELECTION: &str = "elk-election";
pub(crate) const ASSIGNER: &str = "elk-assigner";
pub(crate) const SCALER: &str = "elk-scaler";
/// The worker process of the multi-process benchmarks (`src/bin/elk-recording-worker.rs`).
pub(crate) const RECORDING_WORKER: &str = "elk-recording-worker";
const ALL: [&str; 4] = [ELECTION, ASSIGNER, SCALER, RECORDING_WORKER];

/// Where the binaries come from.
#[derive(Debug, Clone, clap::Args)]
pub struct BinaryArgs {
    /// Directory holding elk-election, elk-assigner, elk-scaler and elk-recording-worker
    /// [default: this executable's directory, after `cargo build` of them in its profile].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build` first (the binaries must already be next to this executable).
    #[arg(long)]
    no_build: bool,
}

/// The directory the benchmark's processes are started from.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Finds the binaries: `--bin-dir` as given, else this executable's directory, where cargo
    /// puts every binary of the workspace for one profile; there they are built first (a no-op
    /// when up to date) so a benchmark never runs a service older than itself.
    pub fn prepare(args: &BinaryArgs) -> anyhow::Result<Self> {
        let dir = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => {
                let exe = std::env::current_exe().context("this executable's path")?;
                let dir = exe.parent().context("executable directory")?.to_path_buf();
                if !args.no_build {
                    build_in_profile_of(&dir)?;
                }
                dir
            }
        };
        let binaries = Self { dir };
        for name in ALL {
            let path = binaries.path(name);
            if !path.is_file() {
                bail!(
                    "{} not found; build it (cargo build --release --bin {name}) or pass --bin-dir",
                    path.display()
                );
            }
        }
        Ok(binaries)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The name of the binaries' directory: the cargo profile they were built in (`debug`,
    /// `release`) when they come from a target directory.
    pub fn dir_name(&self) -> String {
        self.dir
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
    }
}

/// One benchmark over separate processes: logging, the binaries (built first unless told
/// otherwise) and a multi-thread runtime that `run` is driven on.
pub(crate) fn run_with_binaries<T, F>(
    args: &BinaryArgs,
    run: impl FnOnce(Binaries) -> F,
) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    crate::init_logging();
    let binaries = Binaries::prepare(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let outcome = runtime.block_on(run(binaries));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    outcome
}

/// Runs `cargo build` of the benchmark's binaries in the profile whose output directory is `dir`
/// (`target/release` → `--profile release`, `target/debug` → `--profile dev`).
fn build_in_profile_of(dir: &Path) -> anyhow::Result<()> {
    let profile = match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => bail!("cannot tell the cargo profile of {}", dir.display()),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    if !manifest.is_file() {
        // Not run from a checkout: use whatever is next to the executable.
        return Ok(());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building {} (profile {profile})", ALL.join(", "));
    let mut command = std::process::Command::new(cargo);
    command
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--profile", &profile]);
    for name in ALL {
        command.args(["--bin", name]);
    }
    // The output must land where this executable is: `<target>/<profile dir>`.
    if let Some(target) = dir.parent() {
        command.env("CARGO_TARGET_DIR", target);
    }
    let status = command.status().context("run cargo build")?;
    if !status.success() {
        bail!("cargo build of the benchmark's binaries failed ({status})");
    }
    Ok(())
}

/// How to start one process.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
}

/// A service replica `id` in `namespace` reaching NATS at `url`, logging warnings and errors to
/// `<dir>/<id>.log`; `with_args` adds flags (`--member-ttl 1s`).
pub(crate) fn service_spec(
    binaries: &Binaries,
    binary: &str,
    url: &str,
    namespace: &str,
    id: &str,
    dir: &Path,
) -> Spec {
    Spec {
        binary: binaries.path(binary),
        args: vec![
            "--nats-url".into(),
            url.to_owned(),
            "--namespace".into(),
            namespace.to_owned(),
            "--member-id".into(),
            id.to_owned(),
        ],
        env: vec![("RUST_LOG".into(), "warn".into())],
        log: dir.join(format!("{id}.log")),
    }
}

impl Spec {
    /// This spec with more arguments.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }
}

/// How a process ended.
#[derive(Debug, Clone)]
pub(crate) struct Exit {
    /// `exit status 1`, `signal: 9 (SIGKILL)`, ...
    pub status: String,
    /// The benchmark killed it (anything else is a crash of its own).
    pub killed: bool,
    pub at: SystemTime,
}

/// A running child process. Dropping it kills the process.
pub(crate) struct Process {
    pid: u32,
    kill: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Process {
    /// Starts `spec` (inside a tokio runtime). Variables `ELK_*` of the benchmark's own
    /// environment are not passed on: a process gets exactly the configuration of its spec.
    pub fn spawn(spec: &Spec) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("open {}", spec.log.display()))?;
        let mut command = tokio::process::Command::new(&spec.binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ELK_") {
                command.env_remove(key);
            }
        }
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("start {}", spec.binary.display()))?;
        let pid = child.id().context("the child has no pid")?;
        let (kill, killed) = oneshot::channel::<()>();
        let (report, exit) = watch::channel(None);
        tokio::spawn(async move {
            let (status, killed) = tokio::select! {
                status = child.wait() => (status, false),
                // A kill request, or the `Process` dropped.
                _ = killed => {
                    let _ = child.start_kill();
                    (child.wait().await, true)
                }
            };
            let status = match status {
                Ok(status) => status.to_string(),
                Err(error) => format!("unknown ({error})"),
            };
            report.send_replace(Some(Exit {
                status,
                killed,
                at: SystemTime::now(),
            }));
        });
        Ok(Self {
            pid,
            kill: Some(kill),
            exit,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the process ended, if it has.
    pub fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// SIGKILL, then waits until the process is gone. A process that had already exited by
    /// itself keeps that verdict.
    pub async fn kill(mut self) -> Exit {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().expect("checked"),
            Err(_) => Exit {
                status: "lost".to_owned(),
                killed: true,
                at: SystemTime::now(),
            },
        }
    }

    /// Resident set size now, in bytes (`VmRSS`); `None` once the process is gone.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid)
    }
}

/// `VmRSS` of process `pid`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A size field of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, `RssFile:`), in bytes.
pub(crate) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set() {
        let rss = rss_bytes(std::process::id()).expect("VmRSS of this process");
        assert!(rss > 100 * 1024, "{rss}");
    }
}
