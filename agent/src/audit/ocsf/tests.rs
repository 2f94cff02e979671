use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};

use super::{Device, ExportError, Exporter};
use crate::{
    audit::{self, Audit, AuditEvent, DecidedBy, Record},
    daemon::api::Scope,
    hold::{
        context::{ActionKind, HoldView, Parent, Waiting},
        process::OnDeny,
    },
    kernel::{EgressHold, mode::Mode},
    policy::Verdict,
};

fn exec_hold(id: &str) -> HoldView {
    HoldView {
        id: id.into(),
        kind: ActionKind::Exec,
        agent: "claude".into(),
        requester: "unix:alice".into(),
        cgroup: "/agents/claude".into(),
        pid: 4242,
        tid: 4242,
        uid: 1001,
        user: "agent".into(),
        comm: "bash".into(),
        requested_at: "2026-12-01T10:00:00.000Z".into(),
        policy: "default".into(),
        policy_rule: "exec /usr/bin/curl: hold".into(),
        quorum: 1,
        hold: Waiting::Held,
        path: Some("/usr/bin/curl".into()),
        argv: Some(vec!["curl".into(), "https://example.com".into()]),
        cwd: Some("/home/agent".into()),
        sha256: Some("ab".repeat(32)),
        parents: Some(vec![
            Parent { pid: 4200, comm: "bash".into(), argv: vec!["bash".into()] },
            Parent { pid: 4100, comm: "claude".into(), argv: vec!["claude".into(), "--yes".into()] },
        ]),
        ..HoldView::default()
    }
}

fn egress_hold(id: &str) -> HoldView {
    HoldView {
        id: id.into(),
        kind: ActionKind::Egress,
        path: None,
        argv: Some(vec!["python3".into(), "agent.py".into()]),
        cwd: None,
        sha256: None,
        comm: "python3".into(),
        policy_rule: "egress 10.0.0.0/8: hold".into(),
        protocol: Some("tcp".into()),
        address: Some("10.1.2.3".into()),
        port: Some(443),
        ..exec_hold(id)
    }
}

fn local(user: &str) -> DecidedBy {
    DecidedBy::Local { by_uid: 1000, by_user: user.into() }
}

