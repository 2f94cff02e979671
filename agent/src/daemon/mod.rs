//! `keyturn daemon`: owns the enforcer, turns kernel events into pending holds with full
//! context, serves the local API, applies decisions, timeouts and exits, audits every step.

pub mod api;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    os::{
        fd::{AsRawFd, RawFd},
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    },
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::{Action, HoldEvent, HoldKey, Tag, counter, hold_state, kind};
use anyhow::{Context as _, bail};
use console::client::ClientEvent;
use proto::v1::{CloseReason, Decision};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    audit::Audit,
    cgroup::{self, Hierarchy},
    config::Config,
    console_link::{self, Link, embedded},
    hold::{
        context::{self, HoldView},
        identity::Executable,
        judge::{Judge, Judged},
        orphans::{self, Orphan},
        process::{self, HeldError, HeldProcess, OnDeny, event_from_record},
        table::{Happened, Holds},
    },
    kernel::{Enforcer, Options, error_chain},
    policy::{self, ExecJudgement, Policy, Verdict, watch::PolicyWatch},
};
use api::{Reply, Request, Scope};

/// The kernel's refusals (each fails the action with EPERM, or kills an exec that can no
/// longer fail), by counter and the reason the audit trail and `status` give.
const REFUSALS: [(u32, &str); 6] = [
    (counter::FLOOD_REFUSED, "flood"),
    (counter::RINGBUF_FULL, "ringbuf_full"),
    (counter::SIGNAL_FAILED, "signal_failed"),
    (counter::DAEMON_ABSENT, "daemon_absent"),
    (counter::HOLD_TABLE_REFUSED, "hold_table"),
    (counter::EXEC_KILLED, "exec_killed"),
];

/// State file: approval scopes beyond one action.
const GRANTS: &str = "grants.json";

/// State file: the refusal counts already in the audit trail.
const REFUSALS_AUDITED: &str = "refusals-audited.json";

/// How long the policy directory must stay quiet after a change before it is loaded: an
/// editor's write, rename and cleanup load once.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);

/// Who is calling, from the socket's peer credentials.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: u32,
    gid: u32,
    pid: u32,
}

enum Ask {
    Api(Request, Peer),
    Metrics,
}

struct Command {
    ask: Ask,
    reply: oneshot::Sender<Reply>,
}

/// A tagged cgroup and who runs in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Agent {
    /// Path relative to the cgroup v2 root.
    path: String,
    name: String,
    policy: String,
    /// Who launched the agent, as the tagging or `keyturn run` request said (empty in a
    /// tag from before requesters were recorded).
    #[serde(default)]
    requester: String,
    /// Created by `keyturn run`: removed when it empties.
    run: bool,
}

/// Why a pending hold was closed without a decision: (the audit record's `why`, the end of
/// "hold ID was …" for a late decision).
type Closed = (&'static str, &'static str);
const EXITED: Closed = ("the process exited", "closed before a decision: the process exited");
const SUPERSEDED: Closed = (
    "the process exited or left the held syscall; its pid carries a newer hold",
    "closed before a decision: the process exited or left the held syscall",
);

struct Pending {
    key: HoldKey,
    /// The kernel's nonce for this hold: a console decision must name it.
    nonce: u64,
    view: HoldView,
    root: u64,
    action: Action,
    deadline: Instant,
    on_timeout: OnDeny,
    on_deny: OnDeny,
}

/// An approval that reaches beyond one action. Kept in the state directory: a restart
/// must not forget an approval "for the life of the agent's cgroup".
#[derive(Serialize, Deserialize)]
struct Grant {
    root: u64,
    #[serde(with = "action_bytes")]
    action: Action,
    /// Unix seconds when it ends; `None`: when the agent's cgroup goes.
    until: Option<u64>,
}

impl Grant {
    fn covers(&self, root: u64, action: &Action, now: u64) -> bool {
        self.root == root && self.action == *action && self.until.is_none_or(|until| until > now)
    }
}

