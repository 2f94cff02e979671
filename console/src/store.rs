//! The console's storage: hosts, holds, decisions, approvals and a hash-chained audit trail,
//! in one SQL dialect that SQLite and PostgreSQL both run, chosen by the database URL.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;
use proto::v1::{Decision, HoldKind, HoldRaised, Scope, SignedDecision, Verdict};
use sha2::{Digest as _, Sha256};
use sqlx::{
    Any, AnyPool, Row as _, Transaction,
    any::{AnyPoolOptions, install_default_drivers},
    postgres::PgListener,
};
use tokio::sync::broadcast;

use crate::{
    audit::{AuditEvent, Vote},
    keys::Signer,
    people::Credential,
};

/// The PostgreSQL channel that carries "hold X of host H was decided" between replicas.
const CHANNEL: &str = "keyturn_decisions";
/// How many decision events a slow session may fall behind before it re-reads the database.
const EVENT_BACKLOG: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {0:?}: only sqlite:// and postgres:// are supported")]
    Scheme(String),
    #[error("database URL {0:?}: an in-memory SQLite database differs per pooled connection; name a file")]
    InMemory(String),
    #[error("connecting to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("host {host} is enrolled with key {enrolled}, and offered key {offered}")]
    KeyMismatch { host: String, enrolled: String, offered: String },
    #[error("host {0} is not enrolled: it needs a bootstrap token")]
    NotEnrolled(String),
    #[error("host {0} presented a certificate other than the one it was issued")]
    CertificateMismatch(String),
    #[error("bootstrap token refused for host {0}: unknown, used, expired or for another host")]
    BadToken(String),
    #[error("no hold {hold_id} on host {host}")]
    UnknownHold { host: String, hold_id: String },
    #[error("hold {hold_id} on host {host} is already decided: {status}")]
    AlreadyDecided { host: String, hold_id: String, status: String },
    #[error("hold {hold_id} on host {host} is past its deadline")]
    Expired { host: String, hold_id: String },
    #[error("{person} started the agent of hold {hold_id} and cannot approve it")]
    SelfApproval { person: String, hold_id: String },
    #[error("{person} has already approved hold {hold_id}")]
    AlreadyApproved { person: String, hold_id: String },
    #[error("a decision, token or session must name a person")]
    Anonymous,
    #[error("a chat account acts as a viewer or an approver, not as {0}")]
    ChatRole(crate::people::Role),
    #[error("person {0:?}: at most 256 bytes, without spaces, control or invisible characters")]
    ChatPerson(String),
    #[error("a decision must approve or deny")]
    NoVerdict,
    #[error("a stored decision for hold {hold_id} does not decode: {reason}")]
    Corrupt { hold_id: String, reason: String },
    #[error("audit record {seq}: {reason}")]
    AuditBroken { seq: i64, reason: String },
    #[error("a sign-in under way does not read or write as JSON: {0}")]
    KeptLogin(#[source] serde_json::Error),
}

/// Which database the URL named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What the replicas tell each other (and each host session).
#[derive(Clone, Debug)]
pub enum Event {
    /// Hold `hold_id` of `host` has its decision in the database.
    Decided { host: String, hold_id: String },
    /// Events may have been lost: re-read what you wait for.
    Resync,
}

/// What became of a `HoldRaised`.
#[derive(Debug)]
pub enum Raised {
    /// First time the console hears of it.
    New,
    /// Known and still waiting.
    Pending,
    /// Decided while the host was away: here is the decision to send again.
    Decided(SignedDecision),
    /// Expired or closed: nothing will come.
    Finished(String),
    /// The host reused a hold id with another nonce: refused.
    NonceMismatch,
}

/// The result of a decision request.
#[derive(Debug)]
pub enum Outcome {
    Decided(SignedDecision),
    /// The approval is recorded; the hold needs more distinct approvers.
    AwaitingQuorum {
        approvals: i64,
        quorum: i64,
    },
}

