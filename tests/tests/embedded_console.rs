//! The daemon's embedded console: with no `[console]`, a held action appears in its HTTP
//! API with its context, and an approver's API token releases or kills the process; the
//! operator signs in with a one-time link the daemon prints, or `keyturn console login` gives;
//! `[slack]` in its file announces holds in Slack and takes their clicks.

use console::chat::slack::message::APPROVE;
use serde_json::json;
use tests::{
    WAIT,
    daemon::{Daemon, HOLD_FLAGGED, assert_refused, finish, keyturn_path, stderr},
    embedded::{Caller, Embedded},
    slack::SlackStandIn,
};

#[test]
fn an_approval_in_the_embedded_console_lets_the_process_run() {
    let embedded = Embedded::start(HOLD_FLAGGED);
    let approver = embedded.token("alice@example.com", "approver");
    let (status, openapi) = embedded.call(reqwest::Method::GET, "/openapi.json", None, None);
    assert_eq!((status, openapi["openapi"].as_str()), (200, Some("3.1.0")));
    let (status, refused) = embedded.call(reqwest::Method::GET, "/holds", None, None);
    assert_eq!((status, refused["error"]["code"].as_str()), (401, Some("unauthenticated")));

    let child = embedded.daemon.run_agent(&embedded.daemon.flagged(), &["approved", "run"]);
    let hold = embedded.pending_hold(&approver);
    assert_eq!(hold["exec"]["argv"], json!([embedded.daemon.flagged(), "approved", "run"]));
    assert_eq!(hold["agent"], "test-agent");
    assert!(hold["rule"].as_str().is_some_and(|rule| rule.contains("exec path")), "{hold}");
    assert!(hold["exec"]["sha256"].as_str().is_some_and(|digest| digest.len() == 64), "{hold}");
    assert!(hold["deadline_ms"].as_i64() > hold["requested_at_ms"].as_i64());

    let id = hold["id"].as_str().expect("id");
    let body = json!({"scope": "once", "reason": "the test asked"});
    let (status, answer) =
        embedded.call(reqwest::Method::POST, &format!("/holds/{id}/approve"), Some(&approver), Some(body));
    assert_eq!((status, answer["status"].as_str()), (200, Some("approved")), "{answer}");
    assert_eq!(finish(child), (0, "approved run\n".to_owned()));
    let decision = embedded.daemon.wait_record(0, |e| e["type"] == "decision" && e["via"] == "console");
    assert_eq!(
        (decision["by"].as_str(), decision["verdict"].as_str()),
        (Some("alice@example.com"), Some("approve"))
    );

    let (status, again) =
        embedded.call(reqwest::Method::POST, &format!("/holds/{id}/deny"), Some(&approver), None);
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("already_decided")), "{again}");
}

#[test]
fn a_viewer_cannot_approve_and_a_denial_kills_the_process() {
    let embedded = Embedded::start(HOLD_FLAGGED);
    let viewer = embedded.token("carol@example.com", "viewer");
    let approver = embedded.token("bob@example.com", "approver");
    let child = embedded.daemon.run_agent(&embedded.daemon.flagged(), &["never"]);
    let hold = embedded.pending_hold(&viewer);
    let id = hold["id"].as_str().expect("id");

    let (status, refused) =
        embedded.call(reqwest::Method::POST, &format!("/holds/{id}/approve"), Some(&viewer), None);
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("forbidden")), "{refused}");
    let (_, still) = embedded.call(reqwest::Method::GET, &format!("/holds/{id}"), Some(&viewer), None);
    assert_eq!(still["hold"]["status"], "pending");
    let (_, audit) = embedded.call(reqwest::Method::GET, "/audit?q=decision_refused", Some(&viewer), None);
    assert_eq!(audit["records"][0]["event"]["by"], "carol@example.com", "{audit}");

    let (status, denied) = embedded.call(
        reqwest::Method::POST,
        &format!("/holds/{id}/deny"),
        Some(&approver),
        Some(json!({"reason": "not today"})),
    );
    assert_eq!((status, denied["status"].as_str()), (200, Some("denied")), "{denied}");
    let (code, output) = finish(child);
    assert_ne!(code, 0, "a denied process must not finish normally: {output}");
    assert!(output.is_empty(), "the denied program must not have run: {output:?}");
    let (_, verified) = embedded.call(reqwest::Method::GET, "/audit/verify", Some(&viewer), None);
    assert!(verified["records"].as_i64() > Some(3), "{verified}");
}

