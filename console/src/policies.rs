//! The policies each host has in force, as it reports them: every version kept with when
//! the console first and last heard it, for evidence of what was enforced in a period.

use std::collections::HashSet;

use proto::v1::PolicyReport;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::{Any, Row as _, Transaction};

use crate::{
    audit::AuditEvent,
    store::{Store, StoreError, audit, now_ms},
};

/// Most policies one report may name, and the longest text of one.
const MAX_POLICIES: usize = 256;
const MAX_TEXT: usize = 1 << 20;

/// One version of one policy of one host, and when it was in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPolicy {
    pub host: String,
    pub name: String,
    pub sha256: String,
    pub text: String,
    pub from_ms: i64,
    /// `None`: still in force.
    pub until_ms: Option<i64>,
}

/// Why a report was refused.
pub fn malformed(report: &PolicyReport) -> Option<String> {
    if report.policies.len() > MAX_POLICIES {
        return Some(format!("more than {MAX_POLICIES} policies"));
    }
    let mut names = HashSet::new();
    for policy in &report.policies {
        if policy.name.is_empty() || policy.name.len() > 255 || !names.insert(&policy.name) {
            return Some(format!("policy name {:?} is empty, too long or twice", policy.name));
        }
        if policy.text.len() > MAX_TEXT {
            return Some(format!("policy {} is over {MAX_TEXT} bytes", policy.name));
        }
        if hex::encode(Sha256::digest(policy.text.as_bytes())) != policy.sha256 {
            return Some(format!("policy {}: sha256 is not the digest of its text", policy.name));
        }
    }
    None
}

impl Store {
    /// Takes in `host`'s report of its policies in force (checked by [`malformed`]): a
    /// version new to the console starts now, one no longer reported ends now; each such
    /// change is audited.
    pub async fn report_policies(&self, host: &str, report: &PolicyReport) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let open: Vec<(String, String)> =
            sqlx::query("SELECT name, sha256 FROM host_policies WHERE host = $1 AND until_ms IS NULL")
                .bind(host)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
        let reported: HashSet<(&str, &str)> =
            report.policies.iter().map(|p| (p.name.as_str(), p.sha256.as_str())).collect();
        for (name, sha256) in &open {
            if !reported.contains(&(name.as_str(), sha256.as_str())) {
                sqlx::query(
                    "UPDATE host_policies SET until_ms = $1
                     WHERE host = $2 AND name = $3 AND sha256 = $4 AND until_ms IS NULL",
                )
                .bind(now)
                .bind(host)
                .bind(name)
                .bind(sha256)
                .execute(&mut *tx)
                .await?;
                let event = AuditEvent::HostPolicyRetired {
                    host: host.to_owned(),
                    policy: name.clone(),
                    sha256: sha256.clone(),
                };
                audit(&mut tx, &event).await?;
            }
        }
        for policy in &report.policies {
            if open.iter().any(|(name, sha256)| *name == policy.name && *sha256 == policy.sha256) {
                continue;
            }
            sqlx::query(
                "INSERT INTO host_policies (host, name, sha256, text, from_ms, until_ms)
                 VALUES ($1, $2, $3, $4, $5, NULL)",
            )
            .bind(host)
            .bind(&policy.name)
            .bind(&policy.sha256)
            .bind(&policy.text)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let event = AuditEvent::HostPolicyInForce {
                host: host.to_owned(),
                policy: policy.name.clone(),
                sha256: policy.sha256.clone(),
            };
            audit(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every policy version of every host in force at some time in `[from_ms, to_ms)`.
    pub async fn policies_in_force(&self, from_ms: i64, to_ms: i64) -> Result<Vec<HostPolicy>, StoreError> {
        let mut tx = self.snapshot().await.map_err(StoreError::from)?;
        policies_in_force_in(&mut tx, from_ms, to_ms).await
    }
}

/// [`Store::policies_in_force`], read in `tx` (an evidence pack's one snapshot).
pub(crate) async fn policies_in_force_in(
    tx: &mut Transaction<'_, Any>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<HostPolicy>, StoreError> {
    {
        let rows = sqlx::query(
            "SELECT host, name, sha256, text, from_ms, until_ms FROM host_policies
             WHERE from_ms < $1 AND (until_ms IS NULL OR until_ms > $2) ORDER BY host, name, from_ms",
        )
        .bind(to_ms)
        .bind(from_ms)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HostPolicy {
                    host: row.try_get(0)?,
                    name: row.try_get(1)?,
                    sha256: row.try_get(2)?,
                    text: row.try_get(3)?,
                    from_ms: row.try_get(4)?,
                    until_ms: row.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
