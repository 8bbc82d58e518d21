//! Log output: `tracing` events on stderr, filtered by `RUST_LOG` (default `info`), with ANSI
//! colours only when stderr is a terminal (and `NO_COLOR` is unset), so log files and collectors
//! get plain text.

use std::io::IsTerminal;

/// Starts `tracing` output on stderr (once; later calls do nothing).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty()),
        ))
        .try_init();
}

fn colours_wanted(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, false));
        assert!(!colours_wanted(false, false));
        assert!(!colours_wanted(true, true));
    }
}
