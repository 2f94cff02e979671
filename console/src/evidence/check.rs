//! Verifies an evidence pack offline, with only the console's public key: the manifest's
//! signature, every file's digest, the audit chain segment and each signed decision.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::{Cursor, Read as _},
};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::{
    CHAIN, EvidenceError, FORMAT, HOLDS, MANIFEST, POLICIES, Period, SEGMENT, SIGNATURE,
    record::{ChainState, Context, DecisionRecord, HoldEvidence, Manifest, Status},
};
use crate::{
    policies::HostPolicy,
    store::{ChainRecord, GENESIS, StoreError, check_chain},
};

/// Largest file a pack may hold once inflated: a crafted zip cannot exhaust memory.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// One thing wrong with a pack, naming the file it is in.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("the pack is not a readable zip: {0}")]
    Unreadable(String),
    #[error("{0}: appears twice in the zip")]
    Duplicate(String),
    #[error("{0}: removed (the manifest lists it)")]
    Removed(String),
    #[error("{0}: added (the manifest does not list it)")]
    Added(String),
    #[error("{0}: edited (its SHA-256 is not the one the manifest lists)")]
    Edited(String),
    #[error(
        "manifest.sig: not a signature of manifest.json by the console key {0}: manifest.json or manifest.sig was edited, or another key signed them"
    )]
    BadSignature(String),
    #[error("manifest.json: names console key {named}, not the key {trusted} you trust")]
    OtherKey { named: String, trusted: String },
    #[error("{path}: {reason}")]
    Malformed { path: String, reason: String },
    #[error("audit/segment.jsonl: {0}")]
    Chain(StoreError),
    #[error("holds.json: hold {id}: {reason}")]
    Hold { id: String, reason: String },
    #[error("policies.json: policy {name} of {host}: its text does not hash to its sha256")]
    Policy { host: String, name: String },
}

/// What a pack that verifies holds.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub manifest: Manifest,
    pub holds: usize,
    /// Holds by what became of them.
    pub by_status: BTreeMap<String, usize>,
    pub votes: usize,
    /// Decisions whose signature verified under the console's key.
    pub decisions: usize,
    pub chain: ChainState,
    /// Records in the segment (the anchor included).
    pub segment_records: usize,
    /// Policy versions in force in the period, each text matching its digest.
    pub policies: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(
            f,
            "evidence pack verified: signed by console key {} ({})",
            m.console.key_id, m.console.public_key
        )?;
        writeln!(f, "period: {} to {} (exclusive)", m.period.from.utc, m.period.to.utc)?;
        writeln!(f, "exported: {} by {}", m.exported_at.utc, m.exported_by)?;
        writeln!(f, "files: {} plus manifest.json and manifest.sig, every digest matches", m.files.len())?;
        let statuses: Vec<String> = self.by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
        writeln!(f, "holds: {} ({})", self.holds, statuses.join(", "))?;
        writeln!(f, "votes: {}; signed decisions verified: {}", self.votes, self.decisions)?;
        let segment = match (self.chain.first_seq, self.chain.last_seq) {
            (Some(first), Some(last)) => format!("records {first} to {last}"),
            _ => "empty".to_owned(),
        };
        writeln!(f, "audit segment: {segment} ({} records), chains and hashes check", self.segment_records)?;
        write!(
            f,
            "whole chain at export: {} records, head {} (verified {})",
            self.chain.chain_records, self.chain.chain_head, self.chain.verified_at.utc
        )
    }
}

/// Verifies the pack `zip` under the console key `key`: every problem found is named, with
/// the file it is in.
pub fn verify(zip: &[u8], key: &VerifyingKey) -> Result<Summary, EvidenceError> {
    let files = read_zip(zip).map_err(|p| EvidenceError::Rejected(vec![p]))?;
    let (manifest, mut problems) = authentic(&files, key);
    let Some(manifest) = manifest.filter(|_| problems.is_empty()) else {
        return Err(EvidenceError::Rejected(problems));
    };
    // Every file is now the console's own: what follows checks what the console claims.
    let summary = contents(&files, manifest, key, &mut problems);
    match summary {
        Some(summary) if problems.is_empty() => Ok(summary),
        _ => Err(EvidenceError::Rejected(problems)),
    }
}

