//! Mutual TLS on loopback: a host enrols once with a bootstrap token, then streams with the
//! certificate it was issued; without it, with a stale one or as another host, it is refused.

use std::time::Duration;

use ed25519_dalek::Signer as _;
use host_client::{ClientError, ClientEvent, ClientTls};
use proto::v1::{EnrolRequest, HostMessage, Verdict, agent_service_client::AgentServiceClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::support::{
    Db, Running, TempDir, WAIT, connect_with, connected, hold, key, loopback, next_event, stored,
};

const HOUR: Duration = Duration::from_hours(1);

fn ca(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.0.join("ca.pem")).unwrap()
}

/// The first event after starting a client that is refused: its disconnection reason.
async fn refused(events: &mut tokio::sync::mpsc::Receiver<ClientEvent>) -> String {
    match tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap() {
        ClientEvent::Disconnected(reason) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

crate::both_databases!(a_host_enrols_with_a_token_then_streams_over_mutual_tls);

async fn a_host_enrols_with_a_token_then_streams_over_mutual_tls(db: Db) {
    let (console_key, host_key) = (key(1), key(2));
    let ca_dir = TempDir::new("ca");
    let running = Running::start_tls(&db.url(), &console_key, loopback(), &ca_dir.0);
    let (store, endpoint, ca) = (running.console.store().clone(), running.endpoint(), ca(&ca_dir));

    let token = store.issue_token("web-01", HOUR).await.unwrap();
    let wrong_host = host_client::enrol(&endpoint, &ca, "web-02", &token, &host_key).await;
    assert!(
        matches!(wrong_host, Err(ClientError::Enrol(ref s)) if s.code() == tonic::Code::PermissionDenied)
    );
    let certificate = host_client::enrol(&endpoint, &ca, "web-01", &token, &host_key).await.unwrap();
    let reused =
        host_client::enrol(&endpoint, &ca, "web-01", &token, &host_key).await.unwrap_err().to_string();
    assert!(reused.contains("bootstrap token refused for host web-01"), "{reused}");
    let expired = store.issue_token("web-01", Duration::ZERO).await.unwrap();
    assert!(host_client::enrol(&endpoint, &ca, "web-01", &expired, &host_key).await.is_err());

    let tls = ClientTls { ca: ca.clone(), certificate };
    let (host, mut events) = connect_with(&endpoint, "web-01", &host_key, &console_key, Some(tls));
    connected(&mut events).await;
    host.raise(hold("h1", 3));
    stored(&store, "web-01", "h1").await;
    let decision =
        running.console.decide(&crate::streams::request("web-01", "h1", Verdict::Approve, "bob")).await;
    assert!(matches!(decision, Ok(console::store::Outcome::Decided(_))), "{decision:?}");
    let ClientEvent::Decision(decision) = next_event(&mut events).await else { panic!("no decision") };
    assert_eq!((decision.hold_id.as_str(), decision.nonce), ("h1", 3));

    let audit: Vec<String> =
        store.audit_events().await.unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(audit.iter().filter(|t| *t == "enrolment_refused").count(), 3, "{audit:?}");
    store.verify_audit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_current_certificate_a_host_cannot_stream() {
    let db = Db::sqlite();
    let console_key = key(1);
    let ca_dir = TempDir::new("ca");
    let running = Running::start_tls(&db.url(), &console_key, loopback(), &ca_dir.0);
    let (store, endpoint, ca) = (running.console.store().clone(), running.endpoint(), ca(&ca_dir));
    let (web1, web2) = (key(2), key(3));
    let enrol = |host: &'static str, host_key| {
        let (store, endpoint, ca) = (store.clone(), endpoint.clone(), ca.clone());
        async move {
            let token = store.issue_token(host, HOUR).await.unwrap();
            host_client::enrol(&endpoint, &ca, host, &token, host_key).await.unwrap()
        }
    };
    let stale = enrol("web-01", &web1).await;
    let current = enrol("web-01", &web1).await;
    enrol("web-02", &web2).await;

    // TLS with no client certificate at all.
    let channel = Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = AgentServiceClient::new(channel);
    let refused_stream = raw.stream(tokio_stream::iter(Vec::<HostMessage>::new())).await.unwrap_err();
    assert_eq!(refused_stream.code(), tonic::Code::Unauthenticated, "{refused_stream:?}");

    // An enrolment whose signature is not by the key it asks a certificate for.
    let token = store.issue_token("web-03", HOUR).await.unwrap();
    let forged = EnrolRequest {
        host: "web-03".into(),
        token: token.clone(),
        public_key: key(4).verifying_key().to_bytes().to_vec(),
        signature: key(5).sign(&proto::enrol_message(&token, "web-03")).to_bytes().to_vec(),
    };
    let refused_enrol = raw.enrol(forged).await.unwrap_err();
    assert_eq!(refused_enrol.code(), tonic::Code::Unauthenticated, "{refused_enrol:?}");

    // The certificate issued before the host enrolled again.
    let old = ClientTls { ca: ca.clone(), certificate: stale };
    let (_h, mut events) = connect_with(&endpoint, "web-01", &web1, &console_key, Some(old));
    let reason = refused(&mut events).await;
    assert!(reason.contains("certificate other than the one it was issued"), "{reason}");

    // web-01's certificate and key, claiming to be web-02.
    let borrowed = ClientTls { ca: ca.clone(), certificate: current.clone() };
    let (_h, mut events) = connect_with(&endpoint, "web-02", &web1, &console_key, Some(borrowed));
    let reason = refused(&mut events).await;
    assert!(reason.contains("host web-02 is enrolled with key"), "{reason}");

    // Plaintext to a TLS console.
    let plain_endpoint = endpoint.replace("https://", "http://");
    let (_h, mut events) = connect_with(&plain_endpoint, "web-01", &web1, &console_key, None);
    refused(&mut events).await;

    // And the genuine one still works.
    let (_h, mut events) =
        connect_with(&endpoint, "web-01", &web1, &console_key, Some(ClientTls { ca, certificate: current }));
    connected(&mut events).await;
}

#[tokio::test]
async fn plaintext_is_refused_off_loopback() {
    let db = Db::sqlite();
    let console = db.console(&key(1)).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = console.serve(listener).await.unwrap_err().to_string();
    assert!(error.contains("plaintext is only allowed on loopback"), "{error}");
}
