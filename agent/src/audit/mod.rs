//! The audit trail: append-only JSON lines, each record hash-chained to the one before,
//! fsynced before anything it records is acted on, rotated by size with the chain intact.

mod event;
pub mod ocsf;

pub use event::{AuditEvent, DecidedBy};

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The hash a chain starts from.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// File holding the last record's sequence number and hash, to detect a cut tail.
const HEAD: &str = "HEAD";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("audit trail {file}:{line}: {reason}")]
    Broken { file: String, line: usize, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_owned(), source }
}

/// One record, as written.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    pub prev: String,
    pub event: serde_json::Value,
    pub hash: String,
}

#[derive(Serialize)]
struct Unsealed<'a> {
    seq: u64,
    time: &'a str,
    prev: &'a str,
    event: &'a serde_json::Value,
}

fn seal(seq: u64, time: &str, prev: &str, event: &serde_json::Value) -> String {
    let body = serde_json::to_vec(&Unsealed { seq, time, prev, event }).expect("records serialize");
    hex::encode(Sha256::digest(body))
}

/// Files of the trail in chain order.
fn files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

fn file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

pub struct Audit {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    size: u64,
    max_size: u64,
    seq: u64,
    prev: String,
}

impl Audit {
    /// Opens the trail in `dir`, continuing its chain. The chain is verified first: a
    /// daemon does not write onto a trail someone has tampered with.
    pub fn open(dir: &Path, max_size: u64) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let (seq, prev) = verify(dir).map(|head| (head.records, head.hash))?;
        let path = files(dir)?.pop().unwrap_or_else(|| dir.join(file_name(0)));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        let size = file.metadata().map_err(io(&path))?.len();
        Ok(Self { dir: dir.to_owned(), file, path, size, max_size, seq, prev })
    }

    /// Appends `events` in order and makes them durable, with one flush to disk, before
    /// returning.
    pub fn record_all<E: Serialize>(
        &mut self,
        events: impl IntoIterator<Item = E>,
    ) -> Result<(), AuditError> {
        for event in events {
            let event = serde_json::to_value(event).expect("audit events serialize");
            if self.size >= self.max_size {
                self.file.sync_data().map_err(io(&self.path))?;
                self.rotate()?;
            }
            let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
            let hash = seal(self.seq, &time, &self.prev, &event);
            let record = Record { seq: self.seq, time, prev: self.prev.clone(), event, hash };
            let mut line = serde_json::to_vec(&record).expect("records serialize");
            line.push(b'\n');
            self.file.write_all(&line).map_err(io(&self.path))?;
            self.size += line.len() as u64;
            self.seq += 1;
            self.prev = record.hash;
        }
        self.file.sync_data().map_err(io(&self.path))?;
        let head = self.dir.join(HEAD);
        fs::write(&head, format!("{} {}\n", self.seq, self.prev)).map_err(io(&head))
    }

    /// Where the trail ends now.
    pub fn head(&self) -> Head {
        Head { records: self.seq, hash: self.prev.clone() }
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let path = self.dir.join(file_name(self.seq));
        self.file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        self.path = path;
        self.size = 0;
        Ok(())
    }
}

/// What a verified trail ends with: how many records, the hash of the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub records: u64,
    pub hash: String,
}

/// Checks every record of the trail in `dir`: sequence, chain and hash. Names the first
/// record that was edited, removed, reordered or cut, or a tail cut off after `HEAD`.
pub fn verify(dir: &Path) -> Result<Head, AuditError> {
    let mut expected_seq = 0;
    let mut prev = GENESIS.to_owned();
    for path in files(dir)? {
        let name = path.display().to_string();
        let reader = BufReader::new(File::open(&path).map_err(io(&path))?);
        for (index, line) in reader.split(b'\n').enumerate() {
            let broken = |reason: String| AuditError::Broken { file: name.clone(), line: index + 1, reason };
            let line = line.map_err(io(&path))?;
            let record: Record =
                serde_json::from_slice(&line).map_err(|e| broken(format!("not a record: {e}")))?;
            if record.seq != expected_seq {
                return Err(broken(format!(
                    "sequence {} where {expected_seq} was due: records removed or reordered",
                    record.seq
                )));
            }
            if record.prev != prev {
                return Err(broken("does not chain to the record before it".into()));
            }
            if seal(record.seq, &record.time, &record.prev, &record.event) != record.hash {
                return Err(broken("contents do not match the record's hash: edited".into()));
            }
            expected_seq += 1;
            prev = record.hash;
        }
    }
    if let Ok(head) = fs::read_to_string(dir.join(HEAD)) {
        let recorded: u64 = head.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        if recorded > expected_seq {
            return Err(AuditError::Broken {
                file: dir.join(HEAD).display().to_string(),
                line: 1,
                reason: format!(
                    "the trail ends at record {expected_seq} but {recorded} were written: truncated"
                ),
            });
        }
    }
    Ok(Head { records: expected_seq, hash: prev })
}

