//! The console's HTTP side: the JSON API (documented in `openapi.json`), the sign-in
//! routes, and the web UI's static files, all from one listener.

mod auth;
mod chat_links;
mod evidence;
mod export;
pub(crate) mod holds;
mod slack;
mod teams;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, rejection::BytesRejection},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::TcpListener;

use crate::{
    ConsoleError,
    chat::{slack::Slack, teams::Teams},
    oidc::Oidc,
    people::RoleMap,
    server::Console,
    store::StoreError,
};

/// Largest request body the API reads.
pub const MAX_BODY: usize = 16 * 1024;

/// What every request handler shares.
#[derive(Clone)]
pub struct Api {
    console: Console,
    oidc: Option<Arc<Oidc>>,
    roles: Arc<RoleMap>,
    /// Session cookies only over HTTPS (the console is behind a TLS-terminating proxy).
    secure_cookies: bool,
    /// Slack in request-URL mode posts its interactions here.
    slack: Option<Arc<Slack>>,
    /// Teams' bot is sent its activities here.
    teams: Option<Arc<Teams>>,
}

impl Api {
    pub fn new(console: Console, oidc: Option<Oidc>, roles: RoleMap, secure_cookies: bool) -> Self {
        Self {
            console,
            oidc: oidc.map(Arc::new),
            roles: Arc::new(roles),
            secure_cookies,
            slack: None,
            teams: None,
        }
    }

    /// Takes Slack's interactions (request-URL mode) at `/api/slack/interactions`.
    #[must_use]
    pub fn with_slack(self, slack: Arc<Slack>) -> Self {
        Self { slack: Some(slack), ..self }
    }

    /// Takes the activities Teams sends its bot at `/api/teams/messages`.
    #[must_use]
    pub fn with_teams(self, teams: Arc<Teams>) -> Self {
        Self { teams: Some(teams), ..self }
    }

    /// Every route: API, sign-in, UI.
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/openapi.json", get(openapi))
            .route("/api/me", get(auth::me))
            .route("/api/holds", get(holds::list))
            .route("/api/holds/{id}", get(holds::one))
            .route("/api/holds/{id}/approve", post(holds::approve))
            .route("/api/holds/{id}/deny", post(holds::deny))
            .route("/api/audit", get(holds::audit))
            .route("/api/audit/verify", get(holds::verify_audit))
            .route("/api/hosts/trails", get(holds::host_trails))
            .route("/api/evidence", get(evidence::export))
            .route("/api/audit/export", get(export::export))
            .route("/api/tokens", get(auth::tokens).post(auth::create_token))
            .route("/api/tokens/{id}", delete(auth::revoke_token))
            .route("/api/chat-links", get(chat_links::list))
            .route("/api/chat-links/{*account}", put(chat_links::put).delete(chat_links::delete))
            .route("/api/chat-link-offers/read", post(chat_links::offer))
            .route("/api/chat-link-offers/confirm", post(chat_links::claim))
            .route(
                "/api/slack/interactions",
                post(slack::interactions).layer(DefaultBodyLimit::max(slack::MAX_INTERACTION)),
            )
            .route(
                "/api/teams/messages",
                post(teams::messages).layer(DefaultBodyLimit::max(teams::MAX_ACTIVITY)),
            )
            .route("/api/{*rest}", axum::routing::any(unknown_route))
            .route("/auth/options", get(auth::options))
            .route("/auth/login", get(auth::login))
            .route("/auth/callback", get(auth::callback))
            .route("/auth/logout", post(auth::logout))
            .route("/auth/link", post(auth::link))
            .route("/", get(async || ui(include_str!("../../ui/index.html"), "text/html; charset=utf-8")))
            .route(
                "/app.js",
                get(async || ui(include_str!("../../ui/app.js"), "text/javascript; charset=utf-8")),
            )
            .route(
                "/style.css",
                get(async || ui(include_str!("../../ui/style.css"), "text/css; charset=utf-8")),
            )
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(axum::middleware::map_response(harden))
            .with_state(self)
    }

    /// Serves the router on `listener` until the future is dropped.
    pub async fn serve(self, listener: TcpListener) -> Result<(), ConsoleError> {
        let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        axum::serve(listener, self.router()).await.map_err(|source| ConsoleError::Listen { addr, source })
    }
}

/// The web UI's address at `origin` (`http://HOST:PORT`) that signs in with the one-time
/// sign-in link `secret` ([`crate::Store::issue_sign_in_link`]): the secret is in the
/// fragment, which the browser keeps to itself and the page posts to `/auth/link`.
pub fn sign_in_url(origin: &str, secret: &str) -> String {
    format!("{origin}/#login={secret}")
}

/// The web UI's address at `console` that shows the link offered to a chat account
/// ([`crate::Store::offer_chat_link`]) for its person to confirm: the secret is in the
/// fragment, which the page keeps through signing in and posts.
pub fn chat_link_url(console: &url::Url, secret: &str) -> url::Url {
    let mut url = console.clone();
    url.set_fragment(Some(&format!("chat-link={secret}")));
    url
}

/// An API error: a status, a stable code programs branch on, and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// What went wrong, in words for the person who asked.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let (status, code) = match &error {
            StoreError::UnknownHold { .. } => (StatusCode::NOT_FOUND, "unknown_hold"),
            StoreError::AlreadyDecided { .. } => (StatusCode::CONFLICT, "already_decided"),
            StoreError::Expired { .. } => (StatusCode::CONFLICT, "expired"),
            StoreError::SelfApproval { .. } => (StatusCode::FORBIDDEN, "self_approval"),
            StoreError::AlreadyApproved { .. } => (StatusCode::CONFLICT, "already_approved"),
            StoreError::AuditBroken { .. } => (StatusCode::CONFLICT, "audit_broken"),
            StoreError::Anonymous | StoreError::ChatPerson(_) | StoreError::ChatRole(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            _ => {
                tracing::error!(error = %error, "API request failed");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the console failed; see its log",
                );
            }
        };
        Self::new(status, code, error.to_string())
    }
}

/// A JSON body of `T`, where an empty body means `T::default()`; anything malformed,
/// unknown or too large is refused with the API's error shape.
fn body<T: DeserializeOwned + Default>(bytes: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = bytes.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("bodies are at most {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("malformed body: {e}")))
}

/// `value` as a 200 JSON response.
fn ok(value: impl Serialize) -> Response {
    Json(value).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route: see /api/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route has no such method: see /api/openapi.json",
    )
}

fn ui(text: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// Headers on every response: nothing cached, nothing framed, scripts only from here.
async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
