//! The process the integration tests put in a tagged cgroup: it performs one real action
//! and reports what the kernel answered. `actor ACTION ARGS…`:
//!
//! - `tcp ADDR PORT MSG`, `udp ADDR PORT MSG` (sendto), `udp-connected ADDR PORT MSG`,
//!   `udp-unspec ADDR PORT MSG` (sendto an IPv4 address whose family says `AF_UNSPEC`),
//!   `tfo ADDR PORT MSG` (TCP fast open: sendto with `MSG_FASTOPEN`), `tcp-asking ADDR PORT
//!   MSG` (a non-blocking connect, asked again by `connect` until it is connected)
//! - `threads N ACTION…`: start N idle threads, then perform ACTION on the main thread
//! - `late-thread MS ACTION…`: after MS milliseconds, perform ACTION on a new thread
//! - `each-thread N ACTION ADDR PORT MSG`: N threads at once each perform ACTION with the
//!   message `MSG-i` (i = 1..N)
//! - `retry ACTION…`: perform ACTION, retrying every 50 ms for 10 s while it fails with EPERM
//! - `uring tcp ADDR PORT MSG`: connect and send through io_uring (`IORING_OP_CONNECT`,
//!   `IORING_OP_SEND`); `uring tcp-async …` the same with `IOSQE_ASYNC` (an io-wq worker
//!   runs the connect); `uring udp ADDR PORT MSG`: one `IORING_OP_SENDMSG` naming ADDR
//! - `exec PATH ARGS…`: execv PATH
//! - `resolve NAME`: look NAME up as programs do (`getaddrinfo`: `/etc/resolv.conf`, any
//!   nameserver), print `resolved: ADDR…`; `resolve-tcp NAME PORT MSG`: then connect to the
//!   first IPv4 address and send MSG
//! - `dns udp|udp-connected|tcp ADDR PORT HEX`: send the DNS message HEX to ADDR:PORT and
//!   print `rcode: N` of the reply (`no reply` after 3 s); `dns pktinfo-FROM …`: the same
//!   on a connected UDP socket, sent with an `IP_PKTINFO` asking for source address FROM
//! - `bind udp|tcp ADDR PORT`: bind a socket there
//! - `socket raw|icmp|icmp6`: in a network namespace of its own (root only), where every
//!   group may make ping sockets, make a raw IPv4 socket or an ICMP (ping) datagram socket
//!
//! Prints `ok` and exits 0, or prints `error: ERRNO` and exits 1.

use std::{
    ffi::CString,
    io::Write as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
};

use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, SockaddrLike as _, SockaddrStorage, connect,
        recv, sendto, shutdown, socket,
    },
};

fn fail(error: &std::io::Error) -> ! {
    println!("error: {}", error.raw_os_error().unwrap_or(0));
    std::process::exit(1);
}

/// A socket of `to`'s family.
fn socket_for(to: &SocketAddr, kind: SockType) -> std::io::Result<OwnedFd> {
    let family = if to.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    Ok(socket(family, kind, SockFlag::empty(), None)?)
}

/// TCP fast open: the connect happens inside sendto.
fn fast_open(to: &SocketAddr, message: &[u8]) -> std::io::Result<()> {
    let socket = socket_for(to, SockType::Stream)?;
    let fast_open = MsgFlags::from_bits_retain(libc::MSG_FASTOPEN);
    sendto(socket.as_raw_fd(), message, &SockaddrStorage::from(*to), fast_open)?;
    shutdown(socket.as_raw_fd(), Shutdown::Write)?;
    let _ = recv(socket.as_raw_fd(), &mut [0u8; 1], MsgFlags::empty());
    Ok(())
}

/// A non-blocking connect asked again by `connect` for its result until it reports the
/// connection, as some event loops do; then the message.
fn connect_asking_again(to: &SocketAddr, message: &[u8]) -> std::io::Result<()> {
    let family = if to.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let socket = socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK, None)?;
    let addr = SockaddrStorage::from(*to);
    loop {
        match connect(socket.as_raw_fd(), &addr) {
            Ok(()) | Err(Errno::EISCONN) => break,
            Err(Errno::EINPROGRESS | Errno::EALREADY) => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(errno) => return Err(errno.into()),
        }
    }
    let mut stream = TcpStream::from(socket);
    stream.set_nonblocking(false)?;
    stream.write_all(message)
}

