//! The real `keyturn` binary end to end: a daemon with its own state, socket and pins, and
//! the commands operators and approvers run, on the real kernel with real processes.

use std::{
    ffi::OsStr,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    QUIET, TestCgroup, WAIT,
    daemon::{Daemon, HOLD_FLAGGED, agent_in, assert_refused, finish, finish_bytes, keyturn_path, stderr},
    held,
};

#[test]
fn run_hold_approve_completes_and_everything_is_audited() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let agent = daemon.run_agent(&daemon.flagged(), &["approved-output"]);
    let hold = daemon.pending_one();
    for field in [
        "id",
        "kind",
        "agent",
        "cgroup",
        "pid",
        "uid",
        "user",
        "requested_at",
        "policy_rule",
        "path",
        "argv",
        "cwd",
        "sha256",
        "parents",
    ] {
        assert!(!hold[field].is_null(), "pending --json lacks {field}: {hold}");
    }
    assert_eq!(hold["kind"], "exec");
    assert_eq!(hold["user"], "nobody");
    assert_eq!(hold["agent"], "test-agent");
    assert_eq!(hold["argv"][1], "approved-output");
    let pid = u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid");
    assert!(held(pid));
    let id = hold["id"].as_str().expect("id");

    let out = daemon.cli(&["approve", id, "--reason", "fine"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, stdout) = finish(agent);
    assert_eq!((code, stdout.trim()), (0, "approved-output"));

    let again = daemon.cli(&["approve", id]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already decided: approved"), "{}", stderr(&again));
    let unknown = daemon.cli(&["deny", "ffffffffffff"]);
    assert!(stderr(&unknown).contains("unknown hold id"), "{}", stderr(&unknown));

    let trail = daemon.cli(&["audit", "--json"]);
    let text = String::from_utf8_lossy(&trail.stdout);
    for kind in ["daemon_start", "tag", "\"hold\"", "decision", "release"] {
        assert!(text.contains(kind), "audit lacks {kind}");
    }
    assert!(daemon.cli(&["audit", "verify"]).status.success());
}

#[test]
fn deny_kills_and_run_exits_with_128_plus_signal() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let agent = daemon.run_agent(&daemon.flagged(), &["must-not-print"]);
    let id = daemon.pending_one()["id"].as_str().expect("id").to_owned();
    let out = daemon.cli(&["deny", &id, "--reason", "no"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, stdout) = finish(agent);
    assert_eq!(code, 128 + libc::SIGKILL);
    assert!(!stdout.contains("must-not-print"));
}

#[test]
fn no_one_approves_their_own_action() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let agent = daemon.run_agent(&daemon.flagged(), &["x"]);
    let id = daemon.pending_one()["id"].as_str().expect("id").to_owned();

    // As the held process's own user (nobody is an approver here, by nogroup).
    let own_uid = daemon.cli_as_nobody(&["approve", &id]);
    assert!(stderr(&own_uid).contains("the user of the held process"), "{}", stderr(&own_uid));

    // From inside an agent's tagged cgroup, even as root.
    let inside = daemon
        .command(&["run", "--policy", "test", "--"])
        .arg(keyturn_path())
        .args(["approve", &id, "--config"])
        .arg(daemon.dir.join("keyturn.toml"))
        .output()
        .expect("run");
    assert!(stderr(&inside).contains("refused"), "{}", stderr(&inside));

    // The hold is still pending and a legitimate approver can still decide.
    assert_eq!(daemon.pending_one()["id"], id.as_str());
    assert!(daemon.cli(&["deny", &id]).status.success());
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
}

/// A hold names who launched its agent: whom `run --requester` names, else the user who
/// ran `keyturn run`; `pending --json` and the audit trail show it. An agent cannot launch
/// or tag anything under another name.
#[test]
fn a_hold_names_who_launched_its_agent() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    for (requester, expected) in [(Some("alice@example.com"), "alice@example.com"), (None, "unix:root")] {
        let agent = match requester {
            Some(requester) => daemon.run_agent_for(requester, &daemon.flagged(), &["x"]),
            None => daemon.run_agent(&daemon.flagged(), &["x"]),
        };
        let hold = daemon.pending_one();
        assert_eq!(
            (&hold["requester"], &hold["quorum"]),
            (&Value::from(expected), &Value::from(1)),
            "{hold}"
        );
        assert_eq!(hold_record(&daemon, &id_of(&hold))["hold"]["requester"], expected);
        assert!(daemon.cli(&["deny", &id_of(&hold)]).status.success());
        assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    }

    let bad = daemon.cli(&["run", "--requester", "alice\u{1b}[2J", "--", "true"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("has control or invisible characters"), "{}", stderr(&bad));

    let config = daemon.dir.join("keyturn.toml");
    let config = config.to_str().expect("UTF-8");
    for (inner, says) in [
        (
            &["run", "--requester", "mallory@example.com", "--config", config, "--", "true"][..],
            "--requester: refused: the caller runs inside the tagged cgroup",
        ),
        (
            &["tag", "keyturn.run", "--requester", "mallory@example.com", "--config", config],
            "inside the tagged cgroup",
        ),
    ] {
        let inside = daemon
            .command(&["run", "--policy", "test", "--requester", "alice@example.com", "--"])
            .arg(keyturn_path())
            .args(inner)
            .output()
            .expect("run");
        assert!(!inside.status.success() && stderr(&inside).contains(says), "{}", stderr(&inside));
    }
}

