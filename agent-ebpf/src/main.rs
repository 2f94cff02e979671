//! keyturn's BPF programs: hold the exec of flagged programs and egress to destinations
//! the policy does not allow, for processes in tagged cgroups only.
//!
//! Entry points are thin; the decision lives in `hold`, what is decided in `exec` and
//! `egress`. Which programs load depends on the enforcement mode user space picked.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic_xadd: the BPF target has no fetch_add")
)]
#![expect(clippy::needless_pass_by_value, reason = "aya's program macros take the context by value")]
#![expect(
    clippy::inline_always,
    reason = "BPF: one function per hook keeps the verifier's pointer tracking and the stack simple"
)]

mod dns;
mod egress;
mod exec;
mod hold;
mod kernel;
mod maps;
mod tag;

use aya_ebpf::{
    helpers::generated::bpf_set_retval,
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, lsm, lsm_cgroup},
    programs::{BtfTracePointContext, LsmContext, SockAddrContext, SockContext},
};
use hold::{Outcome, Waiting};

/// Return values of cgroup programs (`lsm_cgroup`, `cgroup/sock_addr`).
const CGROUP_ALLOW: i32 = 1;
const CGROUP_REFUSE: i32 = 0;

/// A cgroup program's return: a hold sets the syscall's error to -ERESTARTNOINTR.
fn cgroup_verdict(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Allow => CGROUP_ALLOW,
        Outcome::Refuse => CGROUP_REFUSE,
        Outcome::Held => {
            // SAFETY: plain helper call, allowed in cgroup programs.
            unsafe { bpf_set_retval(-kernel::ERESTARTNOINTR) };
            CGROUP_REFUSE
        }
    }
}

/// A global `lsm` program's return: an earlier LSM's denial (`earlier`) stands and keyturn
/// decides nothing; otherwise 0 allows, -EPERM refuses, -ERESTARTNOINTR holds.
fn lsm_verdict(earlier: i32, decide: impl FnOnce() -> Outcome) -> i32 {
    if earlier != 0 {
        return earlier;
    }
    match decide() {
        Outcome::Allow => 0,
        Outcome::Refuse => -kernel::EPERM,
        Outcome::Held => -kernel::ERESTARTNOINTR,
    }
}

/// `lsm` mode exec: every exec on the host passes here; untagged ones cost one cached
/// lookup. Holds the exec of a flagged file before anything of the new program exists,
/// refuses a denied one with EPERM, allows the rest.
#[lsm(hook = "bprm_check_security")]
pub fn exec_lsm(ctx: LsmContext) -> i32 {
    lsm_verdict(ctx.arg(1), || exec::check(ctx.arg(0)))
}

/// `lsm-cgroup` mode exec, attached to each tagged cgroup: holds the exec of a flagged
/// file before it happens, refuses a denied one with EPERM, allows the rest.
#[lsm_cgroup(hook = "bprm_check_security")]
pub fn exec_lsm_cgroup(ctx: LsmContext) -> i32 {
    cgroup_verdict(exec::check(ctx.arg(0)))
}

/// `cgroup-sock` mode exec: see [`exec::after_exec`].
#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_tp(ctx: BtfTracePointContext) -> i32 {
    exec::after_exec(&ctx);
    0
}

/// `cgroup-sock` mode: reports a SIGCONT aimed at a held exec, see
/// [`exec::signal_generated`].
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_tp(ctx: BtfTracePointContext) -> i32 {
    exec::signal_generated(&ctx);
    0
}

/// `lsm` mode connect: holds a connect to a held destination before any SYN or
/// datagram, refuses a denied one, allows the rest.
#[lsm(hook = "socket_connect")]
pub fn connect_lsm(ctx: LsmContext) -> i32 {
    lsm_verdict(ctx.arg(3), || egress::connect(ctx.arg(0), ctx.arg(1)))
}

/// `lsm` mode sendmsg: as `connect_lsm`, for messages that carry a destination.
#[lsm(hook = "socket_sendmsg")]
pub fn sendmsg_lsm(ctx: LsmContext) -> i32 {
    lsm_verdict(ctx.arg(3), || egress::sendmsg(ctx.arg(0), ctx.arg(1)))
}

/// `lsm-cgroup` mode connect, attached to each tagged cgroup: holds a connect to a held
/// destination before any packet, refuses a denied one, allows the rest.
#[lsm_cgroup(hook = "socket_connect")]
pub fn connect_lsm_cgroup(ctx: LsmContext) -> i32 {
    cgroup_verdict(egress::connect(ctx.arg(0), ctx.arg(1)))
}

