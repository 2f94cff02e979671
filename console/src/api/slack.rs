//! Slack's request-URL mode: interactions Slack sends (`POST`), checked against their `v0`
//! signature before anything in them is read, acknowledged at once and decided after.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse as _, Response},
};

use super::{Api, ApiError};

/// Largest interaction read: a click carries the whole message it was made on.
pub const MAX_INTERACTION: usize = 256 * 1024;

pub async fn interactions(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(slack) = api.slack.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "slack_not_configured",
            "Slack is not configured ([slack] with a signing_secret)",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let (timestamp, signature) = (header("x-slack-request-timestamp"), header("x-slack-signature"));
    if let Err(why) = slack.verify(timestamp, signature, &body) {
        tracing::warn!(why, "refused a Slack interaction");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", why));
    }
    let payload = url::form_urlencoded::parse(&body)
        .find(|(name, _)| name == "payload")
        .and_then(|(_, payload)| serde_json::from_str::<serde_json::Value>(&payload).ok())
        .ok_or_else(|| ApiError::bad_request("an interaction is a form with a JSON payload"))?;
    let Some(permit) = slack.deciding() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many clicks being decided at once",
        ));
    };
    let console = api.console.clone();
    tokio::spawn(async move {
        crate::chat::slack::clicks::clicked(&slack, &console, &payload).await;
        drop(permit);
    });
    Ok(StatusCode::OK.into_response())
}
