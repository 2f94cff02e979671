//! `keyturn daemon`: owns the enforcer, turns kernel events into pending holds with full
//! context, serves the local API, applies decisions, timeouts and exits, audits every step.

mod agents;
pub mod api;
mod decisions;
mod grants;
mod intake;
mod lookups;
mod sign_in;
mod status;
mod sweep;

pub use agents::Agent;
pub use status::Status;

use std::{
    collections::{BTreeMap, HashMap},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::PermissionsExt as _,
    },
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{HoldKey, counter};
use anyhow::{Context as _, bail};
use host_client::ClientEvent;
use proto::v1::CloseReason;
use tokio::{
    io::unix::AsyncFd,
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    audit::{Audit, AuditEvent, Head},
    cgroup::{self, Hierarchy},
    config::Config,
    console_link::{self, Link, embedded},
    dns::{LookupHold, NameBook, PolicyTable, Resolver},
    hold::{context::HoldView, judge::Judge, orphans::Orphan, table::Holds},
    kernel::{Enforcer, Options, names::NameMaps},
    policy::{self, Policy, watch::PolicyWatch},
    state::{read_json, write_json},
};
use agents::{populated, requester_or_caller};
use api::{Ask, Command, Peer, Reply, Request, Target, serve_api};
use decisions::{Closed, Pending};
use grants::Grant;
use intake::Judging;
use status::{REFUSALS_AUDITED, Stats, serve_metrics};