/// `lsm-cgroup` mode sendmsg: as `connect_lsm_cgroup`, for messages naming a destination.
#[lsm_cgroup(hook = "socket_sendmsg")]
pub fn sendmsg_lsm_cgroup(ctx: LsmContext) -> i32 {
    cgroup_verdict(egress::sendmsg(ctx.arg(0), ctx.arg(1)))
}

/// `cgroup-sock` mode egress to `to`: holds a held destination before any packet,
/// refuses a denied one, allows the rest. Inlined: the verifier checks the program's
/// return value (0 or 1) at its exit, which a called function's result does not bound.
#[inline(always)]
fn sock_addr(to: &egress::Destination, waiting: Waiting) -> i32 {
    cgroup_verdict(egress::check(to, waiting))
}

/// Generates the `cgroup-sock` programs of one attach point: `_hold` stops the process
/// and restarts the syscall (kernels whose `sock_addr` programs may send signals), `_retry`
/// fails it with EPERM and lets an approved retry through (the others).
macro_rules! sock_addr_programs {
    ($attach:ident, $destination:path, $hold:ident, $retry:ident) => {
        #[cgroup_sock_addr($attach)]
        pub fn $hold(ctx: SockAddrContext) -> i32 {
            sock_addr(&$destination(&ctx), Waiting::Restart)
        }

        #[cgroup_sock_addr($attach)]
        pub fn $retry(ctx: SockAddrContext) -> i32 {
            sock_addr(&$destination(&ctx), Waiting::Retry)
        }
    };
}

/// DNS, every mode, attached to each tagged cgroup: a query to port 53 over IPv4 goes to
/// keyturn's resolver, from a source address that names its sender.
#[cgroup_sock_addr(connect4)]
pub fn dns_connect4(ctx: SockAddrContext) -> i32 {
    dns::connect4(&ctx)
}

/// DNS, every mode: as `dns_connect4`, for a datagram sent to an address.
#[cgroup_sock_addr(sendmsg4)]
pub fn dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    dns::sendmsg4(&ctx)
}

/// DNS, every mode: refuses DNS over IPv6 (and the resolver's port by a mapped address).
#[cgroup_sock_addr(connect6)]
pub fn dns_connect6(ctx: SockAddrContext) -> i32 {
    dns::v6(&ctx)
}

/// DNS, every mode: as `dns_connect6`, for a datagram sent to an address.
#[cgroup_sock_addr(sendmsg6)]
pub fn dns_sendmsg6(ctx: SockAddrContext) -> i32 {
    dns::v6(&ctx)
}

/// DNS, every mode: no agent may bind the resolver's port.
#[cgroup_sock_addr(bind4)]
pub fn dns_bind4(ctx: SockAddrContext) -> i32 {
    dns::bind(&egress::sock_addr_destination_v4(&ctx))
}

/// DNS, every mode: as `dns_bind4`.
#[cgroup_sock_addr(bind6)]
pub fn dns_bind6(ctx: SockAddrContext) -> i32 {
    dns::bind(&egress::sock_addr_destination_v6(&ctx))
}

/// DNS, every mode: the resolver's replies to a redirected socket come from the server
/// the agent asked for. Never refuses.
#[cgroup_sock_addr(recvmsg4)]
pub fn dns_recvmsg4(ctx: SockAddrContext) -> i32 {
    dns::recvmsg4(&ctx)
}

/// Every mode, attached to each tagged cgroup: refuses raw and ICMP (ping) sockets, which
/// reach the network around the egress hooks. Allows every other socket.
#[cgroup_sock(sock_create)]
pub fn socket_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel's socket being created, valid for the program's run.
    if egress::may_create(unsafe { &*ctx.sock }) { CGROUP_ALLOW } else { CGROUP_REFUSE }
}

sock_addr_programs!(connect4, egress::sock_addr_destination_v4, connect4_hold, connect4_retry);
sock_addr_programs!(connect6, egress::sock_addr_destination_v6, connect6_hold, connect6_retry);
sock_addr_programs!(sendmsg4, egress::sock_addr_destination_v4, sendmsg4_hold, sendmsg4_retry);
sock_addr_programs!(sendmsg6, egress::sock_addr_destination_v6, sendmsg6_hold, sendmsg6_retry);

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Host builds (clippy, tests) compile the crate as a plain binary that does nothing.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
