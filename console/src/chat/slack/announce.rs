//! The trail's hold records as Slack messages: a hold raised is posted once, and every
//! message of a hold is updated when someone approves it (of a quorum), when it is decided,
//! closed or expired, from whichever channel the decision came. When it ends, the person
//! who started the agent is told, in a direct message to each Slack account linked to them.

use serde_json::{Value, json};
use sqlx::Row as _;

use super::{Slack, SlackError, message};
use crate::{
    audit::{AuditEvent, StoredRecord},
    chat::Chat,
    search::HoldDetail,
    siem::SiemError,
    store::{Store, StoreError},
};

/// Posts or updates the messages `records` call for.
pub async fn announce(slack: &Slack, store: &Store, records: &[StoredRecord]) -> Result<(), SiemError> {
    for record in records {
        match record.typed()? {
            AuditEvent::HoldRaised { host, hold, .. } => post(slack, store, &host, &hold).await?,
            AuditEvent::ApprovalRecorded { host, hold, .. } => update(slack, store, &host, &hold).await?,
            AuditEvent::Decided { host, hold, .. }
            | AuditEvent::HoldClosed { host, hold, .. }
            | AuditEvent::HoldExpired { host, hold } => {
                update(slack, store, &host, &hold).await?;
                tell_requester(slack, store, &host, &hold).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Posts hold `hold` of `host` to the channel, unless its message is there already (a
/// batch sent again after a crash or a lost lease).
async fn post(slack: &Slack, store: &Store, host: &str, hold: &str) -> Result<(), SiemError> {
    if !messages(store, host, hold).await?.is_empty() {
        return Ok(());
    }
    // A hold decided before it could be posted (the trail read from its start, when Slack
    // was configured) is not announced: only a pending one asks anything of anyone.
    let Some(detail) = store.hold_detail(host, hold).await?.filter(|d| d.record.status == "pending") else {
        return Ok(());
    };
    post_to(slack, store, &detail, &slack.channel).await
}

/// Tells the person who started the agent of ended hold `hold` of `host` how it ended: the
/// message, in a direct message to each Slack account linked to them; once, and only for a
/// hold announced in the channel.
async fn tell_requester(slack: &Slack, store: &Store, host: &str, hold: &str) -> Result<(), SiemError> {
    let posted = messages(store, host, hold).await?;
    let announced = posted.iter().any(|(channel, _)| *channel == slack.channel);
    if !announced || posted.iter().any(|(channel, _)| *channel != slack.channel) {
        return Ok(());
    }
    let Some(detail) = store.hold_detail(host, hold).await? else { return Ok(()) };
    let accounts = store.chat_accounts_of(&detail.raised.requester).await?;
    for account in accounts.iter().filter(|account| account.chat == Chat::Slack) {
        post_to(slack, store, &detail, &account.user).await?;
    }
    Ok(())
}

/// Posts `detail`'s message to `channel` (a channel id, or a user id for a direct
/// message), and records it to update.
async fn post_to(slack: &Slack, store: &Store, detail: &HoldDetail, channel: &str) -> Result<(), SiemError> {
    let (host, hold) = (&detail.record.host, &detail.record.id);
    let fields = json!({"channel": channel, "unfurl_links": false});
    let posted = send(slack, "chat.postMessage", detail, &fields).await?;
    let (Some(channel), Some(ts)) = (posted["channel"].as_str(), posted["ts"].as_str()) else {
        return Err(SlackError::Api { method: "chat.postMessage", error: "no channel and ts".into() }.into());
    };
    sqlx::query(
        "INSERT INTO chat_messages (host, hold_id, channel, ts) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(host)
    .bind(hold)
    .bind(channel)
    .bind(ts)
    .execute(&store.pool)
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// Shows hold `hold` of `host` as it stands now in every message about it.
async fn update(slack: &Slack, store: &Store, host: &str, hold: &str) -> Result<(), SiemError> {
    let posted = messages(store, host, hold).await?;
    if posted.is_empty() {
        return Ok(());
    }
    let Some(detail) = store.hold_detail(host, hold).await? else { return Ok(()) };
    for (channel, ts) in posted {
        match send(slack, "chat.update", &detail, &json!({"channel": channel, "ts": ts})).await {
            // The message was deleted: the announcements of other holds go on.
            Err(SlackError::Api { error, .. }) if error != "ratelimited" => {
                tracing::warn!(host, hold, error, "Slack refused to update a hold's message");
            }
            updated => drop(updated?),
        }
    }
    Ok(())
}

/// Sends `detail`'s message by `method`, with `fields` (its channel, its ts): in full, or
/// bare when Slack refuses it for what it says (a limit keyturn did not know), so that the
/// hold is still shown and nothing stalls behind it. Anything else (Slack unreachable,
/// rate limited, a wrong channel) is an error: tried again, from this hold on.
async fn send(
    slack: &Slack,
    method: &'static str,
    detail: &HoldDetail,
    fields: &Value,
) -> Result<Value, SlackError> {
    let with_fields = |mut body: Value| {
        if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
            body.extend(fields.clone());
        }
        body
    };
    let console = slack.console_url.as_ref();
    match slack.call(method, &slack.bot_token, &with_fields(message::render(detail, console))).await {
        Err(SlackError::Api { error, .. }) if error != "ratelimited" => {
            let (host, hold) = (&detail.record.host, &detail.record.id);
            tracing::warn!(host, hold, error, "Slack refused a hold's message: shown without its details");
            slack.call(method, &slack.bot_token, &with_fields(message::bare(detail, console))).await
        }
        sent => sent,
    }
}

/// The messages that announced hold `hold` of `host`: (channel, ts).
async fn messages(store: &Store, host: &str, hold: &str) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query("SELECT channel, ts FROM chat_messages WHERE host = $1 AND hold_id = $2")
        .bind(host)
        .bind(hold)
        .fetch_all(&store.pool)
        .await?;
    rows.iter().map(|row| Ok((row.try_get("channel")?, row.try_get("ts")?))).collect()
}
