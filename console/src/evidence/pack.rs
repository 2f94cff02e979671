//! Gathers a period's evidence from one snapshot of the database and writes it as a zip
//! whose entries, order and timestamps depend on the evidence alone.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Cursor, Write as _},
};

use ed25519_dalek::pkcs8::{EncodePublicKey as _, spki::der::pem::LineEnding};
use sha2::{Digest as _, Sha256};
use sqlx::{Any, Row as _, Transaction};
use zip::{CompressionMethod, DateTime, ZipWriter, write::SimpleFileOptions};

use super::{
    CHAIN, EvidenceError, FORMAT, HOLDS, MANIFEST, POLICIES, PUBLIC_KEY, Period, README, SEGMENT, SIGNATURE,
    record::{
        At, ChainState, ConsoleKey, Context, DecisionRecord, FileRecord, HoldEvidence, Manifest,
        PeriodRecord, Status, Times, VerdictName, Vote,
    },
    utc,
};
use crate::{
    audit::AuditEvent,
    keys::Signer,
    people::Credential,
    policies::policies_in_force_in,
    store::{ChainRecord, Store, StoreError, now_ms, verify_audit_in},
};

/// The pack's own README: the control map. `{period}` and `{key_id}` are filled in.
const PACK_README: &str = include_str!("pack-readme.md");

/// Makes the evidence pack of `period`, asked for by `by`, signed by `signer`: the zip's
/// bytes. The whole audit chain is verified first; a broken chain is refused (naming the
/// first bad record), never packed as if whole. The export is audited.
pub async fn export(
    store: &Store,
    signer: &Signer,
    period: Period,
    by: &str,
) -> Result<Vec<u8>, EvidenceError> {
    let mut tx = store.snapshot().await.map_err(StoreError::from)?;
    let head = verify_audit_in(&mut tx).await?;
    let (segment, anchor_seq) = segment(&mut tx, period, head.records).await?;
    let holds = holds(&mut tx, period, &segment, signer).await?;
    let policies = policies_in_force_in(&mut tx, period.from_ms, period.to_ms).await?;
    drop(tx);
    let chain = ChainState {
        anchor_seq,
        first_seq: segment.first().map(|r| r.seq),
        last_seq: segment.last().map(|r| r.seq),
        verified_at: At::new(now_ms()),
        chain_records: head.records,
        chain_head: head.hash,
    };
    let public = signer.public_key();
    let pem = public.to_public_key_pem(LineEnding::LF).map_err(|e| EvidenceError::Write(e.to_string()))?;
    let readme = PACK_README
        .replace("{period}", &format!("{} to {} (exclusive)", utc(period.from_ms), utc(period.to_ms)))
        .replace("{key_id}", signer.key_id());
    let mut files = BTreeMap::from([
        (README, readme.into_bytes()),
        (HOLDS, pretty(&holds)?),
        (POLICIES, pretty(&policies)?),
        (SEGMENT, lines(&segment)?),
        (CHAIN, pretty(&chain)?),
        (PUBLIC_KEY, pem.into_bytes()),
    ]);
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        console: ConsoleKey {
            key_id: signer.key_id().to_owned(),
            public_key: hex::encode(public.as_bytes()),
        },
        period: PeriodRecord { from: At::new(period.from_ms), to: At::new(period.to_ms) },
        exported_at: At::new(now_ms()),
        exported_by: by.to_owned(),
        files: files
            .iter()
            .map(|(path, bytes)| FileRecord {
                path: (*path).to_owned(),
                sha256: hex::encode(Sha256::digest(bytes)),
                bytes: bytes.len() as u64,
            })
            .collect(),
    };
    let manifest = pretty(&manifest)?;
    let signature = signer.sign_evidence_manifest(&manifest);
    files.insert(SIGNATURE, format!("{}\n", hex::encode(signature.to_bytes())).into_bytes());
    files.insert(MANIFEST, manifest);
    let zip = write_zip(&files)?;
    let event = AuditEvent::EvidenceExported {
        by: by.to_owned(),
        from_ms: period.from_ms,
        to_ms: period.to_ms,
        holds: holds.len() as u64,
        audit_records: segment.len() as u64,
        policies: policies.len() as u64,
    };
    store.record(&event).await?;
    Ok(zip)
}