/// The trail in `dir` as it was after its first `records` records (unverified): `None` if
/// it has fewer.
pub fn head_at(dir: &Path, records: u64) -> Result<Option<Head>, AuditError> {
    let Some(seq) = records.checked_sub(1) else {
        return Ok(Some(Head { records: 0, hash: GENESIS.to_owned() }));
    };
    // Files are named by their first record: the one holding `seq` starts at or before it.
    let file = files(dir)?.into_iter().rev().find(|path| {
        path.file_stem()
            .and_then(|stem| stem.to_str()?.strip_prefix("audit-")?.parse::<u64>().ok())
            .is_some_and(|first| first <= seq)
    });
    let Some(path) = file else { return Ok(None) };
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    for (index, line) in text.lines().enumerate() {
        let record: Record = serde_json::from_str(line).map_err(|e| AuditError::Broken {
            file: path.display().to_string(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        if record.seq == seq {
            return Ok(Some(Head { records, hash: record.hash }));
        }
    }
    Ok(None)
}

/// Every record of the trail, in order (unverified: see [`verify`]).
pub fn read_all(dir: &Path) -> Result<Vec<Record>, AuditError> {
    let mut records = Vec::new();
    for path in files(dir)? {
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        for (index, line) in text.lines().enumerate() {
            records.push(serde_json::from_str(line).map_err(|e| AuditError::Broken {
                file: path.display().to_string(),
                line: index + 1,
                reason: e.to_string(),
            })?);
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A trail of `records` test events in a directory removed when the guard drops.
    fn trail(records: u64, max_size: u64) -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix("kt-audit-").tempdir().unwrap();
        let mut audit = Audit::open(dir.path(), max_size).unwrap();
        audit.record_all((0..records).map(|n| json!({"type": "test", "n": n}))).unwrap();
        dir
    }

    fn lines(dir: &Path) -> (PathBuf, Vec<String>) {
        let file = files(dir).unwrap().remove(0);
        let text = fs::read_to_string(&file).unwrap();
        (file, text.lines().map(str::to_owned).collect())
    }

    #[test]
    fn an_intact_trail_verifies_across_rotation_and_reopening() {
        let guard = trail(20, 600);
        let dir = guard.path();
        assert!(files(dir).unwrap().len() > 1, "small max size rotates");
        let mut audit = Audit::open(dir, 600).unwrap();
        audit.record_all([json!({"type": "after-reopen"})]).unwrap();
        let files_before = files(dir).unwrap().len();
        audit.record_all((0..10).map(|n| json!({"type": "batch", "n": n}))).unwrap();
        assert!(files(dir).unwrap().len() > files_before, "a batch rotates as it goes");
        assert_eq!(verify(dir).unwrap().records, 31);
    }

    #[test]
    fn an_edited_record_is_named() {
        let guard = trail(5, 1 << 20);
        let dir = guard.path();
        let (file, mut lines) = lines(dir);
        lines[2] = lines[2].replace("\"n\":2", "\"n\":7");
        fs::write(&file, lines.join("\n") + "\n").unwrap();
        let e = verify(dir).unwrap_err().to_string();
        assert!(e.contains(":3: contents do not match"), "{e}");
    }

    #[test]
    fn removed_reordered_and_truncated_records_are_named() {
        let guard = trail(5, 1 << 20);
        let dir = guard.path();
        let (file, lines) = lines(dir);
        let mut removed = lines.clone();
        removed.remove(1);
        fs::write(&file, removed.join("\n") + "\n").unwrap();
        assert!(verify(dir).unwrap_err().to_string().contains(":2: sequence 2 where 1 was due"));

        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        fs::write(&file, swapped.join("\n") + "\n").unwrap();
        assert!(verify(dir).unwrap_err().to_string().contains(":4: sequence 4 where 3 was due"));

        fs::write(&file, lines[..3].join("\n") + "\n").unwrap();
        assert!(verify(dir).unwrap_err().to_string().contains("truncated"));

        fs::write(&file, lines.join("\n") + "\n{\"seq\":5,").unwrap();
        assert!(verify(dir).unwrap_err().to_string().contains(":6: not a record"));
    }
}
