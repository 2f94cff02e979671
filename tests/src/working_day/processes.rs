//! The agent's cgroup tree (with the frozen cells keyturn makes under it), looked at for
//! processes left stopped or frozen.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::daemon::Daemon;

/// The cgroup `keyturn run` made for agent `name`, as `keyturn tags` lists it (absolute),
/// if it is tagged now.
pub fn agent_cgroup(daemon: &Daemon, name: &str) -> Option<PathBuf> {
    let out = daemon.cli(&["tags", "--json"]);
    assert!(out.status.success(), "tags: {}", crate::daemon::stderr(&out));
    let tags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tags json");
    let path = tags.as_array()?.iter().find(|tag| tag["name"] == name)?["path"].as_str()?.to_owned();
    Some(keyturn::cgroup::Hierarchy::find().expect("cgroup v2").root().join(path))
}

/// Every process in the tree at `dir` that is stopped (`T`, `t`) or sits in a frozen
/// cgroup, and every frozen cgroup of the tree, one line each.
pub fn stuck_processes(dir: &Path) -> Vec<String> {
    let mut stuck = Vec::new();
    let Ok(events) = fs::read_to_string(dir.join("cgroup.events")) else { return stuck };
    let frozen = events.lines().any(|line| line == "frozen 1");
    if frozen {
        stuck.push(format!("cgroup {} is frozen", dir.display()));
    }
    for pid in fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let states = crate::thread_states(pid);
        if frozen || states.iter().any(|state| matches!(state, 'T' | 't')) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            stuck.push(format!("process {pid} ({}) in {}: threads {states:?}", comm.trim(), dir.display()));
        }
    }
    for child in fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            stuck.extend(stuck_processes(&child.path()));
        }
    }
    stuck
}
