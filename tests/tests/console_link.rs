//! The real daemon linked to a real console (SQLite, in this process): held actions reach
//! the console with their context, a person's signed decision there releases or kills the
//! held process, and decisions the host must not act on are refused and audited.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use console::{
    Console, Store,
    keys::Signer,
    server::{ConsoleStream, Tls},
    store::{DecisionRequest, HoldRecord, Outcome, StoreError},
    tls::Authority,
};
use ed25519_dalek::SigningKey;
use proto::v1::{
    ConsoleMessage, Decision, EnrolRequest, EnrolResponse, HostMessage, Scope, SignedDecision, Verdict,
    agent_service_server::{AgentService, AgentServiceServer},
    console_message, hold_raised,
};
use serde_json::Value;
use tests::{
    WAIT,
    daemon::{Daemon, HOLD_FLAGGED, finish},
    held,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{
    StreamExt as _,
    wrappers::{ReceiverStream, TcpListenerStream},
};
use tonic::{Request, Response, Status, Streaming};

/// The name the test daemons give themselves at the console.
const HOST: &str = "link-host";

/// The console's decision-signing key, which the daemons trust.
fn console_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// The console's files (SQLite database, certificate authority), removed on drop.
struct Files(PathBuf);

impl Files {
    fn new() -> Self {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kt-link-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("console dir");
        Self(dir)
    }

    fn database(&self) -> String {
        format!("sqlite://{}/console.db?mode=rwc", self.0.display())
    }

    fn ca_dir(&self) -> PathBuf {
        self.0.join("tls")
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Decisions a test slips into the console's stream to the host, as a compromised or
/// buggy console could send them.
type Injected = Arc<Mutex<Option<mpsc::Sender<Result<ConsoleMessage, Status>>>>>;

/// The real console service, whose streams also carry what the test injects.
#[derive(Clone)]
struct Injecting {
    console: Console,
    injected: Injected,
}

#[tonic::async_trait]
impl AgentService for Injecting {
    type StreamStream = ConsoleStream;

    async fn stream(
        &self,
        request: Request<Streaming<HostMessage>>,
    ) -> Result<Response<ConsoleStream>, Status> {
        let real = self.console.stream(request).await?.into_inner();
        let (send, receive) = mpsc::channel(16);
        *self.injected.lock().expect("lock") = Some(send);
        Ok(Response::new(Box::pin(real.merge(ReceiverStream::new(receive)))))
    }

    async fn enrol(&self, request: Request<EnrolRequest>) -> Result<Response<EnrolResponse>, Status> {
        self.console.enrol(request).await
    }
}

/// A console serving on `addr` in a runtime of its own thread: dropping it ends the
/// listener and every stream at once, as when its process dies. With mutual TLS it is
/// served as `keyturn console` serves it; in plaintext, decisions can be injected.
struct RunningConsole {
    console: Console,
    injected: Injected,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningConsole {
    fn start(files: &Files, addr: SocketAddr, tls: bool) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let (database, ca_dir) = (files.database(), tls.then(|| files.ca_dir()));
        let injected = Injected::default();
        let service = injected.clone();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut console =
                    Console::new(Store::open(&database).await.expect("store"), Signer::new(console_key()));
                if let Some(dir) = ca_dir {
                    let authority = Authority::load_or_create(&dir).expect("CA");
                    console = console.with_tls(Tls { authority, names: vec!["127.0.0.1".into()] });
                }
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the console");
                ready.send(console.clone()).expect("ready");
                let serving = async {
                    if console.tls().is_some() {
                        console.serve(listener).await.expect("serve");
                    } else {
                        let service = Injecting { console: console.clone(), injected: service };
                        tonic::transport::Server::builder()
                            .add_service(AgentServiceServer::new(service))
                            .serve_with_incoming(TcpListenerStream::new(listener))
                            .await
                            .expect("serve");
                    }
                };
                tokio::select! {
                    () = serving => {}
                    _ = stopped => {}
                }
            });
        });
        let console = is_ready.recv().expect("the console started");
        Self { console, injected, addr, stop: Some(stop), thread: Some(thread) }
    }

    fn store(&self) -> &Store {
        self.console.store()
    }

    /// Sends `signed` to the host on its current stream.
    fn inject(&self, signed: SignedDecision) {
        let message = ConsoleMessage { message: Some(console_message::Message::Decision(signed)) };
        let stream = self.injected.lock().expect("lock").clone().expect("the host is connected");
        stream.try_send(Ok(message)).expect("injected");
    }
}

