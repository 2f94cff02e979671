//! Exec hooks: hold the exec of an executable user space has flagged or not yet judged,
//! identified by its file (device, inode, change time), not by the name it was called by.

use agent_common::{Action, ExecKey, kind};
use aya_ebpf::programs::BtfTracePointContext;

use crate::{
    hold::{self, Outcome, Waiting},
    kernel,
    maps::EXEC_RULES,
    tag::{self, Tagged},
};

/// Nanoseconds fit in 30 bits; higher bits of `i_ctime_nsec` are flags on newer kernels
/// (multigrain timestamps mark a queried ctime there).
const NSEC_MASK: u32 = (1 << 30) - 1;

/// The file identity and name of the executable behind a `struct linux_binprm *`.
fn executable(binprm: u64) -> Result<(Action, u64), i32> {
    let offsets = kernel::offsets();
    let file: u64 = kernel::read(binprm, offsets.binprm_file)?;
    let inode: u64 = kernel::read(file, offsets.file_inode)?;
    let ino: u64 = kernel::read(inode, offsets.inode_ino)?;
    let super_block: u64 = kernel::read(inode, offsets.inode_sb)?;
    let dev: u32 = kernel::read(super_block, offsets.super_block_dev)?;
    let ctime_sec: u64 = kernel::read(inode, offsets.inode_ctime_sec)?;
    let ctime_nsec: u32 = kernel::read(inode, offsets.inode_ctime_nsec)?;
    let changed_ns = ctime_sec.wrapping_mul(1_000_000_000).wrapping_add(u64::from(ctime_nsec & NSEC_MASK));
    let filename: u64 = kernel::read(binprm, offsets.binprm_filename)?;
    Ok((Action { kind: kind::EXEC, dev, ino, changed_ns, ..Action::default() }, filename))
}

/// The verdict user space recorded for this very file (its identity includes the change
/// time), else the policy's default, which the daemon sets to `HOLD`: ask user space.
fn verdict(tagged: &Tagged, action: &Action) -> u32 {
    let key = ExecKey {
        policy: tagged.tag.policy,
        dev: action.dev,
        ino: action.ino,
        changed_ns: action.changed_ns,
    };
    // SAFETY: u32 values replaced whole by user space.
    unsafe { EXEC_RULES.get(key) }.copied().unwrap_or_else(|| hold::policy_defaults(tagged.tag.policy).exec)
}

/// Decides an exec that can still be failed or restarted (`bprm_check_security`).
/// A binprm that cannot be read is refused: an unidentified program is never allowed.
pub fn check(binprm: u64) -> Outcome {
    let Some(tagged) = tag::current() else {
        return Outcome::Allow;
    };
    let Ok((action, filename)) = executable(binprm) else {
        return Outcome::Refuse;
    };
    hold::enforce(&tagged, &action, verdict(&tagged, &action), Waiting::Restart, filename)
}

/// `cgroup-sock` mode, where no LSM can fail the exec: the new image is loaded but has
/// not run one instruction. A flagged one is stopped; one that must be refused is killed.
pub fn after_exec(ctx: &BtfTracePointContext) -> Outcome {
    let Some(tagged) = tag::current() else {
        return Outcome::Allow;
    };
    let binprm: u64 = ctx.arg(2);
    let outcome = match executable(binprm) {
        Ok((action, filename)) => {
            hold::enforce(&tagged, &action, verdict(&tagged, &action), Waiting::Stopped, filename)
        }
        Err(_) => Outcome::Refuse,
    };
    if outcome == Outcome::Refuse {
        hold::count(agent_common::counter::EXEC_KILLED);
        kernel::signal_current(kernel::SIGKILL);
    }
    outcome
}

/// `cgroup-sock` mode: a SIGCONT sent to a process whose exec hold is still pending is not
/// keyturn's (keyturn decides the hold before it sends one). It cannot be blocked here, so
/// it is reported at once and user space kills the process.
pub fn signal_generated(ctx: &BtfTracePointContext) {
    let signal: i32 = ctx.arg(0);
    if signal != kernel::SIGCONT {
        return;
    }
    let task: u64 = ctx.arg(2);
    let Ok(tgid) = kernel::read::<u32>(task, kernel::offsets().task_tgid) else {
        return;
    };
    // After exec the execing thread is the leader: its tid is the tgid.
    let key = agent_common::HoldKey { tgid, tid: tgid };
    // SAFETY: the record is read by value.
    if let Some(hold) = unsafe { crate::maps::HOLDS.get(key) }
        && hold.state == agent_common::hold_state::PENDING
        && hold.event_type == agent_common::event_type::STOPPED
    {
        hold::report_rogue_continue(&key, tgid);
    }
}
