//! The host's client against a hostile console on loopback that sends forged, replayed
//! and misbound decisions: only the one genuine decision for a pending hold gets through.

use std::pin::Pin;

use crate::support::{connect, hold, key, next_event};
use console::keys::Signer;
use ed25519_dalek::SigningKey;
use host_client::{ClientEvent, Rejection};
use proto::v1::{
    Challenge, ConsoleMessage, Decision, EnrolRequest, EnrolResponse, HostMessage, Scope, SignedDecision,
    Verdict, Welcome,
    agent_service_server::{AgentService, AgentServiceServer},
    console_message, host_message,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// A console that waits for the host's first hold, then sends `script`.
struct Scripted {
    script: Vec<SignedDecision>,
}

type Out = Pin<Box<dyn Stream<Item = Result<ConsoleMessage, Status>> + Send>>;

fn message(message: console_message::Message) -> ConsoleMessage {
    ConsoleMessage { message: Some(message) }
}

#[tonic::async_trait]
impl AgentService for Scripted {
    type StreamStream = Out;

    async fn stream(&self, request: Request<Streaming<HostMessage>>) -> Result<Response<Out>, Status> {
        let mut incoming = request.into_inner();
        let (out, rx) = mpsc::channel(64);
        let script = self.script.clone();
        tokio::spawn(async move {
            let challenge = Challenge { nonce: vec![7; 32] };
            out.send(Ok(message(console_message::Message::Challenge(challenge)))).await.unwrap();
            let mut welcomed = false;
            while let Some(Ok(HostMessage { message: Some(received) })) = incoming.next().await {
                match received {
                    host_message::Message::Hello(_) if !welcomed => {
                        welcomed = true;
                        let welcome = Welcome { key_id: String::new(), anchored_records: 0 };
                        out.send(Ok(message(console_message::Message::Welcome(welcome)))).await.unwrap();
                    }
                    host_message::Message::HoldRaised(_) => {
                        for signed in &script {
                            out.send(Ok(message(console_message::Message::Decision(signed.clone()))))
                                .await
                                .unwrap();
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn enrol(&self, _: Request<EnrolRequest>) -> Result<Response<EnrolResponse>, Status> {
        Err(Status::unimplemented("a scripted console enrols no one"))
    }
}

fn decision(host: &str, hold_id: &str, nonce: u64) -> Decision {
    Decision {
        hold_id: hold_id.into(),
        nonce,
        host: host.into(),
        verdict: Verdict::Approve.into(),
        scope: Scope::Once.into(),
        decided_by: "mallory".into(),
        ..Decision::default()
    }
}

fn signed_by(key: &SigningKey, decision: &Decision) -> SignedDecision {
    Signer::new(key.clone()).sign(decision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_misbound_decisions_are_refused() {
    let console_key = key(1);
    let attacker = key(9);
    let genuine = signed_by(&console_key, &decision("web-01", "h1", 77));

    // Signed by another key that claims the console's key id.
    let mut impersonated = signed_by(&attacker, &decision("web-01", "h1", 77));
    impersonated.key_id = genuine.key_id.clone();
    // The console's signature, over bytes changed afterwards (a deny turned into approve).
    let mut deny = decision("web-01", "h1", 77);
    deny.verdict = Verdict::Deny.into();
    let mut altered = signed_by(&console_key, &deny);
    altered.decision = genuine.decision.clone();
    let script = vec![
        signed_by(&attacker, &decision("web-01", "h1", 77)),
        impersonated,
        altered,
        signed_by(&console_key, &decision("web-02", "h1", 77)),
        signed_by(&console_key, &decision("web-01", "h1", 78)),
        signed_by(&console_key, &decision("web-01", "h2", 77)),
        genuine.clone(),
        genuine,
    ];
    let listener = tokio::net::TcpListener::bind(crate::support::loopback()).await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(Scripted { script }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let (host, mut events) = connect(&endpoint, "web-01", &key(2), &console_key);
    host.raise(hold("h1", 77));
    let key_id = host_client::keys::key_id(&console_key.verifying_key());
    let expected = [
        Rejection::UnknownKey(host_client::keys::key_id(&attacker.verifying_key())),
        Rejection::BadSignature(key_id.clone()),
        Rejection::BadSignature(key_id),
        Rejection::WrongHost("web-02".into()),
        Rejection::WrongNonce { hold_id: "h1".into(), expected: 77, got: 78 },
        Rejection::UnknownHold("h2".into()),
    ];
    for want in expected {
        match next_event(&mut events).await {
            ClientEvent::Rejected(got) => assert_eq!(got, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
    let ClientEvent::Decision(accepted) = next_event(&mut events).await else { panic!("genuine refused") };
    assert_eq!((accepted.hold_id.as_str(), accepted.nonce, accepted.verdict()), ("h1", 77, Verdict::Approve));
    match next_event(&mut events).await {
        ClientEvent::Rejected(Rejection::Replayed(id)) => assert_eq!(id, "h1"),
        other => panic!("replay got {other:?}"),
    }
}
