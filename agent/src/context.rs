//! Everything an approver needs to know about a held action, gathered from /proc while the
//! process is stopped: command line, working directory, user, parents, executable digest.

use std::{
    fs,
    net::Ipv6Addr,
    os::unix::fs::FileExt as _,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use agent_common::{HoldEvent, event_type, kind, protocol};
use serde::Serialize;

use crate::{enforcer::monotonic_ns, identify::Executable};

/// One ancestor of the held process.
#[derive(Clone, Debug, Serialize)]
pub struct Parent {
    pub pid: u32,
    pub comm: String,
    pub argv: Vec<String>,
}

/// What an approver sees of a held action (and what `keyturn pending --json` prints).
#[derive(Clone, Debug, Serialize)]
pub struct HoldView {
    pub id: String,
    pub kind: &'static str,
    pub agent: String,
    pub cgroup: String,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub user: String,
    pub comm: String,
    pub requested_at: String,
    pub policy: String,
    pub policy_rule: String,
    /// `held`: stopped in the syscall; `stopped`: exec happened, stopped before its
    /// first instruction; `deferred`: failed with EPERM, approval lets a retry through.
    pub hold: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parents: Option<Vec<Parent>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn nul_terminated(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
}

/// The user name of `uid` from /etc/passwd, else the number.
pub fn user_name(uid: u32) -> String {
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

fn proc_argv(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).filter(|a| !a.is_empty()).map(lossy).collect())
        .unwrap_or_default()
}

fn parent_of(pid: u32) -> Option<(u32, String)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
    let parent = stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((parent, comm))
}

fn parents(pid: u32) -> Vec<Parent> {
    let mut chain = Vec::new();
    let mut current = parent_of(pid).map(|(ppid, _)| ppid);
    while let Some(pid) = current.filter(|&p| p > 0 && chain.len() < 32) {
        let Some((grandparent, comm)) = parent_of(pid) else { break };
        chain.push(Parent { pid, comm, argv: proc_argv(pid) });
        current = Some(grandparent);
    }
    chain
}

/// Reads a NUL-terminated string of at most `max` bytes at `addr` in `pid`'s memory.
fn read_c_string(mem: &fs::File, addr: u64, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    while out.len() < max {
        let n = mem.read_at(&mut chunk, addr + out.len() as u64).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some(out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Some(out)
}

/// `/proc/PID/task/TID/syscall` once the thread has reached its stop: the hold event can
/// arrive while the thread is still on its way there, when the file only says `running`.
fn stopped_syscall(pid: u32, tid: u32) -> Option<String> {
    for _ in 0..500 {
        let syscall = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
        if !syscall.starts_with("running") {
            return Some(syscall);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// The argv a process stopped inside execve/execveat passed: read from its registers
/// (`/proc/PID/syscall`) and memory, since the exec has not happened yet.
fn pending_exec_argv(pid: u32, tid: u32) -> Option<Vec<String>> {
    const EXECVE: u64 = 59;
    const EXECVEAT: u64 = 322;
    const MAX_ARGS: usize = 4096;
    const MAX_BYTES: usize = 1 << 20;
    let syscall = stopped_syscall(pid, tid)?;
    let fields: Vec<u64> = syscall
        .split_whitespace()
        .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), if f.starts_with("0x") { 16 } else { 10 }))
        .collect::<Result<_, _>>()
        .ok()?;
    let argv_addr = match *fields.first()? {
        EXECVE => *fields.get(2)?,
        EXECVEAT => *fields.get(3)?,
        _ => return None,
    };
    let mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut argv = Vec::new();
    let mut total = 0;
    for index in 0..MAX_ARGS as u64 {
        let mut pointer = [0u8; 8];
        mem.read_exact_at(&mut pointer, argv_addr + index * 8).ok()?;
        let pointer = u64::from_ne_bytes(pointer);
        if pointer == 0 {
            break;
        }
        let arg = read_c_string(&mem, pointer, MAX_BYTES - total)?;
        total += arg.len() + 1;
        argv.push(lossy(&arg));
        if total >= MAX_BYTES {
            argv.push("…(truncated at 1 MiB)".into());
            break;
        }
    }
    Some(argv)
}

/// The argv of a held exec: the new program's after an exec that happened, else the
/// one passed to execve, read from the stopped thread.
pub fn exec_argv(event: &HoldEvent) -> Option<Vec<String>> {
    if event.event_type == event_type::STOPPED {
        Some(proc_argv(event.tgid))
    } else {
        pending_exec_argv(event.tgid, event.tid)
    }
}

/// The wall-clock time of a `CLOCK_MONOTONIC` instant.
pub fn wall_time(monotonic: u64) -> SystemTime {
    SystemTime::now() - Duration::from_nanos(monotonic_ns().saturating_sub(monotonic))
}

/// A short, stable id for a hold, from its nonce.
pub fn hold_id(event: &HoldEvent) -> String {
    format!("{:012x}", event.hold.nonce >> 16)
}

/// Gathers the view of `event`; `agent`, `cgroup` and `policy` come from the daemon, as do
/// the verified executable and the argv if it was read already.
pub fn describe(
    event: &HoldEvent,
    agent: &str,
    cgroup: &str,
    policy: &str,
    executable: Option<&Executable>,
    argv: Option<Vec<String>>,
) -> HoldView {
    let action = &event.hold.action;
    let pid = event.tgid;
    let mut view = HoldView {
        id: hold_id(event),
        kind: if action.kind == kind::EXEC { "exec" } else { "egress" },
        agent: agent.into(),
        cgroup: cgroup.into(),
        pid,
        tid: event.tid,
        uid: event.uid,
        user: user_name(event.uid),
        comm: lossy(nul_terminated(&event.comm)),
        requested_at: humantime::format_rfc3339_millis(wall_time(event.hold.held_at_ns)).to_string(),
        policy: policy.into(),
        policy_rule: String::new(),
        hold: match event.event_type {
            event_type::STOPPED => "stopped",
            event_type::DEFERRED => "deferred",
            _ => "held",
        },
        path: None,
        argv: None,
        cwd: None,
        sha256: None,
        parents: None,
        protocol: None,
        address: None,
        port: None,
    };
    if action.kind == kind::EXEC {
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
        // Unverified, the path is only the name the process passed.
        let path = executable.map_or_else(
            || {
                let named = PathBuf::from(lossy(nul_terminated(&event.path)));
                match &cwd {
                    Some(cwd) if named.is_relative() => cwd.join(&named),
                    _ => named,
                }
            },
            |exe| exe.path.clone(),
        );
        view.path = Some(path.display().to_string());
        view.argv = argv.or_else(|| exec_argv(event));
        view.cwd = cwd.map(|c| c.display().to_string());
        view.sha256 = executable.map(|exe| exe.sha256.clone());
        view.parents = Some(parents(pid));
    } else {
        let v6 = Ipv6Addr::from(action.addr);
        view.address = Some(v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()));
        view.port = u16::try_from(action.port).ok();
        view.protocol = Some(match action.protocol {
            protocol::TCP => "tcp",
            protocol::UDP => "udp",
            _ => "any",
        });
        view.parents = Some(parents(pid));
        view.argv = Some(proc_argv(pid));
    }
    view
}
