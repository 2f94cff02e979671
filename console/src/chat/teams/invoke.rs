//! A click on a card's `Action.Execute` button, as Teams sends it (an `invoke` activity
//! named `adaptiveCard/action`, its token already checked): decided as the person the
//! clicking Teams user is linked to. The answer replaces the clicker's card with the hold
//! as it now stands, or tells them alone why nothing was decided.

use proto::v1::{Scope, Verdict};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Teams, card};
use crate::{
    Console,
    api::holds::{Asked, reason},
    chat::{Chat, ChatAccount, decide, offered_duration},
};

/// The parts of an activity a click is decided by.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Activity {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    channel_id: String,
    from: Option<From>,
    recipient: Option<From>,
    conversation: Option<Conversation>,
    channel_data: Option<ChannelData>,
    value: Option<InvokeValue>,
}

/// A member of a conversation: the clicker (`from`), the bot (`recipient`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct From {
    #[serde(default)]
    id: String,
    aad_object_id: Option<String>,
}

#[derive(Deserialize)]
struct ChannelData {
    tenant: Option<Tenant>,
}

#[derive(Deserialize)]
struct Tenant {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conversation {
    tenant_id: Option<String>,
}

#[derive(Deserialize)]
struct InvokeValue {
    action: ExecuteAction,
}

#[derive(Deserialize)]
struct ExecuteAction {
    verb: String,
    #[serde(default)]
    data: Value,
}

/// The invoke response to `activity`: the hold's card as it now stands, or a message for
/// the clicker; `None` for an activity that is not a click (answered with an empty 200).
pub async fn invoked(teams: &Teams, console: &Console, activity: &Value) -> Option<Value> {
    let Ok(activity) = Activity::deserialize(activity) else {
        return Some(message("keyturn could not read this click."));
    };
    if activity.kind != "invoke" || activity.name != "adaptiveCard/action" {
        return None;
    }
    let bot = teams.bot()?;
    if activity.channel_id != "msteams" {
        return Some(message("keyturn takes clicks from Microsoft Teams only."));
    }
    let bot_id = format!("28:{}", bot.app_id);
    if activity.recipient.is_none_or(|recipient| !recipient.id.eq_ignore_ascii_case(&bot_id)) {
        return Some(message("This click was not sent to keyturn's bot."));
    }
    let Some(action) = activity.value.map(|value| value.action) else {
        return Some(message("keyturn could not read this click."));
    };
    let given = |input: &str| action.data[input].as_str().unwrap_or_default();
    let (verdict, scope, duration_secs) = match action.verb.as_str() {
        card::APPROVE => (Verdict::Approve, Scope::Once, 0),
        card::APPROVE_FOR => match offered_duration(given(card::DURATION)) {
            Some(secs) => (Verdict::Approve, Scope::ForDuration, secs),
            None => return Some(message("Your decision was not made: a duration keyturn did not offer.")),
        },
        card::DENY => (Verdict::Deny, Scope::Once, 0),
        _ => return Some(message("keyturn does not know this button.")),
    };
    let reason = match reason(Some(given(card::REASON).to_owned())) {
        Ok(reason) => reason,
        Err(refused) => return Some(message(&format!("Your decision was not made: {}", refused.message()))),
    };
    let Some((hold_id, host)) = action.data["hold"].as_str().and_then(|value| value.split_once('@')) else {
        return Some(message("This button names no hold."));
    };
    // Only the bot's own tenant's users act; Teams names the tenant of the conversation in
    // two places, which must agree.
    let tenant = activity.conversation.and_then(|c| c.tenant_id).unwrap_or_default().to_ascii_lowercase();
    let named = activity.channel_data.and_then(|d| d.tenant).map(|t| t.id.to_ascii_lowercase());
    if tenant != bot.tenant_id || named.is_some_and(|named| named != tenant) {
        return Some(message("keyturn takes clicks from its own Microsoft tenant only."));
    }
    let user = activity.from.and_then(|from| from.aad_object_id).unwrap_or_default();
    let account = match ChatAccount::new(Chat::Teams, &format!("{tenant}/{user}")) {
        Ok(account) => account,
        Err(reason) => {
            return Some(message(&format!("Your Teams account is not one keyturn can name: {reason}")));
        }
    };
    let asked = Asked { host, hold_id, verdict, scope, duration_secs, reason };
    let decided = decide::decide(console, &account, asked).await;
    if let Some(text) = decide::said(&decided, &account) {
        return Some(message(&text));
    }
    match console.store().hold_detail(host, hold_id).await {
        Ok(Some(detail)) => Some(json!({
            "statusCode": 200,
            "type": "application/vnd.microsoft.card.adaptive",
            "value": card::card(&detail, teams.console_url.as_ref(), card::Shown::Full),
        })),
        _ => Some(message("Decided.")),
    }
}

/// An invoke response that tells the clicker alone.
fn message(text: &str) -> Value {
    json!({"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": text})
}
