//! The console's web UI in a real headless Chromium (tests/browser, playwright-core): a
//! person signs in through a real OpenID provider and approves a held exec of the real
//! daemon there, an operator does the same with a one-time sign-in link, and a viewer's
//! approval is refused.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use console::{
    Api, Console, Role, RoleMap, Store,
    keys::Signer,
    oidc::{Oidc, OidcConfig},
    people::TOKEN_LIFETIME,
};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use tests::{
    WAIT,
    daemon::{Daemon, HOLD_FLAGGED, finish},
    oidc::{OidcProvider, PASSWORD},
};
use tokio::sync::oneshot;

/// The name the test daemons give themselves at the console.
const HOST: &str = "ui-host";

fn console_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A console on SQLite in a runtime of its own thread: host streams on one loopback port,
/// the web UI and API on another; everything ends, and its files go, on drop.
struct Served {
    console: Console,
    http: SocketAddr,
    grpc: SocketAddr,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start() -> Self {
        Self::start_with(None)
    }

    /// The same, signing people in through `provider` too (groups give the roles), whose
    /// redirect must be `http://HTTP/auth/callback`.
    fn start_with(sign_in: Option<(&OidcProvider, SocketAddr)>) -> Self {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let oidc = sign_in.map(|(provider, http)| OidcConfig {
            issuer: provider.issuer().to_owned(),
            client_id: provider.client().id.to_owned(),
            client_secret: provider.client().secret.map(String::from),
            redirect_url: format!("http://{http}/auth/callback"),
            scopes: ["openid", "email", "profile", "groups"].map(String::from).to_vec(),
            groups_claim: "groups".to_owned(),
            ca: None,
            teams_accounts: false,
        });
        let http = sign_in.map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |(_, http)| http);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kt-web-ui-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("console dir");
        let database = format!("sqlite://{}/console.db?mode=rwc", dir.display());
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let console =
                    Console::new(Store::open(&database).await.expect("store"), Signer::new(console_key()));
                let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let http = tokio::net::TcpListener::bind(http).await.expect("bind");
                let addrs = (grpc.local_addr().expect("addr"), http.local_addr().expect("addr"));
                let oidc = match &oidc {
                    Some(config) => Some(Oidc::discover(config).await.expect("discover the provider")),
                    None => None,
                };
                let roles = RoleMap {
                    admin: vec!["keyturn-admins".into()],
                    approver: vec!["keyturn-approvers".into()],
                    viewer: vec!["keyturn-viewers".into()],
                };
                ready.send((console.clone(), addrs)).expect("ready");
                let api = Api::new(console.clone(), oidc, roles, false);
                tokio::select! {
                    result = console.serve(grpc) => result.expect("serve hosts"),
                    result = api.serve(http) => result.expect("serve the API"),
                    _ = stopped => {}
                }
            });
        });
        let (console, (grpc, http)) = is_ready.recv().expect("the console started");
        Self { console, http, grpc, dir, stop: Some(stop), thread: Some(thread) }
    }

    fn store(&self) -> &Store {
        self.console.store()
    }

    /// A daemon linked to this console over plaintext, holding its `flagged` program.
    fn daemon(&self) -> Daemon {
        let public = hex::encode(console_key().verifying_key().as_bytes());
        let section = format!(
            "console = {{ endpoint = \"http://{}\", public_keys = [\"{public}\"], host = \"{HOST}\" }}",
            self.grpc
        );
        Daemon::start_with_config(HOLD_FLAGGED, &section)
    }

    fn token(&self, rt: &tokio::runtime::Runtime, person: &str, role: Role) -> String {
        rt.block_on(self.store().create_api_token(
            person,
            role,
            "browser test",
            "web_ui test",
            TOKEN_LIFETIME,
        ))
        .expect("token")
        .1
    }

    /// Waits until the console has hold `id` of this test's host pending.
    fn pending(&self, rt: &tokio::runtime::Runtime, id: &str) {
        let deadline = Instant::now() + WAIT;
        while rt
            .block_on(self.store().hold(HOST, id))
            .expect("read the store")
            .is_none_or(|r| r.status != "pending")
        {
            assert!(Instant::now() < deadline, "hold {id} did not reach the console");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        self.thread.take().expect("running").join().expect("the console thread");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the browser script did: whether it succeeded, and the JSON lines it printed.
struct Browser {
    success: bool,
    steps: Vec<Value>,
    log: String,
}

impl Browser {
    fn step(&self, name: &str) -> &Value {
        self.steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {}", self.log))
    }
}

/// Runs `tests/browser/approve.mjs` against `served` for hold `HOLD@HOST` with `args`.
fn browser(served: &Served, hold: &str, args: &[&str]) -> Browser {
    browser_script(served, "approve.mjs", &[&["--hold", hold], args].concat())
}

/// Runs `tests/browser/SCRIPT` against `served` with `args`.
fn browser_script(served: &Served, script: &str, args: &[&str]) -> Browser {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "{}: no node_modules; run `cargo xtask setup` (npm ci)",
        dir.display()
    );
    let started = Instant::now();
    let out = Command::new("node")
        .arg(dir.join(script))
        .args(["--url", &format!("http://{}/", served.http)])
        .args(args)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = format!(
        "{:?} in {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("browser: {log}");
    let steps = stdout.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    Browser { success: out.status.success(), steps, log }
}

/// The console's audit events of `type` about hold `id`.
fn console_audit(rt: &tokio::runtime::Runtime, served: &Served, kind: &str, id: &str) -> Vec<Value> {
    let events = rt.block_on(served.store().audit_events()).expect("audit");
    events.into_iter().filter(|e| e["type"] == kind && e["hold"] == id).collect()
}

fn text(value: &Value) -> &str {
    value.as_str().expect("a string")
}

#[test]
fn a_person_signs_in_and_approves_a_held_exec_in_the_browser_and_it_runs() {
    let rt = runtime();
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let provider = OidcProvider::start(&format!("http://{http}/auth/callback"));
    let served = Served::start_with(Some((&provider, http)));
    let daemon = served.daemon();
    // Markup from the agent is shown as text, never acted on; the daemon already escaped
    // the terminal escape (the UI would mark a raw one too).
    let hostile = "<img src=x onerror=alert(1)>approved\x1b[1m";
    let agent = daemon.run_agent(&daemon.flagged(), &[hostile]);
    let hold = daemon.pending_one();
    let id = text(&hold["id"]).to_owned();
    served.pending(&rt, &id);
    let argv: Vec<&str> = hold["argv"].as_array().expect("argv").iter().map(text).collect();
    assert_eq!(argv[1], hostile.replace('\x1b', "\\x1b"));
    let shown = argv.join(" ");
    // The host's trail was anchored, then showed cut: the Audit view must say so.
    let anchor =
        |records, head: &str| proto::v1::ChainAnchor { records, head: head.into(), ..Default::default() };
    rt.block_on(served.store().anchor(HOST, &anchor(3, "a3"))).expect("anchor");
    rt.block_on(served.store().anchor(HOST, &anchor(2, "b2"))).expect("anchor").expect("a finding");

    let run = browser(
        &served,
        &format!("{id}@{HOST}"),
        &[
            "--login",
            "bob@example.com",
            "--password",
            PASSWORD,
            "--expect-argv",
            &shown,
            "--expect-rule",
            text(&hold["policy_rule"]),
            "--reason",
            "expected by the test",
            "--expect-trail-finding",
            "truncated: the trail has 2 records",
        ],
    );
    assert!(run.success, "{}", run.log);
    assert_eq!(run.step("signed_in")["role"], "approver");
    assert!(
        text(&run.step("host_trails")["findings"]).contains("an earlier anchor covered 3"),
        "{}",
        run.log
    );
    assert_eq!(run.step("context")["argv"], shown.as_str());
    assert!(text(&run.step("shown")["decision"]).contains("bob@example.com"), "{}", run.log);
    let events = rt.block_on(served.store().audit_events()).expect("audit");
    let signed_in = events.iter().find(|e| e["type"] == "signed_in").expect("the sign-in is audited");
    assert_eq!((text(&signed_in["person"]), text(&signed_in["how"])), ("bob@example.com", "oidc"));

    assert_eq!(finish(agent), (0, format!("{hostile}\n")));
    let decided = &console_audit(&rt, &served, "decided", &id)[0];
    assert_eq!(
        (decided["by"].clone(), decided["reason"].clone()),
        ("bob@example.com".into(), "expected by the test".into())
    );
    let host = daemon.wait_record(0, |e| e["type"] == "decision" && e["id"] == id.as_str());
    assert_eq!((host["verdict"].clone(), host["by"].clone()), ("approve".into(), "bob@example.com".into()));
    assert_eq!(host["reason"], "expected by the test");
}

#[test]
fn a_viewer_is_refused_in_the_browser_and_the_process_stays_held_until_denied() {
    let rt = runtime();
    let served = Served::start();
    let daemon = served.daemon();
    let viewer = served.token(&rt, "vera@example.com", Role::Viewer);
    let agent = daemon.run_agent(&daemon.flagged(), &["must-not-print"]);
    let id = text(&daemon.pending_one()["id"]).to_owned();
    served.pending(&rt, &id);

    let run = browser(&served, &format!("{id}@{HOST}"), &["--token", &viewer, "--expect", "forbidden"]);
    assert!(run.success, "{}", run.log);
    assert_eq!(run.step("refused")["code"], "forbidden");
    assert!(text(&run.step("refused")["message"]).contains("approver role"), "{}", run.log);
    let refused = &console_audit(&rt, &served, "decision_refused", &id)[0];
    assert_eq!(
        (refused["by"].clone(), refused["code"].clone()),
        ("vera@example.com".into(), "forbidden".into())
    );
    assert_eq!(daemon.pending().len(), 1, "still held");

    let approver = served.token(&rt, "bob@example.com", Role::Approver);
    let denied = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{}/api/holds/{id}@{HOST}/deny", served.http))
            .bearer_auth(&approver)
            .json(&serde_json::json!({"reason": "not today"}))
            .send()
            .await
            .expect("deny")
    });
    assert_eq!(denied.status(), 200);
    assert_eq!(finish(agent), (128 + libc::SIGKILL, String::new()));
    let host = daemon.wait_record(0, |e| e["type"] == "decision" && e["id"] == id.as_str());
    assert_eq!((host["verdict"].clone(), host["by"].clone()), ("deny".into(), "bob@example.com".into()));
}