/// An [`Action`] as the hex of its bytes (it is plain data: every byte pattern is valid).
mod action_bytes {
    use agent_common::Action;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(action: &Action, serializer: S) -> Result<S::Ok, S::Error> {
        // SAFETY: Action is repr(C) plain data without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(action).cast::<u8>(), size_of::<Action>())
        };
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Action, D::Error> {
        let bytes = hex::decode(String::deserialize(deserializer)?).map_err(D::Error::custom)?;
        if bytes.len() != size_of::<Action>() {
            return Err(D::Error::custom("not an action"));
        }
        // SAFETY: the length matches and Action accepts every byte pattern.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Action>()) })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Default)]
struct Stats {
    approvals: u64,
    denials: u64,
    timeouts: u64,
    exits: u64,
    auto_released: u64,
    /// Stops, frozen cells and kernel records no pending hold accounted for.
    orphaned: u64,
}

struct Daemon {
    config: Config,
    hierarchy: Hierarchy,
    enforcer: Enforcer,
    holds: Holds,
    judge: Judge,
    audit: Audit,
    policies: BTreeMap<String, Arc<Policy>>,
    policy_ids: BTreeMap<String, u32>,
    /// Root cgroup id → agent.
    agents: BTreeMap<u64, Agent>,
    pending: BTreeMap<String, Pending>,
    /// Ids decided recently → how, for clear errors on late decisions.
    decided: HashMap<String, &'static str>,
    grants: Vec<Grant>,
    stats: Stats,
    refusals_audited: [u64; counter::COUNT as usize],
    run_serial: u64,
    /// Whether changed policy files are loaded without a signal.
    policies_watched: bool,
    /// The console holds are reported to, if one is configured.
    link: Option<Link>,
    console_connected: bool,
}

/// Who decides a hold: an approver on this host (known by the socket's credentials), or a
/// person at the console (named in a decision the client verified).
enum Decider<'a> {
    Local(Peer),
    Console(&'a Decision),
}

impl Decider<'_> {
    /// Their name in the audit trail.
    fn name(&self) -> String {
        match self {
            Self::Local(peer) => context::user_name(peer.uid),
            Self::Console(decision) => decision.decided_by.clone(),
        }
    }

    /// The `decision` record of their `verdict` on hold `id`.
    fn record(&self, id: &str, verdict: &str, reason: Option<&str>) -> serde_json::Value {
        let mut record = json!({"type": "decision", "id": id, "verdict": verdict, "reason": reason});
        match self {
            Self::Local(peer) => {
                record["by_uid"] = json!(peer.uid);
                record["by_user"] = json!(context::user_name(peer.uid));
            }
            Self::Console(decision) => {
                record["by"] = json!(decision.decided_by);
                record["via"] = json!("console");
                record["approvers"] = json!(decision.approvers);
            }
        }
        record
    }

    /// What the console is told about a hold they decided.
    fn closed(&self, approved: bool) -> CloseReason {
        match (self, approved) {
            (Self::Console(_), _) => CloseReason::Decided,
            (Self::Local(_), true) => CloseReason::ApprovedLocally,
            (Self::Local(_), false) => CloseReason::DeniedLocally,
        }
    }
}

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Watched before the first load, so that no change goes unseen.
    let mut watch = PolicyWatch::new(&config.policies_dir)
        .inspect_err(|e| tracing::warn!(error = %e, "policy files are loaded on SIGHUP only"))
        .ok();
    let console = match &config.console {
        Some(console) => Some(console.clone()),
        // Enforcement never waits on the console: holds stay decidable on this host.
        None if config.embedded_console => embedded::start(&config)
            .await
            .inspect_err(|e| tracing::error!(error = %e, "approvals are local only"))
            .ok(),
        None => None,
    };
    let (link, mut console_events) = match &console {
        Some(console) => {
            let (link, events) = console_link::start(&config, console)?;
            (Some(link), Some(events))
        }
        None => (None, None),
    };
    let (judge, mut judged) = Judge::new();
    let (mut daemon, listener) = Daemon::start(config, link, judge)?;
    daemon.policies_watched = watch.is_some();
    let (commands, mut inbox) = mpsc::channel::<Command>(64);
    tokio::spawn(serve_api(listener, commands.clone()));
    if !daemon.config.metrics.is_empty() {
        let listener = tokio::net::TcpListener::bind(&daemon.config.metrics)
            .await
            .with_context(|| format!("metrics on {}", daemon.config.metrics))?;
        tokio::spawn(serve_metrics(listener, commands.clone()));
    }
    // SAFETY: the ring buffer's fd belongs to `daemon.enforcer`, which outlives `events`
    // (declared later, dropped first) and never closes it while running.
    let events = unsafe { AsyncFd::register(RingFd(daemon.enforcer.events_fd())) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut hup, mut term, mut int) =
        (signal(SignalKind::hangup())?, signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let mut reload_at = None;
    notify_systemd("READY=1");
    tracing::info!(mode = %daemon.enforcer.mode(), socket = %daemon.config.socket.display(), "keyturn daemon ready");
    loop {
        tokio::select! {
            ready = events.readable() => {
                let mut guard = ready?;
                daemon.drain_events();
                guard.clear_ready();
            }
            Some(judged) = judged.recv() => daemon.judged(judged),
            Some(command) = inbox.recv() => {
                let reply = match command.ask {
                    Ask::Api(request, peer) => daemon.handle(request, peer),
                    Ask::Metrics => Ok(json!(daemon.metrics())),
                };
                let _ = command.reply.send(reply);
            }
            event = console_event(console_events.as_mut()) => {
                if let Some(event) = event {
                    daemon.on_console(event);
                } else {
                    tracing::error!("the console link ended; approvals are local only");
                    console_events = None;
                }
            }
            _ = tick.tick() => daemon.tick(),
            _ = hup.recv() => daemon.reload("SIGHUP"),
            changed = policy_change(watch.as_ref()) => match changed {
                Ok(()) => reload_at = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE),
                Err(e) => {
                    tracing::error!(error = %e, "lost the policy directory's watch; SIGHUP still reloads");
                    watch = None;
                    daemon.policies_watched = false;
                }
            },
            () = sleep_until(reload_at) => {
                reload_at = None;
                daemon.reload("file change");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    daemon.record(json!({"type": "daemon_stop"}));
    let _ = std::fs::remove_file(&daemon.config.socket);
    Ok(())
}

/// The next change in the policy directory, if it is watched.
async fn policy_change(watch: Option<&PolicyWatch>) -> std::io::Result<()> {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// The next event from the console, if one is configured.
async fn console_event(events: Option<&mut mpsc::Receiver<ClientEvent>>) -> Option<ClientEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `sd_notify`: tells systemd (Type=notify) the daemon is ready.
fn notify_systemd(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET")
        && let Ok(socket) = std::os::unix::net::UnixDatagram::unbound()
    {
        let _ = socket.send_to(state.as_bytes(), path);
    }
}

async fn serve_api(listener: UnixListener, commands: mpsc::Sender<Command>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(answer(stream, commands.clone()));
    }
}

/// One request, one reply. Requests are bounded in size; malformed ones get an error.
async fn answer(stream: UnixStream, commands: mpsc::Sender<Command>) {
    let Ok(cred) = stream.peer_cred() else { return };
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply = match BufReader::new(read.take(64 << 10)).read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => ask(&commands, Ask::Api(request, peer)).await,
            Err(e) => Err(format!("malformed request: {e}")),
        },
        Err(e) => Err(format!("reading the request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

async fn ask(commands: &mpsc::Sender<Command>, ask: Ask) -> Reply {
    let (reply, answer) = oneshot::channel();
    commands.send(Command { ask, reply }).await.map_err(|_| "the daemon is stopping".to_owned())?;
    answer.await.map_err(|_| "the daemon is stopping".to_owned())?
}

/// Prometheus text format on a loopback port, one response per connection.
async fn serve_metrics(listener: tokio::net::TcpListener, commands: mpsc::Sender<Command>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let body = ask(&commands, Ask::Metrics).await.ok().and_then(|v| v.as_str().map(str::to_owned));
        let body = body.unwrap_or_default();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

/// Whether `uid` is root or a member of group `group` (by /etc/group or primary gid).
fn is_approver(uid: u32, gid: u32, group: &str) -> bool {
    if uid == 0 {
        return true;
    }
    let user = context::user_name(uid);
    std::fs::read_to_string("/etc/group").is_ok_and(|groups| {
        groups.lines().any(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            fields.len() == 4
                && fields[0] == group
                && (fields[2].parse::<u32>().ok() == Some(gid) || fields[3].split(',').any(|m| m == user))
        })
    })
}

impl Daemon {
    fn start(config: Config, link: Option<Link>, judge: Judge) -> anyhow::Result<(Self, UnixListener)> {
        let hierarchy = Hierarchy::find()?;
        let audit = Audit::open(&config.audit_dir(), config.audit_max_bytes).context(
            "the audit trail does not verify; keyturn will not write onto a trail that was tampered with \
             (move it aside after investigating, then start again)",
        )?;
        let policies = shared(policy::file::load_dir(&config.policies_dir)?);
        let enforcer = Enforcer::load(&Options {
            mode: config.mode,
            pin_dir: config.pin_dir.clone(),
            liveness_timeout: config.liveness_timeout,
            egress_retry: false,
        })?;
        let policy_ids = read_json(&config.state_dir.join("policy-ids.json"))?;
        let refusals_audited: Vec<u64> = read_json(&config.state_dir.join(REFUSALS_AUDITED))?;
        let mut daemon = Self {
            hierarchy,
            enforcer,
            holds: Holds::default(),
            judge,
            audit,
            policies,
            policy_ids,
            agents: BTreeMap::new(),
            pending: BTreeMap::new(),
            decided: HashMap::new(),
            grants: Vec::new(),
            stats: Stats::default(),
            refusals_audited: refusals_audited.try_into().unwrap_or_default(),
            run_serial: 0,
            policies_watched: false,
            link,
            console_connected: false,
            config,
        };
        daemon.record(json!({"type": "daemon_start", "mode": daemon.enforcer.mode(),
            "egress_hold": daemon.enforcer.egress_hold(), "version": env!("CARGO_PKG_VERSION")}));
        daemon.install_policies()?;
        daemon.restore_tags()?;
        daemon.restore_grants()?;
        daemon.restore_holds();
        let listener = daemon.bind()?;
        Ok((daemon, listener))
    }

    fn bind(&self) -> anyhow::Result<UnixListener> {
        let socket = &self.config.socket;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).with_context(|| socket.display().to_string())?;
        // Everyone may connect; every request is authorized by the peer's credentials.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
        Ok(listener)
    }

    /// Appends to the audit trail. A record that cannot be written stops the daemon:
    /// nothing may be acted on without its record.
    fn record(&mut self, event: serde_json::Value) {
        self.record_all(vec![event]);
    }

    /// Appends several records with one flush to disk.
    fn record_all(&mut self, events: Vec<serde_json::Value>) {
        if let Err(e) = self.audit.record_all(events) {
            tracing::error!(error = %e, "cannot write the audit trail; stopping");
            std::process::exit(70);
        }
    }

    fn policy_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.policy_ids.get(name) {
            return id;
        }
        let id = (0..agent_common::capacity::POLICIES)
            .find(|id| !self.policy_ids.values().any(|used| used == id))
            .unwrap_or(agent_common::capacity::POLICIES - 1);
        self.policy_ids.insert(name.to_owned(), id);
        let _ = write_json(&self.config.state_dir.join("policy-ids.json"), &self.policy_ids);
        id
    }

    fn install_policies(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.policies.keys().cloned().collect();
        for name in names {
            let id = self.policy_id(&name);
            let kernel = self.policies[&name].kernel.clone();
            self.enforcer.set_policy(id, &kernel)?;
            self.record(json!({"type": "policy_load", "policy": name, "id": id}));
        }
        Ok(())
    }

    /// Loads the policy directory again (on SIGHUP, or a changed file). A bad file, or one
    /// missing that an agent uses, keeps the last good set in force.
    fn reload(&mut self, trigger: &str) {
        let loaded = policy::file::load_dir(&self.config.policies_dir).map_err(|e| e.to_string()).and_then(
            |policies| match self.agents.values().find(|a| !policies.contains_key(&a.policy)) {
                Some(agent) => Err(format!("policy {:?} is in use by agent {:?}", agent.policy, agent.name)),
                None => Ok(policies),
            },
        );
        match loaded {
            Ok(policies) => {
                self.record(json!({"type": "policy_reload", "trigger": trigger}));
                self.policies = shared(policies);
                if let Err(e) = self.install_policies() {
                    tracing::error!(error = %e, "installing policies");
                }
            }
            Err(error) => {
                tracing::error!(%error, trigger, "policy reload refused; keeping the last good policies");
                self.record(json!({"type": "policy_load_failed", "trigger": trigger, "error": error}));
            }
        }
    }

    fn save_tags(&self) {
        let agents: Vec<&Agent> = self.agents.values().collect();
        if let Err(e) = write_json(&self.config.state_dir.join("tags.json"), &agents) {
            tracing::error!(error = %e, "saving tags");
        }
    }

    fn save_grants(&self) {
        if let Err(e) = write_json(&self.config.state_dir.join(GRANTS), &self.grants) {
            tracing::error!(error = %e, "saving approval scopes");
        }
    }

    /// Approval scopes a previous daemon gave, for agents still tagged and not expired.
    fn restore_grants(&mut self) -> anyhow::Result<()> {
        let grants: Vec<Grant> = read_json(&self.config.state_dir.join(GRANTS))?;
        let now = unix_now();
        self.grants = grants
            .into_iter()
            .filter(|g| self.agents.contains_key(&g.root) && g.until.is_none_or(|until| until > now))
            .collect();
        self.save_grants();
        Ok(())
    }

    fn restore_tags(&mut self) -> anyhow::Result<()> {
        let agents: Vec<Agent> = read_json(&self.config.state_dir.join("tags.json"))?;
        for agent in agents {
            if let Err(e) = self.apply_tag(agent.clone()) {
                self.record(json!({"type": "tag_lost", "cgroup": agent.path, "error": e}));
            }
        }
        self.save_tags();
        Ok(())
    }

    fn apply_tag(&mut self, agent: Agent) -> Result<u64, String> {
        if !self.policies.contains_key(&agent.policy) {
            return Err(format!("no policy named {:?}", agent.policy));
        }
        let dir = self.hierarchy.dir(&agent.path).map_err(|e| e.to_string())?;
        if !dir.is_dir() {
            return Err(format!("no cgroup at {}", dir.display()));
        }
        let tag = Tag { policy: self.policy_id(&agent.policy), max_pending: self.config.max_pending };
        let id = self.enforcer.tag(&dir, tag).map_err(|e| error_chain(&e))?;
        self.agents.insert(id, agent);
        Ok(id)
    }

    /// Holds a previous daemon left in the pinned map: picked up again, none lost.
    fn restore_holds(&mut self) {
        let records = self.enforcer.holds().unwrap_or_default();
        for (key, hold) in records {
            if hold.state != hold_state::PENDING {
                continue;
            }
            let event = event_from_record(key, &hold);
            self.on_event(&event, true);
        }
    }

    fn drain_events(&mut self) {
        for event in self.enforcer.read_events() {
            self.on_event(&event, false);
        }
    }

    fn on_event(&mut self, event: &HoldEvent, restored: bool) {
        match self.holds.on_event(&mut self.enforcer, event) {
            Ok(Happened::Held(key)) => self.new_hold(key, event, restored),
            Ok(Happened::GoneBeforeOpen(_)) => {
                self.record(
                    json!({"type": "hold_closed", "id": context::hold_id(event), "why": "process gone"}),
                );
            }
            Ok(Happened::RogueContinueReheld(_)) => {
                self.record(
                    json!({"type": "rogue_sigcont", "id": context::hold_id(event), "pid": event.tgid,
                    "outcome": "held again"}),
                );
            }
            Ok(Happened::ReheldAfterRelease(key)) => {
                self.record(json!({"type": "held_again", "id": context::hold_id(event), "pid": event.tgid,
                    "tid": key.tid, "why": "keyturn resumed the process for another of its threads"}));
            }
            Ok(Happened::RogueContinueFrozen(_)) => {
                self.record(
                    json!({"type": "rogue_sigcont", "id": context::hold_id(event), "pid": event.tgid,
                    "outcome": "still held (frozen)"}),
                );
            }
            Ok(Happened::RogueContinueKilled(_)) => {
                let id = context::hold_id(event);
                if let Some(pending) = self.pending.remove(&id) {
                    // Killed by keyturn: the hold could not be kept.
                    self.report_closed(&id, pending.nonce, CloseReason::Abandoned);
                }
                self.decided.insert(id.clone(), "killed after a rogue SIGCONT");
                self.record(
                    json!({"type": "rogue_sigcont", "id": id, "pid": event.tgid, "outcome": "killed"}),
                );
            }
            Err(e) => tracing::error!(error = %e, "handling a kernel event"),
        }
    }

    /// The agent and policy a hold under `root` is judged by. Every tag names a loaded
    /// policy (tagging and reloads check it); `default` is always loaded.
    fn agent_and_policy(&self, root: u64) -> Option<(&Agent, &Arc<Policy>)> {
        let agent = self.agents.get(&root)?;
        let policy = self.policies.get(&agent.policy).or_else(|| self.policies.get("default"))?;
        Some((agent, policy))
    }

    /// A new hold: an exec goes to the judges (its answer arrives in [`Self::judged`]), an
    /// egress is decided here.
    fn new_hold(&mut self, key: HoldKey, event: &HoldEvent, restored: bool) {
        let Some((_, policy)) = self.agent_and_policy(event.hold.root) else {
            // Fail closed: a hold under a root no agent is known for is refused.
            self.record(json!({"type": "hold", "id": context::hold_id(event), "pid": event.tgid,
                "error": "no agent known for this cgroup"}));
            let _ = self.holds.deny(&mut self.enforcer, &key, OnDeny::Kill);
            return;
        };
        if event.hold.action.kind == kind::EXEC {
            self.judge.submit(key, *event, restored, policy.clone());
            return;
        }
        let (rule, quorum) = policy.egress_rule(&event.hold.action);
        let judgement = ExecJudgement { verdict: Verdict::Hold, rule, argv_dependent: false, quorum };
        self.settle_new_hold(key, event, restored, &judgement, None, None, Vec::new());
    }

    /// A judged exec hold, if it is still kept (its process may have gone meanwhile).
    fn judged(&mut self, judged: Judged) {
        let Judged { key, event, restored, outcome, argv } = judged;
        let kept = self.holds.get(&key).is_some_and(|held| held.event().hold.nonce == event.hold.nonce);
        let known = self
            .agent_and_policy(event.hold.root)
            .map(|(agent, policy)| (agent.name.clone(), policy.name.clone()));
        let (true, Some((agent_name, policy_name))) = (kept, known) else { return };
        let mut records = Vec::new();
        let (judgement, executable) = match outcome {
            Ok((exe, judgement)) => {
                // A verdict that does not depend on argv holds for every exec of this file
                // version: the kernel decides those by itself from now on.
                let recorded = judgement.verdict == Verdict::Allow && !judgement.argv_dependent;
                if recorded
                    && let Some(&policy_id) = self.policy_ids.get(&policy_name)
                    && let Err(e) = self.enforcer.record_exec_verdict(policy_id, exe.file, Verdict::Allow)
                {
                    tracing::warn!(error = %error_chain(&e), "recording an exec verdict in the kernel");
                }
                records.push(
                    json!({"type": "exec_judged", "id": context::hold_id(&event), "pid": event.tgid,
                    "agent": agent_name, "path": context::printable(exe.path.as_os_str().as_bytes()),
                    "sha256": exe.sha256, "verdict": judgement.verdict, "rule": judgement.rule,
                    "recorded_in_kernel": recorded}),
                );
                (judgement, Some(exe))
            }
            // Only a person can judge a program keyturn cannot verify.
            Err(why) => {
                (ExecJudgement { verdict: Verdict::Hold, rule: why, argv_dependent: true, quorum: 1 }, None)
            }
        };
        self.settle_new_hold(key, &event, restored, &judgement, executable.as_ref(), argv, records);
    }

    /// Ends a judged hold: released when the policy or an earlier approval's scope allows
    /// it, refused when the policy denies it, else pending for a person. `records` (the
    /// judgement's) are written with the outcome's, with one flush to disk.
    #[expect(clippy::too_many_arguments, reason = "one hold's judgement, handed on whole")]
    fn settle_new_hold(
        &mut self,
        key: HoldKey,
        event: &HoldEvent,
        restored: bool,
        judgement: &ExecJudgement,
        executable: Option<&Executable>,
        argv: Option<Vec<String>>,
        mut records: Vec<serde_json::Value>,
    ) {
        let root = event.hold.root;
        let Some((agent, policy)) = self.agent_and_policy(root) else { return };
        let (agent_name, requester, policy_name) =
            (agent.name.clone(), agent.requester.clone(), policy.name.clone());
        let (timeout, on_timeout, on_deny) = (policy.timeout, policy.on_timeout, policy.on_deny);
        let id = context::hold_id(event);
        let verdict = judgement.verdict;
        let now = Instant::now();
        let granted = self.grants.iter().any(|g| g.covers(root, &event.hold.action, unix_now()));
        if granted || verdict == Verdict::Allow {
            let why = if granted { "an earlier approval's scope covers it" } else { "the policy allows it" };
            records.push(json!({"type": "release", "id": id, "by": "keyturn", "why": why}));
            self.record_all(records);
            match self.holds.approve(&mut self.enforcer, &key) {
                Ok(_) => self.stats.auto_released += 1,
                Err(e) => tracing::error!(error = %e, "auto-release"),
            }
            return;
        }
        if verdict == Verdict::Deny {
            records.push(json!({"type": "deny", "id": id, "by": "keyturn", "why": "the policy denies it"}));
            self.record_all(records);
            let _ = self.holds.deny(&mut self.enforcer, &key, on_deny);
            return;
        }
        let cgroup = self.hierarchy.relative(&self.hierarchy.of_process(event.tgid).unwrap_or_default());
        let mut view = context::describe(event, &agent_name, &cgroup, &policy_name, executable, argv);
        (view.policy_rule, view.quorum, view.requester) =
            (judgement.rule.clone(), judgement.quorum, requester);
        records.push(json!({"type": "hold", "restored": restored, "hold": view}));
        self.record_all(records);
        self.holds.park(&key);
        let waited =
            Duration::from_nanos(crate::kernel::monotonic_ns().saturating_sub(event.hold.held_at_ns));
        tracing::warn!(id = %id, kind = view.kind, agent = %agent_name, pid = event.tgid, rule = %view.policy_rule,
            "action held, waiting for a decision: keyturn approve {id} | keyturn deny {id}");
        let deadline = now + timeout.saturating_sub(waited);
        if let Some(link) = &self.link {
            let requested_at = context::wall_time(event.hold.held_at_ns);
            link.raise(&view, event.hold.nonce, requested_at, SystemTime::now() + (deadline - now));
        }
        self.pending.insert(
            id,
            Pending {
                key,
                nonce: event.hold.nonce,
                view,
                root,
                action: event.hold.action,
                deadline,
                on_timeout,
                on_deny,
            },
        );
    }

    /// The agent a process runs under, if any: its cgroup or an ancestor is tagged.
    fn agent_of_process(&self, pid: u32) -> Option<&Agent> {
        let mut dir = self.hierarchy.of_process(pid).ok()?;
        loop {
            if let Ok(id) = cgroup::id(&dir)
                && let Some(agent) = self.agents.get(&id)
            {
                return Some(agent);
            }
            if dir == self.hierarchy.root() || !dir.pop() {
                return None;
            }
        }
    }

    /// Refuses callers who must not decide: agents, and anyone not an approver.
    fn check_approver(&self, peer: Peer) -> Result<(), String> {
        if let Some(agent) = self.agent_of_process(peer.pid) {
            return Err(format!(
                "refused: the caller runs inside the tagged cgroup of agent {:?}; an agent cannot decide its own holds",
                agent.name
            ));
        }
        if !is_approver(peer.uid, peer.gid, &self.config.approver_group) {
            return Err(format!(
                "permission denied: uid {} is neither root nor in group {:?}",
                peer.uid, self.config.approver_group
            ));
        }
        Ok(())
    }

    /// Takes pending hold `id` for `decider` to approve (or deny), or says why they cannot.
    fn take_pending(&mut self, id: &str, decider: &Decider, approve: bool) -> Result<Pending, String> {
        if let Decider::Local(peer) = decider {
            self.check_approver(*peer)?;
        }
        if let Some(pending) = self.pending.get(id)
            && let Some(closed) = self.gone(id, pending.key)
        {
            self.close_gone(id, closed);
        }
        let Some(pending) = self.pending.get(id) else {
            return Err(match self.decided.get(id) {
                Some(how) => format!("hold {id} was {how}"),
                None => format!("unknown hold id {id:?} (see keyturn pending)"),
            });
        };
        match decider {
            Decider::Local(peer) if pending.view.uid == peer.uid => {
                return Err(format!(
                    "refused: you run as uid {}, the user of the held process; no one approves their own action",
                    peer.uid
                ));
            }
            Decider::Local(_) if approve && pending.view.quorum > 1 => {
                return Err(format!(
                    "refused: hold {id} needs {} distinct approvers; approve it in the console \
                     (keyturn deny still works here)",
                    pending.view.quorum
                ));
            }
            Decider::Console(decision) if decision.nonce != pending.nonce => {
                return Err(format!(
                    "decision for hold {id} names nonce {}, but the hold's nonce is {}",
                    decision.nonce, pending.nonce
                ));
            }
            // The console counts approvers; the host checks its count against its own policy.
            Decider::Console(decision) if approve => {
                let approvers: std::collections::HashSet<&String> = decision.approvers.iter().collect();
                if approvers.len() < pending.view.quorum as usize {
                    return Err(format!(
                        "approval of hold {id} names {} distinct approvers, but the hold needs {}",
                        approvers.len(),
                        pending.view.quorum
                    ));
                }
                if approvers.iter().any(|a| a.eq_ignore_ascii_case(&pending.view.requester)) {
                    return Err(format!(
                        "approval of hold {id} counts its requester {:?} among the approvers",
                        pending.view.requester
                    ));
                }
            }
            _ => {}
        }
        Ok(self.pending.remove(id).expect("present"))
    }

    /// Why pending hold `id` at `key` can no longer be decided, if it cannot: its process
    /// exited, or its pid carries a newer hold (the process exited and the pid was reused,
    /// or it left the held syscall). A decision must never reach that newer hold.
    fn gone(&self, id: &str, key: HoldKey) -> Option<Closed> {
        match self.holds.get(&key) {
            Some(held) if context::hold_id(held.event()) == id => held.exited().then_some(EXITED),
            _ => Some(SUPERSEDED),
        }
    }

    /// Closes pending hold `id` without a decision.
    fn close_gone(&mut self, id: &str, (why, how): Closed) {
        let Some(pending) = self.pending.remove(id) else { return };
        self.record(json!({"type": "hold_closed", "id": id, "why": why}));
        self.report_closed(id, pending.nonce, CloseReason::ProcessExited);
        self.decision(id, how);
        // Only this hold's own record: a newer hold of the same pid is left alone.
        if self.holds.get(&pending.key).is_some_and(|held| context::hold_id(held.event()) == id)
            && let Err(e) = self.holds.close(&mut self.enforcer, &pending.key)
        {
            tracing::error!(error = %e, "closing the hold of an exited process");
        }
        self.stats.exits += 1;
    }

    /// Remembers how hold `id` ended, for a clear error on a late decision
    /// ("hold ID was HOW").
    fn decision(&mut self, id: &str, how: &'static str) {
        self.decided.insert(id.to_owned(), how);
        if self.decided.len() > 10_000 {
            self.decided.clear();
        }
    }

    /// Tells the console, if there is one, that hold `id` ended on this host.
    fn report_closed(&self, id: &str, nonce: u64, reason: CloseReason) {
        if let Some(link) = &self.link {
            link.close(id, nonce, reason);
        }
    }

    fn approve(&mut self, id: &str, scope: Scope, reason: Option<&str>, peer: Peer) -> Reply {
        let decider = Decider::Local(peer);
        let pending = self.take_pending(id, &decider, true)?;
        self.release(id, &pending, scope, reason, &decider)
    }

    fn deny(&mut self, id: &str, reason: Option<&str>, peer: Peer) -> Reply {
        let decider = Decider::Local(peer);
        let pending = self.take_pending(id, &decider, false)?;
        self.refuse(id, &pending, reason, &decider)
    }

    /// Applies `decider`'s approval of hold `id`, taken from the pending holds.
    fn release(
        &mut self,
        id: &str,
        pending: &Pending,
        scope: Scope,
        reason: Option<&str>,
        decider: &Decider,
    ) -> Reply {
        let mut record = decider.record(id, "approve", reason);
        record["scope"] = json!(scope);
        self.record(record);
        self.decision(id, "already decided: approved");
        let until = match scope {
            Scope::Once => None,
            Scope::For(seconds) => Some(Some(unix_now().saturating_add(seconds))),
            Scope::Always => Some(None),
        };
        if let Some(until) = until {
            self.grants.push(Grant { root: pending.root, action: pending.action, until });
            self.save_grants();
        }
        let released = self.holds.approve(&mut self.enforcer, &pending.key).map_err(|e| e.to_string());
        self.report_closed(id, pending.nonce, decider.closed(true));
        released?;
        self.stats.approvals += 1;
        self.record(json!({"type": "release", "id": id, "by": decider.name()}));
        Ok(json!({"id": id, "released": true}))
    }

    /// Applies `decider`'s denial of hold `id`, taken from the pending holds.
    fn refuse(&mut self, id: &str, pending: &Pending, reason: Option<&str>, decider: &Decider) -> Reply {
        let mut record = decider.record(id, "deny", reason);
        record["on_deny"] = json!(pending.on_deny);
        self.record(record);
        self.decision(id, "already decided: denied");
        let denied =
            self.holds.deny(&mut self.enforcer, &pending.key, pending.on_deny).map_err(|e| e.to_string());
        self.report_closed(id, pending.nonce, decider.closed(false));
        denied?;
        self.stats.denials += 1;
        let outcome = denial_outcome(pending.on_deny);
        self.record(json!({"type": "denied", "id": id, "outcome": outcome}));
        Ok(json!({"id": id, "outcome": outcome}))
    }

    /// What the console link reports.
    fn on_console(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected => {
                tracing::info!("connected to the console");
                self.console_connected = true;
            }
            ClientEvent::Disconnected(_) => self.console_connected = false,
            ClientEvent::Decision(decision) => self.console_decision(&decision),
            ClientEvent::Rejected(rejection) => self.record(
                json!({"type": "decision_rejected", "via": "console", "reason": rejection.to_string()}),
            ),
        }
    }

    /// A decision the client verified (signature, host, a hold it waits on, its nonce),
    /// applied like a local one: refused, and audited, if the hold is no longer pending.
    fn console_decision(&mut self, decision: &Decision) {
        let id = decision.hold_id.as_str();
        let decider = Decider::Console(decision);
        // Anything but an explicit approval denies.
        let approve = proto::v1::Verdict::try_from(decision.verdict) == Ok(proto::v1::Verdict::Approve);
        let pending = match self.take_pending(id, &decider, approve) {
            Ok(pending) => pending,
            Err(why) => {
                tracing::warn!(id, by = %decision.decided_by, error = %why, "refused a decision from the console");
                self.record(json!({"type": "decision_rejected", "id": id, "by": decision.decided_by,
                    "via": "console", "reason": why}));
                return;
            }
        };
        let reason = Some(decision.reason.as_str()).filter(|r| !r.is_empty());
        let applied = if approve {
            self.release(id, &pending, console_link::scope(decision), reason, &decider)
        } else {
            self.refuse(id, &pending, reason, &decider)
        };
        if let Err(error) = applied {
            tracing::error!(id, error = %error, "applying a decision from the console");
        }
    }

    fn tag(
        &mut self,
        path: &str,
        policy: String,
        name: Option<String>,
        requester: String,
        run: bool,
    ) -> Reply {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return Err("refused: the cgroup v2 root holds every process on this host, approvers and \
                        keyturn included; tag the cgroup an agent runs in"
                .into());
        }
        let name = name.unwrap_or_else(|| path.rsplit('/').next().unwrap_or(path).to_owned());
        // Approvers read the name in `keyturn pending`: it must print as itself.
        if context::printable(name.as_bytes()) != name {
            return Err(format!("agent name {name:?} has control or invisible characters"));
        }
        let agent = Agent { path: path.to_owned(), name, policy, requester, run };
        let id = self.apply_tag(agent.clone())?;
        self.record(json!({"type": "tag", "cgroup": agent.path, "agent": agent.name, "policy": agent.policy,
            "requester": agent.requester, "cgroup_id": id}));
        self.save_tags();
        Ok(json!({"cgroup": agent.path, "cgroup_id": id, "agent": agent.name, "policy": agent.policy,
            "requester": agent.requester}))
    }

    fn untag(&mut self, path: &str) -> Reply {
        let dir = self.hierarchy.dir(path).map_err(|e| e.to_string())?;
        let id = self
            .agents
            .iter()
            .find(|(_, a)| a.path == path.trim_start_matches('/'))
            .map(|(&id, _)| id)
            .or_else(|| cgroup::id(&dir).ok().filter(|id| self.agents.contains_key(id)))
            .ok_or_else(|| format!("{path:?} is not tagged"))?;
        self.enforcer.untag(id).map_err(|e| error_chain(&e))?;
        let agent = self.agents.remove(&id).expect("present");
        self.grants.retain(|g| g.root != id);
        self.save_grants();
        self.record(json!({"type": "untag", "cgroup": agent.path, "agent": agent.name}));
        self.save_tags();
        Ok(json!({"cgroup": agent.path, "untagged": true}))
    }

    /// `keyturn run`: a new cgroup under `keyturn.run/`, tagged, with the caller's child in it.
    fn run_agent(
        &mut self,
        pid: u32,
        policy: String,
        name: Option<String>,
        requester: String,
        peer: Peer,
    ) -> Reply {
        if let Some(agent) = self.agent_of_process(peer.pid) {
            return Err(format!("refused: the caller already runs under keyturn as agent {:?}", agent.name));
        }
        if crate::hold::procfs::stat(pid).map(|stat| stat.ppid) != Some(peer.pid) {
            return Err(format!("refused: process {pid} is not a child of the caller"));
        }
        if !self.policies.contains_key(&policy) {
            return Err(format!("no policy named {policy:?}"));
        }
        self.run_serial += 1;
        let name = name.unwrap_or_else(|| format!("run-{pid}"));
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = format!("keyturn.run/{safe}-{}-{}", std::process::id(), self.run_serial);
        let dir = self.hierarchy.dir(&path).map_err(|e| e.to_string())?;
        cgroup::create(dir.parent().expect("has parent")).map_err(|e| e.to_string())?;
        cgroup::create(&dir).map_err(|e| e.to_string())?;
        let reply = self.tag(&path, policy, Some(name), requester, true)?;
        cgroup::move_process(&dir, pid).map_err(|e| e.to_string())?;
        Ok(reply)
    }

    fn status(&self) -> serde_json::Value {
        let counters = self.enforcer.counters().unwrap_or_default();
        json!({
            "mode": self.enforcer.mode(),
            "egress_hold": self.enforcer.egress_hold(),
            "agents": self.agents.values().collect::<Vec<_>>(),
            "pending": self.pending.len(),
            "policies_watched": self.policies_watched,
            "console": self.link.as_ref().map(|_| if self.console_connected { "connected" } else { "unreachable" }),
            "counters": {
                "holds": counters[counter::HOLDS as usize],
                "released_in_kernel": counters[counter::RELEASED as usize],
                "denied_in_kernel": counters[counter::DENIED as usize],
                "approvals": self.stats.approvals,
                "denials": self.stats.denials,
                "timeouts": self.stats.timeouts,
                "exited_while_held": self.stats.exits,
                "auto_released": self.stats.auto_released,
                "orphaned": self.stats.orphaned,
                "rogue_sigconts": counters[counter::ROGUE_CONTINUE as usize],
                "exec_killed": counters[counter::EXEC_KILLED as usize],
            },
            "refused": REFUSALS.iter().map(|&(index, reason)| (reason, counters[index as usize]))
                .collect::<BTreeMap<_, _>>(),
        })
    }

    /// Audits what the kernel refused since the last look, per reason. The kernel only
    /// counts refusals (an event per refusal would let a flood crowd out real holds); the
    /// counters are pinned, so refusals made while no daemon ran are audited at start.
    fn audit_refusals(&mut self) {
        let Ok(counters) = self.enforcer.counters() else { return };
        let mut changed = false;
        for (index, reason) in REFUSALS {
            let (now, audited) = (counters[index as usize], self.refusals_audited[index as usize]);
            if now != audited {
                // Counters start again from zero when the maps are created anew.
                let count = if now > audited { now - audited } else { now };
                self.record(json!({"type": "refused", "reason": reason, "count": count}));
                changed = true;
            }
        }
        if changed {
            self.refusals_audited = counters;
            if let Err(e) = write_json(&self.config.state_dir.join(REFUSALS_AUDITED), &self.refusals_audited)
            {
                tracing::error!(error = %e, "saving the audited refusal counts");
            }
        }
    }

    fn metrics(&self) -> String {
        let status = self.status();
        let mut text = format!(
            "keyturn_pending_holds {}\nkeyturn_tagged_cgroups {}\n",
            self.pending.len(),
            self.agents.len()
        );
        if let Some(counters) = status["counters"].as_object() {
            for (name, value) in counters {
                let _ = writeln!(text, "keyturn_{name}_total {value}");
            }
        }
        if let Some(refused) = status["refused"].as_object() {
            for (reason, value) in refused {
                let _ = writeln!(text, "keyturn_refused_total{{reason=\"{reason}\"}} {value}");
            }
        }
        text
    }

    fn handle(&mut self, request: Request, peer: Peer) -> Reply {
        match request {
            Request::Tag { path, policy, name, requester } => {
                self.check_approver(peer)?;
                let requester = requester_or_caller(requester, peer, &self.config.people)?;
                self.tag(&path, policy, name, requester, false)
            }
            Request::Untag { path } => {
                self.check_approver(peer)?;
                self.untag(&path)
            }
            Request::Tags => Ok(json!(self.agents.values().collect::<Vec<_>>())),
            Request::Run { pid, policy, name, requester } => {
                // Only an operator may say someone else launched it: anyone could otherwise
                // name a stranger and approve their own agent's holds.
                if requester.is_some() {
                    self.check_approver(peer).map_err(|e| format!("--requester: {e}"))?;
                }
                let requester = requester_or_caller(requester, peer, &self.config.people)?;
                self.run_agent(pid, policy, name, requester, peer)
            }
            Request::Pending => {
                self.check_approver(peer)?;
                let mut views: Vec<&HoldView> = self.pending.values().map(|p| &p.view).collect();
                views.sort_by(|a, b| a.requested_at.cmp(&b.requested_at));
                Ok(json!(views))
            }
            Request::Approve { id, scope, reason } => self.approve(&id, scope, reason.as_deref(), peer),
            Request::Deny { id, reason } => self.deny(&id, reason.as_deref(), peer),
            Request::Status => Ok(self.status()),
        }
    }

    /// Heartbeat, timeouts, held processes that exited, `keyturn run` cgroups that emptied.
    fn tick(&mut self) {
        if let Err(e) = self.enforcer.heartbeat() {
            tracing::error!(error = %e, "heartbeat");
        }
        self.holds.sweep_cells();
        self.audit_refusals();
        // Before timeouts: a timeout must not reach a newer hold of a reused pid.
        let gone: Vec<(String, Closed)> =
            self.pending.iter().filter_map(|(id, p)| Some((id.clone(), self.gone(id, p.key)?))).collect();
        for (id, closed) in gone {
            self.close_gone(&id, closed);
        }
        let now = Instant::now();
        let expired: Vec<String> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            let pending = self.pending.remove(&id).expect("present");
            self.record(json!({"type": "timeout", "id": id, "on_timeout": pending.on_timeout}));
            self.report_closed(&id, pending.nonce, CloseReason::Timeout);
            self.decision(&id, "already decided: timed out");
            let _ = self.holds.deny(&mut self.enforcer, &pending.key, pending.on_timeout);
            self.stats.timeouts += 1;
        }
        self.sweep_orphans();
        let emptied: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.run && !populated(&self.hierarchy, &a.path))
            .map(|a| a.path.clone())
            .collect();
        for path in emptied {
            let _ = self.untag(&path);
            if let Ok(dir) = self.hierarchy.dir(&path) {
                let _ = cgroup::remove(&dir);
            }
        }
    }
}

