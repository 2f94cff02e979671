//! The real `keyturn` binary as tests drive it: a daemon with its own state dir, socket,
//! policies and bpffs pins, the commands operators and approvers run, and agents that run
//! as `nobody`. Everything is killed and removed on drop.

use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TestCgroup, WAIT, enter_cgroup_on_exec};

/// The user agents run as, and its group (the approver group of every test daemon).
pub const NOBODY: u32 = 65534;
pub const NOGROUP: u32 = 65534;

/// A policy holding the exec of the daemon's `flagged` program (a copy of /bin/echo).
pub const HOLD_FLAGGED: &str = "timeout = \"1m\"\n[[exec]]\npath = \"FLAGGED\"\naction = \"hold\"\n[egress_default]\naction = \"allow\"\n";

/// A daemon's `[console]` settings (an inline table: the fixture puts them at the head of
/// its config): the console at `endpoint`, trusted to sign with `key`, which knows the daemon
/// as `host`; with `extra` settings (`, name = value`…).
pub fn console_section(endpoint: &str, key: &ed25519_dalek::SigningKey, host: &str, extra: &str) -> String {
    let public = hex::encode(key.verifying_key().as_bytes());
    format!(
        "console = {{ endpoint = \"{endpoint}\", public_keys = [\"{public}\"], host = \"{host}\"{extra} }}"
    )
}

/// The `keyturn` binary: `KEYTURN_BIN`, else the one cargo built beside the test binary,
/// which must be newer than the sources it is built from (`cargo test -p tests` builds the
/// agent's library, not its binary: a stale one would test old code).
pub fn keyturn_path() -> PathBuf {
    std::env::var_os("KEYTURN_BIN").map_or_else(
        || {
            static FRESH: std::sync::Once = std::sync::Once::new();
            let exe = std::env::current_exe().expect("current exe");
            let keyturn = exe.parent().and_then(Path::parent).expect("target dir").join("keyturn");
            FRESH.call_once(|| assert_built_after_sources(&keyturn));
            keyturn
        },
        PathBuf::from,
    )
}

/// Panics when a file `keyturn` is built from changed after it was built, as cargo's own
/// list of them says (`keyturn.d` beside it). Without that list (a test run in a VM guest),
/// nothing is checked.
fn assert_built_after_sources(keyturn: &Path) {
    fn newest(path: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
        if !path.is_dir() {
            return Some((std::fs::metadata(path).ok()?.modified().ok()?, path.to_owned()));
        }
        std::fs::read_dir(path).ok()?.flatten().filter_map(|entry| newest(&entry.path())).max()
    }
    let Ok(built) = std::fs::metadata(keyturn).and_then(|m| m.modified()) else { return };
    let Ok(listed) = std::fs::read_to_string(keyturn.with_extension("d")) else { return };
    let Some((_, sources)) = listed.lines().next().and_then(|line| line.split_once(": ")) else { return };
    let sources = sources.replace("\\ ", "\0");
    let changed = sources.split(' ').filter_map(|source| newest(Path::new(&source.replace('\0', " ")))).max();
    if let Some((at, source)) = changed.filter(|(at, _)| *at > built) {
        panic!(
            "{} is older than {} ({:?} after it): run `cargo build -p agent` first",
            keyturn.display(),
            source.display(),
            at.duration_since(built).unwrap_or_default()
        );
    }
}

/// A daemon under test, killed (and its pins removed) on drop.
pub struct Daemon {
    pub dir: PathBuf,
    child: Option<Child>,
}