/// Only an operator may name someone else as an agent's requester; anyone else's agent is
/// recorded as theirs, as `people` maps them to a person at the console.
#[test]
fn only_an_operator_names_a_requester() {
    let daemon = Daemon::start_with_config(HOLD_FLAGGED, "people = { root = \"ops@example.com\" }");
    let config = daemon.dir.join("keyturn.toml");
    let config = config.to_str().expect("UTF-8");
    let stranger = daemon.cli_as(
        4321,
        4321,
        &["run", "--requester", "someone-else@example.com", "--config", config, "--", "true"],
    );
    assert!(!stranger.status.success());
    assert!(stderr(&stranger).contains("--requester: permission denied"), "{}", stderr(&stranger));

    let agent = daemon.run_agent(&daemon.flagged(), &["x"]);
    let hold = daemon.pending_one();
    assert_eq!(hold["requester"], "ops@example.com", "{hold}");
    assert!(daemon.cli(&["deny", &id_of(&hold)]).status.success());
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
}

/// A hold flagged by a rule with `quorum = 2` needs two approvers at the console: an
/// approver on this host is refused, and the hold stays; a denial here still kills.
#[test]
fn a_quorum_hold_is_not_approved_locally_but_can_be_denied() {
    let daemon =
        Daemon::start(&HOLD_FLAGGED.replacen("action = \"hold\"", "action = \"hold\"\nquorum = 2", 1));
    let agent = daemon.run_agent(&daemon.flagged(), &["must-not-print"]);
    let hold = daemon.pending_one();
    let id = id_of(&hold);
    assert_eq!(hold["quorum"], 2);
    assert_refused(
        &daemon.cli(&["approve", &id, "--reason", "alone"]),
        &format!("refused: hold {id} needs 2 distinct approvers; approve it in the console"),
    );
    assert_eq!(daemon.pending_one()["id"], id.as_str());
    assert!(held(pid_of(&hold)));
    let out = daemon.cli(&["deny", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(agent), (128 + libc::SIGKILL, String::new()));
}

#[test]
fn racing_deciders_get_exactly_one_decision() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let agent = daemon.run_agent(&daemon.flagged(), &["raced"]);
    let id = daemon.pending_one()["id"].as_str().expect("id").to_owned();
    let racers: Vec<Child> = (0..6)
        .map(|n| {
            let verb = if n % 2 == 0 { "approve" } else { "deny" };
            daemon.command(&[verb, &id]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("racer")
        })
        .collect();
    let winners =
        racers.into_iter().filter_map(|r| r.wait_with_output().ok()).filter(|o| o.status.success()).count();
    assert_eq!(winners, 1, "exactly one decision may win");
    let (code, _) = finish(agent);
    assert!(code == 0 || code == 128 + libc::SIGKILL, "exit {code}");
    let decisions =
        String::from_utf8_lossy(&daemon.cli(&["audit", "--json"]).stdout).matches("\"decision\"").count();
    assert_eq!(decisions, 1);
}

#[test]
fn a_killed_daemon_leaves_the_hold_in_place_and_a_new_one_decides_it() {
    let mut daemon = Daemon::start(HOLD_FLAGGED);
    let agent = daemon.run_agent(&daemon.flagged(), &["survived"]);
    let hold = daemon.pending_one();
    let pid = u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid");
    daemon.kill9();
    sleep(Duration::from_millis(300));
    assert!(held(pid), "the process stays held without a daemon");
    daemon.launch();
    let again = daemon.pending_one();
    assert_eq!(again["id"], hold["id"], "the restarted daemon finds the same hold");
    assert!(daemon.cli(&["approve", again["id"].as_str().expect("id")]).status.success());
    assert_eq!(finish(agent), (0, "survived\n".to_owned()));
}

#[test]
fn a_timeout_applies_on_timeout() {
    let daemon = Daemon::start(&HOLD_FLAGGED.replace("1m", "1s"));
    let agent = daemon.run_agent(&daemon.flagged(), &["too-late"]);
    let (code, stdout) = finish(agent);
    assert_eq!(code, 128 + libc::SIGKILL);
    assert!(!stdout.contains("too-late"));
    let holds = audit_events(&daemon, "hold");
    let timeouts = audit_events(&daemon, "timeout");
    assert_eq!((holds.len(), timeouts.len()), (1, 1), "one hold, timed out: {timeouts:?}");
    assert_eq!(timeouts[0]["id"], holds[0]["hold"]["id"]);
}

/// A connect from a thread started 0.3 s after its process is held, listed with that
/// thread's tid and its destination, and timed out and audited like any other hold: never
/// dropped as "process gone" with the process left stopped.
#[test]
fn a_late_threads_connect_is_listed_and_times_out_like_any_hold() {
    let peer = tests::Peer::new();
    let policy = format!(
        "timeout = \"2s\"\n[[egress]]\ncidr = \"{}\"\naction = \"hold\"\n[egress_default]\naction = \"allow\"\n",
        keyturn::policy::display_cidr(&peer.v4_net)
    );
    let daemon = Daemon::start(&policy);
    let received = peer.tcp(peer.v4.into(), 7101);
    let (to, actor) = (peer.v4.to_string(), tests::actor_path());
    let agent =
        daemon.run_agent(actor.to_str().expect("utf-8"), &["late-thread", "300", "tcp", &to, "7101", "late"]);
    let hold = daemon.pending_one();
    let (pid, tid) = (pid_of(&hold), u32::try_from(hold["tid"].as_u64().expect("tid")).expect("tid"));
    assert_ne!(tid, pid, "the hold names the late thread: {hold}");
    assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists(), "{tid} is a thread of {pid}");
    assert_eq!(
        (hold["kind"].as_str(), hold["address"].as_str(), hold["port"].as_u64()),
        (Some("egress"), Some(to.as_str()), Some(7101))
    );
    // What the process's memory says, read by the judges: its argv and its parents (the
    // first is `keyturn run`).
    assert_eq!(hold["argv"][1], "late-thread", "{hold}");
    assert!(hold["parents"][0]["argv"].as_array().is_some_and(|argv| !argv.is_empty()), "{hold}");
    let parents = hold["parents"].as_array().map(Vec::len);
    assert_eq!(parents, Some(1), "the agent's own processes, ending at what started it: {hold}");
    assert!(held(pid));
    let (code, _) = finish(agent);
    assert_eq!(code, 128 + libc::SIGKILL, "on_timeout kills");
    assert!(received.bytes().is_empty());
    let timeouts = audit_events(&daemon, "timeout");
    assert_eq!(timeouts.len(), 1);
    assert_eq!(timeouts[0]["id"], hold["id"]);
    assert!(audit_events(&daemon, "hold_closed").is_empty(), "no hold was dropped");
}