/// How long the policy directory must stay quiet after a change before it is loaded: an
/// editor's write, rename and cleanup load once.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);

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
    /// Tagged systemd units that have no cgroup now (stopped): tagged when they get one.
    waiting: Vec<Agent>,
    pending: BTreeMap<String, Pending>,
    /// Exec holds with the judges.
    judging: HashMap<HoldKey, Judging>,
    /// What the last sweeps found unaccounted for, and since when.
    suspects: HashMap<Orphan, Instant>,
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
    /// The console's latest anchor of this trail (from its welcome, then ours), and when
    /// this daemon last sent one.
    anchored: Option<Head>,
    anchored_at: Option<Instant>,
    /// Policies by kernel id, for the resolver.
    policy_table: watch::Sender<PolicyTable>,
    /// The resolver, or why it does not run (then tagged cgroups' DNS is refused).
    resolver: Result<Resolver, String>,
    /// The names agents resolved, for the views of their egress holds.
    names: Arc<NameBook>,
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
    let (console, sign_in_links) = match &config.console {
        Some(console) => (Some(console.clone()), None),
        // Enforcement never waits on the console: holds stay decidable on this host.
        None if config.embedded_console => match embedded::start(&config).await {
            Ok(started) => (Some(started.link), Some(started.sign_in)),
            Err(e) => {
                tracing::error!(error = %e, "approvals are local only");
                (None, None)
            }
        },
        None => (None, None),
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
    let (raise, mut held_lookups) = mpsc::channel::<LookupHold>(64);
    daemon.start_resolver(raise).await;
    let (commands, mut inbox) = mpsc::channel::<Command>(64);
    tokio::spawn(serve_api(listener, commands.clone(), sign_in_links.clone()));
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
    // systemd (Type=notify), on a path or abstract socket alike.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "telling systemd the daemon is ready");
    }
    tracing::info!(mode = %daemon.enforcer.mode(), socket = %daemon.config.socket.display(), "keyturn daemon ready");
    if let Some(sign_in_links) = sign_in_links {
        let people = daemon.config.people.clone();
        tokio::spawn(async move { sign_in::announce(&sign_in_links, &people).await });
    }
    loop {
        tokio::select! {
            ready = events.readable() => {
                let mut guard = ready?;
                daemon.drain_events();
                guard.clear_ready();
            }
            Some(judged) = judged.recv() => daemon.judged(judged),
            Some(lookup) = held_lookups.recv() => daemon.hold_lookup(lookup),
            Some(command) = inbox.recv() => {
                let reply = match command.ask {
                    Ask::Api(request, peer) => daemon.handle(request, peer),
                    Ask::Metrics => api::reply(daemon.metrics()),
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
    // No resolver listens until the next daemon's: tagged cgroups' DNS is refused meanwhile.
    let _ = daemon.enforcer.set_resolver(None);
    daemon.record(AuditEvent::DaemonStop);
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
            waiting: Vec::new(),
            pending: BTreeMap::new(),
            judging: HashMap::new(),
            suspects: HashMap::new(),
            decided: HashMap::new(),
            grants: Vec::new(),
            stats: Stats::default(),
            refusals_audited: refusals_audited.try_into().unwrap_or_default(),
            run_serial: 0,
            policies_watched: false,
            link,
            console_connected: false,
            anchored: None,
            anchored_at: None,
            policy_table: watch::Sender::new(PolicyTable::default()),
            resolver: Err("not started".into()),
            names: Arc::default(),
            config,
        };
        daemon.record(AuditEvent::DaemonStart {
            mode: daemon.enforcer.mode(),
            egress_hold: daemon.enforcer.egress_hold(),
            version: env!("CARGO_PKG_VERSION").into(),
        });
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
    fn record(&mut self, event: AuditEvent) {
        self.record_all(vec![event]);
    }

    /// Appends several records with one flush to disk.
    fn record_all(&mut self, events: Vec<AuditEvent>) {
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
            let (kernel, sha256) = (self.policies[&name].kernel.clone(), self.policies[&name].sha256.clone());
            self.enforcer.set_policy(id, &kernel)?;
            self.record(AuditEvent::PolicyLoad { policy: name, id, sha256 });
        }
        if let Some(link) = &self.link {
            link.policies(self.policies.values().map(AsRef::as_ref));
        }
        let table = self
            .policies
            .iter()
            .filter_map(|(name, policy)| Some((*self.policy_ids.get(name)?, policy.clone())))
            .collect();
        self.policy_table.send_replace(Arc::new(table));
        if let Ok(resolver) = &self.resolver {
            resolver.rejudge();
        }
        Ok(())
    }

    /// Starts keyturn's resolver and points the DNS hooks at it. If it cannot start, the
    /// daemon runs on, and tagged cgroups' DNS is refused (`status` says why).
    async fn start_resolver(&mut self, raise: mpsc::Sender<LookupHold>) {
        let dns = &self.config.dns;
        let started = match NameMaps::open(&self.config.pin_dir) {
            Ok(maps) => {
                Resolver::start(dns.listen, &dns.upstream, maps, self.policy_table.subscribe(), raise)
                    .await
                    .map_err(|e| format!("listening on {}: {e}", dns.listen))
            }
            Err(e) => Err(e.to_string()),
        };
        let pointed = started.and_then(|resolver| {
            self.enforcer.set_resolver(Some(resolver.listening())).map_err(|e| e.to_string())?;
            Ok(resolver)
        });
        match &pointed {
            Ok(resolver) => self.names = resolver.book(),
            Err(error) => {
                tracing::error!(%error, "keyturn's resolver is off: tagged cgroups' DNS is refused");
            }
        }
        self.resolver = pointed;
        self.share_name_grants();
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
                self.policies = shared(policies);
                if let Err(e) = self.install_policies() {
                    tracing::error!(error = %e, "installing policies");
                }
                // In force from here, in the kernel and for the names already resolved.
                self.record(AuditEvent::PolicyReload { trigger: trigger.to_owned() });
            }
            Err(error) => {
                tracing::error!(%error, trigger, "policy reload refused; keeping the last good policies");
                self.record(AuditEvent::PolicyLoadFailed { trigger: trigger.to_owned(), error });
            }
        }
    }

    fn handle(&mut self, request: Request, peer: Peer) -> Reply {
        match request {
            Request::Tag { target, policy, name, requester } => {
                self.check_approver(peer)?;
                let requester = requester_or_caller(requester, peer, &self.config.people)?;
                self.tag(target, policy, name, requester, false, peer)
            }
            Request::Untag { target } => {
                self.check_approver(peer)?;
                self.untag(&target)
            }
            Request::UnitStarting { unit } => self.unit_starting(&unit, peer),
            Request::Tags => api::reply(self.agents.values().chain(&self.waiting).collect::<Vec<_>>()),
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
                api::reply(views)
            }
            Request::Approve { id, scope, reason } => self.approve(&id, scope, reason.as_deref(), peer),
            Request::Deny { id, reason } => self.deny(&id, reason.as_deref(), peer),
            Request::Status => api::reply(self.status()),
            Request::ConsoleLogin => self.sign_in_operator(peer),
        }
    }

    /// Heartbeat, timeouts, held processes that exited, `keyturn run` cgroups that emptied.
    fn tick(&mut self) {
        if let Err(e) = self.enforcer.heartbeat() {
            tracing::error!(error = %e, "heartbeat");
        }
        self.holds.sweep_cells();
        self.audit_refusals();
        if self
            .anchored_at
            .zip(self.link.as_ref())
            .is_some_and(|(at, link)| at.elapsed() >= link.anchor_every)
        {
            self.anchor();
        }
        self.judgements_overdue();
        // Before timeouts: a timeout must not reach a newer hold of a reused pid.
        let gone: Vec<(String, Closed)> =
            self.pending.iter().filter_map(|(id, p)| Some((id.clone(), self.gone(id, &p.held)?))).collect();
        for (id, closed) in gone {
            self.close_gone(&id, closed);
        }
        let now = Instant::now();
        let expired: Vec<String> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            let pending = self.pending.remove(&id).expect("present");
            self.record(AuditEvent::Timeout { id: id.clone(), on_timeout: pending.on_timeout });
            self.report_closed(&id, pending.nonce, CloseReason::Timeout);
            self.decision(&id, "already decided: timed out");
            let _ = self.deny_held(pending.held, pending.on_timeout);
            self.stats.timeouts += 1;
        }
        self.sweep_orphans();
        self.follow_units();
        let emptied: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.run && !populated(&self.hierarchy, &a.path))
            .map(|a| a.path.clone())
            .collect();
        for path in emptied {
            let _ = self.untag(&Target::Path(path.clone()));
            if let Ok(dir) = self.hierarchy.dir(&path) {
                let _ = cgroup::remove(&dir);
            }
        }
    }
}

/// Policies by name, each shared with the judges that apply it.
fn shared(policies: BTreeMap<String, Policy>) -> BTreeMap<String, Arc<Policy>> {
    policies.into_iter().map(|(name, policy)| (name, Arc::new(policy))).collect()
}

/// Refuses to start twice on one pin directory.
pub fn check_not_running(config: &Config) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        bail!("a keyturn daemon is already running (socket {})", config.socket.display());
    }
    Ok(())
}
