//! Every system call keyturn makes, kept behind this one fence: those no safe API offers
//! are the only `unsafe` code of the crate (read leases, starting a command behind a
//! gate); the rest are thin wrappers over nix and rustix, named for what keyturn does.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::wait::{WaitStatus, waitpid},
    time::{ClockId, clock_gettime},
    unistd::Pid,
};
use rustix::process::{PidfdFlags, Signal};

/// Restores `SIGPIPE`'s default action, which Rust's runtime sets to ignore: a write to a
/// pipe whose reader left (`keyturn audit | head`) then ends the process quietly, as it
/// ends any command-line tool, instead of failing the write.
pub fn end_on_closed_pipe() {
    // SAFETY: sets the default disposition of a signal; no handler is installed.
    let _ = unsafe {
        nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
    };
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the BPF programs' `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec()).unwrap_or(0)
    })
}

/// Whether `fd` is readable within `timeout_ms` (0: now).
pub fn readable(fd: impl AsFd, timeout_ms: u16) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(timeout_ms)).is_ok_and(|ready| ready > 0)
}

/// A pidfd of process `pid`: signals sent through it reach that process or nobody.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw).ok_or(io::ErrorKind::NotFound)?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// A signal keyturn sends to a held process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `SIGCONT`: the process goes on.
    Resume,
    /// `SIGKILL`.
    Kill,
}

/// Sends `ending` to the process behind `pidfd`.
pub fn pidfd_signal(pidfd: impl AsFd, ending: Ending) -> io::Result<()> {
    let signal = match ending {
        Ending::Resume => Signal::CONT,
        Ending::Kill => Signal::KILL,
    };
    Ok(rustix::process::pidfd_send_signal(pidfd, signal)?)
}

/// Stops (`SIGSTOP`) the process behind `pidfd`.
pub fn pidfd_stop(pidfd: impl AsFd) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, Signal::STOP)?)
}

/// `fcntl(2)`'s `F_SETSIG` (Linux's `__F_SETSIG`), which the libc crate does not name.
const F_SETSIG: libc::c_int = 10;

/// Takes a read lease on `file` (no safe crate offers leases): granted only while nobody
/// has the file open for writing, and while it is held a writer's open waits for it to
/// end. The kernel tells the holder with a signal, by default SIGIO, which would end the
/// daemon; it is made SIGURG, which is ignored unless handled.
pub fn take_read_lease(file: &File) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd `file` keeps open, with integer arguments only.
    unsafe {
        libc::fcntl(fd, F_SETSIG, libc::SIGURG) == 0 && libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0
    }
}

/// Whether the read lease on `file` is still whole: nobody has asked to write since.
pub fn read_lease_held(file: &File) -> bool {
    // SAFETY: fcntl on an fd `file` keeps open, with no argument.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLEASE) == libc::F_RDLCK }
}

/// Starts `argv` as a child held back behind a gate: it waits until a byte is written to
/// the returned fd, then execs; if the fd is closed without a byte it exits with 126.
/// (std's spawn cannot do this: it waits for the exec, which must wait for the caller.)
/// The caller must be single-threaded, as the command line is.
pub fn spawn_gated(argv: &[CString]) -> io::Result<(u32, OwnedFd)> {
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let (gate_read, gate_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (read_fd, write_fd) = (gate_read.as_raw_fd(), gate_write.as_raw_fd());
    // SAFETY: the child only calls async-signal-safe functions (close, read, execvp,
    // write, _exit) on memory prepared before the fork, and the caller is single-threaded.
    let pid = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            // Only the parent writes: a refusal closes the gate, and the read sees its end.
            libc::close(write_fd);
            let mut go = [0u8; 1];
            if libc::read(read_fd, go.as_mut_ptr().cast(), 1) == 1 {
                libc::execvp(pointers[0], pointers.as_ptr());
                let message = b"keyturn: cannot execute the command\n";
                libc::write(2, message.as_ptr().cast(), message.len());
                libc::_exit(127);
            }
            libc::_exit(126);
        }
        pid
    };
    let pid = u32::try_from(pid).map_err(|_| io::Error::last_os_error())?;
    drop(gate_read);
    Ok((pid, gate_write))
}

/// Waits for child `pid`; its exit code, or 128 + the signal that killed it.
pub fn wait_for(pid: u32) -> io::Result<i32> {
    let pid = Pid::from_raw(i32::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?);
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes `key` out of the BPF hash map `map` and returns the value it held, in one step
/// (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, Linux 5.14): nothing the kernel writes can slip
/// between the read and the removal, as it can between a lookup and a delete. `None` when
/// the map holds no such key. `K` and `V` must be the map's key and value types.
pub fn bpf_map_take<K: bytemuck::Pod, V: bytemuck::Pod>(map: impl AsFd, key: &K) -> io::Result<Option<V>> {
    /// The `bpf_attr` of the map element commands.
    #[repr(C)]
    struct ElementAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = V::zeroed();
    let attr = ElementAttr {
        map_fd: u32::try_from(map.as_fd().as_raw_fd()).map_err(|_| io::ErrorKind::InvalidInput)?,
        pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    // SAFETY: `attr` is the leading part of a `bpf_attr` for this command, of the size
    // given; `key` and `value` point to buffers of the map's key and value sizes.
    let done = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<ElementAttr>(),
        )
    };
    match done {
        0 => Ok(Some(value)),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            e => Err(e),
        },
    }
}