/// Process `pid`'s start time as the kernel's records carry it (nanoseconds since boot,
/// to the clock tick `/proc` shows).
fn process_start_ns(pid: u32) -> u64 {
    keyturn::hold::procfs::stat(pid).expect("stat").start_ticks * keyturn::hold::process::NS_PER_TICK
}

/// A process `sleep`ing as `nobody` in `cgroup`, stopped by the test once it runs sleep
/// (after its execs were judged and released, whose SIGCONT would end an earlier stop).
fn stopped_agent(cgroup: &TestCgroup) -> Child {
    let agent = agent_in(cgroup, "/bin/sleep", ["1000"]).spawn().expect("spawn");
    // Wherever the host or guest keeps it (coreutils, or a busybox applet in the VMs).
    let program = fs::canonicalize("/bin/sleep").expect("sleep");
    let sleeping = || {
        fs::read_link(format!("/proc/{}/exe", agent.id())).ok() == Some(program.clone())
            && tests::process_state(agent.id()) == Some('S')
    };
    let deadline = Instant::now() + WAIT;
    while !sleeping() {
        assert!(Instant::now() < deadline, "the agent never ran sleep");
        sleep(Duration::from_millis(5));
    }
    tests::rogue_signal(agent.id(), libc::SIGSTOP);
    agent
}

/// Waits for the `hold_orphaned` record of `pid`.
fn orphaned(daemon: &Daemon, pid: u32) -> Value {
    daemon.wait_record(0, |e| e["type"] == "hold_orphaned" && e["pid"] == pid)
}

/// A process keyturn's kernel side recorded stopping, with no pending hold anywhere (a
/// state made here on purpose): the sweep settles it by `on_timeout` (kill) at once, audits
/// it and counts it; a stop the kernel did not record (anyone else's) is left alone.
#[test]
fn a_stop_of_keyturns_without_a_pending_hold_is_settled_and_anyone_elses_is_left_alone() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let cgroup = TestCgroup::new();
    daemon.tag(&cgroup, "orphan-agent");
    let theirs = stopped_agent(&cgroup);
    let ours = stopped_agent(&cgroup);
    let stop = agent_common::Stop {
        process_start: process_start_ns(ours.id()),
        stopped_at_ns: keyturn::kernel::monotonic_ns() - 10_000_000_000,
    };
    daemon.pinned_map::<u32, agent_common::Stop>("STOPS").insert(ours.id(), stop, 0).expect("insert");

    let record = orphaned(&daemon, ours.id());
    assert_eq!(record["reason"], "stopped by keyturn with no pending hold");
    assert_eq!(record["outcome"], "killed");
    assert_eq!(finish(ours).0, 128 + libc::SIGKILL);
    assert!(daemon.status()["counters"]["orphaned"].as_u64() >= Some(1));

    sleep(QUIET * 3);
    assert_eq!(tests::process_state(theirs.id()), Some('T'), "a stop keyturn never made is not its to end");
    assert!(!daemon.audit().iter().any(|e| e["type"] == "hold_orphaned" && e["pid"] == theirs.id()));
    tests::rogue_signal(theirs.id(), libc::SIGKILL);
    assert_eq!(finish(theirs).0, 128 + libc::SIGKILL);
}

/// A pending kernel hold record that no event reported (made here on purpose) for a
/// stopped process: the sweep decides it by the policy's `on_timeout`, here `fail`: the
/// record is denied and the process resumed, so its restarted syscall fails with EPERM.
/// With `on_timeout = "kill"` it is killed.
#[test]
fn a_kernel_hold_record_nobody_reported_is_decided_by_on_timeout() {
    for (on_timeout, outcome) in [("fail", "failed with EPERM"), ("kill", "killed")] {
        let daemon = Daemon::start(&format!("on_timeout = \"{on_timeout}\"\n{HOLD_FLAGGED}"));
        let cgroup = TestCgroup::new();
        daemon.tag(&cgroup, "orphan-agent");
        let agent = stopped_agent(&cgroup);
        let pid = agent.id();
        let hold = agent_common::Hold {
            action: agent_common::Action::default(),
            nonce: 42,
            thread_start: process_start_ns(pid),
            process_start: process_start_ns(pid),
            root: cgroup.id(),
            held_at_ns: keyturn::kernel::monotonic_ns() - 10_000_000_000,
            decided_at_ns: 0,
            state: agent_common::hold_state::PENDING,
            event_type: agent_common::event_type::HELD,
            rogue_reported: 0,
            padding: 0,
        };
        let key = agent_common::HoldKey { tgid: pid, tid: pid };
        daemon
            .pinned_map::<agent_common::HoldKey, agent_common::Hold>("HOLDS")
            .insert(key, hold, 0)
            .expect("insert");

        let record = orphaned(&daemon, pid);
        assert_eq!(record["reason"], "a kernel hold record that no pending hold stands for");
        assert_eq!(record["outcome"], outcome);
        if on_timeout == "fail" {
            // Resumed: the sleep it was stopped in goes on (nothing restarts it into a hold).
            let deadline = Instant::now() + WAIT;
            while tests::process_state(pid) == Some('T') {
                assert!(Instant::now() < deadline, "the orphaned record's process was never resumed");
                sleep(Duration::from_millis(20));
            }
            let records = daemon.pinned_map::<agent_common::HoldKey, agent_common::Hold>("HOLDS");
            assert_eq!(records.get(&key, 0).map(|h| h.state).ok(), Some(agent_common::hold_state::DENIED));
            tests::rogue_signal(pid, libc::SIGKILL);
        }
        assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    }
}

