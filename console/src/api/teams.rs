//! Teams' messaging endpoint: the activities Teams sends the bot (`POST`), each taken only
//! with a valid Bot Framework token for the activity's own `serviceUrl`, and a click
//! (`invoke`) answered with the card as it now stands.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse as _, Response},
};

use super::{Api, ApiError};

/// Largest activity read: a click carries the card's data, not the card.
pub const MAX_ACTIVITY: usize = 256 * 1024;

pub async fn messages(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let Some((teams, bot)) = api.teams.as_ref().and_then(|teams| Some((teams, teams.bot()?))) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "teams_not_configured",
            "Teams is not configured ([teams] with a bot)",
        ));
    };
    let activity: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad_request("an activity is a JSON object"))?;
    let service_url = activity["serviceUrl"].as_str().unwrap_or_default();
    let authorization = headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if let Err(why) = bot.verify(authorization, service_url).await {
        tracing::warn!(why = %why, "refused an activity sent to the Teams bot");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", "the activity's token was refused"));
    }
    let Some(_permit) = teams.deciding() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many clicks being decided at once",
        ));
    };
    match crate::chat::teams::invoke::invoked(teams, &api.console, &activity).await {
        Some(reply) => Ok(Json(reply).into_response()),
        None => Ok(StatusCode::OK.into_response()),
    }
}
