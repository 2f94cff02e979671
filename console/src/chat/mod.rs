//! Approving in chat: holds announced where people work, and a click there decided as the
//! person the clicking chat account is linked to, by the rules every decision meets.
//!
//! A chat account is never trusted by its id alone: it acts only once it is linked to a
//! person, by an admin (`keyturn console link`, the API) or by that person confirming a link
//! offered to the account ([`offers`]), with the role given then (at most approver). Links
//! are in the database, so every replica knows them, and every link and unlink is audited.

pub mod announce;
pub mod decide;
pub mod offers;
pub mod slack;
pub mod teams;
pub mod text;

use std::{fmt, str::FromStr};

use serde::Serialize;
use sqlx::{Any, Row as _, Transaction};

use crate::{
    audit::{AuditEvent, ChatLinkHow},
    people::{Credential, Principal, Role, role_of},
    store::{Store, StoreError, audit, now_ms},
};

/// A chat service keyturn announces holds in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chat {
    Slack,
    Teams,
}

impl Chat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Teams => "teams",
        }
    }
}

/// A chat account: a Slack user of a Slack workspace (team), or a Microsoft Teams user
/// (their Entra ID object id) of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChatAccount {
    pub chat: Chat,
    /// Slack's team id, or the Entra ID tenant id (lower case).
    pub team: String,
    /// Slack's user id, or the user's Entra ID object id (lower case).
    pub user: String,
}

impl ChatAccount {
    /// `TEAM/USER` of `chat`, as the service names them: Slack's ids (`T0123ABC/U0456DEF`),
    /// or Teams' tenant and Entra ID object ids (two GUIDs).
    pub fn new(chat: Chat, text: &str) -> Result<Self, String> {
        let slack_id = |part: &str| {
            !part.is_empty() && part.len() <= 32 && part.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        let (team, user) = text.split_once('/').unwrap_or_default();
        match chat {
            Chat::Slack if slack_id(team) && slack_id(user) => {
                Ok(Self { chat, team: team.to_owned(), user: user.to_owned() })
            }
            Chat::Teams if is_guid(team) && is_guid(user) => {
                Ok(Self { chat, team: team.to_ascii_lowercase(), user: user.to_ascii_lowercase() })
            }
            Chat::Slack => Err(format!("{text:?} is not TEAM/USER (Slack's ids, such as T0123ABC/U0456DEF)")),
            Chat::Teams => Err(format!(
                "{text:?} is not TENANT/USER (the Entra ID tenant id and the user's object id, two GUIDs)"
            )),
        }
    }

    /// A Slack account, `TEAM/USER` (for `--slack`).
    pub fn slack(text: &str) -> Result<Self, String> {
        Self::new(Chat::Slack, text)
    }

    /// A Teams account, `TENANT/USER` (for `--teams`).
    pub fn teams(text: &str) -> Result<Self, String> {
        Self::new(Chat::Teams, text)
    }
}

impl fmt::Display for ChatAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.chat.as_str(), self.team, self.user)
    }
}

impl FromStr for ChatAccount {
    type Err = String;

    /// As it is displayed and stored: `slack:TEAM/USER` or `teams:TENANT/USER`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("slack", rest)) => Self::slack(rest),
            Some(("teams", rest)) => Self::teams(rest),
            _ => Err(format!("{text:?} is not slack:TEAM/USER or teams:TENANT/USER")),
        }
    }
}

/// A person a chat account is linked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub person: String,
    pub role: Role,
}

impl Link {
    /// The person as a decision names them: their role as linked, proved by `account`.
    pub fn principal(&self, account: &ChatAccount) -> Principal {
        Principal {
            person: self.person.clone(),
            display_name: self.person.clone(),
            role: self.role,
            via: account.to_string(),
            credential: Credential::ChatAccount { account: account.to_string() },
        }
    }
}

/// A link as listed.
#[derive(Clone, Debug, Serialize)]
pub struct LinkInfo {
    /// `slack:TEAM/USER` or `teams:TENANT/USER`.
    pub account: String,
    pub person: String,
    pub role: Role,
    pub linked_by: String,
    pub linked_at_ms: i64,
}