/// The metrics answer an HTTP GET of `/metrics` in Prometheus' text format, with the
/// pending holds and every counter; anything else is not found.
#[test]
fn metrics_are_served_over_http() {
    use std::io::{Read as _, Write as _};
    let addr = tests::free_addr();
    let daemon = Daemon::start_with_config(HOLD_FLAGGED, &format!("metrics = \"{addr}\""));
    let agent = daemon.run_agent(&daemon.flagged(), &["x"]);
    let hold = daemon.pending_one();
    let get = |path: &str| {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    };
    let response = get("/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("content-type: text/plain; version=0.0.4"), "{response}");
    for line in
        ["keyturn_pending_holds 1", "keyturn_orphaned_total 0", "keyturn_refused_total{reason=\"flood\"} 0"]
    {
        assert!(response.lines().any(|l| l == line), "no {line:?} in {response}");
    }
    assert!(get("/").starts_with("HTTP/1.1 404"));
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
}

#[test]
fn a_bad_policy_is_refused_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("kt-badpolicy-{}", std::process::id()));
    fs::create_dir_all(dir.join("policies")).expect("dir");
    fs::write(
        dir.join("policies/bad.toml"),
        "[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"hold\"\nport = 80\n",
    )
    .expect("policy");
    fs::write(dir.join("keyturn.toml"), format!("state_dir = \"{0}/state\"\nsocket = \"{0}/s.sock\"\npolicies_dir = \"{0}/policies\"\npin_dir = \"/sys/fs/bpf/kt-bad-{1}\"\nmetrics = \"\"\n", dir.display(), std::process::id())).expect("config");
    let out = Command::new(keyturn_path())
        .args(["daemon", "--config"])
        .arg(dir.join("keyturn.toml"))
        .output()
        .expect("daemon");
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("bad.toml:4") && message.contains("port"), "{message}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_edited_audit_trail_fails_verification() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    assert!(daemon.cli(&["audit", "verify"]).status.success());
    let file = fs::read_dir(daemon.dir.join("state/audit"))
        .expect("audit dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .expect("audit file");
    let text = fs::read_to_string(&file).expect("read");
    assert!(text.contains("\"version\":\"0.1.0\""));
    fs::write(&file, text.replacen("\"version\":\"0.1.0\"", "\"version\":\"6.6.6\"", 1)).expect("edit");
    let out = daemon.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(":1: contents do not match"), "{}", stderr(&out));
}

#[test]
fn commands_fail_clearly_without_a_daemon() {
    let out = Command::new(keyturn_path())
        .args(["pending", "--config", "/nonexistent/keyturn.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/keyturn.toml"), "{}", stderr(&out));
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("digest").to_owned()
}

/// The audited events of `kind`.
fn audit_events(daemon: &Daemon, kind: &str) -> Vec<Value> {
    daemon.audit().into_iter().filter(|event| event["type"] == kind).collect()
}

#[test]
fn a_copy_of_a_flagged_program_made_later_is_recognised_by_its_content() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let copy = daemon.dir.join("innocent-name");
    fs::copy(daemon.flagged(), &copy).expect("copy");
    let agent = daemon.run_agent(copy.to_str().expect("utf-8"), &["copy-ran"]);
    let hold = daemon.pending_one();
    assert_eq!(hold["path"], copy.to_str().expect("utf-8"));
    assert_eq!(hold["sha256"], sha256sum(&copy));
    let rule = hold["policy_rule"].as_str().expect("rule");
    assert!(rule.contains(&daemon.flagged()), "the rule that names the original: {rule}");
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let (code, stdout) = finish(agent);
    assert_eq!(code, 128 + libc::SIGKILL);
    assert!(!stdout.contains("copy-ran"));
}

#[test]
fn an_upgraded_flagged_program_is_held_and_so_are_copies_of_either_version() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let old_copy = daemon.dir.join("old-copy");
    fs::copy(daemon.flagged(), &old_copy).expect("copy");
    // The daemon sees the old version once (held, approved)...
    let agent = daemon.run_agent(&daemon.flagged(), &["v1"]);
    assert!(daemon.cli(&["approve", daemon.pending_one()["id"].as_str().expect("id")]).status.success());
    assert_eq!(finish(agent).0, 0);
    // ...then a package upgrade replaces it with a new file.
    let flagged = PathBuf::from(daemon.flagged());
    fs::remove_file(&flagged).expect("remove");
    fs::copy("/bin/printf", &flagged).expect("upgrade");
    let new_copy = daemon.dir.join("new-copy");
    fs::copy(&flagged, &new_copy).expect("copy");
    for program in [&flagged, &old_copy, &new_copy] {
        let agent = daemon.run_agent(program.to_str().expect("utf-8"), &["must-not-run"]);
        let hold = daemon.pending_one();
        assert_eq!(hold["path"], program.to_str().expect("utf-8"));
        assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
        let (code, stdout) = finish(agent);
        assert_eq!(code, 128 + libc::SIGKILL, "{}", program.display());
        assert!(!stdout.contains("must-not-run"));
    }
}

