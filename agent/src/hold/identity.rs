//! Which program a held exec runs: the very file version the kernel named, opened and
//! checked, with its canonical path and SHA-256 (cached per file version), without waiting
//! for a freshly written file's change time to settle where a read lease can be had.

use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{self, Read as _},
    os::unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::{HoldEvent, event_type};
use sha2::{Digest as _, Sha256};

use crate::{policy::FileId, sys};

/// How old a file version's change time must be before its content is known to belong to
/// it for good. A write within the same clock tick as the last change would not move the
/// change time; once this much has passed, every write moves it. Kernels keep ctime with
/// at worst jiffy (10 ms) granularity on filesystems that keep sub-second times.
const SETTLE: Duration = Duration::from_millis(20);

/// The same on a filesystem that keeps whole seconds (ext4 with small inodes) or two (FAT):
/// its change times have no sub-second part.
const SETTLE_COARSE: Duration = Duration::from_secs(2);

/// The largest executable hashed; a larger one goes to a person, unverified, rather than
/// keep a judge busy (a sparse file can claim exabytes).
const LARGEST: u64 = 1 << 30;

/// Digests kept at most; the cache is cleared when full (a miss only costs a re-read).
const CACHED_DIGESTS: usize = 16_384;

/// The program a held exec runs.
#[derive(Clone, Debug)]
pub struct Executable {
    pub file: FileId,
    /// Absolute, symlinks resolved, as seen from the host.
    pub path: PathBuf,
    pub sha256: String,
}

/// A read lease on a freshly written executable, held until its change time has settled:
/// while it is held nobody can open the file for writing (an open for writing waits for
/// the lease to end), so the content that was hashed stays the content of that version,
/// and once it ends any write moves the change time and so makes a new version.
#[derive(Debug)]
pub struct Lease {
    file: File,
    until: SystemTime,
}

impl Lease {
    /// Keeps the lease until the file's change time has settled, then lets it go.
    pub fn wait_out(self) {
        if let Ok(left) = self.until.duration_since(SystemTime::now()) {
            std::thread::sleep(left);
        }
        drop(self.file);
    }
}

/// SHA-256 digests by file version, and the contents each rule pattern has named. Shared
/// by the judges that run in parallel: files are read and hashed outside the locks.
#[derive(Default)]
pub struct Digests {
    by_file: Mutex<HashMap<FileId, String>>,
    /// Rule pattern → digests of every file it named since the daemon started, so a copy
    /// made before a flagged program was upgraded is still recognised after.
    named: Mutex<HashMap<String, HashSet<String>>>,
}

/// When `id`'s change time is old enough for its content to be known for good.
/// How long after its change time the content of `id` is known for good.
fn settle(id: FileId) -> Duration {
    if id.changed_ns.is_multiple_of(1_000_000_000) { SETTLE_COARSE } else { SETTLE }
}

/// When the content of `id` is known for good: its change time plus [`settle`], but never
/// later than that long from now (a clock set back must not make it wait for ever).
fn settled_at(id: FileId) -> SystemTime {
    let settle = settle(id);
    (UNIX_EPOCH + Duration::from_nanos(id.changed_ns) + settle).min(SystemTime::now() + settle)
}

impl Digests {
    fn cached(&self, id: FileId) -> Option<String> {
        self.by_file.lock().expect("digests lock").get(&id).cloned()
    }

    fn cache(&self, id: FileId, digest: &str) {
        let mut by_file = self.by_file.lock().expect("digests lock");
        if by_file.len() >= CACHED_DIGESTS {
            by_file.clear();
        }
        by_file.insert(id, digest.to_owned());
    }

