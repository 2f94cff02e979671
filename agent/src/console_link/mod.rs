//! The daemon's link to a console: enrolment, then `host_client` in a task of its own,
//! and the daemon's holds and decisions as the wire contract spells them.

pub mod embedded;

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use host_client::{self as client, ClientConfig, ClientEvent, ClientTls, keys};
use proto::v1::{
    ChainAnchor, CloseReason, Decision, Egress, Exec, HoldClosed, HoldKind, HoldRaised, PolicyInForce,
    PolicyReport, hold_raised,
};
use tokio::sync::mpsc;

use crate::{
    audit::Head,
    config::{Config, ConsoleConfig},
    daemon::api::Scope,
    hold::context::{ActionKind, HoldView, Parent},
    policy::file::Policy,
};

/// First wait before enrolling again after a failure; doubled up to [`MAX_ENROL_BACKOFF`].
const MIN_ENROL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_ENROL_BACKOFF: Duration = Duration::from_mins(1);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("[console] {0}")]
    Key(#[from] keys::KeyError),
    #[error("[console] public_keys is empty: no decision could ever be accepted")]
    NoPublicKeys,
    #[error("[console] {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("[console] endpoint {0:?} is https: name the console's CA certificate in `ca`")]
    NoCa(String),
    #[error("[console] endpoint {0:?}: neither https:// nor http://")]
    Scheme(String),
    #[error("[console] endpoint {0:?}: plaintext (http://) only to a console on loopback; use https://")]
    PlaintextOffLoopback(String),
    #[error("[console] this host's name: {0}")]
    HostName(std::io::Error),
    #[error("[console] the kernel has no host name: name this host with `host`")]
    NoHostName,
}

/// What the daemon sends up.
enum Up {
    Raise(Box<HoldRaised>),
    Close(HoldClosed),
    Anchor(ChainAnchor),
    Policies(PolicyReport),
}

/// The daemon's end of the link. Sending never waits: while the console is unreachable
/// the client keeps what it must send again.
pub struct Link {
    up: mpsc::UnboundedSender<Up>,
    /// How often the daemon anchors its audit trail.
    pub anchor_every: Duration,
}

impl Link {
    /// Reports hold `view` (kernel nonce `nonce`), held at `requested_at`, waiting until
    /// `deadline`.
    pub fn raise(&self, view: &HoldView, nonce: u64, requested_at: SystemTime, deadline: SystemTime) {
        let hold = hold_raised(view, nonce, requested_at, deadline);
        let _ = self.up.send(Up::Raise(Box::new(hold)));
    }

    /// Reports that hold `id` ended on this host.
    pub fn close(&self, id: &str, nonce: u64, reason: CloseReason) {
        let _ = self.up.send(Up::Close(HoldClosed { id: id.to_owned(), nonce, reason: reason.into() }));
    }

    /// Reports `policies` as the ones in force.
    pub fn policies<'a>(&self, policies: impl IntoIterator<Item = &'a Policy>) {
        let policies = policies
            .into_iter()
            .map(|p| PolicyInForce { name: p.name.clone(), sha256: p.sha256.clone(), text: p.text.clone() })
            .collect();
        let _ = self.up.send(Up::Policies(PolicyReport { policies }));
    }

    /// Anchors the audit trail at `head`, witnessing `witness` (the record the console's
    /// latest anchor ends at, as the trail has it now); the client signs it.
    pub fn anchor(&self, head: &Head, witness: Option<&Head>) {
        let _ = self.up.send(Up::Anchor(ChainAnchor {
            records: head.records,
            head: head.hash.clone(),
            witness_records: witness.map_or(0, |w| w.records),
            witness: witness.map(|w| w.hash.clone()).unwrap_or_default(),
            at_ms: unix_ms(SystemTime::now()),
            signature: Vec::new(),
        }));
    }
}

/// Reads what `console` names (errors here stop the daemon at start), then starts the link:
/// it enrols if it must, and runs the client. Verified decisions and refusals arrive on
/// the receiver.
pub fn start(
    config: &Config,
    console: &ConsoleConfig,
) -> Result<(Link, mpsc::Receiver<ClientEvent>), LinkError> {
    let console_keys = console
        .public_keys
        .iter()
        .map(|key| keys::public_key_from_hex(key))
        .collect::<Result<Vec<_>, _>>()?;
    if console_keys.is_empty() {
        return Err(LinkError::NoPublicKeys);
    }
    let host = host_name(console)?;
    let key = keys::load_or_create(&config.console_key(console))?;
    let tls = if console.endpoint.starts_with("https://") {
        let ca_path = console.ca.as_ref().ok_or_else(|| LinkError::NoCa(console.endpoint.clone()))?;
        Some((read("the CA certificate", ca_path)?, config.console_certificate(console)))
    } else if console.endpoint.starts_with("http://") {
        // Holds carry command lines, which may carry secrets.
        if !loopback(&console.endpoint) {
            return Err(LinkError::PlaintextOffLoopback(console.endpoint.clone()));
        }
        None
    } else {
        return Err(LinkError::Scheme(console.endpoint.clone()));
    };
    let client = ClientConfig {
        endpoint: console.endpoint.clone(),
        host,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        key,
        console_keys,
        tls: None,
    };
    let (up, up_rx) = mpsc::unbounded_channel();
    let (events, events_rx) = mpsc::channel(1024);
    tokio::spawn(run(client, tls, console.token.clone(), up_rx, events));
    Ok((Link { up, anchor_every: console.anchor_every }, events_rx))
}