impl Drop for RunningConsole {
    fn drop(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        self.thread.take().expect("running").join().expect("the console thread");
    }
}

/// The daemon's `[console]` settings, trusting [`console_key`], with `extra` settings.
fn console_section(endpoint: &str, extra: &str) -> String {
    tests::daemon::console_section(endpoint, &console_key(), HOST, extra)
}

/// A plaintext console and a daemon linked to it.
fn linked() -> (Files, RunningConsole, Daemon) {
    linked_with(HOLD_FLAGGED)
}

/// [`linked`], the daemon with `policy` as its `test` policy.
fn linked_with(policy: &str) -> (Files, RunningConsole, Daemon) {
    let files = Files::new();
    let console = RunningConsole::start(&files, tests::free_addr(), false);
    let daemon = Daemon::start_with_config(policy, &console_section(&format!("http://{}", console.addr), ""));
    (files, console, daemon)
}

/// Waits until `ready` holds of hold `id` as the console stores it, and returns it.
fn stored(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    id: &str,
    ready: impl Fn(&HoldRecord) -> bool,
) -> HoldRecord {
    let deadline = Instant::now() + WAIT;
    loop {
        let record = rt.block_on(store.hold(HOST, id)).expect("read the console's store");
        if let Some(record) = record.filter(&ready) {
            return record;
        }
        assert!(Instant::now() < deadline, "hold {id} not as expected at the console");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `person`'s `verdict` on hold `id`, as the console is asked it.
fn decision_request(id: &str, verdict: Verdict, person: &str) -> DecisionRequest {
    DecisionRequest {
        host: HOST.into(),
        hold_id: id.into(),
        verdict,
        scope: Scope::Once,
        duration_secs: 0,
        reason: format!("{person} says so"),
        decided_by: person.into(),
        credential: console::people::Credential::Unrecorded,
    }
}

/// `person`'s decision on hold `id` at the console.
fn decide(rt: &tokio::runtime::Runtime, console: &Console, id: &str, verdict: Verdict, person: &str) {
    let outcome = rt.block_on(console.decide(&decision_request(id, verdict, person))).expect("decided");
    assert!(matches!(outcome, Outcome::Decided(_)), "{outcome:?}");
}

/// The console link's state as `keyturn status` shows it.
fn console_status(daemon: &Daemon) -> Value {
    let out = daemon.cli(&["status"]);
    assert!(out.status.success());
    serde_json::from_slice::<Value>(&out.stdout).expect("status is JSON")["console"].take()
}

fn id_of(hold: &Value) -> String {
    hold["id"].as_str().expect("id").to_owned()
}

/// The audit trail's `decision` records for hold `id`.
fn decisions(daemon: &Daemon, id: &str) -> Vec<Value> {
    daemon.audit().into_iter().filter(|e| e["type"] == "decision" && e["id"] == id).collect()
}

#[test]
fn a_held_exec_reaches_the_console_with_its_context_and_runs_once_a_person_approves_it() {
    let rt = runtime();
    let files = Files::new();
    let console = RunningConsole::start(&files, tests::free_addr(), true);
    let token = rt.block_on(console.store().issue_token(HOST, Duration::from_mins(10))).expect("token");
    let extra = format!(", ca = \"{}\", token = \"{token}\"", files.ca_dir().join("ca.pem").display());
    let daemon = Daemon::start_with_config(
        HOLD_FLAGGED,
        &console_section(&format!("https://{}", console.addr), &extra),
    );
    let agent = daemon.run_agent(&daemon.flagged(), &["approved-at-the-console"]);
    let hold = daemon.pending_one();
    let id = id_of(&hold);

    let record = stored(&rt, console.store(), &id, |r| r.status == "pending");
    assert_eq!((record.kind.as_str(), record.agent.as_str()), ("exec", "test-agent"));
    assert_eq!(record.policy_rule, hold["policy_rule"].as_str().expect("rule"));
    assert!(record.deadline_ms > record.requested_at_ms + 50_000, "a one-minute timeout: {record:?}");
    let raised = rt.block_on(console.store().raised(HOST, &id)).expect("read").expect("raised");
    assert_eq!((raised.user.as_str(), u64::from(raised.pid)), ("nobody", hold["pid"].as_u64().expect("pid")));
    let Some(hold_raised::Detail::Exec(exec)) = raised.detail else { panic!("not an exec: {raised:?}") };
    assert_eq!(exec.path, daemon.flagged());
    assert_eq!(
        exec.argv,
        hold["argv"].as_array().expect("argv").iter().map(|a| a.as_str().expect("arg")).collect::<Vec<_>>()
    );
    assert_eq!(exec.argv[1], "approved-at-the-console");
    assert_eq!(exec.sha256, hold["sha256"].as_str().expect("sha256"));
    assert_eq!(exec.cwd, hold["cwd"].as_str().expect("cwd"));
    assert!(!exec.parents.is_empty());
    assert!(daemon.dir.join("state/console-host.pem").exists(), "the host enrolled and kept its certificate");

    decide(&rt, &console.console, &id, Verdict::Approve, "alice@example.com");
    assert_eq!(finish(agent), (0, "approved-at-the-console\n".to_owned()));
    let decision = &decisions(&daemon, &id)[0];
    assert_eq!(decision["verdict"], "approve");
    assert_eq!(decision["by"], "alice@example.com");
    assert_eq!(decision["via"], "console");
    assert_eq!(decision["scope"], "once");
    assert_eq!(decision["reason"], "alice@example.com says so");
    let release = daemon.wait_record(0, |e| e["type"] == "release" && e["id"] == id);
    assert_eq!(release["by"], "alice@example.com");
    // The host told the console it applied the decision.
    stored(&rt, console.store(), &id, |r| r.closed_reason.as_deref() == Some("CLOSE_REASON_DECIDED"));
}

#[test]
fn a_denial_at_the_console_kills_the_held_process() {
    let rt = runtime();
    let (_files, console, daemon) = linked();
    let agent = daemon.run_agent(&daemon.flagged(), &["must-not-print"]);
    let id = id_of(&daemon.pending_one());
    stored(&rt, console.store(), &id, |r| r.status == "pending");
    decide(&rt, &console.console, &id, Verdict::Deny, "bob@example.com");
    assert_eq!(finish(agent), (128 + libc::SIGKILL, String::new()));
    let decision = &decisions(&daemon, &id)[0];
    assert_eq!(decision["verdict"], "deny");
    assert_eq!(decision["by"], "bob@example.com");
    assert_eq!(decision["via"], "console");
    let denied = daemon.wait_record(0, |e| e["type"] == "denied" && e["id"] == id);
    assert_eq!(denied["outcome"], "killed");
}

#[test]
fn decisions_the_host_must_not_act_on_are_refused_and_audited() {
    let rt = runtime();
    let (_files, console, daemon) = linked();
    let signer = Signer::new(console_key());
    let rejected = |from: usize, says: &str| {
        let record = daemon.wait_record(from, |e| e["type"] == "decision_rejected");
        assert!(record["reason"].as_str().expect("reason").contains(says), "{record} does not say {says:?}");
    };

    // Decided here first; then a decision, correctly signed, bound to this host, this hold
    // and its nonce, arrives from the console.
    let agent = daemon.run_agent(&daemon.flagged(), &["approved-here"]);
    let id = id_of(&daemon.pending_one());
    let record = stored(&rt, console.store(), &id, |r| r.status == "pending");
    assert!(daemon.cli(&["approve", &id]).status.success());
    assert_eq!(finish(agent), (0, "approved-here\n".to_owned()));
    stored(&rt, console.store(), &id, |r| {
        r.closed_reason.as_deref() == Some("CLOSE_REASON_APPROVED_LOCALLY")
    });
    let late = Decision {
        hold_id: id.clone(),
        nonce: record.nonce.cast_unsigned(),
        host: HOST.into(),
        verdict: Verdict::Deny.into(),
        scope: Scope::Once.into(),
        decided_by: "mallory@example.com".into(),
        ..Decision::default()
    };
    let from = daemon.audit().len();
    console.inject(signer.sign(&late));
    rejected(from, &format!("decision for hold {id}, which this host is not waiting on"));

    // A console decision delivered once, then replayed; one signed by a key not trusted.
    let agent = daemon.run_agent(&daemon.flagged(), &["approved-there"]);
    let second = id_of(&daemon.pending_matching(|h| h["id"] != id.as_str()));
    stored(&rt, console.store(), &second, |r| r.status == "pending");
    decide(&rt, &console.console, &second, Verdict::Approve, "alice@example.com");
    assert_eq!(finish(agent), (0, "approved-there\n".to_owned()));
    let delivered = rt.block_on(console.store().decision(HOST, &second)).expect("read").expect("decided");
    let from = daemon.audit().len();
    console.inject(delivered);
    rejected(from, "already decided: replayed");
    let from = daemon.audit().len();
    console.inject(Signer::new(SigningKey::from_bytes(&[9; 32])).sign(&late));
    rejected(from, "signed by unknown key");

    // Nothing was decided twice.
    assert_eq!(decisions(&daemon, &id).len(), 1);
    assert_eq!(decisions(&daemon, &id)[0]["by_uid"], 0);
    assert_eq!(decisions(&daemon, &second).len(), 1);
}

#[test]
fn a_hold_raised_while_the_console_is_down_reaches_it_when_it_starts() {
    let rt = runtime();
    let files = Files::new();
    let addr = tests::free_addr();
    let daemon = Daemon::start_with_config(HOLD_FLAGGED, &console_section(&format!("http://{addr}"), ""));
    let agent = daemon.run_agent(&daemon.flagged(), &["waited-for-the-console"]);
    // Held and listed here while no console answers, which `status` shows.
    let id = id_of(&daemon.pending_one());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(daemon.pending().len(), 1);
    assert_eq!(console_status(&daemon), "unreachable");

    let console = RunningConsole::start(&files, addr, false);
    stored(&rt, console.store(), &id, |r| r.status == "pending");
    decide(&rt, &console.console, &id, Verdict::Approve, "carol@example.com");
    assert_eq!(finish(agent), (0, "waited-for-the-console\n".to_owned()));
    assert_eq!(decisions(&daemon, &id)[0]["by"], "carol@example.com");
    assert_eq!(console_status(&daemon), "connected");
}

#[test]
fn a_decision_made_while_the_daemon_was_down_reaches_the_hold_it_left_behind() {
    let rt = runtime();
    let (_files, console, mut daemon) = linked();
    let agent = daemon.run_agent(&daemon.flagged(), &["decided-meanwhile"]);
    let id = id_of(&daemon.pending_one());
    stored(&rt, console.store(), &id, |r| r.status == "pending");
    daemon.kill9();
    decide(&rt, &console.console, &id, Verdict::Approve, "dave@example.com");
    // The new daemon picks the hold up from the pinned map and raises it again; the console
    // answers with the decision it made meanwhile.
    daemon.launch();
    assert_eq!(finish(agent), (0, "decided-meanwhile\n".to_owned()));
    assert_eq!(decisions(&daemon, &id)[0]["by"], "dave@example.com");

    // The auditor's pack of the period: the hold once, as dave decided it across the crash,
    // with the policies the daemon had in force; it verifies with the console's key alone.
    let period = console::evidence::Period { from_ms: 0, to_ms: console::store::now_ms() + 1 };
    let (store, signer) = (console.store(), console.console.signer());
    let pack = rt.block_on(console::evidence::export(store, signer, period, "auditor")).expect("the pack");
    let summary =
        console::evidence::verify(&pack, &console_key().verifying_key()).expect("the pack verifies");
    assert_eq!((summary.holds, summary.decisions), (1, 1), "{summary}");
    assert_eq!(summary.by_status.get("approved"), Some(&1), "{summary}");
    assert!(summary.policies >= 2, "default and test: {summary}");
}

#[test]
fn the_person_who_launched_an_agent_cannot_approve_its_holds_and_another_can() {
    let rt = runtime();
    let (_files, console, daemon) = linked();
    let agent = daemon.run_agent_for("alice@example.com", &daemon.flagged(), &["approved-by-bob"]);
    let id = id_of(&daemon.pending_one());
    let record = stored(&rt, console.store(), &id, |r| r.status == "pending");
    assert_eq!((record.requester.as_str(), record.quorum), ("alice@example.com", 1));

    let own =
        rt.block_on(console.console.decide(&decision_request(&id, Verdict::Approve, "alice@example.com")));
    assert!(
        matches!(&own, Err(StoreError::SelfApproval { person, .. }) if person == "alice@example.com"),
        "{own:?}"
    );
    stored(&rt, console.store(), &id, |r| r.status == "pending");
    decide(&rt, &console.console, &id, Verdict::Approve, "bob@example.com");
    assert_eq!(finish(agent), (0, "approved-by-bob\n".to_owned()));
    let decision = &decisions(&daemon, &id)[0];
    assert_eq!(
        (&decision["by"], &decision["approvers"]),
        (&Value::from("bob@example.com"), &serde_json::json!(["bob@example.com"]))
    );
}

#[test]
fn a_quorum_hold_is_released_only_once_two_distinct_people_approve() {
    let rt = runtime();
    let (_files, console, daemon) =
        linked_with(&HOLD_FLAGGED.replacen("action = \"hold\"", "action = \"hold\"\nquorum = 2", 1));
    let agent = daemon.run_agent_for("carol@example.com", &daemon.flagged(), &["approved-by-two"]);
    let hold = daemon.pending_one();
    let id = id_of(&hold);
    assert_eq!(hold["quorum"], 2);
    assert_eq!(stored(&rt, console.store(), &id, |r| r.status == "pending").quorum, 2);

    let approve =
        |person: &str| rt.block_on(console.console.decide(&decision_request(&id, Verdict::Approve, person)));
    let first = approve("alice@example.com");
    assert!(matches!(first, Ok(Outcome::AwaitingQuorum { approvals: 1, quorum: 2 })), "{first:?}");
    let again = approve("alice@example.com");
    assert!(matches!(again, Err(StoreError::AlreadyApproved { .. })), "{again:?}");
    // One approval decides nothing: the process stays held.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(daemon.pending_one()["id"], id.as_str());
    assert!(held(u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid")));
    assert!(decisions(&daemon, &id).is_empty());

    let second = approve("bob@example.com");
    assert!(matches!(second, Ok(Outcome::Decided(_))), "{second:?}");
    assert_eq!(finish(agent), (0, "approved-by-two\n".to_owned()));
    let decision = &decisions(&daemon, &id)[0];
    assert_eq!(decision["approvers"], serde_json::json!(["alice@example.com", "bob@example.com"]));
}

/// The host checks a console approval against its own policy: a quorum=2 hold is not
/// released by a signed approval that names fewer distinct approvers, or that counts the
/// agent's requester among them.
#[test]
fn the_host_refuses_an_approval_short_of_its_quorum_or_by_the_requester() {
    let rt = runtime();
    let (_files, console, daemon) =
        linked_with(&HOLD_FLAGGED.replacen("action = \"hold\"", "action = \"hold\"\nquorum = 2", 1));
    let signer = Signer::new(console_key());
    for (approvers, says) in [
        (["alice@example.com", "alice@example.com"], "names 1 distinct approvers, but the hold needs 2"),
        (["alice@example.com", "carol@example.com"], "counts its requester \"carol@example.com\""),
    ] {
        let agent = daemon.run_agent_for("carol@example.com", &daemon.flagged(), &["must-not-print"]);
        let id = id_of(&daemon.pending_one());
        let record = stored(&rt, console.store(), &id, |r| r.status == "pending");
        let approval = Decision {
            hold_id: id.clone(),
            nonce: record.nonce.cast_unsigned(),
            host: HOST.into(),
            verdict: Verdict::Approve.into(),
            scope: Scope::Once.into(),
            decided_by: approvers[1].into(),
            approvers: approvers.map(str::to_owned).to_vec(),
            quorum: 2,
            ..Decision::default()
        };
        let from = daemon.audit().len();
        console.inject(signer.sign(&approval));
        let rejected = daemon.wait_record(from, |e| e["type"] == "decision_rejected");
        assert!(
            rejected["reason"].as_str().expect("reason").contains(says),
            "{rejected} does not say {says:?}"
        );
        assert_eq!(daemon.pending_one()["id"], id.as_str(), "still held");
        assert!(daemon.cli(&["deny", &id]).status.success());
        assert_eq!(finish(agent), (128 + libc::SIGKILL, String::new()));
    }
}

/// Rewrites the daemon's trail as someone with root could: `edit` changes the records, and
/// every hash from the first record changed on is computed again, so the trail verifies on
/// its own. Only the anchors the console kept can tell.
fn rewrite_trail(daemon: &Daemon, edit: impl FnOnce(&mut Vec<Value>)) {
    let dir = daemon.dir.join("state/audit");
    let files: Vec<PathBuf> = {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("audit dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        files
    };
    let mut records: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f).expect("trail").lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .map(|line| serde_json::from_str(&line).expect("record"))
        .collect();
    edit(&mut records);
    let mut prev = "0".repeat(64);
    for record in &mut records {
        record["prev"] = prev.clone().into();
        // What the daemon hashes, in its field order.
        let unsealed = format!(
            r#"{{"seq":{},"time":{},"prev":"{prev}","event":{}}}"#,
            record["seq"], record["time"], record["event"]
        );
        prev = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(unsealed.as_bytes()));
        record["hash"] = prev.clone().into();
    }
    for file in &files {
        std::fs::remove_file(file).expect("remove");
    }
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(dir.join("audit-00000000000000000000.jsonl"), lines.join("\n") + "\n").expect("write");
    std::fs::write(dir.join("HEAD"), format!("{} {prev}\n", records.len())).expect("HEAD");
}

/// Waits until the console's anchors of the host satisfy `ready`.
fn anchored(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    ready: impl Fn(&console::anchors::TrailState) -> bool,
) -> console::anchors::TrailState {
    let deadline = Instant::now() + WAIT;
    loop {
        let state = rt.block_on(store.trail_state(HOST)).expect("the console's anchors");
        if ready(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "anchors not as expected: {state:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_host_trail_rewritten_or_cut_after_its_anchor_is_named() {
    let files = Files::new();
    let console = RunningConsole::start(&files, tests::free_addr(), false);
    let endpoint = format!("http://{}", console.addr);
    let mut daemon =
        Daemon::start_with_config(HOLD_FLAGGED, &console_section(&endpoint, ", anchor_every = \"1s\""));
    let rt = runtime();
    let written = daemon.audit().len() as u64;
    let state = anchored(&rt, console.store(), |s| s.anchors.last().is_some_and(|a| a.records >= written));
    assert!(state.findings.is_empty(), "{state:?}");
    // The policies in force came with the anchors: the test policy as its file is written.
    let in_force = rt.block_on(console.store().policies_in_force(0, i64::MAX)).expect("policies");
    let test_policy = std::fs::read_to_string(daemon.policy_path("test")).expect("the policy file");
    let test = in_force.iter().find(|p| p.name == "test").expect("the test policy at the console");
    assert_eq!((test.text.as_str(), test.until_ms), (test_policy.as_str(), None));
    let loaded = daemon.wait_record(0, |e| e["type"] == "policy_load" && e["policy"] == "test");
    assert_eq!(loaded["sha256"], test.sha256.as_str(), "the host's trail names the same digest");
    assert!(in_force.iter().any(|p| p.name == "default"), "{in_force:?}");
    let console_config = files.0.join("console.toml");
    std::fs::write(&console_config, format!("database = \"{}\"\n", files.database()))
        .expect("console config");
    let verify_host = |trail: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(tests::daemon::keyturn_path());
        command.args(["console", "verify-host", HOST, "--config"]).arg(&console_config);
        if let Some(trail) = trail {
            command.arg("--trail").arg(trail);
        }
        let out = command.output().expect("verify-host");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let trail = daemon.dir.join("state/audit");
    let (code, out) = verify_host(Some(&trail));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no finding: the trail is as anchored, record by record"), "{out}");

    // Root edits which policy was in force into the trail and reseals it: it verifies on its own.
    daemon.kill9();
    rewrite_trail(&daemon, |records| {
        let load = records.iter_mut().find(|r| r["event"]["type"] == "policy_load").expect("a policy load");
        load["event"]["policy"] = "permissive".into();
    });
    let copy = files.0.join("trail-copy");
    std::fs::create_dir_all(&copy).expect("copy dir");
    for entry in std::fs::read_dir(&trail).expect("trail").flatten() {
        std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
    }
    assert!(daemon.cli(&["audit", "verify"]).status.success(), "the rewritten chain verifies on its own");
    daemon.launch();
    let state = anchored(&rt, console.store(), |s| !s.findings.is_empty());
    assert!(state.findings[0].detail.starts_with("rewritten: record"), "{state:?}");
    let (code, out) = verify_host(None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FOUND: rewritten"), "{out}");
    let (code, out) = verify_host(Some(&copy));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines().filter(|l| l.starts_with("FOUND: rewritten")).count() >= 2,
        "stored and record by record: {out}"
    );

    // Anchors go on from the trail as it now is; then root cuts it to its first two records.
    let written = daemon.audit().len() as u64;
    anchored(&rt, console.store(), |s| s.anchors.last().is_some_and(|a| a.records >= written));
    daemon.kill9();
    rewrite_trail(&daemon, |records| records.truncate(2));
    daemon.launch();
    let state =
        anchored(&rt, console.store(), |s| s.findings.iter().any(|f| f.detail.starts_with("truncated")));
    assert_eq!(state.findings.len(), 2, "{state:?}");
    let tampered = rt.block_on(console.store().audit_events()).expect("console audit");
    assert_eq!(tampered.iter().filter(|e| e["type"] == "host_trail_tampered").count(), 2);
}
