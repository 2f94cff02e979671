//! The gRPC side of the console: one stream per host, which proves its key, sends its
//! holds up and gets back the signed decisions on those holds, and nothing else.

use std::{collections::HashSet, pin::Pin, sync::Arc, time::Duration};

use ed25519_dalek::{Signature, VerifyingKey};
use proto::v1::{
    ChainAnchor, Challenge, CloseReason, ConsoleMessage, EnrolRequest, EnrolResponse, Hello, HoldRaised,
    HostMessage, SignedDecision, Welcome,
    agent_service_server::{AgentService, AgentServiceServer},
    console_message, host_message,
};
use rand_core::{OsRng, RngCore as _};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    keys::Signer,
    store::{DecisionRequest, Event, Outcome, Raised, Store, StoreError},
    tls::{self, Authority},
};

/// How long a host has to answer the challenge with its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Anchors closer together than this on one stream are ignored: each is a database row.
const MIN_ANCHOR_INTERVAL: Duration = Duration::from_millis(500);
/// Most holds one stream may have waiting at once: a host cannot grow the console's memory
/// without bound. Holds past it are refused and time out on their host.
const MAX_AWAITING: usize = 65_536;
/// Longest hold id, host name, and other short strings a host may send.
const MAX_NAME: usize = 256;

/// One console replica: its store, its signing key and, over mutual TLS, its CA.
#[derive(Clone)]
pub struct Console {
    store: Store,
    signer: Arc<Signer>,
    tls: Option<Arc<Tls>>,
    /// The one host (name, key fingerprint) this console serves, if it serves only one.
    sole_host: Option<Arc<(String, String)>>,
}

/// What serving over mutual TLS needs.
pub struct Tls {
    pub authority: Authority,
    /// DNS names and IP addresses of the replica's server certificate.
    pub names: Vec<String>,
}

impl Console {
    /// A console that serves plaintext: hosts are known by the key of their first Hello.
    pub fn new(store: Store, signer: Signer) -> Self {
        Self { store, signer: Arc::new(signer), tls: None, sole_host: None }
    }

    /// Serves over mutual TLS instead: hosts enrol with a bootstrap token, then stream
    /// with the certificate they were issued.
    #[must_use]
    pub fn with_tls(self, tls: Tls) -> Self {
        Self { tls: Some(Arc::new(tls)), ..self }
    }

