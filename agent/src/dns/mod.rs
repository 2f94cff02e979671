//! keyturn's resolver for tagged cgroups: the DNS hooks send it every query those cgroups
//! make; it judges the name by the agent's policy before anything leaves the host.
//!
//! # Layout
//!
//! - [`name`]: names and the domain patterns of policies; [`wire`]: DNS messages, parsed
//!   strictly (an agent writes its queries); `upstream`: asking the host's resolvers;
//!   `book`: the names each agent resolved, for the views of its egress holds; `hold`:
//!   lookups held for a person; `grants`: names approved beyond one action.
//!
//! A query is attributed to its sender by the loopback source address the hooks gave its
//! socket ([`NameMaps::sender`]); one that cannot be is refused. A denied name is refused
//! and never asked upstream. A held one is held right there, before anything leaves the
//! host: the daemon lists the hold and stops the sender; approved, the query is asked
//! upstream and answered, then the sender resumed; refused, it is answered `REFUSED`. An
//! allowed or approved name is asked, and the answer's addresses are recorded for the
//! kernel (when domain rules or approvals name it) and for the views before the agent gets
//! it. Every failure fails closed: the agent's lookup fails, nothing is sent elsewhere.

mod book;
mod grants;
mod hold;
pub mod name;
mod upstream;
pub mod wire;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

pub use book::NameBook;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};

use agent_common::{Action, DnsSender, EgressRule, kind};

use crate::{
    kernel::names::NameMaps,
    policy::{Asks, Policy, Verdict, kernel::kernel_addr},
};
pub use grants::{NameGrant, Reach};
pub use hold::{LookupDecision, LookupHold};
use name::Name;
use wire::{Rcode, Transport};

/// Policies by their kernel id, as the daemon last installed them.
pub type PolicyTable = Arc<HashMap<u32, Arc<Policy>>>;

/// Queries over UDP being answered at once; more are dropped (and counted), as a busy
/// resolver's would be.
const UDP_IN_FLIGHT: usize = 512;
/// TCP connections served at once; more are closed at once.
const TCP_CONNECTIONS: usize = 64;
/// A TCP connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries one TCP connection may ask.
const TCP_QUERIES: usize = 100;
/// Addresses are let through by the kernel for at least this long after an answer, so a
/// record with TTL 0 can still be connected to.
const MIN_TTL: Duration = Duration::from_secs(1);
/// And at most this long, whatever the answer's TTL.
const MAX_TTL: Duration = Duration::from_hours(24);
/// A held lookup approved once approves the name for its answer's TTL, within these
/// bounds: its retries and the agent's next lookups are answered, and its addresses let
/// through, with no second hold; a name's owner cannot stretch one approval to a day.
const ONCE_AT_LEAST: Duration = Duration::from_secs(10);
const ONCE_AT_MOST: Duration = Duration::from_mins(5);
/// A held lookup refused (denied, timed out) refuses the agent's lookups of the name this
/// long: resolver libraries ask again at once (glibc asks every nameserver it knows, then
/// the name with each search domain) and must not raise a hold per retry.
const REFUSAL_LASTS: Duration = Duration::from_secs(10);

/// What the resolver did, since the daemon started.
#[derive(Default)]
struct Stats {
    queries: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    unattributed: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    forgotten: AtomicU64,
    held: AtomicU64,
}