    /// The digest of `file`, which must be version `id` before and after it is read: a
    /// file changed meanwhile is an error, never a digest of the wrong content. A version
    /// whose change time has not settled yet is read under a read lease, returned to be
    /// held until it has ([`Lease::wait_out`]); where no lease can be had (someone has the
    /// file open for writing, or the filesystem has no leases), the read waits until then.
    /// `progress` counts the bytes read.
    fn digest(&self, id: FileId, file: File, progress: &AtomicU64) -> io::Result<(String, Option<Lease>)> {
        if let Some(digest) = self.cached(id) {
            return Ok((digest, None));
        }
        let until = settled_at(id);
        let leased = SystemTime::now() < until && sys::take_read_lease(&file);
        if !leased && let Ok(left) = until.duration_since(SystemTime::now()) {
            std::thread::sleep(left);
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut reader = &file;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        if FileId::from_metadata(&file.metadata()?) != id || (leased && !sys::read_lease_held(&file)) {
            return Err(io::Error::other(
                "the file changed, or was opened for writing, while it was being read",
            ));
        }
        let digest = hex::encode(hasher.finalize());
        self.cache(id, &digest);
        Ok((digest, leased.then_some(Lease { file, until })))
    }

    /// The version and digest of the file at `path` now. A version hashed before costs
    /// one `stat` (rule files are looked at on every judgement).
    pub fn of_path(&self, path: &Path) -> io::Result<(FileId, String)> {
        let id = FileId::of(path)?;
        if let Some(digest) = self.cached(id) {
            return Ok((id, digest));
        }
        let file = File::open(path)?;
        let id = FileId::from_metadata(&file.metadata()?);
        let (digest, lease) = self.digest(id, file, &AtomicU64::new(0))?;
        if let Some(lease) = lease {
            lease.wait_out();
        }
        Ok((id, digest))
    }

    /// Whether `sha256` is the content of one of `files`, which `pattern` names now, or of
    /// a file it named before.
    pub fn named_by(&self, pattern: &str, files: &[PathBuf], sha256: &str) -> bool {
        let current: Vec<String> =
            files.iter().filter_map(|f| self.of_path(f).ok()).map(|(_, d)| d).collect();
        let mut named = self.named.lock().expect("digests lock");
        let named = named.entry(pattern.to_owned()).or_default();
        named.extend(current);
        named.contains(sha256)
    }

    /// Identifies the program of an exec hold. Only a file that is verifiably the version
    /// the kernel named is returned; anything else is an error an approver gets to see.
    /// A freshly written file comes with the lease its content was read under, to be held
    /// until its change time has settled ([`Lease::wait_out`]). `progress` counts the bytes
    /// read.
    pub fn identify(
        &self,
        event: &HoldEvent,
        progress: &AtomicU64,
    ) -> Result<(Executable, Option<Lease>), String> {
        let want = FileId::of_action(&event.hold.action);
        let mut tried = Vec::new();
        for candidate in candidates(event) {
            match self.open_as(&candidate, want, progress) {
                Ok(identified) => return Ok(identified),
                Err(e) => tried.push(format!("{}: {e}", candidate.display())),
            }
        }
        if tried.is_empty() {
            return Err("could not verify the executable: its hold record names no path \
                        (a hold picked up after a daemon restart)"
                .into());
        }
        Err(format!("could not verify the executable ({})", tried.join("; ")))
    }

    fn open_as(
        &self,
        candidate: &Path,
        want: FileId,
        progress: &AtomicU64,
    ) -> io::Result<(Executable, Option<Lease>)> {
        let path = std::fs::canonicalize(candidate)?;
        // Never waits on what an agent put there: a FIFO or a device is opened without
        // blocking, then refused.
        let file =
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(&path)?;
        let metadata = file.metadata()?;
        let id = FileId::from_metadata(&metadata);
        if id != want {
            return Err(io::Error::other("not the file version the kernel named"));
        }
        if !metadata.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        if metadata.len() > LARGEST {
            return Err(io::Error::other(format!("{} bytes: too large to hash", metadata.len())));
        }
        let (sha256, lease) = self.digest(id, file, progress)?;
        Ok((Executable { file: id, path, sha256 }, lease))
    }
}

/// Where the executable can be reached from here: the name the process passed, as its
/// root and working directory resolve it, and after an exec that happened, its `exe`.
fn candidates(event: &HoldEvent) -> Vec<PathBuf> {
    let (pid, tid) = (event.tgid, event.tid);
    let named = &event.path[..event.path.iter().position(|&b| b == 0).unwrap_or(event.path.len())];
    let named = Path::new(std::ffi::OsStr::from_bytes(named));
    let mut candidates = Vec::new();
    if event.event_type == event_type::STOPPED {
        candidates.push(PathBuf::from(format!("/proc/{pid}/exe")));
    }
    if !named.as_os_str().is_empty() {
        let base = if named.is_absolute() {
            format!("/proc/{pid}/root")
        } else {
            format!("/proc/{pid}/task/{tid}/cwd")
        };
        candidates.push(Path::new(&base).join(named.strip_prefix("/").unwrap_or(named)));
    }
    candidates
}

#[cfg(test)]
mod tests {
    use std::{fs::OpenOptions, io::Write as _, os::unix::fs::OpenOptionsExt as _};

    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("kt-identify-").tempdir().unwrap()
    }