#[test]
fn an_unflagged_program_is_judged_once_then_decided_in_the_kernel() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    // A small program of its own (in the VMs, /bin/true is busybox, which wants its own
    // name; the test binaries are large, and hashing them is slow under emulation).
    let program = daemon.dir.join("plain-program");
    fs::copy("/usr/bin/setpriv", &program).expect("copy");
    for _ in 0..3 {
        let agent = daemon.run_agent(program.to_str().expect("utf-8"), &["--version"]);
        assert_eq!(finish(agent).0, 0);
    }
    let judged: Vec<serde_json::Value> = audit_events(&daemon, "exec_judged")
        .into_iter()
        .filter(|r| r["path"] == program.to_str().expect("utf-8"))
        .collect();
    assert_eq!(judged.len(), 1, "judged once: {judged:?}");
    assert_eq!(judged[0]["verdict"], "allow");
    assert_eq!(judged[0]["recorded_in_kernel"], true);
    assert_eq!(judged[0]["sha256"], sha256sum(&program));

    // Changing the file makes a new version, judged afresh.
    fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    assert_eq!(finish(daemon.run_agent(program.to_str().expect("utf-8"), &["--version"])).0, 0);
    let judged = audit_events(&daemon, "exec_judged")
        .into_iter()
        .filter(|r| r["path"] == program.to_str().expect("utf-8"))
        .count();
    assert_eq!(judged, 2);
}

#[test]
fn kernel_refusals_are_audited_by_reason() {
    let daemon = Daemon::start_with_config(HOLD_FLAGGED, "max_pending = 1");
    let go = daemon.dir.join("go");
    let flagged = daemon.flagged();
    // The first is held; with it pending, the other two are over the limit. (Execs racing
    // for the last slot may all be refused: the limit fails closed.) Each runs in a
    // subshell: busybox's sh starts commands with vfork, and a vfork parent waits for its
    // child's exec, which in LSM modes is what is held. The shell waits for `go` with
    // builtins only: any other program would be a new exec, refused at the limit.
    let script = format!(
        "({flagged} first) & while [ ! -e {0} ]; do :; done; ({flagged} second) & ({flagged} third) & wait",
        go.display()
    );
    let agent = daemon.run_agent("/bin/sh", &["-c", &script]);
    let hold = daemon.pending_one();
    fs::write(&go, "").expect("let the agent go on");
    assert_refusals(&daemon, "flood", 2);
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let (_, stdout) = finish(agent);
    assert!(stdout.trim().is_empty(), "neither the refused execs nor the denied one ran: {stdout}");
}

/// Raw and ICMP (ping) sockets reach the network around the egress hooks: a tagged cgroup
/// may not make them, even as root where ping sockets are allowed, and each refusal is
/// counted and audited; the same sockets are made outside it.
#[test]
fn raw_and_ping_sockets_are_refused_to_agents() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let cgroup = TestCgroup::new();
    daemon.tag(&cgroup, "socket-agent");
    let make = |kind: &str, tagged: bool| {
        let mut actor = Command::new(tests::actor_path());
        actor.args(["socket", kind]).stdout(Stdio::piped());
        if tagged {
            tests::enter_cgroup_on_exec(&mut actor, &cgroup.dir).expect("cgroup.procs");
        }
        let out = actor.output().expect("actor");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for kind in ["raw", "icmp", "icmp6"] {
        assert_eq!(make(kind, false), "ok", "{kind} outside any agent");
        assert_eq!(make(kind, true), format!("error: {}", libc::EPERM), "{kind} in a tagged cgroup");
    }
    assert_refusals(&daemon, "socket", 3);
}

/// The kernel refused exactly `count` actions for `reason`: audited (waited for) and in
/// `keyturn status`.
fn assert_refusals(daemon: &Daemon, reason: &str, count: u64) {
    let deadline = Instant::now() + WAIT;
    let audited = loop {
        let audited: u64 = audit_events(daemon, "refused")
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["count"].as_u64().expect("count"))
            .sum();
        if audited >= count || Instant::now() > deadline {
            break audited;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(audited, count, "{reason} refusals audited");
    let status: serde_json::Value = serde_json::from_slice(&daemon.cli(&["status"]).stdout).expect("status");
    assert_eq!(status["refused"][reason], count);
}

#[test]
fn an_approval_for_the_agents_life_survives_a_daemon_restart() {
    let mut daemon = Daemon::start(HOLD_FLAGGED);
    let go = daemon.dir.join("go");
    assert!(Command::new("mkfifo").args(["-m", "666"]).arg(&go).status().expect("mkfifo").success());
    let flagged = daemon.flagged();
    let script = format!("{flagged} one; read line < {}; {flagged} two", go.display());
    let agent = daemon.run_agent("/bin/sh", &["-c", &script]);
    let id = daemon.pending_one()["id"].as_str().expect("id").to_owned();
    assert!(daemon.cli(&["approve", &id, "--always"]).status.success());
    daemon.kill9();
    daemon.launch();
    fs::write(&go, "\n").expect("let the agent go on");
    assert_eq!(finish(agent), (0, "one\ntwo\n".to_owned()), "the second exec needs no new approval");
    let released = audit_events(&daemon, "release");
    assert!(
        released.iter().any(|e| e["by"] == "keyturn" && e["why"] == "an earlier approval's scope covers it"),
        "{released:?}"
    );
}

/// Asserts that `out`, what `keyturn pending` printed, is text that cannot steer a
/// terminal: UTF-8 with no control character but newlines and no bidi override.
fn assert_terminal_safe(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("pending prints UTF-8");
    let unsafe_char =
        text.chars().find(|&c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c));
    assert_eq!(unsafe_char, None, "raw control character in {text:?}");
}

