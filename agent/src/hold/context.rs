//! Everything an approver needs to know about a held action, gathered from /proc while the
//! process is stopped: command line, working directory, user, parents, executable digest.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs,
    net::Ipv6Addr,
    os::unix::{ffi::OsStrExt as _, fs::FileExt as _},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use agent_common::{HoldEvent, event_type, kind, protocol};
use serde::{Deserialize, Serialize};

use crate::{cgroup::Hierarchy, hold::identity::Executable, hold::procfs, kernel::monotonic_ns};

/// One ancestor of the held process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Parent {
    pub pid: u32,
    pub comm: String,
    pub argv: Vec<String>,
}

/// Which family of action is held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    #[default]
    Exec,
    Egress,
}

/// How a held action waits for its decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Waiting {
    /// Stopped in the syscall, which restarts when released.
    #[default]
    Held,
    /// The exec happened; stopped before the new program's first instruction.
    Stopped,
    /// Failed with EPERM; an approval lets a retry through.
    Deferred,
}

/// What an approver sees of a held action (and what `keyturn pending --json` prints).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldView {
    pub id: String,
    pub kind: ActionKind,
    pub agent: String,
    /// Who launched the agent (`keyturn run`/`tag --requester`, else `unix:NAME` of the
    /// user who ran it).
    pub requester: String,
    pub cgroup: String,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub user: String,
    pub comm: String,
    pub requested_at: String,
    pub policy: String,
    pub policy_rule: String,
    /// How many distinct people must approve: the flagging rule's `quorum`.
    pub quorum: u32,
    /// Decided in the console only, never with a chat account: the flagging rule's
    /// `approve_in = "console"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_console: bool,
    /// The people told directly of it: the flagging rule's `notify`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    pub hold: Waiting,
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
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The name the agent resolved the address from, through keyturn's resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl HoldView {
    /// What approving it asks: the flagging rule's `quorum` and `approve_in`.
    pub fn asks(&self) -> crate::policy::Asks {
        crate::policy::Asks { quorum: self.quorum, in_console: self.in_console }
    }
}

/// Text for an approver's eyes from bytes an agent chose (paths, argv, working directory,
/// command names). Valid printable UTF-8 is kept as it is; a backslash becomes `\\`; a
/// byte that is not valid UTF-8, a C0 control or DEL becomes `\xNN`; a C1 control or an
/// invisible formatting character that can hide or reorder text (bidi overrides,
/// zero-width characters) becomes `\u{…}` (hex). What comes out cannot move a terminal's
/// cursor, clear its screen or fake a line, and no two byte strings come out the same.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\0'..='\x1f' | '\x7f' => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c if c.is_control() || hides_text(c) => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Unicode formatting characters that print as nothing or change the order in which the
/// text around them is shown.
pub fn hides_text(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

/// Bytes of the held process's argv an approver is shown; past that the argv ends with a
/// marker saying it was cut. Each argument counts with its NUL, as the kernel counts it.
const HELD_ARGV_BYTES: usize = 1 << 20;
/// The same for each parent: context, not the action, and there may be 32 of them.
const PARENT_ARGV_BYTES: usize = 64 << 10;

/// Ends an argv that was cut (followed by the limit).
const CUT: &str = "…(truncated at ";

/// Whether `argv`, as shown, was cut at its limit: words past it were never seen.
pub fn argv_cut(argv: &[String]) -> bool {
    argv.last().is_some_and(|last| last.starts_with(CUT))
}

/// An argv as an approver is shown it: each argument made printable, cut with an explicit
/// marker once the arguments exceed a limit.
struct ShownArgv {
    words: Vec<String>,
    left: usize,
    limit: usize,
}

impl ShownArgv {
    fn new(limit: usize) -> Self {
        Self { words: Vec::new(), left: limit, limit }
    }

    /// Takes the next argument; `false` once the limit is reached and nothing more fits.
    fn push(&mut self, arg: &[u8]) -> bool {
        if arg.len() < self.left {
            self.left -= arg.len() + 1;
            self.words.push(printable(arg));
            return true;
        }
        if self.left > 0 {
            self.words.push(printable(&arg[..self.left]));
        }
        self.words.push(format!("{CUT}{} KiB)", self.limit >> 10));
        false
    }

    /// `args` as shown under `limit`.
    fn of<'a>(args: impl IntoIterator<Item = &'a [u8]>, limit: usize) -> Vec<String> {
        let mut shown = Self::new(limit);
        for arg in args {
            if !shown.push(arg) {
                break;
            }
        }
        shown.words
    }
}