/// An operator opens a one-time sign-in link: the page redeems it, takes the secret out of
/// the address bar and shows the queue, where the operator approves; the same link opened
/// again says it is spent and how to get another.
#[test]
fn an_operator_signs_in_with_a_one_time_link_and_approves_in_the_browser() {
    let rt = runtime();
    let served = Served::start();
    let daemon = served.daemon();
    let secret = rt.block_on(served.store().issue_sign_in_link("unix:operator")).expect("a link");
    let agent = daemon.run_agent(&daemon.flagged(), &["linked"]);
    let id = text(&daemon.pending_one()["id"]).to_owned();
    served.pending(&rt, &id);

    let run = browser(&served, &format!("{id}@{HOST}"), &["--link", &secret, "--reason", "by link"]);
    assert!(run.success, "{}", run.log);
    let signed_in = run.step("signed_in");
    assert_eq!((text(&signed_in["whoami"]), text(&signed_in["role"])), ("unix:operator · admin", "admin"));
    assert!(!text(&signed_in["address"]).contains("login="), "{}", run.log);
    assert!(text(&run.step("shown")["decision"]).contains("unix:operator"), "{}", run.log);
    assert_eq!(finish(agent), (0, "linked\n".to_owned()));

    let refused = run.step("link_refused");
    assert!(text(&refused["message"]).contains("sign_in_failed"), "{}", run.log);
    assert!(text(&refused["hint"]).contains("keyturn console login"), "{}", run.log);
    assert!(!text(&refused["address"]).contains("login="), "{}", run.log);
}