/// One record of every kind the daemon writes, in an order a trail could have them. A kind
/// added to [`AuditEvent`] fails to compile in the match below until it has a sample here.
fn every_kind() -> Vec<AuditEvent> {
    let events = vec![
        AuditEvent::DaemonStart {
            mode: Mode::LsmCgroup,
            egress_hold: EgressHold::Stop,
            version: "0.1.0".into(),
        },
        AuditEvent::PolicyLoad { policy: "default".into(), id: 0, sha256: "12".repeat(32) },
        AuditEvent::PolicyReload { trigger: "policies/default.toml changed".into() },
        AuditEvent::PolicyLoadFailed {
            trigger: "SIGHUP".into(),
            error: "default.toml:3: unknown field".into(),
        },
        AuditEvent::Tag {
            cgroup: "/agents/claude".into(),
            agent: "claude".into(),
            policy: "default".into(),
            requester: "unix:alice".into(),
            cgroup_id: 0,
            unit: Some("claude.service".into()),
        },
        AuditEvent::TagFollowed {
            unit: "claude.service".into(),
            agent: "claude".into(),
            cgroup: "/system.slice/claude.service".into(),
            cgroup_id: 77,
        },
        AuditEvent::TagLost { cgroup: "/agents/gone".into(), error: "no such cgroup".into() },
        AuditEvent::ExecJudged {
            id: "j1".into(),
            pid: 4300,
            agent: "claude".into(),
            path: "/usr/bin/ls".into(),
            sha256: "cd".repeat(32),
            verdict: Verdict::Allow,
            rule: "exec /usr/bin/*: allow".into(),
            recorded_in_kernel: true,
        },
        AuditEvent::Release {
            id: "j1".into(),
            by: "keyturn".into(),
            why: Some("the policy allows it".into()),
        },
        AuditEvent::ExecJudged {
            id: "j2".into(),
            pid: 4301,
            agent: "claude".into(),
            path: "/usr/bin/nc".into(),
            sha256: "ef".repeat(32),
            verdict: Verdict::Deny,
            rule: "exec /usr/bin/nc: deny".into(),
            recorded_in_kernel: true,
        },
        AuditEvent::Deny { id: "j2".into(), by: "keyturn".into(), why: "the policy denies it".into() },
        AuditEvent::Hold { restored: false, hold: Box::new(exec_hold("h1")) },
        AuditEvent::RogueSigcont { id: "h1".into(), pid: 4242, tid: 4242, outcome: "held again".into() },
        AuditEvent::HeldAgain {
            id: "h1".into(),
            pid: 4242,
            tid: 4243,
            why: "resumed for another thread".into(),
        },
        AuditEvent::Decision {
            id: "h1".into(),
            verdict: "approve".into(),
            reason: Some("release build".into()),
            by: local("bob"),
            scope: Some(Scope::For(600)),
            on_deny: None,
        },
        AuditEvent::Release { id: "h1".into(), by: "unix:bob".into(), why: None },
        AuditEvent::Hold { restored: false, hold: Box::new(egress_hold("h2")) },
        AuditEvent::Decision {
            id: "h2".into(),
            verdict: "deny".into(),
            reason: None,
            by: DecidedBy::Console {
                by: "https://idp.example/|carol".into(),
                via: "console".into(),
                approvers: vec!["https://idp.example/|carol".into()],
            },
            scope: None,
            on_deny: Some(OnDeny::Kill),
        },
        AuditEvent::Denied { id: "h2".into(), outcome: "killed".into() },
        AuditEvent::Hold { restored: true, hold: Box::new(egress_hold("h3")) },
        AuditEvent::Decision {
            id: "h3".into(),
            verdict: "deny".into(),
            reason: Some("no".into()),
            by: local("bob"),
            scope: None,
            on_deny: Some(OnDeny::Fail),
        },
        AuditEvent::Denied { id: "h3".into(), outcome: "failed with EPERM".into() },
        AuditEvent::Hold { restored: false, hold: Box::new(exec_hold("h4")) },
        AuditEvent::Timeout { id: "h4".into(), on_timeout: OnDeny::Kill },
        AuditEvent::Hold { restored: false, hold: Box::new(egress_hold("h5")) },
        AuditEvent::Timeout { id: "h5".into(), on_timeout: OnDeny::Fail },
        AuditEvent::Hold { restored: false, hold: Box::new(exec_hold("h6")) },
        AuditEvent::HoldClosed { id: "h6".into(), why: "the process exited".into() },
        AuditEvent::DecisionRejected {
            id: Some("h6".into()),
            by: Some("https://idp.example/|mallory".into()),
            via: "console".into(),
            reason: "signature does not verify".into(),
        },
        AuditEvent::DecisionRejected {
            id: None,
            by: None,
            via: "console".into(),
            reason: "not a decision".into(),
        },
        AuditEvent::HoldRefused {
            id: "h7".into(),
            pid: 4500,
            error: "no agent known for this cgroup".into(),
        },
        AuditEvent::HoldOrphaned {
            pid: 4600,
            tid: Some(4601),
            reason: "stopped by keyturn with no pending hold".into(),
            outcome: "killed".into(),
        },
        AuditEvent::Refused { reason: "daemon_absent".into(), count: 3 },
        AuditEvent::RogueSigconts { count: 2 },
        AuditEvent::Untag { cgroup: "/agents/claude".into(), agent: "claude".into() },
        AuditEvent::DaemonStop,
    ];
    let kinds: HashSet<usize> = events
        .iter()
        .map(|event| match event {
            AuditEvent::DaemonStart { .. } => 0,
            AuditEvent::DaemonStop => 1,
            AuditEvent::PolicyLoad { .. } => 2,
            AuditEvent::PolicyReload { .. } => 3,
            AuditEvent::PolicyLoadFailed { .. } => 4,
            AuditEvent::Tag { .. } => 5,
            AuditEvent::TagFollowed { .. } => 6,
            AuditEvent::TagLost { .. } => 7,
            AuditEvent::Untag { .. } => 8,
            AuditEvent::ExecJudged { .. } => 9,
            AuditEvent::Hold { .. } => 10,
            AuditEvent::HoldRefused { .. } => 11,
            AuditEvent::Release { .. } => 12,
            AuditEvent::Deny { .. } => 13,
            AuditEvent::Decision { .. } => 14,
            AuditEvent::Denied { .. } => 15,
            AuditEvent::Timeout { .. } => 16,
            AuditEvent::HoldClosed { .. } => 17,
            AuditEvent::DecisionRejected { .. } => 18,
            AuditEvent::RogueSigcont { .. } => 19,
            AuditEvent::HeldAgain { .. } => 20,
            AuditEvent::HoldOrphaned { .. } => 21,
            AuditEvent::Refused { .. } => 22,
            AuditEvent::RogueSigconts { .. } => 23,
        })
        .collect();
    assert_eq!(kinds.len(), 24, "every kind of record has a sample");
    events
}