    /// Serves only `host` with the key `fingerprint` and refuses every other Hello: the
    /// console a daemon runs inside itself, on a port any local user can reach.
    #[must_use]
    pub fn serving_only(self, host: &str, fingerprint: &str) -> Self {
        Self { sole_host: Some(Arc::new((host.to_owned(), fingerprint.to_owned()))), ..self }
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_deref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The tonic service hosts connect to.
    pub fn service(&self) -> AgentServiceServer<Self> {
        AgentServiceServer::new(self.clone())
    }

    /// Decides a hold; the host it belongs to gets the signed decision through whichever
    /// replica it is connected to.
    pub async fn decide(&self, request: &DecisionRequest) -> Result<Outcome, StoreError> {
        let outcome = self.store.decide(&self.signer, request).await?;
        if let Outcome::Decided(_) = outcome {
            tracing::info!(host = request.host, hold = request.hold_id, verdict = ?request.verdict, by = request.decided_by, "decided");
        }
        Ok(outcome)
    }
}

/// What the console sends down one host's stream.
pub type ConsoleStream = Pin<Box<dyn Stream<Item = Result<ConsoleMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Console {
    type StreamStream = ConsoleStream;

    async fn stream(
        &self,
        request: Request<Streaming<HostMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let certificate = if self.tls.is_some() {
            let certificates = request.peer_certs().unwrap_or_default();
            let leaf = certificates
                .first()
                .ok_or_else(|| Status::unauthenticated("a client certificate is required: enrol first"))?;
            Some(tls::certificate_fingerprint(leaf))
        } else {
            None
        };
        let incoming = request.into_inner();
        let (out, out_rx) = mpsc::channel(256);
        let session = Session {
            console: self.clone(),
            out,
            awaiting: HashSet::new(),
            host: String::new(),
            host_key: None,
            anchored_at: None,
            certificate,
        };
        tokio::spawn(async move {
            let out = session.out.clone();
            if let Err(status) = session.run(incoming).await {
                tracing::warn!(?peer, error = %status.message(), "host stream ended");
                let _ = out.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn enrol(&self, request: Request<EnrolRequest>) -> Result<Response<EnrolResponse>, Status> {
        let Some(tls) = &self.tls else {
            return Err(Status::failed_precondition(
                "this console serves plaintext: there is nothing to enrol in",
            ));
        };
        let request = request.into_inner();
        if !valid_name(&request.host) {
            return Err(Status::invalid_argument(format!(
                "host name {:?} is not a valid name",
                request.host
            )));
        }
        let key = public_key(&request.public_key)?;
        let signature = Signature::from_slice(&request.signature)
            .map_err(|_| Status::invalid_argument("enrol: signature is not 64 bytes"))?;
        key.verify_strict(&proto::enrol_message(&request.token, &request.host), &signature)
            .map_err(|_| Status::unauthenticated("enrol: the signature does not prove the key"))?;
        let (certificate, fingerprint) = tls
            .authority
            .host_certificate(&request.host, &key)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.store
            .enrol(&request.host, &request.token, &host_client::keys::fingerprint(&key), &fingerprint)
            .await
            .map_err(|e| store_status(&e))?;
        tracing::info!(host = request.host, "host enrolled");
        Ok(Response::new(EnrolResponse { certificate }))
    }
}

/// One host's stream.
struct Session {
    console: Console,
    out: mpsc::Sender<Result<ConsoleMessage, Status>>,
    /// Holds raised on this stream whose decision has not been sent on it yet.
    awaiting: HashSet<String>,
    host: String,
    /// The key the host proved in its Hello: its anchors are signed with it.
    host_key: Option<VerifyingKey>,
    /// When this stream's latest anchor was taken in.
    anchored_at: Option<std::time::Instant>,
    /// SHA-256 of the client certificate the host presented (mutual TLS only).
    certificate: Option<String>,
}

fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::KeyMismatch { .. }
        | StoreError::NotEnrolled(_)
        | StoreError::CertificateMismatch(_)
        | StoreError::BadToken(_) => Status::permission_denied(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn public_key(bytes: &[u8]) -> Result<VerifyingKey, Status> {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or_else(|| Status::invalid_argument("public_key is not an Ed25519 key"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

/// Checks that `hello` proves possession of the key it names, over `challenge`.
fn check_hello(hello: &Hello, challenge: &[u8]) -> Result<VerifyingKey, Status> {
    if !valid_name(&hello.host) {
        return Err(Status::invalid_argument(format!("host name {:?} is not a valid name", hello.host)));
    }
    let key = public_key(&hello.public_key)?;
    if host_client::keys::fingerprint(&key) != hello.key_fingerprint {
        return Err(Status::invalid_argument("hello: key_fingerprint is not the SHA-256 of public_key"));
    }
    let signature = Signature::from_slice(&hello.signature)
        .map_err(|_| Status::invalid_argument("hello: signature is not 64 bytes"))?;
    key.verify_strict(&proto::hello_message(challenge, &hello.host), &signature).map_err(|_| {
        Status::unauthenticated(format!("hello from {}: bad signature over the challenge", hello.host))
    })?;
    Ok(key)
}

/// Why a hold cannot be taken in, if it cannot.
fn malformed(hold: &HoldRaised) -> Option<&'static str> {
    if !valid_name(&hold.id) {
        Some("its id is not a valid id")
    } else if hold.deadline_ms == 0 {
        Some("it has no deadline")
    } else {
        None
    }
}

impl Session {
    async fn send(&self, message: console_message::Message) -> Result<(), Status> {
        self.out
            .send(Ok(ConsoleMessage { message: Some(message) }))
            .await
            .map_err(|_| Status::cancelled("the host went away"))
    }

    async fn run(mut self, mut incoming: Streaming<HostMessage>) -> Result<(), Status> {
        let mut challenge = [0u8; 32];
        OsRng.fill_bytes(&mut challenge);
        self.send(console_message::Message::Challenge(Challenge { nonce: challenge.to_vec() })).await?;
        let first = tokio::time::timeout(HELLO_TIMEOUT, incoming.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello in time"))?;
        let Some(Ok(HostMessage { message: Some(host_message::Message::Hello(hello)) })) = first else {
            return Err(Status::invalid_argument("the first message must be a hello"));
        };
        self.host_key = Some(check_hello(&hello, &challenge)?);
        if let Some(sole) = &self.console.sole_host
            && (hello.host != sole.0 || hello.key_fingerprint != sole.1)
        {
            return Err(Status::permission_denied("this console serves only the host it runs on"));
        }
        self.console
            .store
            .host_connected(
                &hello.host,
                &hello.key_fingerprint,
                &hello.agent_version,
                self.certificate.as_deref(),
            )
            .await
            .map_err(|e| store_status(&e))?;
        self.host = hello.host;
        // Subscribed before Welcome: no decision made after the host hears Welcome is missed.
        let mut events = self.console.store.subscribe();
        let key_id = self.console.signer.key_id().to_owned();
        let anchored_records =
            self.console.store.anchored_records(&self.host).await.map_err(|e| store_status(&e))?;
        self.send(console_message::Message::Welcome(Welcome { key_id, anchored_records })).await?;
        tracing::info!(host = self.host, version = hello.agent_version, "host connected");
        loop {
            tokio::select! {
                received = incoming.next() => match received {
                    None => return Ok(()),
                    Some(Err(status)) => return Err(status),
                    Some(Ok(HostMessage { message: Some(message) })) => self.on_message(message).await?,
                    Some(Ok(HostMessage { message: None })) => {
                        return Err(Status::invalid_argument("empty message"));
                    }
                },
                event = events.recv() => match event {
                    Ok(Event::Decided { host, hold_id }) if host == self.host => self.deliver(&hold_id).await?,
                    Ok(Event::Decided { .. }) => {}
                    Ok(Event::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await?,
                    Err(broadcast::error::RecvError::Closed) => return Err(Status::unavailable("console shutting down")),
                },
            }
        }
    }

    async fn on_message(&mut self, message: host_message::Message) -> Result<(), Status> {
        match message {
            host_message::Message::Hello(_) => Err(Status::invalid_argument("a second hello")),
            host_message::Message::HoldRaised(hold) => {
                // Refused alone, not by ending the stream: the host would re-send it on every
                // reconnection. Unanswered, it times out on its host.
                if let Some(why) = malformed(&hold) {
                    tracing::warn!(host = self.host, hold = hold.id, why, "refused a malformed hold");
                    return Ok(());
                }
                match self.console.store.raise(&self.host, &hold).await.map_err(|e| store_status(&e))? {
                    Raised::New | Raised::Pending => {
                        if self.awaiting.len() >= MAX_AWAITING {
                            tracing::warn!(
                                host = self.host,
                                hold = hold.id,
                                "too many holds waiting on one stream: refused"
                            );
                        } else {
                            self.awaiting.insert(hold.id);
                        }
                    }
                    Raised::Decided(signed) => self.send_decision(signed).await?,
                    Raised::Finished(status) => {
                        tracing::info!(
                            host = self.host,
                            hold = hold.id,
                            status,
                            "host re-sent a finished hold"
                        );
                    }
                    Raised::NonceMismatch => {
                        tracing::warn!(
                            host = self.host,
                            hold = hold.id,
                            "host reused a hold id with another nonce: refused"
                        );
                    }
                }
                Ok(())
            }
            host_message::Message::Anchor(anchor) => self.on_anchor(&anchor).await,
            host_message::Message::Policies(report) => {
                if let Some(why) = crate::policies::malformed(&report) {
                    return Err(Status::invalid_argument(format!("policy report: {why}")));
                }
                self.console.store.report_policies(&self.host, &report).await.map_err(|e| store_status(&e))
            }
            host_message::Message::HoldClosed(closed) => {
                let reason = CloseReason::try_from(closed.reason).unwrap_or(CloseReason::Unspecified);
                self.awaiting.remove(&closed.id);
                self.console
                    .store
                    .close(&self.host, &closed.id, closed.nonce, reason.as_str_name())
                    .await
                    .map_err(|e| store_status(&e))
            }
        }
    }

    /// Keeps an anchor of the host's trail signed with the key of its Hello; a malformed or
    /// badly signed one ends the stream. At most two a second are kept (see [`MIN_ANCHOR_INTERVAL`]).
    async fn on_anchor(&mut self, anchor: &ChainAnchor) -> Result<(), Status> {
        let hash = |h: &str| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hash(&anchor.head)
            || (anchor.witness_records > 0 && !hash(&anchor.witness))
            || anchor.witness_records > anchor.records
        {
            return Err(Status::invalid_argument(
                "anchor: hashes are 64 hex digits, the witness within the trail",
            ));
        }
        if self.anchored_at.is_some_and(|at| at.elapsed() < MIN_ANCHOR_INTERVAL) {
            tracing::warn!(host = self.host, "anchors come faster than two a second: one ignored");
            return Ok(());
        }
        self.anchored_at = Some(std::time::Instant::now());
        let key = self.host_key.as_ref().ok_or_else(|| Status::internal("no host key"))?;
        let signature = Signature::from_slice(&anchor.signature)
            .map_err(|_| Status::invalid_argument("anchor: signature is not 64 bytes"))?;
        key.verify_strict(&proto::anchor_message(&self.host, anchor), &signature)
            .map_err(|_| Status::unauthenticated(format!("anchor from {}: bad signature", self.host)))?;
        if let Some(finding) =
            self.console.store.anchor(&self.host, anchor).await.map_err(|e| store_status(&e))?
        {
            tracing::error!(host = self.host, finding, "a host's audit trail changed after it was anchored");
        }
        Ok(())
    }

    async fn send_decision(&self, signed: SignedDecision) -> Result<(), Status> {
        self.send(console_message::Message::Decision(signed)).await
    }

    /// Sends the decision on `hold_id` if this stream is waiting for it.
    async fn deliver(&mut self, hold_id: &str) -> Result<(), Status> {
        if !self.awaiting.contains(hold_id) {
            return Ok(());
        }
        if let Some(signed) =
            self.console.store.decision(&self.host, hold_id).await.map_err(|e| store_status(&e))?
        {
            self.awaiting.remove(hold_id);
            self.send_decision(signed).await?;
        }
        Ok(())
    }

    /// Re-reads every hold this stream waits for, after events may have been lost.
    async fn resync(&mut self) -> Result<(), Status> {
        let waiting: Vec<String> = self.awaiting.iter().cloned().collect();
        for hold_id in waiting {
            self.deliver(&hold_id).await?;
        }
        Ok(())
    }
}
