//! Egress hooks: hold a connection or datagram to a destination the policy does not allow,
//! before any packet leaves. IPv4 and IPv4-mapped IPv6 destinations are the same thing.

use agent_common::{
    Action, EgressKey, EgressRule, ResolvedKey, V4_MAPPED_PREFIX, capacity, counter, kind, protocol, verdict,
};
use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::{
    dns,
    hold::{self, Outcome, Waiting},
    kernel,
    maps::{EGRESS_RULES, RESOLVED},
    tag::{self, Tagged},
};

const AF_UNSPEC: u16 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;
/// `socket_state`: a stream socket connects somewhere new only from `SS_UNCONNECTED`.
const SS_UNCONNECTED: u32 = 1;
const IPPROTO_MPTCP: u32 = 262;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;
const SOCK_RAW: u32 = 3;

/// A destination: address (IPv4 mapped into IPv6), port, protocol.
pub struct Destination {
    pub addr: [u8; 16],
    pub port: u16,
    pub protocol: u32,
}

fn mapped_v4(addr_be: u32) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..12].copy_from_slice(&V4_MAPPED_PREFIX);
    addr[12..].copy_from_slice(&addr_be.to_ne_bytes());
    addr
}

/// The verdict of the first port rule of `rule` that matches `to`, else its fallback
/// (which may be [`verdict::NONE`]).
#[inline(always)]
fn rule_verdict(rule: &EgressRule, to: &Destination) -> u32 {
    for i in 0..capacity::PORT_RULES {
        if i >= rule.count as usize {
            break;
        }
        let port = rule.ports[i];
        if to.port >= port.low
            && to.port <= port.high
            && (port.protocol == 0 || u32::from(port.protocol) == to.protocol)
        {
            return u32::from(port.verdict);
        }
    }
    rule.fallback
}

/// Whether `rule` lets some destination through.
#[inline(always)]
fn allows_some_port(rule: &EgressRule) -> bool {
    if rule.fallback == verdict::ALLOW {
        return true;
    }
    for i in 0..capacity::PORT_RULES {
        if i >= rule.count as usize {
            break;
        }
        if u32::from(rule.ports[i].verdict) == verdict::ALLOW {
            return true;
        }
    }
    false
}

/// What the policy of `tagged` says of egress to `to`: DNS is left to the DNS hooks; an
/// address a name resolved to for this agent is judged by that name's domain rules while
/// the answer's TTL lasts; then the CIDR rules, then the policy's default.
///
/// glibc's `getaddrinfo` orders a name's addresses by connecting a UDP socket to each
/// (RFC 6724's source address selection; port 0 unless the caller named a service) and
/// sends nothing. A UDP connect to port 0 of an address the agent may reach by a name on
/// some port is let through where the rest would hold it, so that a name allowed on its
/// ports costs no hold. A program may then send datagrams on that socket to port 0 of that
/// host (no service listens there; a raw socket does read them): a host the agent reaches
/// by that name anyway. A deny stays a deny.
fn verdict(tagged: &Tagged, to: &Destination) -> u32 {
    if dns::is_dns(to) || dns::is_resolver(to) {
        return verdict::ALLOW;
    }
    // SAFETY: the resolver replaces entries whole; a torn read only mixes two answers'
    // rules for the same name's address.
    let resolved = unsafe { RESOLVED.get(&ResolvedKey { root: tagged.root, addr: to.addr }) }
        .filter(|resolved| kernel::now_ns() < resolved.expires_ns);
    if let Some(resolved) = resolved {
        let by_name = rule_verdict(&resolved.rule, to);
        if by_name != verdict::NONE {
            return by_name;
        }
    }
    let key = Key::new(32 + 128, EgressKey { policy_be: tagged.tag.policy.to_be_bytes(), addr: to.addr });
    let by_address = match EGRESS_RULES.get(&key) {
        Some(rule) => rule_verdict(rule, to),
        None => hold::policy_defaults(tagged.tag.policy).egress,
    };
    let orders_addresses = to.protocol == protocol::UDP && to.port == 0;
    if by_address == verdict::HOLD && orders_addresses && resolved.is_some_and(|r| allows_some_port(&r.rule))
    {
        return verdict::ALLOW;
    }
    by_address
}

