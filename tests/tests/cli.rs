//! The operator's commands of the real `keyturn` binary end to end: tagging the cgroups
//! agents run in, and installing the service.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use serde_json::Value;
use tests::{
    TestCgroup,
    daemon::{Daemon, HOLD_FLAGGED, agent_in, assert_refused, finish, keyturn_path, stderr},
};

fn tags(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.cli(&["tags", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("tags json")
}

/// Runs the flagged program in `cgroup` and expects it held for agent `name`, launched by
/// `requester`; denies it.
fn assert_held(daemon: &Daemon, cgroup: &TestCgroup, name: &str, requester: &str) {
    let agent = agent_in(cgroup, daemon.flagged(), ["held"]).spawn().expect("spawn");
    let hold = daemon.pending_one();
    assert_eq!((&hold["agent"], hold["pid"].as_u64()), (&Value::from(name), Some(u64::from(agent.id()))));
    assert_eq!(hold["requester"], requester);
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
}

/// `tag` makes a cgroup an agent's, launched by whom `--requester` names: `tags` lists it,
/// its flagged exec is held, and both survive the daemon's `kill -9` and restart; `untag`
/// ends it all.
#[test]
fn tag_holds_survives_a_restart_and_untag_releases() {
    let mut daemon = Daemon::start(HOLD_FLAGGED);
    let cgroup = TestCgroup::new();
    let path = cgroup.relative();
    let out = daemon.cli(&[
        "tag",
        &path,
        "--policy",
        "test",
        "--name",
        "build-agent",
        "--requester",
        "ci@example.com",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = [serde_json::json!({"path": path, "name": "build-agent", "policy": "test",
        "requester": "ci@example.com", "run": false})];
    assert_eq!(tags(&daemon), listed);
    let table = String::from_utf8(daemon.cli(&["tags"]).stdout).expect("UTF-8");
    assert_eq!(table, format!("{path}\tbuild-agent\tpolicy=test\trequester=ci@example.com\n"));
    assert_held(&daemon, &cgroup, "build-agent", "ci@example.com");

    daemon.kill9();
    daemon.launch();
    assert_eq!(tags(&daemon), listed);
    assert_held(&daemon, &cgroup, "build-agent", "ci@example.com");

    let out = daemon.cli(&["untag", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tags(&daemon).is_empty());
    let free = agent_in(&cgroup, daemon.flagged(), ["untagged"]).spawn().expect("spawn");
    assert_eq!(finish(free), (0, "untagged\n".to_owned()));
    let trail: Vec<String> = daemon
        .cli(&["audit", "--json"])
        .stdout
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter_map(|record| record["event"]["type"].as_str().map(str::to_owned))
        .filter(|kind| kind.contains("tag"))
        .collect();
    assert_eq!(trail, ["tag", "untag"], "tagged once, restored (not re-tagged) after the restart, untagged");
}

/// Each bad `tag` or `untag` is refused with one clear line and a non-zero exit, and
/// tags nothing.
#[test]
fn tag_and_untag_refuse_bad_input_with_one_clear_line() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let cgroup = TestCgroup::new();
    let path = cgroup.relative();
    let inside = format!("{path}/../{path}");
    let file = format!("{path}/cgroup.procs");
    for (args, reason) in [
        (&["tag", &path, "--policy", "no-such-policy"][..], "no policy named \"no-such-policy\""),
        (&["tag", "kt-no-such-cgroup"], "no cgroup at"),
        (&["tag", &file], "no cgroup at"),
        (&["tag", &inside], "must be relative to the cgroup v2 root and stay inside it"),
        (&["tag", "/"], "refused: the cgroup v2 root holds every process"),
        (&["tag", &path, "--name", "\x1b[2Jagent"], "has control or invisible characters"),
        (&["untag", &path], "is not tagged"),
        (&["untag", &inside], "must be relative to the cgroup v2 root"),
    ] {
        assert_refused(&daemon.cli(args), reason);
    }
    // A user in no approver group (`nogroup`, which user nobody has as its own): uid 1,
    // `daemon` on Debian, unknown in the VM guests.
    assert_refused(&daemon.cli_as(1, 1, &["tag", &path]), "permission denied: uid 1 ");
    assert_refused(&daemon.cli_as(1, 1, &["untag", &path]), "permission denied: uid 1 ");
    // A caller may not tag the cgroup it runs in, or one above it: it would become an
    // agent's, and could no longer decide.
    let caller = cgroup.child("caller");
    let mut command = daemon.command(&["tag", &path]);
    tests::enter_cgroup_on_exec(&mut command, &caller.dir).expect("open cgroup.procs");
    assert_refused(&command.output().expect("run keyturn"), &format!("refused: {path} holds the caller"));
    assert!(tags(&daemon).is_empty());
}

/// A request is judged by the process that connected: an agent that connects from a child
/// and writes once the child is gone is refused, never taken for a caller outside its
/// cgroup.
#[test]
fn a_request_whose_connecting_process_is_gone_is_refused() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
child = os.fork()
if child == 0:
    s.connect(sys.argv[1])
    os._exit(0)
os.waitpid(child, 0)
s.sendall(b'{"op":"untag","path":"kt-no-such-cgroup"}\n')
print(s.makefile().readline(), end="")
"#;
    let out = Command::new(tests::runtimes::PYTHON)
        .args(["-c", script])
        .arg(daemon.dir.join("keyturn.sock"))
        .output()
        .expect("run python3");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("refused: the process that connected (pid "), "{reply}{}", stderr(&out));
    assert!(reply.contains(") is gone"), "{reply}");
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o7777
}

fn install(root: &Path) -> String {
    let out = Command::new(keyturn_path()).args(["install", "--root"]).arg(root).output().expect("install");
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `install --root` stages the binary, a hardened `Type=notify` unit (enabled by its
/// symlink) and the default config, with sane modes. Running it again changes nothing and
/// keeps an operator's edited config, and a daemon runs on the installed config.
#[test]
fn install_stages_the_service_idempotently_and_keeps_an_edited_config() {
    let root = std::env::temp_dir().join(format!("kt-install-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    install(&root);

    let binary = root.join("usr/local/bin/keyturn");
    let unit = root.join("etc/systemd/system/keyturn.service");
    let config = root.join("etc/keyturn/keyturn.toml");
    let wants = root.join("etc/systemd/system/multi-user.target.wants/keyturn.service");
    assert_eq!(fs::read(&binary).expect("binary"), fs::read(keyturn_path()).expect("built binary"));
    let version = Command::new(&binary).arg("--version").output().expect("run the installed binary");
    assert_eq!(String::from_utf8_lossy(&version.stdout), format!("keyturn {}\n", env!("CARGO_PKG_VERSION")));
    let unit_text = fs::read_to_string(&unit).expect("unit");
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/keyturn daemon",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit_text.lines().any(|l| l == line), "the unit lacks {line}");
    }
    assert_eq!(fs::read_link(&wants).expect("enabled"), Path::new("/etc/systemd/system/keyturn.service"));
    let slice = root.join("etc/systemd/system/keyturn-agents.slice");
    assert!(fs::read_to_string(&slice).expect("the agents' slice").contains("WantedBy=slices.target"));
    let slice_wants = root.join("etc/systemd/system/slices.target.wants/keyturn-agents.slice");
    assert_eq!(
        fs::read_link(&slice_wants).expect("slice enabled"),
        Path::new("/etc/systemd/system/keyturn-agents.slice")
    );
    for (path, expected) in [
        (&binary, 0o755),
        (&unit, 0o644),
        (&config, 0o644),
        (&root.join("etc/keyturn/policies"), 0o755),
        (&root.join("usr/local/bin"), 0o755),
    ] {
        assert_eq!(mode(path), expected, "mode of {}", path.display());
    }
    let leftovers: Vec<_> =
        fs::read_dir(root.join("usr/local/bin")).expect("bin").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers, ["keyturn"], "no temporary files left behind");

    let edited = fs::read_to_string(&config).expect("config") + "max_pending = 8\n";
    fs::write(&config, &edited).expect("edit the config");
    let again = install(&root);
    assert!(again.contains("kept the existing"), "{again}");
    assert_eq!(fs::read_to_string(&config).expect("config"), edited);
    assert_eq!(fs::read_to_string(&unit).expect("unit"), unit_text);
    assert_eq!(fs::read(&binary).expect("binary"), fs::read(keyturn_path()).expect("built binary"));

    let daemon = Daemon::start_with_config(HOLD_FLAGGED, &edited);
    let status = daemon.cli(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    drop(daemon);
    fs::remove_dir_all(&root).expect("clean up");
}

/// A command whose reader leaves (`keyturn audit | head -1`) ends quietly, killed by
/// `SIGPIPE` as command-line tools are, without a panic's message.
#[test]
fn a_command_whose_reader_leaves_ends_quietly() {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = daemon
        .command(&["audit", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("keyturn audit");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGPIPE),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