pub fn serial() -> u32 {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Daemon {
    /// A daemon whose approver group is `nogroup`, so that `nobody` can approve (to test
    /// the refusals), with `policy` installed as `test.toml` (`FLAGGED` in it names the
    /// daemon's `flagged` program).
    pub fn start(policy: &str) -> Self {
        Self::start_with_config(policy, "")
    }

    /// The same, with `config` (settings the test's own do not name) at the head of its
    /// `keyturn.toml`.
    pub fn start_with_config(policy: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kt-daemon-{}-{}", std::process::id(), serial()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("policies")).expect("dirs");
        fs::copy("/bin/echo", dir.join("flagged")).expect("copy echo");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut daemon = Self { dir, child: None };
        daemon.write_policy("test", policy);
        let mode = crate::test_mode().map(|m| format!("mode = \"{m}\"\n")).unwrap_or_default();
        // Daemons run side by side here: only a test that asks for it gets an embedded
        // console (on addresses of its own).
        let embedded = if config.contains("embedded_console") { "" } else { "embedded_console = false\n" };
        let approvers = if config.contains("approver_group") { "" } else { "approver_group = \"nogroup\"\n" };
        let metrics = if config.contains("metrics") { "" } else { "metrics = \"\"\n" };
        // Tables go last, where they cannot swallow the keys above; each daemon's resolver
        // on a port of its own.
        let (settings, tables) = config.find("\n[").map_or((config, ""), |at| config.split_at(at));
        let dns = if tables.contains("[dns]") { "" } else { "\n[dns]\nlisten = \"127.0.0.1:0\"\n" };
        fs::write(
            daemon.dir.join("keyturn.toml"),
            format!(
                "{settings}\nstate_dir = \"{0}/state\"\nsocket = \"{0}/keyturn.sock\"\npolicies_dir = \"{0}/policies\"\n\
                 pin_dir = \"/sys/fs/bpf/{1}\"\n{mode}{embedded}{approvers}{metrics}{tables}{dns}",
                daemon.dir.display(),
                daemon.dir.file_name().expect("name").to_string_lossy()
            ),
        )
        .expect("config");
        daemon.launch();
        daemon
    }

    /// The file of policy `name`.
    pub fn policy_path(&self, name: &str) -> PathBuf {
        self.dir.join("policies").join(format!("{name}.toml"))
    }

    /// Writes policy `name` in place, `FLAGGED` replaced by the daemon's flagged program.
    pub fn write_policy(&self, name: &str, policy: &str) {
        fs::write(self.policy_path(name), policy.replace("FLAGGED", &self.flagged())).expect("write policy");
    }

    pub fn launch(&mut self) {
        let log = fs::File::create(self.dir.join("daemon.log")).expect("log");
        let child = Command::new(keyturn_path())
            .args(["daemon", "--config"])
            .arg(self.dir.join("keyturn.toml"))
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while !self.dir.join("keyturn.sock").exists() {
            assert!(Instant::now() < deadline, "daemon did not start: {}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    /// [`finish`] of `child`, saying on timeout what the daemon holds and logged.
    pub fn finish(&self, child: Child) -> (i32, String) {
        let pid = child.id();
        let waiting = std::thread::spawn(move || finish(child));
        waiting.join().unwrap_or_else(|_| {
            panic!("process {pid} did not finish; pending: {:?}\n{}", self.pending(), self.log())
        })
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let _ = fs::remove_file(self.dir.join("keyturn.sock"));
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        crate::rogue_signal(self.child.as_ref().expect("running").id(), signal);
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(keyturn_path());
        command.arg("--config").arg(self.dir.join("keyturn.toml")).args(args);
        command
    }

    /// Runs `keyturn ARGS…` as root.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run keyturn")
    }

    /// Runs `keyturn ARGS…` as `uid`:`gid`, without supplementary groups.
    pub fn cli_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        let mut command = Command::new("setpriv");
        command
            .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
            .arg(keyturn_path())
            .args(args);
        command.arg("--config").arg(self.dir.join("keyturn.toml"));
        command.output().expect("run keyturn through setpriv")
    }

    /// Runs `keyturn ARGS…` as `nobody`.
    pub fn cli_as_nobody(&self, args: &[&str]) -> Output {
        self.cli_as(NOBODY, NOGROUP, args)
    }

    /// `keyturn run -- setpriv (as nobody) PROGRAM ARGS…`, stdout and stderr piped.
    pub fn agent_command<A: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = A>,
    ) -> Command {
        self.agent_command_with(&[], program, args)
    }

    /// [`Self::agent_command`] with `run_args` for `keyturn run` itself.
    fn agent_command_with<A: AsRef<OsStr>>(
        &self,
        run_args: &[&str],
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = A>,
    ) -> Command {
        let mut command = self.command(&["run", "--policy", "test", "--name", "test-agent"]);
        command.args(run_args).arg("--").args(as_nobody()).arg(program).args(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    /// [`Self::agent_command`], started.
    pub fn run_agent(&self, program: &str, args: &[&str]) -> Child {
        self.agent_command(program, args).spawn().expect("keyturn run")
    }

    /// [`Self::run_agent`] on behalf of `requester` (`keyturn run --requester`).
    pub fn run_agent_for(&self, requester: &str, program: &str, args: &[&str]) -> Child {
        self.agent_command_with(&["--requester", requester], program, args).spawn().expect("keyturn run")
    }

    /// `keyturn tag` of `cgroup` under the `test` policy, as agent `name`.
    pub fn tag(&self, cgroup: &TestCgroup, name: &str) {
        let out = self.cli(&["tag", &cgroup.relative(), "--policy", "test", "--name", name]);
        assert!(out.status.success(), "tag: {}", stderr(&out));
    }

    /// Where the daemon pins its programs and maps.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf").join(self.dir.file_name().expect("name"))
    }

    /// The daemon's pinned hash map `name`, to put the kernel in a state on purpose.
    pub fn pinned_map<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
    ) -> aya::maps::HashMap<aya::maps::MapData, K, V> {
        let data = aya::maps::MapData::from_pin(self.pin_dir().join(name)).expect("open pinned map");
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map")
    }

    /// `keyturn status` as JSON.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status"]);
        assert!(out.status.success(), "status: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn flagged(&self) -> String {
        self.dir.join("flagged").display().to_string()
    }

    /// The holds pending now.
    pub fn pending(&self) -> Vec<Value> {
        let out = self.cli(&["pending", "--json"]);
        assert!(out.status.success(), "pending: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("pending json")
    }

    /// Waits until the pending holds satisfy `ready`, and returns them (oldest first).
    fn wait_pending(&self, what: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let holds = self.pending();
            if ready(&holds) {
                return holds;
            }
            assert!(Instant::now() < deadline, "no {what} among {holds:?}; daemon log: {}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `count` pending holds and returns them (oldest first).
    pub fn pending_n(&self, count: usize) -> Vec<Value> {
        self.wait_pending(&format!("{count} holds"), |holds| holds.len() >= count)
    }

    /// Waits for one pending hold and returns it.
    pub fn pending_one(&self) -> Value {
        self.pending_n(1).swap_remove(0)
    }

    /// Waits for a pending hold that `matches` and returns it.
    pub fn pending_matching(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let holds = self.wait_pending("matching hold", |holds| holds.iter().any(&matches));
        holds.into_iter().find(matches).expect("matched")
    }

    /// The events of the audit trail, in order.
    pub fn audit(&self) -> Vec<Value> {
        let out = self.cli(&["audit", "--json"]);
        assert!(out.status.success(), "audit: {}", stderr(&out));
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice::<Value>(line).expect("audit record is JSON")["event"].take())
            .collect()
    }

    /// Waits for an audit event from index `from` on that `matches`, and returns it.
    pub fn wait_record(&self, from: usize, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(event) = self.audit().into_iter().skip(from).find(&matches) {
                return event;
            }
            assert!(Instant::now() < deadline, "no such audit record; daemon log: {}", self.log());
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(crate::pid(child.id()), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
        let name = self.dir.file_name().expect("name").to_string_lossy().into_owned();
        let _ = fs::remove_dir_all(format!("/sys/fs/bpf/{name}"));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `setpriv` arguments that run what follows as `nobody`.
pub fn as_nobody() -> [String; 4] {
    ["setpriv".into(), format!("--reuid={NOBODY}"), format!("--regid={NOGROUP}"), "--clear-groups".into()]
}

/// `PROGRAM ARGS…` as `nobody` inside `cgroup`, stdin and stdout piped.
pub fn agent_in<A: AsRef<OsStr>>(
    cgroup: &TestCgroup,
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = A>,
) -> Command {
    let [setpriv, setpriv_args @ ..] = as_nobody();
    let mut command = Command::new(setpriv);
    command.args(setpriv_args).arg(program).args(args);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    enter_cgroup_on_exec(&mut command, &cgroup.dir).expect("open cgroup.procs");
    command
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that a command was refused: a non-zero exit and one line on stderr, which says
/// `reason`.
pub fn assert_refused(out: &Output, reason: &str) {
    let message = stderr(out);
    assert!(!out.status.success(), "succeeded, stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(message.lines().count(), 1, "not one line: {message:?}");
    assert!(message.contains(reason), "{message:?} does not say {reason:?}");
}

/// Waits (at most `WAIT`) for `child` to exit: its exit code (128 + signal when killed)
/// and its stdout.
pub fn finish_bytes(child: Child) -> (i32, Vec<u8>) {
    let pid = child.id();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || send.send(child.wait_with_output()));
    let out =
        receive.recv_timeout(WAIT).unwrap_or_else(|_| panic!("process {pid} did not finish")).expect("wait");
    let code = out.status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&out.status).expect("exited or killed")
    });
    (code, out.stdout)
}

/// [`finish_bytes`], stdout as text.
pub fn finish(child: Child) -> (i32, String) {
    let (code, stdout) = finish_bytes(child);
    (code, String::from_utf8_lossy(&stdout).into_owned())
}