/// Decides egress to `to` for the current task. A thread that uses io_uring waits by
/// failing and retrying rather than by a restart (see [`kernel::current_uses_io_uring`]):
/// its held action fails with EPERM at once, and an approval lets the same action through
/// when it is tried again.
pub fn check(to: &Destination, waiting: Waiting) -> Outcome {
    if to.port == 0 && (to.addr == mapped_v4(0) || to.addr == [0; 16]) {
        // No destination: a `sendmsg` whose control data made the kernel ask, on a
        // connected socket (it goes to the peer judged at connect), or one that fails.
        return Outcome::Allow;
    }
    decide(to, waiting, || Ok(false))
}

/// [`check`], where `decided_before` tells (when the policy would hold the action, and
/// only then) whether the call just repeats one already decided.
#[inline(always)]
fn decide(to: &Destination, waiting: Waiting, decided_before: impl FnOnce() -> Result<bool, i32>) -> Outcome {
    let Some(tagged) = tag::current() else {
        return Outcome::Allow;
    };
    let action = Action {
        kind: kind::EGRESS,
        protocol: to.protocol,
        port: u32::from(to.port),
        addr: to.addr,
        ..Action::default()
    };
    let policy_verdict = verdict(&tagged, to);
    if policy_verdict == verdict::HOLD {
        match decided_before() {
            Ok(true) => return Outcome::Allow,
            Ok(false) => {}
            Err(_) => return Outcome::Refuse,
        }
    }
    let waiting = if policy_verdict == verdict::HOLD
        && waiting == Waiting::Restart
        && kernel::current_uses_io_uring()
    {
        Waiting::Retry
    } else {
        waiting
    };
    hold::enforce(&tagged, &action, policy_verdict, waiting, 0)
}

/// Reads the destination of a kernel `struct sockaddr *`. `None`: not an IP destination.
/// `unspec_is_inet`: an `AF_UNSPEC` address is an IPv4 one, as `udp_sendmsg` reads it on
/// an IPv4 socket (to `connect`, it means "disconnect").
fn sockaddr_destination(
    sockaddr: u64,
    protocol: u32,
    unspec_is_inet: bool,
) -> Result<Option<Destination>, i32> {
    let family: u16 = kernel::read(sockaddr, 0)?;
    let port_be: u16 = kernel::read(sockaddr, 2)?;
    let addr = match family {
        AF_INET => mapped_v4(kernel::read(sockaddr, 4)?),
        AF_UNSPEC if unspec_is_inet => mapped_v4(kernel::read(sockaddr, 4)?),
        AF_INET6 => kernel::read(sockaddr, 8)?,
        _ => return Ok(None),
    };
    Ok(Some(Destination { addr, port: u16::from_be(port_be), protocol }))
}

/// The protocol of a socket of type `socket_type`.
fn protocol_of(socket_type: u16) -> u32 {
    match socket_type {
        SOCK_STREAM => protocol::TCP,
        SOCK_DGRAM => protocol::UDP,
        _ => protocol::ANY,
    }
}

/// Whether `socket` (of type `socket_type`) is a stream socket already connecting or
/// connected to `to`. The LSM
/// hook runs on every `connect` call, unlike the cgroup hooks: a connect restarted after
/// its thread was stopped for another thread's hold, or asked again by its program (or by
/// io_uring on some kernels) for its result, is one already decided, and must not be held
/// again. Only the very peer counts: the state is read without the socket's lock, so
/// another thread may disconnect the socket before this call connects it, and then this
/// call goes to `to`, which the connect that made the peer was judged for.
fn connecting_to(socket: u64, socket_type: u16, to: &Destination) -> Result<bool, i32> {
    let offsets = kernel::offsets();
    let state: u32 = kernel::read(socket, offsets.socket_state)?;
    if socket_type != SOCK_STREAM || state == SS_UNCONNECTED {
        return Ok(false);
    }
    let sock: u64 = kernel::read(socket, offsets.socket_sk)?;
    let family: u16 = kernel::read(sock, offsets.sock_family)?;
    let peer = match family {
        AF_INET => mapped_v4(kernel::read(sock, offsets.sock_daddr)?),
        AF_INET6 => kernel::read(sock, offsets.sock_v6_daddr)?,
        _ => return Ok(false),
    };
    let port_be: u16 = kernel::read(sock, offsets.sock_dport)?;
    Ok(peer == to.addr && u16::from_be(port_be) == to.port)
}

