//! A process the kernel is holding, reached through a pidfd so that a decision can never
//! hit another process that reused its pid.

use std::{
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use agent_common::{Hold, HoldEvent, HoldKey, event_type, hold_state};

use crate::{
    cgroup::{self, CgroupError, Hierarchy},
    kernel::{Enforcer, EnforcerError, monotonic_ns},
    sys::{self, Ending},
};

/// `start_boottime` nanoseconds per `/proc/PID/stat` start-time tick (`USER_HZ` = 100).
pub const NS_PER_TICK: u64 = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("signalling process {pid}: {source}")]
    Signal { pid: u32, source: io::Error },
    #[error(transparent)]
    Enforcer(#[from] EnforcerError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
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
        at_ns: hold.held_at_ns,
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

/// Kills process `pid` if it is still the one that started at `start_ticks` (clock ticks
/// since boot, as `/proc/PID/stat` shows them), and forgets keyturn's stop of it.
pub fn kill(enforcer: &mut Enforcer, pid: u32, start_ticks: u64) -> Result<(), HeldError> {
    let pidfd = sys::pidfd_open(pid).map_err(|_| HeldError::Gone(pid))?;
    if crate::hold::procfs::stat(pid).map(|stat| stat.start_ticks) != Some(start_ticks) {
        return Err(HeldError::Gone(pid));
    }
    enforcer.forget_stop(pid)?;
    sys::pidfd_signal(&pidfd, Ending::Kill).map_err(|source| HeldError::Signal { pid, source })
}

/// The process whose DNS lookup keyturn's resolver holds, pinned by a pidfd and stopped
/// (`SIGSTOP`) by the daemon while the lookup waits. The stop is recorded in `STOPS` as the
/// hooks record theirs, so a daemon that dies meanwhile leaves it to the next one's orphan
/// sweep. Dropped without [`kill`](Self::kill) or [`resume`](Self::resume), it is resumed.
#[derive(Debug)]
pub struct LookupProcess {
    pidfd: OwnedFd,
    pid: u32,
    /// Killed or resumed already.
    ended: bool,
}

impl LookupProcess {
    /// Opens process `pid`, which sent a lookup of the agent under `root`, and stops it.
    /// A process that does not live under `root` (the sender's pid reused since, or the
    /// process moved) is never stopped: [`HeldError::Gone`].
    pub fn stop(
        enforcer: &mut Enforcer,
        hierarchy: &Hierarchy,
        pid: u32,
        root: u64,
    ) -> Result<Self, HeldError> {
        let pidfd = sys::pidfd_open(pid).map_err(|_| HeldError::Gone(pid))?;
        // Checked after opening: the pidfd names the process the cgroup check saw.
        let start_ticks = crate::hold::procfs::stat(pid).ok_or(HeldError::Gone(pid))?.start_ticks;
        if !hierarchy.process_under(pid, root) {
            return Err(HeldError::Gone(pid));
        }
        let stop =
            agent_common::Stop { process_start: start_ticks * NS_PER_TICK, stopped_at_ns: monotonic_ns() };
        enforcer.record_stop(pid, stop)?;
        if let Err(source) = sys::pidfd_stop(&pidfd) {
            let _ = enforcer.forget_stop(pid);
            return Err(HeldError::Signal { pid, source });
        }
        Ok(Self { pidfd, pid, ended: false })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (its pidfd is readable).
    pub fn exited(&self) -> bool {
        sys::readable(&self.pidfd, 0)
    }

    /// Kills the process (its lookup was denied), forgetting keyturn's stop of it first.
    pub fn kill(mut self, enforcer: &mut Enforcer) -> Result<(), HeldError> {
        self.ended = true;
        self.forget_stop(|pid| enforcer.forget_stop(pid).map_err(HeldError::from))?;
        sys::pidfd_signal(&self.pidfd, Ending::Kill)
            .map_err(|source| HeldError::Signal { pid: self.pid, source })
    }

    /// Resumes the process once its lookup is answered; `forget_stop` forgets keyturn's
    /// stop of it first.
    pub fn resume(mut self, forget_stop: impl FnOnce(u32)) -> Result<(), HeldError> {
        self.ended = true;
        self.forget_stop(|pid| {
            forget_stop(pid);
            Ok(())
        })?;
        sys::pidfd_signal(&self.pidfd, Ending::Resume)
            .map_err(|source| HeldError::Signal { pid: self.pid, source })
    }

    /// Forgets keyturn's stop of the process by its pid, unless it exited: its pid may name
    /// another stopped process by now (the orphan sweep removes a stale record).
    fn forget_stop(&self, forget: impl FnOnce(u32) -> Result<(), HeldError>) -> Result<(), HeldError> {
        if self.exited() { Ok(()) } else { forget(self.pid) }
    }
}

impl Drop for LookupProcess {
    fn drop(&mut self) {
        if !self.ended {
            let _ = sys::pidfd_signal(&self.pidfd, Ending::Resume);
        }
    }
}

/// A frozen cgroup a process stopped after exec is kept in until decided.
struct Frozen {
    /// The cgroup the process came from and goes back to.
    home: PathBuf,
    /// Its own frozen child cgroup of `home` (so it stays under the tagged root).
    cell: PathBuf,
    /// `CLOCK_MONOTONIC` nanoseconds once the process was in the frozen cell.
    since_ns: u64,
}

/// A held process, pinned by a pidfd.
pub struct HeldProcess {
    pidfd: OwnedFd,
    event: HoldEvent,
    frozen: Option<Frozen>,
}

impl HeldProcess {
    /// Opens the process named by `event`, checking it is the very process that was held
    /// and, unless any of its threads may retry a deferred hold, that the thread that was
    /// held is still there: a pid or tid reused since never inherits a hold.
    pub fn open(event: &HoldEvent) -> Result<Self, HeldError> {
        let pid = event.tgid;
        let pidfd = sys::pidfd_open(pid).map_err(|_| HeldError::Gone(pid))?;
        // Checked after opening: if the pid was reused before, the start time differs. The
        // kernel's record has both: `/proc/PID/stat` shows the process's, and the thread's
        // own file its own.
        let started = |stat: &Path, start_ns: u64| {
            crate::hold::procfs::stat_at(stat).map(|stat| stat.start_ticks) == Some(start_ns / NS_PER_TICK)
        };
        let (hold, process) = (&event.hold, Path::new("/proc").join(pid.to_string()));
        let thread = process.join("task").join(event.tid.to_string()).join("stat");
        if !started(&process.join("stat"), hold.process_start)
            || (event.event_type != event_type::DEFERRED && !started(&thread, hold.thread_start))
        {
            return Err(HeldError::Gone(pid));
        }
        Ok(Self { pidfd, event: *event, frozen: None })
    }

    pub fn event(&self) -> &HoldEvent {
        &self.event
    }

    pub fn key(&self) -> HoldKey {
        hold_key(&self.event)
    }

    /// Whether the process has exited (its pidfd is readable).
    pub fn exited(&self) -> bool {
        sys::readable(&self.pidfd, 0)
    }

    /// Resumes (`SIGCONT`) or kills (`SIGKILL`) the process, forgetting keyturn's stop of it
    /// first: a hook that stops it again (another of its threads, still held) records that
    /// new stop after this.
    fn end_stop(&self, enforcer: &mut Enforcer, ending: Ending) -> Result<(), HeldError> {
        enforcer.forget_stop(self.event.tgid)?;
        sys::pidfd_signal(&self.pidfd, ending)
            .map_err(|source| HeldError::Signal { pid: self.event.tgid, source })
    }

    /// Whether the process is still the very one that was held: alive behind its pidfd,
    /// and its pid still naming a process with its start time.
    fn still_held(&self) -> bool {
        !self.exited()
            && crate::hold::procfs::stat(self.event.tgid).map(|stat| stat.start_ticks)
                == Some(self.event.hold.process_start / NS_PER_TICK)
    }

    /// For an exec stopped after the fact (`cgroup-sock` mode): moves the process into a
    /// frozen cgroup of its own, where a SIGCONT from anyone else cannot run it. A cgroup
    /// is moved by pid number, so the process is checked before and after: a pid that
    /// came to name another process (the held one was killed) is never left frozen, and
    /// a cell is only made under the hold's tagged root.
    pub fn freeze(&mut self, hierarchy: &Hierarchy) -> Result<(), HeldError> {
        let pid = self.event.tgid;
        if !self.still_held() {
            return Err(HeldError::Gone(pid));
        }
        let name = format!("{}{pid}", crate::hold::orphans::CELL_PREFIX);
        let current = hierarchy.of_process(pid)?;
        if !hierarchy.under(&current, self.event.hold.root) {
            return Err(HeldError::Gone(pid));
        }
        if current.file_name().is_some_and(|n| *n == *name) {
            // Frozen by a daemon that is gone: adopt the cell.
            cgroup::write(&current, "cgroup.freeze", "1")?;
            let home = current.parent().map(PathBuf::from).unwrap_or_default();
            self.frozen = Some(Frozen { home, cell: current, since_ns: monotonic_ns() });
            return Ok(());
        }
        let cell = current.join(name);
        cgroup::create(&cell)?;
        cgroup::write(&cell, "cgroup.freeze", "1")?;
        if let Err(e) = cgroup::move_process(&cell, pid) {
            let _ = cgroup::remove(&cell);
            return Err(e.into());
        }
        if !self.still_held() {
            // Whatever the pid names now goes back where it was, thawed.
            let _ = cgroup::move_process(&current, pid);
            let _ = cgroup::remove(&cell);
            return Err(HeldError::Gone(pid));
        }
        self.frozen = Some(Frozen { home: current, cell, since_ns: monotonic_ns() });
        Ok(())
    }

    /// When the process was frozen, if it was.
    pub fn frozen_since_ns(&self) -> Option<u64> {
        self.frozen.as_ref().map(|f| f.since_ns)
    }

    /// Takes the process out of its frozen cell, back where it came from.
    fn thaw(&self) -> Result<(), HeldError> {
        if let Some(frozen) = &self.frozen {
            cgroup::move_process(&frozen.home, self.event.tgid)?;
            cgroup::remove(&frozen.cell)?;
        }
        Ok(())
    }

    /// Removes the frozen cell once the process has left it (killed, or gone); the cell,
    /// if the process is still leaving it after a moment (a loaded machine), to try later.
    #[must_use = "a cell still there must be removed later"]
    pub fn remove_cell(&self) -> Option<PathBuf> {
        let frozen = self.frozen.as_ref()?;
        for _ in 0..100 {
            if cgroup::remove(&frozen.cell).is_ok() {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Some(frozen.cell.clone())
    }

    /// Lets the held action happen: a restarted syscall finds its approval, a deferred one
    /// succeeds on retry, a stopped exec just goes on.
    pub fn release(&self, enforcer: &mut Enforcer) -> Result<(), HeldError> {
        let (key, nonce) = (self.key(), self.event.hold.nonce);
        if self.event.event_type == event_type::STOPPED {
            enforcer.forget(key, nonce)?;
        } else {
            enforcer.decide(key, nonce, hold_state::APPROVED)?;
        }
        // Decided: its pending slot is free before the process goes on, whose next flagged
        // action must not find it still taken (and be refused as a flood).
        enforcer.finish(self.event.hold.root)?;
        match self.event.event_type {
            event_type::STOPPED => {
                self.thaw()?;
                self.end_stop(enforcer, Ending::Resume)
            }
            event_type::DEFERRED => Ok(()),
            _ => self.end_stop(enforcer, Ending::Resume),
        }
    }

    /// Refuses the held action: kills the process, or fails the syscall with EPERM.
    pub fn deny(&self, enforcer: &mut Enforcer, on_deny: OnDeny) -> Result<(), HeldError> {
        let (key, nonce) = (self.key(), self.event.hold.nonce);
        let stopped = self.event.event_type == event_type::STOPPED;
        if on_deny == OnDeny::Kill || stopped {
            self.end_stop(enforcer, Ending::Kill)?;
            enforcer.forget(key, nonce)?;
            return enforcer.finish(self.event.hold.root).map_err(HeldError::from);
        }
        enforcer.decide(key, nonce, hold_state::DENIED)?;
        // As for a release: the slot is free before the process goes on.
        enforcer.finish(self.event.hold.root)?;
        if self.event.event_type == event_type::HELD {
            self.end_stop(enforcer, Ending::Resume)?;
        }
        Ok(())
    }
}
