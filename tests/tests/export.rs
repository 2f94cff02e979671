//! The real `keyturn` binary's trail exported for SIEMs and auditors, judged by the OCSF
//! project's own schema (a Python validator in a venv). Host only: the export does not
//! depend on the kernel or the mode, and the guests carry no Python.

use serde_json::{Value, json};
use tests::daemon::{Daemon, HOLD_FLAGGED, finish, stderr};

#[test]
fn a_real_trail_exports_as_ocsf_events_the_schema_accepts() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let agent = daemon.run_agent(&daemon.flagged(), &["exported"]);
    let hold = daemon.pending_one();
    let id = hold["id"].as_str().expect("id");
    let out = daemon.cli(&["approve", id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(agent), (0, "exported\n".to_owned()));

    let export = daemon.cli(&["audit", "export", "--format", "ocsf"]);
    assert!(export.status.success(), "{}", stderr(&export));
    let events: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let summary = ocsf::validator::validate(&export.stdout);
    assert_eq!(summary["valid"], events.len());
    let of_hold = |class: u64| {
        events.iter().filter(move |e| e["class_uid"] == class && e["metadata"]["correlation_uid"] == id)
    };
    let steps: Vec<(&Value, &Value)> =
        of_hold(1007).map(|e| (&e["unmapped"]["keyturn"]["event"]["type"], &e["disposition_id"])).collect();
    assert_eq!(
        steps,
        [(&json!("exec_judged"), &json!(14)), (&json!("hold"), &json!(14)), (&json!("release"), &json!(8))]
    );
    let vote = of_hold(6003).next().expect("the vote");
    assert_eq!(
        (vote["api"]["operation"].as_str(), vote["actor"]["user"]["name"].as_str()),
        (Some("approve"), Some("root"))
    );
    let future = daemon.cli(&["audit", "export", "--format", "ocsf", "--since", "2999-01-01"]);
    assert!(future.status.success() && future.stdout.is_empty(), "nothing after the period");
    let bad = daemon.cli(&["audit", "export", "--since", "yesterday"]);
    assert!(!bad.status.success() && stderr(&bad).contains("RFC 3339"), "{}", stderr(&bad));
}