/// What an approver asks for.
#[derive(Clone, Debug)]
pub struct DecisionRequest {
    pub host: String,
    pub hold_id: String,
    pub verdict: Verdict,
    pub scope: Scope,
    pub duration_secs: u64,
    pub reason: String,
    /// The authenticated person deciding (the caller vouches for it).
    pub decided_by: String,
    /// How they proved who they are.
    pub credential: Credential,
}

/// One hold as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct HoldRecord {
    pub host: String,
    pub id: String,
    pub nonce: i64,
    pub kind: String,
    pub agent: String,
    pub requester: String,
    pub policy_rule: String,
    pub requested_at_ms: i64,
    pub deadline_ms: i64,
    pub quorum: i64,
    pub approvals: i64,
    pub status: String,
    pub closed_reason: Option<String>,
}

/// The end of a verified audit trail.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub records: i64,
    pub hash: String,
}

/// Aborts the PostgreSQL listener when the last handle on the store goes.
struct ListenerTask(tokio::task::JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    events: broadcast::Sender<Event>,
    _listener: Option<Arc<ListenerTask>>,
}

pub fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A stored millisecond count from a protobuf `uint64` (times past year 292 million clamp).
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn seal(seq: i64, at_ms: i64, prev: &str, event: &str) -> String {
    hex::encode(Sha256::digest(format!("{seq}\n{at_ms}\n{prev}\n{event}")))
}

fn kind_name(kind: i32) -> &'static str {
    match HoldKind::try_from(kind) {
        Ok(HoldKind::Exec) => "exec",
        Ok(HoldKind::Egress) => "egress",
        _ => "unknown",
    }
}

/// Appends `event` to the audit trail inside `tx`, chained to the record before it.
pub(crate) async fn audit(tx: &mut Transaction<'_, Any>, event: &AuditEvent) -> Result<(), sqlx::Error> {
    // Updating the head first takes its lock: concurrent appends, from any replica, queue here.
    let head =
        sqlx::query("UPDATE audit_head SET next_seq = next_seq + 1 WHERE id = 1 RETURNING next_seq, hash")
            .fetch_one(&mut **tx)
            .await?;
    let seq: i64 = head.try_get::<i64, _>(0)? - 1;
    let prev: String = head.try_get(1)?;
    let at = now_ms();
    let text = event.to_text();
    let hash = seal(seq, at, &prev, &text);
    sqlx::query("INSERT INTO audit (seq, at_ms, prev, event, hash) VALUES ($1, $2, $3, $4, $5)")
        .bind(seq)
        .bind(at)
        .bind(&prev)
        .bind(&text)
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(&hash).execute(&mut **tx).await?;
    Ok(())
}

/// A message about `hold_id` stored as the hex of its encoding.
pub(crate) fn decode_stored<M: prost::Message + Default>(hold_id: &str, text: &str) -> Result<M, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { hold_id: hold_id.to_owned(), reason };
    let bytes = hex::decode(text).map_err(|e| corrupt(e.to_string()))?;
    M::decode(bytes.as_slice()).map_err(|e| corrupt(e.to_string()))
}

