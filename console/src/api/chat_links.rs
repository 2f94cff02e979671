//! Chat accounts linked to people over HTTP: admins list, link and unlink them (as
//! `keyturn console link` does); a signed-in person reads and confirms a link offered to
//! their own chat account ([`crate::chat::offers`]).

use axum::{
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse as _, Response},
};
use serde::{Deserialize, Serialize};

use super::{Api, ApiError, auth::require, body, ok};
use crate::{
    chat::{ChatAccount, offers::OfferError},
    people::{Principal, Role},
};

impl From<OfferError> for ApiError {
    fn from(error: OfferError) -> Self {
        let code = match error {
            OfferError::Store(error) => return error.into(),
            OfferError::Unknown => "unknown_link",
            OfferError::Expired => "link_expired",
            OfferError::Used => "link_used",
            OfferError::LinkedSince => "linked_since",
            OfferError::NotYours(_) => {
                return Self::new(StatusCode::FORBIDDEN, "not_yours", error.to_string());
            }
        };
        Self::new(StatusCode::GONE, code, error.to_string())
    }
}

/// Every link (an admin), or the caller's own: what anyone can check was linked to them.
pub async fn list(State(api): State<Api>, principal: Principal) -> Result<Response, ApiError> {
    let person = (principal.role < Role::Admin).then_some(principal.person.as_str());
    Ok(ok(serde_json::json!({"links": api.console.store().chat_links(person).await?})))
}

/// `slack:TEAM/USER` or `teams:TENANT/USER`, from the path.
fn account(text: &str) -> Result<ChatAccount, ApiError> {
    text.parse().map_err(|reason: String| ApiError::bad_request(format!("account {reason}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    person: String,
    /// `viewer` or `approver` (the default).
    role: Option<Role>,
}

/// Links the account to a person, replacing any link it had (an admin only).
pub async fn put(
    State(api): State<Api>,
    principal: Principal,
    Path(text): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&principal, Role::Admin)?;
    let account = account(&text)?;
    let request: NewLink = body(bytes)?;
    let role = request.role.unwrap_or(Role::Approver);
    api.console.store().link_chat(&account, &request.person, role, &principal.person).await?;
    Ok(ok(serde_json::json!({"account": account.to_string(), "person": request.person, "role": role})))
}

/// Unlinks the account: an admin, or the person it is linked to (who may find an account
/// linked to them that is not theirs).
pub async fn delete(
    State(api): State<Api>,
    principal: Principal,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let account = account(&text)?;
    let theirs = api
        .console
        .store()
        .chat_link(&account)
        .await?
        .is_some_and(|link| link.person.eq_ignore_ascii_case(&principal.person));
    if !theirs {
        require(&principal, Role::Admin)?;
    }
    if api.console.store().unlink_chat(&account, &principal.person).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_linked", format!("{account} is linked to no one")))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferSecret {
    /// What follows `#chat-link=` in the link.
    secret: String,
}

/// What confirming the offer would do: link `account` to `person` with `role`.
#[derive(Debug, Serialize)]
struct Offered {
    account: String,
    chat: &'static str,
    team: String,
    user: String,
    /// The account's name as the chat service gave it (its user chose it).
    name: String,
    person: String,
    display_name: String,
    role: Role,
    expires_at_ms: i64,
}

/// The offer a link carries, as the confirmation shows it; nothing is used or changed.
pub async fn offer(
    State(api): State<Api>,
    principal: Principal,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: OfferSecret = body(bytes)?;
    let offer = api.console.store().chat_link_offer(request.secret.trim()).await?;
    Ok(ok(Offered {
        account: offer.account.to_string(),
        chat: offer.account.chat.as_str(),
        team: offer.account.team,
        user: offer.account.user,
        name: offer.name,
        role: principal.role.min(Role::Approver),
        person: principal.person,
        display_name: principal.display_name,
        expires_at_ms: offer.expires_at_ms,
    }))
}

/// Confirms the offer: its account is linked to the caller, and the channel is told.
pub async fn claim(
    State(api): State<Api>,
    principal: Principal,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: OfferSecret = body(bytes)?;
    let (account, link) = api.console.store().claim_chat_link(request.secret.trim(), &principal).await?;
    tracing::info!(account = %account, person = link.person, "a chat account was linked by its offer");
    if let Some(slack) = &api.slack
        && let Err(e) = slack.announce_link(api.console.store(), &account, &link).await
    {
        tracing::warn!(error = %e, account = %account, "announcing a chat account's link in Slack");
    }
    Ok(ok(serde_json::json!({"account": account.to_string(), "person": link.person, "role": link.role})))
}
