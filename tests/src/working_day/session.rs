//! The day's scripts run as `nobody` in a scratch directory of their own (the same paths
//! in every run, so outputs compare), outside keyturn or inside `keyturn run`, and the
//! transcript a session leaves: each step's stdout, stderr and exit status.

use std::{
    fmt::Write as _,
    fs,
    os::unix::{fs::chown, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{AGENT, DENIED_STEPS, GIT_DATES, Hosts, PATH, TOOL_ENV, agent_cgroup, assets, scratch_dir};
use crate::daemon::{Daemon, NOBODY, NOGROUP, as_nobody};

/// The longest a script may take before the run is called stuck.
const LIMIT: Duration = Duration::from_mins(10);
/// How often the agent's cgroup is looked for while a script starts under keyturn.
const LOOK: Duration = Duration::from_millis(5);

/// The scripts a session runs.
#[derive(Clone, Copy, Debug)]
pub enum Script {
    /// The working day: 160 steps, each recorded in the transcript.
    Day,
    /// The configure-style loop of 40 fresh executables; prints a line per program.
    Configure,
}

impl Script {
    fn file(self) -> &'static str {
        match self {
            Self::Day => "session.sh",
            Self::Configure => "configure.sh",
        }
    }
}

/// A scratch directory for the day's scripts: `home` (the agent's), `work` (where the
/// scripts run), `out` (the transcript), and the scripts themselves.
pub struct Session {
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// The agent's npm configuration: the team's registry, a cache of the session's own,
    /// no update checks, audits or funding notices.
    npmrc: String,
}

/// How a script ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code, or 128 + the signal that killed it.
    pub status: i32,
    pub wall: Duration,
    pub stdout: String,
    pub stderr: String,
    /// Under keyturn: the agent's cgroup, as `keyturn tags` listed it.
    pub cgroup: Option<PathBuf>,
}

impl Session {
    pub fn new(hosts: &Hosts) -> Self {
        let dir = scratch_dir("kt-day-session");
        for script in [Script::Day, Script::Configure] {
            fs::copy(assets().join(script.file()), dir.join(script.file())).expect("copy script");
        }
        let home = dir.join("home");
        let mut env: Vec<(String, String)> =
            TOOL_ENV.iter().chain(&GIT_DATES).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        for (key, value) in [
            ("PATH", PATH.to_owned()),
            ("HOME", home.display().to_string()),
            ("USER", "nobody".to_owned()),
            ("LOGNAME", "nobody".to_owned()),
            ("WORK", dir.join("work").display().to_string()),
            ("OUT", dir.join("out").display().to_string()),
        ] {
            env.push((key.to_owned(), value));
        }
        env.extend(hosts.urls().into_iter().map(|(key, url)| (key.to_owned(), url)));
        // pip reaches the team's index (plain HTTP inside the team's network) and nothing
        // else; npm its registry, by the agent's npmrc (see `reset`).
        env.push(("PIP_INDEX_URL".to_owned(), format!("{}/simple/", hosts.index.url())));
        env.push(("PIP_TRUSTED_HOST".to_owned(), hosts.index.addr().to_string()));
        let npmrc = format!(
            "registry={}/\ncache={}\nupdate-notifier=false\naudit=false\nfund=false\n",
            hosts.registry.url(),
            home.join(".npm").display()
        );
        Self { dir, env, npmrc }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Empties `home` (but for the agent's npm configuration), `work` and `out`, all
    /// owned by `nobody`.
    pub fn reset(&self) {
        for name in ["home", "work", "out"] {
            let dir = self.path(name);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir).expect("session dir");
            chown(&dir, Some(NOBODY), Some(NOGROUP)).expect("chown");
        }
        let npmrc = self.path("home/.npmrc");
        fs::write(&npmrc, &self.npmrc).expect("npmrc");
        chown(&npmrc, Some(NOBODY), Some(NOGROUP)).expect("chown");
    }

    /// `bash SCRIPT` as `nobody` in the cgroup at `cgroup`, not under keyturn.
    pub fn run_outside(&self, script: Script, cgroup: &Path) -> Run {
        let [setpriv, args @ ..] = as_nobody();
        let mut command = Command::new(setpriv);
        command.args(args);
        crate::enter_cgroup_on_exec(&mut command, cgroup).expect("open cgroup.procs");
        self.run(script, command, None)
    }

    /// `keyturn run --policy test --name working-day -- bash SCRIPT` as `nobody`, under
    /// `daemon`.
    pub fn run_in_keyturn(&self, script: Script, daemon: &Daemon) -> Run {
        let mut command = daemon.command(&["run", "--policy", "test", "--name", AGENT, "--"]);
        command.args(as_nobody());
        self.run(script, command, Some(daemon))
    }

    /// Runs `launcher bash SCRIPT` in `work` and waits for it; under `daemon`, notes the
    /// agent's cgroup while it runs.
    fn run(&self, script: Script, mut launcher: Command, daemon: Option<&Daemon>) -> Run {
        let (stdout, stderr) = (self.path("stdout"), self.path("stderr"));
        launcher
            .arg("/bin/bash")
            .arg(self.path(script.file()))
            .current_dir(self.path("work"))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"));
        let started = Instant::now();
        let child = launcher.spawn().expect("start the session");
        let pid = child.id();
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            let status = wait(child);
            let _ = send.send((status, started.elapsed()));
        });
        let mut cgroup = None;
        let (status, wall) = loop {
            let looking = cgroup.is_none() && daemon.is_some();
            match receive.recv_timeout(if looking { LOOK } else { LIMIT.saturating_sub(started.elapsed()) }) {
                Ok(ended) => break ended,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    assert!(started.elapsed() < LIMIT, "session {pid} still running after {LIMIT:?}");
                    if looking {
                        cgroup = daemon.and_then(|daemon| agent_cgroup(daemon, AGENT));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the waiter of session {pid} ended"),
            }
        };
        let read = |path: &Path| fs::read_to_string(path).unwrap_or_default();
        Run { status, wall, stdout: read(&stdout), stderr: read(&stderr), cgroup }
    }

