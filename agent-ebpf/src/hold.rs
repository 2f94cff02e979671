//! The hold: one decision procedure shared by every hook. Given an action and what the
//! policy says of it, either let it through, refuse it, or stop the process and ask.

use agent_common::{
    Action, Hold, HoldEvent, HoldKey, PolicyDefaults, Stop, capacity, counter, event_type, hold_state,
    verdict,
};

use crate::{
    kernel,
    maps::{CONFIG, COUNTERS, EVENTS, HOLDS, HOLDS_FINISHED, HOLDS_STARTED, POLICIES, STOPS},
    tag::Tagged,
};

/// How the calling hook can make a process wait.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// SIGSTOP now and fail with -ERESTARTNOINTR: the syscall restarts after SIGCONT and
    /// runs this hook again (LSM hooks, `sock_addr` hooks on kernels that allow signals).
    Restart,
    /// Fail with EPERM now; an approval lets the same action of the same process succeed
    /// when it retries (`sock_addr` hooks on kernels that do not allow signals).
    Retry,
    /// SIGSTOP after the fact, nothing to restart (exec seen at `sched_process_exec`).
    Stopped,
}

/// What the hook must do with the syscall.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Refuse,
    /// The process was signalled to stop; a restartable hook returns -ERESTARTNOINTR.
    Held,
}

pub fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, this program cannot be re-entered on this CPU.
        unsafe { *value += 1 };
    }
}

/// The policy's defaults, or holds for everything if the policy slot is missing.
pub fn policy_defaults(policy: u32) -> PolicyDefaults {
    POLICIES.get(policy).copied().unwrap_or(PolicyDefaults { exec: verdict::HOLD, egress: verdict::HOLD })
}

/// Applies `policy_verdict` to `action` for the current task under `tagged`.
/// `path` is the kernel pointer to the executable's name for exec holds, 0 otherwise.
#[inline(always)]
pub fn enforce(
    tagged: &Tagged,
    action: &Action,
    policy_verdict: u32,
    waiting: Waiting,
    path: u64,
) -> Outcome {
    match policy_verdict {
        verdict::ALLOW => return Outcome::Allow,
        verdict::HOLD => {}
        _ => {
            count(counter::DENIED);
            return Outcome::Refuse;
        }
    }
    let (tgid, tid) = kernel::current_ids();
    let key = HoldKey { tgid, tid: if waiting == Waiting::Retry { 0 } else { tid } };
    let Ok((thread_start, process_start)) = kernel::current_start_times() else {
        count(counter::HOLD_TABLE_REFUSED);
        return Outcome::Refuse;
    };

    if let Some(existing) = HOLDS.get_ptr(key) {
        // SAFETY: the record is only replaced whole; fields are read by value.
        let existing = unsafe { &*existing };
        // A deferred hold is the process's (any of its threads may retry: an io_uring
        // retry may run on another io-wq worker); any other hold is one thread's.
        let same_holder = existing.process_start == process_start
            && (waiting == Waiting::Retry || existing.thread_start == thread_start);
        if same_holder {
            if existing.action == *action {
                return decided(&key, existing, waiting);
            }
            if waiting == Waiting::Retry {
                // One deferred request at a time per process: never drop a pending one.
                count(counter::HOLD_TABLE_REFUSED);
                return Outcome::Refuse;
            }
        }
        // Otherwise the record is a dead process's (pid reused) or this thread moved on
        // from an undecided action: the new hold replaces it and user space closes the old.
    }

    if !daemon_alive() {
        count(counter::DAEMON_ABSENT);
        return Outcome::Refuse;
    }
    if !claim_slot(tagged.root, tagged.tag.max_pending) {
        count(counter::FLOOD_REFUSED);
        return Outcome::Refuse;
    }
    let Some(mut entry) = EVENTS.reserve::<HoldEvent>(0) else {
        release_slot(tagged.root);
        count(counter::RINGBUF_FULL);
        return Outcome::Refuse;
    };
    let kind = match waiting {
        Waiting::Restart => event_type::HELD,
        Waiting::Retry => event_type::DEFERRED,
        Waiting::Stopped => event_type::STOPPED,
    };
    let hold = Hold {
        action: *action,
        nonce: kernel::random_u64(),
        thread_start,
        process_start,
        root: tagged.root,
        held_at_ns: kernel::now_ns(),
        decided_at_ns: 0,
        state: hold_state::PENDING,
        event_type: kind,
        rogue_reported: 0,
        padding: 0,
    };
    if HOLDS.insert(key, hold, 0).is_err() {
        entry.discard(0);
        release_slot(tagged.root);
        count(counter::HOLD_TABLE_REFUSED);
        return Outcome::Refuse;
    }
    if waiting != Waiting::Retry && !stop_current(tgid, process_start) {
        let _ = HOLDS.remove(key);
        entry.discard(0);
        release_slot(tagged.root);
        count(counter::SIGNAL_FAILED);
        return Outcome::Refuse;
    }
    fill_event(entry.as_mut_ptr(), kind, tagged, &hold, path);
    entry.submit(0);
    count(counter::HOLDS);
    if waiting == Waiting::Retry { Outcome::Refuse } else { Outcome::Held }
}