/// The audit event of hold `id`.
fn hold_record(daemon: &Daemon, id: &str) -> Value {
    daemon
        .audit()
        .into_iter()
        .find(|e| e["type"] == "hold" && e["hold"]["id"] == id)
        .unwrap_or_else(|| panic!("no hold record for {id}"))
}

fn pid_of(hold: &Value) -> u32 {
    u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid fits")
}

fn id_of(hold: &Value) -> String {
    hold["id"].as_str().expect("id").to_owned()
}

/// Bytes an agent chose reach an approver escaped, in `pending`, `pending --json` and the
/// audit trail: a flagged program run through a hard link whose name is not UTF-8, from
/// such a directory, with argv carrying terminal control sequences, a fake "approved"
/// line, a C1 control and a bidi override. The program still runs with its bytes intact.
#[test]
fn hostile_bytes_are_shown_escaped_and_reach_the_program_intact() {
    const LINK: &[u8] = b"fl\xff\x1b[2J\ragged";
    const LINK_SHOWN: &str = "fl\\xff\\x1b[2J\\x0dagged";
    let args: [&[u8]; 7] = [
        b"\xff\xfe",
        b"\x1b[2J\x1b[H",
        b"ok\rkeyturn: approved",
        b"\nfake line",
        b"back\\slash",
        "\u{9b}31m".as_bytes(),
        "\u{202e}txt.exe".as_bytes(),
    ];
    let shown = [
        "\\xff\\xfe",
        "\\x1b[2J\\x1b[H",
        "ok\\x0dkeyturn: approved",
        "\\x0afake line",
        "back\\\\slash",
        "\\u{9b}31m",
        "\\u{202e}txt.exe",
    ];
    let daemon = Daemon::start(HOLD_FLAGGED);
    let link = daemon.dir.join(OsStr::from_bytes(LINK));
    fs::hard_link(daemon.flagged(), &link).expect("hard link");
    let cwd = daemon.dir.join(OsStr::from_bytes(b"cwd-\xfe\x1b]0;owned\x07"));
    fs::create_dir(&cwd).expect("mkdir");
    fs::set_permissions(&cwd, fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent = daemon
        .agent_command(&link, args.map(OsStr::from_bytes))
        .current_dir(&cwd)
        .spawn()
        .expect("keyturn run");

    let hold = daemon.pending_one();
    let dir = daemon.dir.display();
    assert_eq!(hold["path"], format!("{dir}/{LINK_SHOWN}"));
    assert_eq!(hold["cwd"], format!("{dir}/cwd-\\xfe\\x1b]0;owned\\x07"));
    assert_eq!(hold["argv"][0], hold["path"]);
    assert_eq!(hold["argv"].as_array().expect("argv")[1..], shown.map(Value::from));
    if hold["hold"] == "stopped" {
        // The exec happened: the command name is the link's.
        assert_eq!(hold["comm"], LINK_SHOWN);
    }
    let parent_argv = hold["parents"][0]["argv"].as_array().expect("keyturn run's argv");
    assert!(parent_argv.contains(&Value::from(shown[1])), "{parent_argv:?}");

    let json = daemon.cli(&["pending", "--json"]);
    let table = daemon.cli(&["pending"]);
    assert_terminal_safe(&json.stdout);
    assert_terminal_safe(&table.stdout);
    let table = String::from_utf8(table.stdout).expect("UTF-8");
    assert_eq!(table.lines().count(), 2, "a header and one hold: {table}");
    assert!(
        table
            .contains(&format!("{dir}/{LINK_SHOWN} \\xff\\xfe \\x1b[2J\\x1b[H \"ok\\x0dkeyturn: approved\"")),
        "{table}"
    );

    let id = id_of(&hold);
    let recorded = hold_record(&daemon, &id)["hold"].clone();
    for field in ["path", "argv", "cwd", "comm", "parents"] {
        assert_eq!(recorded[field], hold[field], "audit {field}");
    }

    let out = daemon.cli(&["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, printed) = finish_bytes(agent);
    assert_eq!(code, 0);
    assert_eq!(printed, [&args.join(&b' ')[..], b"\n"].concat(), "echo printed its argv as it was given");
}

/// An argv of more than 1 MiB: the hold is listed with its argv cut at 1 MiB behind an
/// explicit marker, every reply and audit record stays one valid JSON line, a word past
/// the cut (which an argv rule looks for) still holds, and approving runs the whole argv.
#[test]
fn an_argv_over_one_mebibyte_is_cut_with_a_marker_and_still_runs_whole() {
    const ARG_BYTES: usize = (128 << 10) - 1; // the kernel's longest argument
    let daemon =
        Daemon::start(&HOLD_FLAGGED.replacen("action = \"hold\"", "action = \"hold\"\nargv = [\"push\"]", 1));
    let mut args: Vec<String> =
        (b'a'..=b'h').map(|letter| char::from(letter).to_string().repeat(ARG_BYTES)).collect();
    args.push("push".into());
    let agent = daemon.agent_command(daemon.flagged(), &args).spawn().expect("keyturn run");

    let hold = daemon.pending_one();
    assert!(hold["policy_rule"].as_str().expect("rule").contains("argv too long"), "{}", hold["policy_rule"]);
    let argv: Vec<&str> =
        hold["argv"].as_array().expect("argv").iter().map(|a| a.as_str().expect("text")).collect();
    let (marker, shown) = argv.split_last().expect("argv");
    assert!(marker.starts_with("…(truncated at 1024 KiB)"), "{marker:?}");
    let flagged = daemon.flagged();
    let real: Vec<&str> = std::iter::once(flagged.as_str()).chain(args.iter().map(String::as_str)).collect();
    let (last, whole) = shown.split_last().expect("shown");
    assert_eq!(whole, &real[..whole.len()]);
    assert!(real[whole.len()].starts_with(last));
    let bytes: usize = shown.iter().map(|a| a.len() + 1).sum();
    assert!(((1 << 20) - 4096..=(1 << 20) + 1).contains(&bytes), "{bytes} bytes shown");

    let json = daemon.cli(&["pending", "--json"]);
    assert!(json.stdout.len() < 3 << 19, "{} bytes: parents' argv are cut too", json.stdout.len());
    assert_eq!(hold_record(&daemon, &id_of(&hold))["hold"]["argv"], hold["argv"]);
    assert!(daemon.cli(&["audit", "verify"]).status.success());

    assert!(daemon.cli(&["approve", &id_of(&hold)]).status.success());
    let (code, printed) = finish(agent);
    assert_eq!((code, printed.len()), (0, args.iter().map(|a| a.len() + 1).sum()));
    assert_eq!(printed, args.join(" ") + "\n");
}

/// A held process killed by someone else, and its pid given to a new process that is held
/// too: the old hold id reaches nothing. Approving or denying it fails, saying it was
/// closed, the trail says so, and the new process stays held until its own hold is decided.
#[test]
fn a_hold_whose_pid_was_reused_decides_nothing() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let cgroup = TestCgroup::new();
    daemon.tag(&cgroup, "reuse-agent");
    let first = agent_in(&cgroup, daemon.flagged(), ["first"]).spawn().expect("spawn");
    let old = daemon.pending_one();
    let (pid, old_id) = (pid_of(&old), id_of(&old));
    assert_eq!(pid, first.id());

    tests::rogue_signal(pid, libc::SIGKILL);
    assert_eq!(finish(first).0, 128 + libc::SIGKILL);
    let second = tests::spawn_with_pid(&mut agent_in(&cgroup, daemon.flagged(), ["second"]), pid);
    let new = daemon.pending_matching(|hold| hold["id"] != old_id.as_str());
    assert_eq!(pid_of(&new), pid);

    for verb in ["approve", "deny"] {
        assert_refused(&daemon.cli(&[verb, &old_id]), &format!("hold {old_id} was closed before a decision"));
    }
    sleep(QUIET);
    assert!(held(pid), "the new process with the old pid is still held");
    assert_eq!(daemon.pending().iter().map(id_of).collect::<Vec<_>>(), [id_of(&new)]);
    assert!(daemon.audit().iter().any(|e| e["type"] == "hold_closed" && e["id"] == old_id.as_str()));

    let approved = daemon.cli(&["approve", &id_of(&new)]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    assert_eq!(finish(second), (0, "second\n".to_owned()));
}

/// A held process killed by someone else: its hold is closed, and the frozen cgroup it was
/// kept in (`cgroup-sock` mode) goes with it.
#[test]
fn a_held_process_killed_by_someone_else_leaves_nothing_behind() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let cgroup = TestCgroup::new();
    daemon.tag(&cgroup, "killed-agent");
    let agent = agent_in(&cgroup, daemon.flagged(), ["never"]).spawn().expect("spawn");
    let hold = daemon.pending_one();
    tests::rogue_signal(pid_of(&hold), libc::SIGKILL);
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    daemon.wait_record(0, |e| e["type"] == "hold_closed" && e["id"] == id_of(&hold).as_str());
    // At once, or at the daemon's next ticks while the killed process is still leaving it.
    let deadline = Instant::now() + WAIT;
    loop {
        let cells: Vec<_> = fs::read_dir(&cgroup.dir)
            .expect("cgroup dir")
            .flatten()
            .map(|entry| entry.file_name())
            .filter(|name| name.to_string_lossy().starts_with("keyturn-held-"))
            .collect();
        if cells.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "frozen cells of closed holds are removed: {cells:?}");
        sleep(Duration::from_millis(50));
    }
}

/// An agent forks; parent and child both exec the flagged program: two holds, decided
/// apart. Approving the child's releases only the child, denying the parent's kills only
/// the parent, and a process the parent started before its hold runs on throughout.
#[test]
fn a_process_that_forks_while_held_is_decided_apart_from_its_child() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let cgroup = TestCgroup::new();
    daemon.tag(&cgroup, "forking-agent");
    let ticks = daemon.dir.join("ticks");
    fs::write(&ticks, "").expect("ticks");
    fs::set_permissions(&ticks, fs::Permissions::from_mode(0o666)).expect("chmod");
    let (ticks_path, flagged) = (ticks.display(), daemon.flagged());
    // The child runs in a subshell: busybox's sh (the VMs') starts commands with vfork,
    // and a vfork parent waits for its child's exec, which in LSM modes is what is held.
    let script = format!(
        "(while :; do echo tick >> '{ticks_path}'; sleep 0.05; done) </dev/null >/dev/null 2>&1 &
         ('{flagged}' from-child) &
         exec '{flagged}' from-parent"
    );
    let parent = agent_in(&cgroup, "/bin/sh", ["-c", &script]).spawn().expect("spawn");
    // By name: under emulation another hold (a program being judged) may come first.
    let hold_of = |word: &str| daemon.pending_matching(|h| h["argv"][1] == word);
    let (parent_hold, child_hold) = (hold_of("from-parent"), hold_of("from-child"));
    assert_eq!(pid_of(&parent_hold), parent.id());
    assert_ne!(pid_of(&child_hold), parent.id());
    assert!(held(pid_of(&parent_hold)) && held(pid_of(&child_hold)));
    let runs_on = || {
        let ticked = || fs::read_to_string(&ticks).expect("ticks").len();
        let (before, deadline) = (ticked(), Instant::now() + WAIT);
        while ticked() == before && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        ticked() > before
    };
    assert!(runs_on(), "the loop the parent started before its hold is not held");

    assert!(daemon.cli(&["approve", &id_of(&child_hold)]).status.success());
    sleep(QUIET);
    assert!(held(parent.id()), "approving the child released its parent");
    assert!(daemon.cli(&["deny", &id_of(&parent_hold)]).status.success());
    assert_eq!(finish(parent), (128 + libc::SIGKILL, "from-child\n".to_owned()));
    assert!(runs_on(), "denying the parent killed the loop too");
}