/// A real trail of `events`, read back as written.
fn trail(events: Vec<AuditEvent>) -> (tempfile::TempDir, Vec<Record>) {
    let dir = tempfile::Builder::new().prefix("kt-ocsf-").tempdir().expect("temp dir");
    Audit::open(dir.path(), 1 << 20).expect("open").record_all(events).expect("record");
    let records = audit::read_all(dir.path()).expect("read");
    (dir, records)
}

fn device() -> Device {
    Device { type_id: 0, hostname: "host-1".into(), uid: Some("0123456789abcdef0123456789abcdef".into()) }
}

fn export(records: &[Record], since: Option<SystemTime>, until: Option<SystemTime>) -> Vec<Value> {
    let mut out = Vec::new();
    Exporter::new(device()).export(records, since, until, &mut out).expect("export");
    String::from_utf8(out).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("json")).collect()
}

#[test]
fn every_kind_of_record_exports_as_a_valid_ocsf_event() {
    let (_dir, records) = trail(every_kind());
    let events = export(&records, None, None);
    assert_eq!(events.len(), records.len(), "one event per record");
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    let summary = ocsf::validator::validate((lines.join("\n") + "\n").as_bytes());
    assert_eq!(summary["invalid"], 0);
    let classes: BTreeMap<String, u64> = serde_json::from_value(summary["classes"].clone()).expect("classes");
    let expected = ["0", "1007", "4001", "5019", "6002", "6003", "7003"];
    assert_eq!(classes.keys().map(String::as_str).collect::<Vec<_>>(), expected);
}

/// The record's own event, for finding its OCSF event.
fn by_type<'a>(events: &'a [Value], kind: &str, hold: Option<&str>) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["unmapped"]["keyturn"]["event"]["type"] == kind
                && hold.is_none_or(|id| e["metadata"]["correlation_uid"] == id)
        })
        .collect()
}

#[test]
fn holds_and_their_endings_say_what_happened_to_the_action() {
    let (_dir, records) = trail(every_kind());
    let events = export(&records, None, None);
    let one = |kind: &str, hold: &str| by_type(&events, kind, Some(hold))[0].clone();

    let held = one("hold", "h1");
    assert_eq!((held["class_uid"].clone(), held["activity_id"].clone()), (json!(1007), json!(1)));
    assert_eq!(held["disposition_id"], 14, "delayed: waiting for a person");
    assert_eq!(held["process"]["file"]["path"], "/usr/bin/curl");
    assert_eq!(held["process"]["file"]["hashes"][0], json!({"algorithm_id": 3, "value": "ab".repeat(32)}));
    assert_eq!(held["process"]["cmd_line"], "curl https://example.com");
    assert_eq!(held["actor"]["process"]["name"], "bash");
    assert_eq!(held["actor"]["process"]["parent_process"]["parent_process"]["name"], "claude");
    assert_eq!(held["actor"]["app_name"], "claude");
    assert_eq!(held["policy"], json!({"name": "default", "desc": "exec /usr/bin/curl: hold"}));
    assert_eq!(one("release", "h1")["disposition_id"], 8, "approved by a person");
    assert_eq!(one("release", "j1")["disposition_id"], 1, "allowed by the policy");
    assert_eq!(one("deny", "j2")["disposition_id"], 2, "blocked by the policy");

    let vote = one("decision", "h1");
    assert_eq!(
        (vote["class_uid"].clone(), vote["api"]["operation"].clone()),
        (json!(6003), json!("approve"))
    );
    assert_eq!(vote["actor"]["user"], json!({"name": "bob", "uid": "1000"}));
    assert_eq!(vote["resources"], json!([{"uid": "h1", "type": "hold"}]));
    let console_vote = one("decision", "h2");
    assert_eq!(console_vote["actor"]["user"]["uid"], "https://idp.example/|carol");

    let egress = one("hold", "h2");
    assert_eq!((egress["class_uid"].clone(), egress["activity_id"].clone()), (json!(4001), json!(1)));
    assert_eq!(egress["dst_endpoint"], json!({"ip": "10.1.2.3", "port": 443}));
    assert_eq!(egress["connection_info"], json!({"direction_id": 2, "protocol_name": "tcp"}));
    assert_eq!(egress["actor"]["process"]["cmd_line"], "python3 agent.py");

    let killed = one("denied", "h2");
    assert_eq!((killed["class_uid"].clone(), killed["activity_id"].clone()), (json!(7003), json!(2)));
    assert_eq!(killed["process"]["pid"], 4242);
    assert_eq!(one("denied", "h3")["disposition_id"], 25, "rejected: the syscall failed");
    assert_eq!(one("timeout", "h4")["class_uid"], 7003, "killed at the timeout");
    assert_eq!(one("timeout", "h5")["disposition_id"], 2, "blocked at the timeout");
}

