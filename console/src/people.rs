//! Who may use the console: roles, API tokens tied to a person, browser sessions, the
//! sign-ins under way and one-time sign-in links, all in the database so that every
//! replica knows them.

use std::{fmt, str::FromStr, time::Duration};

use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;

use crate::{
    audit::AuditEvent,
    oidc::PendingLogin,
    store::{Store, StoreError, audit, now_ms},
};

/// What a person may do. Each role can do everything the one before it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads holds and the audit trail.
    Viewer,
    /// Also approves and denies holds (never those of agents they started).
    Approver,
    /// Also sees and revokes everyone's API tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Approver => "approver",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "viewer" => Ok(Self::Viewer),
            "approver" => Ok(Self::Approver),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?}: viewer, approver or admin")),
        }
    }
}

/// Someone authenticated, as every decision and audit record names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The person (an email address from the identity provider, or a token's person).
    pub person: String,
    pub display_name: String,
    pub role: Role,
    /// `session` or `token:<id>`.
    pub via: String,
    /// How they proved who they are, recorded with each of their decisions.
    #[serde(skip)]
    pub credential: Credential,
}

/// How a person proved who they are to the console, as each vote records it (JSON in
/// the database, and in evidence packs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    /// A browser session whose ID token the identity provider `issuer` signed for `subject`.
    Oidc { issuer: String, subject: String },
    /// A browser session opened with a one-time sign-in link, which only an operator of the
    /// host the console runs on can get.
    SignInLink,
    /// The API token `token` (its id), made for the person.
    ApiToken { token: String },
    /// A click in chat by `account` (`slack:TEAM/USER`), which an admin linked to the person.
    ChatAccount { account: String },
    /// Not recorded: decided before the console kept credentials.
    #[default]
    Unrecorded,
}

impl Credential {
    /// As stored in a `credential` column.
    pub(crate) fn to_column(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From a `credential` column: NULL, or anything unreadable, is [`Credential::Unrecorded`].
    pub(crate) fn from_column(column: Option<&str>) -> Self {
        column.and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }
}

/// An API token as listed (the secret itself is shown once, at creation).
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub person: String,
    pub role: Role,
    pub name: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
}

/// How long an API token lasts when its maker names no lifetime.
pub const TOKEN_LIFETIME: Duration = Duration::from_hours(90 * 24);
/// The longest an API token may last.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_hours(365 * 24);
/// How long a browser session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_hours(12);
/// How long a sign-in may take between the redirect to the identity provider and its
/// return, and how long a one-time sign-in link stays valid.
pub const LOGIN_LIFETIME: Duration = Duration::from_mins(10);
/// How finely a token's last use is recorded.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;
/// The prefix of every API token, so scanners and people recognise a leaked one.
const TOKEN_PREFIX: &str = "kt_";

/// What a sign-in under way keeps until it is finished, for any replica to take once.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeptLogin {
    /// A sign-in through the identity provider: what its callback needs.
    Oidc(PendingLogin),
    /// A one-time sign-in link (`keyturn console login`): the operator it signs in, as an admin.
    Link { person: String },
}

/// How a person signed in, as the audit trail's `signed_in` records say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignIn {
    /// Through the identity provider.
    Oidc,
    /// With a one-time sign-in link.
    Link,
}

/// A random secret: 256 bits from the operating system's CSPRNG, in hex.
pub(crate) fn secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub(crate) fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text))
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn role_of(text: &str) -> Result<Role, StoreError> {
    text.parse().map_err(|reason| StoreError::Corrupt { hold_id: String::new(), reason })
}

