//! What approvers read: holds with their full context and what became of them, and the
//! audit trail, filtered and newest first.

use std::fmt::Write as _;

use prost::Message as _;
use proto::v1::{Decision, HoldRaised, SignedDecision};
use sqlx::{FromRow as _, Row as _};

use crate::store::{HoldRecord, Store, StoreError, decode_stored};

/// Most holds or audit records one query returns.
pub const MAX_LIMIT: i64 = 500;

/// Which holds to list; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct HoldFilter {
    pub status: String,
    pub host: String,
    pub agent: String,
    /// Only holds requested before this (paging), when not zero.
    pub before_ms: i64,
    pub limit: i64,
}

/// A hold with everything an approver is shown.
#[derive(Clone, Debug)]
pub struct HoldDetail {
    pub record: HoldRecord,
    /// The full context, as the host raised it.
    pub raised: HoldRaised,
    pub decision: Option<Decision>,
    /// Who approved so far (of a quorum), or who approved in all.
    pub approvers: Vec<String>,
}

/// Which audit records to list; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Words that must appear in the record.
    pub text: String,
    /// Only records before this sequence number (paging), when above zero.
    pub before_seq: i64,
    pub limit: i64,
}

/// One audit record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub event: serde_json::Value,
    pub hash: String,
}

/// A hold's row ([`HoldRecord`]'s columns, by name) with its context and its decision.
const DETAIL: &str =
    "SELECT h.host, h.id, h.nonce, h.kind, h.agent, h.requester, h.policy_rule, h.requested_at_ms,
        h.deadline_ms, h.quorum, h.approvals, h.status, h.closed_reason, h.raised, d.signed
    FROM holds h LEFT JOIN decisions d ON d.host = h.host AND d.hold_id = h.id";

/// `text` for a LIKE pattern that matches it literally anywhere.
fn contains_pattern(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

impl Store {
    /// Holds matching `filter`, newest first.
    pub async fn holds(&self, filter: &HoldFilter) -> Result<Vec<HoldDetail>, StoreError> {
        let rows = sqlx::query(
            &format!(
            "{DETAIL} WHERE ($1 = '' OR h.status = $1) AND ($2 = '' OR h.host = $2) AND ($3 = '' OR h.agent = $3)
               AND ($4 = 0 OR h.requested_at_ms < $4)
             ORDER BY h.requested_at_ms DESC, h.host, h.id LIMIT $5"
        ))
        .bind(&filter.status)
        .bind(&filter.host)
        .bind(&filter.agent)
        .bind(filter.before_ms)
        .bind(filter.limit.clamp(1, MAX_LIMIT))
        .fetch_all(&self.pool)
        .await?;
        let mut holds = Vec::with_capacity(rows.len());
        for row in &rows {
            holds.push(self.detail(row).await?);
        }
        Ok(holds)
    }

    /// One hold with its full context, if the console knows it.
    pub async fn hold_detail(&self, host: &str, hold_id: &str) -> Result<Option<HoldDetail>, StoreError> {
        let row = sqlx::query(&format!("{DETAIL} WHERE h.host = $1 AND h.id = $2"))
            .bind(host)
            .bind(hold_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.detail(&row).await?)),
            None => Ok(None),
        }
    }

    async fn detail(&self, row: &sqlx::any::AnyRow) -> Result<HoldDetail, StoreError> {
        let record = HoldRecord::from_row(row)?;
        let raised: HoldRaised = decode_stored(&record.id, &row.try_get::<String, _>("raised")?)?;
        let decision =
            match row.try_get::<Option<String>, _>("signed")? {
                Some(signed) => {
                    let signed: SignedDecision = decode_stored(&record.id, &signed)?;
                    Some(Decision::decode(signed.decision.as_slice()).map_err(|e| StoreError::Corrupt {
                        hold_id: record.id.clone(),
                        reason: e.to_string(),
                    })?)
                }
                None => None,
            };
        let approvers = match &decision {
            Some(decision) => decision.approvers.clone(),
            None if record.approvals > 0 => {
                sqlx::query_scalar(
                    "SELECT approver FROM approvals WHERE host = $1 AND hold_id = $2 ORDER BY approved_at_ms, approver",
                )
                .bind(&record.host)
                .bind(&record.id)
                .fetch_all(&self.pool)
                .await?
            }
            None => Vec::new(),
        };
        Ok(HoldDetail { record, raised, decision, approvers })
    }

    /// Audit records matching `filter`, newest first (unverified: see [`Store::verify_audit`]).
    pub async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        // Every word must appear: one LIKE each, $2 on ($1 is the paging bound).
        let words: Vec<String> = filter.text.split_whitespace().map(contains_pattern).collect();
        let matches = (2..).take(words.len()).fold(String::new(), |mut sql, n| {
            let _ = write!(sql, " AND event LIKE ${n} ESCAPE '\\'");
            sql
        });
        let sql = format!(
            "SELECT seq, at_ms, event, hash FROM audit WHERE ($1 <= 0 OR seq < $1){matches}
             ORDER BY seq DESC LIMIT ${}",
            words.len() + 2
        );
        let query = words.iter().fold(sqlx::query(&sql).bind(filter.before_seq), sqlx::query::Query::bind);
        let rows = query.bind(filter.limit.clamp(1, MAX_LIMIT)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get(2)?;
                Ok(AuditRecord {
                    seq: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    event: serde_json::from_str(&event).unwrap_or(serde_json::Value::String(event)),
                    hash: row.try_get(3)?,
                })
            })
            .collect()
    }
}
