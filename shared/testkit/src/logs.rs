//! Logs of the services a test runs in process, captured by the test harness: printed only when
//! the test fails, so a failure under CI load says what the services saw (a timed-out wait alone
//! does not). `ELK_TEST_LOG` sets the filter (`RUST_LOG` syntax; default `warn`, `off` for none).

use std::io::Write;

/// Installs the capturing subscriber once per process; later calls (and processes that already
/// installed their own subscriber, like `elk-bench`) keep the first one.
pub fn capture_service_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("ELK_TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(|| CapturedStderr)
        .with_thread_names(true)
        .try_init();
}

/// Writes through `eprint!`, which the test harness captures (a plain `std::io::stderr()` handle
/// bypasses the capture). Outside a test it is stderr, so a benchmark's JSON on stdout stays clean.
struct CapturedStderr;

impl Write for CapturedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        eprint!("{}", String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
