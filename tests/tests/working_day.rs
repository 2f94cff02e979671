//! An AI coding agent's working day under keyturn: 160 steps (git over HTTP, pip from a
//! package index, npm from a registry, curl and wget to an API, C builds, tests, pipelines,
//! background jobs, threads) end exactly as they do without keyturn, apart from the two an
//! approver denies; no process is left stopped or frozen; the audit trail accounts for
//! every hold.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use keyturn::hold::process::OnDeny;
use serde_json::Value;
use tests::{
    TestCgroup, WAIT,
    embedded::Embedded,
    working_day::{
        Approver, DENIED_STEPS, Decision, Hosts, Script, Seen, Session, approver_wait, stuck_processes,
    },
};

/// How a step the approver denied ends under the day's policy (`on_deny`): killed.
fn denied_status(policy: &str) -> i32 {
    let policy =
        keyturn::policy::file::parse("test", "test.toml", policy).expect("the day's policy is valid");
    assert_eq!(policy.on_deny, OnDeny::Kill, "the test expects denied actions to be killed");
    128 + libc::SIGKILL
}

#[test]
fn a_working_day_under_keyturn_ends_as_it_does_without() {
    let started = Instant::now();
    let hosts = Hosts::start();
    let session = Session::new(&hosts);
    let policy = hosts.policy();
    let denied_status = denied_status(&policy);

    // The reference: the same day, no keyturn anywhere.
    session.reset();
    let outside = TestCgroup::new();
    let reference_run = session.run_outside(Script::Day, &outside.dir);
    let reference = session.transcript();
    assert_eq!(reference_run.status, 0, "the reference day failed: {}", reference_run.stderr);
    assert!(reference.steps.len() >= 150, "only {} steps", reference.steps.len());
    for name in DENIED_STEPS {
        assert_eq!(
            reference.step(name).status,
            0,
            "{name} must succeed without keyturn: {:?}",
            reference.step(name)
        );
    }
    let pasted = hosts.paste.requests();
    assert_eq!(
        pasted,
        ["PUT /upload/secrets.txt 201", "POST /collect 200"],
        "without keyturn the secrets leave"
    );

    // The day again, under keyturn, with an approver at the console.
    hosts.reset();
    session.reset();
    let console = Embedded::start(&policy);
    let approver = Approver::new(&console, &hosts);
    let (run, seen) = approver.during(|| session.run_in_keyturn(Script::Day, &console.daemon));
    check_no_process_stuck(run.cgroup.as_deref().expect("keyturn tags listed the agent's cgroup"));
    let transcript = session.transcript();
    assert_eq!(run.status, 0, "the day under keyturn failed: {}", run.stderr);

    let differences = transcript.differences(&reference, Some(denied_status));
    assert!(differences.is_empty(), "{} steps differ:\n{}", differences.len(), differences.join("\n"));
    assert_eq!(hosts.paste.requests(), pasted, "nothing more reached the paste host under keyturn");

    check_decisions(&seen, &hosts);
    let audited = check_audit(&console, &seen);
    report(&seen, &audited, reference_run.wall, run.wall, started.elapsed());
}

/// From the moment the session ended until the daemon removes the agent's emptied cgroup,
/// nothing in it is stopped or frozen.
fn check_no_process_stuck(cgroup: &std::path::Path) {
    let deadline = Instant::now() + WAIT;
    let mut samples = 0;
    while cgroup.exists() {
        let stuck = stuck_processes(cgroup);
        assert!(stuck.is_empty(), "after the session:\n{}", stuck.join("\n"));
        samples += 1;
        assert!(
            Instant::now() < deadline,
            "the agent's cgroup {} was never emptied and removed",
            cgroup.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "after the session: nothing stopped or frozen in {samples} looks at the agent's cgroup until it was removed"
    );
}

/// The approver denied exactly the two actions the day puts in on purpose, approved the
/// rest, and saw nothing the day does not ask for.
fn check_decisions(seen: &[Seen], hosts: &Hosts) {
    let surprises: Vec<&Seen> = seen.iter().filter(|s| !s.expected).collect();
    assert!(surprises.is_empty(), "holds the day does not ask for: {surprises:#?}");
    let refused: Vec<&Seen> = seen.iter().filter(|s| matches!(s.decision, Decision::Refused(_))).collect();
    assert!(refused.is_empty(), "decisions the console refused: {refused:#?}");
    let denied: Vec<(&str, &str)> = seen
        .iter()
        .filter(|s| s.decision == Decision::Denied)
        .map(|s| (s.kind.as_str(), s.what.as_str()))
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied[0].0 == "exec" && denied[0].1.starts_with("curl -sS -T deploy/secrets.txt"), "{denied:?}");
    assert_eq!(denied[1], ("egress", format!("{}:80", hosts.paste.addr()).as_str()), "{denied:?}");
}