impl Store {
    /// Connects to `url` (`sqlite://PATH?mode=rwc`, `postgres://…`) and brings its schema
    /// up to date. On PostgreSQL it also listens for the decisions other replicas make.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            if url.contains(":memory:") || url.contains("mode=memory") {
                return Err(StoreError::InMemory(url.to_owned()));
            }
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Scheme(url.to_owned()));
        };
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Writers queue for the lock (BEGIN IMMEDIATE) instead of failing.
                        sqlx::query("PRAGMA busy_timeout = 30000").execute(&mut *connection).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(StoreError::Connect)?;
        if backend == Backend::Sqlite {
            // Readers (the API, host sessions) never wait for a writer, nor writers for them.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let listener = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let mut listener = PgListener::connect(url).await.map_err(StoreError::Connect)?;
                listener.listen(CHANNEL).await?;
                Some(Arc::new(ListenerTask(tokio::spawn(relay(listener, events.clone())))))
            }
        };
        Ok(Self { pool, backend, events, _listener: listener })
    }

    /// A transaction. On SQLite it takes the write lock at once: one that read first and
    /// then wrote could fail with `SQLITE_BUSY` when another writer got there in between.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Decision events from this replica and, on PostgreSQL, from every other one.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Records that `host` connected with the key `fingerprint`. Over mutual TLS
    /// (`certificate` is the SHA-256 of the one it presented) the host must be enrolled with
    /// that key and that certificate. Over plaintext, the first connection pins the key and
    /// a later one with another key is refused.
    pub async fn host_connected(
        &self,
        host: &str,
        fingerprint: &str,
        version: &str,
        certificate: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        if certificate.is_none() {
            let inserted = sqlx::query(
                "INSERT INTO hosts (name, key_fingerprint, agent_version, first_seen_ms, last_seen_ms)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (name) DO NOTHING",
            )
            .bind(host)
            .bind(fingerprint)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                let event = AuditEvent::HostEnrolled {
                    host: host.to_owned(),
                    key: fingerprint.to_owned(),
                    certificate: None,
                };
                audit(&mut tx, &event).await?;
                tx.commit().await?;
                return Ok(());
            }
        }
        let row = sqlx::query("SELECT key_fingerprint, certificate_sha256 FROM hosts WHERE name = $1")
            .bind(host)
            .fetch_optional(&mut *tx)
            .await?;
        let refusal = match row {
            None => Some(StoreError::NotEnrolled(host.to_owned())),
            Some(row) => {
                let (enrolled, issued): (String, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
                if enrolled != fingerprint {
                    Some(StoreError::KeyMismatch {
                        host: host.to_owned(),
                        enrolled,
                        offered: fingerprint.to_owned(),
                    })
                } else if certificate.is_some() && issued.as_deref() != certificate {
                    Some(StoreError::CertificateMismatch(host.to_owned()))
                } else {
                    None
                }
            }
        };
        if let Some(refusal) = refusal {
            let event = AuditEvent::HostRefused {
                host: host.to_owned(),
                key: fingerprint.to_owned(),
                why: refusal.to_string(),
            };
            audit(&mut tx, &event).await?;
            tx.commit().await?;
            return Err(refusal);
        }
        sqlx::query("UPDATE hosts SET last_seen_ms = $2, agent_version = $3 WHERE name = $1")
            .bind(host)
            .bind(now)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes a one-time bootstrap token for `host`, valid for `ttl`. Only its hash is kept.
    pub async fn issue_token(&self, host: &str, ttl: Duration) -> Result<String, StoreError> {
        let mut bytes = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let token = hex::encode(bytes);
        let now = now_ms();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO enrolment_tokens (token_sha256, host, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(hex::encode(Sha256::digest(&token)))
        .bind(host)
        .bind(now)
        .bind(expires)
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, &AuditEvent::TokenIssued { host: host.to_owned(), expires_at_ms: expires }).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Spends `token` (once, unexpired, issued for `host`) to enrol `host` with the key
    /// `fingerprint` and the certificate `certificate` (SHA-256 of its DER). Re-enrolling
    /// a host replaces its key and certificate: a token is an operator's say-so.
    pub async fn enrol(
        &self,
        host: &str,
        token: &str,
        fingerprint: &str,
        certificate: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let spent = sqlx::query(
            "UPDATE enrolment_tokens SET used_at_ms = $3
             WHERE token_sha256 = $1 AND host = $2 AND used_at_ms IS NULL AND expires_at_ms > $3",
        )
        .bind(hex::encode(Sha256::digest(token)))
        .bind(host)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent != 1 {
            audit(
                &mut tx,
                &AuditEvent::EnrolmentRefused { host: host.to_owned(), key: fingerprint.to_owned() },
            )
            .await?;
            tx.commit().await?;
            return Err(StoreError::BadToken(host.to_owned()));
        }
        sqlx::query(
            "INSERT INTO hosts (name, key_fingerprint, agent_version, first_seen_ms, last_seen_ms, certificate_sha256)
             VALUES ($1, $2, '', $3, $3, $4)
             ON CONFLICT (name) DO UPDATE
             SET key_fingerprint = excluded.key_fingerprint, certificate_sha256 = excluded.certificate_sha256",
        )
        .bind(host)
        .bind(fingerprint)
        .bind(now)
        .bind(certificate)
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::HostEnrolled {
            host: host.to_owned(),
            key: fingerprint.to_owned(),
            certificate: Some(certificate.to_owned()),
        };
        audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a hold reported by `host`, once: a hold sent again after a reconnection is
    /// answered with what became of it.
    pub async fn raise(&self, host: &str, hold: &HoldRaised) -> Result<Raised, StoreError> {
        let mut tx = self.begin().await?;
        let kind = kind_name(hold.kind);
        let inserted = sqlx::query(
            "INSERT INTO holds (host, id, nonce, kind, agent, requester, policy_rule, requested_at_ms,
                                deadline_ms, quorum, received_at_ms, raised)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (host, id) DO NOTHING",
        )
        .bind(host)
        .bind(&hold.id)
        .bind(hold.nonce.cast_signed())
        .bind(kind)
        .bind(&hold.agent)
        .bind(&hold.requester)
        .bind(&hold.policy_rule)
        .bind(ms(hold.requested_at_ms))
        .bind(ms(hold.deadline_ms))
        .bind(i64::from(hold.quorum.max(1)))
        .bind(now_ms())
        .bind(hex::encode(hold.encode_to_vec()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            let event = AuditEvent::HoldRaised {
                host: host.to_owned(),
                hold: hold.id.clone(),
                kind: kind.to_owned(),
                agent: hold.agent.clone(),
                rule: hold.policy_rule.clone(),
            };
            audit(&mut tx, &event).await?;
            tx.commit().await?;
            return Ok(Raised::New);
        }
        drop(tx);
        let row = sqlx::query(
            "SELECT h.nonce, h.status, d.signed FROM holds h
             LEFT JOIN decisions d ON d.host = h.host AND d.hold_id = h.id
             WHERE h.host = $1 AND h.id = $2",
        )
        .bind(host)
        .bind(&hold.id)
        .fetch_one(&self.pool)
        .await?;
        let (nonce, status, signed): (i64, String, Option<String>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if nonce != hold.nonce.cast_signed() {
            return Ok(Raised::NonceMismatch);
        }
        Ok(match (status.as_str(), signed) {
            ("pending", _) => Raised::Pending,
            (_, Some(signed)) => Raised::Decided(decode_stored(&hold.id, &signed)?),
            _ => Raised::Finished(status),
        })
    }

    /// Records that `host` closed its hold `hold_id` (decided, timed out, process gone…).
    /// A hold still pending becomes `closed`: no decision can be made on it any more.
    pub async fn close(&self, host: &str, hold_id: &str, nonce: u64, reason: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE holds SET status = CASE status WHEN 'pending' THEN 'closed' ELSE status END,
                              closed_reason = $4
             WHERE host = $1 AND id = $2 AND nonce = $3 AND closed_reason IS NULL",
        )
        .bind(host)
        .bind(hold_id)
        .bind(nonce.cast_signed())
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            let event = AuditEvent::HoldClosed {
                host: host.to_owned(),
                hold: hold_id.to_owned(),
                reason: reason.to_owned(),
            };
            audit(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks every pending hold past its deadline `expired`; returns how many.
    pub async fn expire(&self) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE holds SET status = 'expired' WHERE status = 'pending' AND deadline_ms <= $1 RETURNING host, id",
        )
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let (host, id): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            audit(&mut tx, &AuditEvent::HoldExpired { host, hold: id }).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Decides a hold, signed by `signer`. The hold moves out of `pending` in one
    /// conditional UPDATE, so of two deciders, on any replicas, exactly one wins; the
    /// other gets [`StoreError::AlreadyDecided`]. An approval of a hold that needs a quorum
    /// is recorded until enough distinct people have approved.
    #[expect(clippy::too_many_lines, reason = "one transaction: claim, quorum, sign, store, audit, notify")]
    pub async fn decide(&self, signer: &Signer, request: &DecisionRequest) -> Result<Outcome, StoreError> {
        let DecisionRequest { host, hold_id, verdict, .. } = request;
        let approve = match verdict {
            Verdict::Approve => true,
            Verdict::Deny => false,
            Verdict::Unspecified => return Err(StoreError::NoVerdict),
        };
        if request.decided_by.trim().is_empty() {
            return Err(StoreError::Anonymous);
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        // Approvals count up (under the row's lock) until the quorum; a denial decides.
        let claim = if approve {
            "UPDATE holds SET approvals = approvals + 1
             WHERE host = $1 AND id = $2 AND status = 'pending' AND deadline_ms > $3
             RETURNING nonce, requester, quorum, approvals"
        } else {
            "UPDATE holds SET status = 'denied'
             WHERE host = $1 AND id = $2 AND status = 'pending' AND deadline_ms > $3
             RETURNING nonce, requester, quorum, approvals"
        };
        let Some(row) =
            sqlx::query(claim).bind(host).bind(hold_id).bind(now).fetch_optional(&mut *tx).await?
        else {
            drop(tx);
            return Err(self.why_not_pending(host, hold_id, now).await);
        };
        let (nonce, requester, quorum, approvals): (i64, String, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let mut approvers = Vec::new();
        if approve {
            // Email addresses are compared without regard to case, as providers do.
            if !requester.is_empty() && requester.eq_ignore_ascii_case(&request.decided_by) {
                return Err(StoreError::SelfApproval { person: requester, hold_id: hold_id.clone() });
            }
            approvers = self.add_approval(&mut tx, request, now).await?;
            if approvals < quorum {
                let event = AuditEvent::ApprovalRecorded {
                    host: host.clone(),
                    hold: hold_id.clone(),
                    by: request.decided_by.clone(),
                    approvals,
                    quorum,
                };
                audit(&mut tx, &event).await?;
                tx.commit().await?;
                return Ok(Outcome::AwaitingQuorum { approvals, quorum });
            }
            sqlx::query("UPDATE holds SET status = 'approved' WHERE host = $1 AND id = $2")
                .bind(host)
                .bind(hold_id)
                .execute(&mut *tx)
                .await?;
        }
        let decision = Decision {
            hold_id: hold_id.clone(),
            nonce: nonce.cast_unsigned(),
            host: host.clone(),
            verdict: (*verdict).into(),
            scope: request.scope.into(),
            duration_secs: request.duration_secs,
            reason: request.reason.clone(),
            decided_by: request.decided_by.clone(),
            decided_at_ms: now.cast_unsigned(),
            approvers,
            quorum: u32::try_from(quorum).unwrap_or(u32::MAX),
        };
        let signed = signer.sign(&decision);
        let verdict_name = if approve { "approve" } else { "deny" };
        sqlx::query(
            "INSERT INTO decisions (host, hold_id, verdict, decided_by, decided_at_ms, reason, signed, credential)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(host)
        .bind(hold_id)
        .bind(verdict_name)
        .bind(&request.decided_by)
        .bind(now)
        .bind(&request.reason)
        .bind(hex::encode(signed.encode_to_vec()))
        .bind(request.credential.to_column())
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::Decided {
            host: host.clone(),
            hold: hold_id.clone(),
            verdict: if approve { Vote::Approve } else { Vote::Deny },
            scope: request.scope.as_str_name().to_owned(),
            by: request.decided_by.clone(),
            approvers: decision.approvers.clone(),
            reason: request.reason.clone(),
            key: signed.key_id.clone(),
        };
        audit(&mut tx, &event).await?;
        if self.backend == Backend::Postgres {
            // Delivered to every replica's listener when, and only if, this commits.
            let payload = serde_json::json!({"host": host, "hold": hold_id}).to_string();
            sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if self.backend == Backend::Sqlite {
            // No subscriber (no host connected here) is not an error.
            let _ = self.events.send(Event::Decided { host: host.clone(), hold_id: hold_id.clone() });
        }
        Ok(Outcome::Decided(signed))
    }

    /// Records `request`'s approver for its hold (whose row `tx` has locked); all approvers so far.
    async fn add_approval(
        &self,
        tx: &mut Transaction<'_, Any>,
        request: &DecisionRequest,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let approvers: Vec<String> = sqlx::query_scalar(
            "SELECT approver FROM approvals WHERE host = $1 AND hold_id = $2 ORDER BY approved_at_ms, approver",
        )
        .bind(&request.host)
        .bind(&request.hold_id)
        .fetch_all(&mut **tx)
        .await?;
        if approvers.iter().any(|a| a.eq_ignore_ascii_case(&request.decided_by)) {
            return Err(StoreError::AlreadyApproved {
                person: request.decided_by.clone(),
                hold_id: request.hold_id.clone(),
            });
        }
        sqlx::query(
            "INSERT INTO approvals (host, hold_id, approver, approved_at_ms, reason, credential)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&request.host)
        .bind(&request.hold_id)
        .bind(&request.decided_by)
        .bind(now)
        .bind(&request.reason)
        .bind(request.credential.to_column())
        .execute(&mut **tx)
        .await?;
        Ok(approvers.into_iter().chain([request.decided_by.clone()]).collect())
    }

    /// Why a decision on `hold_id` found no pending hold to claim.
    async fn why_not_pending(&self, host: &str, hold_id: &str, now: i64) -> StoreError {
        let row = sqlx::query("SELECT status, deadline_ms FROM holds WHERE host = $1 AND id = $2")
            .bind(host)
            .bind(hold_id)
            .fetch_optional(&self.pool)
            .await;
        let (host, hold_id) = (host.to_owned(), hold_id.to_owned());
        match row {
            Err(e) => e.into(),
            Ok(None) => StoreError::UnknownHold { host, hold_id },
            Ok(Some(row)) => {
                let status: String = row.try_get(0).unwrap_or_default();
                let deadline: i64 = row.try_get(1).unwrap_or_default();
                if status == "pending" && deadline <= now || status == "expired" {
                    StoreError::Expired { host, hold_id }
                } else {
                    StoreError::AlreadyDecided { host, hold_id, status }
                }
            }
        }
    }

    /// The signed decision on `hold_id` of `host`, once there is one.
    pub async fn decision(&self, host: &str, hold_id: &str) -> Result<Option<SignedDecision>, StoreError> {
        let signed: Option<String> =
            sqlx::query_scalar("SELECT signed FROM decisions WHERE host = $1 AND hold_id = $2")
                .bind(host)
                .bind(hold_id)
                .fetch_optional(&self.pool)
                .await?;
        signed.map(|s| decode_stored(hold_id, &s)).transpose()
    }

    /// Hold `hold_id` of `host` as its host raised it, with its full context.
    pub async fn raised(&self, host: &str, hold_id: &str) -> Result<Option<HoldRaised>, StoreError> {
        let raised: Option<String> =
            sqlx::query_scalar("SELECT raised FROM holds WHERE host = $1 AND id = $2")
                .bind(host)
                .bind(hold_id)
                .fetch_optional(&self.pool)
                .await?;
        raised.map(|r| decode_stored(hold_id, &r)).transpose()
    }

    /// One hold, if the console knows it.
    pub async fn hold(&self, host: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT host, id, nonce, kind, agent, requester, policy_rule, requested_at_ms, deadline_ms,
                    quorum, approvals, status, closed_reason
             FROM holds WHERE host = $1 AND id = $2",
        )
        .bind(host)
        .bind(hold_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Appends one record to the audit trail on its own (a refused request, say).
    pub async fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        audit(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A read-only transaction that sees one snapshot of the database: records, head and
    /// holds read in it agree with each other, whatever commits meanwhile.
    pub(crate) async fn snapshot(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN").await,
            Backend::Postgres => {
                self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await
            }
        }
    }

    /// Checks the whole audit trail: sequence, chain, hashes, and that it ends where the
    /// head says (nothing cut off). Names the first bad record.
    pub async fn verify_audit(&self) -> Result<AuditHead, StoreError> {
        // One snapshot for the records and the head: an append committed in between would
        // otherwise make a sound trail look cut off.
        verify_audit_in(&mut self.snapshot().await?).await
    }
    /// The audit events, oldest first (unverified: see [`Store::verify_audit`]).
    pub async fn audit_events(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let events: Vec<String> =
            sqlx::query_scalar("SELECT event FROM audit ORDER BY seq").fetch_all(&self.pool).await?;
        Ok(events.iter().filter_map(|e| serde_json::from_str(e).ok()).collect())
    }
}

/// One record of the audit trail, exactly as stored: `event` is the JSON text its hash covers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ChainRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub prev: String,
    pub event: String,
    pub hash: String,
}

/// The `prev` of the trail's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Checks that `records` run on from sequence `seq` chained to the hash `prev`: each
/// numbered next, naming the hash of the one before, its contents matching its own hash.
/// Names the first bad record; returns where the records end.
pub fn check_chain<'a>(
    records: impl IntoIterator<Item = &'a ChainRecord>,
    seq: i64,
    prev: &str,
) -> Result<AuditHead, StoreError> {
    let (mut expected, mut prev) = (seq, prev.to_owned());
    for record in records {
        let broken = |reason: &str| StoreError::AuditBroken { seq: record.seq, reason: reason.to_owned() };
        if record.seq != expected {
            return Err(broken(&format!(
                "sequence {} where {expected} was due: records removed",
                record.seq
            )));
        }
        if record.prev != prev {
            return Err(broken("does not chain to the record before it"));
        }
        if seal(record.seq, record.at_ms, &record.prev, &record.event) != record.hash {
            return Err(broken("contents do not match the record's hash: edited"));
        }
        expected += 1;
        prev.clone_from(&record.hash);
    }
    Ok(AuditHead { records: expected, hash: prev })
}

/// [`Store::verify_audit`] inside `tx`, which should see one snapshot.
pub(crate) async fn verify_audit_in(tx: &mut Transaction<'_, Any>) -> Result<AuditHead, StoreError> {
    let records: Vec<ChainRecord> =
        sqlx::query_as("SELECT seq, at_ms, prev, event, hash FROM audit ORDER BY seq")
            .fetch_all(&mut **tx)
            .await?;
    let head = sqlx::query("SELECT next_seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut **tx).await?;
    let (next, head_hash): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
    let end = check_chain(&records, 0, GENESIS)?;
    if next != end.records || head_hash != end.hash {
        return Err(StoreError::AuditBroken {
            seq: end.records,
            reason: format!("the trail ends at record {} but {next} were written: truncated", end.records),
        });
    }
    Ok(end)
}

/// Passes PostgreSQL notifications on to this replica's sessions. When the listener's
/// connection drops, notifications may have been lost meanwhile: sessions are told to resync.
async fn relay(mut listener: PgListener, events: broadcast::Sender<Event>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let parsed: Option<(String, String)> =
                    serde_json::from_str::<serde_json::Value>(notification.payload())
                        .ok()
                        .and_then(|v| Some((v["host"].as_str()?.to_owned(), v["hold"].as_str()?.to_owned())));
                if let Some((host, hold_id)) = parsed {
                    let _ = events.send(Event::Decided { host, hold_id });
                } else {
                    tracing::warn!(payload = notification.payload(), "malformed decision notification");
                }
            }
            Ok(None) => {
                tracing::warn!("lost the connection that listens for decisions; reconnecting");
                let _ = events.send(Event::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for decisions failed; retrying");
                let _ = events.send(Event::Resync);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
