//! State files the daemon keeps across restarts (tags, grants, policy ids, audited
//! counts), written so that a crash never leaves half a file or loses a finished write: a
//! temporary file beside it, flushed to disk, renamed over the old one, the directory
//! flushed so that the rename lasts.

use std::{fs::File, io::Write as _, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Writes `value` to `path` as JSON, whole or not at all.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(value).with_context(|| path.display().to_string())?;
    write_atomic(path, &json).with_context(|| path.display().to_string())
}

/// Writes `bytes` to `path`, whole or not at all.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path)?;
    File::open(dir)?.sync_all()
}

/// Reads `path` as JSON; a file that does not exist is the default.
pub(crate) fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde::ser::{Error as _, SerializeSeq as _};

    use super::*;

    /// A value whose serialization fails half way, as a crash in the middle of a write
    /// would leave it.
    struct FailsHalfWay;

    impl Serialize for FailsHalfWay {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(None)?;
            seq.serialize_element("written")?;
            Err(S::Error::custom("stopped half way"))
        }
    }

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("kt-state-").tempdir().unwrap()
    }

    #[test]
    fn a_write_stopped_half_way_leaves_the_last_whole_one() {
        let scratch = scratch();
        let dir = scratch.path();
        let path = dir.join("tags.json");
        write_json(&path, &vec!["first"]).unwrap();
        assert!(write_json(&path, &FailsHalfWay).is_err());
        assert_eq!(read_json::<Vec<String>>(&path).unwrap(), ["first"]);
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["tags.json"], "no temporary file is left behind");
    }

    #[test]
    fn a_temporary_file_a_crash_left_is_never_read() {
        let scratch = scratch();
        let dir = scratch.path();
        let path = dir.join("grants.json");
        write_json(&path, &vec![1, 2, 3]).unwrap();
        std::fs::write(dir.join(".tmpAbCdEf"), b"[1, 2").unwrap();
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), [1, 2, 3]);
        assert_eq!(read_json::<Vec<u32>>(&dir.join("absent.json")).unwrap(), Vec::<u32>::new());
    }
}
