//! Watches the policy directory with inotify, so that a written, renamed or removed
//! policy file is loaded without a signal; the daemon debounces what this reports.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::{Interest, unix::AsyncFd};

/// What changes a policy file: written and closed, renamed into or out of the directory,
/// removed; and the directory itself going away.
const MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// Events that concern the directory as a whole rather than one file in it.
const WHOLE: AddWatchFlags = AddWatchFlags::IN_DELETE_SELF
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_IGNORED)
    .union(AddWatchFlags::IN_Q_OVERFLOW);

/// The inotify instance, as the runtime polls it.
struct Watched(Inotify);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify watch on the policy directory.
pub struct PolicyWatch {
    inotify: AsyncFd<Watched>,
    dir: PathBuf,
}

impl PolicyWatch {
    /// Starts watching `dir`, which must exist.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the AsyncFd owns the inotify instance, so its fd stays open, the same fd,
        // until the AsyncFd is dropped.
        let inotify = unsafe { AsyncFd::register_with_interest(Watched(inotify), Interest::READABLE) }?;
        let watch = Self { inotify, dir: dir.to_owned() };
        watch.add()?;
        Ok(watch)
    }

    fn add(&self) -> io::Result<()> {
        self.inotify
            .get_ref()
            .0
            .add_watch(&self.dir, MASK)
            .map(drop)
            .map_err(|e| io::Error::other(format!("watching {}: {e}", self.dir.display())))
    }

    /// Waits until a policy file (`NAME.toml`) changed, or the directory itself did.
    /// An error means the watch is lost (the directory went away and did not come back).
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.inotify.readable().await?;
            let mut changed = false;
            let mut lost = false;
            while let Ok(events) = guard.try_io(|inotify| Ok(inotify.get_ref().0.read_events()?)) {
                for event in events? {
                    let is_policy =
                        event.name.as_ref().is_some_and(|name| name.as_encoded_bytes().ends_with(b".toml"));
                    changed |= event.mask.intersects(WHOLE) || is_policy;
                    lost |= event.mask.contains(AddWatchFlags::IN_IGNORED);
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