fn pretty(value: &impl serde::Serialize) -> Result<Vec<u8>, EvidenceError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| EvidenceError::Write(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn lines(records: &[ChainRecord]) -> Result<Vec<u8>, EvidenceError> {
    let mut bytes = Vec::new();
    for record in records {
        serde_json::to_writer(&mut bytes, record).map_err(|e| EvidenceError::Write(e.to_string()))?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// `files` as a zip: sorted by name, each deflated, dated 1980-01-01 and mode 0644, so that
/// the same files always make the same bytes.
fn write_zip(files: &BTreeMap<&str, Vec<u8>>) -> Result<Vec<u8>, EvidenceError> {
    let write = |e: zip::result::ZipError| EvidenceError::Write(e.to_string());
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(6))
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in files {
        zip.start_file(*name, options).map_err(write)?;
        zip.write_all(bytes).map_err(|e| EvidenceError::Write(e.to_string()))?;
    }
    Ok(zip.finish().map_err(write)?.into_inner())
}

/// The audit records of `period` and the one just before it, so that the segment chains:
/// every record from the first written in the period to the last, whatever their times
/// (replicas' clocks may disagree a little), and where the segment starts after the
/// trail's first record, that anchor's sequence number. `next_seq` is where the trail ends.
async fn segment(
    tx: &mut Transaction<'_, Any>,
    period: Period,
    next_seq: i64,
) -> Result<(Vec<ChainRecord>, Option<i64>), StoreError> {
    let first: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM audit WHERE at_ms >= $1")
        .bind(period.from_ms)
        .fetch_one(&mut **tx)
        .await?;
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit WHERE at_ms < $1")
        .bind(period.to_ms)
        .fetch_one(&mut **tx)
        .await?;
    let first = first.unwrap_or(next_seq);
    let end = last.filter(|last| *last >= first).unwrap_or(first - 1);
    let records = sqlx::query_as(
        "SELECT seq, at_ms, prev, event, hash FROM audit WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
    )
    .bind((first - 1).max(0))
    .bind(end)
    .fetch_all(&mut **tx)
    .await?;
    Ok((records, (first > 0).then_some(first - 1)))
}

/// The sequence numbers of the records in `segment` about each hold (host, hold id).
fn records_by_hold(segment: &[ChainRecord]) -> HashMap<(String, String), Vec<i64>> {
    let mut by_hold: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for record in segment {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&record.event) else { continue };
        if let (Some(host), Some(hold)) = (event["host"].as_str(), event["hold"].as_str()) {
            by_hold.entry((host.to_owned(), hold.to_owned())).or_default().push(record.seq);
        }
    }
    by_hold
}

/// Every hold requested in `period`, oldest first, with its votes and decision.
async fn holds(
    tx: &mut Transaction<'_, Any>,
    period: Period,
    segment: &[ChainRecord],
    signer: &Signer,
) -> Result<Vec<HoldEvidence>, StoreError> {
    let rows = sqlx::query(
        "SELECT h.host, h.id, h.nonce, h.status, h.closed_reason, h.quorum, h.requested_at_ms,
                h.received_at_ms, h.deadline_ms, h.raised, d.verdict, d.decided_by, d.decided_at_ms,
                d.reason, d.signed, d.credential
         FROM holds h LEFT JOIN decisions d ON d.host = h.host AND d.hold_id = h.id
         WHERE h.requested_at_ms >= $1 AND h.requested_at_ms < $2
         ORDER BY h.requested_at_ms, h.host, h.id",
    )
    .bind(period.from_ms)
    .bind(period.to_ms)
    .fetch_all(&mut **tx)
    .await?;
    let mut votes = approvals(tx, period).await?;
    let mut audit = records_by_hold(segment);
    let public = signer.public_key();
    let mut holds = Vec::with_capacity(rows.len());
    for row in &rows {
        let (host, hold_id): (String, String) = (row.try_get("host")?, row.try_get("id")?);
        let corrupt = |reason: String| StoreError::Corrupt { hold_id: hold_id.clone(), reason };
        let status: String = row.try_get("status")?;
        let status = Status::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status:?}")))?;
        let key = (host.clone(), hold_id.clone());
        let mut hold_votes = votes.remove(&key).unwrap_or_default();
        let decision = match row.try_get::<Option<String>, _>("signed")? {
            None => None,
            Some(signed) => Some(
                DecisionRecord::from_signed(&host, &hold_id, &signed, Some(&public))
                    .map_err(|e| corrupt(format!("its signed decision: {e}")))?,
            ),
        };
        if row.try_get::<Option<String>, _>("verdict")?.as_deref() == Some("deny") {
            let credential: Option<String> = row.try_get("credential")?;
            hold_votes.push(Vote {
                verdict: VerdictName::Deny,
                person: row.try_get("decided_by")?,
                credential: Credential::from_column(credential.as_deref()),
                at: At::new(row.try_get("decided_at_ms")?),
                reason: row.try_get("reason")?,
            });
        }
        let decided: Option<i64> = row.try_get("decided_at_ms")?;
        holds.push(HoldEvidence {
            id: format!("{hold_id}@{host}"),
            nonce: row.try_get::<i64, _>("nonce")?.cast_unsigned(),
            status,
            closed_reason: row.try_get("closed_reason")?,
            quorum: row.try_get("quorum")?,
            times: Times {
                requested: At::new(row.try_get("requested_at_ms")?),
                received: At::new(row.try_get("received_at_ms")?),
                deadline: At::new(row.try_get("deadline_ms")?),
                decided: decided.map(At::new),
            },
            context: Context::from_raised(&hold_id, &row.try_get::<String, _>("raised")?)?,
            votes: hold_votes,
            decision,
            audit_records: audit.remove(&key).unwrap_or_default(),
            host,
            hold_id,
        });
    }
    Ok(holds)
}

/// The approvals of the holds requested in `period`, by hold, oldest first.
async fn approvals(
    tx: &mut Transaction<'_, Any>,
    period: Period,
) -> Result<HashMap<(String, String), Vec<Vote>>, StoreError> {
    let rows = sqlx::query(
        "SELECT a.host, a.hold_id, a.approver, a.approved_at_ms, a.reason, a.credential
         FROM approvals a JOIN holds h ON h.host = a.host AND h.id = a.hold_id
         WHERE h.requested_at_ms >= $1 AND h.requested_at_ms < $2
         ORDER BY a.host, a.hold_id, a.approved_at_ms, a.approver",
    )
    .bind(period.from_ms)
    .bind(period.to_ms)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_hold: HashMap<(String, String), Vec<Vote>> = HashMap::new();
    for row in &rows {
        let credential: Option<String> = row.try_get(5)?;
        by_hold.entry((row.try_get(0)?, row.try_get(1)?)).or_default().push(Vote {
            verdict: VerdictName::Approve,
            person: row.try_get(2)?,
            credential: Credential::from_column(credential.as_deref()),
            at: At::new(row.try_get(3)?),
            reason: row.try_get(4)?,
        });
    }
    Ok(by_hold)
}
