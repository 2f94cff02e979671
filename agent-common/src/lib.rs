//! Types and constants shared by keyturn's BPF programs and its user space.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of implicit padding (user space derives
//! `bytemuck::Pod`, which refuses padding at compile time), and uses `u32` tags instead of
//! Rust enums or `bool`, so both sides agree on every byte.
#![no_std]

/// Map capacities. Each is the upper bound of what one host is expected to need, with room.
pub mod capacity {
    /// Tagged cgroups (the roots an operator tagged; descendants are resolved in the kernel).
    pub const TAGGED_ROOTS: u32 = 4096;
    /// Cached tagged/untagged verdicts per cgroup id; an LRU, so overflow only costs a re-walk.
    pub const CGROUP_CACHE: u32 = 16_384;
    /// Policies loaded at once (array index = policy id).
    pub const POLICIES: u32 = 256;
    /// Executable verdicts recorded by user space (file identities) over all policies.
    pub const EXEC_RULES: u32 = 65_536;
    /// Destination prefixes over all policies.
    pub const EGRESS_RULES: u32 = 65_536;
    /// Holds that may exist at once on one host (held, approved-not-yet-consumed, denied).
    pub const HOLDS: u32 = 16_384;
    /// Processes keyturn may have stopped at once: at most one per hold.
    pub const STOPS: u32 = HOLDS;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Deepest cgroup level the kernel walks to find a tagged ancestor.
    pub const CGROUP_DEPTH: u32 = 16;
    /// Port rules one destination prefix can carry (inherited ones included).
    pub const PORT_RULES: usize = 8;
    /// Bytes of an executable's path carried in a hold event.
    pub const PATH_BYTES: usize = 256;
    /// Addresses that names resolved to, per agent, with their expiry. An LRU: an evicted
    /// entry only means a connection to that address is judged by the CIDR rules again.
    pub const RESOLVED: u32 = 65_536;
    /// DNS sockets of tagged cgroups the resolver can attribute a query to. An LRU: a
    /// socket whose entry was evicted gets its queries refused until it connects again.
    pub const DNS_SENDERS: u32 = 16_384;
    /// Original destinations of redirected DNS sockets, for the replies' source.
    pub const DNS_REDIRECTS: u32 = DNS_SENDERS;
}

/// What a policy says about an action.
pub mod verdict {
    /// No verdict: the next rule decides.
    pub const NONE: u32 = 0;
    pub const ALLOW: u32 = 1;
    pub const HOLD: u32 = 2;
    pub const DENY: u32 = 3;
}

/// The families of actions keyturn can hold.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EGRESS: u32 = 2;
    /// A DNS lookup of a name, held by keyturn's resolver in user space (never by a hook).
    pub const LOOKUP: u32 = 3;
}

/// The lifecycle of a hold record in [`Hold::state`].
pub mod hold_state {
    /// Waiting for a decision; the kernel re-holds a restarted syscall.
    pub const PENDING: u32 = 1;
    /// Approved: the next matching restart is allowed and consumes the record.
    pub const APPROVED: u32 = 2;
    /// Denied: the next matching restart fails with EPERM and consumes the record.
    pub const DENIED: u32 = 3;
}

/// How the kernel treated an action it reported in a [`HoldEvent`].
pub mod event_type {
    /// The process is stopped in (or right after) the syscall, waiting for a decision.
    pub const HELD: u32 = 1;
    /// The syscall failed with EPERM; an approval lets the same action succeed on retry
    /// (egress in `cgroup-sock` mode on kernels whose `sock_addr` programs cannot signal).
    pub const DEFERRED: u32 = 2;
    /// A held process was resumed by someone other than keyturn: held again where the
    /// syscall restarts, reported for killing where it cannot (see `STOPPED`).
    pub const ROGUE_CONTINUE: u32 = 3;
    /// The exec happened and the process is stopped before the new program's first
    /// instruction; nothing restarts (`cgroup-sock` mode, which has no exec LSM hook).
    pub const STOPPED: u32 = 4;
}