    /// The steps the day's script recorded in its last run.
    pub fn transcript(&self) -> Transcript {
        let out = self.path("out");
        let steps = fs::read_to_string(out.join("steps")).unwrap_or_default();
        let read = |id: &str, stream: &str| {
            fs::read_to_string(out.join(format!("{id}.{stream}"))).expect("step output")
        };
        Transcript {
            steps: steps
                .lines()
                .map(|line| {
                    let (id, status) = line.rsplit_once(' ').expect("`ID STATUS`");
                    Step {
                        id: id.to_owned(),
                        status: status.parse().expect("status"),
                        stdout: read(id, "out"),
                        stderr: read(id, "err"),
                    }
                })
                .collect(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `child`: its exit code, or 128 + the signal that killed it.
fn wait(mut child: Child) -> i32 {
    let status = child.wait().expect("wait for the session");
    status.code().unwrap_or_else(|| 128 + status.signal().expect("exited or killed"))
}

/// One step of the day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// `NNN-NAME`.
    pub id: String,
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Step {
    pub fn name(&self) -> &str {
        self.id.split_once('-').map_or(&self.id, |(_, name)| name)
    }
}

/// Every step of a session, in order.
#[derive(Clone, Debug)]
pub struct Transcript {
    pub steps: Vec<Step>,
}

/// At most this much of an output is quoted in a difference.
const QUOTE: usize = 1500;

impl Transcript {
    /// How this run differs from `reference`, one entry per step: every step must end as
    /// it did there, except, if they were `denied`, the [`DENIED_STEPS`]: they must end with
    /// that status and no output (nothing they meant to do ran).
    pub fn differences(&self, reference: &Self, denied: Option<i32>) -> Vec<String> {
        let mut differences = Vec::new();
        if self.steps.len() != reference.steps.len() {
            differences.push(format!(
                "{} steps, the reference has {}",
                self.steps.len(),
                reference.steps.len()
            ));
        }
        for (step, expected) in self.steps.iter().zip(&reference.steps) {
            let mut why = String::new();
            if step.id != expected.id {
                let _ = write!(why, "step {} where the reference has {}", step.id, expected.id);
            } else if let Some(denied_status) = denied.filter(|_| DENIED_STEPS.contains(&step.name())) {
                if (step.status, step.stdout.as_str()) != (denied_status, "") {
                    let _ = write!(
                        why,
                        "denied, so expected status {denied_status} and no output; got status {}, stdout {:?}",
                        step.status, step.stdout
                    );
                }
            } else {
                for (what, got, want) in [
                    ("status", &step.status.to_string(), &expected.status.to_string()),
                    ("stdout", &step.stdout, &expected.stdout),
                    ("stderr", &step.stderr, &expected.stderr),
                ] {
                    if got != want {
                        let quote = |text: &str| text.chars().take(QUOTE).collect::<String>();
                        let _ = write!(why, "\n  {what}: {:?}\n  reference: {:?}", quote(got), quote(want));
                    }
                }
            }
            if !why.is_empty() {
                differences.push(format!("{}: {why}", step.id));
            }
        }
        differences
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> &Step {
        self.steps.iter().find(|step| step.name() == name).unwrap_or_else(|| panic!("no step {name}"))
    }
}