/// This host's name at `console`: as configured, else the kernel's host name.
pub fn host_name(console: &ConsoleConfig) -> Result<String, LinkError> {
    match &console.host {
        Some(host) => Ok(host.clone()),
        None => kernel_host_name()?.ok_or(LinkError::NoHostName),
    }
}

/// The kernel's host name, unless none was set (`(none)`).
pub fn kernel_host_name() -> Result<Option<String>, LinkError> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(LinkError::HostName)?;
    let name = name.trim();
    Ok((!name.is_empty() && name != "(none)").then(|| name.to_owned()))
}

/// Whether the host of `endpoint` (`SCHEME://HOST[:PORT][/…]`) is this machine.
fn loopback(endpoint: &str) -> bool {
    let authority = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn read(what: &'static str, path: &Path) -> Result<String, LinkError> {
    std::fs::read_to_string(path).map_err(|source| LinkError::Read { what, path: path.to_owned(), source })
}

/// Enrols (over TLS, while there is no certificate), then relays between the daemon and
/// the client until the daemon drops its end. Holds raised meanwhile wait in the channel.
async fn run(
    mut client: ClientConfig,
    tls: Option<(String, PathBuf)>,
    token: Option<String>,
    mut up: mpsc::UnboundedReceiver<Up>,
    events: mpsc::Sender<ClientEvent>,
) {
    if let Some((ca, certificate_path)) = tls {
        let certificate = enrolled(&client, &ca, &certificate_path, token.as_deref()).await;
        client.tls = Some(ClientTls { ca, certificate });
    }
    let (handle, mut client_events) = client::start(client);
    loop {
        tokio::select! {
            message = up.recv() => match message {
                Some(Up::Raise(hold)) => handle.raise(*hold),
                Some(Up::Close(closed)) => handle.close(closed),
                Some(Up::Anchor(anchor)) => handle.anchor(anchor),
                Some(Up::Policies(report)) => handle.policies(report),
                None => return,
            },
            event = client_events.recv() => match event {
                Some(event) => if events.send(event).await.is_err() { return },
                None => return,
            },
        }
    }
}

/// This host's certificate: the one in `path`, or one got by enrolling with `token`
/// (retried with backoff until the console takes it) and written there.
async fn enrolled(client: &ClientConfig, ca: &str, path: &Path, token: Option<&str>) -> String {
    let mut backoff = MIN_ENROL_BACKOFF;
    loop {
        let outcome = match (std::fs::read_to_string(path), token) {
            (Ok(certificate), _) => return certificate,
            (Err(e), _) if e.kind() != std::io::ErrorKind::NotFound => {
                format!("reading {}: {e}", path.display())
            }
            (Err(_), None) => format!("no certificate at {} and no token to enrol with", path.display()),
            (Err(_), Some(token)) => {
                match client::enrol(&client.endpoint, ca, &client.host, token, &client.key).await {
                    Ok(certificate) => match std::fs::write(path, &certificate) {
                        Ok(()) => {
                            tracing::info!(host = client.host, certificate = %path.display(), "enrolled with the console");
                            return certificate;
                        }
                        Err(e) => format!("writing {}: {e}", path.display()),
                    },
                    Err(e) => e.to_string(),
                }
            }
        };
        tracing::error!(error = outcome, retry_in = ?backoff, "cannot enrol with the console; approvals stay local");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_ENROL_BACKOFF);
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `view` as the console is told it.
fn hold_raised(view: &HoldView, nonce: u64, requested_at: SystemTime, deadline: SystemTime) -> HoldRaised {
    let detail = if view.kind == ActionKind::Exec {
        hold_raised::Detail::Exec(Exec {
            path: view.path.clone().unwrap_or_default(),
            argv: view.argv.clone().unwrap_or_default(),
            cwd: view.cwd.clone().unwrap_or_default(),
            sha256: view.sha256.clone().unwrap_or_default(),
            parents: view.parents.iter().flatten().map(parent).collect(),
        })
    } else {
        hold_raised::Detail::Egress(Egress {
            protocol: view.protocol.clone().unwrap_or_default(),
            address: view.address.clone().unwrap_or_default(),
            port: view.port.map_or(0, u32::from),
            domain: view.domain.clone().unwrap_or_default(),
        })
    };
    HoldRaised {
        id: view.id.clone(),
        nonce,
        kind: if view.kind == ActionKind::Exec { HoldKind::Exec } else { HoldKind::Egress }.into(),
        agent: view.agent.clone(),
        cgroup: view.cgroup.clone(),
        pid: view.pid,
        uid: view.uid,
        user: view.user.clone(),
        requested_at_ms: unix_ms(requested_at),
        policy: view.policy.clone(),
        policy_rule: view.policy_rule.clone(),
        deadline_ms: unix_ms(deadline),
        requester: view.requester.clone(),
        quorum: view.quorum,
        in_console: view.in_console,
        notify: view.notify.clone(),
        detail: Some(detail),
    }
}

fn parent(parent: &Parent) -> proto::v1::Parent {
    proto::v1::Parent { pid: parent.pid, comm: parent.comm.clone(), argv: parent.argv.clone() }
}

/// How far a console approval reaches (the client lets through known scopes only).
pub fn scope(decision: &Decision) -> Scope {
    match proto::v1::Scope::try_from(decision.scope) {
        Ok(proto::v1::Scope::ForDuration) => Scope::For(decision.duration_secs),
        Ok(proto::v1::Scope::Always) => Scope::Always,
        _ => Scope::Once,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::context::Waiting;

    fn view(kind: ActionKind) -> HoldView {
        HoldView {
            id: "00000000002a".into(),
            kind,
            agent: "claude".into(),
            cgroup: "keyturn.run/claude-1".into(),
            pid: 42,
            tid: 43,
            uid: 1000,
            user: "dev".into(),
            comm: "curl".into(),
            requested_at: String::new(),
            policy: "default".into(),
            policy_rule: "rule".into(),
            requester: "alice@example.com".into(),
            quorum: 2,
            hold: Waiting::Held,
            ..HoldView::default()
        }
    }

    #[test]
    fn an_egress_hold_is_raised_with_its_destination_and_times() {
        let mut egress = view(ActionKind::Egress);
        (egress.protocol, egress.address, egress.port) =
            (Some("tcp".into()), Some("203.0.113.7".into()), Some(443));
        egress.notify = vec!["bob@example.com".into()];
        let at = UNIX_EPOCH + Duration::from_millis(1_500);
        let raised = hold_raised(&egress, 42 << 16, at, at + Duration::from_mins(1));
        assert_eq!(
            (raised.id.as_str(), raised.nonce, raised.kind),
            ("00000000002a", 42 << 16, HoldKind::Egress.into())
        );
        assert_eq!((raised.requested_at_ms, raised.deadline_ms, raised.quorum), (1_500, 61_500, 2));
        assert_eq!(
            (raised.requester.as_str(), raised.notify.as_slice()),
            ("alice@example.com", &["bob@example.com".to_owned()][..])
        );
        assert_eq!((raised.pid, raised.uid, raised.user.as_str()), (42, 1000, "dev"));
        let Some(hold_raised::Detail::Egress(destination)) = raised.detail else { panic!("{raised:?}") };
        assert_eq!(
            (destination.protocol.as_str(), destination.address.as_str(), destination.port),
            ("tcp", "203.0.113.7", 443)
        );
    }

    #[test]
    fn plaintext_is_for_a_console_on_this_machine_only() {
        for endpoint in
            ["http://127.0.0.1:8471", "http://localhost:8471/", "http://[::1]:8471", "http://127.0.0.2"]
        {
            assert!(loopback(endpoint), "{endpoint}");
        }
        for endpoint in [
            "http://10.0.0.1:8471",
            "http://console.example.com",
            "http://localhost.evil.com",
            "http://user@127.0.0.1",
        ] {
            assert!(!loopback(endpoint), "{endpoint}");
        }
    }

    #[test]
    fn a_console_scope_maps_onto_the_local_scopes_and_anything_unknown_is_once() {
        let decision = |scope: proto::v1::Scope| Decision {
            scope: scope.into(),
            duration_secs: 90,
            ..Decision::default()
        };
        assert_eq!(scope(&decision(proto::v1::Scope::Once)), Scope::Once);
        assert_eq!(scope(&decision(proto::v1::Scope::ForDuration)), Scope::For(90));
        assert_eq!(scope(&decision(proto::v1::Scope::Always)), Scope::Always);
        assert_eq!(scope(&Decision { scope: 99, ..Decision::default() }), Scope::Once);
    }
}