impl Store {
    /// Links `account` to `person` with `role` (at most approver), on `by`'s say-so,
    /// replacing any link the account had.
    pub async fn link_chat(
        &self,
        account: &ChatAccount,
        person: &str,
        role: Role,
        by: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        link_in(&mut tx, account, person, role, by, ChatLinkHow::Admin).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Links `account` to `person` as their identity provider vouched at their sign-in,
    /// with the role their groups gave (at most approver): written and audited only when
    /// the link was not already so, and never over a link an admin made (an admin's word
    /// on an account stands until an admin changes it).
    pub async fn link_at_sign_in(
        &self,
        account: &ChatAccount,
        person: &str,
        role: Role,
    ) -> Result<(), StoreError> {
        let role = role.min(Role::Approver);
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT person, role, how FROM chat_links WHERE account = $1")
            .bind(account.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let (linked, linked_role, how): (String, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            if how == ChatLinkHow::Admin.as_str() || (linked == person && linked_role == role.as_str()) {
                return Ok(());
            }
        }
        link_in(&mut tx, account, person, role, person, ChatLinkHow::SignIn).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes the links `person` made themselves (by a one-time link or at sign-in) follow
    /// their sign-in: the role their groups give now (`None`: the sign-in was refused),
    /// never above approver; a refused sign-in removes them, and the link its Teams account
    /// (`teams`, named by the ID token) had from a sign-in under another name. People are
    /// compared as the no-self-approval rule compares them (ASCII case only). Links an admin
    /// made keep the role the admin gave. Each change is audited.
    pub async fn follow_sign_in(
        &self,
        person: &str,
        role: Option<Role>,
        teams: Option<&ChatAccount>,
    ) -> Result<(), StoreError> {
        let role = role.map(|role| role.min(Role::Approver));
        let mut tx = self.begin().await?;
        for how in [ChatLinkHow::Offer, ChatLinkHow::SignIn] {
            let rows =
                sqlx::query("SELECT account, person, role FROM chat_links WHERE how = $1 ORDER BY account")
                    .bind(how.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
            for row in rows {
                let (account, linked, linked_role): (String, String, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                // As the no-self-approval rule compares people; and a refused sign-in also
                // ends the link it made of its Teams account under an older name.
                let theirs = linked.eq_ignore_ascii_case(person)
                    || (role.is_none()
                        && how == ChatLinkHow::SignIn
                        && teams.is_some_and(|t| t.to_string() == account));
                if !theirs || role.is_some_and(|role| role.as_str() == linked_role) {
                    continue;
                }
                let changed = match role {
                    Some(role) => sqlx::query(
                        "UPDATE chat_links SET role = $1 WHERE account = $2 AND person = $3 AND how = $4",
                    )
                    .bind(role.as_str()),
                    None => {
                        sqlx::query("DELETE FROM chat_links WHERE account = $1 AND person = $2 AND how = $3")
                    }
                };
                // Keyed by what was read: a link an admin made meanwhile is left alone.
                let changed = changed
                    .bind(&account)
                    .bind(&linked)
                    .bind(how.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if changed != 1 {
                    continue;
                }
                let event = match role {
                    Some(role) => AuditEvent::ChatLinked {
                        account,
                        person: linked,
                        role,
                        by: format!("{person}'s sign-in"),
                        how,
                    },
                    None => AuditEvent::ChatUnlinked { account, by: format!("{person}'s refused sign-in") },
                };
                audit(&mut tx, &event).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes `account`'s link, on `by`'s say-so: whether there was one.
    pub async fn unlink_chat(&self, account: &ChatAccount, by: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let removed = sqlx::query("DELETE FROM chat_links WHERE account = $1")
            .bind(account.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed > 0 {
            audit(&mut tx, &AuditEvent::ChatUnlinked { account: account.to_string(), by: by.to_owned() })
                .await?;
        }
        tx.commit().await?;
        Ok(removed > 0)
    }

    /// The chat accounts linked to `person` (named without regard to case).
    pub async fn chat_accounts_of(&self, person: &str) -> Result<Vec<ChatAccount>, StoreError> {
        let rows =
            sqlx::query("SELECT account FROM chat_links WHERE lower(person) = lower($1) ORDER BY account")
                .bind(person)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<String, _>("account").ok())
            .filter_map(|account| account.parse().ok())
            .collect())
    }

    /// Every link, or those of `person` (named without regard to case); by account.
    pub async fn chat_links(&self, person: Option<&str>) -> Result<Vec<LinkInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, person, role, linked_by, linked_at_ms FROM chat_links
             WHERE $1 = '' OR lower(person) = lower($1) ORDER BY account",
        )
        .bind(person.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LinkInfo {
                    account: row.try_get(0)?,
                    person: row.try_get(1)?,
                    role: role_of(&row.try_get::<String, _>(2)?)?,
                    linked_by: row.try_get(3)?,
                    linked_at_ms: row.try_get(4)?,
                })
            })
            .collect()
    }

    /// The person `account` is linked to, read at every click: an unlinked account stops
    /// acting at once.
    pub async fn chat_link(&self, account: &ChatAccount) -> Result<Option<Link>, StoreError> {
        let row = sqlx::query("SELECT person, role FROM chat_links WHERE account = $1")
            .bind(account.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Link { person: row.try_get("person")?, role: role_of(&row.try_get::<String, _>("role")?)? })
        })
        .transpose()
    }
}

/// The durations **Approve for…** offers in every chat: seconds, and as shown.
pub const DURATIONS: [(u64, &str); 4] =
    [(900, "15 minutes"), (3_600, "1 hour"), (28_800, "8 hours"), (86_400, "24 hours")];
const _: () = assert!(DURATIONS[DURATIONS.len() - 1].0 <= crate::api::holds::MAX_DURATION_SECS);
/// The duration chosen unless the approver picks another (of [`DURATIONS`]).
pub const DEFAULT_DURATION: usize = 1;

/// The seconds of `chosen`, a duration as a chat sends back what it was offered: only one
/// of [`DURATIONS`].
pub fn offered_duration(chosen: &str) -> Option<u64> {
    DURATIONS.iter().map(|(secs, _)| *secs).find(|secs| secs.to_string() == chosen)
}

/// Whether `text` is a GUID, as Microsoft writes its ids (`72f988bf-86f1-41af-91ab-2d7cd011db47`).
pub fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text
            .bytes()
            .enumerate()
            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// Links `account` to `person` with `role` within `tx`, as [`Store::link_chat`] says.
async fn link_in(
    tx: &mut Transaction<'_, Any>,
    account: &ChatAccount,
    person: &str,
    role: Role,
    by: &str,
    how: ChatLinkHow,
) -> Result<(), StoreError> {
    if person.is_empty() {
        return Err(StoreError::Anonymous);
    }
    if !is_person_name(person) {
        return Err(StoreError::ChatPerson(person.to_owned()));
    }
    if role > Role::Approver {
        return Err(StoreError::ChatRole(role));
    }
    sqlx::query("DELETE FROM chat_links WHERE account = $1")
        .bind(account.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO chat_links (account, person, role, linked_by, linked_at_ms, how)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(account.to_string())
    .bind(person)
    .bind(role.as_str())
    .bind(by)
    .bind(now_ms())
    .bind(how.as_str())
    .execute(&mut **tx)
    .await?;
    let event = AuditEvent::ChatLinked {
        account: account.to_string(),
        person: person.to_owned(),
        role,
        by: by.to_owned(),
        how,
    };
    audit(tx, &event).await?;
    Ok(())
}

/// Whether `person` may name a person chat accounts are linked to (and a policy's `notify`
/// names): 1 to 256 bytes, without whitespace, control or invisible characters. As
/// decisions and the requester check compare them, a person named with one could slip
/// past the no-self-approval rule, or read as someone else.
pub fn is_person_name(person: &str) -> bool {
    !person.is_empty()
        && person.len() <= 256
        && !person.chars().any(|c| c.is_whitespace() || c.is_control() || hides(c))
}

/// Characters that show as nothing: a name holding one reads as another name.
fn hides(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_the_services_own_ids_only() {
        let account = ChatAccount::slack("T0123ABC/U0456DEF").unwrap();
        assert_eq!(account.to_string(), "slack:T0123ABC/U0456DEF");
        assert_eq!(account.to_string().parse::<ChatAccount>(), Ok(account));
        for bad in ["", "T1", "T1/", "/U1", "T1/U1/x", "T 1/U1", "T1/U1;drop", "T1/Ü1"] {
            assert!(ChatAccount::slack(bad).is_err(), "{bad:?} accepted");
        }
        let tenant = "72F988BF-86F1-41AF-91AB-2D7CD011DB47";
        let account = ChatAccount::teams(&format!("{tenant}/00000000-0000-0000-0000-0000000000aB")).unwrap();
        assert_eq!(
            account.to_string(),
            "teams:72f988bf-86f1-41af-91ab-2d7cd011db47/00000000-0000-0000-0000-0000000000ab"
        );
        assert_eq!(account.to_string().parse::<ChatAccount>(), Ok(account));
        for bad in
            ["T1/U1", &format!("{tenant}/U1"), &format!("{tenant}/{tenant}x"), &format!("{tenant}-/{tenant}")]
        {
            assert!(ChatAccount::teams(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["T1/U1", "slack:T1", "teams:T1/U1", "irc:T1/U1"] {
            assert!(bad.parse::<ChatAccount>().is_err(), "{bad:?} accepted");
        }
    }
}
