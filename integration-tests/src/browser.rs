//! Headless Chromium for tests of the status page: the DOM after the page's scripts ran
//! (`--dump-dom` with a virtual time budget), and screenshots. The binary is `CHROMIUM`, else
//! `chromium` (or `chromium-browser`, `google-chrome`) on the `PATH`; without one, the caller fails
//! when `CI` is set (scripts/ensure-tools.sh installs Debian's `chromium`) and is told to skip
//! otherwise.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest a Chromium run may take (a cold start on a busy machine takes a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A Chromium binary to drive.
#[derive(Debug, Clone)]
pub struct Chromium {
    binary: PathBuf,
}

impl Chromium {
    /// The browser, `Ok(None)` when there is none and `CI` is unset (the caller skips, saying
    /// so), an error when there is none under CI.
    pub fn find() -> anyhow::Result<Option<Self>> {
        if let Some(binary) = std::env::var_os("CHROMIUM") {
            return Ok(Some(Self {
                binary: PathBuf::from(binary),
            }));
        }
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path).find_map(|dir| {
                ["chromium", "chromium-browser", "google-chrome"]
                    .iter()
                    .map(|name| dir.join(name))
                    .find(|candidate| candidate.is_file())
            })
        });
        match found {
            Some(binary) => Ok(Some(Self { binary })),
            None if std::env::var_os("CI").is_some() => bail!(
                "no Chromium (CHROMIUM or chromium on the PATH) and CI is set: install Debian's \
                 `chromium` package (scripts/ensure-tools.sh does)"
            ),
            None => {
                eprintln!("WARNING: no Chromium found; the status page's browser check is skipped");
                Ok(None)
            }
        }
    }

    /// The DOM of `url` after its scripts ran for `budget` of virtual time (timers advance, the
    /// page's fetches complete in real time meanwhile).
    pub async fn dump_dom(&self, url: &str, budget: Duration) -> anyhow::Result<String> {
        let budget = format!("--virtual-time-budget={}", budget.as_millis());
        let output = self.run(&[&budget, "--dump-dom", url]).await?;
        Ok(output)
    }

    /// A PNG of `url` at `width`×`height` after `budget` of virtual time.
    pub async fn screenshot(
        &self,
        url: &str,
        path: &Path,
        (width, height): (u32, u32),
        budget: Duration,
    ) -> anyhow::Result<()> {
        let budget = format!("--virtual-time-budget={}", budget.as_millis());
        let size = format!("--window-size={width},{height}");
        let target = format!("--screenshot={}", path.display());
        self.run(&[&budget, &size, "--hide-scrollbars", &target, url])
            .await?;
        anyhow::ensure!(
            path.is_file(),
            "no screenshot written to {}",
            path.display()
        );
        Ok(())
    }

    /// Runs the browser headless with the flags that work on the project's machines (no sandbox
    /// as root, no GPU, no network but the page's own, a throw-away profile); returns stdout.
    async fn run(&self, arguments: &[&str]) -> anyhow::Result<String> {
        let profile = tempfile::tempdir().context("a profile directory")?;
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(arguments)
            .kill_on_drop(true);
        let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
            .await
            .with_context(|| {
                format!(
                    "{} did not finish within {RUN_TIMEOUT:?}",
                    self.binary.display()
                )
            })?
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !output.status.success() {
            bail!(
                "{} {arguments:?}: {}\n{}",
                self.binary.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