    /// A program written just now; the file goes with the directory guard.
    fn fresh_file() -> (tempfile::TempDir, PathBuf, FileId) {
        let dir = scratch();
        let path = dir.path().join("program");
        std::fs::write(&path, b"#!/bin/sh\necho fresh\n").unwrap();
        let id = FileId::of(&path).unwrap();
        (dir, path, id)
    }

    fn open_for_writing_at_once(path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path)
    }

    /// A file written a moment ago is hashed at once under a read lease: while the lease
    /// is held nobody can open the file for writing, and once its change time has settled
    /// the lease goes.
    #[test]
    fn a_fresh_file_is_read_under_a_lease_that_keeps_writers_out_until_it_settles() {
        let (_dir, path, id) = fresh_file();
        let digests = Digests::default();
        let read = AtomicU64::new(0);
        let (digest, lease) = digests.digest(id, File::open(&path).unwrap(), &read).unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest(b"#!/bin/sh\necho fresh\n")));
        assert_eq!(read.into_inner(), 21, "every byte read counts as the judge's progress");
        let lease = lease.expect("a fresh file is leased");
        let refused = open_for_writing_at_once(&path).expect_err("a writer must wait for the lease");
        assert_eq!(refused.raw_os_error(), Some(libc::EWOULDBLOCK));
        lease.wait_out();
        assert!(SystemTime::now() >= settled_at(id));
        open_for_writing_at_once(&path).expect("a writer once the lease is gone");
    }

    /// Where a lease cannot be had (someone has the file open for writing), the content is
    /// read only once the change time has settled, as without leases.
    #[test]
    fn a_file_someone_writes_is_read_only_once_settled() {
        let (_dir, path, id) = fresh_file();
        let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
        let digests = Digests::default();
        let (_, lease) = digests.digest(id, File::open(&path).unwrap(), &AtomicU64::new(0)).unwrap();
        assert!(lease.is_none());
        assert!(SystemTime::now() >= settled_at(id));
        writer.write_all(b"echo more\n").unwrap();
        assert_ne!(FileId::of(&path).unwrap(), id, "a write after settling makes a new version");
    }

    /// A file an agent put where a program was expected (a FIFO nobody writes) is opened
    /// without blocking and refused, never waited on.
    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = scratch();
        let fifo = dir.path().join("program");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let id = FileId::of(&fifo).unwrap();
        let refused =
            Digests::default().open_as(&fifo, id, &AtomicU64::new(0)).expect_err("a FIFO is no program");
        assert_eq!(refused.to_string(), "not a regular file");
    }

    /// A change time with no sub-second part comes from a filesystem that keeps whole
    /// seconds (or two): its content is known for good only two seconds on.
    #[test]
    fn coarse_change_times_settle_in_seconds() {
        let fine = FileId { dev: 1, ino: 2, changed_ns: 1_700_000_000_123_456_789 };
        let coarse = FileId { changed_ns: 1_700_000_000_000_000_000, ..fine };
        assert_eq!((settle(fine), settle(coarse)), (SETTLE, SETTLE_COARSE));
        // Never later than that long from now, whatever the change time says.
        let future = FileId { changed_ns: u64::MAX / 2, ..fine };
        assert!(settled_at(future) <= SystemTime::now() + SETTLE);
    }

    /// A version that settled long ago needs no lease and no wait.
    #[test]
    fn a_settled_file_needs_no_lease() {
        let digests = Digests::default();
        let path = Path::new("/bin/sh");
        let file = File::open(path).unwrap();
        let id = FileId::from_metadata(&file.metadata().unwrap());
        let (_, lease) = digests.digest(id, file, &AtomicU64::new(0)).unwrap();
        assert!(lease.is_none());
    }
}