fn nul_terminated(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
}

/// The user name of `uid` as NSS knows it (files, LDAP, SSSD…), else the number.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name)
}

/// The argv of `pid` from `/proc/PID/cmdline`, empty arguments included.
fn proc_argv(pid: u32, limit: usize) -> Vec<String> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
    if args.is_empty() {
        return Vec::new();
    }
    ShownArgv::of(args.split(|&b| b == 0), limit)
}

/// What a held process's memory says: its argv and its parents' command lines. Reading
/// another process's memory can wait for as long as that process wants (memory it mapped
/// from a FUSE filesystem it serves), so only the judges read it, never the daemon's loop.
#[derive(Default)]
pub struct FromMemory {
    pub argv: Option<Vec<String>>,
    pub parents: Option<Vec<Parent>>,
}

impl FromMemory {
    /// What a person deciding on the hold of `event` is shown: the argv (of the exec, or of
    /// the process that asked for the egress) and the parents.
    pub fn read(event: &HoldEvent, argv: Option<Vec<String>>) -> Self {
        let argv = if event.hold.action.kind == kind::EXEC {
            argv.or_else(|| exec_argv(event))
        } else {
            Some(proc_argv(event.tgid, HELD_ARGV_BYTES))
        };
        Self { argv, parents: Some(parents(event.tgid, event.hold.root)) }
    }
}

