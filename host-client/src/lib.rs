//! The host's end of the console protocol, used by the agent's console link and by the
//! console's own tests: enrolment, the stream that sends holds and receives decisions,
//! handing over only those signed by a trusted console key and bound to a hold this host
//! is waiting on; and the key files and key names both ends share ([`keys`]).

pub mod keys;

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use ed25519_dalek::{
    Signature, Signer as _, SigningKey, VerifyingKey,
    pkcs8::{EncodePrivateKey as _, spki::der::pem::LineEnding},
};
use prost::Message as _;
use proto::v1::{
    ChainAnchor, Decision, EnrolRequest, Hello, HoldClosed, HoldRaised, HostMessage, PolicyReport, Scope,
    SignedDecision, Verdict, agent_service_client::AgentServiceClient, console_message, host_message,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// First wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Decided holds remembered, to tell a replayed decision from one for an unknown hold.
const DECIDED_MEMORY: usize = 4096;
/// Closures kept while the console is unreachable, sent when it is back.
const MAX_UNSENT_CLOSURES: usize = 4096;

pub struct ClientConfig {
    /// `https://host:port` of the console (or its load balancer); `http://` for plaintext.
    pub endpoint: String,
    /// This host's name, as the console knows it.
    pub host: String,
    pub agent_version: String,
    /// This host's identity key (pinned by the console at the first connection).
    pub key: SigningKey,
    /// The console keys whose decisions this host accepts.
    pub console_keys: Vec<VerifyingKey>,
    /// Mutual TLS: the console's CA and this host's certificate (from [`enrol`]).
    pub tls: Option<ClientTls>,
}

/// PEM documents for mutual TLS.
#[derive(Clone)]
pub struct ClientTls {
    /// The console's CA certificate.
    pub ca: String,
    /// This host's certificate, issued at enrolment for `ClientConfig::key`.
    pub certificate: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("console endpoint {endpoint}: {source}")]
    Endpoint { endpoint: String, source: tonic::transport::Error },
    #[error("the host key cannot be written as PKCS#8: {0}")]
    Key(String),
    #[error("enrolling with the console: {}", .0.message())]
    Enrol(tonic::Status),
}

/// A channel to `endpoint`, over TLS when `tls` is given: with this host's certificate, or
/// with none (to enrol).
async fn channel(
    endpoint: &str,
    tls: Option<(&str, Option<(&str, &SigningKey)>)>,
) -> Result<tonic::transport::Channel, ClientError> {
    let error = |source| ClientError::Endpoint { endpoint: endpoint.to_owned(), source };
    let mut builder = Endpoint::from_shared(endpoint.to_owned()).map_err(error)?;
    if let Some((ca, identity)) = tls {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((certificate, key)) = identity {
            let key = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| ClientError::Key(e.to_string()))?;
            config = config.identity(Identity::from_pem(certificate, key.as_bytes()));
        }
        builder = builder.tls_config(config).map_err(error)?;
    }
    builder.connect().await.map_err(error)
}

/// Enrols this host with a bootstrap token over TLS (trusting the console by `ca`); returns
/// the certificate (PEM) to stream with.
pub async fn enrol(
    endpoint: &str,
    ca: &str,
    host: &str,
    token: &str,
    key: &SigningKey,
) -> Result<String, ClientError> {
    let mut client = AgentServiceClient::new(channel(endpoint, Some((ca, None))).await?);
    let request = EnrolRequest {
        host: host.to_owned(),
        token: token.to_owned(),
        public_key: key.verifying_key().to_bytes().to_vec(),
        signature: key.sign(&proto::enrol_message(token, host)).to_bytes().to_vec(),
    };
    Ok(client.enrol(request).await.map_err(ClientError::Enrol)?.into_inner().certificate)
}

