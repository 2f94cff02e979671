//! The daemon's embedded console: with no `[console]`, a held action appears in its HTTP
//! API with its context, and an approver's API token releases or kills the process.

use serde_json::json;
use tests::{
    WAIT,
    daemon::{HOLD_FLAGGED, finish},
    embedded::Embedded,
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
