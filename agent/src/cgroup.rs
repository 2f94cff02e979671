//! The cgroup v2 hierarchy: where it is mounted, cgroup ids, creating, moving, removing.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NotMounted,
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup path {0:?} must be relative to the cgroup v2 root and stay inside it")]
    BadPath(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

/// The mounted cgroup v2 hierarchy.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo` (never assumed to be /sys/fs/cgroup).
    pub fn find() -> Result<Self, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_error(Path::new("/proc/self/mountinfo")))?;
        mountinfo
            .lines()
            .find_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                (after.split_whitespace().next()? == "cgroup2")
                    .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .map(|root| Self { root })
            .ok_or(CgroupError::NotMounted)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `relative` (such as `system.slice/agent.service`), refusing `..`.
    pub fn dir(&self, relative: &str) -> Result<PathBuf, CgroupError> {
        let relative = relative.trim_start_matches('/');
        if Path::new(relative).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(CgroupError::BadPath(relative.into()));
        }
        Ok(self.root.join(relative))
    }

    /// The path of `dir` relative to the root, as users write it.
    pub fn relative(&self, dir: &Path) -> String {
        dir.strip_prefix(&self.root).unwrap_or(dir).to_string_lossy().into_owned()
    }

    /// The cgroup v2 directory of process `pid`.
    pub fn of_process(&self, pid: u32) -> Result<PathBuf, CgroupError> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let content = fs::read_to_string(&file).map_err(io_error(&file))?;
        let relative = content
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or_else(|| CgroupError::Io { path: file.clone(), source: ErrorKind::NotFound.into() })?;
        Ok(self.root.join(relative.trim_start_matches('/')))
    }

    /// Whether the cgroup `dir` is the one whose id is `root`, or below it.
    pub fn under(&self, dir: &Path, root: u64) -> bool {
        dir.ancestors()
            .take_while(|dir| dir.starts_with(&self.root))
            .any(|dir| id(dir).is_ok_and(|id| id == root))
    }

    /// Whether process `pid` lives in the cgroup whose id is `root`, or below it.
    pub fn process_under(&self, pid: u32, root: u64) -> bool {
        self.of_process(pid).is_ok_and(|dir| self.under(&dir, root))
    }
}

/// The kernel's id of the cgroup at `dir`: the inode number of its directory.
pub fn id(dir: &Path) -> Result<u64, CgroupError> {
    fs::metadata(dir).map(|m| m.ino()).map_err(io_error(dir))
}

pub fn create(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(io_error(dir)(e)),
        _ => Ok(()),
    }
}

/// Moves process `pid` (all its threads) into the cgroup at `dir`.
pub fn move_process(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    write(dir, "cgroup.procs", &pid.to_string())
}

/// Writes `value` to the control file `file` of the cgroup at `dir`.
pub fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(io_error(&path))
}

/// Removes an empty cgroup (and its empty descendants).
pub fn remove(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&entry.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error(dir)(e)),
        _ => Ok(()),
    }
}
