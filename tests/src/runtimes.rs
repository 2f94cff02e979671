//! Real agent runtimes under the real daemon: the programs of `tests/runtimes` (Python, Go,
//! Java, Node, C) run as agents of a daemon whose policy holds egress to a peer host (by
//! address, or by a name a nameserver on the peer answers) and the exec of its `flagged`
//! program, their output read line by line while they run.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::Child,
    sync::{
        OnceLock,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use keyturn::cgroup::Hierarchy;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{Peer, WAIT, daemon::Daemon, nameserver::Nameserver};

/// Debian's Python (a pyenv shim on a developer's `PATH` would be four execs).
pub const PYTHON: &str = "/usr/bin/python3";
pub const JAVA: &str = "/usr/bin/java";
pub const NODE: &str = "/usr/bin/node";
/// JVM flags for a fast start, which counts under emulation: the C1 compiler only, the
/// serial collector, a small heap, no perf data file in /tmp.
pub const JVM_FLAGS: [&str; 4] =
    ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx64m", "-XX:-UsePerfData"];

/// The directory the runtimes' programs are in: `KEYTURN_RUNTIMES` (the VM guests' copy),
/// else a copy of what `tests/build.rs` built that the agents' user can read, whatever the
/// checkout's permissions (a clone in a `mktemp -d` directory is root's alone).
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os("KEYTURN_RUNTIMES")
            .map_or_else(|| readable_copy(&Path::new(env!("OUT_DIR")).join("runtimes")), PathBuf::from)
    })
}

/// Copies `built` to `/tmp/keyturn-test-runtimes`, one copy per build directory, made
/// anew by each test process: staged beside it, then renamed into place.
fn readable_copy(built: &Path) -> PathBuf {
    let root = Path::new("/tmp/keyturn-test-runtimes");
    let name = hex::encode(&Sha256::digest(built.as_os_str().as_bytes())[..8]);
    let (copy, staging) = (root.join(&name), root.join(format!(".{name}-{}", std::process::id())));
    let _ = fs::remove_dir_all(&staging);
    copy_tree(built, &staging);
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod the runtimes' root");
    let _ = fs::remove_dir_all(&copy);
    fs::rename(&staging, &copy).expect("put the runtimes' copy in place");
    copy
}

/// Copies the tree at `from` to `to`, each directory readable and searchable by all.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create a directory of the runtimes' copy");
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).expect("chmod the runtimes' copy");
    for entry in fs::read_dir(from).expect("list the runtimes' programs").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy a runtime's program");
        }
    }
}

/// `name` in [`dir`], as text for an argv; it must be there.
pub fn program(name: &str) -> String {
    let path = dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: tests/build.rs builds it (KEYTURN_RUNTIMES: {:?})",
        path.display(),
        std::env::var_os("KEYTURN_RUNTIMES")
    );
    path.to_str().expect("UTF-8 path").to_owned()
}