/// Indexes into the `COUNTERS` per-CPU array. Every refusal and failure is counted.
pub mod counter {
    /// New holds raised (held or deferred).
    pub const HOLDS: u32 = 0;
    /// Approved restarts that were let through.
    pub const RELEASED: u32 = 1;
    /// Actions failed with EPERM by a policy `deny` or a recorded denial.
    pub const DENIED: u32 = 2;
    /// Refused because the ring buffer was full (fail closed).
    pub const RINGBUF_FULL: u32 = 3;
    /// Refused because the cgroup already had its maximum of pending holds.
    pub const FLOOD_REFUSED: u32 = 4;
    /// Refused because `bpf_send_signal` failed.
    pub const SIGNAL_FAILED: u32 = 5;
    /// Refused because no daemon heartbeat was seen within the liveness timeout.
    pub const DAEMON_ABSENT: u32 = 6;
    /// Restarted syscalls held again after a SIGCONT that was not keyturn's.
    pub const ROGUE_CONTINUE: u32 = 7;
    /// Refused because the hold table was full or a conflicting hold existed.
    pub const HOLD_TABLE_REFUSED: u32 = 8;
    /// Exec holds that had to kill because the exec could no longer be failed.
    pub const EXEC_KILLED: u32 = 9;
    /// DNS from a tagged cgroup refused instead of redirected to keyturn's resolver: over
    /// IPv6, from a socket already bound, to the resolver's own port, or with no resolver.
    pub const DNS_REFUSED: u32 = 10;
    /// Sockets a tagged cgroup may not create, refused: raw sockets, and ICMP (ping)
    /// datagram sockets, whose unconnected sends no egress hook of the `cgroup-sock` mode sees.
    pub const SOCKET_REFUSED: u32 = 11;
    /// Number of counters.
    pub const COUNT: u32 = 12;
}

/// The IPv4-mapped IPv6 prefix `::ffff:0:0/96`. IPv4 addresses are stored in this form,
/// so an IPv4-mapped IPv6 destination is treated exactly like the IPv4 one.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// IP protocol numbers as the kernel reports them.
pub mod protocol {
    pub const ANY: u32 = 0;
    pub const TCP: u32 = 6;
    pub const UDP: u32 = 17;
}

/// DNS for tagged cgroups: every query they send to port 53 (any address, over UDP or
/// TCP) goes to keyturn's resolver instead, from a loopback source address that names the
/// sender (`127.0.0.0/8`, the low 24 bits a key of `DNS_SENDERS`). A socket the agent had
/// bound to a port before connecting keeps its source, and its port names the sender.
pub mod dns {
    /// The DNS port, on any address.
    pub const PORT: u16 = 53;
    /// `127.0.0.0`, host byte order: sender addresses are this plus a sender index.
    pub const SENDER_NET: u32 = 0x7f00_0000;
    /// The sender index bits of a sender address.
    pub const SENDER_MASK: u32 = 0x00ff_ffff;
    /// Sender indexes below this are never used (`127.0.0.0`, `127.0.0.1`).
    pub const FIRST_SENDER: u32 = 2;

    /// The `DNS_SENDERS` key of a socket named by its own port (over TCP or UDP): above
    /// every sender index.
    pub const fn port_key(tcp: bool, port: u16) -> u32 {
        (1 << 31) | if tcp { 1 << 30 } else { 0 } | port as u32
    }
}

/// Where keyturn's resolver listens, written by user space into `DNS[0]`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// IPv4 loopback address, network byte order (as `bpf_sock_addr.user_ip4`).
    pub addr_be: u32,
    /// Port, host byte order; 0 while no resolver runs: DNS from tagged cgroups is refused.
    pub port: u32,
}

/// Who sent a DNS query: value of `DNS_SENDERS`, written by the hook that redirected the
/// socket, read by the resolver.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSender {
    /// The tagged root, and its policy when the socket was redirected. The resolver judges
    /// by the root's policy when it answers (`TAGGED_ROOTS`), which a new tag may have
    /// changed since; `policy` is kept for the map's layout, which pinned maps keep across
    /// daemon upgrades.
    pub root: u64,
    pub policy: u32,
    pub tgid: u32,
    pub tid: u32,
    /// A [`protocol`] constant.
    pub protocol: u32,
    /// The destination the agent asked for: IPv4-mapped address, port (host order).
    pub addr: [u8; 16],
    pub port: u32,
    pub padding: u32,
}

/// The destination a redirected UDP socket asked for, as replies must appear to come from
/// it: value of `DNS_REDIRECTS`, keyed by socket cookie.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsRedirect {
    /// Network byte order, as `bpf_sock_addr.user_ip4` and `user_port`.
    pub addr_be: u32,
    pub port_be: u32,
}