/// A restart (or retry) of an action that already has a hold record.
#[inline(always)]
fn decided(key: &HoldKey, hold: &Hold, waiting: Waiting) -> Outcome {
    match hold.state {
        hold_state::APPROVED => {
            let _ = HOLDS.remove(key);
            count(counter::RELEASED);
            Outcome::Allow
        }
        hold_state::PENDING if waiting != Waiting::Retry => {
            // Resumed by a SIGCONT that was not keyturn's: stop it again, same hold.
            if !stop_current(key.tgid, hold.process_start) {
                count(counter::SIGNAL_FAILED);
                return Outcome::Refuse;
            }
            report_rogue_continue(key, key.tgid);
            Outcome::Held
        }
        hold_state::PENDING => Outcome::Refuse,
        _ => {
            let _ = HOLDS.remove(key);
            count(counter::DENIED);
            Outcome::Refuse
        }
    }
}

/// Counts a SIGCONT that was not keyturn's at the hold of `key` (for process `tgid`), and
/// tells user space the first time only (best effort: the hold itself was reported
/// already), so that a flood of them cannot crowd real holds out of the ring buffer.
pub fn report_rogue_continue(key: &HoldKey, tgid: u32) {
    count(counter::ROGUE_CONTINUE);
    let Some(hold) = HOLDS.get_ptr_mut(key) else { return };
    // SAFETY: a pointer into the map value, read and written as whole fields.
    let hold = unsafe { &mut *hold };
    if hold.rogue_reported != 0 {
        return;
    }
    hold.rogue_reported = 1;
    let (hold, tid) = (*hold, key.tid);
    if let Some(mut entry) = EVENTS.reserve::<HoldEvent>(0) {
        let event = entry.as_mut_ptr();
        // SAFETY: `event` points to a reserved record; unset fields are zeroed first.
        unsafe {
            core::ptr::write_bytes(event, 0, 1);
            (*event).event_type = event_type::ROGUE_CONTINUE;
            (*event).hold = hold;
            (*event).at_ns = kernel::now_ns();
            (*event).tgid = tgid;
            (*event).tid = tid;
        }
        entry.submit(0);
    }
}

/// Stops the current process and records the stop in `STOPS`; `true` only if the kernel
/// queued the signal. The record is written first: a stop keyturn made is never unrecorded.
fn stop_current(tgid: u32, process_start: u64) -> bool {
    let stop = Stop { process_start, stopped_at_ns: kernel::now_ns() };
    if STOPS.insert(tgid, stop, 0).is_err() {
        return false;
    }
    kernel::signal_current(kernel::SIGSTOP)
}

fn daemon_alive() -> bool {
    CONFIG.get(0).is_some_and(|config| {
        kernel::now_ns().saturating_sub(config.heartbeat_ns) <= config.liveness_timeout_ns
    })
}

/// Takes one of the `max_pending` hold slots of `root`: counted first, checked after, so
/// CPUs racing for the last slot cannot both get it (both may lose: that fails closed).
/// A pending hold is one started (`HOLDS_STARTED`, the hooks') and not yet finished
/// (`HOLDS_FINISHED`, user space's).
fn claim_slot(root: u64, max_pending: u32) -> bool {
    if HOLDS_STARTED.get_ptr_mut(root).is_none() {
        let _ = HOLDS_STARTED.insert(root, 0, u64::from(aya_ebpf::bindings::BPF_NOEXIST));
    }
    let Some(started) = HOLDS_STARTED.get_ptr_mut(root) else { return false };
    atomic_add(started, 1);
    // SAFETY: u64 reads of map values; `started` points into a map value.
    let (started_now, finished) =
        unsafe { (core::ptr::read_volatile(started), HOLDS_FINISHED.get(root).copied().unwrap_or(0)) };
    if started_now.saturating_sub(finished) > u64::from(max_pending) {
        atomic_add(started, u64::MAX);
        return false;
    }
    true
}

/// Gives back a slot [`claim_slot`] took for a hold that could not be raised.
fn release_slot(root: u64) {
    if let Some(started) = HOLDS_STARTED.get_ptr_mut(root) {
        atomic_add(started, u64::MAX);
    }
}

/// Adds `delta` (wrapping: `u64::MAX` subtracts one) to a map value shared between CPUs
/// (`BPF_XADD`).
#[cfg(target_arch = "bpf")]
fn atomic_add(value: *mut u64, delta: u64) {
    // SAFETY: `value` points into a map value. The BPF target has no
    // `AtomicU64::fetch_add`, so the intrinsic is used directly.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(value, delta)
    };
}

/// Host builds (clippy, tests) only: the same through `AtomicU64`.
#[cfg(not(target_arch = "bpf"))]
fn atomic_add(value: *mut u64, delta: u64) {
    // SAFETY: `value` points into a map value, valid and aligned for u64.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(value) }
        .fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

#[inline(always)]
fn fill_event(event: *mut HoldEvent, kind: u32, tagged: &Tagged, hold: &Hold, path: u64) {
    let (tgid, tid) = kernel::current_ids();
    let (uid, gid) = kernel::current_creds();
    // SAFETY: `event` points to a reserved ring buffer record of the right size.
    unsafe {
        (*event).event_type = kind;
        (*event).policy = tagged.tag.policy;
        (*event).hold = *hold;
        (*event).at_ns = kernel::now_ns();
        (*event).cgroup = kernel::current_cgroup();
        (*event).tgid = tgid;
        (*event).tid = tid;
        (*event).uid = uid;
        (*event).gid = gid;
        (*event).comm = kernel::current_comm();
        (*event).path[0] = 0;
        if path != 0 {
            let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(
                path as *const u8,
                &mut (&mut (*event).path)[..capacity::PATH_BYTES],
            );
        }
    }
}
