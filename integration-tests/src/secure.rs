//! A secured deployment for scenario tests: a nats-server that requires TLS with client
//! certificates and decentralized JWT auth (operator, the namespace's account with a scoped
//! signing key per role), and per-role, per-name credentials issued on demand — exactly what
//! `elkctl auth` sets up for a real deployment.

use elk_auth::{Deployment, Role};
use elk_nats::NatsConfig;
use elk_testkit::{NatsServer, TestCertificates};
use elk_types::Namespace;
use std::path::PathBuf;
use tempfile::TempDir;

/// Certificates, the trust chain and a directory of issued `.creds` files.
pub struct SecureNats {
    pub certs: TestCertificates,
    pub deployment: Deployment,
    pub namespace: Namespace,
    dir: TempDir,
}

impl SecureNats {
    /// A fresh CA and certificates, and a deployment with `namespace`'s account.
    pub fn new(namespace: &Namespace) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("elk-auth-").tempdir()?;
        let mut deployment = Deployment::open_or_create(&dir.path().join("deployment"))?;
        deployment.add_namespace(namespace)?;
        Ok(Self {
            certs: TestCertificates::generate(),
            deployment,
            namespace: namespace.clone(),
            dir,
        })
    }

    /// The server configuration: the deployment's operator and accounts, TLS with verified
    /// client certificates.
    pub fn server_config(&self) -> anyhow::Result<String> {
        Ok(format!(
            "{}\n{}",
            self.deployment.server_config()?,
            self.certs.nats_server_block(true)
        ))
    }

    /// Starts a nats-server with [`SecureNats::server_config`].
    pub fn start_server(&self) -> anyhow::Result<NatsServer> {
        Ok(NatsServer::builder()
            .config(self.server_config()?)
            .start()?)
    }

    /// Issues credentials of `role` named `name` and writes them to a `.creds` file.
    pub fn creds(&self, role: Role, name: &str) -> anyhow::Result<PathBuf> {
        let credentials = self.deployment.issue(&self.namespace, role, name, None)?;
        let path = self.dir.path().join(format!(
            "{role}-{name}-{}.creds",
            &credentials.public_key[..8]
        ));
        credentials.write(&path)?;
        Ok(path)
    }

    /// The connection of `role` `name` to `url`: its own credentials, TLS with the test CA and
    /// the client certificate.
    pub fn config(&self, url: &str, role: Role, name: &str) -> anyhow::Result<NatsConfig> {
        Ok(self
            .tls_only(url, name)
            .with_credentials_file(self.creds(role, name)?))
    }

    /// TLS with the client certificate but no credentials (an anonymous client).
    pub fn tls_only(&self, url: &str, name: &str) -> NatsConfig {
        let mut config = NatsConfig::new(url, name).with_tls(self.certs.ca());
        config.tls_cert_file = Some(self.certs.client_cert());
        config.tls_key_file = Some(self.certs.client_key());
        config
    }
}
