//! NATS authorization for ELK Coordinator: the permission model of every role ([`Role`],
//! [`Permissions`]), and the decentralized-JWT deployment behind `elkctl auth` ([`Deployment`]):
//! an operator, one account per namespace with a scoped signing key per role, the server
//! configuration and `.creds` files per user.
//!
//! Why decentralized JWTs with scoped signing keys: `docs/decisions/nats-authorization.md`. What
//! each role may do and why: `docs/security.md`.

mod deployment;
pub mod jwt;
mod roles;

pub use deployment::Deployment;
pub use roles::{NAME, Permissions, Role, SUBJECT, inbox_prefix};

use std::path::{Path, PathBuf};

/// Why an auth operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Jwt(String),
    #[error(
        "{dir} holds no ELK auth deployment (no operator.nk): create one with `elkctl auth init`"
    )]
    NoDeployment { dir: PathBuf },
    #[error(
        "namespace '{namespace}' has no account in {dir}: add it with `elkctl auth init \
         --namespace {namespace}`"
    )]
    UnknownNamespace { namespace: String, dir: PathBuf },
    #[error(
        "'{name}' cannot name a {role}: the name of a {role} is {means} ([A-Za-z0-9_-]{{1,64}})"
    )]
    BadName {
        role: Role,
        name: String,
        means: &'static str,
    },
}

impl AuthError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        AuthError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Nothing here is worth retrying: files, keys and names do not fix themselves.
impl elk_nats::Retryable for AuthError {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// A user's identity: its JWT and nkey seed (secret), as a `.creds` file holds them.
#[derive(Clone)]
pub struct Credentials {
    pub jwt: String,
    pub seed: String,
    pub public_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The `.creds` file text every NATS client reads.
    pub fn creds_file(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.jwt, self.seed
        )
    }

    /// Writes the `.creds` file to `path` (mode 0600).
    pub fn write(&self, path: &Path) -> Result<(), AuthError> {
        write_secret(path, &self.creds_file())
    }
}

/// Writes `text` to `path`, readable by its owner only.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| AuthError::io(parent, e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuthError::io(path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| AuthError::io(path, e))
}