/// Why a decision from the console was refused. Each is worth an audit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("decision signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("decision signature does not verify (key {0})")]
    BadSignature(String),
    #[error("signed decision does not decode: {0}")]
    Malformed(String),
    #[error("decision for host {0:?}, not this host")]
    WrongHost(String),
    #[error("decision for hold {hold_id} with nonce {got}, but the hold's nonce is {expected}")]
    WrongNonce { hold_id: String, expected: u64, got: u64 },
    #[error("decision for hold {0}, which was already decided: replayed")]
    Replayed(String),
    #[error("decision for hold {0}, which this host is not waiting on")]
    UnknownHold(String),
    #[error("decision for hold {0} has no verdict or scope")]
    Incomplete(String),
}

/// What the client reports to the daemon.
#[derive(Debug)]
pub enum ClientEvent {
    /// The console accepted this host; pending holds have been (re)sent. Its latest anchor
    /// of this host's audit trail covers `anchored_records` records.
    Connected { anchored_records: u64 },
    /// The stream broke; the client reconnects after a backoff.
    Disconnected(String),
    /// A verified decision for a hold this host was waiting on (now no longer pending).
    Decision(Decision),
    /// A decision refused: nothing is released.
    Rejected(Rejection),
}

enum Command {
    Raise(Box<HoldRaised>),
    Close(HoldClosed),
    Anchor(ChainAnchor),
    Policies(PolicyReport),
}

/// The daemon's handle: raise and close holds; events arrive on the receiver from [`start`].
#[derive(Clone)]
pub struct ClientHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl ClientHandle {
    /// Reports a held action. It is sent now, or as soon as the console is reachable.
    pub fn raise(&self, hold: HoldRaised) {
        let _ = self.commands.send(Command::Raise(Box::new(hold)));
    }

    /// Reports that a hold ended on this host (decided, timed out, process gone…).
    pub fn close(&self, closed: HoldClosed) {
        let _ = self.commands.send(Command::Close(closed));
    }

    /// Reports the policies in force: sent now, and again on every reconnection.
    pub fn policies(&self, report: PolicyReport) {
        let _ = self.commands.send(Command::Policies(report));
    }

    /// Anchors the audit trail at `anchor`, signed with the host key. Sent now if the console
    /// is reachable, else dropped: the next anchor covers everything this one did.
    pub fn anchor(&self, anchor: ChainAnchor) {
        let _ = self.commands.send(Command::Anchor(anchor));
    }
}

/// Starts the client: it connects, reconnects with exponential backoff, and runs until the
/// handle and the event receiver are both dropped.
pub fn start(config: ClientConfig) -> (ClientHandle, mpsc::Receiver<ClientEvent>) {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (events, event_rx) = mpsc::channel(1024);
    let state = State {
        config,
        pending: HashMap::new(),
        decided: VecDeque::new(),
        unsent_closures: VecDeque::new(),
        policies: None,
        events,
    };
    tokio::spawn(state.run(command_rx));
    (ClientHandle { commands }, event_rx)
}

/// The client's memory, which outlives each connection.
struct State {
    config: ClientConfig,
    /// Holds waiting for a decision, by id.
    pending: HashMap<String, HoldRaised>,
    /// Holds decided lately, oldest first.
    decided: VecDeque<String>,
    unsent_closures: VecDeque<HoldClosed>,
    /// The latest report of the policies in force.
    policies: Option<PolicyReport>,
    events: mpsc::Sender<ClientEvent>,
}

/// How a connection ended.
enum End {
    /// Nobody is listening any more: stop.
    Stop,
    /// The stream broke after the console welcomed us.
    Broken(String),
    /// The connection never got as far as the welcome.
    Failed(String),
}

fn host_message(message: host_message::Message) -> HostMessage {
    HostMessage { message: Some(message) }
}

