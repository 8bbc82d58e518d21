//! glibc's malloc, tuned for the assigner's memory profile before the process does anything else.
//!
//! A round over 100,000 partitions allocates its inputs (change slices, placement inputs, the
//! pending and dirty sets) as large blocks and frees them when it ends. With glibc's defaults
//! those blocks come from the heap (the mmap threshold rises to 32 MiB after the first large
//! free), every runtime thread gets an arena of its own, and freed memory in the middle of a heap
//! is never returned: the process keeps the cold start's peak. `scale --workers 500` measured
//! 419 bytes of RSS per live partition at balance and 584 five seconds later, against a model of
//! 197 bytes (docs/benchmarks.md, "Assigner memory per live partition").
//!
//! The settings below send blocks of 64 KiB and more to their own mappings (returned on free),
//! trim the heap's top above 64 KiB, and cap the arenas at two: twelve such runs measured a
//! median of 315 at balance and 304 settled (235 and 227 since the model's table entry shrank).
//! `mallopt` would set them from inside, but it is an `unsafe` FFI call and the workspace forbids
//! `unsafe`; tunables are read once, when a process starts, so the binary re-executes itself
//! once with `GLIBC_TUNABLES` set (same pid, same arguments). An operator's own
//! `GLIBC_TUNABLES`, even an empty one, is kept as it is: the way to opt out.
//! docs/decisions/assigner-malloc-tunables.md records the choice.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// The variable glibc reads its tunables from at process start.
pub const TUNABLES_VARIABLE: &str = "GLIBC_TUNABLES";

/// What the assigner runs with when its environment names no tunables.
pub const ASSIGNER_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536:glibc.malloc.arena_max=2";

/// The tunables to re-execute with, given the current value of `GLIBC_TUNABLES`: none when it is
/// set (an operator's choice, or this process already re-executed) or when the C library is not
/// glibc.
pub fn tunables_to_apply(current: Option<&OsString>) -> Option<&'static str> {
    let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
    (glibc && current.is_none()).then_some(ASSIGNER_TUNABLES)
}

/// Replaces this process with itself under [`ASSIGNER_TUNABLES`] when [`tunables_to_apply`] says
/// so; returns only when nothing is to be done or the re-execution failed (then said on stderr:
/// the assigner works the same with glibc's defaults, only with a larger RSS). Call it first in
/// `main`, before any thread starts.
pub fn reexec_with_malloc_tunables() {
    let Some(tunables) = tunables_to_apply(std::env::var_os(TUNABLES_VARIABLE).as_ref()) else {
        return;
    };
    let executable = match std::env::current_exe() {
        Ok(executable) => executable,
        Err(error) => {
            eprintln!("elk-assigner: malloc settings not applied, no executable path ({error})");
            return;
        }
    };
    let mut arguments = std::env::args_os();
    let mut command = std::process::Command::new(executable);
    if let Some(name) = arguments.next() {
        command.arg0(name);
    }
    let error = command
        .args(arguments)
        .env(TUNABLES_VARIABLE, tunables)
        .exec();
    eprintln!("elk-assigner: malloc settings not applied, re-execution failed ({error})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_the_tunables_only_when_the_environment_has_none() {
        let expected =
            cfg!(all(target_os = "linux", target_env = "gnu")).then_some(ASSIGNER_TUNABLES);
        assert_eq!(tunables_to_apply(None), expected);
        assert_eq!(
            tunables_to_apply(Some(&OsString::new())),
            None,
            "an empty value opts out"
        );
        let operators = OsString::from("glibc.malloc.arena_max=8");
        assert_eq!(tunables_to_apply(Some(&operators)), None);
    }
}