/// The resolver's counters, for `keyturn status` and the metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DnsCounts {
    /// Where it listens, or why it does not (then tagged cgroups' DNS is refused).
    pub listening: String,
    pub queries: u64,
    /// Answered with the upstream's answer.
    pub answered: u64,
    /// Refused: a name the policy denies, or a sender without a policy.
    pub refused: u64,
    /// Not a query keyturn answers (malformed, several questions, not `IN`…).
    pub malformed: u64,
    /// From a source no DNS hook gave: refused.
    pub unattributed: u64,
    /// No upstream answered: the agent got `SERVFAIL`.
    pub failed: u64,
    /// Dropped while too many queries were in flight.
    pub dropped: u64,
    /// Addresses the kernel no longer lets through by name, after a reload stopped allowing
    /// their name or their agent was untagged.
    pub forgotten: u64,
    /// Queries that waited on a held lookup's decision.
    #[serde(default)]
    pub held: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    maps: Mutex<NameMaps>,
    policies: watch::Receiver<PolicyTable>,
    /// Names approved beyond one action, as the daemon last gave them.
    grants: Mutex<Vec<NameGrant>>,
    /// Held lookups approved once, for their answer's TTL.
    once: Mutex<Vec<NameGrant>>,
    /// Held lookups refused, by agent and name, until when their retries are refused.
    refused: Mutex<HashMap<(u64, Name), SystemTime>>,
    lookups: hold::HeldLookups,
    /// Where held lookups go to be decided: the daemon.
    raise: mpsc::Sender<LookupHold>,
    upstreams: Vec<SocketAddr>,
    book: Arc<NameBook>,
    stats: Stats,
}

/// The running resolver, as the daemon sees it.
pub struct Resolver {
    listening: SocketAddrV4,
    shared: Arc<Shared>,
}

impl Resolver {
    /// Listens on `listen` (UDP and TCP, IPv4 loopback only) and answers queries with
    /// `upstreams` (the nameservers of `/etc/resolv.conf` when empty); held lookups go to
    /// `raise`.
    pub async fn start(
        listen: SocketAddrV4,
        upstreams: &[SocketAddr],
        maps: NameMaps,
        policies: watch::Receiver<PolicyTable>,
        raise: mpsc::Sender<LookupHold>,
    ) -> std::io::Result<Self> {
        if !listen.ip().is_loopback() {
            return Err(std::io::Error::other(format!(
                "[dns] listen {listen}: must be an IPv4 loopback address"
            )));
        }
        let upstreams = if upstreams.is_empty() { upstream::from_resolv_conf() } else { upstreams.to_vec() };
        if upstreams.is_empty() {
            tracing::warn!(
                "no DNS upstream: none in [dns] upstream or /etc/resolv.conf; agents' lookups fail"
            );
        }
        let (udp, tcp) = bind(listen).await?;
        let listen = match udp.local_addr()? {
            SocketAddr::V4(bound) => bound,
            SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        };
        let udp = Arc::new(udp);
        let shared = Arc::new(Shared {
            maps: Mutex::new(maps),
            policies,
            grants: Mutex::default(),
            once: Mutex::default(),
            refused: Mutex::default(),
            lookups: hold::HeldLookups::default(),
            raise,
            upstreams,
            book: Arc::new(NameBook::default()),
            stats: Stats::default(),
        });
        // What a previous daemon recorded has no name in this one's book: forgotten.
        rejudge(&shared);
        tokio::spawn(serve_udp(udp, shared.clone()));
        tokio::spawn(serve_tcp(tcp, shared.clone()));
        Ok(Self { listening: listen, shared })
    }

    /// Where it listens (the port the system chose, when `listen` asked for port 0).
    pub fn listening(&self) -> SocketAddrV4 {
        self.listening
    }

    /// Judges the recorded addresses again by the policies just installed (see [`rejudge`]).
    pub fn rejudge(&self) {
        rejudge(&self.shared);
    }