impl Daemon {
    /// Enforces the invariant that no process in a tagged cgroup is stopped or frozen by
    /// keyturn without a pending hold (see [`orphans`]): every orphan is settled at once by
    /// its policy's `on_timeout`, audited as `hold_orphaned` and counted.
    fn sweep_orphans(&mut self) {
        // Events already reported are holds, not orphans.
        self.drain_events();
        let mut snapshot = orphans::Snapshot {
            now_ns: crate::kernel::monotonic_ns(),
            records: self.enforcer.holds().unwrap_or_default(),
            stops: self.enforcer.stops().unwrap_or_default(),
            kept: self.holds.kept(),
            ..orphans::Snapshot::default()
        };
        for agent in self.agents.values() {
            if let Ok(dir) = self.hierarchy.dir(&agent.path) {
                snapshot.observe(&dir);
            }
        }
        for cell in snapshot.empty_cells.drain(..) {
            self.holds.remove_cell_later(cell);
        }
        for orphan in orphans::find(&snapshot) {
            self.settle_orphan(&orphan);
        }
        for pid in orphans::stale_stops(&snapshot) {
            let _ = self.enforcer.forget_stop(pid);
        }
    }

    /// The `on_timeout` of the policy of the agent tagged at `root`: kill if none is known.
    fn on_timeout_of(&self, root: u64) -> OnDeny {
        self.agents
            .get(&root)
            .and_then(|agent| self.policies.get(&agent.policy))
            .map_or(OnDeny::Kill, |policy| policy.on_timeout)
    }

