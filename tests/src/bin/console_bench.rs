//! `cargo xtask bench`, the console's part: one real `keyturn console` (SQLite, mutual
//! TLS) with 1,000 simulated hosts streaming 10,000 holds a minute, an approver polling the
//! HTTP API and approving each hold; latencies from hold to API and approval to host. Then
//! Slack and Teams: another console posting 1,000 holds to each chat's stand-in and an
//! approver clicking each; latencies from hold to message and click to host.

use std::{
    collections::HashMap,
    error::Error,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use console::{Role, Store, people::TOKEN_LIFETIME};
use ed25519_dalek::SigningKey;
use host_client::{self as client, ClientConfig, ClientEvent, ClientTls};
use proto::v1::{Exec, HoldKind, HoldRaised, hold_raised};
use rand_core::OsRng;
use tokio::sync::Semaphore;

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const HOSTS: usize = 1000;
/// Holds raised per minute, spread over the hosts.
const HOLDS_PER_MINUTE: u32 = 10_000;
const LOAD: Duration = Duration::from_mins(1);
/// Approvals in flight at once.
const APPROVERS: usize = 16;
const TIMEOUT: Duration = Duration::from_mins(2);
/// The approver's pause between two polls of the pending queue (a bound on resolution).
const POLL: Duration = Duration::from_millis(20);

/// When each hold was raised, seen in the API, approved, and released on its host.
#[derive(Default)]
struct Timeline {
    raised: HashMap<String, Instant>,
    visible: HashMap<String, Duration>,
    approve_sent: HashMap<String, Instant>,
    released: HashMap<String, Duration>,
}

type Shared = Arc<Mutex<Timeline>>;

/// The `keyturn` binary: `KEYTURN_BIN`, as `cargo xtask bench` sets it.
fn keyturn() -> PathBuf {
    std::env::var_os("KEYTURN_BIN").map_or_else(|| PathBuf::from("target/release/keyturn"), PathBuf::from)
}

/// The console under test, killed on drop.
struct RunningConsole {
    child: Child,
    dir: PathBuf,
}

impl Drop for RunningConsole {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RunningConsole {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Lets this process and the console it starts hold a connection per host.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn hold(id: String, nonce: u64) -> HoldRaised {
    let now = console::store::now_ms().cast_unsigned();
    HoldRaised {
        id,
        nonce,
        kind: HoldKind::Exec.into(),
        agent: "bench-agent".into(),
        cgroup: "keyturn.run/bench".into(),
        pid: 4242,
        uid: 1001,
        user: "agent".into(),
        requested_at_ms: now,
        policy: "default".into(),
        policy_rule: "exec path \"/usr/bin/curl\" action Hold".into(),
        deadline_ms: now + 600_000,
        requester: "agent-owner@example.com".into(),
        quorum: 1,
        in_console: false,
        notify: vec![],
        detail: Some(hold_raised::Detail::Exec(Exec {
            path: "/usr/bin/curl".into(),
            argv: vec!["curl".into(), "-T".into(), "dump.sql".into(), "https://example.com/upload".into()],
            cwd: "/home/agent/project".into(),
            sha256: "ab".repeat(32),
            parents: vec![],
        })),
    }
}

fn percentiles(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index"
        )]
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    if samples.is_empty() {
        println!("{name:<34} no samples");
        return;
    }
    println!(
        "{name:<34} n={:<6} p50 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Starts `keyturn console` with mutual TLS on loopback, its database in `dir`, with the
/// configuration's `extra` sections.
async fn start_console(dir: &Path, extra: &str) -> Result<(RunningConsole, SocketAddr, SocketAddr)> {
    let (hosts, http) = (tests::free_addr(), tests::free_addr());
    std::fs::create_dir_all(dir)?;
    let config = dir.join("console.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{hosts}\"\ndatabase = \"sqlite://{0}/console.db?mode=rwc\"\nkey = \"{0}/console.key\"\n\
             [tls]\nenabled = true\ndir = \"{0}/tls\"\nnames = [\"127.0.0.1\"]\n[http]\nlisten = \"{http}\"\n{extra}",
            dir.display()
        ),
    )?;
    let child = Command::new(keyturn())
        .args(["console", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,sqlx=error")
        .stderr(Stdio::inherit())
        .spawn()?;
    let console = RunningConsole { child, dir: dir.to_owned() };
    let deadline = Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(http).await.is_err() {
        if Instant::now() > deadline {
            return Err("the console did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((console, hosts, http))
}

/// The simulated hosts: each a real `host_client` with a key and certificate of its own.
struct Fleet {
    handles: Vec<client::ClientHandle>,
    /// Streams that broke (each client reconnects).
    lost: Arc<AtomicUsize>,
}

impl Fleet {
    /// Enrols `hosts` hosts with tokens from `store`, connects them, and waits until all are.
    async fn connect(
        hosts: usize,
        store: &Store,
        endpoint: &str,
        ca: &str,
        console_key: ed25519_dalek::VerifyingKey,
        timeline: &Shared,
    ) -> Result<Self> {
        let connected = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(hosts);
        for n in 0..hosts {
            let host = format!("bench-{n:04}");
            let key = SigningKey::generate(&mut OsRng);
            let enrolment = store.issue_token(&host, Duration::from_mins(10)).await?;
            let certificate = client::enrol(endpoint, ca, &host, &enrolment, &key).await?;
            let (handle, mut events) = client::start(ClientConfig {
                endpoint: endpoint.to_owned(),
                host,
                agent_version: "bench".into(),
                key,
                console_keys: vec![console_key],
                tls: Some(ClientTls { ca: ca.to_owned(), certificate }),
            });
            let (timeline, connected, lost) = (timeline.clone(), connected.clone(), lost.clone());
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        ClientEvent::Connected { .. } => {
                            connected.fetch_add(1, Ordering::Relaxed);
                        }
                        ClientEvent::Decision(decision) => {
                            let mut timeline = timeline.lock().expect("timeline");
                            if let Some(sent) = timeline.approve_sent.get(&decision.hold_id).copied() {
                                timeline.released.insert(decision.hold_id, sent.elapsed());
                            }
                        }
                        ClientEvent::Disconnected(_) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                        ClientEvent::Rejected(why) => eprintln!("a host refused a decision: {why}"),
                    }
                }
            });
            handles.push(handle);
        }
        wait_for("every host to connect", || connected.load(Ordering::Relaxed) >= hosts).await?;
        Ok(Self { handles, lost })
    }
}

/// The approver: polls the pending queue, marks when each hold became visible, and
/// approves it (at most [`APPROVERS`] approvals in flight).
async fn approve_all(api: String, token: String, timeline: Shared) {
    let http_client = reqwest::Client::new();
    let permits = Arc::new(Semaphore::new(APPROVERS));
    loop {
        tokio::time::sleep(POLL).await;
        let answer: serde_json::Value = match http_client
            .get(format!("{api}/holds?status=pending&limit=500"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(e) => {
                eprintln!("polling the API failed: {e}");
                continue;
            }
        };
        let seen = Instant::now();
        for hold in answer["holds"].as_array().into_iter().flatten() {
            let (Some(id), Some(hold_id)) = (hold["id"].as_str(), hold["hold_id"].as_str()) else {
                continue;
            };
            {
                let mut timeline = timeline.lock().expect("timeline");
                let Some(raised) = timeline.raised.get(hold_id).copied() else { continue };
                if timeline.visible.contains_key(hold_id) {
                    continue;
                }
                timeline.visible.insert(hold_id.to_owned(), seen - raised);
            }
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let (timeline, http_client, api, token) =
                (timeline.clone(), http_client.clone(), api.clone(), token.clone());
            let (id, hold_id) = (id.to_owned(), hold_id.to_owned());
            tokio::spawn(async move {
                timeline.lock().expect("timeline").approve_sent.insert(hold_id, Instant::now());
                let response =
                    http_client.post(format!("{api}/holds/{id}/approve")).bearer_auth(&token).send().await;
                if let Err(e) = response.and_then(reqwest::Response::error_for_status) {
                    eprintln!("approving {id} failed: {e}");
                }
                drop(permit);
            });
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_file_limit();
    let dir = std::env::temp_dir().join(format!("kt-console-bench-{}", std::process::id()));
    let (console, hosts_addr, http) = start_console(&dir, "").await?;
    let store = Store::open(&format!("sqlite://{}/console.db?mode=rwc", dir.display())).await?;
    let ca = std::fs::read_to_string(dir.join("tls/ca.pem"))?;
    let console_key = host_client::keys::load_or_create(&dir.join("console.key"))?.verifying_key();
    let (_, token) = store
        .create_api_token("approver@example.com", Role::Approver, "bench", "bench", TOKEN_LIFETIME)
        .await?;
    let rss_idle = console.rss_kib();

    // Every host enrols and connects with the real host client.
    let timeline: Shared = Arc::default();
    let started = Instant::now();
    let fleet =
        Fleet::connect(HOSTS, &store, &format!("https://{hosts_addr}"), &ca, console_key, &timeline).await?;
    let connect_time = started.elapsed();
    let rss_connected = console.rss_kib();
    let approver = tokio::spawn(approve_all(format!("http://{http}/api"), token, timeline.clone()));

    // The load: holds spread evenly over the hosts and the minute.
    let interval = Duration::from_mins(1) / HOLDS_PER_MINUTE;
    let total = u32::try_from((LOAD.as_millis() / interval.as_millis().max(1)).max(1))?;
    let mut tick = tokio::time::interval(interval);
    let load_started = Instant::now();
    for n in 0..total {
        tick.tick().await;
        let id = format!("{n:012x}");
        timeline.lock().expect("timeline").raised.insert(id.clone(), Instant::now());
        fleet.handles[n as usize % HOSTS].raise(hold(id, u64::from(n) + 1));
    }
    let load_time = load_started.elapsed();
    let expected = total as usize;
    wait_for("every hold to be released", || timeline.lock().expect("timeline").released.len() >= expected)
        .await?;
    approver.abort();
    let rss_loaded = console.rss_kib();

    let lost = fleet.lost.load(Ordering::Relaxed);
    report(
        &timeline.lock().expect("timeline"),
        (total, load_time, connect_time),
        (rss_idle, rss_connected, rss_loaded),
        lost,
    )?;
    drop(console);
    drop(fleet);
    slack(&dir.with_extension("slack")).await?;
    teams(&dir.with_extension("teams")).await?;
    // The hosts' clients would only report the console going away.
    std::process::exit(0)
}

/// Prints what the load phase measured: `(holds, load time, connect time)`, the console's
/// RSS (idle, connected, loaded) in KiB, and the streams lost.
fn report(
    timeline: &Timeline,
    (total, load_time, connect_time): (u32, Duration, Duration),
    (rss_idle, rss_connected, rss_loaded): (u64, u64, u64),
    lost: usize,
) -> Result<()> {
    println!("\nconsole at scale: {HOSTS} hosts over mutual TLS, SQLite, one console process");
    println!(
        "{:<34} {:.1} s (enrol + connect, one after another)",
        "hosts connected in",
        connect_time.as_secs_f64()
    );
    let rate = f64::from(total) / load_time.as_secs_f64() * 60.0;
    println!("{:<34} {total} holds in {:.1} s ({rate:.0} a minute)", "load", load_time.as_secs_f64());
    percentiles(
        "hold raised -> visible in the API",
        &mut timeline.visible.values().copied().collect::<Vec<_>>(),
    );
    percentiles(
        "approve sent -> verified on host",
        &mut timeline.released.values().copied().collect::<Vec<_>>(),
    );
    let per_host = rss_connected.saturating_sub(rss_idle) / u64::try_from(HOSTS)?;
    println!(
        "{:<34} idle {} MiB, {HOSTS} hosts {} MiB, after load {} MiB: {per_host} KiB per connected host",
        "console RSS",
        rss_idle / 1024,
        rss_connected / 1024,
        rss_loaded / 1024,
    );
    println!("{:<34} {lost}", "host streams lost during the run");
    Ok(())
}

/// Holds each chat phase raises, and the hosts they come from.
const CHAT_HOLDS: u32 = 1_000;
const CHAT_HOSTS: usize = 10;
/// The Slack account the approver clicks as.
const SLACK_APPROVER: (&str, &str) = ("T0BENCH", "U0APPROVER");

/// The Slack phase: holds posted to the stand-in, each approved by a click in it.
async fn slack(dir: &Path) -> Result<()> {
    let stand_in = Arc::new(tests::slack::SlackStandIn::start().await);
    let extra = format!(
        "[slack]\nbot_token = \"{}\"\napp_token = \"{}\"\nchannel = \"C0BENCH\"\napi_url = \"{}\"\n",
        tests::slack::BOT_TOKEN,
        tests::slack::APP_TOKEN,
        stand_in.api_url()
    );
    let (console, hosts_addr, _) = start_console(dir, &extra).await?;
    let store = Store::open(&format!("sqlite://{}/console.db?mode=rwc", dir.display())).await?;
    let account = console::chat::ChatAccount::slack(&format!("{}/{}", SLACK_APPROVER.0, SLACK_APPROVER.1))?;
    store.link_chat(&account, "approver@example.com", Role::Approver, "bench").await?;
    let ca = std::fs::read_to_string(dir.join("tls/ca.pem"))?;
    let console_key = host_client::keys::load_or_create(&dir.join("console.key"))?.verifying_key();
    stand_in.wait_connected(1).await;
    let timeline: Shared = Arc::default();
    let endpoint = format!("https://{hosts_addr}");
    let fleet = Fleet::connect(CHAT_HOSTS, &store, &endpoint, &ca, console_key, &timeline).await?;
    let clicker = tokio::spawn(click_all(stand_in.clone(), timeline.clone()));
    raise_for_clicks(&fleet, &timeline).await?;
    clicker.abort();
    let timeline = timeline.lock().expect("timeline");
    let mut posted: Vec<Duration> = stand_in
        .messages()
        .iter()
        .filter_map(|message| {
            let raised = timeline.raised.get(&hold_id_of(message)?)?;
            Some(message.at.saturating_duration_since(*raised))
        })
        .collect();
    report_chat("Slack", "Socket Mode", &mut posted, &timeline, stand_in.refusals().len());
    drop(console);
    Ok(())
}

/// Prints what a chat phase measured: `posted`, from each hold raised to its message;
/// `timeline`'s clicks to release; and the calls the stand-in refused.
fn report_chat(chat: &str, how: &str, posted: &mut [Duration], timeline: &Timeline, refused: usize) {
    println!("\n{chat}: {CHAT_HOLDS} holds from {CHAT_HOSTS} hosts, 50 a second, {how} to the stand-in");
    percentiles(&format!("hold raised -> posted in {chat}"), posted);
    percentiles(
        "click sent -> verified on host",
        &mut timeline.released.values().copied().collect::<Vec<_>>(),
    );
    println!("{:<34} {refused}", "calls the stand-in refused");
}

/// Raises [`CHAT_HOLDS`] holds across `fleet`, 50 a second, and waits until a click in
/// chat released each.
async fn raise_for_clicks(fleet: &Fleet, timeline: &Shared) -> Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for n in 0..CHAT_HOLDS {
        tick.tick().await;
        let id = format!("{n:012x}");
        timeline.lock().expect("timeline").raised.insert(id.clone(), Instant::now());
        fleet.handles[n as usize % CHAT_HOSTS].raise(hold(id, u64::from(n) + 1));
    }
    let expected = CHAT_HOLDS as usize;
    wait_for("every hold to be released by a click", || {
        timeline.lock().expect("timeline").released.len() >= expected
    })
    .await
}

/// The Teams phase: holds posted by the bot to the stand-in, each approved by a click sent
/// to the console's messaging endpoint with a Bot Framework token.
async fn teams(dir: &Path) -> Result<()> {
    use tests::teams::{self, TeamsStandIn};
    let stand_in = Arc::new(TeamsStandIn::start().await);
    let extra = format!(
        "[teams]\napp_id = \"{}\"\napp_secret = \"{}\"\ntenant_id = \"{}\"\nchannel = \"19:bench@thread.tacv2\"\n\
         service_url = \"{}\"\ntoken_url = \"{}\"\nopenid_metadata = \"{}\"\n",
        teams::APP_ID,
        teams::APP_SECRET,
        teams::TENANT,
        stand_in.service_url(),
        stand_in.token_url(),
        stand_in.openid_metadata(),
    );
    let (console, hosts_addr, http) = start_console(dir, &extra).await?;
    let store = Store::open(&format!("sqlite://{}/console.db?mode=rwc", dir.display())).await?;
    let account = console::chat::ChatAccount::teams(&format!("{}/{TEAMS_APPROVER}", teams::TENANT))?;
    store.link_chat(&account, "approver@example.com", Role::Approver, "bench").await?;
    let ca = std::fs::read_to_string(dir.join("tls/ca.pem"))?;
    let console_key = host_client::keys::load_or_create(&dir.join("console.key"))?.verifying_key();
    let timeline: Shared = Arc::default();
    let endpoint = format!("https://{hosts_addr}");
    let fleet = Fleet::connect(CHAT_HOSTS, &store, &endpoint, &ca, console_key, &timeline).await?;
    let clicker = tokio::spawn(click_all_teams(stand_in.clone(), http, timeline.clone()));
    raise_for_clicks(&fleet, &timeline).await?;
    clicker.abort();
    let timeline = timeline.lock().expect("timeline");
    let mut posted: Vec<Duration> = stand_in
        .cards()
        .iter()
        .filter_map(|card| {
            Some(card.at.saturating_duration_since(*timeline.raised.get(&card_hold_id(card)?)?))
        })
        .collect();
    report_chat("Teams", "a bot", &mut posted, &timeline, stand_in.refusals().len());
    drop(console);
    Ok(())
}

/// The Teams user (Entra ID object id) the approver clicks as.
const TEAMS_APPROVER: &str = "00000000-0000-0000-0000-0000000a9900";

/// The id of the hold a card announces, from its line `hold ID · …`.
fn card_hold_id(card: &tests::teams::Card) -> Option<String> {
    card.card["body"]
        .as_array()?
        .iter()
        .find_map(|block| Some(block["text"].as_str()?.strip_prefix("hold ")?.split(' ').next()?.to_owned()))
}

/// The approver in Teams: clicks **Approve once** on each new card, at most [`APPROVERS`]
/// clicks in flight, each an invoke with a Bot Framework token.
async fn click_all_teams(stand_in: Arc<tests::teams::TeamsStandIn>, console: SocketAddr, timeline: Shared) {
    let permits = Arc::new(Semaphore::new(APPROVERS));
    let authorization = format!("Bearer {}", stand_in.token(&stand_in.service_url(), &serde_json::json!({})));
    let mut seen = 0;
    loop {
        tokio::time::sleep(POLL).await;
        let cards = stand_in.cards();
        let new = cards.get(seen..).unwrap_or_default().to_vec();
        seen = cards.len();
        for card in new {
            let Some(id) = card_hold_id(&card) else { continue };
            let Some(value) = card.card["actions"][0]["data"]["hold"].as_str().map(str::to_owned) else {
                continue;
            };
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let (stand_in, timeline, authorization) =
                (stand_in.clone(), timeline.clone(), authorization.clone());
            tokio::spawn(async move {
                timeline.lock().expect("timeline").approve_sent.insert(id, Instant::now());
                let who = (tests::teams::TENANT, TEAMS_APPROVER);
                stand_in.click(console, &authorization, who, tests::teams::APPROVE, &value).await;
                drop(permit);
            });
        }
    }
}

/// The id of the hold a message announces, from its context line (`hold ID · …`).
fn hold_id_of(message: &tests::slack::Message) -> Option<String> {
    message.blocks.as_array()?.iter().find_map(|block| {
        let text = block["elements"].as_array()?.first()?["text"].as_str()?;
        Some(text.strip_prefix("hold ")?.split(' ').next()?.to_owned())
    })
}

/// What the **Approve once** button of a pending hold's message sends: `ID@HOST`.
fn approve_value_of(message: &tests::slack::Message) -> Option<String> {
    message.blocks.as_array()?.iter().find_map(|block| {
        let approve = block["elements"].as_array()?.iter().find(|e| e["action_id"] == "keyturn_approve")?;
        Some(approve["value"].as_str()?.to_owned())
    })
}

/// The approver in Slack: clicks **Approve once** on each new message, at most
/// [`APPROVERS`] clicks in flight.
async fn click_all(stand_in: Arc<tests::slack::SlackStandIn>, timeline: Shared) {
    let permits = Arc::new(Semaphore::new(APPROVERS));
    let mut seen = 0;
    loop {
        tokio::time::sleep(POLL).await;
        let new = stand_in.messages_after(seen);
        seen += new.len();
        for message in new {
            let (Some(id), Some(value)) = (hold_id_of(&message), approve_value_of(&message)) else {
                continue;
            };
            let (user_team, user) = SLACK_APPROVER;
            let click = tests::slack::block_action(user_team, user, "keyturn_approve", &value, &message);
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let (stand_in, timeline) = (stand_in.clone(), timeline.clone());
            tokio::spawn(async move {
                timeline.lock().expect("timeline").approve_sent.insert(id, Instant::now());
                let envelope = stand_in.interact(click).await;
                stand_in.wait_acked(&envelope).await;
                drop(permit);
            });
        }
    }
}
