//! Approving in chat: holds announced where people work, and a click there decided as the
//! person the clicking chat account is linked to, by the rules every decision meets.
//!
//! A chat account is never trusted by its id alone: it acts only once an admin linked it
//! to a person (`keyturn console link`), with the role given then (at most approver).
//! Links are in the database, so every replica knows them, and every link and unlink is
//! audited.

pub mod slack;

use std::{fmt, str::FromStr};

use sqlx::Row as _;

use crate::{
    audit::AuditEvent,
    people::{Credential, Principal, Role},
    store::{Store, StoreError, audit, now_ms},
};

/// A chat account: a Slack user of a Slack workspace (team).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChatAccount {
    pub team: String,
    pub user: String,
}

impl fmt::Display for ChatAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slack:{}/{}", self.team, self.user)
    }
}

impl FromStr for ChatAccount {
    type Err = String;

    /// `TEAM/USER`, as Slack names them (`T0123ABC/U0456DEF`).
    fn from_str(text: &str) -> Result<Self, String> {
        let id = |part: &str| {
            !part.is_empty() && part.len() <= 32 && part.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        match text.split_once('/') {
            Some((team, user)) if id(team) && id(user) => {
                Ok(Self { team: team.to_owned(), user: user.to_owned() })
            }
            _ => Err(format!("{text:?} is not TEAM/USER (Slack's ids, such as T0123ABC/U0456DEF)")),
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
        if person.is_empty() {
            return Err(StoreError::Anonymous);
        }
        // As decisions and the requester check compare them: a person named with a space,
        // an invisible or control character could slip past the no-self-approval rule.
        if person.len() > 256 || person.chars().any(|c| c.is_whitespace() || c.is_control() || hides(c)) {
            return Err(StoreError::ChatPerson(person.to_owned()));
        }
        if role > Role::Approver {
            return Err(StoreError::ChatRole(role));
        }
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM chat_links WHERE account = $1")
            .bind(account.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO chat_links (account, person, role, linked_by, linked_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account.to_string())
        .bind(person)
        .bind(role.as_str())
        .bind(by)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::ChatLinked {
            account: account.to_string(),
            person: person.to_owned(),
            role,
            by: by.to_owned(),
        };
        audit(&mut tx, &event).await?;
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

    /// The Slack accounts linked to `person` (named without regard to case).
    pub async fn chat_accounts_of(&self, person: &str) -> Result<Vec<ChatAccount>, StoreError> {
        let rows =
            sqlx::query("SELECT account FROM chat_links WHERE lower(person) = lower($1) ORDER BY account")
                .bind(person)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<String, _>("account").ok())
            .filter_map(|account| account.strip_prefix("slack:")?.parse().ok())
            .collect())
    }

    /// The person `account` is linked to, read at every click: an unlinked account stops
    /// acting at once.
    pub async fn chat_link(&self, account: &ChatAccount) -> Result<Option<Link>, StoreError> {
        let row = sqlx::query("SELECT person, role FROM chat_links WHERE account = $1")
            .bind(account.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let role: String = row.try_get("role")?;
            let role =
                role.parse().map_err(|reason| StoreError::Corrupt { hold_id: String::new(), reason })?;
            Ok(Link { person: row.try_get("person")?, role })
        })
        .transpose()
    }
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
    fn accounts_are_slack_ids_only() {
        let account: ChatAccount = "T0123ABC/U0456DEF".parse().unwrap();
        assert_eq!(account.to_string(), "slack:T0123ABC/U0456DEF");
        for bad in ["", "T1", "T1/", "/U1", "T1/U1/x", "T 1/U1", "T1/U1;drop", "T1/Ü1"] {
            assert!(bad.parse::<ChatAccount>().is_err(), "{bad:?} accepted");
        }
    }
}