/// The embedded console is reachable by every local user: it serves the daemon's own host
/// identity and nothing else, so nobody can slip in holds under another host or this one.
#[test]
fn the_embedded_console_serves_only_its_own_host() {
    let embedded = Embedded::start(HOLD_FLAGGED);
    let approver = embedded.token("alice@example.com", "approver");
    // The daemon's own link is up once a hold of it arrives.
    let child = embedded.daemon.run_agent(&embedded.daemon.flagged(), &["mine"]);
    let hold = embedded.pending_hold(&approver);
    let own_host = hold["host"].as_str().expect("host").to_owned();
    for host in ["intruder", own_host.as_str()] {
        let refusal = embedded.rt.block_on(async {
            let (_handle, mut events) = host_client::start(host_client::ClientConfig {
                endpoint: format!("http://{}", embedded.hosts),
                host: host.to_owned(),
                agent_version: "intruder".into(),
                key: ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
                console_keys: vec![],
                tls: None,
            });
            match tokio::time::timeout(WAIT, events.recv()).await.expect("an answer in time") {
                Some(host_client::ClientEvent::Disconnected(why)) => why,
                other => panic!("{host}: expected a refusal, got {other:?}"),
            }
        });
        assert!(refusal.contains("serves only the host it runs on"), "{host}: {refusal}");
    }
    let id = hold["id"].as_str().expect("id");
    let (status, _) =
        embedded.call(reqwest::Method::POST, &format!("/holds/{id}/approve"), Some(&approver), None);
    assert_eq!(status, 200, "the daemon's own host still decides");
    assert_eq!(finish(child), (0, "mine\n".to_owned()));
}

/// At start the daemon logs one sign-in link for the user it runs as, on its console's own
/// address: it opens one admin session (once), which does what only an admin may and
/// approves a held exec; its secret is in that one log line and nowhere else there.
#[test]
fn the_daemon_logs_a_one_time_sign_in_link_for_its_operator() {
    let embedded = Embedded::start(HOLD_FLAGGED);
    let link = embedded.logged_sign_in_link();
    let secret = embedded.link_secret(&link);
    assert!(secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "{link}");

    let (status, me, cookie) = embedded.sign_in_with_link(secret);
    assert_eq!(
        (status, me["person"].as_str(), me["role"].as_str()),
        (200, Some("unix:root"), Some("admin")),
        "{me}"
    );
    let session = cookie.expect("a session cookie");
    let (status, again, cookie) = embedded.sign_in_with_link(secret);
    assert_eq!(
        (status, again["error"]["code"].as_str(), cookie),
        (403, Some("sign_in_failed"), None),
        "{again}"
    );

    // What only an admin may: see everyone's tokens, make an admin token.
    let bob = embedded.token("bob@example.com", "approver");
    let (_, tokens) = embedded.call_as(reqwest::Method::GET, "/tokens", Caller::Session(&session), None);
    assert!(
        tokens["tokens"].as_array().is_some_and(|t| t.iter().any(|t| t["person"] == "bob@example.com")),
        "{tokens}"
    );
    let made = json!({"name": "ops", "role": "admin"});
    let (status, made) =
        embedded.call_as(reqwest::Method::POST, "/tokens", Caller::Session(&session), Some(made));
    assert_eq!((status, made["role"].as_str()), (201, Some("admin")), "{made}");
    let (status, _) = embedded.call_as(
        reqwest::Method::POST,
        "/tokens",
        Caller::Token(&bob),
        Some(json!({"name": "escalate", "role": "admin"})),
    );
    assert_eq!(status, 403, "an approver cannot");

    // And decide: an agent someone else launched runs once the operator approves it.
    let child = embedded.daemon.run_agent_for("agent@example.com", &embedded.daemon.flagged(), &["linked"]);
    let id = embedded.pending_hold(&bob)["id"].as_str().expect("id").to_owned();
    let (status, answer) = embedded.call_as(
        reqwest::Method::POST,
        &format!("/holds/{id}/approve"),
        Caller::Session(&session),
        None,
    );
    assert_eq!((status, answer["status"].as_str()), (200, Some("approved")), "{answer}");
    assert_eq!(finish(child), (0, "linked\n".to_owned()));
    let decision = embedded.daemon.wait_record(0, |e| e["type"] == "decision" && e["via"] == "console");
    assert_eq!(decision["by"], "unix:root");
    let (_, audit) =
        embedded.call_as(reqwest::Method::GET, "/audit?q=signed_in", Caller::Session(&session), None);
    assert_eq!(audit["records"][0]["event"]["how"], "link", "{audit}");
    assert_eq!(embedded.daemon.log().matches(secret).count(), 1, "{}", embedded.daemon.log());
}