    /// Settles one orphan and audits how.
    fn settle_orphan(&mut self, orphan: &Orphan) {
        let (pid, tid, outcome) = match orphan {
            Orphan::Record { key, hold } => {
                let on_timeout = self.on_timeout_of(hold.root);
                let outcome = if let Ok(held) = HeldProcess::open(&event_from_record(*key, hold)) {
                    match held.deny(&mut self.enforcer, on_timeout) {
                        Ok(()) => {
                            self.holds.remove_cell_later_of(&held);
                            denial_outcome(on_timeout)
                        }
                        Err(e) => format!("could not be settled: {e}"),
                    }
                } else {
                    let _ = self.enforcer.forget(*key, hold.nonce);
                    let _ = self.enforcer.finish(hold.root);
                    "record removed: the process is gone".to_owned()
                };
                (key.tgid, Some(key.tid), outcome)
            }
            Orphan::Lost { key } => {
                // Its record is gone: an approval could never release it, and a denial
                // could never fail its syscall. Only a kill ends the stop.
                if let Some(id) = self.pending.iter().find(|(_, p)| p.key == *key).map(|(id, _)| id.clone())
                    && let Some(pending) = self.pending.remove(&id)
                {
                    self.report_closed(&id, pending.nonce, CloseReason::Abandoned);
                    self.decision(&id, "closed: its kernel record was lost");
                }
                let outcome = match self.holds.deny(&mut self.enforcer, key, OnDeny::Kill) {
                    Ok(_) | Err(HeldError::Gone(_)) => "killed".to_owned(),
                    Err(e) => format!("could not be settled: {e}"),
                };
                (key.tgid, Some(key.tid), outcome)
            }
            Orphan::Stopped { pid } | Orphan::Frozen { pid, .. } => {
                let start = procfs_start(*pid);
                let outcome = match start.map(|start| process::kill(&mut self.enforcer, *pid, start)) {
                    Some(Ok(())) => "killed".to_owned(),
                    Some(Err(e)) => format!("could not be settled: {e}"),
                    None => "gone".to_owned(),
                };
                if let Orphan::Frozen { cell, .. } = orphan {
                    self.holds.remove_cell_later(cell.clone());
                }
                (*pid, None, outcome)
            }
        };
        tracing::error!(pid, reason = orphan.reason(), %outcome, "settled a stop no pending hold accounted for");
        self.stats.orphaned += 1;
        self.record(json!({"type": "hold_orphaned", "pid": pid, "tid": tid, "reason": orphan.reason(),
            "outcome": outcome}));
    }
}