/// The zip's files by name; a name twice is a problem.
fn read_zip(zip: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, Problem> {
    let unreadable = |e: &dyn fmt::Display| Problem::Unreadable(e.to_string());
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).map_err(|e| unreadable(&e))?;
    let mut files = BTreeMap::new();
    for index in 0..archive.len() {
        let file = archive.by_index(index).map_err(|e| unreadable(&e))?;
        if file.is_dir() {
            continue;
        }
        let name = file.name().map_err(|e| unreadable(&e))?.into_owned();
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| unreadable(&e))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(Problem::Unreadable(format!("{name} is over {MAX_FILE_BYTES} bytes")));
        }
        if files.insert(name.clone(), bytes).is_some() {
            return Err(Problem::Duplicate(name));
        }
    }
    Ok(files)
}

/// The manifest, if it parses, and what is wrong with the signature and the files it lists.
fn authentic(files: &BTreeMap<String, Vec<u8>>, key: &VerifyingKey) -> (Option<Manifest>, Vec<Problem>) {
    let mut problems = Vec::new();
    let trusted = hex::encode(key.as_bytes());
    let (Some(manifest), Some(signature)) = (files.get(MANIFEST), files.get(SIGNATURE)) else {
        let missing = [MANIFEST, SIGNATURE].into_iter().filter(|name| !files.contains_key(*name));
        return (None, missing.map(|name| Problem::Removed(name.to_owned())).collect());
    };
    let signed = std::str::from_utf8(signature)
        .ok()
        .and_then(|text| hex::decode(text.trim()).ok())
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .is_some_and(|signature| {
            key.verify_strict(&proto::evidence_manifest_message(manifest), &signature).is_ok()
        });
    if !signed {
        problems.push(Problem::BadSignature(host_client::keys::key_id(key)));
    }
    let manifest: Manifest = match parse(MANIFEST, manifest) {
        Ok(manifest) => manifest,
        Err(problem) => {
            problems.push(problem);
            return (None, problems);
        }
    };
    if manifest.format != FORMAT {
        let reason = format!("format {:?}, not {FORMAT:?}", manifest.format);
        problems.push(Problem::Malformed { path: MANIFEST.to_owned(), reason });
    }
    if manifest.console.public_key != trusted {
        problems.push(Problem::OtherKey {
            named: manifest.console.key_id.clone(),
            trusted: host_client::keys::key_id(key),
        });
    }
    let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    for file in &manifest.files {
        match files.get(&file.path) {
            None => problems.push(Problem::Removed(file.path.clone())),
            Some(bytes) if hex::encode(Sha256::digest(bytes)) != file.sha256 => {
                problems.push(Problem::Edited(file.path.clone()));
            }
            Some(_) => {}
        }
    }
    for name in files.keys().filter(|name| ![MANIFEST, SIGNATURE].contains(&name.as_str())) {
        if !listed.contains(name.as_str()) {
            problems.push(Problem::Added(name.clone()));
        }
    }
    (Some(manifest), problems)
}

fn parse<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::Malformed { path: path.to_owned(), reason: e.to_string() })
}

