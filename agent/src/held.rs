//! A process the kernel is holding, reached through a pidfd so that a decision can never
//! hit another process that reused its pid.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use agent_common::{Hold, HoldEvent, HoldKey, event_type, hold_state};

use crate::enforcer::{Enforcer, EnforcerError};

/// `start_boottime` nanoseconds per `/proc/PID/stat` start-time tick (`USER_HZ` = 100).
const NS_PER_TICK: u64 = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("signalling process {pid}: {source}")]
    Signal { pid: u32, source: io::Error },
    #[error(transparent)]
    Enforcer(#[from] EnforcerError),
}

/// How a denial ends the held action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDeny {
    /// The process is killed.
    Kill,
    /// The syscall fails with EPERM and the process goes on (exec stopped after the
    /// fact cannot fail: it is killed).
    Fail,
}

/// The key of the kernel's hold record for `event`.
pub fn hold_key(event: &HoldEvent) -> HoldKey {
    let tid = if event.event_type == event_type::DEFERRED { 0 } else { event.tid };
    HoldKey { tgid: event.tgid, tid }
}

/// The event a hold record stands for, to pick up a hold a previous daemon left pinned.
pub fn event_from_record(key: HoldKey, hold: &Hold) -> HoldEvent {
    HoldEvent {
        event_type: hold.event_type,
        policy: 0,
        hold: *hold,
        cgroup: 0,
        tgid: key.tgid,
        tid: if key.tid == 0 { key.tgid } else { key.tid },
        uid: std::fs::metadata(format!("/proc/{}", key.tgid))
            .map_or(u32::MAX, |m| std::os::unix::fs::MetadataExt::uid(&m)),
        gid: 0,
        comm: [0; 16],
        path: [0; agent_common::capacity::PATH_BYTES],
    }
}

/// A held process, pinned by a pidfd.
pub struct HeldProcess {
    pidfd: OwnedFd,
    event: HoldEvent,
}

/// The start time `/proc/PID/stat` reports, in ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields = &stat[stat.rfind(')')? + 2..];
    fields.split_whitespace().nth(19)?.parse().ok()
}

impl HeldProcess {
    /// Opens the process named by `event`, checking it is the very process that was held.
    pub fn open(event: &HoldEvent) -> Result<Self, HeldError> {
        let pid = event.tgid;
        // SAFETY: pidfd_open takes a pid and flags, returns an fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(HeldError::Gone(pid));
        }
        // SAFETY: a fresh fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(|_| HeldError::Gone(pid))?) };
        // Checked after opening: if the pid was reused before, the start time differs.
        if start_ticks(pid) != Some(event.hold.start_boottime / NS_PER_TICK) {
            return Err(HeldError::Gone(pid));
        }
        Ok(Self { pidfd, event: *event })
    }

    pub fn event(&self) -> &HoldEvent {
        &self.event
    }

    pub fn key(&self) -> HoldKey {
        hold_key(&self.event)
    }

    /// Whether the process has exited (its pidfd is readable).
    pub fn exited(&self) -> bool {
        let mut fd = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no waiting.
        let ready = unsafe { libc::poll(&raw mut fd, 1, 0) };
        ready > 0
    }

    fn signal(&self, signal: i32) -> Result<(), HeldError> {
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<()>(),
                0,
            )
        };
        if rc < 0 {
            return Err(HeldError::Signal { pid: self.event.tgid, source: io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Lets the held action happen: a restarted syscall finds its approval, a deferred one
    /// succeeds on retry, a stopped exec just goes on.
    pub fn release(&self, enforcer: &mut Enforcer) -> Result<(), HeldError> {
        let (key, nonce) = (self.key(), self.event.hold.nonce);
        match self.event.event_type {
            event_type::STOPPED => {
                enforcer.forget(key, nonce)?;
                self.signal(libc::SIGCONT)?;
            }
            event_type::DEFERRED => {
                enforcer.decide(key, nonce, hold_state::APPROVED)?;
            }
            _ => {
                enforcer.decide(key, nonce, hold_state::APPROVED)?;
                self.signal(libc::SIGCONT)?;
            }
        }
        enforcer.finish(self.event.hold.root)?;
        Ok(())
    }

    /// Refuses the held action: kills the process, or fails the syscall with EPERM.
    pub fn deny(&self, enforcer: &mut Enforcer, on_deny: OnDeny) -> Result<(), HeldError> {
        let (key, nonce) = (self.key(), self.event.hold.nonce);
        let stopped = self.event.event_type == event_type::STOPPED;
        if on_deny == OnDeny::Kill || stopped {
            self.signal(libc::SIGKILL)?;
            enforcer.forget(key, nonce)?;
        } else {
            enforcer.decide(key, nonce, hold_state::DENIED)?;
            if self.event.event_type == event_type::HELD {
                self.signal(libc::SIGCONT)?;
            }
        }
        enforcer.finish(self.event.hold.root)?;
        Ok(())
    }
}