/// Submits `entry` on `ring` and waits for its completion: its result, or its error.
fn uring_submit(ring: &mut io_uring::IoUring, entry: &io_uring::squeue::Entry) -> std::io::Result<i32> {
    // SAFETY: every buffer `entry` points to outlives this call, which waits for it.
    unsafe { ring.submission().push(entry).map_err(std::io::Error::other)? };
    ring.submit_and_wait(1)?;
    let result = ring.completion().next().expect("a completion").result();
    if result < 0 { Err(std::io::Error::from_raw_os_error(-result)) } else { Ok(result) }
}

/// `uring tcp|udp ADDR PORT MSG`.
fn uring(args: &[String]) -> std::io::Result<()> {
    use io_uring::{opcode, types::Fd};
    let to = SocketAddr::new(args[1].parse().expect("address"), args[2].parse().expect("port"));
    let addr = SockaddrStorage::from(to);
    let message = args[3].as_bytes();
    let mut ring = io_uring::IoUring::new(4)?;
    let tcp = args[0].starts_with("tcp");
    let socket = socket_for(&to, if tcp { SockType::Stream } else { SockType::Datagram })?;
    let fd = Fd(socket.as_raw_fd());
    if tcp {
        let mut connect = opcode::Connect::new(fd, addr.as_ptr(), addr.len()).build();
        if args[0] == "tcp-async" {
            connect = connect.flags(io_uring::squeue::Flags::ASYNC);
        }
        uring_submit(&mut ring, &connect)?;
        uring_submit(
            &mut ring,
            &opcode::Send::new(fd, message.as_ptr(), u32::try_from(message.len()).expect("length")).build(),
        )?;
    } else {
        let mut iov = libc::iovec { iov_base: message.as_ptr().cast_mut().cast(), iov_len: message.len() };
        let header = libc::msghdr {
            msg_name: addr.as_ptr().cast_mut().cast(),
            msg_namelen: addr.len(),
            msg_iov: &raw mut iov,
            msg_iovlen: 1,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        uring_submit(&mut ring, &opcode::SendMsg::new(fd, &raw const header).build())?;
    }
    Ok(())
}

fn act(args: &[String]) -> std::io::Result<()> {
    let target = || -> SocketAddr {
        let ip: std::net::IpAddr = args[1].parse().expect("address");
        SocketAddr::new(ip, args[2].parse().expect("port"))
    };
    match args[0].as_str() {
        "tcp" => {
            let mut stream = TcpStream::connect(target())?;
            stream.write_all(args[3].as_bytes())?;
        }
        "udp" | "udp-connected" => {
            let to = target();
            let socket = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            if args[0] == "udp" {
                socket.send_to(args[3].as_bytes(), to)?;
            } else {
                socket.connect(to)?;
                socket.send(args[3].as_bytes())?;
            }
        }
        "tfo" => fast_open(&target(), args[3].as_bytes())?,
        "udp-unspec" => {
            let SocketAddr::V4(to) = target() else { panic!("udp-unspec takes an IPv4 address") };
            sendto_unspec(to, args[3].as_bytes())?;
        }
        "tcp-asking" => connect_asking_again(&target(), args[3].as_bytes())?,
        "retry" => {
            for _ in 0..200 {
                match act(&args[1..]) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    other => return other,
                }
            }
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        "threads" => {
            let count: usize = args[1].parse().expect("thread count");
            for _ in 0..count {
                std::thread::spawn(|| {
                    loop {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                });
            }
            return act(&args[2..]);
        }
        "late-thread" => {
            std::thread::sleep(std::time::Duration::from_millis(args[1].parse().expect("milliseconds")));
            let rest = args[2..].to_vec();
            return std::thread::spawn(move || act(&rest)).join().expect("actor thread");
        }
        "each-thread" => {
            let count: usize = args[1].parse().expect("thread count");
            let threads: Vec<_> = (1..=count)
                .map(|i| {
                    let mut own = args[2..].to_vec();
                    own[3] = format!("{}-{i}", own[3]);
                    std::thread::spawn(move || act(&own))
                })
                .collect();
            return threads.into_iter().try_for_each(|t| t.join().expect("actor thread"));
        }
        "uring" => uring(&args[1..])?,
        "resolve" => {
            let found = resolve(&args[1])?;
            println!("resolved: {}", found.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
        }
        "resolve-tcp" => {
            let found = resolve(&args[1])?;
            let port: u16 = args[2].parse().expect("port");
            let to = found
                .iter()
                .find(|ip| ip.is_ipv4())
                .ok_or_else(|| std::io::Error::other("no IPv4 address"))?;
            let mut stream = TcpStream::connect((*to, port))?;
            stream.write_all(args[3].as_bytes())?;
        }
        "dns" => dns(&args[1], &target_of(&args[2], &args[3]), &hex_bytes(&args[4]))?,
        "socket" => make_socket(&args[1])?,
        "bind" => {
            let at = target_of(&args[2], &args[3]);
            if args[1] == "tcp" {
                drop(std::net::TcpListener::bind(at)?);
            } else {
                drop(UdpSocket::bind(at)?);
            }
        }
        "exec" => {
            let words: Vec<CString> =
                args[1..].iter().map(|a| CString::new(a.as_bytes()).expect("no NUL")).collect();
            let path = CString::new(std::ffi::OsStr::new(&args[1]).as_bytes()).expect("no NUL");
            let Err(errno) = nix::unistd::execv(&path, &words);
            return Err(errno.into());
        }
        other => panic!("unknown action {other}"),
    }
    Ok(())
}

/// `sendto` an IPv4 address whose family says `AF_UNSPEC`, from a new UDP socket.
fn sendto_unspec(to: std::net::SocketAddrV4, message: &[u8]) -> std::io::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let unspec = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_UNSPEC).expect("0"),
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid buffer and a sockaddr_in of its own size.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const unspec).cast(),
            libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("small"),
        )
    };
    if sent < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The addresses `getaddrinfo` gives for `name`. A failed lookup is `error: 0`.