/// An interpreter the suite runs; it must be installed (`cargo xtask setup` on a host, the
/// VM runner in a guest).
pub fn interpreter(path: &'static str) -> &'static str {
    assert!(Path::new(path).exists(), "{path} is missing: `cargo xtask setup` installs it");
    path
}

/// The zone the peer's nameserver answers: every name in it is the peer's IPv4 address.
pub const PEER_ZONE: &str = "peer.test";

/// A policy holding egress to `peer`'s IPv4 address (any port, any protocol) and to every
/// name of [`PEER_ZONE`], and the exec of the daemon's `flagged` program, and allowing
/// everything else. DNS servers are allowed by a rule of their own: keyturn's resolver
/// judges the names.
fn hold_peer_and_flagged(peer: &Peer) -> String {
    format!(
        "timeout = \"10m\"\n[[exec]]\npath = \"FLAGGED\"\naction = \"hold\"\n\
         [[egress]]\ncidr = \"0.0.0.0/0\"\nports = [53]\naction = \"allow\"\n\
         [[egress]]\ndomain = \"*.{PEER_ZONE}\"\naction = \"hold\"\n\
         [[egress]]\ncidr = \"{}/32\"\naction = \"hold\"\n[egress_default]\naction = \"allow\"\n",
        peer.v4
    )
}

/// A peer host and a daemon whose `test` policy holds egress to it and the exec of the
/// daemon's `flagged` program; in a lab with names, a nameserver on the peer and the
/// daemon's resolver asking it. Every agent it ran is killed on drop, held or not.
pub struct Lab {
    pub peer: Peer,
    pub daemon: Daemon,
    /// The peer's nameserver, in a lab whose agents reach the peer by name.
    pub nameserver: Option<Nameserver>,
}

impl Lab {
    /// A lab whose agents reach the peer by its address.
    pub fn start() -> Self {
        let peer = Peer::new();
        let daemon = Daemon::start(&hold_peer_and_flagged(&peer));
        Self { peer, daemon, nameserver: None }
    }

    /// A lab whose agents reach the peer by name: a nameserver on the peer answers every
    /// name of [`PEER_ZONE`] with its IPv4 address, and the daemon's resolver asks it.
    pub fn start_with_names() -> Self {
        let peer = Peer::new();
        let nameserver = Nameserver::start(&peer, &[PEER_ZONE], &[]);
        let config = format!("\n[dns]\nlisten = \"127.0.0.1:0\"\nupstream = [\"{}:53\"]\n", peer.v4);
        let daemon = Daemon::start_with_config(&hold_peer_and_flagged(&peer), &config);
        Self { peer, daemon, nameserver: Some(nameserver) }
    }

    /// What an agent is given to reach the peer: its IPv4 address, or in a lab with names,
    /// `LABEL.peer.test`, a name of the agent's own, so that its lookup shows in the
    /// nameserver's log and its hold shows the name.
    pub fn peer_host(&self, label: &str) -> String {
        match self.nameserver {
            Some(_) => format!("{label}.{PEER_ZONE}"),
            None => self.peer.v4.to_string(),
        }
    }

    /// `keyturn run` of `argv` as `nobody`.
    pub fn run(&self, argv: &[String]) -> Agent {
        let (program, args) = argv.split_first().expect("a program");
        Agent::spawn(self.daemon.agent_command(program, args).spawn().expect("keyturn run"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A test that failed may leave agents held for ever: kill every cgroup the daemon
        // tagged for them.
        let out = self.daemon.cli(&["tags", "--json"]);
        let (Ok(tags), Ok(hierarchy)) = (serde_json::from_slice::<Value>(&out.stdout), Hierarchy::find())
        else {
            return;
        };
        for tag in tags.as_array().into_iter().flatten() {
            if let Some(path) = tag["path"].as_str() {
                let _ = fs::write(hierarchy.root().join(path).join("cgroup.kill"), "1");
            }
        }
    }
}

/// An agent started by `keyturn run`, its stdout read line by line as it comes.
pub struct Agent {
    child: Child,
    lines: Receiver<String>,
    printed: Vec<String>,
    stderr: JoinHandle<String>,
}

/// How an agent ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code, or 128 + the signal that killed it (as `keyturn run` reports it).
    pub code: i32,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Agent {
    fn spawn(mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("stdout piped");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self { child, lines, printed: Vec::new(), stderr }
    }

    /// Waits for a line `WORD REST` and returns `REST`.
    pub fn line(&mut self, word: &str) -> String {
        let prefix = format!("{word} ");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.printed.iter().find(|l| l.starts_with(&prefix)) {
                return line[prefix.len()..].to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.printed.push(line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "agent {} printed no line {prefix:?} within {WAIT:?}: {:?}",
                    self.child.id(),
                    self.printed
                ),
            }
        }
    }

    /// A number the agent printed as `WORD N`.
    pub fn number(&mut self, word: &str) -> u32 {
        let text = self.line(word);
        text.parse().unwrap_or_else(|_| panic!("{word} {text:?} is not a number"))
    }

    /// `acting PID TID`: the process, and the thread in it that is about to act.
    pub fn acting(&mut self) -> (u32, u32) {
        let text = self.line("acting");
        let ids: Vec<u32> = text.split(' ').map(|id| id.parse().expect("acting PID TID")).collect();
        let [pid, tid] = ids[..] else { panic!("acting {text:?}") };
        (pid, tid)
    }

    /// Every line printed so far.
    pub fn printed(&mut self) -> &[String] {
        self.printed.extend(self.lines.try_iter());
        &self.printed
    }

    /// Waits (at most `WAIT`) for the agent to exit and its output to end.
    pub fn finish(mut self) -> Finished {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not finish: {:?}",
                self.child.id(),
                self.printed
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let code = status.code().expect("keyturn run exits with a code");
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.printed.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the agent's stdout stayed open: {:?}", self.printed)
                }
            }
        }
        let stderr = self.stderr.join().expect("stderr reader");
        Finished { code, stdout: self.printed, stderr }
    }
}

/// A number field of a hold as `keyturn pending --json` lists it.
pub fn field(hold: &Value, name: &str) -> u32 {
    hold[name].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or_else(|| panic!("{name} in {hold}"))
}

/// The thread ids of process `pid`.
pub fn threads(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.flatten().filter_map(|task| task.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The name of thread `tid` of process `pid`, as the kernel keeps it (at most 15 bytes).
pub fn thread_name(pid: u32, tid: u32) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"));
    comm.unwrap_or_else(|e| panic!("comm of thread {tid} of {pid}: {e}")).trim_end().to_owned()
}

/// Waits (at most `WAIT`) until `ready`, else fails saying what it waited for and what
/// it saw.
pub fn wait_until(what: impl Fn() -> String, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {}", what());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until every thread of `pid` is stopped (a group stop reaches each thread on its
/// way back to user space).
pub fn wait_all_stopped(pid: u32) {
    let stopped = || {
        let states = crate::thread_states(pid);
        !states.is_empty() && states.iter().all(|&s| s == 'T' || s == 't')
    };
    wait_until(|| format!("every thread of {pid} stopped: {:?}", crate::thread_states(pid)), stopped);
}

/// `keyturn approve ID` or `keyturn deny ID`, which must succeed.
pub fn decide(daemon: &Daemon, hold: &Value, verb: &str) {
    let id = hold["id"].as_str().expect("hold id");
    let out = daemon.cli(&[verb, id]);
    assert!(out.status.success(), "{verb} {id}: {}", crate::daemon::stderr(&out));
}