/// `keyturn audit verify` passes; every `hold` record has exactly one closing record
/// (decision, timeout or close), the approver saw every hold the audit has, both denials
/// killed their process, nothing was refused or rejected, and every resumed held process
/// was held again. Returns the holds' closing records by id.
fn check_audit(console: &Embedded, seen: &[Seen]) -> BTreeMap<String, Value> {
    let verify = console.daemon.cli(&["audit", "verify"]);
    assert!(verify.status.success(), "audit verify: {}", tests::daemon::stderr(&verify));
    let events = console.daemon.audit();
    let holds: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "hold")
        .map(|e| e["hold"]["id"].as_str().expect("hold id"))
        .collect();
    let mut closing: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in &events {
        if ["decision", "timeout", "hold_closed"].iter().any(|kind| event["type"] == *kind) {
            closing.entry(event["id"].as_str().expect("id").to_owned()).or_default().push(event.clone());
        }
    }
    for id in &holds {
        let records = closing.get(*id).map_or(0, Vec::len);
        assert_eq!(records, 1, "hold {id} has {records} closing records: {:?}", closing.get(*id));
    }
    assert_eq!(closing.len(), holds.len(), "closing records without a hold: {closing:?}");
    assert_eq!(
        seen.len(),
        holds.len(),
        "the approver saw {} holds, the audit has {}",
        seen.len(),
        holds.len()
    );
    let mut seen_ids: Vec<&str> = seen.iter().map(|s| s.id.split('@').next().expect("id")).collect();
    let mut audited_ids = holds.clone();
    seen_ids.sort_unstable();
    audited_ids.sort_unstable();
    assert_eq!(seen_ids, audited_ids, "the approver and the audit name different holds");
    let denials: Vec<&str> =
        events.iter().filter(|e| e["type"] == "denied").filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(denials, ["killed", "killed"], "each denial ends as on_deny says");
    for kind in ["refused", "decision_rejected"] {
        let found: Vec<&Value> = events.iter().filter(|e| e["type"] == kind).collect();
        assert!(found.is_empty(), "{kind} records: {found:?}");
    }
    // Nothing but keyturn sends SIGCONT here. The one that releases a thread's hold also
    // resumes the process's other held threads: their connects restart and are held again
    // (same hold, still pending), and the daemon audits that as a stranger's SIGCONT.
    let continued: Vec<&Value> = events.iter().filter(|e| e["type"] == "rogue_sigcont").collect();
    assert!(
        continued
            .iter()
            .all(|e| e["outcome"] == "held again" && holds.contains(&e["id"].as_str().unwrap_or(""))),
        "a SIGCONT did more than resume another held thread: {continued:?}"
    );
    eprintln!("SIGCONTs of keyturn's own audited as a stranger's (held again): {}", continued.len());
    closing.into_iter().map(|(id, mut records)| (id, records.remove(0))).collect()
}

/// Prints the holds by kind and outcome, how long they waited, and the wall times.
fn report(
    seen: &[Seen],
    closing: &BTreeMap<String, Value>,
    reference: Duration,
    under_keyturn: Duration,
    total: Duration,
) {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for hold in seen {
        let id = hold.id.split('@').next().expect("id");
        let verdict = closing[id]["verdict"].as_str().unwrap_or("closed").to_owned();
        *counts.entry((hold.kind.clone(), verdict)).or_default() += 1;
    }
    eprintln!("holds raised by the day: {} in all", seen.len());
    for ((kind, verdict), count) in &counts {
        eprintln!("  {kind:<7} {verdict:<8} {count}");
    }
    let mut to_approver: Vec<i64> = seen.iter().map(|s| s.seen_at_ms - s.requested_at_ms).collect();
    to_approver.sort_unstable();
    let waited = approver_wait(seen);
    eprintln!(
        "held → listed to the approver: median {} ms, max {} ms; waiting for the approver: {:.2} s in all",
        to_approver[to_approver.len() / 2],
        to_approver.last().expect("holds"),
        waited.as_secs_f64()
    );
    eprintln!(
        "wall time: without keyturn {:.1} s, under keyturn {:.1} s ({:.1} s without the approver's waits); whole test {:.1} s",
        reference.as_secs_f64(),
        under_keyturn.as_secs_f64(),
        under_keyturn.saturating_sub(waited).as_secs_f64(),
        total.as_secs_f64()
    );
}