/// Policies by name, each shared with the judges that apply it.
fn shared(policies: BTreeMap<String, Policy>) -> BTreeMap<String, Arc<Policy>> {
    policies.into_iter().map(|(name, policy)| (name, Arc::new(policy))).collect()
}

/// What a denial under `on_deny` does to the held action, as the audit trail says it.
fn denial_outcome(on_deny: OnDeny) -> String {
    if on_deny == OnDeny::Kill { "killed" } else { "failed with EPERM" }.to_owned()
}

/// The start time of process `pid` in clock ticks, if it exists.
fn procfs_start(pid: u32) -> Option<u64> {
    crate::hold::procfs::stat(pid).map(|stat| stat.start_ticks)
}

/// The requester a tagging request names, checked; else the calling user as `people` names
/// them at the console, or `unix:NAME`.
fn requester_or_caller(
    requester: Option<String>,
    peer: Peer,
    people: &HashMap<String, String>,
) -> Result<String, String> {
    if let Some(requester) = requester {
        return api::check_requester(&requester).map(|()| requester);
    }
    let user = context::user_name(peer.uid);
    Ok(people.get(&user).cloned().unwrap_or_else(|| format!("unix:{user}")))
}

/// Whether the cgroup at `path` (or a descendant) still has processes.
fn populated(hierarchy: &Hierarchy, path: &str) -> bool {
    let Ok(dir) = hierarchy.dir(path) else { return false };
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| !events.lines().any(|l| l == "populated 0"))
}

/// Refuses to start twice on one pin directory.
pub fn check_not_running(config: &Config) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        bail!("a keyturn daemon is already running (socket {})", config.socket.display());
    }
    Ok(())
}