impl Store {
    /// Makes an API token for `person` with `role`, on `created_by`'s say-so, valid for
    /// `lifetime`; returns its id and the secret, which is not kept.
    pub async fn create_api_token(
        &self,
        person: &str,
        role: Role,
        name: &str,
        created_by: &str,
        lifetime: Duration,
    ) -> Result<(String, String), StoreError> {
        if person.trim().is_empty() {
            return Err(StoreError::Anonymous);
        }
        let id = secret()[..16].to_owned();
        let token = format!("{TOKEN_PREFIX}{}", secret());
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, token_sha256, person, role, name, created_by, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(sha256(&token))
        .bind(person)
        .bind(role.as_str())
        .bind(name)
        .bind(created_by)
        .bind(now_ms())
        .bind(now_ms().saturating_add(millis(lifetime)))
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::ApiTokenCreated {
            token: id.clone(),
            person: person.to_owned(),
            role,
            name: name.to_owned(),
            by: created_by.to_owned(),
            lifetime_secs: lifetime.as_secs(),
        };
        audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok((id, token))
    }

    /// The API tokens of `person`, or everyone's when `person` is `None`; newest first.
    pub async fn api_tokens(&self, person: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, person, role, name, created_by, created_at_ms, last_used_ms, revoked_at_ms, expires_at_ms
             FROM api_tokens WHERE $1 = '' OR person = $1 ORDER BY created_at_ms DESC, id",
        )
        .bind(person.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TokenInfo {
                    id: row.try_get(0)?,
                    person: row.try_get(1)?,
                    role: role_of(&row.try_get::<String, _>(2)?)?,
                    name: row.try_get(3)?,
                    created_by: row.try_get(4)?,
                    created_at_ms: row.try_get(5)?,
                    last_used_ms: row.try_get(6)?,
                    revoked_at_ms: row.try_get(7)?,
                    expires_at_ms: row.try_get(8)?,
                })
            })
            .collect()
    }

    /// Revokes token `id` (of `owner`, or anyone's when `owner` is `None`); false when there
    /// is no such live token.
    pub async fn revoke_api_token(
        &self,
        id: &str,
        owner: Option<&str>,
        by: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let revoked = sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = $3, revoked_by = $4
             WHERE id = $1 AND ($2 = '' OR person = $2) AND revoked_at_ms IS NULL",
        )
        .bind(id)
        .bind(owner.unwrap_or(""))
        .bind(now_ms())
        .bind(by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revoked == 1 {
            audit(&mut tx, &AuditEvent::ApiTokenRevoked { token: id.to_owned(), by: by.to_owned() }).await?;
        }
        tx.commit().await?;
        Ok(revoked == 1)
    }

    /// Who holds the live API token `token`, if anyone.
    pub async fn token_principal(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, person, role, last_used_ms FROM api_tokens
             WHERE token_sha256 = $1 AND revoked_at_ms IS NULL AND (expires_at_ms IS NULL OR expires_at_ms > $2)",
        )
        .bind(sha256(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (id, person, role, last_used): (String, String, String, Option<i64>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        // Recorded to the minute: a write on every call would queue every reader behind it.
        let now = now_ms();
        if last_used.is_none_or(|last| now - last >= LAST_USED_RESOLUTION_MS) {
            sqlx::query("UPDATE api_tokens SET last_used_ms = $2 WHERE id = $1")
                .bind(&id)
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(Principal {
            display_name: person.clone(),
            person,
            role: role_of(&role)?,
            credential: Credential::ApiToken { token: id.clone() },
            via: format!("token:{id}"),
        }))
    }

    /// Opens a browser session for `principal`, who signed in `how`; returns the cookie's
    /// secret.
    pub async fn create_session(&self, principal: &Principal, how: SignIn) -> Result<String, StoreError> {
        if principal.person.trim().is_empty() {
            return Err(StoreError::Anonymous);
        }
        let token = secret();
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (token_sha256, person, display_name, role, created_at_ms, expires_at_ms, credential)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(sha256(&token))
        .bind(&principal.person)
        .bind(&principal.display_name)
        .bind(principal.role.as_str())
        .bind(now)
        .bind(now.saturating_add(millis(SESSION_LIFETIME)))
        .bind(principal.credential.to_column())
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::SignedIn { person: principal.person.clone(), role: principal.role, how };
        audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Who the unexpired session `token` belongs to, if anyone.
    pub async fn session_principal(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query(
            "SELECT person, display_name, role, credential FROM sessions WHERE token_sha256 = $1 AND expires_at_ms > $2",
        )
        .bind(sha256(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (person, display_name, role, credential): (String, String, String, Option<String>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        Ok(Some(Principal {
            person,
            display_name,
            role: role_of(&role)?,
            via: "session".into(),
            credential: Credential::from_column(credential.as_deref()),
        }))
    }

    /// Ends the session `token` (signing out); sessions past their end are swept too.
    pub async fn end_session(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE token_sha256 = $1 OR expires_at_ms <= $2")
            .bind(sha256(token))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps what finishing the sign-in `state` needs, for any replica to take.
    pub async fn begin_login(&self, state: &str, kept: &KeptLogin) -> Result<(), StoreError> {
        let kept = serde_json::to_string(kept).map_err(StoreError::KeptLogin)?;
        let now = now_ms();
        sqlx::query("DELETE FROM logins WHERE created_at_ms <= $1")
            .bind(now.saturating_sub(millis(LOGIN_LIFETIME)))
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO logins (state, pending, created_at_ms) VALUES ($1, $2, $3)")
            .bind(sha256(state))
            .bind(kept)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes (once: of concurrent takers, one gets it) what [`Store::begin_login`] kept for
    /// `state`, unless it is older than [`LOGIN_LIFETIME`].
    pub async fn take_login(&self, state: &str) -> Result<Option<KeptLogin>, StoreError> {
        let kept: Option<String> = sqlx::query_scalar(
            "DELETE FROM logins WHERE state = $1 AND created_at_ms > $2 RETURNING pending",
        )
        .bind(sha256(state))
        .bind(now_ms().saturating_sub(millis(LOGIN_LIFETIME)))
        .fetch_optional(&self.pool)
        .await?;
        kept.map(|kept| serde_json::from_str(&kept).map_err(StoreError::KeptLogin)).transpose()
    }

    /// Makes a one-time sign-in link's secret for `person`, an operator of the host the
    /// console runs on: redeemed once within [`LOGIN_LIFETIME`], it opens an admin session.
    /// Only its hash is kept; the issue is audited (without it).
    pub async fn issue_sign_in_link(&self, person: &str) -> Result<String, StoreError> {
        if person.trim().is_empty() {
            return Err(StoreError::Anonymous);
        }
        let secret = secret();
        self.begin_login(&secret, &KeptLogin::Link { person: person.to_owned() }).await?;
        self.record(&AuditEvent::SignInLinkIssued { person: person.to_owned() }).await?;
        Ok(secret)
    }

    /// Redeems the sign-in link `secret` for an admin session: who it signs in and the
    /// session cookie's secret; `None` for a secret unknown, used, expired or not a link's.
    pub async fn redeem_sign_in_link(&self, secret: &str) -> Result<Option<(Principal, String)>, StoreError> {
        let Some(KeptLogin::Link { person }) = self.take_login(secret).await? else { return Ok(None) };
        let principal = Principal {
            display_name: person.clone(),
            person,
            role: Role::Admin,
            via: "session".into(),
            credential: Credential::SignInLink,
        };
        let session = self.create_session(&principal, SignIn::Link).await?;
        Ok(Some((principal, session)))
    }
}

/// Which identity-provider groups give which role (`[roles]` in the console's config).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleMap {
    pub admin: Vec<String>,
    pub approver: Vec<String>,
    pub viewer: Vec<String>,
}

impl RoleMap {
    /// The highest role any of `groups` gives, if any does.
    pub fn role(&self, groups: &[String]) -> Option<Role> {
        let member = |of: &[String]| groups.iter().any(|group| of.contains(group));
        [(Role::Admin, &self.admin), (Role::Approver, &self.approver), (Role::Viewer, &self.viewer)]
            .into_iter()
            .find_map(|(role, of)| member(of).then_some(role))
    }
}