/// `keyturn console login` asks the daemon for a fresh link in the caller's name: root and
/// the approver group get one; anyone else, and any caller inside an agent's tagged cgroup
/// (root included), is refused; a daemon without its console says so. No link is logged.
#[test]
fn keyturn_console_login_gives_links_to_approvers_outside_agents_only() {
    let embedded = Embedded::start(HOLD_FLAGGED);
    let daemon = &embedded.daemon;
    let mut secrets = Vec::new();
    for (out, person) in [
        (daemon.cli(&["console", "login"]), "unix:root"),
        (daemon.cli_as_nobody(&["console", "login"]), "unix:nobody"),
    ] {
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("for {person} (admin)")), "{}", stderr(&out));
        let link = String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned();
        let secret = embedded.link_secret(&link).to_owned();
        let (status, me, cookie) = embedded.sign_in_with_link(&secret);
        assert_eq!(
            (status, me["person"].as_str(), me["role"].as_str()),
            (200, Some(person), Some("admin")),
            "{me}"
        );
        assert!(cookie.is_some());
        secrets.push(secret);
    }
    assert_ne!(secrets[0], secrets[1]);

    let stranger = daemon.cli_as(4242, 4242, &["console", "login"]);
    assert_refused(&stranger, "permission denied: uid 4242 is neither root nor in group");
    assert!(stranger.stdout.is_empty());

    let config = daemon.dir.join("keyturn.toml");
    let inside = daemon
        .command(&["run", "--policy", "test", "--requester", "alice@example.com", "--"])
        .arg(keyturn_path())
        .args(["console", "login", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!inside.status.success(), "{}", String::from_utf8_lossy(&inside.stdout));
    assert!(stderr(&inside).contains("inside the tagged cgroup"), "{}", stderr(&inside));
    assert!(!String::from_utf8_lossy(&inside.stdout).contains("#login="));

    let log = daemon.log();
    assert!(secrets.iter().all(|secret| !log.contains(secret.as_str())), "{log}");

    let without = Daemon::start(HOLD_FLAGGED);
    assert_refused(&without.cli(&["console", "login"]), "embedded_console = false");
}

/// `[slack]` in `embedded_console_config`: the embedded console posts each pending hold to
/// Slack (Socket Mode), and a click by the Slack account an operator linked to an approver
/// releases the process; the message then shows the decision.
#[test]
fn the_embedded_console_announces_in_slack_and_takes_its_clicks() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let slack = rt.block_on(SlackStandIn::start());
    let section = format!(
        "[slack]\nbot_token = \"{}\"\napp_token = \"{}\"\nchannel = \"C0HOLDS\"\napi_url = \"{}\"\n",
        tests::slack::BOT_TOKEN,
        tests::slack::APP_TOKEN,
        slack.api_url()
    );
    let embedded = Embedded::start_with(HOLD_FLAGGED, rt, &section);
    embedded.rt.block_on(slack.wait_connected(1));
    embedded.console_cli(&[
        "link",
        "alice@example.com",
        "--slack",
        "T0KEYTURN/U0ALICE",
        "--role",
        "approver",
    ]);
    let viewer = embedded.token("vera@example.com", "viewer");

    let child = embedded.daemon.run_agent(&embedded.daemon.flagged(), &["from", "slack"]);
    let id = embedded.pending_hold(&viewer)["id"].as_str().expect("id").to_owned();
    let marker = format!("hold {} ", id.split('@').next().expect("an id"));
    let posted = embedded.rt.block_on(slack.wait_for("the hold's message", |slack| {
        slack.messages().into_iter().find(|m| m.blocks.to_string().contains(&marker))
    }));
    assert_eq!(posted.channel, "C0HOLDS");
    let click = tests::slack::block_action("T0KEYTURN", "U0ALICE", APPROVE, &id, &posted);
    let envelope = embedded.rt.block_on(slack.interact(click));
    assert!(embedded.rt.block_on(slack.wait_acked(&envelope)).within_3s);
    assert_eq!(finish(child), (0, "from slack\n".to_owned()));
    embedded.rt.block_on(slack.wait_for("the message updated", |slack| {
        slack.messages().into_iter().find(|m| m.ts == posted.ts && m.blocks.to_string().contains("Approved"))
    }));
    assert_eq!(slack.refusals(), Vec::<String>::new());
}