/// Checks what the (authentic) files claim: the segment chains, each hold's context is the
/// bytes its host sent, each decision's signature verifies.
fn contents(
    files: &BTreeMap<String, Vec<u8>>,
    manifest: Manifest,
    key: &VerifyingKey,
    problems: &mut Vec<Problem>,
) -> Option<Summary> {
    let mut read = |path: &str| {
        let bytes = files.get(path).map(Vec::as_slice);
        if bytes.is_none() {
            problems.push(Problem::Removed(path.to_owned()));
        }
        bytes
    };
    let (chain, segment, holds, policies) = (read(CHAIN)?, read(SEGMENT)?, read(HOLDS)?, read(POLICIES)?);
    let parsed = (|| {
        let chain: ChainState = parse(CHAIN, chain)?;
        let segment = segment
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| parse::<ChainRecord>(SEGMENT, line))
            .collect::<Result<Vec<_>, _>>()?;
        let holds: Vec<HoldEvidence> = parse(HOLDS, holds)?;
        let policies: Vec<HostPolicy> = parse(POLICIES, policies)?;
        Ok::<_, Problem>((chain, segment, holds, policies))
    })();
    let (chain, segment, holds, policies) = parsed.map_err(|p| problems.push(p)).ok()?;
    for policy in &policies {
        if hex::encode(Sha256::digest(policy.text.as_bytes())) != policy.sha256 {
            problems.push(Problem::Policy { host: policy.host.clone(), name: policy.name.clone() });
        }
    }
    check_segment(&chain, &segment, problems);
    let period = Period { from_ms: manifest.period.from.ms, to_ms: manifest.period.to.ms };
    let in_segment: BTreeSet<i64> = segment.iter().map(|r| r.seq).collect();
    for hold in &holds {
        check_hold(hold, period, &in_segment, key, problems);
    }
    let mut by_status = BTreeMap::new();
    for hold in &holds {
        let name = serde_json::to_value(hold.status).ok().and_then(|v| v.as_str().map(str::to_owned));
        *by_status.entry(name.unwrap_or_default()).or_insert(0) += 1;
    }
    Some(Summary {
        holds: holds.len(),
        by_status,
        votes: holds.iter().map(|h| h.votes.len()).sum(),
        decisions: holds.iter().filter(|h| h.decision.is_some()).count(),
        segment_records: segment.len(),
        policies: policies.len(),
        chain,
        manifest,
    })
}

/// The segment runs from its anchor (or the trail's first record) to its last record,
/// each chained to the one before, as the console's own chain check does it.
fn check_segment(chain: &ChainState, segment: &[ChainRecord], problems: &mut Vec<Problem>) {
    let malformed = |reason: String| Problem::Malformed { path: CHAIN.to_owned(), reason };
    let (first, last) = (segment.first().map(|r| r.seq), segment.last().map(|r| r.seq));
    if first != chain.first_seq
        || last != chain.last_seq
        || chain.anchor_seq.is_some_and(|a| first != Some(a))
    {
        problems.push(malformed(format!(
            "the segment runs from {first:?} to {last:?}, not as stated ({:?} to {:?})",
            chain.first_seq, chain.last_seq
        )));
    }
    let Some(start) = segment.first() else { return };
    // The anchor's own link to the records before it is not in the pack: taken as stated,
    // except for the trail's very first record.
    let prev = if start.seq == 0 { GENESIS } else { start.prev.as_str() };
    match check_chain(segment, start.seq, prev) {
        Err(e) => problems.push(Problem::Chain(e)),
        Ok(end) if end.records == chain.chain_records && end.hash != chain.chain_head => {
            problems.push(malformed("the segment ends at the chain's head but not with its hash".into()));
        }
        Ok(_) => {}
    }
}

fn check_hold(
    hold: &HoldEvidence,
    period: Period,
    in_segment: &BTreeSet<i64>,
    key: &VerifyingKey,
    problems: &mut Vec<Problem>,
) {
    let mut wrong = |reason: String| problems.push(Problem::Hold { id: hold.id.clone(), reason });
    if !period.contains(hold.times.requested.ms) {
        wrong(format!("requested at {}, outside the period", hold.times.requested.utc));
    }
    match Context::from_raised(&hold.hold_id, &hold.context.raised) {
        Ok(context) if context == hold.context => {}
        Ok(_) => wrong("its context is not what the host's message says".into()),
        Err(e) => wrong(e.to_string()),
    }
    if let Some(decision) = &hold.decision {
        match DecisionRecord::from_signed(&hold.host, &hold.hold_id, &decision.signed, Some(key)) {
            Ok(signed) if signed == *decision => {}
            Ok(_) => wrong("its decision is not what the signed decision says".into()),
            Err(e) => wrong(format!("its signed decision: {e}")),
        }
    }
    let decided = matches!(hold.status, Status::Approved | Status::Denied);
    if decided != hold.decision.is_some() {
        wrong(format!("status {:?} with{} a decision", hold.status, if decided { "out" } else { "" }));
    }
    if let Some(seq) = hold.audit_records.iter().find(|seq| !in_segment.contains(seq)) {
        wrong(format!("names audit record {seq}, which is not in the segment"));
    }
}
