//! The process the integration tests put in a tagged cgroup: it performs one real action
//! and reports what the kernel answered. `actor ACTION ARGS…`:
//!
//! - `tcp ADDR PORT MSG`, `udp ADDR PORT MSG` (sendto), `udp-connected ADDR PORT MSG`,
//!   `tfo ADDR PORT MSG` (TCP fast open: sendto with `MSG_FASTOPEN`)
//! - `threads N ACTION…`: start N idle threads, then perform ACTION on the main thread
//! - `late-thread MS ACTION…`: after MS milliseconds, perform ACTION on a new thread
//! - `each-thread N ACTION ADDR PORT MSG`: N threads at once each perform ACTION with the
//!   message `MSG-i` (i = 1..N)
//! - `retry ACTION…`: perform ACTION, retrying every 50 ms for 10 s while it fails with EPERM
//! - `uring tcp ADDR PORT MSG`: connect and send through io_uring (`IORING_OP_CONNECT`,
//!   `IORING_OP_SEND`); `uring tcp-async …` the same with `IOSQE_ASYNC` (an io-wq worker
//!   runs the connect); `uring udp ADDR PORT MSG`: one `IORING_OP_SENDMSG` naming ADDR
//! - `exec PATH ARGS…`: execv PATH
//!
//! Prints `ok` and exits 0, or prints `error: ERRNO` and exits 1.

use std::{
    ffi::CString,
    io::Write as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    },
};

fn fail(error: &std::io::Error) -> ! {
    println!("error: {}", error.raw_os_error().unwrap_or(0));
    std::process::exit(1);
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("family"),
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).expect("family"),
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, libc::socklen_t::try_from(len).expect("length"))
}

/// TCP fast open: the connect happens inside sendto.
fn fast_open(to: &SocketAddr, message: &[u8]) -> std::io::Result<()> {
    let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscalls on fds this function owns.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (addr, len) = sockaddr(to);
        let sent = libc::sendto(
            fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_FASTOPEN,
            (&raw const addr).cast(),
            len,
        );
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::shutdown(fd, libc::SHUT_WR);
        let mut buf = [0u8; 1];
        libc::recv(fd, buf.as_mut_ptr().cast(), 1, 0);
        libc::close(fd);
    }
    Ok(())
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
    let (addr, len) = sockaddr(&to);
    let message = args[3].as_bytes();
    let mut ring = io_uring::IoUring::new(4)?;
    let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let tcp = args[0].starts_with("tcp");
    let kind = if tcp { libc::SOCK_STREAM } else { libc::SOCK_DGRAM };
    // SAFETY: a plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(family, kind, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let fd = Fd(socket.as_raw_fd());
    if tcp {
        let mut connect = opcode::Connect::new(fd, (&raw const addr).cast(), len).build();
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
        // SAFETY: an all-zero msghdr is valid; its pointers are set just below.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_name = (&raw const addr).cast_mut().cast();
        header.msg_namelen = len;
        header.msg_iov = &raw mut iov;
        header.msg_iovlen = 1;
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
        "exec" => {
            let words: Vec<CString> =
                args[1..].iter().map(|a| CString::new(a.as_bytes()).expect("no NUL")).collect();
            let path = CString::new(std::ffi::OsStr::new(&args[1]).as_bytes()).expect("no NUL");
            let mut pointers: Vec<*const libc::c_char> = words.iter().map(|a| a.as_ptr()).collect();
            pointers.push(std::ptr::null());
            // SAFETY: NUL-terminated argv; execv only returns on failure.
            unsafe { libc::execv(path.as_ptr(), pointers.as_ptr()) };
            return Err(std::io::Error::last_os_error());
        }
        other => panic!("unknown action {other}"),
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
