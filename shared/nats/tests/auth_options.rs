//! Every authentication and TLS option of `NatsConfig` against a real nats-server configured for
//! it: the right secret connects, a wrong or missing one is refused with a clear error.

use elk_nats::{NatsConfig, NatsErrorKind, connect, report};
use elk_testkit::{NatsServer, TestCertificates};

async fn refused(config: &NatsConfig) -> String {
    let error = connect(config).await.expect_err("must be refused");
    assert_eq!(error.kind(), NatsErrorKind::Refused, "{}", report(&error));
    report(&error)
}

#[tokio::test]
async fn token_authentication() {
    let server = NatsServer::builder()
        .config("authorization { token: \"s3cret-token\" }\n")
        .start()
        .unwrap();
    let mut config = NatsConfig::new(server.url(), "token-test");
    config.token = Some("s3cret-token".into());
    connect(&config).await.unwrap();
    config.token = Some("wrong".into());
    let error = refused(&config).await;
    assert!(error.contains("authorization"), "{error}");
    config.token = None;
    refused(&config).await;
}

#[tokio::test]
async fn user_and_password_authentication() {
    let server = NatsServer::builder()
        .config("authorization { users: [ { user: ops, password: \"pa55\" } ] }\n")
        .start()
        .unwrap();
    let mut config = NatsConfig::new(server.url(), "password-test");
    config.user = Some("ops".into());
    config.password = Some("pa55".into());
    connect(&config).await.unwrap();
    config.password = Some("nope".into());
    refused(&config).await;
}

#[tokio::test]
async fn nkey_seed_authentication_gets_the_identity_s_own_inbox() {
    let key = nkeys::KeyPair::new_user();
    let server = NatsServer::builder()
        .config(format!(
            "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
            key.public_key()
        ))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", key.seed().unwrap())).unwrap();
    let mut config = NatsConfig::new(server.url(), "nkey-test");
    config.nkey_seed_file = Some(seed_file);
    assert_eq!(
        config.effective_inbox_prefix().unwrap(),
        format!("_INBOX.{}", key.public_key())
    );
    let client = connect(&config).await.unwrap();
    // A request round trip uses the identity's own inbox.
    let mut responder = client.subscribe("echo").await.unwrap();
    let echo = client.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        if let Some(message) = responder.next().await {
            let inbox = message.reply.unwrap();
            assert!(
                inbox
                    .as_str()
                    .starts_with(&format!("_INBOX.{}", key.public_key()))
            );
            echo.publish(inbox, message.payload).await.unwrap();
        }
    });
    let answer = client.request("echo", "hi".into()).await.unwrap();
    assert_eq!(answer.payload.as_ref(), b"hi");

    let other = nkeys::KeyPair::new_user();
    let other_file = dir.path().join("other.nk");
    std::fs::write(&other_file, other.seed().unwrap()).unwrap();
    config.nkey_seed_file = Some(other_file);
    refused(&config).await;
}

#[tokio::test]
async fn tls_with_a_private_ca_and_client_certificates() {
    let certs = TestCertificates::generate();
    let server = NatsServer::builder()
        .config(certs.nats_server_block(true))
        .start()
        .unwrap();
    let mut config = NatsConfig::new(server.url(), "tls-test").with_tls(certs.ca());
    config.tls_cert_file = Some(certs.client_cert());
    config.tls_key_file = Some(certs.client_key());
    connect(&config).await.unwrap();
    // Without the client certificate the handshake fails (retryable: nothing was refused by
    // auth, the connection never came up).
    config.tls_cert_file = None;
    config.tls_key_file = None;
    assert!(connect(&config).await.is_err());
    // Without the CA the server's certificate is not trusted.
    let untrusted =
        NatsConfig::new(server.url(), "tls-test").with_tls(TestCertificates::generate().ca());
    assert!(connect(&untrusted).await.is_err());
}

#[tokio::test]
async fn tls_required_refuses_a_plaintext_server() {
    let server = NatsServer::start();
    let mut config = NatsConfig::new(server.url(), "plain");
    connect(&config).await.unwrap();
    config.tls_required = true;
    assert!(connect(&config).await.is_err());
}