/// The processes `pid` descends from within the agent under `root`, nearest first, ending
/// at the first outside it: the one that started the agent (`keyturn run`, the service
/// manager). The host's processes above that are none of the approver's business, and
/// their command lines may carry secrets.
fn parents(pid: u32, root: u64) -> Vec<Parent> {
    static HIERARCHY: std::sync::OnceLock<Option<Hierarchy>> = std::sync::OnceLock::new();
    let hierarchy = HIERARCHY.get_or_init(|| Hierarchy::find().ok());
    let mut chain = Vec::new();
    let mut current = procfs::stat(pid).map(|stat| stat.ppid);
    while let Some(pid) = current.filter(|&p| p > 0 && chain.len() < 32) {
        let Some(stat) = procfs::stat(pid) else { break };
        chain.push(Parent { pid, comm: printable(&stat.comm), argv: proc_argv(pid, PARENT_ARGV_BYTES) });
        if !hierarchy.as_ref().is_some_and(|hierarchy| hierarchy.process_under(pid, root)) {
            break;
        }
        current = Some(stat.ppid);
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
/// That takes microseconds; under emulation on a busy host, up to about a second.
fn stopped_syscall(pid: u32, tid: u32) -> Option<String> {
    for _ in 0..2000 {
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
    const EXECVE: u64 = libc::SYS_execve as u64;
    const EXECVEAT: u64 = libc::SYS_execveat as u64;
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
    // Each argument costs at least its NUL, so the limit also bounds how many are read.
    let mut argv = ShownArgv::new(HELD_ARGV_BYTES);
    for index in 0u64.. {
        let mut pointer = [0u8; 8];
        mem.read_exact_at(&mut pointer, argv_addr.checked_add(index.checked_mul(8)?)?).ok()?;
        let pointer = u64::from_ne_bytes(pointer);
        if pointer == 0 || !argv.push(&read_c_string(&mem, pointer, HELD_ARGV_BYTES)?) {
            break;
        }
    }
    Some(argv.words)
}

/// The argv of a held exec: the new program's after an exec that happened, else the
/// one passed to execve, read from the stopped thread.
pub fn exec_argv(event: &HoldEvent) -> Option<Vec<String>> {
    if event.event_type == event_type::STOPPED {
        Some(proc_argv(event.tgid, HELD_ARGV_BYTES))
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
    memory: FromMemory,
) -> HoldView {
    let action = &event.hold.action;
    let pid = event.tgid;
    let mut view = HoldView {
        id: hold_id(event),
        kind: if action.kind == kind::EXEC { ActionKind::Exec } else { ActionKind::Egress },
        agent: agent.into(),
        cgroup: cgroup.into(),
        pid,
        tid: event.tid,
        uid: event.uid,
        user: user_name(event.uid),
        comm: printable(nul_terminated(&event.comm)),
        requested_at: humantime::format_rfc3339_millis(wall_time(event.hold.held_at_ns)).to_string(),
        policy: policy.into(),
        hold: match event.event_type {
            event_type::STOPPED => Waiting::Stopped,
            event_type::DEFERRED => Waiting::Deferred,
            _ => Waiting::Held,
        },
        ..HoldView::default()
    };
    if action.kind == kind::EXEC {
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
        // Unverified, the path is only the name the process passed.
        let path = executable.map_or_else(
            || {
                let named = PathBuf::from(OsStr::from_bytes(nul_terminated(&event.path)));
                match &cwd {
                    Some(cwd) if named.is_relative() => cwd.join(&named),
                    _ => named,
                }
            },
            |exe| exe.path.clone(),
        );
        view.path = Some(printable(path.as_os_str().as_bytes()));
        view.cwd = cwd.map(|c| printable(c.as_os_str().as_bytes()));
        view.sha256 = executable.map(|exe| exe.sha256.clone());
    } else {
        let v6 = Ipv6Addr::from(action.addr);
        view.address = Some(v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()));
        view.port = u16::try_from(action.port).ok();
        view.protocol = Some(
            match action.protocol {
                // A lookup, shown with the server the agent asked.
                _ if action.kind == kind::LOOKUP => "dns",
                protocol::TCP => "tcp",
                protocol::UDP => "udp",
                _ => "any",
            }
            .to_owned(),
        );
    }
    // Read by the judges: here it could wait on the held thread or on what the agent
    // mapped into its memory.
    (view.argv, view.parents) = (memory.argv, memory.parents);
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_could_deceive_a_terminal_and_keeps_the_rest() {
        for (bytes, shown) in [
            (&b"curl -T dump.sql"[..], "curl -T dump.sql"),
            ("caf\u{e9} \u{1f600}".as_bytes(), "caf\u{e9} \u{1f600}"),
            (b"\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
            (b"ok\rkeyturn: approved\n", "ok\\x0dkeyturn: approved\\x0a"),
            (b"\x00\x07\x7f", "\\x00\\x07\\x7f"),
            (b"\xff\xfe", "\\xff\\xfe"),
            (b"back\\slash", "back\\\\slash"),
            ("\u{9b}31m".as_bytes(), "\\u{9b}31m"),
            ("\u{202e}fdp.exe".as_bytes(), "\\u{202e}fdp.exe"),
            ("zero\u{200b}width".as_bytes(), "zero\\u{200b}width"),
        ] {
            assert_eq!(printable(bytes), shown, "{bytes:?}");
        }
    }

    #[test]
    fn printable_never_shows_two_byte_strings_the_same() {
        let confusable: [&[u8]; 8] =
            [b"\\x1b", b"\x1b", b"\\\x1b", b"\x9b", "\u{9b}".as_bytes(), b"\\u{9b}", b"\xc2", b"\\xc2"];
        let shown: std::collections::HashSet<String> = confusable.iter().map(|b| printable(b)).collect();
        assert_eq!(shown.len(), confusable.len(), "{shown:?}");
    }

    #[test]
    fn a_long_argv_is_cut_with_a_marker_at_its_limit() {
        let words: Vec<Vec<u8>> = (0..10).map(|n| vec![b'a' + n; 99]).collect();
        let shown = |limit| ShownArgv::of(words.iter().map(Vec::as_slice), limit);
        assert_eq!(shown(1000).len(), 10, "10 args of 100 bytes fit in 1000");
        let cut = shown(950);
        assert_eq!(cut.len(), 11);
        assert_eq!(cut[8], "i".repeat(99));
        assert_eq!(cut[9], "j".repeat(50));
        assert_eq!(cut[10], "…(truncated at 0 KiB)");
        assert_eq!(shown(900).last().map(String::as_str), Some("…(truncated at 0 KiB)"));
        assert_eq!(shown(900).len(), 10);
        assert!(argv_cut(&cut) && !argv_cut(&shown(1000)));
    }
}