    /// Forgets what the agent under `root` resolved (it was untagged, or tagged anew): the
    /// cgroup's next tag starts with no name allowed.
    pub fn forget(&self, root: u64) {
        self.shared.book.forget(root);
        self.shared.once.lock().unwrap_or_else(PoisonError::into_inner).retain(|grant| grant.root != root);
        self.shared
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(refused, _), _| *refused != root);
        rejudge(&self.shared);
    }

    /// Takes the names approved beyond one connection (all of them, after every change), and
    /// judges the recorded addresses again by them.
    pub fn grant_names(&self, grants: Vec<NameGrant>) {
        *self.shared.grants.lock().unwrap_or_else(PoisonError::into_inner) = grants;
        rejudge(&self.shared);
    }

    /// The processes stopped for held lookups that were decided and are being answered.
    pub fn answering(&self) -> Vec<u32> {
        self.shared.lookups.answering()
    }

    /// The names agents resolved, for the views of their egress holds.
    pub fn book(&self) -> Arc<NameBook> {
        self.shared.book.clone()
    }

    pub fn counts(&self) -> DnsCounts {
        let stats = &self.shared.stats;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DnsCounts {
            listening: self.listening.to_string(),
            queries: get(&stats.queries),
            answered: get(&stats.answered),
            refused: get(&stats.refused),
            malformed: get(&stats.malformed),
            unattributed: get(&stats.unattributed),
            failed: get(&stats.failed),
            dropped: get(&stats.dropped),
            forgotten: get(&stats.forgotten),
            held: get(&stats.held),
        }
    }
}

/// UDP and TCP sockets on `listen`; with port 0, on one port the system chose for both.
async fn bind(listen: SocketAddrV4) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut tries = if listen.port() == 0 { 8 } else { 1 };
    loop {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if tries == 1 => return Err(e),
            Err(_) => tries -= 1,
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let in_flight = Arc::new(Semaphore::new(UDP_IN_FLIGHT));
    let mut buffer = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (len, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "DNS: receiving a query");
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            bump(&shared.stats.dropped);
            continue;
        };
        let (socket, shared, query) = (socket.clone(), shared.clone(), buffer[..len].to_vec());
        tokio::spawn(async move {
            let mut slot = Some(permit);
            let answer = answer(&shared, from, &query, Transport::Udp, &mut slot).await;
            if let Some(reply) = &answer.reply {
                let _ = socket.send_to(reply, from).await;
            }
            answered(&shared, answer.waited);
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "DNS: accepting a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            bump(&shared.stats.dropped);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, from, &shared, Some(permit)).await;
        });
    }
}

/// Answers the queries of one TCP connection, each framed by its two-byte length, while it
/// holds its `slot`; one that waited on a held lookup gave its slot up, and is closed once
/// answered.
async fn serve_connection(
    mut stream: TcpStream,
    from: SocketAddr,
    shared: &Shared,
    mut slot: Option<OwnedSemaphorePermit>,
) -> std::io::Result<()> {
    for _ in 0..TCP_QUERIES {
        if slot.is_none() {
            break;
        }
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return Ok(()) };
        let mut query = vec![0u8; usize::from(len?)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await??;
        let answer = answer(shared, from, &query, Transport::Tcp, &mut slot).await;
        let sent = match &answer.reply {
            Some(reply) => write_framed(&mut stream, reply).await,
            None => Err(std::io::ErrorKind::InvalidData.into()),
        };
        answered(shared, answer.waited);
        sent?;
    }
    Ok(())
}

async fn write_framed(stream: &mut TcpStream, reply: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
    stream.write_all(&[&len.to_be_bytes()[..], reply].concat()).await
}

/// The answer to a query was sent: if it waited on a held lookup, the last such answer
/// resumes the lookup's sender.
fn answered(shared: &Shared, waited: Option<hold::Waited>) {
    if let Some(waited) = waited {
        shared.lookups.answered(waited, |pid| {
            shared.maps.lock().unwrap_or_else(PoisonError::into_inner).forget_stop(pid);
        });
    }
}

/// The names approved now: the daemon's grants and the lookups approved once.
fn in_force(shared: &Shared) -> Vec<NameGrant> {
    let grants = shared.grants.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let once = shared.once.lock().unwrap_or_else(PoisonError::into_inner).clone();
    [grants, once].concat()
}