impl State {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let reason = match self.connect(&mut commands).await {
                End::Stop => return,
                End::Broken(reason) => {
                    backoff = MIN_BACKOFF;
                    reason
                }
                End::Failed(reason) => reason,
            };
            tracing::warn!(error = reason, retry_in = ?backoff, "console stream down");
            if self.events.send(ClientEvent::Disconnected(reason)).await.is_err() {
                return;
            }
            // Commands keep coming while we wait: holds raised now are sent on reconnection.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    command = commands.recv() => match command {
                        Some(command) => self.remember(command),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Keeps a command for the next connection.
    fn remember(&mut self, command: Command) {
        match command {
            Command::Raise(hold) => {
                self.pending.insert(hold.id.clone(), *hold);
            }
            Command::Close(closed) => {
                self.pending.remove(&closed.id);
                if self.unsent_closures.len() == MAX_UNSENT_CLOSURES {
                    self.unsent_closures.pop_front();
                }
                self.unsent_closures.push_back(closed);
            }
            Command::Anchor(_) => {}
            Command::Policies(report) => self.policies = Some(report),
        }
    }

    /// What a new connection sends first: the policies in force, the closures not sent yet,
    /// the holds still pending.
    fn first_on_a_new_stream(&mut self) -> Vec<host_message::Message> {
        let policies = self.policies.clone().map(host_message::Message::Policies);
        let backlog = self.unsent_closures.drain(..).map(host_message::Message::HoldClosed);
        let holds = self.pending.values().cloned().map(host_message::Message::HoldRaised);
        policies.into_iter().chain(backlog).chain(holds).collect()
    }

    /// `anchor`, signed with the host key.
    fn signed(&self, anchor: &ChainAnchor) -> ChainAnchor {
        let signature = self.config.key.sign(&proto::anchor_message(&self.config.host, anchor));
        ChainAnchor { signature: signature.to_bytes().to_vec(), ..anchor.clone() }
    }