/// Decides egress of `socket` to the `struct sockaddr *` at `sockaddr`: unreadable
/// arguments are refused.
fn judge(socket: u64, sockaddr: u64, unspec_is_inet: bool) -> Outcome {
    let socket_type = kernel::read::<u16>(socket, kernel::offsets().socket_type);
    let destination =
        socket_type.and_then(|t| sockaddr_destination(sockaddr, protocol_of(t), unspec_is_inet));
    match (socket_type, destination) {
        (Ok(socket_type), Ok(Some(to))) => {
            decide(&to, Waiting::Restart, || connecting_to(socket, socket_type, &to))
        }
        (_, Ok(None)) => Outcome::Allow,
        _ => Outcome::Refuse,
    }
}

/// Whether a tagged cgroup may create the socket `sock` (`cgroup/sock_create`, every mode):
/// not a raw socket, nor an ICMP (ping) datagram socket. Their packets reach the network
/// around the egress hooks: `ping_v4_sendmsg` and raw sends run no `sendmsg` hook, and a raw
/// socket writes its own headers. Refused ones are counted.
#[inline(always)]
pub fn may_create(sock: &bpf_sock) -> bool {
    let icmp = sock.type_ == u32::from(SOCK_DGRAM)
        && (sock.protocol == IPPROTO_ICMP || sock.protocol == IPPROTO_ICMPV6);
    if sock.type_ == SOCK_RAW || icmp {
        hold::count(counter::SOCKET_REFUSED);
        return false;
    }
    true
}

/// Decides `socket_connect(sock, address, addrlen)`.
pub fn connect(socket: u64, sockaddr: u64) -> Outcome {
    judge(socket, sockaddr, false)
}

/// Decides `socket_sendmsg(sock, msg, size)`: only a message that names a destination
/// (UDP `sendto`, TCP fast open) can go somewhere its socket was not connected to.
pub fn sendmsg(socket: u64, msghdr: u64) -> Outcome {
    let offsets = kernel::offsets();
    let name: Result<u64, i32> = kernel::read(msghdr, offsets.msghdr_name);
    let family = kernel::read::<u64>(socket, offsets.socket_sk)
        .and_then(|sk| kernel::read::<u16>(sk, offsets.sock_family));
    match (name, family) {
        (Ok(0), _) => Outcome::Allow,
        (Ok(sockaddr), Ok(family)) => judge(socket, sockaddr, family == AF_INET),
        _ => Outcome::Refuse,
    }
}

/// The destination port, host byte order.
#[expect(clippy::cast_possible_truncation, reason = "the port is the low 16 bits, in network order")]
fn sock_addr_port(sa: &bpf_sock_addr) -> u16 {
    u16::from_be(sa.user_port as u16)
}

fn sock_addr_protocol(sa: &bpf_sock_addr) -> u32 {
    match sa.protocol {
        IPPROTO_MPTCP => protocol::TCP,
        other => other,
    }
}

/// The destination a `cgroup/connect4` or `cgroup/sendmsg4` program sees. The verifier
/// only allows the context fields of the attach point's own family, at fixed offsets.
pub fn sock_addr_destination_v4(ctx: &SockAddrContext) -> Destination {
    // SAFETY: the context is the kernel's bpf_sock_addr for this call.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    Destination { addr: mapped_v4(sa.user_ip4), port: sock_addr_port(sa), protocol: sock_addr_protocol(sa) }
}

/// The destination a `cgroup/connect6` or `cgroup/sendmsg6` program sees.
pub fn sock_addr_destination_v6(ctx: &SockAddrContext) -> Destination {
    // SAFETY: the context is the kernel's bpf_sock_addr for this call.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let words = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let mut addr = [0u8; 16];
    for (chunk, word) in addr.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Destination { addr, port: sock_addr_port(sa), protocol: sock_addr_protocol(sa) }
}
