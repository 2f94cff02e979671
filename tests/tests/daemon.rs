//! The real `keyturn` binary end to end: a daemon with its own state, socket and pins, and
//! the commands operators and approvers run, on the real kernel with real processes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use tests::{WAIT, held};

/// A daemon under test, killed (and its pins removed) on drop.
struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
}

fn keyturn_path() -> PathBuf {
    std::env::var_os("KEYTURN_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent().and_then(Path::parent).expect("target dir").join("keyturn")
        },
        PathBuf::from,
    )
}

impl Daemon {
    /// A daemon whose approver group is `nogroup`, so that `nobody` can approve (to test
    /// the refusals), with `policy` installed as `test.toml`.
    fn start(policy: &str) -> Self {
        Self::start_with(policy, "")
    }

    /// Like [`Daemon::start`], with `extra` lines appended to the daemon's config.
    fn start_with(policy: &str, extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kt-daemon-{}-{}", std::process::id(), serial()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("policies")).expect("dirs");
        fs::copy("/bin/echo", dir.join("flagged")).expect("copy echo");
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        fs::write(
            dir.join("policies/test.toml"),
            policy.replace("FLAGGED", &dir.join("flagged").display().to_string()),
        )
        .expect("policy");
        let mode = tests::test_mode().map(|m| format!("mode = \"{m}\"\n")).unwrap_or_default();
        fs::write(
            dir.join("keyturn.toml"),
            format!(
                "state_dir = \"{0}/state\"\nsocket = \"{0}/keyturn.sock\"\npolicies_dir = \"{0}/policies\"\n\
                 pin_dir = \"/sys/fs/bpf/{1}\"\napprover_group = \"nogroup\"\nmetrics = \"\"\n{mode}{extra}",
                dir.display(),
                dir.file_name().expect("name").to_string_lossy()
            ),
        )
        .expect("config");
        let mut daemon = Self { dir, child: None };
        daemon.launch();
        daemon
    }

    fn launch(&mut self) {
        let log = fs::File::create(self.dir.join("daemon.log")).expect("log");
        let child = Command::new(keyturn_path())
            .args(["daemon", "--config"])
            .arg(self.dir.join("keyturn.toml"))
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.child = Some(child);
        // Loading and verifying the programs takes seconds under emulation on a busy host.
        let deadline = Instant::now() + WAIT * 2;
        while !self.dir.join("keyturn.sock").exists() {
            assert!(Instant::now() < deadline, "daemon did not start: {}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let _ = fs::remove_file(self.dir.join("keyturn.sock"));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(keyturn_path());
        command.arg("--config").arg(self.dir.join("keyturn.toml")).args(args);
        command
    }

    /// Runs `keyturn ARGS…` as root.
    fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run keyturn")
    }

    /// Runs `keyturn ARGS…` as `nobody`.
    fn cli_as_nobody(&self, args: &[&str]) -> Output {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(keyturn_path()).args(args);
        command.arg("--config").arg(self.dir.join("keyturn.toml"));
        command.output().expect("run keyturn as nobody")
    }

    /// `keyturn run -- setpriv (as nobody) PROGRAM ARGS…`, in the background.
    fn run_agent(&self, program: &str, args: &[&str]) -> Child {
        let mut command = self.command(&["run", "--policy", "test", "--name", "test-agent"]);
        command
            .args(["--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", program])
            .args(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("keyturn run")
    }

    fn flagged(&self) -> String {
        self.dir.join("flagged").display().to_string()
    }

    /// Waits for one pending hold and returns it.
    fn pending_one(&self) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.cli(&["pending", "--json"]);
            assert!(out.status.success(), "pending: {}", String::from_utf8_lossy(&out.stderr));
            let holds: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("pending json");
            if let Some(hold) = holds.into_iter().next() {
                return hold;
            }
            assert!(Instant::now() < deadline, "nothing held; daemon log: {}", self.log());
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill of our own child.
            unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM) };
            let _ = child.wait();
        }
        let name = self.dir.file_name().expect("name").to_string_lossy().into_owned();
        let _ = fs::remove_dir_all(format!("/sys/fs/bpf/{name}"));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn serial() -> u32 {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

const HOLD_FLAGGED: &str = "timeout = \"1m\"\n[[exec]]\npath = \"FLAGGED\"\naction = \"hold\"\n[egress_default]\naction = \"allow\"\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("wait");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

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
fn audit_events(daemon: &Daemon, kind: &str) -> Vec<serde_json::Value> {
    let out = daemon.cli(&["audit", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("audit json")["event"].take())
        .filter(|event| event["type"] == kind)
        .collect()
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
    // A program of its own (in the VMs, /bin/true is busybox, which wants its own name).
    let program = daemon.dir.join("plain-program");
    fs::copy(keyturn_path(), &program).expect("copy");
    for _ in 0..3 {
        let agent = daemon.run_agent(program.to_str().expect("utf-8"), &["--help"]);
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
    assert_eq!(finish(daemon.run_agent(program.to_str().expect("utf-8"), &["--help"])).0, 0);
    let judged = audit_events(&daemon, "exec_judged")
        .into_iter()
        .filter(|r| r["path"] == program.to_str().expect("utf-8"))
        .count();
    assert_eq!(judged, 2);
}

#[test]
fn kernel_refusals_are_audited_by_reason() {
    let daemon = Daemon::start_with(HOLD_FLAGGED, "max_pending = 1\n");
    let flagged = daemon.flagged();
    // Whichever comes first is held; with it pending, the other two are over the limit.
    let script = format!("{flagged} first & {flagged} second & {flagged} third & wait");
    let agent = daemon.run_agent("/bin/sh", &["-c", &script]);
    let hold = daemon.pending_one();
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let refused: u64 = audit_events(&daemon, "refused")
            .iter()
            .filter(|e| e["reason"] == "flood")
            .map(|e| e["count"].as_u64().expect("count"))
            .sum();
        if refused >= 2 || Instant::now() > deadline {
            break refused;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(refused, 2, "both execs beyond max_pending are refused and audited");
    let status: serde_json::Value = serde_json::from_slice(&daemon.cli(&["status"]).stdout).expect("status");
    assert_eq!(status["refused"]["flood"], 2);
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let (_, stdout) = finish(agent);
    assert!(stdout.trim().is_empty(), "neither the refused execs nor the denied one ran: {stdout}");
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
