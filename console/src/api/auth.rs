//! Who is calling: an API token (`Authorization: Bearer kt_…`) or a browser session
//! cookie; what their role lets them do; their API tokens; signing in (through the
//! identity provider, or with a one-time link) and out.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{FromRequestParts, Path, State, rejection::BytesRejection},
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    response::{IntoResponse as _, Response},
};
use serde::Deserialize;

use super::{Api, ApiError, body, ok};
use crate::{
    audit::AuditEvent,
    people::{
        Credential, KeptLogin, MAX_TOKEN_LIFETIME, Principal, Role, SESSION_LIFETIME, SignIn, TOKEN_LIFETIME,
    },
};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keyturn_session";
/// The cookie that ties a sign-in to the browser that began it: a callback URL opened in
/// any other browser (login CSRF) opens no session.
const LOGIN_COOKIE: &str = "keyturn_login";
/// The header a browser session must send with every change: a cross-site form cannot
/// set it, and the console answers no CORS preflight, so no other site can.
pub const CSRF_HEADER: &str = "x-requested-with";

impl FromRequestParts<Api> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        let store = api.console.store();
        if let Some(authorization) = parts.headers.get(header::AUTHORIZATION) {
            let token =
                authorization.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "Authorization must be `Bearer <API token>`",
                    )
                })?;
            return store.token_principal(token.trim()).await?.ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown or revoked API token")
            });
        }
        let unauthenticated =
            || ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "sign in, or send an API token");
        let session = session_cookie(&parts.headers).ok_or_else(unauthenticated)?;
        let principal = store.session_principal(session).await?.ok_or_else(unauthenticated)?;
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            check_csrf(&parts.headers)?;
        }
        Ok(principal)
    }
}

/// Refuses a change made in a browser session without the header only this console's
/// own pages send.
fn check_csrf(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.get(CSRF_HEADER).is_none_or(|v| v != "keyturn") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            format!("a change in a browser session needs the header `{CSRF_HEADER}: keyturn`"),
        ));
    }
    Ok(())
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

/// Refuses unless `principal` has at least `role`.
pub fn require(principal: &Principal, role: Role) -> Result<(), ApiError> {
    if principal.role >= role {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {role} role; {} has {}", principal.person, principal.role),
        ))
    }
}

pub async fn me(principal: Principal) -> Response {
    ok(principal)
}

/// How people sign in here: through the identity provider, or with an API token.
pub async fn options(State(api): State<Api>) -> Response {
    ok(serde_json::json!({"oidc": api.oidc.is_some()}))
}

pub async fn logout(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_csrf(&headers)?;
    if let Some(session) = session_cookie(&headers) {
        api.console.store().end_session(session).await?;
    }
    let expired = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax");
    Ok(([(header::SET_COOKIE, expired)], StatusCode::NO_CONTENT).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    /// At most the caller's own role; the caller's role when absent.
    role: Option<Role>,
    /// Days until it expires: 90 when absent, at most 365.
    expires_in_days: Option<u64>,
}

/// Longest token name.
const MAX_TOKEN_NAME: usize = 100;

pub async fn create_token(
    State(api): State<Api>,
    principal: Principal,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: NewToken = body(bytes)?;
    let name = request.name.trim();
    if name.is_empty() || name.len() > MAX_TOKEN_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("a token needs a name of 1 to {MAX_TOKEN_NAME} printable characters"),
        ));
    }
    let role = request.role.unwrap_or(principal.role);
    require(&principal, role)?;
    let max_days = MAX_TOKEN_LIFETIME.as_secs() / 86_400;
    let lifetime = match request.expires_in_days {
        None => TOKEN_LIFETIME,
        Some(days @ 1..) if days <= max_days => Duration::from_hours(days * 24),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expires_in_days is 1 to {max_days}"),
            ));
        }
    };
    let store = api.console.store();
    let (id, token) =
        store.create_api_token(&principal.person, role, name, &principal.person, lifetime).await?;
    Ok((StatusCode::CREATED, ok(serde_json::json!({"id": id, "token": token, "role": role, "name": name})))
        .into_response())
}

/// The caller's API tokens; an admin's call lists everyone's.
pub async fn tokens(State(api): State<Api>, principal: Principal) -> Result<Response, ApiError> {
    let owner = (principal.role < Role::Admin).then_some(principal.person.as_str());
    Ok(ok(serde_json::json!({"tokens": api.console.store().api_tokens(owner).await?})))
}

/// Revokes one of the caller's API tokens (an admin: anyone's).
pub async fn revoke_token(
    State(api): State<Api>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = (principal.role < Role::Admin).then_some(principal.person.as_str());
    if api.console.store().revoke_api_token(&id, owner, &principal.person).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_token", format!("no live API token {id} of yours")))
    }
}