#[test]
fn each_event_carries_its_record_so_the_chain_checks_from_the_export_alone() {
    let (_dir, records) = trail(every_kind());
    let events = export(&records, None, None);
    for (event, record) in events.iter().zip(&records) {
        let carried: Record = serde_json::from_value(event["unmapped"]["keyturn"].clone()).expect("record");
        assert_eq!((carried.seq, &carried.hash, &carried.prev), (record.seq, &record.hash, &record.prev));
        assert_eq!(carried.event, record.event);
        assert_eq!(event["metadata"]["uid"], record.hash.as_str());
        assert_eq!(event["metadata"]["sequence"], record.seq);
        assert_eq!(event["device"]["hostname"], "host-1");
    }
    let dir = tempfile::Builder::new().prefix("kt-ocsf-chain-").tempdir().expect("temp dir");
    let lines: Vec<String> = events.iter().map(|e| e["unmapped"]["keyturn"].to_string()).collect();
    std::fs::write(dir.path().join("audit-00000000000000000000.jsonl"), lines.join("\n") + "\n")
        .expect("write");
    assert_eq!(audit::verify(dir.path()).expect("the carried records verify").records, records.len() as u64);
}

#[test]
fn a_period_exports_its_records_with_the_holds_raised_before_it() {
    let (_dir, mut records) = trail(every_kind());
    let base = humantime::parse_rfc3339("2026-12-01T00:00:00Z").expect("time");
    for (n, record) in records.iter_mut().enumerate() {
        // Rewritten times: the hash is not checked by the exporter, the trail was verified.
        record.time = humantime::format_rfc3339_micros(base + Duration::from_secs(60 * n as u64)).to_string();
    }
    let release =
        records.iter().position(|r| r.event["type"] == "release" && r.event["id"] == "h1").expect("release");
    let at = |n: usize| base + Duration::from_secs(60 * n as u64);
    let events = export(&records, Some(at(release)), Some(at(release + 1)));
    assert_eq!(events.len(), 1, "[since, until) holds one record");
    assert_eq!(
        events[0]["process"]["file"]["path"], "/usr/bin/curl",
        "known from the hold before the period"
    );
    assert!(export(&records, Some(at(records.len())), None).is_empty());
}

#[test]
fn an_ending_of_a_hold_the_trail_never_raised_is_named() {
    let (_dir, records) =
        trail(vec![AuditEvent::Release { id: "nowhere".into(), by: "unix:bob".into(), why: None }]);
    let error = Exporter::new(device()).export(&records, None, None, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(&error, ExportError::Record { seq: 0, reason } if reason.contains("nowhere")),
        "{error}"
    );
    let (_dir, mut records) = trail(vec![AuditEvent::DaemonStop]);
    records[0].event = json!({"type": "from_the_future"});
    let error = Exporter::new(device()).export(&records, None, None, &mut Vec::new()).unwrap_err();
    assert!(error.to_string().contains("record 0: not a keyturn event"), "{error}");
}

#[test]
fn a_held_lookup_is_summed_up_with_the_name_asked_for() {
    let lookup = HoldView {
        protocol: Some("dns".into()),
        address: Some("127.0.0.53".into()),
        port: Some(53),
        domain: Some("bucket.example".into()),
        ..egress_hold("l1")
    };
    assert_eq!(super::summary(&lookup), "agent claude: egress dns bucket.example (127.0.0.53):53");
    assert_eq!(super::summary(&egress_hold("e1")), "agent claude: egress tcp 10.1.2.3:443");
}