/// Approves `name` for the agent under `root`, as its hold asked (`asks`), for `lasts` from
/// now (or longer, if approved so already): a held lookup approved once.
fn approve_once(shared: &Shared, root: u64, name: &Name, asks: Asks, lasts: Duration) {
    let now = SystemTime::now();
    let until = Some(now + lasts);
    let mut once = shared.once.lock().unwrap_or_else(PoisonError::into_inner);
    once.retain(|grant| grant.until.is_some_and(|end| end > now));
    match once.iter_mut().find(|grant| grant.root == root && grant.name == *name && grant.asks == asks) {
        Some(grant) => grant.until = grant.until.max(until),
        None => once.push(NameGrant { root, name: name.clone(), reach: Reach::Name, until, asks }),
    }
}

/// Records `addresses`, which `name` resolved to for `sender`, for the views and, where domain
/// rules or grants name it, for the kernel. Judged under the maps' lock by the policy and
/// grants in force now (they may have changed while upstream answered): a reload's
/// [`rejudge`] then sees the record.
fn record(shared: &Shared, sender: &DnsSender, name: &Name, addresses: &[wire::Resolved]) -> Result<(), ()> {
    let mut maps = shared.maps.lock().map_err(|_| ())?;
    // The agent's policy now: it may have been untagged or tagged anew meanwhile.
    let policy = maps.policy_of(sender.root).and_then(|id| shared.policies.borrow().get(&id).cloned());
    let Some(policy) = policy else { return Err(()) };
    let grants = in_force(shared);
    for resolved in addresses {
        let ttl = Duration::from_secs(u64::from(resolved.ttl)).clamp(MIN_TTL, MAX_TTL);
        shared.book.note(sender.root, resolved.addr, name, ttl);
        if let Some((rule, lasts)) = kernel_rule(&policy, &grants, sender.root, name, resolved.addr) {
            maps.record(sender.root, resolved.addr, ttl.min(lasts), rule).map_err(|e| {
                tracing::warn!(error = %e, %name, "DNS: recording an address for the kernel");
            })?;
        }
    }
    Ok(())
}

/// What the kernel lets the agent under `root` reach at `addr` by `name`, and for how long at
/// most: where `grants` approve the name's lookup, every port the policy would hold (see
/// [`Policy::approved_rule`]); else the domain rules' ports; and before either, the ports
/// `grants` approve for the name where the policy would hold them for no more people than
/// approved, nor, by an approval made anywhere, where it keeps them to the console. Nothing
/// when none names it, or when a CIDR rule denies the address (it stays the CIDR rules' to
/// judge, whatever name it answers for).
fn kernel_rule(
    policy: &Policy,
    grants: &[NameGrant],
    root: u64,
    name: &Name,
    addr: IpAddr,
) -> Option<(EgressRule, Duration)> {
    let addr = kernel_addr(addr);
    if policy.kernel.denies(addr) {
        return None;
    }
    let now = SystemTime::now();
    let approved = grants::lookup_approval(grants, root, name, now)
        .and_then(|grant| Some((policy.approved_rule(name, addr, grant.asks)?, grant.lasts(now))));
    let (rule, approval_lasts) = match approved {
        Some((rule, lasts)) => (Some(rule), lasts),
        None => (policy.judge_name(name).kernel, Duration::MAX),
    };
    let held_for = |grant: &NameGrant| {
        let Reach::Port { protocol, port } = grant.reach else { return false };
        let action =
            Action { kind: kind::EGRESS, protocol, port: u32::from(port), addr, ..Action::default() };
        let judged = policy.egress_rule(&action, Some(name));
        judged.verdict == Verdict::Hold && judged.asks.met_by(grant.asks)
    };
    let (rule, lasts) = grants::with_grants(rule, grants, (root, name), now, held_for)?;
    Some((rule, lasts.min(approval_lasts)))
}

