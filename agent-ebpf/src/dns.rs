//! DNS hooks, attached to each tagged cgroup in every mode: a query to port 53 (any
//! address, UDP or TCP) goes to keyturn's resolver instead, from a source that names who sent it.
//!
//! IPv4: the destination becomes the resolver, the source `127.x.y.z` with `x.y.z` an index
//! into `DNS_SENDERS`, and UDP replies appear to come from the server the agent asked for.
//! IPv6 DNS is refused: the resolver listens on IPv4 loopback, and a hook cannot change a
//! socket's family. (A datagram an IPv6 socket sends to an IPv4-mapped address takes the
//! IPv4 path, and is redirected; its reply then shows the resolver's address, as no
//! `recvmsg6` program rewrites it.) So is the resolver's port asked directly: only a
//! redirected socket may reach it, with a source address the hook chose.

use agent_common::{DnsConfig, DnsRedirect, DnsSender, counter, dns, protocol};
use aya_ebpf::{bindings::bpf_sock_addr, helpers::generated, programs::SockAddrContext};

use crate::{
    egress::{self, Destination},
    hold, kernel,
    maps::{DNS, DNS_REDIRECTS, DNS_SENDERS},
    tag,
};

const AF_INET: u16 = 2;
/// `BPF_NOEXIST`: insert only if the key is new.
const NOEXIST: u64 = 1;
/// Random sender indexes tried before a redirect is refused; a few are enough while the
/// map is far from holding all 2^24 indexes.
const SENDER_TRIES: usize = 4;

/// Verdicts of a `sock_addr` program.
pub const ALLOW: i32 = 1;
pub const REFUSE: i32 = 0;

/// `struct sockaddr_in`, for `bpf_bind`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}

fn resolver() -> DnsConfig {
    DNS.get(0).copied().unwrap_or_default()
}

/// Whether egress to `to` is DNS, which the DNS hooks redirect or refuse: the egress hooks
/// leave it to them (in the LSM modes they run first, on the address the agent asked for).
#[inline(always)]
pub fn is_dns(to: &Destination) -> bool {
    to.port == dns::PORT && (to.protocol == protocol::UDP || to.protocol == protocol::TCP)
}

/// Whether `to` is keyturn's resolver's port, on any address (0.0.0.0 and every address
/// of 127.0.0.0/8 reach it), where only redirected sockets may go (their hooks already ran
/// when the egress hooks see them).
#[inline(always)]
pub fn is_resolver(to: &Destination) -> bool {
    let resolver = resolver();
    resolver.port != 0 && u32::from(to.port) == resolver.port
}

#[inline(always)]
fn refuse() -> i32 {
    hold::count(counter::DNS_REFUSED);
    REFUSE
}

/// Who sends DNS to `to` from the current task. `None`: not a tagged task.
#[inline(always)]
fn sender(to: &Destination) -> Option<DnsSender> {
    let tagged = tag::current()?;
    let (tgid, tid) = kernel::current_ids();
    Some(DnsSender {
        root: tagged.root,
        policy: tagged.tag.policy,
        tgid,
        tid,
        protocol: to.protocol,
        addr: to.addr,
        port: u32::from(to.port),
        padding: 0,
    })
}

/// Records `sender` under a fresh sender index, and returns the loopback address (network
/// byte order) that names it.
#[inline(always)]
fn record_sender(sender: &DnsSender) -> Option<u32> {
    for _ in 0..SENDER_TRIES {
        // SAFETY: plain helper call.
        let index = unsafe { generated::bpf_get_prandom_u32() } & dns::SENDER_MASK;
        if index < dns::FIRST_SENDER {
            continue;
        }
        if DNS_SENDERS.insert(&index, sender, NOEXIST).is_ok() {
            return Some((dns::SENDER_NET | index).to_be());
        }
    }
    None
}

/// Points the socket at the resolver, remembering where it was going for the replies.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, sa: &mut bpf_sock_addr, resolver: DnsConfig) {
    let original = DnsRedirect { addr_be: sa.user_ip4, port_be: sa.user_port };
    // SAFETY: plain helper call on this program's context.
    let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // A full map only makes replies come from the resolver's address.
    let _ = DNS_REDIRECTS.insert(&cookie, &original, 0);
    sa.user_ip4 = resolver.addr_be;
    sa.user_port = u32::from(u16::try_from(resolver.port).unwrap_or(0).to_be());
}

/// What `connect4` and `sendmsg4` do with `to`: `Ok(None)`, not DNS: nothing;
/// `Ok(Some((sender, resolver)))`: redirect to `resolver`; `Err`: refuse.
#[inline(always)]
fn judge(to: &Destination) -> Result<Option<(DnsSender, DnsConfig)>, ()> {
    if is_resolver(to) {
        return Err(());
    }
    if !is_dns(to) {
        return Ok(None);
    }
    let resolver = resolver();
    if resolver.port == 0 {
        return Err(());
    }
    sender(to).map(|sender| Some((sender, resolver))).ok_or(())
}

