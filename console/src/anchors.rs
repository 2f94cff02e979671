//! Hosts' audit trails, anchored: each host signs its trail's length and last hash every
//! minute; the console keeps one anchor per length and names a trail cut or rewritten since.

use proto::v1::ChainAnchor;
use serde::Serialize;
use sqlx::Row as _;

use crate::{
    audit::AuditEvent,
    store::{Store, StoreError, audit, now_ms},
};

/// One anchor as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub records: u64,
    pub head: String,
    pub at_ms: u64,
}

/// What the console holds of one host's trail.
#[derive(Debug, Serialize)]
pub struct TrailState {
    pub host: String,
    /// Oldest first.
    pub anchors: Vec<Anchor>,
    /// Oldest first: each names a trail cut or rewritten after an anchor.
    pub findings: Vec<Finding>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub at_ms: i64,
    pub detail: String,
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store {
    /// How many records the latest anchor of `host` covers (0: none).
    pub async fn anchored_records(&self, host: &str) -> Result<u64, StoreError> {
        let records: Option<i64> =
            sqlx::query_scalar("SELECT MAX(records) FROM host_anchors WHERE host = $1")
                .bind(host)
                .fetch_one(&self.pool)
                .await?;
        Ok(records.map_or(0, |r| u64::try_from(r).unwrap_or(0)))
    }

    /// Keeps `anchor` of `host` (its signature checked by the caller), or, when it shows the
    /// trail cut or rewritten after an earlier anchor, keeps and audits that finding instead
    /// and returns it. The same anchor twice (an idle trail) is kept once.
    pub async fn anchor(&self, host: &str, anchor: &ChainAnchor) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin().await?;
        let head_at = async |tx: &mut sqlx::Transaction<'static, sqlx::Any>, records: u64| {
            sqlx::query_scalar::<_, String>("SELECT head FROM host_anchors WHERE host = $1 AND records = $2")
                .bind(host)
                .bind(count(records))
                .fetch_optional(&mut **tx)
                .await
        };
        let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(records) FROM host_anchors WHERE host = $1")
            .bind(host)
            .fetch_one(&mut *tx)
            .await?;
        let latest = latest.map_or(0, |r| u64::try_from(r).unwrap_or(0));
        let mut finding = None;
        if anchor.records < latest {
            finding = Some(format!(
                "truncated: the trail has {} records, but an earlier anchor covered {latest}",
                anchor.records
            ));
        } else if let Some(kept) = head_at(&mut tx, anchor.records).await?
            && kept != anchor.head
        {
            finding = Some(format!(
                "rewritten: record {} hashes to {}, anchored as {kept}",
                anchor.records.saturating_sub(1),
                anchor.head
            ));
        } else if anchor.witness_records > 0
            && let Some(kept) = head_at(&mut tx, anchor.witness_records).await?
            && kept != anchor.witness
        {
            finding = Some(format!(
                "rewritten: record {} hashes to {}, anchored as {kept}",
                anchor.witness_records - 1,
                anchor.witness
            ));
        }
        let now = now_ms();
        if let Some(detail) = &finding {
            let last: Option<String> = sqlx::query_scalar(
                "SELECT detail FROM host_findings WHERE host = $1 ORDER BY at_ms DESC LIMIT 1",
            )
            .bind(host)
            .fetch_optional(&mut *tx)
            .await?;
            // A tampered trail shows at every anchor: one finding until it changes.
            if last.as_ref() != Some(detail) {
                sqlx::query("INSERT INTO host_findings (host, at_ms, detail) VALUES ($1, $2, $3)")
                    .bind(host)
                    .bind(now)
                    .bind(detail)
                    .execute(&mut *tx)
                    .await?;
                let event = AuditEvent::HostTrailTampered { host: host.to_owned(), detail: detail.clone() };
                audit(&mut tx, &event).await?;
            }
        } else {
            sqlx::query(
                "INSERT INTO host_anchors (host, records, head, at_ms, received_at_ms, signature)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (host, records) DO NOTHING",
            )
            .bind(host)
            .bind(count(anchor.records))
            .bind(&anchor.head)
            .bind(count(anchor.at_ms))
            .bind(now)
            .bind(hex::encode(&anchor.signature))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(finding)
    }

    /// What the console holds of every host's trail, by host name.
    pub async fn trail_states(&self) -> Result<Vec<TrailState>, StoreError> {
        let hosts: Vec<String> =
            sqlx::query_scalar("SELECT name FROM hosts ORDER BY name").fetch_all(&self.pool).await?;
        let mut states = Vec::with_capacity(hosts.len());
        for host in hosts {
            states.push(self.trail_state(&host).await?);
        }
        Ok(states)
    }

    /// Every anchor and finding the console holds for `host`.
    pub async fn trail_state(&self, host: &str) -> Result<TrailState, StoreError> {
        let anchors =
            sqlx::query("SELECT records, head, at_ms FROM host_anchors WHERE host = $1 ORDER BY records")
                .bind(host)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(Anchor {
                        records: u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0),
                        head: row.try_get(1)?,
                        at_ms: u64::try_from(row.try_get::<i64, _>(2)?).unwrap_or(0),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?;
        let findings = sqlx::query("SELECT at_ms, detail FROM host_findings WHERE host = $1 ORDER BY at_ms")
            .bind(host)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok(Finding { at_ms: row.try_get(0)?, detail: row.try_get(1)? }))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(TrailState { host: host.to_owned(), anchors, findings })
    }
}