/// Judges again, by the policies and grants in force now, every address recorded for the
/// kernel: a reload that denies a name, or stops allowing a port of it, takes effect at
/// once, not when its answers expire. An address whose name the book no longer holds, or
/// whose agent is no longer tagged, is forgotten (the CIDR rules judge it). The addresses of
/// a name just approved are recorded for the kernel. An entry that could not be judged again
/// is removed; one that could not even be removed is counted as failed.
fn rejudge(shared: &Shared) {
    // Whatever panicked while holding them, the maps must still be judged.
    let mut maps = shared.maps.lock().unwrap_or_else(PoisonError::into_inner);
    let table = shared.policies.borrow().clone();
    let grants = in_force(shared);
    let judge = |root: u64, policy: Option<u32>, addr: IpAddr| {
        let name = shared.book.name_of(root, addr)?;
        kernel_rule(table.get(&policy?)?, &grants, root, &name, addr)
    };
    let judged = maps.rejudge(judge);
    // The addresses of approved names that the kernel did not have (no domain rule named
    // their name when the agent resolved it).
    for grant in &grants {
        let Some(policy) = maps.policy_of(grant.root).and_then(|id| table.get(&id)) else { continue };
        for (addr, left) in shared.book.resolved_to(grant.root, &grant.name) {
            if let Some((rule, lasts)) = kernel_rule(policy, &grants, grant.root, &grant.name, addr)
                && let Err(e) = maps.record(grant.root, addr, left.min(lasts), rule)
            {
                tracing::warn!(error = %e, name = %grant.name, "DNS: recording an approved name's address for the kernel");
            }
        }
    }
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    match judged {
        Ok(done) => {
            shared.stats.forgotten.fetch_add(count(done.forgotten), Ordering::Relaxed);
            shared.stats.failed.fetch_add(count(done.failed), Ordering::Relaxed);
            tracing::info!(
                forgotten = done.forgotten,
                failed = done.failed,
                "DNS: judged the resolved addresses again"
            );
        }
        Err(e) => {
            bump(&shared.stats.failed);
            tracing::error!(error = %e, "DNS: could not list the resolved addresses to judge them again");
        }
    }
}

/// What to send back for one query, and whether it waited on a held lookup.
struct Answer {
    /// `None` when nothing must be sent back.
    reply: Option<Vec<u8>>,
    waited: Option<hold::Waited>,
}

impl From<Vec<u8>> for Answer {
    fn from(reply: Vec<u8>) -> Self {
        Self { reply: Some(reply), waited: None }
    }
}

