//! Watches the policy directory with inotify, so that a written, renamed or removed
//! policy file is loaded without a signal; the daemon debounces what this reports.

use std::{
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use tokio::io::{Interest, unix::AsyncFd};

/// What changes a policy file: written and closed, renamed into or out of the directory,
/// removed; and the directory itself going away.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// Events that concern the directory as a whole rather than one file in it.
const WHOLE: u32 = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED | libc::IN_Q_OVERFLOW;

/// An inotify watch on the policy directory.
pub struct PolicyWatch {
    fd: AsyncFd<OwnedFd>,
    dir: PathBuf,
}

impl PolicyWatch {
    /// Starts watching `dir`, which must exist.
    pub fn new(dir: &Path) -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open, the same fd, until dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        let watch = Self { fd, dir: dir.to_owned() };
        watch.add()?;
        Ok(watch)
    }

    fn add(&self) -> io::Result<()> {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
        if wd < 0 {
            return Err(io::Error::other(format!(
                "watching {}: {}",
                self.dir.display(),
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Waits until a policy file (`NAME.toml`) changed, or the directory itself did.
    /// An error means the watch is lost (the directory went away and did not come back).
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut changed = false;
            let mut lost = false;
            let mut buffer = [0u8; 4096];
            while let Ok(read) = guard.try_io(|fd| {
                // SAFETY: reads into a buffer we own, at most its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            }) {
                for (mask, name) in events(&buffer[..read?]) {
                    changed |= mask & WHOLE != 0 || name.ends_with(b".toml");
                    lost |= mask & libc::IN_IGNORED != 0;
                }
            }
            if lost {
                // The directory was removed or replaced: watch whatever is there now.
                self.add()?;
            }
            if changed {
                return Ok(());
            }
        }
    }
}

/// The (mask, name) of each `struct inotify_event` in `buffer`.
fn events(buffer: &[u8]) -> Vec<(u32, &[u8])> {
    const HEADER: usize = size_of::<libc::inotify_event>();
    let mut events = Vec::new();
    let mut at = 0;
    while at + HEADER <= buffer.len() {
        // SAFETY: the kernel wrote whole events; read_unaligned copes with any alignment.
        let event: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buffer[at..].as_ptr().cast::<libc::inotify_event>()) };
        let name_end = (at + HEADER + event.len as usize).min(buffer.len());
        let name = &buffer[at + HEADER..name_end];
        events.push((event.mask, &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())]));
        at = name_end;
    }
    events
}