/// A second program, a copy of `actor` (unlike busybox or echo, content no program the
/// tests run shares), in the daemon's directory.
fn second_program(daemon: &Daemon) -> String {
    let path = daemon.dir.join("second");
    fs::copy(tests::actor_path(), &path).expect("copy actor");
    path.display().to_string()
}

/// A policy holding `second` and leaving the flagged program alone.
fn hold_second(second: &str) -> String {
    HOLD_FLAGGED.replace("FLAGGED", second)
}

/// Waits for the reload that `trigger` caused, from audit index `from` on; returns its
/// record.
fn wait_reload(daemon: &Daemon, from: usize, kind: &str, trigger: &str) -> Value {
    daemon.wait_record(from, |e| e["type"] == kind && e["trigger"] == trigger)
}

/// That the flagged program runs unheld and `second` is held (then denied: it never runs).
fn assert_second_held_and_flagged_runs(daemon: &Daemon, second: &str) {
    assert_eq!(finish(daemon.run_agent(&daemon.flagged(), &["runs"])), (0, "runs\n".to_owned()));
    let agent = daemon.run_agent(second, &["exec", "/bin/true"]);
    let hold = daemon.pending_one();
    assert_eq!(hold["path"], second);
    assert!(daemon.cli(&["deny", &id_of(&hold)]).status.success());
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
}

