//! An AI coding agent's working day, scripted: 160 shell steps of git over HTTP, a venv
//! with packages from a package index, npm installs from a registry, `curl`/`wget` calls
//! to a tracker's API, C builds and fresh binaries, tests, pipelines, background jobs and
//! threads, against test hosts in network namespaces. Used by the `working_day` test and
//! by `cargo xtask bench`.
//!
//! Layout:
//! - `hosts`: the servers (git, package index, npm registry, API, paste) and their content;
//! - `session`: the session script run as `nobody`, outside keyturn or inside
//!   `keyturn run`, and its transcript (each step's output and exit status);
//! - `approver`: a person at the embedded console's API, approving or denying each hold by
//!   what it shows, timing how long each hold waited for them;
//! - `processes`: the agent's cgroup tree, checked for processes left stopped or frozen.
//!
//! The assets (server, session script, policy rules, the project and its packages) live
//! in `tests/working-day/`.

mod approver;
mod hosts;
mod processes;
mod session;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

pub use approver::{Approver, Decision, POLL, Seen, approver_wait};
pub use hosts::{Host, Hosts};
pub use processes::{agent_cgroup, stuck_processes};
pub use session::{Run, Script, Session, Step, Transcript};

/// The agent's name under `keyturn run`.
pub const AGENT: &str = "working-day";

/// The steps an approver denies on purpose (their names in the session script): an upload
/// of secrets with curl, and a script posting them to a collector.
pub const DENIED_STEPS: [&str; 2] = ["paste-secrets", "usage-stats"];

/// Every tool of the day is Debian's: no pyenv shim, no /usr/local builds.
const PATH: &str = "/usr/bin:/bin";

/// The environment of every tool run: no prompts, no progress bars, no version checks, one
/// locale and time zone, reproducible builds.
const TOOL_ENV: [(&str, &str); 8] = [
    ("LANG", "C.UTF-8"),
    ("TZ", "UTC"),
    ("SOURCE_DATE_EPOCH", "1767603600"),
    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    ("PIP_NO_INPUT", "1"),
    ("PIP_PROGRESS_BAR", "off"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_TERMINAL_PROMPT", "0"),
];

/// Fixed commit dates: the same commits get the same hashes in every run.
const GIT_DATES: [(&str, &str); 2] =
    [("GIT_AUTHOR_DATE", "2026-01-05T09:00:00Z"), ("GIT_COMMITTER_DATE", "2026-01-05T09:00:00Z")];

/// Who made the repository's first commit.
const GIT_IDENTITY: [(&str, &str); 6] = [
    ("GIT_AUTHOR_DATE", GIT_DATES[0].1),
    ("GIT_COMMITTER_DATE", GIT_DATES[1].1),
    ("GIT_AUTHOR_NAME", "Tally Maintainer"),
    ("GIT_AUTHOR_EMAIL", "maintainer@example.com"),
    ("GIT_COMMITTER_NAME", "Tally Maintainer"),
    ("GIT_COMMITTER_EMAIL", "maintainer@example.com"),
];

/// `tests/working-day`: the server, the scripts, the policy rules, the project, the packages.
fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("working-day")
}

/// A new directory `PREFIX-PID-N` under the temporary directory, readable by everyone.
fn scratch_dir(prefix: &str) -> PathBuf {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{serial}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