/// Key of `RESOLVED`: an address (IPv4-mapped or IPv6) a name resolved to for one agent.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedKey {
    /// The tagged root.
    pub root: u64,
    pub addr: [u8; 16],
}

/// What the domain rules naming a resolved name say of its address, until the answer's
/// TTL ends: value of `RESOLVED`, written by the resolver, read by the egress hooks.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// `CLOCK_MONOTONIC` nanoseconds after which the entry no longer applies.
    pub expires_ns: u64,
    /// Port rules of the domain rules; `fallback` 0 ([`verdict::NONE`]) leaves ports they
    /// do not name to the CIDR rules.
    pub rule: EgressRule,
}

/// One tagged cgroup root, written by user space into `TAGGED_ROOTS`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// Index into `POLICIES`.
    pub policy: u32,
    /// Holds that may be pending at once under this root; more are refused with EPERM.
    pub max_pending: u32,
}

/// The kernel's cached answer to "which tagged root is this cgroup under?".
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedTag {
    /// The tagged root's cgroup id, or 0 when the cgroup is not tagged.
    pub root: u64,
    pub tag: Tag,
    /// `Config::generation` when this entry was computed; stale entries are recomputed.
    pub generation: u64,
}

/// Process-wide settings, written by user space into `CONFIG[0]`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CLOCK_MONOTONIC` nanoseconds of the daemon's last heartbeat.
    pub heartbeat_ns: u64,
    /// Flagged actions fail with EPERM when the heartbeat is older than this.
    pub liveness_timeout_ns: u64,
    /// Bumped on every change of `TAGGED_ROOTS`, invalidating `CGROUP_CACHE`.
    pub generation: u64,
}

/// Defaults of one policy, `POLICIES[policy]`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyDefaults {
    /// Verdict for an executable with no entry in `EXEC_RULES`. The daemon sets `HOLD`:
    /// it identifies every executable it has not seen (path, content digest) itself.
    pub exec: u32,
    /// Verdict for a destination no egress rule covers.
    pub egress: u32,
}

/// Identity of an executable file within a policy: key of `EXEC_RULES`. The inode's
/// change time is part of it, so any write, rename, link or chmod makes a new identity
/// that user space has to judge again.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub policy: u32,
    /// The kernel's encoding of the device: `major << 20 | minor`.
    pub dev: u32,
    pub ino: u64,
    /// The inode's ctime in nanoseconds since the epoch.
    pub changed_ns: u64,
}

/// Data part of an `EGRESS_RULES` LPM key: the policy id (big endian, so it forms the
/// first 32 bits of every prefix) followed by the IPv6 or IPv4-mapped address.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressKey {
    pub policy_be: [u8; 4],
    pub addr: [u8; 16],
}

/// One port range of an [`EgressRule`]; `protocol` 0 matches any protocol.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub low: u16,
    pub high: u16,
    pub protocol: u16,
    pub verdict: u16,
}

/// What a destination prefix says, with the rules of the prefixes containing it already
/// folded in by user space: the first matching port rule wins, else `fallback`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    pub count: u32,
    pub fallback: u32,
    pub ports: [PortRule; capacity::PORT_RULES],
}

/// Exactly what was held: the restarted syscall must match it to be released.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Action {
    /// A [`kind`] constant.
    pub kind: u32,
    /// Egress: a [`protocol`] constant.
    pub protocol: u32,
    /// Egress: destination port, host byte order.
    pub port: u32,
    /// Exec: the kernel's device number of the executable.
    pub dev: u32,
    /// Exec: inode number of the executable.
    pub ino: u64,
    /// Exec: the executable's inode ctime in nanoseconds since the epoch.
    pub changed_ns: u64,
    /// Egress: IPv6 address, or IPv4 in its mapped form.
    pub addr: [u8; 16],
}

/// Key of `HOLDS`: the thread whose syscall is held. `tid` is 0 for deferred egress
/// holds, which any thread of the process may retry.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HoldKey {
    pub tgid: u32,
    pub tid: u32,
}