    /// One connection: challenge, hello, welcome, pending holds, then the exchange.
    async fn connect(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> End {
        let tls = self
            .config
            .tls
            .as_ref()
            .map(|t| (t.ca.as_str(), Some((t.certificate.as_str(), &self.config.key))));
        let mut client = match channel(&self.config.endpoint, tls).await {
            Ok(channel) => AgentServiceClient::new(channel),
            Err(e) => {
                return End::Failed(format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()
                ));
            }
        };
        let (out, out_rx) = mpsc::channel(256);
        let mut incoming = match client.stream(ReceiverStream::new(out_rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return End::Failed(format!("opening the stream: {}", status.message())),
        };
        let challenge = match incoming.next().await {
            Some(Ok(proto::v1::ConsoleMessage { message: Some(console_message::Message::Challenge(c)) })) => {
                c.nonce
            }
            Some(Err(status)) => return End::Failed(format!("console: {}", status.message())),
            _ => return End::Failed("the console did not open with a challenge".into()),
        };
        let public = self.config.key.verifying_key();
        let signature = self.config.key.sign(&proto::hello_message(&challenge, &self.config.host));
        let hello = Hello {
            host: self.config.host.clone(),
            agent_version: self.config.agent_version.clone(),
            key_fingerprint: keys::fingerprint(&public),
            public_key: public.to_bytes().to_vec(),
            signature: signature.to_bytes().to_vec(),
        };
        if out.send(host_message(host_message::Message::Hello(hello))).await.is_err() {
            return End::Failed("the stream closed before the hello".into());
        }
        let anchored_records = match incoming.next().await {
            Some(Ok(proto::v1::ConsoleMessage {
                message: Some(console_message::Message::Welcome(welcome)),
            })) => welcome.anchored_records,
            Some(Err(status)) => {
                return End::Failed(format!("console refused this host: {}", status.message()));
            }
            _ => return End::Failed("the console did not welcome this host".into()),
        };
        for message in self.first_on_a_new_stream() {
            if out.send(host_message(message)).await.is_err() {
                return End::Broken("the stream closed while re-sending holds".into());
            }
        }
        if self.events.send(ClientEvent::Connected { anchored_records }).await.is_err() {
            return End::Stop;
        }
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return End::Stop };
                    let message = match &command {
                        Command::Raise(hold) => host_message::Message::HoldRaised((**hold).clone()),
                        Command::Close(closed) => host_message::Message::HoldClosed(closed.clone()),
                        Command::Anchor(anchor) => host_message::Message::Anchor(self.signed(anchor)),
                        Command::Policies(report) => host_message::Message::Policies(report.clone()),
                    };
                    let sent = out.send(host_message(message)).await;
                    match command {
                        Command::Raise(hold) => { self.pending.insert(hold.id.clone(), *hold); }
                        Command::Close(closed) if sent.is_err() => self.remember(Command::Close(closed)),
                        Command::Close(closed) => { self.pending.remove(&closed.id); }
                        Command::Anchor(_) => {}
                        Command::Policies(report) => self.policies = Some(report),
                    }
                    if sent.is_err() {
                        return End::Broken("the stream closed".into());
                    }
                }
                received = incoming.next() => match received {
                    Some(Ok(proto::v1::ConsoleMessage { message: Some(console_message::Message::Decision(signed)) })) => {
                        let event = match self.accept(&signed) {
                            Ok(decision) => ClientEvent::Decision(decision),
                            Err(rejection) => {
                                tracing::warn!(error = %rejection, "refused a decision from the console");
                                ClientEvent::Rejected(rejection)
                            }
                        };
                        if self.events.send(event).await.is_err() {
                            return End::Stop;
                        }
                    }
                    Some(Ok(_)) => return End::Broken("unexpected message from the console".into()),
                    Some(Err(status)) => return End::Broken(format!("console: {}", status.message())),
                    None => return End::Broken("the console closed the stream".into()),
                },
            }
        }
    }

    /// Verifies `signed` and its binding to a pending hold of this host; on success the hold
    /// is no longer pending, so the same decision a second time is a replay.
    fn accept(&mut self, signed: &SignedDecision) -> Result<Decision, Rejection> {
        let decision = verify(signed, &self.config.console_keys)?;
        if decision.host != self.config.host {
            return Err(Rejection::WrongHost(decision.host));
        }
        let Some(hold) = self.pending.get(&decision.hold_id) else {
            return Err(if self.decided.contains(&decision.hold_id) {
                Rejection::Replayed(decision.hold_id)
            } else {
                Rejection::UnknownHold(decision.hold_id)
            });
        };
        if hold.nonce != decision.nonce {
            return Err(Rejection::WrongNonce {
                hold_id: decision.hold_id,
                expected: hold.nonce,
                got: decision.nonce,
            });
        }
        let verdict_known =
            matches!(Verdict::try_from(decision.verdict), Ok(Verdict::Approve | Verdict::Deny));
        let scope_known =
            matches!(Scope::try_from(decision.scope), Ok(Scope::Once | Scope::ForDuration | Scope::Always));
        if !verdict_known || !scope_known {
            return Err(Rejection::Incomplete(decision.hold_id));
        }
        self.pending.remove(&decision.hold_id);
        if self.decided.len() == DECIDED_MEMORY {
            self.decided.pop_front();
        }
        self.decided.push_back(decision.hold_id.clone());
        Ok(decision)
    }
}

/// Checks the signature on the exact bytes, then decodes them.
pub fn verify(signed: &SignedDecision, trusted: &[VerifyingKey]) -> Result<Decision, Rejection> {
    let key = trusted
        .iter()
        .find(|key| keys::key_id(key) == signed.key_id)
        .ok_or_else(|| Rejection::UnknownKey(signed.key_id.clone()))?;
    let signature = Signature::from_slice(&signed.signature)
        .map_err(|_| Rejection::BadSignature(signed.key_id.clone()))?;
    key.verify_strict(&proto::decision_message(&signed.decision), &signature)
        .map_err(|_| Rejection::BadSignature(signed.key_id.clone()))?;
    Decision::decode(signed.decision.as_slice()).map_err(|e| Rejection::Malformed(e.to_string()))
}
