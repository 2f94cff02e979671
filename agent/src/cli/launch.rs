//! `keyturn run`: starts a command held back until the daemon has put it in a tagged cgroup
//! of its own, then waits for it.

use std::{
    ffi::{CString, OsString},
    io::Write as _,
    os::unix::ffi::OsStrExt as _,
};

use anyhow::{Context as _, anyhow};

use crate::{config::Config, daemon::api::Request, sys};

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
    let (pid, gate_write) = sys::spawn_gated(&argv).context("starting the command")?;
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
    sys::wait_for(pid).context("waiting for the command")
}