/// A hold record in `HOLDS`, created by the kernel, decided by user space.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hold {
    pub action: Action,
    /// Random per hold; a decision must name it.
    pub nonce: u64,
    /// The held thread's `start_boottime`: with the tid it names one thread for ever, so a
    /// reused tid never matches a dead thread's hold.
    pub thread_start: u64,
    /// The process's (its thread group leader's) `start_boottime`: with the tgid it names
    /// one process for ever. `/proc/PID/stat` shows this one, not the thread's.
    pub process_start: u64,
    /// The tagged root the process was under when held.
    pub root: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when the hold was raised.
    pub held_at_ns: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when user space decided it; 0 while pending.
    pub decided_at_ns: u64,
    /// A [`hold_state`] constant.
    pub state: u32,
    /// An [`event_type`] constant: `HELD`, `DEFERRED` or `STOPPED`.
    pub event_type: u32,
    /// 1 once a SIGCONT that was not keyturn's has been reported for this hold: later
    /// ones are only counted, so a flood of them cannot fill the ring buffer (user space
    /// clears it when it resumes the process itself, expecting the re-hold).
    pub rogue_reported: u32,
    pub padding: u32,
}

/// A process keyturn stopped (`SIGSTOP`) and has not yet resumed or killed: value of
/// `STOPS`, keyed by tgid. Written by the hooks whenever they stop a process (and by the
/// daemon when it stops one whose DNS lookup it holds), removed by
/// user space just before it resumes or kills one, so that a process stopped by keyturn
/// can always be told from one stopped by anyone else.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    /// [`Hold::process_start`] of the stopped process.
    pub process_start: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the latest stop.
    pub stopped_at_ns: u64,
}

/// What the kernel knows of a held action, sent to user space through `EVENTS`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug)]
pub struct HoldEvent {
    /// An [`event_type`] constant.
    pub event_type: u32,
    pub policy: u32,
    pub hold: Hold,
    /// `CLOCK_MONOTONIC` nanoseconds when the kernel saw what this event reports.
    pub at_ns: u64,
    pub cgroup: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// Exec: the path as passed to execve, NUL-terminated if shorter than the buffer.
    pub path: [u8; capacity::PATH_BYTES],
}

/// A [`KernelOffsets`] field for a member this kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets of kernel struct fields, resolved from the running kernel's BTF at load
/// time and handed to the programs as a global (Rust BPF programs get no CO-RE).
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub binprm_file: u32,
    pub binprm_filename: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub super_block_dev: u32,
    pub task_start_boottime: u32,
    pub socket_type: u32,
    /// `socket.state` (`SS_UNCONNECTED`, `SS_CONNECTING`…) and `socket.sk`.
    pub socket_state: u32,
    pub socket_sk: u32,
    /// The peer a `struct sock` is connected or connecting to (`__sk_common`'s
    /// `skc_family`, `skc_daddr`, `skc_v6_daddr`, `skc_dport`).
    pub sock_family: u32,
    pub sock_daddr: u32,
    pub sock_v6_daddr: u32,
    pub sock_dport: u32,
    pub msghdr_name: u32,
    pub task_tgid: u32,
    pub task_group_leader: u32,
    pub task_flags: u32,
    /// `task_struct.io_uring`, or [`ABSENT`] on a kernel built without io_uring.
    pub task_io_uring: u32,
    /// `inode` ctime seconds (`time64_t`) and nanoseconds (the low 32 bits are read):
    /// `i_ctime_sec`/`i_ctime_nsec` since 6.11, `i_ctime` (a `timespec64`) before.
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        Action, CachedTag, Config, DnsConfig, DnsRedirect, DnsSender, EgressKey, EgressRule, ExecKey, Hold,
        HoldEvent, HoldKey, KernelOffsets, PolicyDefaults, Resolved, ResolvedKey, Stop, Tag,
    };
    // SAFETY: every type is repr(C), Copy, and has no padding (bytemuck::Pod, derived
    // above, refuses padding at compile time).
    unsafe impl aya::Pod for Tag {}
    unsafe impl aya::Pod for CachedTag {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PolicyDefaults {}
    unsafe impl aya::Pod for ExecKey {}
    unsafe impl aya::Pod for EgressKey {}
    unsafe impl aya::Pod for EgressRule {}
    unsafe impl aya::Pod for Action {}
    unsafe impl aya::Pod for HoldKey {}
    unsafe impl aya::Pod for Hold {}
    unsafe impl aya::Pod for HoldEvent {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for Stop {}
    unsafe impl aya::Pod for DnsConfig {}
    unsafe impl aya::Pod for DnsSender {}
    unsafe impl aya::Pod for DnsRedirect {}
    unsafe impl aya::Pod for ResolvedKey {}
    unsafe impl aya::Pod for Resolved {}
}
