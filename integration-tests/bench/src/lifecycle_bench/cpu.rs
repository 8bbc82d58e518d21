//! CPU accounting from `/proc`: the nats-server child, the assigner's runtime threads (named
//! [`ASSIGNER_THREAD`]), the rest of this process (workers, election, the bench's own sampler),
//! and the whole machine. Linux only; on other systems every figure reads 0.

use std::path::Path;
use std::time::Instant;

/// Name prefix of the threads of the assigner's dedicated runtime.
pub(crate) const ASSIGNER_THREAD: &str = "elk-assigner";
/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on every Linux configuration in use).
const TICKS_PER_SECOND: f64 = 100.0;

/// Cumulative CPU ticks at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSnapshot {
    pub at: Instant,
    nats: u64,
    assigner: u64,
    rest: u64,
    machine_busy: u64,
    machine_total: u64,
}

/// CPU used between two snapshots, in cores (1.0 = one core busy all the time).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    pub nats_server: f64,
    pub assigner: f64,
    pub workers: f64,
    /// Every process on the machine (other builds included), in cores.
    pub machine: f64,
}

impl CpuSnapshot {
    pub fn take(nats_pid: Option<u32>) -> Self {
        let at = Instant::now();
        let nats = nats_pid
            .and_then(|pid| process_ticks(&format!("/proc/{pid}/stat")))
            .unwrap_or(0);
        let (mut assigner, mut rest) = (0, 0);
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let path = task.path();
                let Some((comm, ticks)) = thread_ticks(&path) else {
                    continue;
                };
                if comm.starts_with(ASSIGNER_THREAD) {
                    assigner += ticks;
                } else {
                    rest += ticks;
                }
            }
        }
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        Self {
            at,
            nats,
            assigner,
            rest,
            machine_busy,
            machine_total,
        }
    }

    /// CPU used from `earlier` to `self`.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuUse {
        let seconds = (self.at - earlier.at).as_secs_f64().max(1e-9);
        let cores =
            |now: u64, then: u64| now.saturating_sub(then) as f64 / TICKS_PER_SECOND / seconds;
        let total = self.machine_total.saturating_sub(earlier.machine_total) as f64;
        let busy = self.machine_busy.saturating_sub(earlier.machine_busy) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        CpuUse {
            nats_server: cores(self.nats, earlier.nats),
            assigner: cores(self.assigner, earlier.assigner),
            workers: cores(self.rest, earlier.rest),
            machine: if total > 0.0 {
                busy / total * cpus
            } else {
                0.0
            },
        }
    }
}

/// `utime + stime` of one `/proc/.../stat` file.
pub(crate) fn process_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    stat_ticks(&stat).map(|(_, ticks)| ticks)
}

fn thread_ticks(task: &Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    stat_ticks(&stat)
}

/// `(comm, utime + stime)` from a stat line: `pid (comm) state ppid ... utime stime ...`; the
/// comm may hold spaces and parentheses, so fields are counted after the last `)`.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state is field 3 of the line, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// `(busy, total)` jiffies of the whole machine from the `cpu` line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The nats-server child of this process started with `store_dir` (the one `Stack` runs).
pub(crate) fn find_nats_server(store_dir: &Path) -> Option<u32> {
    let me = std::process::id();
    let store = store_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let parent = stat
            .rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent != Some(me) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&store) {
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_comms_parse() {
        let line = "42 (tokio (x) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(stat_ticks(line), Some(("tokio (x) 1".to_owned(), 300)));
    }
}
