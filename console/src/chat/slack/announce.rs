//! Slack's side of the announcements ([`crate::chat::announce`]): a hold's message posted
//! to the channel or to a person directly, and updated in place (`chat.update`).

use serde_json::{Value, json};

use super::{Slack, SlackError, message};
use crate::{
    chat::{Chat, ChatAccount, announce::Announcer},
    search::HoldDetail,
    siem::SiemError,
};

impl Announcer for Slack {
    const CHAT: Chat = Chat::Slack;

    fn channel(&self) -> &str {
        &self.channel
    }

    /// A Slack user is written to directly in the channel of their own id.
    async fn direct(&self, account: &ChatAccount) -> Result<Option<String>, SiemError> {
        Ok(Some(account.user.clone()))
    }

    async fn post(&self, detail: &HoldDetail, to: &str) -> Result<Option<(String, String)>, SiemError> {
        let posted =
            send(self, "chat.postMessage", detail, &json!({"channel": to, "unfurl_links": false})).await?;
        match (posted["channel"].as_str(), posted["ts"].as_str()) {
            (Some(channel), Some(ts)) => Ok(Some((channel.to_owned(), ts.to_owned()))),
            _ => {
                Err(SlackError::Api { method: "chat.postMessage", error: "no channel and ts".into() }.into())
            }
        }
    }

    async fn update(&self, detail: &HoldDetail, channel: &str, ts: &str) -> Result<(), SiemError> {
        match send(self, "chat.update", detail, &json!({"channel": channel, "ts": ts})).await {
            // The message was deleted: the announcements of other holds go on.
            Err(SlackError::Api { error, .. }) if error != "ratelimited" => {
                let (host, hold) = (&detail.record.host, &detail.record.id);
                tracing::warn!(host, hold, error, "Slack refused to update a hold's message");
                Ok(())
            }
            updated => updated.map(drop).map_err(Into::into),
        }
    }
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
