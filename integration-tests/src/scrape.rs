//! Reading a live stack's HTTP endpoints in tests: a minimal HTTP/1.0 client (no dependency on an
//! HTTP client crate), samples out of Prometheus text, and `promtool check metrics`.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `address` with extra `headers`.
pub async fn http_get(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// The value of the sample whose name and labels are exactly `series` (e.g.
/// `elk_role_holder{role="assigner"}`), in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

/// Where promtool is: `PROMTOOL`, else `promtool` on the `PATH`.
fn promtool() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMTOOL") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
}

/// Runs `promtool check metrics` on `text` (what `source` served) and fails on any complaint —
/// lint findings included. Without promtool the check fails when `CI` is set (scripts/test
/// installs it: `scripts/ensure-tools.sh`), and is skipped with a warning otherwise.
pub fn promtool_check_metrics(source: &str, text: &str) -> anyhow::Result<()> {
    let Some(promtool) = promtool() else {
        if std::env::var_os("CI").is_some() {
            bail!(
                "promtool not found (PROMTOOL or PATH) and CI is set: install Debian's \
                 `prometheus` package (scripts/ensure-tools.sh does)"
            );
        }
        eprintln!("WARNING: promtool not found; `promtool check metrics` skipped for {source}");
        return Ok(());
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", promtool.display()))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("promtool stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || !complaints.trim().is_empty() {
        bail!(
            "promtool check metrics on {source}: {} {}\n--- metrics ---\n{text}",
            output.status,
            complaints.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_exact_series() {
        let text = "# TYPE a gauge\na{x=\"1\"} 2\na{x=\"10\"} 3.5\nb 7\n";
        assert_eq!(sample(text, "a{x=\"10\"}"), Some(3.5));
        assert_eq!(sample(text, "b"), Some(7.0));
        assert_eq!(sample(text, "a"), None);
    }

    #[test]
    fn promtool_complains_about_a_bad_counter_name() {
        if promtool().is_none() {
            // The observability test reports a missing promtool (and fails under CI).
            return;
        }
        let bad = "# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n";
        let error = promtool_check_metrics("a seeded mistake", bad).unwrap_err();
        assert!(error.to_string().contains("_total"), "{error}");
        let good =
            "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total 1\n";
        promtool_check_metrics("a clean sample", good).unwrap();
    }
}