/// Starts signing in: remembers the sign-in's secrets and sends the browser to the
/// identity provider.
pub async fn login(State(api): State<Api>) -> Result<Response, ApiError> {
    let oidc = api.oidc.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_identity_provider",
            "no identity provider is configured: sign in with an API token",
        )
    })?;
    let (url, pending) = oidc.begin();
    let state = pending.state.clone();
    api.console.store().begin_login(&state, &KeptLogin::Oidc(pending)).await?;
    let secure = if api.secure_cookies { "; Secure" } else { "" };
    let bound = format!(
        "{LOGIN_COOKIE}={state}; Path=/auth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        crate::people::LOGIN_LIFETIME.as_secs()
    );
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, url), (header::SET_COOKIE, bound)]).into_response())
}

#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Where the identity provider sends the browser back: the code is exchanged and the ID
/// token verified; a person whose groups give a role gets a session.
pub async fn callback(
    State(api): State<Api>,
    headers: HeaderMap,
    callback: Result<axum::extract::Query<Callback>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let failed = |message: String| ApiError::new(StatusCode::FORBIDDEN, "sign_in_failed", message);
    let oidc = api.oidc.as_ref().ok_or_else(|| failed("no identity provider is configured".into()))?;
    let axum::extract::Query(callback) = callback.map_err(|e| failed(e.body_text()))?;
    if let Some(error) = callback.error {
        return Err(failed(format!(
            "the identity provider refused: {error} {}",
            callback.error_description.unwrap_or_default()
        )));
    }
    let (Some(code), Some(state)) = (callback.code, callback.state) else {
        return Err(failed("the callback carries no code and state".into()));
    };
    if cookie(&headers, LOGIN_COOKIE) != Some(state.as_str()) {
        return Err(failed("this sign-in was not begun in this browser".into()));
    }
    let store = api.console.store();
    let Some(KeptLogin::Oidc(pending)) = store.take_login(&state).await? else {
        return Err(failed("unknown, used or expired sign-in".into()));
    };
    let identity = oidc.finish(&pending, &state, &code).await.map_err(|e| {
        tracing::warn!(error = %e, "sign-in failed");
        failed(e.to_string())
    })?;
    let person = identity.person();
    if person.trim().is_empty() {
        return Err(failed("the identity provider named nobody (an empty email)".into()));
    }
    let role = api.roles.role(&identity.groups);
    if let Some(account) = &identity.teams
        && let Some(role) = role
        && let Err(e) = store.link_at_sign_in(account, &person, role).await
    {
        tracing::warn!(error = %e, account = %account, person, "linking a Teams account named at sign-in");
    }
    // Links the person made themselves carry their role now; one that could not be made to
    // fails the sign-in rather than outlast it.
    store.follow_sign_in(&person, role, identity.teams.as_ref()).await?;
    let Some(role) = role else {
        store
            .record(&AuditEvent::SignInRefused { person: person.clone(), groups: identity.groups.clone() })
            .await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no_role",
            format!("{person} is in none of the groups that [roles] gives a role"),
        ));
    };
    let principal = Principal {
        display_name: identity.name.unwrap_or_else(|| person.clone()),
        person,
        role,
        via: "session".into(),
        credential: Credential::Oidc { issuer: identity.issuer, subject: identity.subject },
    };
    let session = store.create_session(&principal, SignIn::Oidc).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, session_cookie_value(&api, &session)), (header::LOCATION, "/".to_owned())],
    )
        .into_response())
}

/// The `Set-Cookie` value that gives the browser session `session`.
fn session_cookie_value(api: &Api, session: &str) -> String {
    let secure = if api.secure_cookies { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={session}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        SESSION_LIFETIME.as_secs()
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSignIn {
    /// What follows `#login=` in the link.
    secret: String,
}

/// Signs in with a one-time link (`keyturn console login`): the web UI posts the secret
/// from its address's fragment, which no request line, log or `Referer` carries; the
/// secret opens one admin session, once.
pub async fn link(
    State(api): State<Api>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A sign-in is a change like any other: no other site may sign this browser in (with
    // a link of its own choosing).
    check_csrf(&headers)?;
    let request: LinkSignIn = body(bytes)?;
    let (principal, session) =
        api.console.store().redeem_sign_in_link(request.secret.trim()).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "sign_in_failed",
                "unknown, used or expired sign-in link: run `keyturn console login` on the host for a new one",
            )
        })?;
    Ok(([(header::SET_COOKIE, session_cookie_value(&api, &session))], ok(principal)).into_response())
}