fn resolve(name: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    use std::net::ToSocketAddrs as _;
    let found = (name, 0).to_socket_addrs().map_err(|e| {
        println!("lookup failed: {e}");
        std::io::Error::from_raw_os_error(0)
    })?;
    Ok(found.map(|a| a.ip()).collect())
}

/// `socket KIND`: in a network namespace of its own where every group may make ping
/// sockets, a socket of `kind`.
fn make_socket(kind: &str) -> std::io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")?;
    let (family, kind, protocol) = match kind {
        "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "icmp" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "icmp6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
        other => panic!("socket {other}?"),
    };
    // SAFETY: a plain socket(2).
    let fd = unsafe { libc::socket(family, kind, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned, owned here alone and closed on drop.
    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    Ok(())
}

fn target_of(addr: &str, port: &str) -> SocketAddr {
    SocketAddr::new(addr.parse().expect("address"), port.parse().expect("port"))
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

/// Sends `message` on the connected `socket` with an `IP_PKTINFO` asking for source `from`.
fn send_from(socket: &UdpSocket, message: &[u8], from: std::net::Ipv4Addr) -> std::io::Result<()> {
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr { s_addr: u32::from(from).to_be() },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let control = [nix::sys::socket::ControlMessage::Ipv4PacketInfo(&info)];
    let iov = [std::io::IoSlice::new(message)];
    nix::sys::socket::sendmsg::<()>(socket.as_raw_fd(), &iov, &control, MsgFlags::empty(), None)?;
    Ok(())
}

/// Sends one DNS message and prints the reply's rcode.
fn dns(how: &str, to: &SocketAddr, message: &[u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    let wait = Some(std::time::Duration::from_secs(3));
    let mut reply = vec![0u8; 65_535];
    let len = if how == "tcp" {
        let mut stream = TcpStream::connect(to)?;
        stream.set_read_timeout(wait)?;
        let len = u16::try_from(message.len()).expect("short message");
        stream.write_all(&[&len.to_be_bytes()[..], message].concat())?;
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).map(|()| stream.read(&mut reply).unwrap_or(0))
    } else {
        let socket = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        socket.set_read_timeout(wait)?;
        if how == "udp" {
            socket.send_to(message, to)?;
        } else {
            socket.connect(to)?;
            match how.strip_prefix("pktinfo-") {
                Some(from) => send_from(&socket, message, from.parse().expect("source address"))?,
                None => drop(socket.send(message)?),
            }
        }
        socket.recv_from(&mut reply).map(|(len, from)| {
            println!("from: {from}");
            len
        })
    };
    match len {
        Ok(len) if len >= 4 => println!("rcode: {}", reply[3] & 0x0f),
        _ => println!("no reply"),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match act(&args) {
        Ok(()) => println!("ok"),
        Err(e) => fail(&e),
    }
    let _ = std::io::stdout().flush();
}
