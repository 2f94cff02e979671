//! `keyturn run`: starts a command held back until the daemon has put it in a tagged cgroup
//! of its own, then waits for it.

use std::{
    ffi::{CString, OsString},
    io::Write as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    },
};

use anyhow::{Context as _, anyhow, bail};

use crate::{config::Config, daemon::api::Request};

/// Starts CMD held back until the daemon has put it in its own tagged cgroup, then lets
/// it exec, waits, and returns its status (128 + signal when killed).
pub fn run_agent(
    config: &Config,
    policy: String,
    name: Option<String>,
    requester: Option<String>,
    command: &[OsString],
) -> anyhow::Result<i32> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| anyhow!("{} contains a NUL byte", a.display())))
        .collect::<Result<_, _>>()?;
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    let (gate_read, gate_write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only calls async-signal-safe functions (close, read, execvp, write, _exit)
    // on memory prepared before the fork. std's spawn cannot be used: it waits for the exec,
    // which must wait for the daemon.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            // Only the parent writes: a refusal closes the gate, and the read sees its end.
            libc::close(gate_write.as_raw_fd());
            let mut go = [0u8; 1];
            if libc::read(gate_read.as_raw_fd(), go.as_mut_ptr().cast(), 1) == 1 {
                libc::execvp(pointers[0], pointers.as_ptr());
                let message = b"keyturn: cannot execute the command\n";
                libc::write(2, message.as_ptr().cast(), message.len());
                libc::_exit(127);
            }
            libc::_exit(126);
        }
    }
    drop(gate_read);
    let pid = u32::try_from(pid).expect("fork returned a pid");
    if let Err(e) = super::call(config, &Request::Run { pid, policy, name, requester }) {
        drop(gate_write);
        wait_for(pid)?;
        return Err(e);
    }
    std::fs::File::from(gate_write).write_all(b"1").context("releasing the command")?;
    wait_for(pid)
}

/// Waits for child `pid`; its exit code, or 128 + the signal that killed it.
fn wait_for(pid: u32) -> anyhow::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid.cast_signed(), &raw mut status, 0) };
        if rc >= 0 {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            bail!("waiting for the command: {error}");
        }
    }
    let status = std::process::ExitStatus::from_raw(status);
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