/// The answer to `bytes` from `from`, which holds one of the resolver's shared `slot`s: a
/// query waiting on a held lookup gives it up.
async fn answer(
    shared: &Shared,
    from: SocketAddr,
    bytes: &[u8],
    transport: Transport,
    slot: &mut Option<OwnedSemaphorePermit>,
) -> Answer {
    let stats = &shared.stats;
    bump(&stats.queries);
    let query = match wire::parse_query(bytes, transport) {
        Ok(query) => query,
        Err(e) => {
            bump(&stats.malformed);
            tracing::debug!(%from, error = %e, "DNS: refused a query");
            return Answer { reply: e.answer(), waited: None };
        }
    };
    // Who asked, the policy their agent is tagged with now, and how many holds it may have.
    let asked = match from {
        SocketAddr::V4(source) => shared.maps.lock().ok().and_then(|maps| {
            let sender = maps.sender(source, transport == Transport::Tcp)?;
            Some((sender, maps.policy_of(sender.root), maps.max_pending(sender.root)))
        }),
        SocketAddr::V6(_) => None,
    };
    let Some((sender, policy, max_pending)) = asked else {
        bump(&stats.unattributed);
        return wire::response(&query, Rcode::Refused).into();
    };
    let policy = policy.and_then(|id| shared.policies.borrow().get(&id).cloned());
    let Some(policy) = policy else {
        bump(&stats.refused);
        return wire::response(&query, Rcode::Refused).into();
    };
    let judged = policy.judge_name(&query.name);
    let approved = || {
        let now = SystemTime::now();
        grants::approved(&in_force(shared), sender.root, &query.name, judged.asks, now)
    };
    let key = (sender.root, query.name.clone());
    let refused_lately = || {
        let now = SystemTime::now();
        let mut refused = shared.refused.lock().unwrap_or_else(PoisonError::into_inner);
        refused.retain(|_, until| *until > now);
        refused.contains_key(&key)
    };
    let held = match judged.verdict {
        Verdict::Deny => Some(None),
        Verdict::Hold if approved() => None,
        Verdict::Hold if refused_lately() => Some(None),
        Verdict::Hold => {
            bump(&stats.held);
            drop(slot.take());
            let max_pending = max_pending.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
            let asked = (judged.rule.clone(), judged.asks, judged.notify.clone());
            Some(shared.lookups.decide(&shared.raise, sender, &query.name, asked, max_pending).await)
        }
        Verdict::Allow => None,
    };
    let (waited, approved) = match held {
        None => (None, None),
        // Approved, and still approved enough by the policy in force now.
        Some(Some((hold::Outcome::Approved(asks), waited)))
            if still_approved(shared, &sender, &query.name, asks) =>
        {
            approve_once(shared, sender.root, &query.name, asks, ONCE_AT_LEAST);
            (Some(waited), Some(asks))
        }
        // Denied by the policy or a person, or more held lookups than the agent may have.
        Some(refused) => {
            if refused.is_some() {
                let until = SystemTime::now() + REFUSAL_LASTS;
                shared.refused.lock().unwrap_or_else(PoisonError::into_inner).insert(key, until);
            }
            bump(&stats.refused);
            tracing::info!(name = %query.name, pid = sender.tgid, rule = %judged.rule, "DNS: refused a name");
            let reply = wire::response(&query, Rcode::Refused);
            return Answer { reply: Some(reply), waited: refused.map(|(_, waited)| waited) };
        }
    };
    let reply = forward(shared, &sender, &query, transport, approved).await;
    Answer { reply: Some(reply), waited }
}

/// Whether a lookup of `name` by `sender`, approved as `approved` asks, may still go out: a
/// reload while it was held may have denied the name, or asked more people or the console.
fn still_approved(shared: &Shared, sender: &DnsSender, name: &Name, approved: Asks) -> bool {
    let policy = shared.maps.lock().unwrap_or_else(PoisonError::into_inner).policy_of(sender.root);
    let policy = policy.and_then(|id| shared.policies.borrow().get(&id).cloned());
    policy.is_some_and(|policy| {
        let judged = policy.judge_name(name);
        judged.verdict == Verdict::Allow || (judged.verdict == Verdict::Hold && judged.asks.met_by(approved))
    })
}

/// Asks the upstreams `query`, and records the answer's addresses before the agent has it;
/// a lookup just approved (as `approved` asks) approves the name for the answer's TTL.
async fn forward(
    shared: &Shared,
    sender: &DnsSender,
    query: &wire::Query,
    transport: Transport,
    approved: Option<Asks>,
) -> Vec<u8> {
    let stats = &shared.stats;
    let Some((mut reply, answer)) = upstream::ask(&shared.upstreams, query, transport).await else {
        bump(&stats.failed);
        return wire::response(query, Rcode::ServFail);
    };
    // Recorded before the agent has the answer, so its connection finds them. A truncated
    // answer is passed on as it is: the agent asks again over TCP, and that one counts.
    let complete = if answer.truncated { &[][..] } else { &answer.addresses[..] };
    if let Some(asks) = approved
        && let Some(ttl) = complete.iter().map(|resolved| resolved.ttl).min()
    {
        let lasts = Duration::from_secs(u64::from(ttl)).clamp(ONCE_AT_LEAST, ONCE_AT_MOST);
        approve_once(shared, sender.root, &query.name, asks, lasts);
    }
    if record(shared, sender, &query.name, complete).is_err() {
        bump(&stats.failed);
        return wire::response(query, Rcode::ServFail);
    }
    wire::rewrite_id(&mut reply, query.id);
    bump(&stats.answered);
    reply
}