/// SIGHUP loads the policies again, including a file the watch on the policy directory
/// cannot see change (reached through a symlink); a bad one is refused with file, line and
/// reason in the log and the trail, and the last good policy stays in force.
#[test]
fn sighup_reloads_policies_and_a_bad_one_keeps_the_last_good_in_force() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let second = second_program(&daemon);
    let target = daemon.dir.join("test-policy.toml");
    fs::copy(daemon.policy_path("test"), &target).expect("copy policy");
    let from = daemon.audit().len();
    let link = daemon.dir.join("policies/test.link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    fs::rename(&link, daemon.policy_path("test")).expect("replace by the symlink");
    wait_reload(&daemon, from, "policy_reload", "file change");

    fs::write(&target, hold_second(&second)).expect("write policy");
    let from = daemon.audit().len();
    daemon.signal(libc::SIGHUP);
    wait_reload(&daemon, from, "policy_reload", "SIGHUP");
    assert_second_held_and_flagged_runs(&daemon, &second);

    fs::write(&target, "timeout = \"1m\"\n[[exec]]\npath = \"relative\"\naction = \"hold\"\n")
        .expect("write");
    let from = daemon.audit().len();
    daemon.signal(libc::SIGHUP);
    let failed = wait_reload(&daemon, from, "policy_load_failed", "SIGHUP");
    let reason = "test.toml:2: exec path \"relative\" must be absolute";
    assert!(failed["error"].as_str().expect("error").ends_with(reason), "{failed}");
    assert!(daemon.log().contains(reason), "{}", daemon.log());
    assert_second_held_and_flagged_runs(&daemon, &second);
}

/// A policy file written, with no signal, is loaded within a second, once for an editor's
/// writes and rename; a bad one written the same way is refused and the last good stays.
#[test]
fn a_changed_policy_file_is_loaded_without_a_signal() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    assert_eq!(
        serde_json::from_slice::<Value>(&daemon.cli(&["status"]).stdout).expect("status")["policies_watched"],
        true
    );
    let second = second_program(&daemon);
    let policy = hold_second(&second);
    let from = daemon.audit().len();
    // As an editor saves: the file written twice, then a temporary renamed over it.
    daemon.write_policy("test", &policy);
    daemon.write_policy("test", &policy);
    let temporary = daemon.dir.join("policies/.test.toml.swp");
    fs::write(&temporary, &policy).expect("write");
    fs::rename(&temporary, daemon.policy_path("test")).expect("rename");
    wait_reload(&daemon, from, "policy_reload", "file change");
    sleep(QUIET);
    let reloads = daemon.audit().iter().skip(from).filter(|e| e["type"] == "policy_reload").count();
    assert_eq!(reloads, 1, "one load for one save");
    assert_second_held_and_flagged_runs(&daemon, &second);

    let from = daemon.audit().len();
    daemon.write_policy("test", "[[exec]]\npath = \"relative\"\naction = \"hold\"\n");
    let failed = wait_reload(&daemon, from, "policy_load_failed", "file change");
    assert!(
        failed["error"]
            .as_str()
            .expect("error")
            .ends_with("test.toml:1: exec path \"relative\" must be absolute")
    );
    assert_second_held_and_flagged_runs(&daemon, &second);
}
