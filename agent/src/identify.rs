//! Which program a held exec runs: the very file version the kernel named, opened and
//! checked, with its canonical path and SHA-256 (cached per file version).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, Read as _},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::{HoldEvent, event_type};
use sha2::{Digest as _, Sha256};

use crate::policy::FileId;

/// How old a file version's change time must be before its content is trusted to belong
/// to it. A write within the same clock tick as the last change would not move the change
/// time; once this much has passed, every write moves it. Kernels keep ctime with at
/// worst jiffy (10 ms) granularity.
const SETTLE: Duration = Duration::from_millis(20);

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

/// SHA-256 digests by file version, and the contents each rule pattern has named.
#[derive(Default)]
pub struct Digests {
    by_file: HashMap<FileId, String>,
    /// Rule pattern → digests of every file it named since the daemon started, so a copy
    /// made before a flagged program was upgraded is still recognised after.
    named: HashMap<String, HashSet<String>>,
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Digests {
    /// The digest of `file`, which must be version `id` before and after it is read: a
    /// file changed meanwhile is an error, never a digest of the wrong content.
    fn digest(&mut self, id: FileId, file: &mut File) -> io::Result<String> {
        if let Some(digest) = self.by_file.get(&id) {
            return Ok(digest.clone());
        }
        let settled_at = id.changed_ns.saturating_add(u64::try_from(SETTLE.as_nanos()).unwrap_or(u64::MAX));
        std::thread::sleep(Duration::from_nanos(settled_at.saturating_sub(realtime_ns())).min(SETTLE));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        if FileId::from_metadata(&file.metadata()?) != id {
            return Err(io::Error::other("the file changed while it was being read"));
        }
        let digest = hex::encode(hasher.finalize());
        if self.by_file.len() >= CACHED_DIGESTS {
            self.by_file.clear();
        }
        self.by_file.insert(id, digest.clone());
        Ok(digest)
    }

    /// The version and digest of the file at `path` now. A version hashed before costs
    /// one `stat` (rule files are looked at on every judgement).
    pub fn of_path(&mut self, path: &Path) -> io::Result<(FileId, String)> {
        let id = FileId::of(path)?;
        if let Some(digest) = self.by_file.get(&id) {
            return Ok((id, digest.clone()));
        }
        let mut file = File::open(path)?;
        let id = FileId::from_metadata(&file.metadata()?);
        Ok((id, self.digest(id, &mut file)?))
    }

    /// Whether `sha256` is the content of one of `files`, which `pattern` names now, or of
    /// a file it named before.
    pub fn named_by(&mut self, pattern: &str, files: &[PathBuf], sha256: &str) -> bool {
        let current: Vec<String> =
            files.iter().filter_map(|f| self.of_path(f).ok()).map(|(_, d)| d).collect();
        let named = self.named.entry(pattern.to_owned()).or_default();
        named.extend(current);
        named.contains(sha256)
    }

    /// Identifies the program of an exec hold. Only a file that is verifiably the version
    /// the kernel named is returned; anything else is an error an approver gets to see.
    pub fn identify(&mut self, event: &HoldEvent) -> Result<Executable, String> {
        let want = FileId::of_action(&event.hold.action);
        let mut tried = Vec::new();
        for candidate in candidates(event) {
            match self.open_as(&candidate, want) {
                Ok(executable) => return Ok(executable),
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

    fn open_as(&mut self, candidate: &Path, want: FileId) -> io::Result<Executable> {
        let path = std::fs::canonicalize(candidate)?;
        let mut file = File::open(&path)?;
        let id = FileId::from_metadata(&file.metadata()?);
        if id != want {
            return Err(io::Error::other("not the file version the kernel named"));
        }
        let sha256 = self.digest(id, &mut file)?;
        Ok(Executable { file: id, path, sha256 })
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
