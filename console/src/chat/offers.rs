//! One-time links offered in chat, to the user alone, when an account linked to no one
//! clicks: opened in the console by a signed-in person and confirmed, it links the account
//! to them (at most as an approver).
//!
//! An offer lasts [`OFFER_LIFETIME`], is used once, and only its secret's hash is kept; a
//! new offer to the same account voids the one before. What it cannot prove is that the
//! person who confirms is the one who clicked: a link forwarded to someone else links the
//! forwarder's account to them. The confirmation names the account, and each such link is
//! audited as [`ChatLinkHow::Offer`] and announced in the channel.

use std::time::Duration;

use sqlx::Row as _;

use super::{ChatAccount, Link, hides, link_in};
use crate::{
    audit::ChatLinkHow,
    people::{LOGIN_LIFETIME, Principal, Role, millis, secret, sha256},
    store::{Store, StoreError, now_ms},
};

/// How long an offered link may be used: as long as a one-time sign-in link.
pub const OFFER_LIFETIME: Duration = LOGIN_LIFETIME;
/// How long an offer is kept after it was made, to tell a late or second use for what it is.
const KEPT: Duration = Duration::from_hours(24);
/// The most of an account's name (as the chat service gave it) shown on confirmation.
const MAX_NAME: usize = 80;

/// An offer still open, as the confirmation shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub account: ChatAccount,
    /// The account's name as the chat service gave it with the click (the user chose it).
    pub name: String,
    /// The email the chat service vouches for as the account's: the one person who may
    /// confirm.
    pub email: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error(
        "this link is not one keyturn gave, or a newer one replaced it: click in chat again for a new one"
    )]
    Unknown,
    #[error("this link has expired (it lasts {} minutes): click in chat again for a new one", OFFER_LIFETIME.as_secs() / 60)]
    Expired,
    #[error("this link was used already, and works once: click in chat again for a new one")]
    Used,
    #[error("this link is for the chat account of {0}, not yours: only they can confirm it")]
    NotYours(String),
    #[error(
        "this chat account was linked since the link was given: click in chat again if it still needs one"
    )]
    LinkedSince,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for OfferError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

impl Store {
    /// Offers `account` (named `name` by its chat service, which vouches that `email` is
    /// its user's) a link for the person named `email` alone: the secret, which is not kept.
    /// Any offer it was made before and did not use is void.
    pub async fn offer_chat_link(
        &self,
        account: &ChatAccount,
        name: &str,
        email: &str,
    ) -> Result<String, StoreError> {
        let name: String = name.chars().filter(|c| !c.is_control() && !hides(*c)).take(MAX_NAME).collect();
        let secret = secret();
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM chat_link_offers WHERE created_at_ms <= $1 OR (account = $2 AND used_at_ms IS NULL)",
        )
        .bind(now.saturating_sub(millis(KEPT)))
        .bind(account.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO chat_link_offers (secret_sha256, account, name, email, created_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(sha256(&secret))
        .bind(account.to_string())
        .bind(name)
        .bind(email)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// The open offer `secret` names, without using it.
    pub async fn chat_link_offer(&self, secret: &str) -> Result<Offer, OfferError> {
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OfferError::Unknown);
        }
        let row = sqlx::query(
            "SELECT account, name, email, created_at_ms, used_at_ms FROM chat_link_offers WHERE secret_sha256 = $1",
        )
        .bind(sha256(secret))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(OfferError::Unknown)?;
        let (account, name, email, created, used): (String, String, String, i64, Option<i64>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
        let expires_at_ms = created.saturating_add(millis(OFFER_LIFETIME));
        if used.is_some() {
            return Err(OfferError::Used);
        }
        if expires_at_ms <= now_ms() {
            return Err(OfferError::Expired);
        }
        let account =
            account.parse().map_err(|reason| StoreError::Corrupt { hold_id: String::new(), reason })?;
        Ok(Offer { account, name, email, expires_at_ms })
    }

    /// Uses the offer `secret` (once: of concurrent users, one gets it) to link its account
    /// to `principal`, with their role (at most approver); audited as theirs. Only the
    /// person the chat service named as the account's may (a link forwarded to anyone else
    /// is refused, and left for its owner), and not once the account was linked since.
    pub async fn claim_chat_link(
        &self,
        secret: &str,
        principal: &Principal,
    ) -> Result<(ChatAccount, Link), OfferError> {
        let offer = self.chat_link_offer(secret).await?;
        if !offer.email.eq_ignore_ascii_case(&principal.person) {
            return Err(OfferError::NotYours(offer.email));
        }
        let made = offer.expires_at_ms.saturating_sub(millis(OFFER_LIFETIME));
        let linked_since: Option<i64> =
            sqlx::query_scalar("SELECT linked_at_ms FROM chat_links WHERE account = $1")
                .bind(offer.account.to_string())
                .fetch_optional(&self.pool)
                .await?;
        if linked_since.is_some_and(|at| at >= made) {
            return Err(OfferError::LinkedSince);
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let claimed = sqlx::query(
            "UPDATE chat_link_offers SET used_by = $2, used_at_ms = $3
             WHERE secret_sha256 = $1 AND used_at_ms IS NULL AND created_at_ms > $4",
        )
        .bind(sha256(secret))
        .bind(&principal.person)
        .bind(now)
        .bind(now.saturating_sub(millis(OFFER_LIFETIME)))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            drop(tx);
            // Used or expired between the look and the claim.
            return Err(self.chat_link_offer(secret).await.err().unwrap_or(OfferError::Used));
        }
        let link = Link { person: principal.person.clone(), role: principal.role.min(Role::Approver) };
        link_in(&mut tx, &offer.account, &link.person, link.role, &principal.person, ChatLinkHow::Offer)
            .await?;
        tx.commit().await?;
        Ok((offer.account, link))
    }
}
