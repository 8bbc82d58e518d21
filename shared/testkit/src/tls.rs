//! Test certificates: a private CA, a server certificate for `localhost` / `127.0.0.1` and a client
//! certificate, written as PEM files to a temporary directory (removed on drop). Generated per
//! test, so no certificate is ever checked in.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// PEM files of a CA, a server and a client certificate.
#[derive(Debug)]
pub struct TestCertificates {
    dir: TempDir,
}

impl TestCertificates {
    /// Generates the CA and both certificates.
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("elk-tls-")
            .tempdir()
            .expect("temp dir for certificates");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name = name("ELK test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca.pem");

        let leaf = |file: &str, names: Vec<String>, purpose: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name = name(file);
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &ca).expect("leaf certificate");
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).expect("write");
            std::fs::write(
                dir.path().join(format!("{file}-key.pem")),
                key.serialize_pem(),
            )
            .expect("write key");
        };
        leaf(
            "server",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf(
            "client",
            vec!["elk-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client-key.pem")
    }

    /// A nats-server `tls { ... }` block with these certificates: TLS required for every
    /// client, and with `verify` a client certificate signed by the CA too.
    pub fn nats_server_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  \
             timeout: 5\n}}\n",
            self.server_cert().display(),
            self.server_key().display(),
            self.ca().display(),
        )
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
