//! The console's audit records as types: every kind of event the console appends to its
//! hash-chained trail, and a record as stored (sequence, time, chain, hash), read in order.

use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::{
    people::{Role, SignIn},
    store::{Store, StoreError},
};

/// How a chat account came to be linked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatLinkHow {
    /// By an admin (`keyturn console link`, the API): the records written before this field.
    #[default]
    Admin,
    /// By the person themselves, confirming in the console a one-time link the account was
    /// given in chat: who clicked it there is not proved to be them (see `chat::offers`).
    Offer,
    /// By the identity provider, at the person's sign-in: Entra ID's token named the Teams
    /// account (its tenant and object id) as theirs.
    SignIn,
}

impl ChatLinkHow {
    /// As the audit and `chat_links.how` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Offer => "offer",
            Self::SignIn => "sign_in",
        }
    }

    #[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
    fn is_admin(&self) -> bool {
        *self == Self::Admin
    }
}

/// One event of the console's audit trail, as stored in `audit.event` (JSON, tagged by
/// `type`). Field names are those of the rows written before this type existed, so every
/// stored record reads back as one of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A host was enrolled: pinned by its first key (plaintext), or with a bootstrap token
    /// and the certificate it was issued (mutual TLS).
    HostEnrolled {
        host: String,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<String>,
    },
    /// A host's stream was refused: unknown, another key, another certificate.
    HostRefused {
        host: String,
        key: String,
        why: String,
    },
    /// A one-time bootstrap token was made for `host`.
    TokenIssued {
        host: String,
        expires_at_ms: i64,
    },
    /// An enrolment with an unknown, used, expired or misdirected token.
    EnrolmentRefused {
        host: String,
        key: String,
    },
    /// A host reported a held action.
    HoldRaised {
        host: String,
        hold: String,
        kind: String,
        agent: String,
        rule: String,
    },
    /// One person's approval of a hold that needs more of them.
    ApprovalRecorded {
        host: String,
        hold: String,
        by: String,
        approvals: i64,
        quorum: i64,
    },
    /// A hold's decision, signed with `key`: the last vote, and every approver.
    Decided {
        host: String,
        hold: String,
        verdict: Vote,
        /// The protobuf name of the scope (`SCOPE_ONCE`, …).
        scope: String,
        by: String,
        approvers: Vec<String>,
        reason: String,
        key: String,
    },
    /// A person's decision was refused (role, self-approval).
    DecisionRefused {
        host: String,
        hold: String,
        by: String,
        /// The protobuf name of the verdict asked for (`VERDICT_APPROVE`, …).
        verdict: String,
        code: String,
        why: String,
    },
    /// The host closed a hold (decided there, timed out, process gone…).
    HoldClosed {
        host: String,
        hold: String,
        reason: String,
    },
    /// A hold passed its deadline undecided.
    HoldExpired {
        host: String,
        hold: String,
    },
    /// Someone the identity provider vouched for has no role here.
    SignInRefused {
        person: String,
        groups: Vec<String>,
    },
    SignedIn {
        person: String,
        role: Role,
        how: SignIn,
    },
    /// A one-time sign-in link was made (`keyturn console login`).
    SignInLinkIssued {
        person: String,
    },
    ApiTokenCreated {
        token: String,
        person: String,
        role: Role,
        name: String,
        by: String,
        lifetime_secs: u64,
    },
    ApiTokenRevoked {
        token: String,
        by: String,
    },
    /// A chat account (`slack:TEAM/USER`) was linked to a person: its clicks decide as them.
    ChatLinked {
        account: String,
        person: String,
        role: Role,
        by: String,
        #[serde(default, skip_serializing_if = "ChatLinkHow::is_admin")]
        how: ChatLinkHow,
    },
    ChatUnlinked {
        account: String,
        by: String,
    },
    /// A host's audit trail no longer matched an anchor the console kept of it.
    HostTrailTampered {
        host: String,
        detail: String,
    },
    /// A host reported a version of a policy in force that the console had not heard of.
    HostPolicyInForce {
        host: String,
        policy: String,
        sha256: String,
    },
    /// A host's report no longer has a version of a policy it had.
    HostPolicyRetired {
        host: String,
        policy: String,
        sha256: String,
    },
    /// Someone exported the evidence pack of a period.
    EvidenceExported {
        by: String,
        from_ms: i64,
        to_ms: i64,
        holds: u64,
        audit_records: u64,
        policies: u64,
    },
    /// Someone exported the trail (`GET /api/audit/export`).
    AuditExported {
        by: String,
        format: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<i64>,
    },
}

/// A decided hold's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    Approve,
    Deny,
}

impl AuditEvent {
    /// The stored text: JSON with its keys in order, as the trail's rows always were.
    pub(crate) fn to_text(&self) -> String {
        serde_json::to_value(self).map_or_else(|_| String::new(), |value| value.to_string())
    }

    /// The hold (host, id) this event is about, if any.
    pub fn hold(&self) -> Option<(&str, &str)> {
        match self {
            Self::HoldRaised { host, hold, .. }
            | Self::ApprovalRecorded { host, hold, .. }
            | Self::Decided { host, hold, .. }
            | Self::DecisionRefused { host, hold, .. }
            | Self::HoldClosed { host, hold, .. }
            | Self::HoldExpired { host, hold } => Some((host, hold)),
            _ => None,
        }
    }
}

/// One record of the trail as stored: `event` is the exact text the hash covers.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub prev: String,
    pub event: String,
    pub hash: String,
}

impl StoredRecord {
    /// Whether this record's hash is that of its contents.
    pub fn sealed(&self) -> bool {
        crate::store::seal(self.seq, self.at_ms, &self.prev, &self.event) == self.hash
    }

    /// The event, typed; a record that is not one of the console's is corrupt.
    pub fn typed(&self) -> Result<AuditEvent, StoreError> {
        serde_json::from_str(&self.event).map_err(|e| StoreError::AuditBroken {
            seq: self.seq,
            reason: format!("not a console event: {e}"),
        })
    }
}

impl Store {
    /// Up to `limit` records from sequence `from` on, oldest first, whose time is in
    /// `[since_ms, until_ms)` (unverified: see [`Store::verify_audit`]).
    pub async fn audit_page(
        &self,
        from: i64,
        since_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, prev, event, hash FROM audit
             WHERE seq >= $1 AND at_ms >= $2 AND at_ms < $3 ORDER BY seq LIMIT $4",
        )
        .bind(from)
        .bind(since_ms)
        .bind(until_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredRecord {
                    seq: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    prev: row.try_get(2)?,
                    event: row.try_get(3)?,
                    hash: row.try_get(4)?,
                })
            })
            .collect()
    }
}
