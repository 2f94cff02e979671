//! Reads from kernel memory and the current task, through helpers only. Struct field
//! offsets come from user space (`OFFSETS`), resolved from the running kernel's BTF.

use agent_common::KernelOffsets;
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated,
    },
};

/// Offsets of the kernel fields the hooks read; overridden by the loader.
#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    binprm_file: 0,
    binprm_filename: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    super_block_dev: 0,
    task_start_boottime: 0,
    socket_type: 0,
    socket_state: 0,
    socket_sk: 0,
    sock_family: 0,
    sock_daddr: 0,
    sock_v6_daddr: 0,
    sock_dport: 0,
    msghdr_name: 0,
    task_tgid: 0,
    task_group_leader: 0,
    task_flags: 0,
    task_io_uring: 0,
    inode_ctime_sec: 0,
    inode_ctime_nsec: 0,
});

pub const SIGKILL: u32 = 9;
pub const SIGSTOP: u32 = 19;
pub const SIGCONT: i32 = 18;
pub const EPERM: i32 = 1;
/// The kernel restarts a syscall that fails with this, after any stop has ended.
pub const ERESTARTNOINTR: i32 = 513;

pub fn offsets() -> KernelOffsets {
    OFFSETS.load()
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    if base == 0 {
        return Err(0);
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }
}

/// `(tgid, tid)` of the current task.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "the helper packs two u32s into a u64")]
pub fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// `(uid, gid)` of the current task.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "the helper packs two u32s into a u64")]
pub fn current_creds() -> (u32, u32) {
    let uid_gid = bpf_get_current_uid_gid();
    (uid_gid as u32, (uid_gid >> 32) as u32)
}

pub fn current_comm() -> [u8; 16] {
    bpf_get_current_comm().unwrap_or([0; 16])
}

/// The `start_boottime` of the current thread and of its process (the thread group
/// leader's): each, with its id, names one thread or process for ever.
#[inline(always)]
pub fn current_start_times() -> Result<(u64, u64), i32> {
    // SAFETY: plain helper call.
    let task = unsafe { generated::bpf_get_current_task() };
    let offsets = offsets();
    let leader: u64 = read(task, offsets.task_group_leader)?;
    Ok((read(task, offsets.task_start_boottime)?, read(leader, offsets.task_start_boottime)?))
}

/// `task_struct.flags` bit of io_uring's own threads: io-wq workers and the SQPOLL thread.
const PF_IO_WORKER: u32 = 0x10;

/// Whether the current thread works for io_uring or has submitted to it, so that the call
/// being decided may be an io_uring request: those complete with the syscall's error in
/// their completion entry, and -ERESTARTNOINTR would reach the application instead of
/// restarting anything. Unreadable task fields count as io_uring (the safe answer).
#[inline(always)]
pub fn current_uses_io_uring() -> bool {
    // SAFETY: plain helper call.
    let task = unsafe { generated::bpf_get_current_task() };
    let offsets = offsets();
    let Ok(flags) = read::<u32>(task, offsets.task_flags) else { return true };
    if flags & PF_IO_WORKER != 0 {
        return true;
    }
    offsets.task_io_uring != agent_common::ABSENT && read::<u64>(task, offsets.task_io_uring) != Ok(0)
}

pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { generated::bpf_ktime_get_ns() }
}

pub fn random_u64() -> u64 {
    // SAFETY: plain helper calls.
    unsafe {
        (u64::from(generated::bpf_get_prandom_u32()) << 32) | u64::from(generated::bpf_get_prandom_u32())
    }
}

pub fn current_cgroup() -> u64 {
    // SAFETY: plain helper call.
    unsafe { generated::bpf_get_current_cgroup_id() }
}

/// Id of the current task's cgroup ancestor at `level` (0 is the root), 0 past its depth.
pub fn ancestor_cgroup(level: i32) -> u64 {
    // SAFETY: plain helper call.
    unsafe { generated::bpf_get_current_ancestor_cgroup_id(level) }
}

/// Sends `signal` to the current thread (a SIGSTOP still stops its whole process); `true`
/// only if the kernel queued it. Never process-wide: while another thread's SIGSTOP is
/// still pending for the process, a second one is merged into it without marking this
/// thread, which then returns -ERESTARTNOINTR (513) to user space instead of stopping.
pub fn signal_current(signal: u32) -> bool {
    // SAFETY: plain helper call.
    unsafe { generated::bpf_send_signal_thread(signal) == 0 }
}