/// `connect4`: a DNS socket is connected to the resolver instead. One not bound yet is
/// bound to a sender address; one the agent bound to a port (as Rust's and Java's sockets
/// are) is named by that port, if bound to the wildcard address or `127.0.0.1`, whose
/// traffic to the resolver comes from `127.0.0.1`: any other bound address is refused, so
/// that no agent can send from a sender address the hook did not give it.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    let to = egress::sock_addr_destination_v4(ctx);
    let (sender, resolver) = match judge(&to) {
        Ok(Some(found)) => found,
        Ok(None) => return ALLOW,
        Err(()) => return refuse(),
    };
    // SAFETY: the context is the kernel's bpf_sock_addr for this call, writable here, and
    // its `sk` the socket being connected.
    let sa = unsafe { &mut *ctx.sock_addr };
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    // SAFETY: the kernel's socket for this call, valid for the program's run.
    let (bound_addr, bound_port) = unsafe { ((*sk).src_ip4, (*sk).src_port) };
    if bound_port != 0 {
        let loopback = u32::from_be(bound_addr) == dns::SENDER_NET | 1;
        let Ok(port) = u16::try_from(bound_port) else { return refuse() };
        let key = dns::port_key(to.protocol == protocol::TCP, port);
        if !(bound_addr == 0 || loopback) || DNS_SENDERS.insert(&key, &sender, 0).is_err() {
            return refuse();
        }
    } else {
        let Some(source) = record_sender(&sender) else { return refuse() };
        let mut bind_to = SockaddrIn { family: AF_INET, port_be: 0, addr_be: source, zero: [0; 8] };
        // SAFETY: a stack sockaddr_in of its own size; bpf_bind is allowed in connect4.
        let bound = unsafe {
            generated::bpf_bind(
                ctx.sock_addr,
                core::ptr::from_mut(&mut bind_to).cast(),
                size_of::<SockaddrIn>() as i32,
            )
        };
        if bound != 0 {
            let _ = DNS_SENDERS.remove(&(u32::from_be(source) & dns::SENDER_MASK));
            return refuse();
        }
    }
    redirect(ctx, sa, resolver);
    ALLOW
}

/// `sendmsg4`: a datagram to a DNS server goes to the resolver, from its sender address
/// (whatever the socket is bound to). A datagram that names no destination (control data
/// made the kernel ask) goes to the socket's peer: to the resolver, only from the source
/// the socket was given, never one the agent chose with `IP_PKTINFO`.
#[inline(always)]
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context is the kernel's bpf_sock_addr for this call, writable here.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip4 == 0 && sa.user_port == 0 {
        let sk = unsafe { sa.__bindgen_anon_1.sk };
        let resolver = resolver();
        // SAFETY: the kernel's socket for this call, valid for the program's run.
        let (peer, peer_port, source) = unsafe { ((*sk).dst_ip4, (*sk).dst_port, (*sk).src_ip4) };
        if resolver.port != 0
            && peer == resolver.addr_be
            && u32::from(u16::from_be(peer_port)) == resolver.port
        {
            sa.msg_src_ip4 = source;
        }
        return ALLOW;
    }
    let to = egress::sock_addr_destination_v4(ctx);
    let (sender, resolver) = match judge(&to) {
        Ok(Some(found)) => found,
        Ok(None) => return ALLOW,
        Err(()) => return refuse(),
    };
    let Some(source) = record_sender(&sender) else { return refuse() };
    sa.msg_src_ip4 = source;
    redirect(ctx, sa, resolver);
    ALLOW
}

/// `bind4` and `bind6`: the resolver's port is refused, on any address, so that no agent
/// can take it while the daemon restarts.
#[inline(always)]
pub fn bind(to: &Destination) -> i32 {
    if is_resolver(to) { refuse() } else { ALLOW }
}

/// `connect6` and `sendmsg6`: DNS over IPv6, and the resolver through an IPv4-mapped
/// address, are refused.
#[inline(always)]
pub fn v6(ctx: &SockAddrContext) -> i32 {
    let to = egress::sock_addr_destination_v6(ctx);
    if is_dns(&to) || is_resolver(&to) { refuse() } else { ALLOW }
}

/// `recvmsg4`: a reply from the resolver to a redirected socket appears to come from the
/// server the agent asked for, as its resolver library checks.
#[inline(always)]
pub fn recvmsg4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context is the kernel's bpf_sock_addr for this call, writable here.
    let sa = unsafe { &mut *ctx.sock_addr };
    let resolver = resolver();
    let from_resolver = resolver.port != 0
        && sa.user_ip4 == resolver.addr_be
        && sa.user_port == u32::from(u16::try_from(resolver.port).unwrap_or(0).to_be());
    if from_resolver {
        // SAFETY: plain helper call on this program's context.
        let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        // SAFETY: user space never writes this map; an entry is replaced whole.
        if let Some(original) = unsafe { DNS_REDIRECTS.get(&cookie) } {
            sa.user_ip4 = original.addr_be;
            sa.user_port = original.port_be;
        }
    }
    ALLOW
}