/// A link offered to a chat account, opened signed out: the page takes the secret out of
/// the address bar, keeps it through signing in at the identity provider, shows the account
/// and the person it would link with a warning, and links them once confirmed; the same
/// link opened again says it was used.
#[test]
fn a_person_confirms_a_chat_link_offered_to_them_after_signing_in() {
    let rt = runtime();
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let provider = OidcProvider::start(&format!("http://{http}/auth/callback"));
    let served = Served::start_with(Some((&provider, http)));
    let account = console::chat::ChatAccount::slack("T0KT/U0BOB").expect("an account");
    let secret =
        rt.block_on(served.store().offer_chat_link(&account, "bob", "bob@example.com")).expect("an offer");

    let run = browser_script(
        &served,
        "chat_link.mjs",
        &["--secret", &secret, "--login", "bob@example.com", "--password", PASSWORD],
    );
    assert!(run.success, "{}", run.log);
    for step in ["opened", "offer"] {
        assert!(!text(&run.step(step)["address"]).contains("chat-link="), "{}", run.log);
    }
    let offer = run.step("offer");
    assert_eq!(text(&offer["account"]), "slack T0KT/U0BOB");
    assert!(text(&offer["person"]).contains("(bob@example.com)") && offer["warning"] == true, "{}", run.log);
    assert!(
        text(&run.step("linked")["text"])
            .contains("slack:T0KT/U0BOB now approves and denies as bob@example.com (approver)"),
        "{}",
        run.log
    );
    assert!(text(&run.step("refused")["text"]).contains("link_used"), "{}", run.log);
    let link = rt.block_on(served.store().chat_link(&account)).expect("read").expect("linked");
    assert_eq!((link.person.as_str(), link.role), ("bob@example.com", Role::Approver));
}
